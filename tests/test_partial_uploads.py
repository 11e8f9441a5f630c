"""The staging layer of resumable uploads, without a server: the resumable SHA-256, the
store of partial uploads (records, locks, commit order, preemption, expiry, sweeping),
the append sink (inline and through a write-behind helper), the intake that opens
uploads at a request's head, and ``WriteBehind.then``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from prefork.config.settings import ResumableSettings
from prefork.protocol.errors import BodyTooLarge
from prefork.protocol.http.events import Request
from prefork.protocol.http.headers import Headers
from prefork.protocol.resumable import Action, classify
from prefork.staging import partial_uploads
from prefork.staging.partial_intake import ResumableExchange, ResumableUploads
from prefork.staging.partial_sink import PartialUploadSink, running_sha256
from prefork.staging.partial_uploads import PartialUpload, PartialUploadStore, UploadBusy, UploadRecord
from prefork.staging.sha256_state import ResumableSha256, hash_prefix
from prefork.staging.stagingfile import write_all
from prefork.staging.writebehind import MIN_CHUNK, WriteBehind, WriteBehindHelper
from tests.server import wait_for

needs_libcrypto = pytest.mark.skipif(not ResumableSha256.available, reason="libcrypto's SHA256 is not available")

_ID = re.compile(r"[A-Za-z0-9_-]{24}")
PREFIX = "/resumable/"
DRAFT_APPEND = (b"content-type", b"application/partial-upload")
TUS = (b"tus-resumable", b"1.0.0")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def poll(predicate: Callable[[], Any], timeout: float = 2.0, what: str = "condition") -> Any:
    """``tests.server.wait_for`` with a short interval: these waits are for threads of this process."""
    return wait_for(predicate, timeout, interval=0.002, what=what)


def open_when_free(store: PartialUploadStore, upload_id: str, timeout: float = 2.0) -> PartialUpload:
    """``store.open`` once whoever holds the upload (a helper thread) has let go."""
    def attempt() -> PartialUpload | None:
        try:
            return store.open(upload_id)
        except UploadBusy:
            return None
    return poll(attempt, timeout, f"upload {upload_id} free")


@pytest.fixture
def store(tmp_path: Path) -> PartialUploadStore:
    return PartialUploadStore(str(tmp_path / "partial"), max_age=3600)


@pytest.fixture
def helper() -> WriteBehindHelper:
    return WriteBehindHelper()


def new_upload(store: PartialUploadStore, **fields: Any) -> PartialUpload:
    return store.create(UploadRecord(id="", dialect=fields.pop("dialect", "draft"), **fields))


def record_path(store: PartialUploadStore, upload_id: str, suffix: str = ".json") -> Path:
    return Path(store.dir) / (upload_id + suffix)


def expire(upload: PartialUpload, ago: float = 10.0) -> None:
    upload.record.expires = time.time() - ago
    upload.write_record()


def store_bytes(upload: PartialUpload, data: bytes) -> None:
    """Write ``data`` at the upload's offset and commit it (no hash state)."""
    assert upload.fd is not None
    os.pwrite(upload.fd, data, upload.record.offset)
    upload.commit(upload.record.offset + len(data), hash_state="")


# --- ResumableSha256 and hash_prefix -----------------------------------------------------------
def _as(kind: str, piece: bytes) -> bytes | bytearray | memoryview:
    if kind == "bytes":
        return piece
    if kind == "bytearray":
        return bytearray(piece)
    if kind == "memoryview":
        return memoryview(bytearray(b"<" + piece + b">"))[1:-1]  # writable, not at the buffer's start
    if kind == "readonly":
        return memoryview(b"<" + piece + b">")[1:-1]  # read-only, and not a bytes object
    raise AssertionError(kind)


KINDS = ("bytes", "bytearray", "memoryview", "readonly")


@needs_libcrypto
@pytest.mark.parametrize("seed", range(6))
def test_sha256_state_restored_at_random_splits_equals_hashlib(seed: int) -> None:
    rng = random.Random(seed)
    data = rng.randbytes(rng.randrange(1, 3000))
    cuts = sorted(rng.sample(range(len(data) + 1), k=min(8, len(data) + 1)))
    digest = ResumableSha256()
    for start, end in zip([0, *cuts], [*cuts, len(data)]):
        digest.update(_as(rng.choice(KINDS), data[start:end]))  # some pieces are empty
        digest = ResumableSha256(digest.state())  # a resumption after every piece
        assert digest.hexdigest() == sha(data[:end])
    assert digest.hexdigest() == sha(data)


@needs_libcrypto
@pytest.mark.parametrize("kind", KINDS)
def test_sha256_each_input_kind(kind: str) -> None:
    digest = ResumableSha256()
    digest.update(_as(kind, b"hello "))
    digest.update(_as(kind, b""))
    digest.update(_as(kind, b"world" * 100))
    assert digest.hexdigest() == sha(b"hello " + b"world" * 100)


@needs_libcrypto
def test_sha256_multibyte_format_views_hash_their_bytes() -> None:
    import array
    words = array.array("I", range(100))
    for view in (memoryview(words), memoryview(words).toreadonly()):
        digest = ResumableSha256()
        digest.update(view)
        assert digest.hexdigest() == sha(words.tobytes())


@needs_libcrypto
def test_sha256_does_not_keep_an_export_of_a_bytearray() -> None:
    buffer = bytearray(b"abc")
    digest = ResumableSha256()
    digest.update(buffer)
    buffer.extend(b"def")  # BufferError if the hash still held a view of it
    assert digest.hexdigest() == sha(b"abc")


@needs_libcrypto
def test_sha256_empty_and_hexdigest_leaves_state_alone() -> None:
    digest = ResumableSha256()
    assert digest.hexdigest() == sha(b"")
    digest.update(b"")
    state = digest.state()
    assert ResumableSha256(state).hexdigest() == sha(b"")
    digest.update(b"ab")
    assert digest.hexdigest() == digest.hexdigest() == sha(b"ab")
    digest.update(b"c")
    assert digest.hexdigest() == sha(b"abc")


@needs_libcrypto
def test_sha256_state_is_bytes_that_round_trip_through_hex() -> None:
    digest = ResumableSha256()
    digest.update(b"x" * 70)  # a partial block pending in the state
    state = digest.state()
    assert isinstance(state, bytes)
    again = ResumableSha256(bytes.fromhex(state.hex()))
    again.update(b"y")
    assert again.hexdigest() == sha(b"x" * 70 + b"y")


@needs_libcrypto
def test_sha256_bad_state_is_value_error() -> None:
    good = ResumableSha256().state()
    tag = good[: good.index(b":") + 1]
    for bad in (b"", b"garbage", good[:-1], good + b"\0", b"ossl0:" + good[len(tag):], b"\0" * len(good)):
        with pytest.raises(ValueError, match="not a SHA-256 state"):
            ResumableSha256(bad)


@pytest.mark.parametrize("block", [1, 7, 1 << 20])
def test_hash_prefix_feeds_the_first_bytes(tmp_path: Path, block: int) -> None:
    data = random.Random(1).randbytes(1000)
    path = tmp_path / "f"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        for size in (0, 1, 999, 1000):
            digest = hashlib.sha256()
            hash_prefix(fd, size, digest, block=block)
            assert digest.hexdigest() == sha(data[:size])
        with pytest.raises(OSError, match="file ends at 1000 of 1001 bytes"):
            hash_prefix(fd, 1001, hashlib.sha256(), block=block)
    finally:
        os.close(fd)


# --- the store: records, ids, locks -----------------------------------------------------------------
def test_create_writes_the_record_as_json(store: PartialUploadStore) -> None:
    before = time.time()
    with new_upload(store, dialect="tus", length=42, client="10.0.0.1", target="/resumable/",
                    metadata={"filename": "a.txt", "empty": None}, raw_metadata="filename YS50eHQ=,empty",
                    offset=99) as upload:
        assert _ID.fullmatch(upload.id)
        on_disk = json.loads(record_path(store, upload.id).read_bytes())
        assert on_disk["id"] == upload.id
        assert on_disk["dialect"] == "tus"
        assert on_disk["offset"] == 0  # chosen by create, not the caller
        assert on_disk["length"] == 42
        assert on_disk["client"] == "10.0.0.1"
        assert on_disk["metadata"] == {"filename": "a.txt", "empty": None}
        assert on_disk["complete"] is False and on_disk["sha256"] is None
        assert before <= on_disk["created"] <= time.time()
        assert on_disk["expires"] == pytest.approx(on_disk["created"] + 3600)
        assert record_path(store, upload.id, ".data").stat().st_size == 0
        assert store.read(upload.id) == upload.record
        assert os.stat(store.dir).st_mode & 0o777 == 0o700
        assert record_path(store, upload.id, ".data").stat().st_mode & 0o777 == 0o600


def test_create_gives_unique_url_safe_ids(store: PartialUploadStore) -> None:
    ids = set()
    for _ in range(40):
        upload = new_upload(store)
        ids.add(upload.id)
        upload.close()
    assert len(ids) == 40
    assert all(_ID.fullmatch(upload_id) for upload_id in ids)
    assert {r.id for r in store.records()} == ids


def test_second_open_in_the_same_process_is_busy(store: PartialUploadStore) -> None:
    upload = new_upload(store)
    with pytest.raises(UploadBusy):  # the creator holds it
        store.open(upload.id)
    upload.close()
    with store.open(upload.id) as first:
        assert first is not None and first.record == upload.record
        with pytest.raises(UploadBusy):  # flock is per open file description, not per process
            store.open(upload.id)
    again = store.open(upload.id)
    assert again is not None
    again.close()
    again.close()  # idempotent


def test_open_unknown_or_expired_is_none(store: PartialUploadStore) -> None:
    assert store.open("A" * 24) is None
    upload = new_upload(store)
    expire(upload)
    upload.close()
    assert store.open(upload.id) is None
    expired = store.open(upload.id, include_expired=True)
    assert expired is not None
    expired.close()


def test_open_cuts_off_bytes_past_the_durable_offset(store: PartialUploadStore) -> None:
    with new_upload(store) as upload:
        store_bytes(upload, b"0123456789")
    data = record_path(store, upload.id, ".data")
    with open(data, "ab") as file:  # a crash after the write, before the commit
        file.write(b"torn bytes")
    assert data.stat().st_size == 20
    with store.open(upload.id) as reopened:
        assert reopened is not None and reopened.record.offset == 10
        assert os.fstat(reopened.fd).st_size == 10
    assert data.read_bytes() == b"0123456789"


def test_open_keeps_a_complete_uploads_data(store: PartialUploadStore) -> None:
    with new_upload(store) as upload:
        store_bytes(upload, b"abc")
        upload.commit(3, hash_state="", complete=True, length=3)
    data = record_path(store, upload.id, ".data")
    with open(data, "ab") as file:
        file.write(b"!")
    with store.open(upload.id) as reopened:
        assert reopened is not None and reopened.record.complete
    assert data.read_bytes() == b"abc!"


def test_commit_syncs_data_before_the_record_names_it(store: PartialUploadStore,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    upload = new_upload(store)
    assert upload.fd is not None
    data_fd = upload.fd
    calls: list[tuple[str, int]] = []
    real_fdatasync, real_replace = os.fdatasync, os.replace

    def fdatasync(fd: int) -> None:
        if fd == data_fd:
            calls.append(("fdatasync", os.fstat(fd).st_size))
        real_fdatasync(fd)

    def replace(src: Any, dst: Any, **kwargs: Any) -> None:
        if str(dst).endswith(".json"):
            offset = json.loads(Path(src).read_bytes())["offset"]
            assert offset <= os.fstat(data_fd).st_size, "the record would run ahead of the data"
            calls.append(("replace", offset))
        real_replace(src, dst, **kwargs)

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    monkeypatch.setattr(os, "replace", replace)
    os.pwrite(data_fd, b"x" * 5, 0)
    upload.commit(5, hash_state="")
    os.pwrite(data_fd, b"y" * 7, 5)
    upload.commit(12, hash_state="ab", complete=True, length=12, sha256="f" * 64)
    monkeypatch.undo()
    upload.close()
    assert calls == [("fdatasync", 5), ("replace", 5), ("fdatasync", 12), ("replace", 12)]
    record = store.read(upload.id)
    assert record is not None
    assert (record.offset, record.hash_state, record.complete, record.length, record.sha256) == (
        12, "ab", True, 12, "f" * 64)
    assert not list(Path(store.dir).glob("*.tmp-*"))


def test_commit_renews_the_expiry(store: PartialUploadStore) -> None:
    with new_upload(store) as upload:
        expire(upload)
        assert store.read(upload.id) is None
        upload.commit(0, hash_state="")
        record = store.read(upload.id)
        assert record is not None and record.expires > time.time() + 3000


# --- preemption and wait_open -----------------------------------------------------------------------
def test_preempt_marker(store: PartialUploadStore) -> None:
    with new_upload(store) as upload:
        assert not store.preempted(upload.id)
        store.preempt(upload.id)
        store.preempt(upload.id)  # twice is fine
        assert store.preempted(upload.id)
        store.clear_preempt(upload.id)
        assert not store.preempted(upload.id)
        store.clear_preempt(upload.id)  # and clearing nothing is too


def test_open_clears_the_preempt_marker(store: PartialUploadStore) -> None:
    upload = new_upload(store)
    store.preempt(upload.id)
    upload.close()
    with store.open(upload.id):
        assert not store.preempted(upload.id)


def test_wait_open_preempts_then_times_out(store: PartialUploadStore) -> None:
    holder = new_upload(store)
    started = time.monotonic()
    with pytest.raises(UploadBusy):
        store.wait_open(holder.id, timeout=0.1, interval=0.01)
    assert 0.1 <= time.monotonic() - started < 1.0
    assert store.preempted(holder.id)
    holder.close()


def test_wait_open_gets_the_upload_once_the_holder_lets_go(store: PartialUploadStore) -> None:
    holder = new_upload(store)

    def hold_until_preempted() -> None:
        poll(lambda: store.preempted(holder.id), what="preempt marker")
        holder.close()

    thread = threading.Thread(target=hold_until_preempted)
    thread.start()
    try:
        upload = store.wait_open(holder.id, timeout=2.0, interval=0.005)
    finally:
        thread.join(5)
    assert upload is not None and upload.id == holder.id
    assert not store.preempted(holder.id)
    upload.close()


def test_wait_open_unknown_is_none(store: PartialUploadStore) -> None:
    assert store.wait_open("B" * 24, timeout=0.05) is None


# --- reading, usage -----------------------------------------------------------------------------------
def test_read_expired_record_is_none(store: PartialUploadStore) -> None:
    with new_upload(store) as upload:
        expire(upload)
        assert store.read(upload.id) is None
        record = store.read(upload.id, include_expired=True)
        assert record is not None and record.id == upload.id


def test_read_expires_with_the_clock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1_000_000.0]

    class Clock:
        @staticmethod
        def time() -> float:
            return now[0]

    monkeypatch.setattr(partial_uploads, "time", Clock)
    store = PartialUploadStore(str(tmp_path / "p"), max_age=5)
    with new_upload(store) as upload:
        assert upload.record.expires == 1_000_005.0
        now[0] += 4.9
        assert store.read(upload.id) is not None
        now[0] += 0.1  # expires == now: expired
        assert store.read(upload.id) is None


@pytest.mark.parametrize("content", [b"", b"{not json", b"[1, 2]", b'"text"', b'{"dialect": "draft"}',
                                     b'{"id": "x", "dialect": "draft", "offset": 1, "nope": 1, "unknown": 2}'])
def test_read_ignores_a_record_that_does_not_parse(store: PartialUploadStore, content: bytes) -> None:
    upload_id = "C" * 24
    record_path(store, upload_id).write_bytes(content)
    record = store.read(upload_id, include_expired=True)
    if content.startswith(b'{"id"'):  # unknown keys are dropped, not an error
        assert record is not None and record.offset == 1
    else:
        assert record is None
        assert list(store.records()) == []


@pytest.mark.parametrize("call", ["read", "records", "usage", "sweep"])
def test_a_record_with_wrongly_typed_fields_is_not_one_of_ours(store: PartialUploadStore, call: str) -> None:
    # Valid JSON, but not a record this store wrote (a tampered file, another version's schema):
    # ``from_json`` promises ValueError/TypeError for it, so that read/records skip it.
    upload_id = "G" * 24
    record_path(store, upload_id).write_bytes(
        json.dumps({"id": upload_id, "dialect": "draft", "offset": None, "expires": "soon"}).encode())
    with new_upload(store, client="a") as live:
        store_bytes(live, b"abc")
    if call == "read":
        assert store.read(upload_id) is None
    elif call == "records":
        assert [r.id for r in store.records()] == [live.id]
    elif call == "usage":
        assert store.usage("a") == (1, 3)
    else:
        store.sweep()
        assert store.read(live.id) is not None


def test_usage_counts_live_partial_uploads(store: PartialUploadStore) -> None:
    uploads = [new_upload(store, client=client) for client in ("a", "a", "b", "a", "a")]
    store_bytes(uploads[0], b"x" * 10)
    store_bytes(uploads[2], b"y" * 5)
    store_bytes(uploads[3], b"z" * 100)
    uploads[3].commit(100, hash_state="", complete=True, length=100)  # complete: not partial
    store_bytes(uploads[4], b"w" * 1000)
    expire(uploads[4])  # expired: not live
    for upload in uploads:
        upload.close()
    assert store.usage("a") == (2, 15)
    assert store.usage("b") == (1, 15)
    assert store.usage("c") == (0, 15)


# --- sweeping -------------------------------------------------------------------------------------
def _files(store: PartialUploadStore) -> set[str]:
    return set(os.listdir(store.dir))


def test_sweep_removes_expired_and_keeps_live(store: PartialUploadStore) -> None:
    live, old = new_upload(store), new_upload(store)
    store_bytes(old, b"data")
    expire(old)
    store.preempt(old.id)
    live.close()
    old.close()
    assert store.sweep() == 1
    assert _files(store) == {live.id + ".data", live.id + ".json"}
    assert store.sweep() == 0


def test_sweep_with_a_later_now(store: PartialUploadStore) -> None:
    with new_upload(store) as upload:
        pass
    assert store.sweep(now=time.time() + 10) == 0
    assert store.sweep(now=time.time() + 3601) == 1
    assert _files(store) == set()
    assert upload.id not in {r.id for r in store.records()}


def test_sweep_never_removes_a_held_upload(store: PartialUploadStore) -> None:
    held = new_upload(store)
    expire(held)
    assert store.sweep() == 0
    assert _files(store) == {held.id + ".data", held.id + ".json"}
    held.close()
    assert store.sweep() == 1
    assert _files(store) == set()


def test_sweep_keeps_an_upload_renewed_while_it_took_the_lock(store: PartialUploadStore,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    with new_upload(store) as upload:
        expire(upload)
    real_open = store.open

    def open_after_renewal(upload_id: str, **kwargs: Any) -> PartialUpload | None:
        # Another worker appends between the sweeper's first read and its lock.
        renewed = dataclasses.replace(upload.record, expires=time.time() + 3600)
        record_path(store, upload_id).write_bytes(renewed.to_json())
        return real_open(upload_id, **kwargs)

    monkeypatch.setattr(store, "open", open_after_renewal)
    assert store.sweep() == 0
    assert _files(store) == {upload.id + ".data", upload.id + ".json"}
    monkeypatch.undo()
    assert store.open(upload.id) is not None  # and it is not left locked


def test_sweep_removes_a_record_whose_data_is_gone(store: PartialUploadStore) -> None:
    with new_upload(store) as upload:
        expire(upload)
    os.unlink(record_path(store, upload.id, ".data"))  # a completed upload's data was handed on
    assert store.sweep() == 1
    assert _files(store) == set()


def test_sweep_removes_old_orphan_data_files_only(store: PartialUploadStore) -> None:
    now = time.time()
    old, young = record_path(store, "D" * 24, ".data"), record_path(store, "E" * 24, ".data")
    old.write_bytes(b"cut off creation")
    young.write_bytes(b"creation under way")
    os.utime(old, (now - 61, now - 61))
    os.utime(young, (now - 59, now - 59))
    assert store.sweep(now=now) == 1
    assert _files(store) == {young.name}


def test_sweep_keeps_a_locked_orphan(store: PartialUploadStore) -> None:
    with new_upload(store) as upload:
        os.unlink(record_path(store, upload.id))
        path = record_path(store, upload.id, ".data")
        os.utime(path, (0, 0))
        assert store.sweep() == 0
        assert path.exists()
    assert store.sweep() == 1
    assert not path.exists()


def test_sweep_removes_stale_temporary_records(store: PartialUploadStore) -> None:
    with new_upload(store) as upload:
        pass
    now = time.time()
    stale = Path(store.dir) / f"{upload.id}.json.tmp-12345"
    fresh = Path(store.dir) / f"{upload.id}.json.tmp-12346"
    stale.write_bytes(b"{")
    fresh.write_bytes(b"{")
    os.utime(stale, (now - 120, now - 120))
    store.sweep(now=now)
    assert _files(store) == {upload.id + ".data", upload.id + ".json", fresh.name}
    assert store.read(upload.id) is not None


# --- the sink -----------------------------------------------------------------------------------
def too_long(reach: int) -> Exception:
    return BodyTooLarge(f"reach {reach}")


def sink_for(upload: PartialUpload, helper: WriteBehindHelper | None, **kwargs: Any) -> PartialUploadSink:
    kwargs.setdefault("limit", None)
    return PartialUploadSink(upload, too_long=too_long, write_behind=helper, **kwargs)


@pytest.fixture(params=["inline", "helper"])
def maybe_helper(request: pytest.FixtureRequest) -> Iterator[WriteBehindHelper | None]:
    yield WriteBehindHelper() if request.param == "helper" else None


def release(store: PartialUploadStore, sink: PartialUploadSink) -> PartialUpload:
    """Close ``sink`` and open its upload again, once the helper (if any) let go of it."""
    sink.close()
    return open_when_free(store, sink.upload.id)


def test_sink_appends_at_the_record_offset(store: PartialUploadStore,
                                           maybe_helper: WriteBehindHelper | None) -> None:
    first = sink_for(new_upload(store), maybe_helper)
    assert (first.start, first.size) == (0, 0)
    first.write(b"hello")
    first.seal()
    assert first.finish(complete=False, length=None) is None
    first.close()
    assert store.read(first.upload.id).offset == 5  # type: ignore[union-attr]
    second = sink_for(open_when_free(store, first.upload.id), maybe_helper)
    assert second.start == 5
    big = b"W" * (MIN_CHUNK + 3)  # queued when there is a helper
    assert second.write(bytearray(b" world ")) == 7
    assert second.write(memoryview(big)) == len(big)
    assert second.size == 12 + len(big)
    second.seal()
    second.finish(complete=False, length=None)
    second.close()
    assert record_path(store, first.upload.id, ".data").read_bytes() == b"hello world " + big


@needs_libcrypto
def test_sink_checkpoints_inline(store: PartialUploadStore) -> None:
    data = bytes(range(256)) * 4
    sink = sink_for(new_upload(store), None, checkpoint=100)
    upload_id = sink.upload.id
    seen = []
    for position in range(0, 350, 50):
        sink.write(data[position:position + 50])
        seen.append(store.read(upload_id).offset)  # type: ignore[union-attr]
    assert seen == [0, 100, 100, 200, 200, 300, 300]
    record = store.read(upload_id)
    assert record is not None
    assert ResumableSha256(bytes.fromhex(record.hash_state)).hexdigest() == sha(data[:300])
    sink.close()
    assert store.read(upload_id).offset == 350  # type: ignore[union-attr]


@needs_libcrypto
def test_sink_checkpoints_through_the_helper(store: PartialUploadStore, helper: WriteBehindHelper) -> None:
    data = random.Random(2).randbytes(3 * MIN_CHUNK)
    sink = sink_for(new_upload(store), helper, checkpoint=2 * MIN_CHUNK)
    upload_id = sink.upload.id
    for position in range(0, len(data), MIN_CHUNK):
        sink.write(data[position:position + MIN_CHUNK])
    sink.seal()  # waits for the queued writes and the checkpoint behind them
    record = store.read(upload_id)
    assert record is not None and record.offset == 2 * MIN_CHUNK
    assert ResumableSha256(bytes.fromhex(record.hash_state)).hexdigest() == sha(data[:2 * MIN_CHUNK])
    with pytest.raises(UploadBusy):  # the checkpoint does not let go of the upload
        store.open(upload_id)
    sink.close()
    with open_when_free(store, upload_id) as upload:
        assert upload.record.offset == len(data)


def test_sink_close_without_finish_commits_and_releases(store: PartialUploadStore,
                                                        maybe_helper: WriteBehindHelper | None) -> None:
    data = b"a" * (MIN_CHUNK + 10) + b"tail"
    sink = sink_for(new_upload(store), maybe_helper)
    sink.write(data[:MIN_CHUNK + 10])
    sink.write(data[MIN_CHUNK + 10:])
    sink.close()
    sink.close()  # idempotent
    with open_when_free(store, sink.upload.id) as upload:
        assert upload.record.offset == len(data)
        assert upload.record.complete is False
    assert sink.upload.fd is None
    assert record_path(store, sink.upload.id, ".data").read_bytes() == data


def test_sink_close_after_finish_releases_at_once(store: PartialUploadStore,
                                                  maybe_helper: WriteBehindHelper | None) -> None:
    sink = sink_for(new_upload(store), maybe_helper)
    sink.write(b"abc")
    sink.seal()
    sink.finish(complete=False, length=None)
    sink.close()
    with store.open(sink.upload.id) as upload:  # no wait: finish committed on this thread
        assert upload is not None and upload.record.offset == 3


def test_sink_on_disk_accounting(store: PartialUploadStore) -> None:
    charges: list[int] = []
    sink = sink_for(new_upload(store), None, on_disk_bytes=charges.append)
    sink.write(b"abc")
    sink.write(b"de")
    sink.close()
    assert charges == [3, 2, -5]


@pytest.mark.parametrize("resume", ["finish", "close"])
def test_sha256_of_an_upload_across_resumptions(store: PartialUploadStore, maybe_helper: WriteBehindHelper | None,
                                                 resume: str) -> None:
    rng = random.Random(3)
    pieces = [rng.randbytes(n) for n in (1, MIN_CHUNK + 5, 1000, 0, 2 * MIN_CHUNK + 1, 17)]
    whole = b"".join(pieces)
    upload = new_upload(store)
    for index, piece in enumerate(pieces):
        sink = sink_for(upload, maybe_helper, limit=len(whole))
        assert sink.start == len(b"".join(pieces[:index]))
        sink.write(piece)
        last = index == len(pieces) - 1
        if last or resume == "finish":
            sink.seal()
            digest = sink.finish(complete=last, length=len(whole) if last else None)
            if last:  # what the endpoint does once the application has taken the file
                sink.record_complete(len(whole), digest)
        sink.close()
        upload = open_when_free(store, upload.id)
    assert digest == sha(whole)
    record = upload.record
    assert (record.offset, record.complete, record.length, record.sha256) == (len(whole), True, len(whole), sha(whole))
    upload.close()
    assert record_path(store, upload.id, ".data").read_bytes() == whole


def test_sink_limit_raises_before_writing(store: PartialUploadStore, maybe_helper: WriteBehindHelper | None) -> None:
    upload = new_upload(store)
    store_bytes(upload, b"12345")
    sink = sink_for(upload, maybe_helper, limit=10)
    sink.write(b"abc")
    with pytest.raises(BodyTooLarge, match="reach 11"):
        sink.write(b"def")
    with pytest.raises(BodyTooLarge, match=f"reach {8 + MIN_CHUNK}"):
        sink.write(b"x" * MIN_CHUNK)
    assert sink.received == 3
    sink.write(b"de")  # reaching the limit exactly is fine
    sink.seal()
    assert sink.finish(complete=True, length=10) == sha(b"12345abcde")
    sink.close()
    assert record_path(store, upload.id, ".data").read_bytes() == b"12345abcde"


@pytest.mark.parametrize("hash_state", ["", "zz-not-hex", "00" * 120, "SAVED"])
def test_running_sha256_falls_back_to_hashing_the_prefix(store: PartialUploadStore, hash_state: str) -> None:
    upload = new_upload(store)
    sink = sink_for(upload, None)
    sink.write(b"first part, ")
    sink.close()
    upload = store.open(upload.id)
    assert upload is not None
    if hash_state == "SAVED":  # a state of another libcrypto build: the right size, another tag
        saved = bytes.fromhex(upload.record.hash_state)
        hash_state = (b"ossl0:" + saved[saved.index(b":") + 1:]).hex() if saved else ""
    upload.record.hash_state = hash_state
    upload.write_record()
    assert running_sha256(upload).hexdigest() == sha(b"first part, ")
    sink = sink_for(upload, None)
    sink.write(b"second part")
    sink.seal()
    assert sink.finish(complete=True, length=None) == sha(b"first part, second part")
    sink.close()


# --- the intake: ResumableUploads.begin ------------------------------------------------------------
def head(method: bytes, target: bytes, *headers: tuple[bytes, bytes], content_length: int | None = None,
         version: bytes = b"1.1") -> Request:
    return Request(method, target, version, Headers(list(headers)), True, False, None, content_length, False)


def settings(tmp_path: Path, **overrides: Any) -> ResumableSettings:
    values: dict[str, Any] = dict(prefix=PREFIX, dir=str(tmp_path / "resumable"), max_size=None,
                                  max_partial_bytes=None, max_uploads_per_client=10, expire_after=3600.0,
                                  checkpoint=1 << 20, checkpoint_interval=0.0)
    values.update(overrides)
    return ResumableSettings(**values)


@pytest.fixture
def uploads(tmp_path: Path) -> ResumableUploads:
    return ResumableUploads(settings(tmp_path), write_behind=None)


def upload_id_of(exchange: ResumableExchange) -> str:
    assert exchange.location.startswith(PREFIX)
    return exchange.location[len(PREFIX):]


def draft_create(uploads: ResumableUploads, *extra: tuple[bytes, bytes], client: str = "10.0.0.1",
                 complete: bytes = b"?0", content_length: int | None = 0, version: bytes = b"1.1") -> ResumableExchange:
    return uploads.begin(head(b"POST", PREFIX.encode(), (b"upload-complete", complete), *extra,
                              content_length=content_length, version=version), client)


def draft_append(uploads: ResumableUploads, upload_id: str, offset: int, *, complete: bytes = b"?0",
                 content_length: int | None = 0) -> ResumableExchange:
    return uploads.begin(head(b"PATCH", (PREFIX + upload_id).encode(), DRAFT_APPEND,
                              (b"upload-offset", str(offset).encode()), (b"upload-complete", complete),
                              content_length=content_length), "10.0.0.1")


def created(exchange: ResumableExchange) -> str:
    """The new upload's id, once its creation request is over (its sink closed)."""
    assert exchange.error is None and exchange.sink is not None
    exchange.sink.close()
    return upload_id_of(exchange)


def test_matches_prefix_with_and_without_slash(uploads: ResumableUploads) -> None:
    for target, expected in [(b"/resumable/", True), (b"/resumable", True), (b"/resumable/abc", True),
                             (b"/resumable?x=1", True), (b"/resumable/?x=1", True), (b"/resumables", False),
                             (b"/resumablex/", False), (b"/", False), (b"/other/resumable/", False)]:
        assert uploads.matches(head(b"POST", target)) is expected, target


def test_tus_creation_makes_a_record_and_a_sink(uploads: ResumableUploads) -> None:
    exchange = uploads.begin(head(b"POST", b"/resumable/?q", TUS, (b"upload-length", b"10"),
                                  (b"upload-metadata", b"filename YS50eHQ="), (b"content-type", b"text/plain"),
                                  content_length=0), "192.0.2.7")
    assert exchange.error is None and exchange.sink is not None
    assert exchange.interim is None and exchange.length == 10 and exchange.completes is False
    upload_id = upload_id_of(exchange)
    assert _ID.fullmatch(upload_id)
    record = uploads.store.read(upload_id)
    assert record is not None
    assert (record.dialect, record.length, record.offset, record.client, record.target) == (
        "tus", 10, 0, "192.0.2.7", "/resumable/?q")
    assert record.metadata == {"filename": "a.txt"} and record.raw_metadata == "filename YS50eHQ="
    assert record.content_type is None  # tus: not the representation's
    with pytest.raises(UploadBusy):  # the sink holds it
        uploads.store.open(upload_id)
    exchange.sink.close()
    with uploads.store.open(upload_id) as upload:
        assert upload is not None


def test_tus_creation_with_upload_completes(uploads: ResumableUploads) -> None:
    exchange = uploads.begin(head(b"POST", b"/resumable/", TUS, (b"upload-length", b"3"),
                                  (b"content-type", b"application/offset+octet-stream"), content_length=3), "c")
    assert exchange.error is None and exchange.sink is not None and exchange.completes
    exchange.sink.write(b"abc")
    with pytest.raises(Exception) as info:
        exchange.sink.write(b"d")
    assert getattr(info.value, "status", None) == 400
    exchange.sink.seal()
    assert exchange.sink.finish(complete=True, length=3) == sha(b"abc")
    exchange.sink.close()


def test_draft_creation_with_interop_version_gets_a_104(uploads: ResumableUploads) -> None:
    exchange = draft_create(uploads, (b"upload-draft-interop-version", b"9"),
                            (b"content-type", b"image/png"), (b"content-disposition", b'attachment; filename="a.png"'))
    assert exchange.error is None
    assert exchange.interim is not None and exchange.interim.startswith(b"HTTP/1.1 104")
    assert b"\r\nLocation: " + exchange.location.encode() + b"\r\n" in exchange.interim
    assert exchange.interim.endswith(b"\r\n\r\n")
    record = uploads.store.read(created(exchange))
    assert record is not None
    assert (record.dialect, record.interop_version, record.content_type, record.content_disposition) == (
        "draft", 9, "image/png", 'attachment; filename="a.png"')


@pytest.mark.parametrize("extra, version", [((), b"1.1"), (((b"upload-draft-interop-version", b"3"),), b"1.1"),
                                            (((b"upload-draft-interop-version", b"9"),), b"1.0")])
def test_draft_creation_without_a_version_we_speak_gets_no_104(uploads: ResumableUploads,
                                                              extra: tuple[tuple[bytes, bytes], ...],
                                                              version: bytes) -> None:
    exchange = draft_create(uploads, *extra, version=version)
    assert exchange.error is None and exchange.interim is None
    created(exchange)


def test_append_to_unknown_upload_is_404(uploads: ResumableUploads) -> None:
    exchange = draft_append(uploads, "F" * 24, 0)
    assert exchange.error is not None and exchange.error.status == 404
    assert exchange.sink is None


def test_append_with_wrong_offset_is_409_and_lets_go(uploads: ResumableUploads) -> None:
    upload_id = created(draft_create(uploads))
    exchange = draft_append(uploads, upload_id, 5, content_length=3)
    assert exchange.error is not None and exchange.error.status == 409
    assert ("Upload-Offset", "0") in exchange.error.headers
    assert exchange.sink is None
    with uploads.store.open(upload_id) as upload:
        assert upload is not None


def test_append_while_another_holds_it_is_423_and_preempts(uploads: ResumableUploads) -> None:
    first = draft_create(uploads)
    assert first.sink is not None
    upload_id = upload_id_of(first)
    exchange = draft_append(uploads, upload_id, 0, content_length=3)
    assert exchange.error is not None and exchange.error.status == 423
    assert ("Retry-After", "1") in exchange.error.headers
    assert uploads.store.preempted(upload_id)
    assert first.sink.preempted()
    first.sink.close()
    retry = draft_append(uploads, upload_id, 0, content_length=3)
    assert retry.error is None and retry.sink is not None
    assert not uploads.store.preempted(upload_id)
    retry.sink.close()


def test_append_with_complete_sets_completes(uploads: ResumableUploads) -> None:
    upload_id = created(draft_create(uploads))
    exchange = draft_append(uploads, upload_id, 0, complete=b"?1", content_length=5)
    assert exchange.error is None and exchange.sink is not None
    assert exchange.completes and exchange.length == 5 and exchange.location == PREFIX + upload_id
    exchange.sink.write(b"hello")
    exchange.sink.seal()
    assert exchange.sink.finish(complete=exchange.completes, length=exchange.length) == sha(b"hello")
    exchange.sink.record_complete(5, sha(b"hello"))  # what the endpoint does once the app has the file
    exchange.sink.close()
    record = uploads.store.read(upload_id)
    assert record is not None and record.complete and record.sha256 == sha(b"hello")
    incomplete = draft_append(uploads, created(draft_create(uploads)), 0, complete=b"?0", content_length=5)
    assert incomplete.error is None and not incomplete.completes
    assert incomplete.sink is not None
    incomplete.sink.close()


def test_per_client_limit_is_429(tmp_path: Path) -> None:
    uploads = ResumableUploads(settings(tmp_path, max_uploads_per_client=2), write_behind=None)
    created(draft_create(uploads, client="a"))
    created(draft_create(uploads, client="a"))
    refused = draft_create(uploads, client="a")
    assert refused.error is not None and refused.error.status == 429 and refused.sink is None
    assert ("Retry-After", "60") in refused.error.headers
    created(draft_create(uploads, client="b"))
    assert len(list(uploads.store.records())) == 3


def test_partial_store_budget_is_507(tmp_path: Path) -> None:
    uploads = ResumableUploads(settings(tmp_path, max_partial_bytes=100), write_behind=None)
    first = draft_create(uploads, content_length=60)
    assert first.sink is not None
    first.sink.write(b"x" * 60)
    first.sink.close()
    full = uploads.begin(head(b"POST", b"/resumable/", TUS, (b"upload-length", b"41"), content_length=0), "c")
    assert full.error is not None and full.error.status == 507 and full.sink is None
    fits = uploads.begin(head(b"POST", b"/resumable/", TUS, (b"upload-length", b"40"), content_length=0), "c")
    assert fits.error is None
    created(fits)


def test_unclassifiable_request_is_an_error_exchange(uploads: ResumableUploads) -> None:
    exchange = uploads.begin(head(b"GET", b"/resumable/"), "c")
    assert exchange.error is not None and exchange.error.status == 405
    assert exchange.sink is None and list(uploads.store.records()) == []


def test_append_through_a_helper(tmp_path: Path, helper: WriteBehindHelper) -> None:
    uploads = ResumableUploads(settings(tmp_path), write_behind=helper)
    upload_id = created(draft_create(uploads))
    open_when_free(uploads.store, upload_id).close()
    data = b"z" * (MIN_CHUNK * 2)
    exchange = draft_append(uploads, upload_id, 0, complete=b"?1", content_length=len(data))
    assert exchange.sink is not None and exchange.completes
    exchange.sink.write(data)
    exchange.sink.seal()
    assert exchange.sink.finish(complete=True, length=exchange.length) == sha(data)
    exchange.sink.close()


# --- WriteBehind.then ----------------------------------------------------------------------------
@pytest.fixture
def fd(tmp_path: Path) -> Iterator[int]:
    descriptor = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT)
    yield descriptor
    os.close(descriptor)


def test_then_runs_at_once_without_a_helper(fd: int) -> None:
    stream = WriteBehind(fd, write_all)
    ran: list[int] = []
    stream.write(b"abc")
    stream.then(lambda: ran.append(os.fstat(fd).st_size))
    assert ran == [3]
    assert stream.error is None


def test_then_runs_in_order_after_queued_writes(fd: int, helper: WriteBehindHelper) -> None:
    stream = WriteBehind(fd, write_all, helper=helper)
    ran: list[tuple[str, int, str]] = []

    def action(name: str) -> Callable[[], None]:
        return lambda: ran.append((name, os.fstat(fd).st_size, threading.current_thread().name))

    stream.write(b"a" * MIN_CHUNK)
    stream.then(action("first"))
    stream.write(b"b" * (MIN_CHUNK + 1))
    stream.write(b"c")  # inline, after the queue
    stream.then(action("second"))
    stream.then(action("third"))
    stream.flush()
    assert ran == [("first", MIN_CHUNK, "write-behind"), ("second", 2 * MIN_CHUNK + 2, "write-behind"),
                   ("third", 2 * MIN_CHUNK + 2, "write-behind")]
    assert stream.pending == 0


@pytest.mark.parametrize("behind", [False, True])
@pytest.mark.parametrize("error, message", [(OSError(28, "No space left"), "No space left"),
                                            (RuntimeError("oops"), "write-behind action failed: RuntimeError")])
def test_then_error_becomes_the_streams_error(fd: int, helper: WriteBehindHelper, behind: bool,
                                              error: Exception, message: str) -> None:
    stream = WriteBehind(fd, write_all, helper=helper if behind else None)
    ran: list[str] = []

    def failing() -> None:
        raise error

    stream.write(b"x" * MIN_CHUNK)
    stream.then(failing)  # does not raise here
    stream.then(lambda: ran.append("later"))  # later actions still run
    with pytest.raises(OSError, match=message):
        stream.flush()
    assert ran == ["later"]
    assert isinstance(stream.error, OSError)
    if isinstance(error, OSError):
        assert stream.error is error
    with pytest.raises(OSError, match=message):
        stream.write(b"more")
    assert os.fstat(fd).st_size == MIN_CHUNK


def test_then_keeps_the_first_error(fd: int) -> None:
    stream = WriteBehind(fd, write_all)
    first, second = OSError("first"), OSError("second")

    def raising(exc: OSError) -> Callable[[], None]:
        def run() -> None:
            raise exc
        return run

    stream.then(raising(first))
    stream.then(raising(second))
    assert stream.error is first


# --- [resumable] instance: the server's name in its upload ids ---------------------------------------
def test_instance_name_goes_in_front_of_new_ids_and_they_stay_valid_urls(tmp_path: Path) -> None:
    uploads = ResumableUploads(settings(tmp_path, instance="app1"), write_behind=None)
    upload_id = created(draft_create(uploads))
    assert re.fullmatch(r"app1-[A-Za-z0-9_-]{24}", upload_id), upload_id
    assert uploads.store.read(upload_id) is not None
    longest = PartialUploadStore(str(tmp_path / "long"), max_age=60, instance="A" * 16)
    with new_upload(longest) as upload:
        assert len(upload.id) == 41  # 16 + "-" + 24: within the protocol's 16 to 64
        request = classify(b"HEAD", upload.id, Headers([]), None)
        assert request.action is Action.OFFSET and request.upload_id == upload.id
    with new_upload(PartialUploadStore(str(tmp_path / "plain"), max_age=60)) as upload:
        assert _ID.fullmatch(upload.id)  # no instance: ids as before
