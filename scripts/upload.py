#!/usr/bin/env python3
"""Upload one file of any size to a prefork server (or any HTTP server).

Strategy: the file is streamed in 1 MiB blocks straight from disk to the
socket, never read whole into RAM. Multipart mode sends a single-part
``multipart/form-data`` body whose prefix and suffix are built in advance, so
the exact Content-Length is known and no chunked encoding is needed; raw mode
(``--raw``) sends the file itself as the body (PUT by default) with the
filename in ``X-Filename`` (percent-encoded) and ``?filename=``. A ``tqdm``
bar shows bytes, rate and ETA, all in binary units (KiB, MiB, GiB: tqdm's own
scaling would label 1024-based numbers "MB" and compute the rate in 1000s);
tqdm comes with ``pip install -e '.[upload]'`` and only ``--quiet`` runs
without it. SHA-256 is computed on the bytes as they are sent; the server's
answer and the local digest are printed, so the two can be compared. If the
server answers early (413, 507) the answer is still printed. ``--resumable``
sends it as a resumable upload to a collection URL (the IETF draft's client,
``resumable_client.py``): after ^C, a dropped connection or a server restart,
the same command resumes where the server's durable offset says.

Usage:
    scripts/upload.py http://127.0.0.1:8000/upload photo.jpg
    scripts/upload.py http://127.0.0.1:8000/upload big.iso --raw
    scripts/upload.py http://127.0.0.1:8000/resumable/ big.iso --resumable
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import os
import secrets
import sys
from collections.abc import Iterator
from typing import Any, Protocol
from urllib.parse import quote, urlencode, urlsplit, urlunsplit

BLOCK = 1 << 20
NO_TQDM = ("upload: the progress bar needs tqdm, which is not installed: "
           "pip install -e '.[upload]' (or pip install tqdm), or pass --quiet")
_UNITS = ("B", "KiB", "MiB", "GiB", "TiB")
BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {done}/{size} [{elapsed}<{remaining}, {speed}]"


class Progress(Protocol):
    """What the upload needs of a progress bar."""

    def update(self, n: int) -> object: ...
    def close(self) -> None: ...


class _NoBar:
    """The bar for --quiet: counts nothing, needs no tqdm."""

    def update(self, n: int) -> None:
        """Ignore progress."""

    def close(self) -> None:
        """Nothing to close."""


def binary_size(count: float) -> str:
    """Bytes in the largest binary unit below 1024 of it: ``5.00 MiB``, ``512 B``."""
    for unit in _UNITS:
        if abs(count) < 1024 or unit == _UNITS[-1]:
            return f"{count:.0f} B" if unit == "B" else f"{count:.2f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def progress_bar(total: int, name: str, quiet: bool, initial: int = 0) -> Progress:
    """A tqdm bar in binary units, or a silent one with --quiet.

    Raises:
        SystemExit: tqdm is missing (with the one-line message NO_TQDM).
    """
    if quiet:
        return _NoBar()
    try:
        from tqdm import tqdm  # type: ignore[import-untyped]
    except ImportError:
        raise SystemExit(NO_TQDM) from None

    class ByteBar(tqdm):  # type: ignore[misc]
        @property
        def format_dict(self) -> dict[str, Any]:
            fields: dict[str, Any] = super().format_dict
            rate = fields.get("rate")
            if rate is None and fields["elapsed"]:  # tqdm's smoothed rate is unset at the end
                rate = fields["n"] / fields["elapsed"]
            fields.update(done=binary_size(fields["n"]), size=binary_size(fields["total"] or 0),
                          speed="?" if rate is None else binary_size(rate) + "/s")
            return fields

    bar: Progress = ByteBar(total=total, initial=initial, desc=name[:30], file=sys.stderr, bar_format=BAR_FORMAT)
    return bar


def _quote_param(value: str) -> str:
    """A quoted-string for a multipart header parameter (WHATWG form encoding)."""
    return value.replace("\\", "\\\\").replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")


def multipart_envelope(field: str, filename: str, content_type: str) -> tuple[str, bytes, bytes]:
    """The boundary, the bytes before the file and the bytes after it."""
    boundary = "----prefork-upload-" + secrets.token_hex(16)
    head = (f"--{boundary}\r\n"
            f'Content-Disposition: form-data; name="{_quote_param(field)}"; '
            f'filename="{_quote_param(filename)}"\r\n'
            f"Content-Type: {content_type}\r\n\r\n").encode("utf-8")
    tail = f"\r\n--{boundary}--\r\n".encode("ascii")
    return boundary, head, tail


def file_blocks(path: str, digest: "hashlib._Hash", bar: Progress) -> Iterator[bytes]:
    """The file's bytes in blocks, hashed and counted on the bar as they go."""
    with open(path, "rb") as handle:
        while block := handle.read(BLOCK):
            digest.update(block)
            yield block
            bar.update(len(block))


def _connection(url: str, timeout: float) -> tuple[http.client.HTTPConnection, str]:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SystemExit(f"upload: not an http(s) URL: {url!r}")
    cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    target = urlunsplit(("", "", parts.path or "/", parts.query, ""))
    return cls(parts.hostname, parts.port, timeout=timeout), target


def upload(url: str, path: str, *, field: str = "upload", raw: bool = False, method: str | None = None,
           timeout: float = 60.0, quiet: bool = False) -> tuple[int, str, bytes, str]:
    """Send ``path`` to ``url``.

    Returns:
        (status, reason, response body, local SHA-256 hex).
    """
    size = os.path.getsize(path)
    name = os.path.basename(path)
    digest = hashlib.sha256()
    headers = {"Accept": "application/json", "User-Agent": "prefork-upload/1"}
    if raw:
        head, tail = b"", b""
        headers["Content-Type"] = "application/octet-stream"
        headers["X-Filename"] = quote(name, safe="")
        sep = "&" if urlsplit(url).query else "?"
        url = f"{url}{sep}{urlencode({'filename': name})}"
        verb = method or "PUT"
    else:
        boundary, head, tail = multipart_envelope(field, name, "application/octet-stream")
        headers["Content-Type"] = f"multipart/form-data; boundary={boundary}"
        verb = method or "POST"
    headers["Content-Length"] = str(len(head) + size + len(tail))
    conn, target = _connection(url, timeout)
    bar = progress_bar(size, name, quiet)
    try:
        try:
            conn.putrequest(verb, target, skip_accept_encoding=True)
            for key, value in headers.items():
                conn.putheader(key, value)
            conn.endheaders()
            conn.send(head)
            for block in file_blocks(path, digest, bar):
                conn.send(block)
            conn.send(tail)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered early (413, 507, ...): read what it said
        response = conn.getresponse()
        body = response.read()
    finally:
        bar.close()
        conn.close()
    return response.status, response.reason, body, digest.hexdigest()


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; exit status 0 on a 2xx answer."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url", help="where to send it, e.g. http://127.0.0.1:8000/upload")
    parser.add_argument("file", help="the file to upload")
    parser.add_argument("--field", default="upload", help="multipart field name (default: upload)")
    parser.add_argument("--raw", action="store_true", help="send the file as the raw body (PUT)")
    parser.add_argument("--method", help="HTTP method (default: POST, or PUT with --raw)")
    parser.add_argument("--timeout", type=float, default=60.0, help="socket timeout in seconds")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--resumable", action="store_true",
                        help="a resumable upload to this collection URL; run again to resume")
    args = parser.parse_args(argv)
    if args.resumable:
        return _main_resumable(args)
    try:
        status, reason, body, sha256 = upload(args.url, args.file, field=args.field, raw=args.raw,
                                              method=args.method, timeout=args.timeout, quiet=args.quiet)
    except OSError as exc:
        print(f"upload: {exc}", file=sys.stderr)
        return 2
    print(f"{status} {reason}")
    print(body.decode("utf-8", "replace"))
    print(f"local sha256: {sha256}")
    return 0 if 200 <= status < 300 else 1


def _main_resumable(args: argparse.Namespace) -> int:
    from resumable_client import UploadFailed, upload_resumable

    name = os.path.basename(args.file)
    try:
        answer, sha256 = upload_resumable(
            args.url, args.file, timeout=args.timeout,
            bar_for=lambda total, initial: progress_bar(total, name, args.quiet, initial),
            log=lambda message: print(f"upload: {message}", file=sys.stderr))
    except KeyboardInterrupt:
        print("upload: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except (UploadFailed, OSError) as exc:
        print(f"upload: {exc}", file=sys.stderr)
        return 2
    print(f"{answer.status} {answer.reason}")
    print(answer.body.decode("utf-8", "replace"))
    print(f"local sha256: {sha256}")
    return 0 if 200 <= answer.status < 300 else 1


if __name__ == "__main__":
    sys.exit(main())
