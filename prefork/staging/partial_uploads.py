"""Partial uploads on disk: a data file and a small durable record per upload resource.

Strategy: a resumable upload (``prefork.protocol.resumable``) outlives its
requests, its worker and the server, so its state lives in files, not in a
process: ``<id>.data`` holds the bytes and ``<id>.json`` the record (offset,
length, metadata, the running SHA-256 state, expiry). The record is the truth
and it never runs ahead of the disk: the data file is ``fdatasync``'ed before a
record naming a larger offset is written, and a record is replaced whole
(written to a temporary name, fsync'ed, renamed, the directory fsync'ed). After
a crash the data file may hold bytes past the record's offset; whoever opens the
upload next cuts them off, so the offset a client is told is only ever what is
durably stored.

Who may change an upload: the holder of an exclusive ``flock`` on its data
file. An append holds it for as long as it runs, in whichever worker; a second
request for the same upload gets ``UploadBusy`` (and may ``preempt`` the
first, which notices a marker file within a loop tick and lets go: the draft's
§4.4.3 asks that a new request win over one the client has given up on). The
sweeper takes the same lock, without waiting, before it deletes an expired
upload, and re-reads the record once it holds it, so it cannot delete a live
upload; and an opener checks, once locked, that its descriptor is still the
file at that name (the sweeper may have unlinked it in between).

Upload ids are 24 URL-safe characters from 18 random bytes: the URL is the
capability, and nobody can guess another client's. A server that is one of
several (``[resumable] instance``) puts its name in front, ``app1-<24>``: the
upload's files live on this server only, and a load balancer routes on that
prefix to send the follow-up requests back here (conf/haproxy.cfg,
conf/nginx.conf). With the longest name (16) the id has 41 characters, within
the 16 to 64 that ``prefork.protocol.resumable`` accepts.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import json
import os
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from prefork.protocol.resumable import UploadState
from prefork.staging.stagingfile import unlink_if_present

__all__ = ["PartialUpload", "PartialUploadStore", "UploadBusy", "UploadRecord"]

_RECORD = ".json"
_DATA = ".data"
_PREEMPT = ".preempt"
# A data file without a record is a creation cut off between its two steps.
_ORPHAN_GRACE = 60.0


class UploadBusy(Exception):
    """Another request holds the upload."""


@dataclass(slots=True)
class UploadRecord:
    """What is durably known about one upload resource.

    Attributes:
        id: the resource's id (its URL's last segment).
        dialect: ``"draft"`` or ``"tus"``, as it was created.
        offset: bytes durably stored.
        length: the representation's length, once known.
        complete: no more appends (draft ``Upload-Complete: ?1`` seen, or tus offset = length).
        created, expires: wall-clock seconds; ``expires`` moves on with every append.
        client: the address that created it (per-client limits).
        target: the creation request's target; the completed upload is handed to the app there.
        content_type, content_disposition: the creation request's (draft: the representation's).
        metadata: tus ``Upload-Metadata``, decoded; raw_metadata as sent (echoed on HEAD).
        interop_version: the draft interop version the client sent, if any.
        hash_state: hex of the SHA-256 state at ``offset`` (``sha256_state``), or "".
        sha256: the digest, once complete.
    """

    id: str
    dialect: str
    offset: int = 0
    length: int | None = None
    complete: bool = False
    created: float = 0.0
    expires: float = 0.0
    client: str = ""
    target: str = "/"
    content_type: str | None = None
    content_disposition: str | None = None
    metadata: dict[str, str | None] = field(default_factory=dict)
    raw_metadata: str | None = None
    interop_version: int | None = None
    hash_state: str = ""
    sha256: str | None = None

    @property
    def state(self) -> UploadState:
        return UploadState(self.offset, self.length, self.complete)

    def to_json(self) -> bytes:
        return json.dumps(dataclasses.asdict(self), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> UploadRecord:
        """Raises ValueError (or TypeError) on a record that is not one of ours: one
        written by another version, or by hand, must not reach the comparisons."""
        fields = json.loads(data)
        if not isinstance(fields, dict):
            raise ValueError("record is not an object")
        values = {k: v for k, v in fields.items() if k in _FIELD_TYPES}
        for name, value in values.items():
            kinds = _FIELD_TYPES[name]
            if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
                raise TypeError(f"record field {name!r} is {type(value).__name__}")
        return cls(**values)


# What each record field may hold once parsed from JSON (bool is an int: told apart above).
_NONE = type(None)
_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "id": (str,), "dialect": (str,), "offset": (int,), "length": (int, _NONE), "complete": (bool,),
    "created": (int, float), "expires": (int, float), "client": (str,), "target": (str,),
    "content_type": (str, _NONE), "content_disposition": (str, _NONE), "metadata": (dict,),
    "raw_metadata": (str, _NONE), "interop_version": (int, _NONE), "hash_state": (str,), "sha256": (str, _NONE),
}


class PartialUploadStore:
    """The directory of partial uploads.

    Args:
        dir: where data files and records live (created if missing, mode 0700);
            on the filesystem of ``[uploads] dir``, so a completed upload's ``save()``
            is a link.
        max_age: seconds an upload lives after its creation or last append.
        instance: this server's name (``[resumable] instance``), put in front of
            new ids as ``<instance>-``; "" none.
    """

    def __init__(self, dir: str, max_age: float, instance: str = "") -> None:
        self.dir = dir
        self.max_age = max_age
        self._id_prefix = f"{instance}-" if instance else ""
        os.makedirs(dir, mode=0o700, exist_ok=True)

    def _path(self, upload_id: str, suffix: str) -> str:
        return os.path.join(self.dir, upload_id + suffix)

    # --- reading ---------------------------------------------------------------------
    def read(self, upload_id: str, *, include_expired: bool = False) -> UploadRecord | None:
        """The upload's record (None: no such upload, or it has expired)."""
        try:
            with open(self._path(upload_id, _RECORD), "rb") as file:
                record = UploadRecord.from_json(file.read())
        except (OSError, ValueError, TypeError):  # missing, or not a record of ours
            return None
        return record if include_expired or record.expires > time.time() else None

    def records(self) -> Iterator[UploadRecord]:
        """Every record in the directory, expired ones included."""
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            return
        for name in names:
            if name.endswith(_RECORD):
                try:
                    with open(os.path.join(self.dir, name), "rb") as file:
                        yield UploadRecord.from_json(file.read())
                except (OSError, ValueError, TypeError):
                    continue

    def usage(self, client: str) -> tuple[int, int]:
        """(live partial uploads created by ``client``, bytes held by all live partial uploads)."""
        now, count, held = time.time(), 0, 0
        for record in self.records():
            if record.complete or record.expires <= now:
                continue
            held += record.offset
            count += record.client == client
        return count, held

    # --- creating and opening -------------------------------------------------------------
    def create(self, record: UploadRecord) -> PartialUpload:
        """Make a new upload resource from ``record`` (its id is chosen here), held locked."""
        while True:
            upload_id = self._id_prefix + secrets.token_urlsafe(18)
            try:
                fd = os.open(self._path(upload_id, _DATA), os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            except FileExistsError:
                continue
            break
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a new file: nobody else has it
        now = time.time()
        record = dataclasses.replace(record, id=upload_id, created=now, expires=now + self.max_age, offset=0)
        upload = PartialUpload(self, fd, record)
        try:
            upload.write_record(sync=False)  # on the loop thread: no sync; the first commit makes it durable
        except BaseException:
            upload.delete()
            raise
        return upload

    def open(self, upload_id: str, *, include_expired: bool = False) -> PartialUpload | None:
        """The upload, locked for this caller; None when it does not exist (or expired).

        Raises:
            UploadBusy: another request holds it.
        """
        path = self._path(upload_id, _DATA)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise UploadBusy(upload_id) from None
            record = self.read(upload_id, include_expired=include_expired)
            if record is None or not _same_file(fd, path):  # gone between our open and our lock
                os.close(fd)
                return None
            if not record.complete and os.fstat(fd).st_size != record.offset:
                os.ftruncate(fd, record.offset)  # bytes a crash left past the durable offset
        except BaseException:
            _close_quietly(fd)
            raise
        self.clear_preempt(upload_id)
        return PartialUpload(self, fd, record)

    def wait_open(self, upload_id: str, timeout: float, interval: float = 0.02) -> PartialUpload | None:
        """``open``, preempting a holder and waiting up to ``timeout`` s for it to let go.

        For requests on a handler thread (offset retrieval, cancellation).

        Raises:
            UploadBusy: the holder did not let go in time.
        """
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.open(upload_id)
            except UploadBusy:
                if time.monotonic() >= deadline:
                    raise
                self.preempt(upload_id)
                time.sleep(interval)

    # --- preemption -------------------------------------------------------------------------
    def preempt(self, upload_id: str) -> None:
        """Ask the request holding ``upload_id`` to let go (it checks ``preempted``)."""
        try:
            os.close(os.open(self._path(upload_id, _PREEMPT), os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
        except OSError:
            pass  # the holder then runs to its own end: a request that is late, not wrong

    def preempted(self, upload_id: str) -> bool:
        return os.path.exists(self._path(upload_id, _PREEMPT))

    def clear_preempt(self, upload_id: str) -> None:
        unlink_if_present(self._path(upload_id, _PREEMPT))

    # --- sweeping ---------------------------------------------------------------------------
    def sweep(self, now: float | None = None) -> int:
        """Remove expired uploads (and the leftovers of cut-off creations); the number removed.

        Never removes an upload someone holds, nor one whose record, re-read under the
        lock, has been renewed.
        """
        now = time.time() if now is None else now
        removed = 0
        for name in _listdir(self.dir):
            upload_id, suffix = os.path.splitext(name)
            path = os.path.join(self.dir, name)
            if suffix == _RECORD:
                removed += self._sweep_record(upload_id, now)
            elif suffix == _DATA and not os.path.exists(self._path(upload_id, _RECORD)):
                removed += self._sweep_orphan(path, now)
            elif ".json.tmp-" in name and _older_than(path, now, _ORPHAN_GRACE):
                unlink_if_present(path)
            elif (suffix == _PREEMPT and not os.path.exists(self._path(upload_id, _RECORD))
                  and _older_than(path, now, _ORPHAN_GRACE)):
                unlink_if_present(path)  # a preemption that came after its upload was gone
        return removed

    def _sweep_record(self, upload_id: str, now: float) -> int:
        record = self.read(upload_id, include_expired=True)
        if record is not None and record.expires > now:
            return 0
        try:
            upload = self.open(upload_id, include_expired=True)
        except UploadBusy:
            return 0
        if upload is None:  # no data file: a completed upload's record, kept until it expires
            unlink_if_present(self._path(upload_id, _RECORD))
            self.clear_preempt(upload_id)
            return 1
        with upload:
            current = self.read(upload_id, include_expired=True)  # renewed while we took the lock?
            if current is not None and current.expires > now:
                return 0
            upload.delete()
        return 1

    def _sweep_orphan(self, path: str, now: float) -> int:
        if not _older_than(path, now, _ORPHAN_GRACE):
            return 0
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            return 0
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return 0
        unlink_if_present(path)
        os.close(fd)
        return 1


class PartialUpload:
    """One upload resource, held locked by this process until ``close()``.

    Attributes:
        fd: the data file, positioned nowhere in particular (use pwrite or seek).
        record: the record as last written (or read).
    """

    def __init__(self, store: PartialUploadStore, fd: int, record: UploadRecord) -> None:
        self.store = store
        self.fd: int | None = fd
        self.record = record

    @property
    def id(self) -> str:
        return self.record.id

    @property
    def data_path(self) -> str:
        return self.store._path(self.record.id, _DATA)

    def commit(self, offset: int, *, hash_state: str, complete: bool = False, length: int | None = None,
               sha256: str | None = None, sync: bool = True) -> None:
        """Make ``offset`` bytes durable and record them (and renew the expiry).

        The data is synced before the record says so: never the other way round. Only the
        record of a completed upload, whose data is the application's from then on, is
        written without (``sync=False``).
        """
        assert self.fd is not None
        if sync:
            os.fdatasync(self.fd)
        record = self.record
        record.offset, record.hash_state, record.complete = offset, hash_state, complete or record.complete
        if length is not None:
            record.length = length
        if sha256 is not None:
            record.sha256 = sha256
        record.expires = time.time() + self.store.max_age
        self.write_record(sync=sync)

    def write_record(self, *, sync: bool = True) -> None:
        """Replace the record whole: temporary name, (fsync,) rename, (directory fsync).

        Unsynced (``sync=False``) only where losing the record costs a client a restart,
        never a wrong offset: a new upload's first record, a completed upload's last."""
        final = self.store._path(self.record.id, _RECORD)
        temporary = f"{final}.tmp-{os.getpid()}"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            data = self.record.to_json()
            written = os.write(fd, data)
            if written != len(data):
                raise OSError(errno.EIO, "short write of an upload record", temporary)
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, final)
        if sync:
            _fsync_dir(self.store.dir)

    def forget_data(self) -> None:
        """The data file was handed on (a completed upload): only the record stays, until it expires."""
        self.fd = None

    def delete(self) -> None:
        """Remove the upload: data, record and marker (cancellation, expiry)."""
        for suffix in (_DATA, _RECORD, _PREEMPT):
            unlink_if_present(self.store._path(self.record.id, suffix))
        self.close()
        _fsync_dir(self.store.dir)  # a cancelled upload must not come back after a power loss

    def close(self) -> None:
        """Let go of the lock (closing the descriptor releases it)."""
        fd, self.fd = self.fd, None
        if fd is not None:
            os.close(fd)

    def __enter__(self) -> PartialUpload:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


def _same_file(fd: int, path: str) -> bool:
    try:
        here, there = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except FileNotFoundError:
        return []


def _older_than(path: str, now: float, seconds: float) -> bool:
    try:
        return os.stat(path).st_mtime < now - seconds
    except FileNotFoundError:
        return False


def _close_quietly(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass
