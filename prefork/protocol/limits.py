"""Protocol limits as frozen dataclasses with documented defaults.

Strategy: pure code never sees the config object; it receives one of these.
Each default carries the precedent it follows, so a reader can tell a safe
number from an arbitrary one. These defaults are the only place the numbers
are written: the ``[limits]`` and ``[websocket]`` keys of ``prefork.config.config``
take their defaults from here (the protocol layer may not import the config),
so a parser built without arguments runs with exactly what an unconfigured
server runs with. ``tests/test_worker_settings.py`` checks that they agree.
"""

from __future__ import annotations

from dataclasses import dataclass

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """Limits for the HTTP/1.1 request parser.

    Attributes:
        max_request_line: request-line bytes without CRLF (gunicorn and nginx: 8190) -> 414.
        max_header_bytes: whole header block in bytes (nginx large_client_header_buffers 4x8k
            is tighter; 64 KiB fits large cookies) -> 431.
        max_header_count: number of header fields (gunicorn: 100) -> 431.
        max_body_size: body bytes, declared or streamed; None means unlimited -> 413.
            10 GiB: room for disk images and videos while one request stays bounded
            (nginx's 1 MiB client_max_body_size is too small for an upload server;
            ``[staging] min_free_disk`` guards the disk itself).
        max_chunk_line: a chunk-size line with its extensions (h11 caps incomplete events;
            4 KiB is far beyond any real extension) -> 400.
        max_trailer_bytes: trailer block in bytes, same reasoning as headers -> 431.
    """

    max_request_line: int = 8190
    max_header_bytes: int = 64 * KiB
    max_header_count: int = 100
    max_body_size: int | None = 10 * GiB
    max_chunk_line: int = 4 * KiB
    max_trailer_bytes: int = 16 * KiB


@dataclass(frozen=True, slots=True)
class FormLimits:
    """Limits for the multipart/form-data parser.

    Attributes:
        max_parts: parts in one body (defnull/multipart: 128 by default; forms with
            many files exist, so 1000) -> 413.
        max_part_header_bytes: header block of one part (defnull/multipart: 8 KiB) -> 431.
        max_field_size: a non-file field held in RAM -> 413.
        max_fields_total: all non-file fields of one form together (Werkzeug's
            max_form_memory_size is 500 KB, Django's DATA_UPLOAD_MAX_MEMORY_SIZE
            2.5 MB); without it 1000 parts of 1 MiB each would be 1 GiB -> 413.
    """

    max_parts: int = 1000
    max_part_header_bytes: int = 16 * KiB
    max_field_size: int = 1 * MiB
    max_fields_total: int = 8 * MiB


@dataclass(frozen=True, slots=True)
class WsLimits:
    """Limits for WebSocket connections.

    Attributes:
        max_message_size: a reassembled (and decompressed) message (websockets: 1 MiB;
            aiohttp 4 MiB; Tornado 10 MiB; uvicorn 16 MiB, which we follow: large
            binary messages are a use case, and each connection may hold one
            unfinished message this big) -> close 1009.
        max_frame_size: one frame's payload -> close 1009. The server sets it to
            ``max_message_size``: a frame is never larger than its message, and data
            frames stream, so a separate frame limit would only force fragmentation.
    """

    max_message_size: int = 16 * MiB
    max_frame_size: int = 16 * MiB
