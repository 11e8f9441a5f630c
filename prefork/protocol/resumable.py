"""Resumable uploads, both dialects, sans-IO: what a request asks of an upload resource,
whether the resource's state allows it, and the header fields of every answer.

Two protocols share one URL space and are told apart by their header fields:

- the IETF draft "Resumable Uploads for HTTP" (draft-ietf-httpbis-resumable-upload; the
  section numbers cited are -12's, the newest full text we could read: of -15 only its
  title page was available): ``Upload-Complete``, ``Upload-Offset``,
  ``Upload-Length`` (Structured Field Items, RFC 9651), ``Upload-Limit`` (a Dictionary),
  ``application/partial-upload`` appends, ``104 (Upload Resumption Supported)``;
- tus 1.0.0 (core, creation, creation-with-upload, creation-defer-length, termination,
  expiration): every request but OPTIONS carries ``Tus-Resumable: 1.0.0``, appends are
  ``application/offset+octet-stream``.

A request with ``Tus-Resumable`` is tus; any other request is the draft's (an offset
retrieval or a cancellation carries no field of its own, §4.3, §4.5). A draft client
may send ``Upload-Draft-Interop-Version``; it is recorded and echoed, never required, and
the ``104`` goes only to a client whose version is one we speak (Appendix B: a client
ignores a 104 of another version, and one that sends none may not expect one).

Nothing here touches a file or a socket: ``classify`` reads a request head,
``check_append`` weighs an append against an ``UploadState``, and the ``*_headers``
functions build answers. Every refusal is a ``ResumableError`` with its status, the
draft's problem type where one is defined (§6, RFC 9457), and the fields to send.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
import re
from dataclasses import dataclass, field

from prefork.protocol.errors import ProtocolError
from prefork.protocol.http.headers import Headers
from prefork.protocol.http.response import HeaderItem, http_date, status_line_and_headers
from prefork.protocol.mediatype import essence

__all__ = [
    "Action", "Dialect", "PARTIAL_UPLOAD", "ResumableError", "ResumableRequest", "TUS_OFFSET_STREAM",
    "TUS_VERSION", "UploadLimits", "UploadState", "append_headers", "check_append", "check_size", "classify",
    "creation_headers",
    "dialect_headers", "error_response", "interim_response", "offset_headers", "wants_interim", "options_headers", "parse_sf_boolean", "parse_sf_integer",
    "parse_tus_metadata",
]

TUS_VERSION = "1.0.0"
#: Draft interop versions we answer with a 104: -09 to -11 (8) and -12 (9).
INTEROP_VERSIONS = frozenset({8, 9})
TUS_EXTENSIONS = "creation,creation-with-upload,creation-defer-length,termination,expiration"
#: The draft's media type for an append's content (§7).
PARTIAL_UPLOAD = "application/partial-upload"
#: tus's media type for an append's content.
TUS_OFFSET_STREAM = "application/offset+octet-stream"
PROBLEM_BASE = "https://iana.org/assignments/http-problem-types#"
#: RFC 9651 §3.3.1: at most 15 digits.
_SF_INTEGER = re.compile(rb"-?[0-9]{1,15}")
# An upload resource's id: what ``partial_uploads`` makes (URL-safe base64 of random bytes,
# after the server's ``[resumable] instance`` name and a dash when it has one).
_UPLOAD_ID = re.compile(r"[A-Za-z0-9_-]{16,64}")
_MAX_METADATA = 4096  # bytes of an Upload-Metadata field value


class Dialect(enum.Enum):
    """Which protocol a request speaks: ``Tus-Resumable`` present means tus."""

    DRAFT = "draft"
    TUS = "tus"


class Action(enum.Enum):
    """What a request asks of the upload collection or an upload resource."""

    CREATE = "create"    # draft §4.2, tus creation: POST to the collection
    OFFSET = "offset"    # draft §4.3, tus core: HEAD on the resource
    APPEND = "append"    # draft §4.4, tus core: PATCH on the resource
    CANCEL = "cancel"    # draft §4.5, tus termination: DELETE on the resource
    OPTIONS = "options"  # draft §4.1.4 (limits), tus core: capabilities


@dataclass(frozen=True, slots=True)
class UploadLimits:
    """What the server allows; announced in ``Upload-Limit`` (draft §4.1.4) and ``Tus-Max-Size``.

    Attributes:
        max_size: largest representation in bytes (None: no limit of its own).
        max_age: seconds an upload resource lives after its last append.
    """

    max_size: int | None
    max_age: int

    def field_value(self, remaining: int | None = None) -> str:
        """The ``Upload-Limit`` Dictionary (RFC 9651 §3.2); ``remaining``: the resource's own
        remaining lifetime instead of ``max_age``."""
        members = [] if self.max_size is None else [f"max-size={self.max_size}"]
        members.append(f"max-age={self.max_age if remaining is None else max(0, remaining)}")
        return ", ".join(members)


@dataclass(frozen=True, slots=True)
class UploadState:
    """The durable state of an upload resource (draft §4.1)."""

    offset: int
    length: int | None
    complete: bool


@dataclass(frozen=True, slots=True)
class ResumableRequest:
    """What one request asks of the resumable-upload URL space.

    Attributes:
        action: creation, offset retrieval, append, cancellation or options.
        dialect: the draft's or tus's.
        upload_id: the resource's id (None for creation and options on the collection).
        offset: ``Upload-Offset`` as sent (appends).
        complete: ``Upload-Complete`` (draft); for tus, None.
        length: ``Upload-Length`` as sent, or derived (draft §4.1.3: offset + Content-Length
            of a request that completes the upload).
        defer_length: tus ``Upload-Defer-Length: 1``.
        metadata: tus ``Upload-Metadata``, decoded (values None when the key has none).
        raw_metadata: the ``Upload-Metadata`` field value as sent (echoed on HEAD).
        interop_version: ``Upload-Draft-Interop-Version``, if sent.
        content_length: the request's Content-Length (None: chunked or none).
    """

    action: Action
    dialect: Dialect
    upload_id: str | None = None
    offset: int | None = None
    complete: bool | None = None
    length: int | None = None
    defer_length: bool = False
    metadata: dict[str, str | None] = field(default_factory=dict)
    raw_metadata: str | None = None
    interop_version: int | None = None
    content_length: int | None = None


class ResumableError(ProtocolError):
    """A refusal: the status, the draft's problem type (if any) and fields to send.

    Attributes:
        status: the status code.
        problem: the problem type's fragment (``mismatching-upload-offset``), or None.
        headers: extra response fields.
        members: extra members of the problem document (RFC 9457 §3.2).
    """

    def __init__(self, status: int, title: str, *, problem: str | None = None,
                 headers: list[tuple[str, str]] | None = None, members: dict[str, int] | None = None) -> None:
        super().__init__(title, status)
        self.title = title
        self.problem = problem
        self.headers = headers or []
        self.members = members or {}

    def body(self) -> tuple[str, bytes]:
        """The response body: (Content-Type, bytes); a problem document where a type is defined."""
        if self.problem is None:
            return "text/plain; charset=utf-8", f"{self.title}\n".encode()
        document: dict[str, object] = {"type": PROBLEM_BASE + self.problem, "title": self.title}
        document.update(self.members)
        return "application/problem+json", json.dumps(document).encode()


# --- Structured Field Items (RFC 9651) ------------------------------------------------------
def _item(value: bytes) -> bytes:
    """The bare item of an Item field: parameters (``;k=v``) are allowed and ignored."""
    return value.split(b";", 1)[0].strip(b" \t")


def parse_sf_integer(value: bytes | None) -> int | None:
    """A non-negative sf-integer (§3.3.1), or None: the draft ignores any other value (§4.1)."""
    if value is None:
        return None
    bare = _item(value)
    if not _SF_INTEGER.fullmatch(bare) or bare.startswith(b"-"):
        return None
    return int(bare)


def parse_sf_boolean(value: bytes | None) -> bool | None:
    """An sf-boolean (§3.3.6): ``?1`` or ``?0``; None for any other value."""
    if value is None:
        return None
    bare = _item(value)
    return {b"?1": True, b"?0": False}.get(bare)


def parse_tus_metadata(value: bytes) -> dict[str, str | None]:
    """tus ``Upload-Metadata``: ``key base64value`` pairs separated by commas.

    Raises:
        ResumableError: 400 on a malformed pair, a repeated key or bad base64.
    """
    if len(value) > _MAX_METADATA:
        raise ResumableError(400, f"Upload-Metadata is over {_MAX_METADATA} bytes")
    metadata: dict[str, str | None] = {}
    for pair in value.decode("latin-1").split(","):
        pair = pair.strip()
        if not pair:
            continue
        key, _, encoded = pair.partition(" ")
        encoded = encoded.strip()
        if not key or " " in encoded or key in metadata:
            raise ResumableError(400, f"Upload-Metadata: malformed or repeated pair {pair!r}")
        try:
            metadata[key] = base64.b64decode(encoded, validate=True).decode("utf-8") if encoded else None
        except (binascii.Error, UnicodeDecodeError):
            raise ResumableError(400, f"Upload-Metadata: {key!r} is not base64 of UTF-8 text") from None
    return metadata


# --- classifying a request ------------------------------------------------------------------
def classify(method: bytes, rest: str, headers: Headers, content_length: int | None) -> ResumableRequest:
    """What a request under the resumable prefix asks for.

    Args:
        method: the request method (``X-HTTP-Method-Override`` applies, as tus allows).
        rest: the path after the prefix: "" for the collection, else the upload id.
        headers: the request's fields.
        content_length: its Content-Length (None: chunked or none).

    Raises:
        ResumableError: the request is not one the protocols define (400, 404, 405, 412, 415).
    """
    override = headers.get(b"x-http-method-override")
    verb = (override or method).decode("latin-1").upper()
    tus_version = headers.get(b"tus-resumable")
    dialect = Dialect.TUS if tus_version is not None else Dialect.DRAFT
    if verb == "OPTIONS":
        return ResumableRequest(Action.OPTIONS, dialect)
    if tus_version is not None and tus_version.strip().decode("latin-1") != TUS_VERSION:
        raise ResumableError(412, f"Tus-Resumable {tus_version.decode('latin-1')!r} is not supported",
                             headers=[("Tus-Version", TUS_VERSION)])
    interop = parse_sf_integer(headers.get(b"upload-draft-interop-version"))
    offset = parse_sf_integer(headers.get(b"upload-offset"))
    length = parse_sf_integer(headers.get(b"upload-length"))
    complete = parse_sf_boolean(headers.get(b"upload-complete")) if dialect is Dialect.DRAFT else None
    if not rest:
        if verb not in ("POST", "PUT"):
            raise ResumableError(405, f"{verb} on the upload collection: create an upload with POST",
                                 headers=[("Allow", "POST, PUT, OPTIONS")])
        return _creation(headers, dialect, complete, length, interop, content_length)
    if not _UPLOAD_ID.fullmatch(rest):
        raise ResumableError(404, "no such upload")
    if verb in ("HEAD", "DELETE"):
        action = Action.OFFSET if verb == "HEAD" else Action.CANCEL
        return ResumableRequest(action, dialect, upload_id=rest, interop_version=interop,
                                content_length=content_length)
    if verb != "PATCH":
        raise ResumableError(405, f"{verb} on an upload resource", headers=[("Allow", "HEAD, PATCH, DELETE, OPTIONS")])
    wanted = TUS_OFFSET_STREAM if dialect is Dialect.TUS else PARTIAL_UPLOAD
    if essence(headers.get(b"content-type")) != wanted:
        raise ResumableError(415, f"an append's Content-Type must be {wanted}",
                             headers=[("Accept-Patch", f"{PARTIAL_UPLOAD}, {TUS_OFFSET_STREAM}")])
    if offset is None:
        raise ResumableError(400, "an append needs Upload-Offset")
    if dialect is Dialect.DRAFT and complete is None:
        raise ResumableError(400, "an append needs Upload-Complete (draft-15 §4.4.1)")
    return ResumableRequest(Action.APPEND, dialect, upload_id=rest, offset=offset, complete=complete,
                            length=_draft_length(complete, offset, content_length, length),
                            interop_version=interop, content_length=content_length)


def _creation(headers: Headers, dialect: Dialect, complete: bool | None, length: int | None,
              interop: int | None, content_length: int | None) -> ResumableRequest:
    """An upload creation (draft §4.2.1; tus creation, creation-with-upload, creation-defer-length)."""
    if dialect is Dialect.TUS:
        defer = headers.get(b"upload-defer-length")
        if defer is not None and defer.strip() != b"1":
            raise ResumableError(400, "Upload-Defer-Length must be 1")
        if length is None and defer is None:
            raise ResumableError(400, "creation needs Upload-Length or Upload-Defer-Length: 1")
        if length is not None and defer is not None:
            raise ResumableError(400, "Upload-Length and Upload-Defer-Length together")
        raw = headers.get(b"upload-metadata")
        has_body = bool(content_length) or headers.get(b"transfer-encoding") is not None
        if has_body and essence(headers.get(b"content-type")) != TUS_OFFSET_STREAM:
            raise ResumableError(415, f"creation-with-upload content must be {TUS_OFFSET_STREAM}")
        return ResumableRequest(Action.CREATE, dialect, offset=0, length=length, defer_length=defer is not None,
                                metadata=parse_tus_metadata(raw) if raw else {},
                                raw_metadata=raw.decode("latin-1") if raw else None,
                                interop_version=interop, content_length=content_length)
    if complete is None:
        raise ResumableError(400, "an upload creation needs Upload-Complete (draft-15 §4.2.1)")
    return ResumableRequest(Action.CREATE, dialect, offset=0, complete=complete,
                            length=_draft_length(complete, 0, content_length, length),
                            interop_version=interop, content_length=content_length)


def _draft_length(complete: bool | None, offset: int, content_length: int | None, declared: int | None) -> int | None:
    """The length a request indicates (draft §4.1.3): both indicators must agree.

    Raises:
        ResumableError: 400 ``inconsistent-upload-length``.
    """
    derived = offset + content_length if complete and content_length is not None else None
    if derived is not None and declared is not None and derived != declared:
        raise ResumableError(400, f"Upload-Length {declared} but the request ends the upload at {derived}",
                             problem="inconsistent-upload-length")
    return declared if declared is not None else derived


# --- weighing an append against the resource ------------------------------------------------
def check_append(request: ResumableRequest, state: UploadState, limits: UploadLimits) -> int | None:
    """Whether ``request`` may append to an upload in ``state``; returns the upload's length
    from now on (None: still unknown).

    Raises:
        ResumableError: 409 on a mismatching offset (draft §4.4.2, with the offset to
            resume at), 400 for a completed upload or inconsistent lengths, 413 past the
            limits (with ``Upload-Limit``, §4.1.4).
    """
    if state.complete:  # §4.4.2: never modified again; which problem depends on the content
        problem = "completed-upload" if request.content_length == 0 else "inconsistent-upload-length"
        raise ResumableError(400, "upload is already completed", problem=problem)
    if request.offset != state.offset:
        headers = [("Upload-Offset", str(state.offset))]
        raise ResumableError(409, "offset from request does not match offset of resource",
                             problem="mismatching-upload-offset", headers=headers,
                             members={"expected-offset": state.offset, "provided-offset": request.offset or 0})
    length = state.length
    if request.length is not None:
        if length is not None and request.length != length:
            raise ResumableError(400, f"upload length {request.length} differs from {length}",
                                 problem="inconsistent-upload-length")
        length = request.length
    # Without a Content-Length (chunked) the content reaches at least the current offset: a
    # declared length below what the resource already holds is refused all the same.
    reach = state.offset + (request.content_length or 0)
    check_size(length, reach, limits)
    if length is not None and reach > length:
        raise ResumableError(400, f"the content ends past the upload length {length}",
                             problem="inconsistent-upload-length")
    return length


def check_size(length: int | None, reach: int, limits: UploadLimits) -> None:
    """Refuse an upload whose length, or the offset a request would reach, passes ``max_size``.

    Raises:
        ResumableError: 413 with ``Upload-Limit`` (draft §4.1.4).
    """
    largest = max(length or 0, reach)
    if limits.max_size is not None and largest > limits.max_size:
        raise ResumableError(413, f"{largest} bytes is over the upload limit of {limits.max_size}",
                             headers=[("Upload-Limit", limits.field_value()), ("Tus-Max-Size", str(limits.max_size))])


# --- answers ----------------------------------------------------------------------------------
def dialect_headers(dialect: Dialect, interop: int | None) -> list[tuple[str, str]]:
    """The fields every answer of a dialect carries: tus's version, or the draft's interop version echoed."""
    if dialect is Dialect.TUS:
        return [("Tus-Resumable", TUS_VERSION)]
    return [] if interop is None else [("Upload-Draft-Interop-Version", str(interop))]


def error_response(error: ResumableError, dialect: Dialect, interop: int | None, *, close: bool) -> bytes:
    """A whole response for ``error``: its fields, the dialect's, and its body."""
    content_type, body = error.body()
    headers: list[HeaderItem] = [(b"Content-Type", content_type), (b"Content-Length", str(len(body))),
                                 (b"Date", http_date()), *error.headers, *dialect_headers(dialect, interop)]
    if close:
        headers.append((b"Connection", b"close"))
    return status_line_and_headers(error.status, headers) + body


def wants_interim(request: ResumableRequest) -> bool:
    """Whether a creation gets the ``104`` (§4.2.2, Appendix B): a draft client of a version we speak."""
    return request.dialect is Dialect.DRAFT and request.interop_version in INTEROP_VERSIONS


def interim_response(location: str, limits: UploadLimits, interop: int | None) -> bytes:
    """The ``104 (Upload Resumption Supported)`` interim response announcing a new resource (§5)."""
    lines = [b"HTTP/1.1 104 Upload Resumption Supported", b"Location: " + location.encode("latin-1"),
             b"Upload-Limit: " + limits.field_value().encode()]
    lines += [f"{name}: {value}".encode() for name, value in dialect_headers(Dialect.DRAFT, interop)]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def creation_headers(request: ResumableRequest, location: str, state: UploadState, limits: UploadLimits,
                     expires: str, remaining: int) -> list[tuple[str, str]]:
    """The fields of a ``201 (Created)`` for an upload that is not complete yet (§4.2.2, tus creation)."""
    headers = [("Location", location)] + dialect_headers(request.dialect, request.interop_version)
    if request.dialect is Dialect.TUS:
        return headers + [("Upload-Offset", str(state.offset)), ("Upload-Expires", expires)]
    return headers + [("Upload-Complete", "?0"), ("Upload-Offset", str(state.offset)),
                      ("Upload-Limit", limits.field_value(remaining))]


def append_headers(request: ResumableRequest, state: UploadState, expires: str) -> list[tuple[str, str]]:
    """The fields of a ``204`` acknowledging an append that left the upload incomplete (§4.4.2)."""
    headers = dialect_headers(request.dialect, request.interop_version) + [("Upload-Offset", str(state.offset))]
    if request.dialect is Dialect.TUS:
        return headers + [("Upload-Expires", expires)]
    return headers + [("Upload-Complete", "?1" if state.complete else "?0")]


def offset_headers(request: ResumableRequest, state: UploadState, limits: UploadLimits, expires: str,
                   remaining: int, raw_metadata: str | None) -> list[tuple[str, str]]:
    """The fields of a successful offset retrieval (§4.3.2; tus HEAD)."""
    headers = dialect_headers(request.dialect, request.interop_version)
    headers += [("Upload-Offset", str(state.offset)), ("Cache-Control", "no-store")]
    if request.dialect is Dialect.TUS:
        headers.append(("Upload-Length", str(state.length)) if state.length is not None
                       else ("Upload-Defer-Length", "1"))
        if raw_metadata:
            headers.append(("Upload-Metadata", raw_metadata))
        return headers + [("Upload-Expires", expires)]
    headers.append(("Upload-Complete", "?1" if state.complete else "?0"))
    if state.length is not None:
        headers.append(("Upload-Length", str(state.length)))
    return headers + [("Upload-Limit", limits.field_value(remaining))]


def options_headers(limits: UploadLimits) -> list[tuple[str, str]]:
    """Capabilities for both dialects: the draft's ``Accept-Patch`` and ``Upload-Limit``
    (§4.1.4) and tus's ``Tus-*`` fields."""
    headers = [("Accept-Patch", f"{PARTIAL_UPLOAD}, {TUS_OFFSET_STREAM}"), ("Upload-Limit", limits.field_value()),
               ("Tus-Resumable", TUS_VERSION), ("Tus-Version", TUS_VERSION), ("Tus-Extension", TUS_EXTENSIONS)]
    if limits.max_size is not None:
        headers.append(("Tus-Max-Size", str(limits.max_size)))
    return headers
