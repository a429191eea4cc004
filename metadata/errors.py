"""Exceptions raised by the metadata store.

Every error the store raises on purpose is a :class:`MetadataError`, so callers can catch one
class. The subclasses map onto Kafka error codes where one exists (noted per class); the
mapping itself belongs to the ingest layer.
"""

from __future__ import annotations

from streamhouse.errors import ErrorCode, StreamHouseError


class MetadataError(Exception):
    """Base class of every error the metadata store raises on purpose."""


class TopicExistsError(MetadataError):
    """A topic with that name already exists (Kafka TOPIC_ALREADY_EXISTS)."""


class UnknownTopicError(MetadataError):
    """The topic or partition does not exist (Kafka UNKNOWN_TOPIC_OR_PARTITION)."""


class InvalidTopicError(MetadataError):
    """A topic request is invalid; the message says why (Kafka INVALID_TOPIC_EXCEPTION)."""


class InvalidPartitionsError(InvalidTopicError):
    """The partition count is out of range or would shrink (Kafka INVALID_PARTITIONS)."""


class InvalidConfigError(InvalidTopicError):
    """A topic config is not a mapping of str to str (Kafka INVALID_CONFIG)."""


class OffsetOutOfRangeError(MetadataError):
    """An offset lies outside the partition's log (Kafka OFFSET_OUT_OF_RANGE)."""


class DuplicateSegmentError(MetadataError):
    """A segment with that object key has already been committed."""


class CatalogEntryExistsError(MetadataError):
    """A catalog entry of that kind and name exists already (put it with ``replace=True`` to
    overwrite it, or delete it first)."""


class AgentUnknownError(MetadataError):
    """A heartbeat (or another agent call) named an agent that is not registered: its row was
    forgotten (``forget_agent``) or never written. The agent registers again."""


class QueryFencedError(MetadataError):
    """A continuous query's step commit was refused: another runner claimed the query since
    (its generation is newer), the step is not the one after the stored one, or the query's
    checkpoint was deleted (the query was dropped). Nothing was changed; the runner that got
    it must stop (its successor owns the query)."""


class SchemaTooNewError(MetadataError):
    """The metadata file was written by newer code than this; refuse to touch it."""


class MetadataUnavailableError(MetadataError, StreamHouseError):
    """The database cannot take the call now, but may later: another writer held the lock past
    the busy timeout (``REQUEST_TIMED_OUT``), or the disk is full or failing
    (``KAFKA_STORAGE_ERROR``). Nothing was changed; retrying the same call is safe."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        StreamHouseError.__init__(self, code, message)
