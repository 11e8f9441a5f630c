"""Static files for native apps: types, validators, conditional and range requests.

Strategy: ``serve_file`` opens the file once and answers from that descriptor
(so the size, validators and bytes all describe the same inode), then hands
the open file to ``Response`` positioned at the first byte to send, with the
byte count: the I/O layer sends it with ``sendfile`` from that offset and
never reads it into Python. Conditional requests follow RFC 9110 §13.2.2:
``If-None-Match`` wins over ``If-Modified-Since``; either gives 304 on GET
and HEAD. A single byte range (§14.1.2, first-last / first- / -suffix) gives
206 with ``Content-Range``; a range that starts past the end gives 416 with
``Content-Range: bytes */size``; several ranges, a malformed header or an
``If-Range`` that does not match are ignored (200 with the whole file), which
§14.2 allows. ``safe_join`` is the one place that turns a URL path into a
file system path, and it refuses anything that could leave the directory.
"""

from __future__ import annotations

import mimetypes
import os
import re
import stat
from email.utils import formatdate, parsedate_to_datetime
from typing import IO
from urllib.parse import quote

from prefork.apps.messages import HTTPError, Request, Response

__all__ = ["content_disposition", "guess_type", "safe_join", "serve_file"]

#: Stands for a range position of more than 18 digits: larger than any file.
HUGE_POSITION = 10**18
_RANGE = re.compile(r"bytes=\s*(?P<first>[0-9]*)\s*-\s*(?P<last>[0-9]*)\s*", re.ASCII)
# Text types are served as UTF-8; mimetypes does not know a charset.
_TEXT_TYPES = frozenset({"application/javascript", "text/javascript", "application/json",
                         "image/svg+xml", "application/xml"})
# Display-safe ASCII for the filename="..." fallback (RFC 6266 §4.3): no quotes,
# backslashes, control characters or path separators.
_UNSAFE_ASCII = re.compile(r'[^A-Za-z0-9 !#$&+,.=@^_`{}~()\[\]-]')


def guess_type(path: str) -> str:
    """The Content-Type for ``path`` from its extension (octet-stream when unknown)."""
    mime, encoding = mimetypes.guess_type(path, strict=False)
    if mime is None or encoding is not None:
        return "application/octet-stream"  # a .tar.gz is bytes to the browser, not a tar
    if mime.startswith("text/") or mime in _TEXT_TYPES:
        return f"{mime}; charset=utf-8"
    return mime


def content_disposition(filename: str, *, inline: bool = False) -> str:
    """A Content-Disposition value naming ``filename`` (RFC 6266 + RFC 8187).

    The plain ``filename`` is an ASCII stand-in; ``filename*`` carries the real name,
    percent-encoded UTF-8, so no header ever holds a raw non-ASCII byte or a quote.
    """
    kind = "inline" if inline else "attachment"
    fallback = _UNSAFE_ASCII.sub("_", filename).strip() or "download"
    encoded = quote(filename, safe="")
    if encoded == fallback:
        return f'{kind}; filename="{fallback}"'
    return f"{kind}; filename=\"{fallback}\"; filename*=UTF-8''{encoded}"


def safe_join(directory: str, path: str) -> str | None:
    """Resolve URL ``path`` under ``directory``, or None if it would leave it.

    Refused: NUL bytes, backslashes, absolute paths, ``..`` segments, segments that
    start with a dot (hidden files), and anything whose real path (symlinks resolved)
    is not inside the real ``directory``.
    """
    if not path or "\x00" in path or "\\" in path or path.startswith("/"):
        return None
    parts = path.split("/")
    if any(part.startswith(".") for part in parts if part):
        return None
    root = os.path.realpath(directory)
    candidate = os.path.realpath(os.path.join(root, *[p for p in parts if p]))
    if os.path.commonpath([root, candidate]) != root or candidate == root:
        return None
    return candidate


def serve_file(request: Request, path: str | os.PathLike[str], *, content_type: str | None = None,
               download_name: str | None = None, cache_control: str = "no-cache") -> Response:
    """Answer ``request`` with the file at ``path``.

    Args:
        request: the GET or HEAD request.
        path: a file system path the caller has validated (see ``safe_join``).
        content_type: overrides the type guessed from the extension.
        download_name: sent as an attachment under this name (Content-Disposition).
        cache_control: the Cache-Control value (``no-cache``: revalidate with the validators).

    Returns:
        200, 206, 304 or 416; the body (if any) is the open file, sent with sendfile.

    Raises:
        HTTPError: 404 when the path is not a readable regular file.
    """
    try:
        handle = open(path, "rb")  # noqa: SIM115 - the response closes it
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError, ValueError):
        raise HTTPError(404) from None
    try:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise HTTPError(404)
        return _respond(request, handle, info, content_type or guess_type(os.fspath(path)),
                        download_name, cache_control)
    except BaseException:
        handle.close()
        raise


def _respond(request: Request, handle: IO[bytes], info: os.stat_result, content_type: str,
             download_name: str | None, cache_control: str) -> Response:
    size = info.st_size
    etag = f'"{info.st_mtime_ns:x}-{size:x}-{info.st_ino:x}"'
    last_modified = formatdate(info.st_mtime, usegmt=True)
    headers = [("ETag", etag), ("Last-Modified", last_modified), ("Cache-Control", cache_control),
               ("Accept-Ranges", "bytes"), ("X-Content-Type-Options", "nosniff")]
    if _not_modified(request, etag, int(info.st_mtime)):
        handle.close()
        return Response(b"", 304, headers)
    headers.append(("Content-Type", content_type))
    if download_name is not None:
        headers.append(("Content-Disposition", content_disposition(download_name)))
    try:
        byte_range = _requested_range(request, etag, last_modified, size)
    except _NotSatisfiable:
        handle.close()
        headers = [h for h in headers if h[0] != "Content-Type"] + [
            ("Content-Range", f"bytes */{size}"), ("Content-Type", "text/plain; charset=utf-8")]
        return Response(b"416 Range Not Satisfiable\n", 416, headers)
    if byte_range is None:
        return Response(handle, 200, headers, count=size)
    first, last = byte_range
    handle.seek(first)
    headers.append(("Content-Range", f"bytes {first}-{last}/{size}"))
    return Response(handle, 206, headers, count=last - first + 1)


def _etag_matches(header: str, etag: str) -> bool:
    """Weak comparison (RFC 9110 §8.8.3.2), as If-None-Match requires."""
    if header.strip() == "*":
        return True
    opaque = etag.removeprefix("W/")
    return any(tag.strip().removeprefix("W/") == opaque for tag in header.split(","))


def _not_modified(request: Request, etag: str, mtime: int) -> bool:
    if request.method not in ("GET", "HEAD"):
        return False
    if_none_match = request.headers.get("if-none-match")
    if if_none_match:
        return _etag_matches(if_none_match, etag)
    since = _parse_date(request.headers.get("if-modified-since"))
    return since is not None and mtime <= since


def _parse_date(value: str) -> int | None:
    if not value:
        return None
    try:
        return int(parsedate_to_datetime(value).timestamp())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def _number_key(digits: str) -> tuple[int, str]:
    """Orders decimal strings of any length as their numbers, without ``int()``."""
    digits = digits.lstrip("0") or "0"
    return len(digits), digits


def _position(digits: str) -> int:
    """A range's byte position; ``HUGE_POSITION`` when it is longer than 18 digits.

    RFC 9110 §14.1.1 sets no length on a position, but ``int()`` refuses more than
    4,300 digits, and no file is 10**18 bytes: a huge first-pos is then unsatisfiable
    (416), a huge last-pos or suffix means "to the end" (§14.1.2).
    """
    length, digits = _number_key(digits)
    return int(digits) if length <= 18 else HUGE_POSITION


class _NotSatisfiable(Exception):
    """The one requested range starts past the end of the file (416)."""


def _requested_range(request: Request, etag: str, last_modified: str, size: int) -> tuple[int, int] | None:
    """The (first, last) byte range to send, or None for the whole file.

    Raises:
        _NotSatisfiable: the range cannot be served (416).
    """
    header = request.headers.get("range")
    if request.method != "GET" or not header:
        return None
    if_range = request.headers.get("if-range").strip()
    if if_range and if_range != etag and if_range != last_modified:
        return None  # the client's copy is stale: send it the whole new file (§13.1.5)
    match = _RANGE.fullmatch(header)
    if match is None:
        return None  # several ranges, another unit, or junk: ignored (§14.2)
    first, last = match["first"], match["last"]
    if not first:
        if not last:
            return None
        suffix = _position(last)
        if suffix == 0 or size == 0:
            raise _NotSatisfiable
        return max(0, size - suffix), size - 1
    if last and _number_key(last) < _number_key(first):
        return None  # invalid range-spec: the header MUST be ignored (§14.1.1)
    start = _position(first)
    end = _position(last) if last else size - 1
    if start >= size:
        raise _NotSatisfiable
    return start, min(end, size - 1)
