"""Shared test helpers for incremental (sans-IO) parsers.

Strategy: a parser that is correct for one split of its input must be correct
for every split. ``feed_variants`` runs a caller-supplied driver (build a fresh
parser, feed it a list of chunks, return the events) on the whole input, byte by
byte, at seeded random split points, and with trailing data, and requires the
same events from each (h11's ``tr()`` and ``t_body_reader`` do the same). A
raised error counts as a final event ``Raised(type, message)`` so that rejection
is also required to be split-independent, message included.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from prefork.protocol.errors import PreforkError

__all__ = ["Raised", "feed_variants", "random_splits"]

Driver = Callable[[list[bytes]], list[object]]


@dataclass(frozen=True)
class Raised:
    """An error raised by a driver, recorded as the last event."""

    type: type[BaseException]
    message: str


def random_splits(data: bytes, rng: random.Random, max_piece: int | None = None) -> list[bytes]:
    """Cut ``data`` at random points.

    Args:
        data: the bytes to cut.
        rng: the random source (seeded by the caller, for reproducibility).
        max_piece: longest piece; defaults to a random size up to ``len(data)``.

    Returns:
        Non-empty pieces that join to ``data``.
    """
    top = max_piece or rng.randint(1, max(1, len(data)))
    pieces, pos = [], 0
    while pos < len(data):
        step = rng.randint(1, top)
        pieces.append(data[pos : pos + step])
        pos += step
    return pieces


def _run(drive: Driver, chunks: list[bytes], errors: tuple[type[BaseException], ...]) -> list[object]:
    events: list[object] = []
    try:
        events = drive(chunks)
    except errors as exc:
        # A driver may attach the events it produced before failing.
        partial = getattr(exc, "events_so_far", [])
        events = [*partial, Raised(type(exc), str(exc))]
    return events


def feed_variants(
    drive: Driver,
    data: bytes,
    *,
    trailing: bytes | None = None,
    seeds: Iterable[int] = range(8),
    normalize: Callable[[list[object]], list[object]] = lambda events: events,
    errors: tuple[type[BaseException], ...] = (PreforkError,),
) -> list[object]:
    """Run ``drive`` over several splits of ``data`` and require identical events.

    Args:
        drive: builds a fresh parser, feeds it each chunk in turn (draining
            events as it goes) and returns the events. It may raise one of
            ``errors``; to have the events before the error compared too, set
            ``exc.events_so_far`` on the exception before it propagates.
        data: the input.
        trailing: if given, also feed ``data`` followed by this chunk and
            require that the events for ``data`` come first, unchanged
            (trailing bytes must not leak into or alter earlier events).
        seeds: seeds for the random-split variants.
        normalize: applied to every event list before comparing (e.g. merge
            adjacent body-data events, whose boundaries legitimately depend on
            the split).
        errors: exception types recorded as a ``Raised`` event.

    Returns:
        The normalized events of the whole-input run.

    Raises:
        AssertionError: some variant produced different events.
    """
    expected = normalize(_run(drive, [data] if data else [], errors))
    variants: list[tuple[str, Sequence[bytes]]] = [("byte-by-byte", [data[i : i + 1] for i in range(len(data))])]
    for seed in seeds:
        rng = random.Random(seed)
        variants.append((f"random seed {seed}", random_splits(data, rng)))
        variants.append((f"small random seed {seed}", random_splits(data, rng, max_piece=7)))
    for name, chunks in variants:
        got = normalize(_run(drive, list(chunks), errors))
        assert got == expected, f"{name}: {got!r} != {expected!r}"
    if trailing is not None:
        got = normalize(_run(drive, [data, trailing], errors))
        assert got[: len(expected)] == expected, f"with trailing data: {got!r} != {expected!r}"
        assert not any(isinstance(e, Raised) for e in expected) or got == expected
    return expected
