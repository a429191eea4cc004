"""StreamHouse metadata: topics, partitions, the segment index, offsets and producer state.

All processes share one SQLite file through :class:`MetadataStore`; see :mod:`metadata.store`
for the API and :mod:`metadata.migrations` for the schema.
"""

from metadata.errors import (
    DuplicateSegmentError,
    InvalidConfigError,
    InvalidPartitionsError,
    InvalidTopicError,
    MetadataError,
    MetadataUnavailableError,
    OffsetOutOfRangeError,
    SchemaTooNewError,
    TopicExistsError,
    UnknownTopicError,
)
from metadata.store import (
    INVALID_PRODUCER_EPOCH,
    OUT_OF_ORDER_SEQUENCE_NUMBER,
    UNKNOWN_TOPIC_OR_PARTITION,
    BatchRef,
    BatchResult,
    BlockLocation,
    CommitBlock,
    DeletedTopic,
    GroupOffset,
    MetadataStore,
    PartitionState,
    TopicInfo,
    validate_topic_name,
)

__all__ = [
    "INVALID_PRODUCER_EPOCH",
    "OUT_OF_ORDER_SEQUENCE_NUMBER",
    "UNKNOWN_TOPIC_OR_PARTITION",
    "BatchRef",
    "BatchResult",
    "BlockLocation",
    "CommitBlock",
    "DeletedTopic",
    "DuplicateSegmentError",
    "GroupOffset",
    "InvalidConfigError",
    "InvalidPartitionsError",
    "InvalidTopicError",
    "MetadataError",
    "MetadataStore",
    "MetadataUnavailableError",
    "OffsetOutOfRangeError",
    "PartitionState",
    "SchemaTooNewError",
    "TopicExistsError",
    "TopicInfo",
    "UnknownTopicError",
    "validate_topic_name",
]
