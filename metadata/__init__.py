"""StreamHouse metadata: topics, partitions, the segment index, offsets, producer state,
consumer-group state and the agent registry.

All processes share one SQLite file through :class:`MetadataStore`; see :mod:`metadata.store`
for the API and :mod:`metadata.migrations` for the schema. A cluster shares one PostgreSQL
database instead (:mod:`metadata.postgres`); :func:`open_store` opens either, by what it is
given, behind the interface :class:`MetadataBackend`. On PostgreSQL every segment commit is
also announced to listening agents (:mod:`metadata.commit_notice` has the payload format).
The data lifecycle's calls (retention, dead segments) are described in :mod:`metadata.store`,
as are continuous queries' checkpoints (``claim_query``, ``commit_query_step``: a query's
output segment and its checkpoint in one transaction, fenced by a generation).
"""

from metadata.errors import (
    AgentUnknownError,
    CatalogEntryExistsError,
    DuplicateSegmentError,
    InvalidConfigError,
    InvalidPartitionsError,
    InvalidTopicError,
    MetadataError,
    MetadataUnavailableError,
    OffsetOutOfRangeError,
    QueryFencedError,
    SchemaTooNewError,
    TopicExistsError,
    UnknownTopicError,
)
from metadata.interface import MetadataBackend, open_store
from metadata.store import (
    INVALID_PRODUCER_EPOCH,
    OUT_OF_ORDER_SEQUENCE_NUMBER,
    UNKNOWN_TOPIC_OR_PARTITION,
    AgentInfo,
    BatchRef,
    BatchResult,
    BlockLocation,
    BlockRewrite,
    CleanState,
    CommitBlock,
    DeadSegment,
    DeletedTopic,
    GroupOffset,
    MetadataStore,
    NewBlock,
    PartitionState,
    QueryCheckpoint,
    RetentionMove,
    SegmentUsage,
    StorageReport,
    StoredBlock,
    TopicInfo,
    TopicStorage,
    validate_topic_name,
)

__all__ = [
    "INVALID_PRODUCER_EPOCH",
    "OUT_OF_ORDER_SEQUENCE_NUMBER",
    "UNKNOWN_TOPIC_OR_PARTITION",
    "AgentInfo",
    "AgentUnknownError",
    "BatchRef",
    "BatchResult",
    "BlockLocation",
    "BlockRewrite",
    "CatalogEntryExistsError",
    "CleanState",
    "CommitBlock",
    "DeadSegment",
    "DeletedTopic",
    "DuplicateSegmentError",
    "GroupOffset",
    "InvalidConfigError",
    "InvalidPartitionsError",
    "InvalidTopicError",
    "MetadataBackend",
    "MetadataError",
    "MetadataStore",
    "MetadataUnavailableError",
    "NewBlock",
    "OffsetOutOfRangeError",
    "PartitionState",
    "QueryCheckpoint",
    "QueryFencedError",
    "RetentionMove",
    "SchemaTooNewError",
    "SegmentUsage",
    "StorageReport",
    "StoredBlock",
    "TopicExistsError",
    "TopicInfo",
    "TopicStorage",
    "UnknownTopicError",
    "open_store",
    "validate_topic_name",
]
