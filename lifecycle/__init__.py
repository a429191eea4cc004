"""The data lifecycle process: retention, reclaiming dead segments' objects, orphan collection.

Run under supervisord as ``python3 -m lifecycle`` (one per agent): a pass every
``lifecycle_interval_ms`` (see :mod:`lifecycle.runner` for what a pass does, and
:mod:`lifecycle.plan` for its I/O-free decisions). ``python3 -m lifecycle --once
[--now-ms MS]`` runs one pass at the given clock and exits, printing its report as one JSON
line: the movable clock of tests and operators (``--now-ms`` in the future makes everything
dead or unknown look older than the grace period).

Budget: the lifecycle takes at most ``lifecycle_delete_concurrency`` concurrent delete
requests and ``lifecycle_deletes_per_second`` deleted objects per second (averaged from the
first request) from the object store that produce and consume use; listing is one request per
1,000 objects per pass. Its metadata work runs in bounded transactions (retention in batches
of partitions) on AsyncMetadata's threads of its own process.

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
  unknown (another process forgot its row after deleting it) deletes an object already gone.
"""
