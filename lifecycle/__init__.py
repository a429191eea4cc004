"""The data lifecycle process: retention, rewrites (key compaction, small-object compaction,
partly-live objects), reclaiming dead segments' objects, orphan collection, expiry of idle
state.

Run under supervisord as ``python3 -m lifecycle`` (one per agent): a pass every
``lifecycle_interval_ms`` (see :mod:`lifecycle.runner` for what a pass does, and
:mod:`lifecycle.plan` for its I/O-free decisions). ``python3 -m lifecycle --once
[--now-ms MS]`` runs one pass at the given clock and exits, printing its report as one JSON
line: the movable clock of tests and operators (``--now-ms`` in the future makes everything
dead or unknown look older than the grace period).

Budget: the lifecycle takes at most ``lifecycle_delete_concurrency`` concurrent delete
requests and ``lifecycle_deletes_per_second`` deleted objects per second (averaged from the
first request) from the object store that produce and consume use; listing is one request per
1,000 objects per pass. The rewriting steps (:mod:`lifecycle.rewrite`) read and write at most
``lifecycle_rewrite_bytes_per_second`` bytes per second (reads and PUTs together, averaged
from the first request), with at most ``lifecycle_upload_concurrency`` PUTs (and four times as
many GETs) in flight, on one agent of a cluster; a compaction step starts no new group after two
minutes. Its metadata work runs in bounded transactions (retention in batches of partitions,
one transaction per rewritten group of at most 20,000 block rows) on AsyncMetadata's threads
of its own process.

Several agents, several lifecycle processes, one PostgreSQL and one bucket: every step is
idempotent and safe to run concurrently, because
- retention runs in metadata transactions that lock partitions in (topic_id, partition)
  order, like commits; a second process finds nothing more to drop for the same clock;
- a segment becomes dead only when no block row refers to it, and never live again (object
  keys are never reused and commits only add rows for new segments), so deleting a dead
  segment's object after the grace period cannot take anything a reader can still reach;
- object deletes of a key already deleted succeed, and ``forget_segments`` forgets only rows
  still dead, after their object delete succeeded (two processes at most repeat the delete);
- an orphan is an object older than the grace period that no segment row knows; a row is
  only ever forgotten after its object was deleted, so a process that sees a known object as
  unknown (another process forgot its row after deleting it) deletes an object already gone;
- a rewrite PUTs a new object under a new key and switches the rows in one transaction only
  if every row it replaces is unchanged (``replace_blocks``): a second rewriter, retention or
  DeleteRecords getting there first makes the switch refuse, and the refused object is a dead
  segment; a process killed between the PUT and the switch leaves an orphan. Either way the
  grace period protects reads, and nothing is lost.
"""
