"""Group-commit feedback: the uploader tells the segmenter how far it is with its segments.

The segmenter seals early only while the uploader is idle (segmenter/policy.py), so it must
know what is in flight. The uploader reports on the ``upload-progress`` ring (uploader ->
segmenter, ``streamhouse/rings.py``); each frame is an ``UploadProgress`` header (msgpack
array, ``streamhouse/frames.py``) with an empty payload::

    UploadProgress  [segmenter_epoch, stored_through, done_through]

    segmenter_epoch  the segmenter run the two marks count in (SealedSegment.segmenter_epoch);
                     0 with -1, -1 is the hello of an uploader that has just started
    stored_through   every segment of that run up to this sequence is done uploading: stored,
                     or failed for good (-1: none yet)
    done_through     every segment of that run up to this sequence is acknowledged: its acks
                     are written, committed or failed (-1: none yet)

Rules:

1. Marks are cumulative ("every segment up to sequence s"), so each report supersedes every
   earlier one. The uploader never waits for this ring (``try_write``): a report that does not
   fit is dropped and sent again with the next change, and a dead or slow segmenter can never
   hold up an upload or a commit.
2. The uploader reports whenever its marks change (a segment received, a PUT finished, a
   segment acknowledged) and sends the hello once it has attached the sealed ring.
3. The segmenter counts the segments it sent; those past ``stored_through`` are uploading,
   those past ``done_through`` are not yet acknowledged. Reports of another segmenter run are
   ignored: a restarted segmenter counts only its own segments (the ring drops what the dead
   one had not read, ring rule 7).
4. An uploader restart ends every segment in flight (the new uploader drops the sealed frames
   it finds, ring rule 7): the segmenter sees the sealed ring's reader epoch change (ring rule
   9) and counts everything it sent as done. The hello wakes it to look, so a killed uploader
   never leaves the segmenter waiting on it; and whatever the segmenter believes, no batch
   waits longer than the flush interval. Segments sent between the new uploader's attach and
   that check are counted done early: at most one early seal too many, never a flood.
5. A frame that does not decode is logged and ignored; the next report corrects the marks.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import msgspec

from streamhouse.frames import UploadProgress, decoder_for, header_encoder
from streamhouse.ring import RingWriter

log = logging.getLogger(__name__)

#: What a just-started uploader reports: nothing in flight (rule 2).
HELLO = UploadProgress(0, -1, -1)

_decode = decoder_for(UploadProgress).decode


def progress_of(
    received: tuple[int, int] | None, pending: Iterable[tuple[int, int, bool]]
) -> UploadProgress:
    """The marks of an uploader that last received segment ``received`` (epoch, sequence) and
    still holds ``pending``: (epoch, sequence, stored) of every received segment not yet
    acknowledged, in seal order. The marks count in the epoch of ``received``; a segment of
    an older run (received before the segmenter restarted) that is not yet stored or not yet
    acknowledged holds that mark at -1.
    """
    if received is None:
        return HELLO
    epoch, last = received
    stored = done = last
    first = True
    for seg_epoch, sequence, is_stored in pending:
        before = sequence - 1 if seg_epoch == epoch else -1
        if first:
            done = before
            first = False
        if not is_stored:
            stored = before
            break
    return UploadProgress(epoch, stored, done)


def decode_progress(header: bytes) -> UploadProgress | None:
    """The report in an upload-progress frame, or None (logged) when it is not one (rule 5)."""
    try:
        progress = _decode(header)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        log.error("ignored an upload-progress frame that does not decode: %s", exc)
        return None
    if progress.stored_through < -1 or progress.done_through < -1:
        log.error("ignored an upload-progress frame with marks below -1: %r", progress)
        return None
    return progress


class ProgressReporter:
    """The uploader's end: sends the marks when they change, never waiting (rule 1)."""

    def __init__(self, writer: RingWriter) -> None:
        self.writer = writer
        self._closed = False
        self._sent: UploadProgress | None = None
        self._send(HELLO)

    def report(
        self, received: tuple[int, int] | None, pending: Iterable[tuple[int, int, bool]]
    ) -> None:
        """Sends the marks for this state unless they are the ones last sent."""
        progress = progress_of(received, pending)
        if progress != self._sent and not self._closed:
            self._send(progress)

    def _send(self, progress: UploadProgress) -> None:
        if self.writer.try_write(header_encoder.encode(progress)):
            self._sent = progress
        else:
            self._sent = None  # sent again with the next change
            log.debug("upload-progress ring full (segmenter not reading); report dropped")

    def close(self) -> None:
        self._closed = True  # uploads finishing after this report nothing
        self.writer.close()
