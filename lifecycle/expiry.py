"""Expiry of idle state: idempotent-producer state and the committed offsets of long-empty
consumer groups, as Kafka's broker settings ``producer.id.expiration.ms`` and
``offsets.retention.minutes`` define them (the last step of a lifecycle pass).

At clock ``now_ms`` (the pass's clock, so ``--now-ms`` moves it):

- producer state: every ``producer_state`` row (one per producer and partition) not written
  for ``producer_id_expiration_ms`` goes (``expire_producer_state(now_ms - expiration)``, in
  pages of :data:`PRODUCER_PAGE` rows, each page one short transaction);
- group offsets: a group's committed offsets all go when its newest commit is older than
  ``offsets_retention_minutes`` and it is empty: no stored group state at all (offsets
  committed without group membership, or a group deleted from the coordinator), or a stored
  state not saved since then whose snapshot (``ingest/kafka/groups.py``, ``GroupSnapshot``)
  has no member. ``expirable_offset_groups`` names the candidates, the snapshot is read and
  checked here, then ``expire_group_offsets`` deletes the offsets in one transaction only if
  still no offset of the group was committed and no state of it saved since the cutoff (a
  consumer committing, or a member joining, meanwhile keeps them). A stored state that does
  not decode keeps its offsets (logged).

What Kafka does, and where this differs:

- ``producer.id.expiration.ms`` (default 86,400,000 = 1 day; since Kafka 3.4, KIP-854; before,
  ``transactional.id.expiration.ms``, 7 days, served for both): each partition leader drops a
  producer's state (last five batches' sequences, epoch) when the *timestamp of its last
  batch* (the batch's max timestamp, i.e. the client's clock unless LogAppendTime) is older
  than the setting, checked every ``producer.id.expiration.check.interval.ms`` (10 min);
  never while a transaction of that producer is open. It also drops a producer's state
  early once retention or DeleteRecords moves the log start offset past the producer's last
  batch. Here the clock is the metadata store's time of the producer's last commit (so a
  client with a skewed clock cannot make its state expire early or live forever), expiry
  happens once per lifecycle pass, nothing is transactional, and a moved log start offset
  does not drop state early. The effect for a client is the same: a producer silent longer
  than the setting that retries an old batch is no longer deduplicated, and its next batch
  is accepted with any sequence number (as Kafka accepts a producer it holds no state for).
- ``offsets.retention.minutes`` (default 10,080 = 7 days since Kafka 2.0, KIP-186). Since
  Kafka 2.1 (KIP-211), a group using group management (it has a protocol type) keeps its
  offsets while it has members; once it is Empty they all expire together when the time since
  it *became empty* exceeds the retention; a group without a protocol type (offsets committed
  by standalone consumers with manual assignment) has each partition's offset expire on its
  own, the retention after that offset's commit. Kafka also expires, in a Stable consumer
  group, the offsets of topics no member subscribes to any more (the retention after their
  commit), and turns an Empty group whose offsets are all gone into Dead (removed).
  Here: (1) an empty group's offsets expire the retention after the later of its newest
  commit and its last saved state (the coordinator saves the state when the group becomes
  Empty, so that is Kafka's "became empty" unless a commit came later); (2) offsets of a
  group with no stored state expire all together, the retention after the newest of them,
  not partition by partition: never earlier than Kafka, sometimes later; (3) offsets of
  unsubscribed topics in a Stable group do not expire (drop them with OffsetDelete); (4) the
  group's stored state (one row per group, owned by its coordinator) is left in place: the
  coordinator deletes it when the group is deleted. A group whose members all died with their
  coordinator and which nobody loads again keeps members in its snapshot, so its offsets stay
  until a coordinator loads it and expires the members (Kafka's new coordinator loads every
  group of its offsets partition at once).
"""

from __future__ import annotations

import logging

import msgspec

from ingest.kafka.groups import SnapshotError, decode_snapshot
from metadata.async_store import AsyncMetadata
from streamhouse.config import Settings

__all__ = ["PRODUCER_PAGE", "ExpiryReport", "expire_idle_state", "group_is_empty"]

log = logging.getLogger("lifecycle.expiry")

#: producer_state rows deleted per transaction.
PRODUCER_PAGE = 10_000
MS_PER_MINUTE = 60_000


class ExpiryReport(msgspec.Struct, kw_only=True):
    """What one expiry step did."""

    producer_states_expired: int = 0
    groups_checked: int = 0  # candidates: newest commit and saved state older than the cutoff
    groups_expired: int = 0
    group_offsets_expired: int = 0
    groups_kept_with_members: int = 0
    groups_kept_unreadable: int = 0
    groups_changed_meanwhile: int = 0  # a commit or a saved state between check and delete


def group_is_empty(blob: bytes, group_id: str) -> bool:
    """Whether a stored group state (a ``GroupSnapshot``) has no member; SnapshotError when
    it does not decode as one of ``group_id``."""
    return not decode_snapshot(blob, group_id).members


async def expire_idle_state(meta: AsyncMetadata, settings: Settings, now_ms: int) -> ExpiryReport:
    """Expires idle producer state and empty groups' offsets at clock `now_ms` (see the module
    docstring); raises the metadata store's errors (MetadataUnavailableError...) when a call
    fails, with whatever was expired before that committed."""
    report = ExpiryReport()
    idle_before = now_ms - settings.producer_id_expiration_ms
    while True:
        expired = await meta.expire_producer_state(idle_before, PRODUCER_PAGE)
        report.producer_states_expired += expired
        if expired < PRODUCER_PAGE:
            break
    if report.producer_states_expired:
        log.info(
            "expiry: %d producer states idle since before %d (producer_id_expiration_ms %d)",
            report.producer_states_expired,
            idle_before,
            settings.producer_id_expiration_ms,
        )

    commit_before = now_ms - settings.offsets_retention_minutes * MS_PER_MINUTE
    for group_id in await meta.expirable_offset_groups(commit_before):
        report.groups_checked += 1
        stored = await meta.load_group_state(group_id)
        if stored is not None:
            try:
                empty = group_is_empty(stored[1], group_id)
            except SnapshotError as exc:
                report.groups_kept_unreadable += 1
                log.warning("expiry: group %s keeps its offsets: %s", group_id, exc)
                continue
            if not empty:
                report.groups_kept_with_members += 1
                continue
        deleted = await meta.expire_group_offsets(group_id, commit_before)
        if deleted == 0:
            report.groups_changed_meanwhile += 1
            continue
        report.groups_expired += 1
        report.group_offsets_expired += deleted
        log.info(
            "expiry: group %s is empty and committed nothing since %d "
            "(offsets_retention_minutes %d): %d committed offsets deleted",
            group_id,
            commit_before,
            settings.offsets_retention_minutes,
            deleted,
        )
    return report
