"""BackgroundSha256: same digest as hashlib, whatever the chunking and backlog."""

from __future__ import annotations

import hashlib
import os
import random

import pytest

from prefork import digest
from prefork.digest import BackgroundSha256


@pytest.mark.parametrize("seed", range(4))
def test_digest_equals_hashlib_for_random_chunks(seed: int) -> None:
    rng = random.Random(seed)
    data = rng.randbytes(3 * 1024 * 1024 + 17)
    background = BackgroundSha256()
    position = 0
    while position < len(data):
        step = rng.choice([1, 7, 4096, 65536, 1 << 20])
        background.update(data[position:position + step])
        position += step
    assert background.hexdigest() == hashlib.sha256(data).hexdigest()


def test_a_small_backlog_bound_still_gives_the_right_digest(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(digest, "MAX_BACKLOG", 10_000)
    data = os.urandom(2 * 1024 * 1024)
    background = BackgroundSha256()
    for start in range(0, len(data), 65536):
        background.update(data[start:start + 65536])
        assert background._queued <= 10_000 + 65536
    assert background.hexdigest() == hashlib.sha256(data).hexdigest()


def test_empty_digest_and_digests_in_a_forked_child() -> None:
    assert BackgroundSha256().hexdigest() == hashlib.sha256().hexdigest()
    pid = os.fork()
    if pid == 0:  # the helper thread does not survive fork: it must be started again
        child = BackgroundSha256()
        child.update(b"x" * 100_000)
        os._exit(0 if child.hexdigest() == hashlib.sha256(b"x" * 100_000).hexdigest() else 1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
