"""Benchmark: multipart/form-data parse throughput.

Strategy: build one file part of 1 GiB of incompressible-looking data (a
random 64 KiB block repeated; it never contains the delimiter) and feed the
whole body to ``MultipartParser`` in 64 KiB pieces, as a worker would after
``recv_into``. Only parsing is timed: the pieces are pre-built views.
The lead folds ``bench_multipart()`` into scripts/bench.py.
"""

from __future__ import annotations

import os
import time

from prefork.protocol.multipart import MultipartParser, PartData

BOUNDARY = b"----WebKitFormBoundarycriD3u6M0UuPR1ia"
PIECE = 64 * 1024


def _body_pieces(total: int) -> tuple[bytes, list[memoryview], bytes]:
    head = (
        b"--" + BOUNDARY + b"\r\n"
        b'Content-Disposition: form-data; name="upload"; filename="big.bin"\r\n'
        b"Content-Type: application/octet-stream\r\n\r\n"
    )
    block = os.urandom(PIECE)
    while b"\r\n--" + BOUNDARY[:8] in block:  # astronomically unlikely; keep it clean
        block = os.urandom(PIECE)
    view = memoryview(block)
    return head, [view] * (total // PIECE), b"\r\n--" + BOUNDARY + b"--\r\n"


def bench_multipart(total: int = 1 << 30) -> float:
    """Parse ``total`` bytes of file data fed in 64 KiB pieces and print MiB/s.

    Args:
        total: file-part bytes to parse (default 1 GiB).

    Returns:
        Throughput in MiB/s.
    """
    head, pieces, tail = _body_pieces(total)
    parser = MultipartParser(BOUNDARY)
    seen = 0
    start = time.perf_counter()
    parser.feed(head)
    for piece in pieces:
        for event in parser.feed(piece):
            if type(event) is PartData:
                seen += len(event.data)
    for event in parser.feed(tail) + parser.feed(b""):
        if type(event) is PartData:
            seen += len(event.data)
    elapsed = time.perf_counter() - start
    assert seen == total, (seen, total)
    rate = total / elapsed / (1 << 20)
    print(f"multipart parse: {total / (1 << 20):.0f} MiB in {elapsed:.3f} s = {rate:.0f} MiB/s")
    return rate


if __name__ == "__main__":
    bench_multipart()
