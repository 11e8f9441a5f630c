"""The body sink of a request that appends to a partial upload.

Strategy: an append's bytes go straight to the upload's data file, after the
bytes already stored, through the worker's write-behind helper, which also
updates the upload's running SHA-256 (``sha256_state``), so the loop only
receives. Every ``checkpoint`` bytes, and when the request ends however it
ends (completed, cut off by its client, refused, preempted by a newer
request), a commit is queued behind the writes: the helper thread notes the
offset and hash state it has reached and hands them to the worker's
``CommitQueue``, whose thread syncs the data file and then writes the record,
while the next bytes go on arriving. So a connection that drops keeps what it
sent, a worker that is SIGKILLed loses at most what its last commits had not
made durable, and the offset reported is never more than what is on disk.

The request's own end waits for its commit on the handler thread that answers
it (``finish``), never on the loop; an upload that is not complete is let go
of by that commit, before the answer goes out. A completed upload's data is
not synced: from then on it is the application's file, staged like any other
upload, and its record only says that it is complete. A commit that the end of
the request makes redundant (a checkpoint still queued) is skipped.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from typing import Any

from prefork.config.logs import error_log
from prefork.staging.commit_queue import Commit, CommitQueue, run_now
from prefork.staging.diskspace import FreeSpaceGuard
from prefork.staging.partial_uploads import PartialUpload
from prefork.staging.sha256_state import ResumableSha256, hash_prefix
from prefork.staging.stagingfile import write_all
from prefork.staging.writebehind import WriteBehind, WriteBehindHelper

__all__ = ["PartialUploadSink", "running_sha256"]

#: Bytes between two commits of a long append (a SIGKILL loses at most this much).
DEFAULT_CHECKPOINT = 64 * 1024 * 1024


def running_sha256(upload: PartialUpload) -> Any:
    """The upload's SHA-256 so far, ready to go on: restored from the record's state, or
    (without libcrypto, or with a state saved by another one) by hashing the stored prefix."""
    if ResumableSha256.available:
        try:
            return ResumableSha256(bytes.fromhex(upload.record.hash_state) if upload.record.offset else None)
        except ValueError:
            digest: Any = ResumableSha256()
    else:
        digest = hashlib.sha256()
    assert upload.fd is not None
    hash_prefix(upload.fd, upload.record.offset, digest)
    return digest


def _state_of(digest: Any) -> str:
    return digest.state().hex() if isinstance(digest, ResumableSha256) else ""


class PartialUploadSink:
    """Appends one request's content to ``upload``.

    Args:
        upload: the upload, locked by this process; the sink owns it from now on.
        limit: the offset the content must not pass (the upload's length, or the
            largest upload allowed), and ``too_long``: what passing it raises.
        write_behind: the worker's helper; None writes and commits inline (tests).
        checkpoint: bytes between two commits while the content arrives.
        checkpoint_interval: seconds at least between two of those commits.
        on_disk_bytes: staging-bytes accounting, as for a spool.
        min_free_disk: bytes that must stay free on the upload's filesystem (507).
        commits: the worker's commit thread; None commits inline (tests).
        checksum: keep the running SHA-256 (``[uploads] checksum``); without, a completed
            upload's ``sha256`` is read back from its file if the app asks for it.
    """

    def __init__(self, upload: PartialUpload, *, limit: int | None, too_long: Callable[[int], Exception],
                 write_behind: WriteBehindHelper | None, checkpoint: int = DEFAULT_CHECKPOINT,
                 on_disk_bytes: Callable[[int], None] | None = None, min_free_disk: int = 0,
                 commits: CommitQueue | None = None, checksum: bool = True,
                 checkpoint_interval: float = 0.0) -> None:
        assert upload.fd is not None
        self.upload = upload
        self.start = upload.record.offset
        self.received = 0
        self._limit = limit
        self._too_long = too_long
        self._checkpoint = checkpoint
        self._next_checkpoint = checkpoint
        self._interval = checkpoint_interval
        self._last_checkpoint = time.monotonic()
        self._on_disk = on_disk_bytes
        self._guard = FreeSpaceGuard(upload.store.dir, min_free_disk) if min_free_disk else None
        self.digest = running_sha256(upload) if checksum else None
        self._written = 0  # bytes the helper has written (and hashed); read on its thread
        os.lseek(upload.fd, self.start, os.SEEK_SET)
        # Without a digest to compute, the bytes are written fastest inline, as a raw body's are
        # (``writebehind``); the commits still go to their own thread.
        self._behind = WriteBehind(upload.fd, self._write, self.digest,
                                   helper=write_behind if self.digest is not None else None)
        self._submit = commits.submit if commits is not None else run_now
        self._checkpoint_commit: Commit | None = None
        self._ending = False  # the request's own last commit is asked for: checkpoints are redundant
        self.sealed = False
        self.finished = False
        self.closed = False

    @property
    def size(self) -> int:
        """The upload's offset once this request's content is all written."""
        return self.start + self.received

    def _write(self, fd: int, data: bytes | bytearray | memoryview) -> None:
        write_all(fd, data)
        self._written += len(data)

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Append ``data``.

        Raises:
            BodyTooLarge, BadRequest: the content passes the limit (``too_long``'s error).
            InsufficientStorage: less than ``min_free_disk`` would stay free.
            OSError: an earlier queued write, or a checkpoint's commit, failed.
        """
        failed = self._checkpoint_commit.error if self._checkpoint_commit is not None else None
        if isinstance(failed, OSError):
            raise failed
        n = memoryview(data).nbytes
        if self._limit is not None and self.size + n > self._limit:
            raise self._too_long(self.size + n)
        if self._guard is not None:
            self._guard.check(self.received, n)
        self._behind.write(data)
        self.received += n
        if self._on_disk is not None:
            self._on_disk(n)
        if self.received >= self._next_checkpoint:
            now = time.monotonic()
            if now - self._last_checkpoint >= self._interval:
                self._last_checkpoint = now
                self._next_checkpoint = self.received + self._checkpoint
                self._behind.then(self._queue_checkpoint)
        return n

    def preempted(self) -> bool:
        """Whether a newer request for the upload asked this one to let go."""
        return self.upload.store.preempted(self.upload.id)

    def _queue_checkpoint(self) -> None:
        """On the helper thread, behind the queued writes: have what is written made durable."""
        offset, state = self.start + self._written, _state_of(self.digest)

        def commit() -> None:
            if not self._ending and self.upload.fd is not None:
                self.upload.commit(offset, hash_state=state)

        self._checkpoint_commit = self._submit(commit)

    def seal(self) -> None:
        """The content is all here: wait for its writes (not for a sync).

        Raises:
            OSError: a queued write failed.
        """
        self._behind.flush()
        self.sealed = True

    def finish(self, *, complete: bool, length: int | None) -> str | None:
        """On a handler thread, after ``seal``: commit the request's content, or, when it
        completes the upload, wait until no commit of it is left to run (its record is
        written by ``record_complete`` once the application has taken the file). Returns
        the upload's SHA-256 hex once it is complete.

        An upload that is not complete is let go of at once, before the answer goes out:
        the client's next request may reach another worker before this one is done.
        """
        assert self.sealed
        self.finished = self._ending = True
        sha256 = self.digest.hexdigest() if complete and self.digest is not None else None
        offset, state = self.size, _state_of(self.digest)

        def commit() -> None:
            if not complete:
                self.upload.commit(offset, hash_state=state, length=length)
                self.upload.close()

        self._submit(commit).wait()
        return sha256

    def record_complete(self, length: int, sha256: str | None) -> None:
        """The application has taken the completed upload: say so in its record (not synced:
        from now on the file is the application's, and a record lost in a crash only makes
        a client that asks start over)."""
        record = self.upload.record
        record.offset, record.length, record.complete, record.sha256 = self.size, length, True, sha256
        record.hash_state = ""
        record.expires = time.time() + self.upload.store.max_age
        self.upload.write_record(sync=False)

    def close(self) -> None:
        """The request is over: commit what arrived unless ``finish`` did, then let go of the
        upload (on the helper thread, behind the queued writes). Idempotent."""
        if self.closed:
            return
        self.closed = True
        if self._on_disk is not None and self.received:
            self._on_disk(-self.received)
        if self.finished:
            self.upload.close()
            return
        self._ending = True
        self._behind.then(self._commit_and_release)

    def _commit_and_release(self) -> None:
        """On the helper thread, behind the last write: queue the last commit, which lets go."""
        offset, state, upload = self.start + self._written, _state_of(self.digest), self.upload

        def commit() -> None:
            try:
                if upload.fd is not None:
                    upload.commit(offset, hash_state=state)
            except OSError as exc:  # the upload stays at its last durable offset
                error_log.error("committing partial upload %s at %d bytes failed: %s", upload.id, offset, exc)
            finally:
                upload.close()

        self._submit(commit)
