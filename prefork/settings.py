"""The plain settings a connection runs with.

Strategy: the worker derives these from the configuration once, so the
per-connection code reads a frozen dataclass of plain values and never the
config object (the same rule as for the protocol layer's limits).
"""

from __future__ import annotations

from dataclasses import dataclass

from prefork.limits import FormLimits, HttpLimits


@dataclass(frozen=True, slots=True)
class ConnectionSettings:
    """What a connection needs to know of the configuration (plain values only)."""

    http_limits: HttpLimits
    header_timeout: float = 10.0
    keepalive_timeout: float = 5.0
    send_timeout: float = 60.0
    body_min_rate: int = 1024
    body_rate_window: float = 30.0
    staging_dir: str | None = None
    memory_threshold: int = 1024 * 1024
    min_free_disk: int = 0
    url_scheme: str = "http"
    form_limits: FormLimits = FormLimits()
    max_file_size: int | None = None
    checksum: bool = True  # SHA-256 of file parts while they arrive
