"""The commit thread of partial uploads, and the sink's use of it.

Commits run in the order they were asked for, on one thread; a checkpoint that
the request's own last commit makes redundant is skipped (one sync, not two);
the request's end waits for its commit, and a sink without checksum writes
inline and leaves the digest to whoever asks for it.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import pytest

from prefork.protocol.errors import BodyTooLarge
from prefork.staging.commit_queue import CommitQueue, run_now
from prefork.staging.partial_sink import PartialUploadSink
from prefork.staging.partial_uploads import PartialUpload, PartialUploadStore, UploadBusy, UploadRecord
from prefork.staging.spool import BodySpool
from prefork.staging.writebehind import MIN_CHUNK, WriteBehindHelper
from tests.server import wait_for


def too_long(reach: int) -> Exception:
    return BodyTooLarge(f"reach {reach}")


@pytest.fixture
def store(tmp_path: Path) -> PartialUploadStore:
    return PartialUploadStore(str(tmp_path / "partial"), max_age=3600)


def new_upload(store: PartialUploadStore) -> PartialUpload:
    return store.create(UploadRecord(id="", dialect="tus"))


def test_jobs_run_in_order_on_one_thread_and_wait_raises_their_error() -> None:
    commits = CommitQueue()
    seen: list[tuple[int, str]] = []
    jobs = [commits.submit(lambda n=n: seen.append((n, threading.current_thread().name))) for n in range(50)]

    def fail() -> None:
        raise OSError(28, "No space left on device")

    failing = commits.submit(fail)
    for job in jobs:
        job.wait()
    with pytest.raises(OSError, match="No space"):
        failing.wait()
    assert [n for n, _ in seen] == list(range(50))
    assert {name for _, name in seen} == {"upload-commits"}
    assert isinstance(failing.error, OSError)


def test_run_now_runs_at_once() -> None:
    seen: list[int] = []
    job = run_now(lambda: seen.append(1))
    assert seen == [1] and job.error is None
    job.wait()


def test_checkpoints_commit_behind_the_writes_without_stopping_them(store: PartialUploadStore) -> None:
    commits, helper = CommitQueue(), WriteBehindHelper()
    data = os.urandom(4 * MIN_CHUNK)
    sink = PartialUploadSink(new_upload(store), limit=None, too_long=too_long, write_behind=helper,
                             checkpoint=MIN_CHUNK, commits=commits)
    for position in range(0, len(data), MIN_CHUNK):
        sink.write(data[position:position + MIN_CHUNK])
    sink.seal()
    upload_id = sink.upload.id
    wait_for(lambda: store.read(upload_id).offset == len(data), 5.0,  # type: ignore[union-attr]
             what="the last checkpoint committed")
    assert sink.finish(complete=False, length=None) is None
    sink.close()
    with store.open(upload_id) as upload:  # finish's commit let go before it returned
        assert upload is not None and upload.record.offset == len(data)


def test_a_checkpoint_made_redundant_by_the_end_of_the_request_is_skipped(
        store: PartialUploadStore, monkeypatch: pytest.MonkeyPatch) -> None:
    commits = CommitQueue()
    gate = threading.Event()
    blocker = commits.submit(gate.wait)  # holds the commit thread until the request has ended
    syncs: list[int] = []
    real_fdatasync = os.fdatasync
    monkeypatch.setattr(os, "fdatasync", lambda fd: (syncs.append(fd), real_fdatasync(fd))[-1])
    sink = PartialUploadSink(new_upload(store), limit=None, too_long=too_long, write_behind=None,
                             checkpoint=MIN_CHUNK, commits=commits)
    data = os.urandom(3 * MIN_CHUNK)
    sink.write(data)  # past a checkpoint: its commit waits behind the blocker
    sink.seal()
    finished: list[str | None] = []
    ender = threading.Thread(target=lambda: finished.append(sink.finish(complete=True, length=len(data))))
    ender.start()
    wait_for(lambda: sink.finished, 5.0, what="finish asked for its commit")
    assert not finished  # it waits for its commit, which waits for the blocker
    gate.set()
    ender.join(5.0)
    blocker.wait()
    assert finished == [hashlib.sha256(data).hexdigest()]
    record = store.read(sink.upload.id)
    assert record is not None and not record.complete  # complete only once the application has the file
    sink.record_complete(len(data), finished[0])
    assert syncs == []  # the checkpoint was skipped, and a completed upload's data is not synced
    record = store.read(sink.upload.id)
    assert record is not None and (record.offset, record.complete) == (len(data), True)


def test_close_without_finish_commits_on_the_commit_thread_and_lets_go(store: PartialUploadStore) -> None:
    commits = CommitQueue()
    sink = PartialUploadSink(new_upload(store), limit=None, too_long=too_long, write_behind=WriteBehindHelper(),
                             commits=commits)
    sink.write(b"x" * (MIN_CHUNK + 1))
    sink.close()
    upload_id = sink.upload.id

    def reopened() -> bool:
        try:
            upload = store.open(upload_id)
        except UploadBusy:
            return False
        assert upload is not None
        offset = upload.record.offset
        upload.close()
        return offset == MIN_CHUNK + 1

    wait_for(reopened, 5.0, what="the upload committed and let go")


def test_without_checksum_the_sink_writes_inline_and_the_digest_is_read_back(store: PartialUploadStore) -> None:
    helper = WriteBehindHelper()
    sink = PartialUploadSink(new_upload(store), limit=None, too_long=too_long, write_behind=helper,
                             checksum=False)
    data = os.urandom(2 * MIN_CHUNK + 3)
    sink.write(data)
    assert os.path.getsize(sink.upload.data_path) == len(data)  # written inline, before write returned
    sink.seal()
    assert sink.digest is None
    assert sink.finish(complete=True, length=len(data)) is None
    upload = sink.upload
    assert upload.fd is not None
    spool = BodySpool.adopt(upload.fd, upload.data_path, len(data), None)
    upload.forget_data()
    assert spool.sha256 == hashlib.sha256(data).hexdigest()  # read back on first use
    spool.close()
    assert not os.path.exists(upload.data_path)  # not saved: the data file goes with the spool


def test_checkpoint_interval_spaces_the_commits(store: PartialUploadStore) -> None:
    data = os.urandom(4 * MIN_CHUNK)
    spaced = PartialUploadSink(new_upload(store), limit=None, too_long=too_long, write_behind=None,
                               checkpoint=MIN_CHUNK, checkpoint_interval=3600.0)
    every = PartialUploadSink(new_upload(store), limit=None, too_long=too_long, write_behind=None,
                              checkpoint=MIN_CHUNK, checkpoint_interval=0.0)
    for position in range(0, len(data), MIN_CHUNK):
        spaced.write(data[position:position + MIN_CHUNK])
        every.write(data[position:position + MIN_CHUNK])
    assert store.read(spaced.upload.id).offset == 0  # type: ignore[union-attr]  # an hour has not passed
    assert store.read(every.upload.id).offset == len(data)  # type: ignore[union-attr]
    spaced.close()  # the request's end commits whatever the interval held back
    assert store.read(spaced.upload.id).offset == len(data)  # type: ignore[union-attr]
    every.close()
