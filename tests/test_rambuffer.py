"""RamBuffer: what it reports (footprint) covers what it holds, up to its limit, and goes on close."""

from __future__ import annotations

import random

import psutil
import pytest

from prefork.staging.rambuffer import SMALL_BODY, RamBuffer
from prefork.staging.spool import BodySpool

MiB = 1024 * 1024


def test_footprint_covers_the_bytearray_of_a_small_body_at_every_size() -> None:
    rng = random.Random(1)
    buffer = RamBuffer(1 * MiB)
    expected = bytearray()
    while buffer.size < SMALL_BODY:
        piece = rng.randbytes(min(rng.choice([1, 3, 100, 4096, 20_000]), SMALL_BODY - buffer.size))
        bound = buffer.footprint(buffer.size + len(piece))  # charged before the append
        buffer.append(piece)
        expected += piece
        assert buffer._small.__alloc__() <= bound
        assert buffer.footprint() >= buffer._small.__alloc__()
    assert buffer.size == SMALL_BODY and buffer._map is None  # filled to the small bound, still a bytearray
    assert buffer.read(0, SMALL_BODY) == expected


def test_past_the_small_bound_the_bytes_live_in_an_mmap_charged_by_pages_up_to_the_limit() -> None:
    limit = 3 * MiB + 5
    buffer = RamBuffer(limit)
    data = random.Random(2).randbytes(limit)
    offset = 0
    for step in (SMALL_BODY, 1, 300_000, 1 * MiB, 2 * MiB):
        piece = data[offset:offset + step]
        buffer.append(memoryview(piece))
        offset += len(piece)
        if buffer.size <= SMALL_BODY:
            assert buffer._map is None
            continue
        assert buffer._map is not None and len(buffer._map) <= -(-limit // 4096) * 4096  # never past the limit
        assert buffer.footprint() == -(-buffer.size // 4096) * 4096
    assert buffer.size == limit == offset  # filled to its limit
    assert buffer.read(0, limit) == data and buffer.read(limit - 3, 10) == data[-3:]
    out = bytearray(100)
    assert buffer.readinto(SMALL_BODY - 50, memoryview(out)) == 100 and out == data[SMALL_BODY - 50:SMALL_BODY + 50]
    assert buffer.find(data[2 * MiB:2 * MiB + 16], 0, limit) == data.find(data[2 * MiB:2 * MiB + 16])
    with buffer.view() as whole:
        assert whole.nbytes == limit and whole[:5] == data[:5]
    mapped = buffer._map
    buffer.close()
    assert mapped.closed and buffer.size == 0 and buffer.footprint() <= 8


def test_close_with_a_view_still_held_does_not_fail() -> None:
    buffer = RamBuffer(1 * MiB)
    buffer.append(b"x" * (SMALL_BODY + 1))
    view = buffer.view()
    buffer.close()  # the mapping goes when the view does
    assert view[0] == ord("x")
    view.release()


def _rss() -> int:
    return int(psutil.Process().memory_info().rss)


def test_a_large_body_s_memory_goes_back_to_the_os_on_close() -> None:
    buffer = RamBuffer(64 * MiB)
    before = _rss()
    chunk = b"z" * MiB
    for _ in range(48):
        buffer.append(chunk)
    grown = _rss() - before
    buffer.close()
    returned = before + grown - _rss()
    assert grown >= 40 * MiB and returned >= 40 * MiB, (grown / MiB, returned / MiB)


class Budget:
    def __init__(self) -> None:
        self.used = 0

    def try_reserve(self, nbytes: int) -> bool:
        self.used += nbytes
        return True

    def release(self, nbytes: int) -> None:
        self.used -= nbytes


@pytest.mark.parametrize("sizes", [[7] * 50, [SMALL_BODY - 1, 2, 4096], [1000, 200_000, 1, 3 * MiB]])
def test_a_spool_reserves_what_its_ram_holds(sizes: list[int]) -> None:
    budget = Budget()
    with BodySpool(8 * MiB, budget=budget) as spool:
        for size in sizes:
            spool.write(b"s" * size)
            ram = spool._ram
            assert ram is not None
            held = ram._small.__alloc__() if ram._map is None else ram.footprint()
            assert budget.used >= held, (budget.used, held)
            # Reservations only grow: after the move to the mmap, the bytearray's bound may remain.
            assert budget.used <= max(ram.footprint(), RamBuffer(0).footprint(SMALL_BODY))
    assert budget.used == 0
