"""Tests for prefork.protocol.resumable: classify, check_append and the header builders, both dialects."""

from __future__ import annotations

import base64
import json

import pytest

from prefork.protocol.http.headers import Headers
from prefork.protocol.resumable import (
    PARTIAL_UPLOAD,
    PROBLEM_BASE,
    TUS_EXTENSIONS,
    TUS_OFFSET_STREAM,
    TUS_VERSION,
    Action,
    Dialect,
    ResumableError,
    ResumableRequest,
    UploadLimits,
    UploadState,
    append_headers,
    check_append,
    check_size,
    classify,
    creation_headers,
    interim_response,
    offset_headers,
    options_headers,
    parse_sf_boolean,
    parse_sf_integer,
    parse_tus_metadata,
)

UID = "AbCdEfGhIjKlMnOp_-0123456789"  # 28 URL-safe base64 characters
TUS = (b"tus-resumable", b"1.0.0")
LIMITS = UploadLimits(max_size=1000, max_age=3600)
ACCEPT_PATCH = ("Accept-Patch", f"{PARTIAL_UPLOAD}, {TUS_OFFSET_STREAM}")


def H(*pairs: tuple[bytes, bytes]) -> Headers:
    return Headers(list(pairs))


def b64(text: str) -> bytes:
    return base64.b64encode(text.encode())


def refused(method: bytes, rest: str, headers: Headers, content_length: int | None = None) -> ResumableError:
    with pytest.raises(ResumableError) as info:
        classify(method, rest, headers, content_length)
    return info.value


def draft_append(offset: int, complete: bool, content_length: int | None, length: int | None = None) -> ResumableRequest:
    return ResumableRequest(Action.APPEND, Dialect.DRAFT, upload_id=UID, offset=offset, complete=complete,
                            length=length, content_length=content_length)


def tus_append(offset: int, content_length: int | None, length: int | None = None) -> ResumableRequest:
    return ResumableRequest(Action.APPEND, Dialect.TUS, upload_id=UID, offset=offset, length=length,
                            content_length=content_length)


def appended(state: UploadState, request: ResumableRequest, limits: UploadLimits = LIMITS) -> ResumableError:
    with pytest.raises(ResumableError) as info:
        check_append(request, state, limits)
    return info.value


# --- Structured Field Items ---------------------------------------------------------------
@pytest.mark.parametrize(("value", "expected"), [
    (b"0", 0), (b"42", 42), (b" 7 ", 7), (b"12;a=1", 12), (b"12;a;b=?0", 12),
    (b"9" * 15, 10**15 - 1),
    (None, None), (b"", None), (b"-1", None), (b"-0", None), (b"9" * 16, None), (b"1.5", None),
    (b"abc", None), (b"12abc", None), (b"+3", None), (b"0x10", None), (b"1 2", None), (b";a=1", None),
])
def test_parse_sf_integer(value: bytes | None, expected: int | None) -> None:
    assert parse_sf_integer(value) == expected


@pytest.mark.parametrize(("value", "expected"), [
    (b"?1", True), (b"?0", False), (b"?1;x=2", True), (b" ?0 ", False), (b"?0;a", False),
    (None, None), (b"", None), (b"1", None), (b"?2", None), (b"true", None), (b"?", None), (b"?10", None),
])
def test_parse_sf_boolean(value: bytes | None, expected: bool | None) -> None:
    assert parse_sf_boolean(value) is expected


# --- tus Upload-Metadata ------------------------------------------------------------------
def test_metadata_pairs_and_empty_value() -> None:
    value = b"filename " + b64("r\u00e9sum\u00e9.pdf") + b",is_confidential, type " + b64("text/plain")
    assert parse_tus_metadata(value) == {"filename": "r\u00e9sum\u00e9.pdf", "is_confidential": None,
                                         "type": "text/plain"}


def test_metadata_key_with_trailing_space_and_no_value() -> None:
    assert parse_tus_metadata(b"flag ") == {"flag": None}


def test_metadata_empty_pairs_skipped() -> None:
    assert parse_tus_metadata(b"a " + b64("x") + b",,") == {"a": "x"}


def test_metadata_repeated_key() -> None:
    with pytest.raises(ResumableError) as info:
        parse_tus_metadata(b"a " + b64("x") + b",a " + b64("y"))
    assert info.value.status == 400
    assert str(info.value) == "Upload-Metadata: malformed or repeated pair 'a eQ=='"


def test_metadata_value_with_space() -> None:
    with pytest.raises(ResumableError) as info:
        parse_tus_metadata(b"a eA== eA==")
    assert info.value.status == 400


@pytest.mark.parametrize("encoded", [b"not*base64", b"eA=", b"eA", b"-_-_"])
def test_metadata_bad_base64(encoded: bytes) -> None:
    with pytest.raises(ResumableError) as info:
        parse_tus_metadata(b"k " + encoded)
    assert info.value.status == 400
    assert str(info.value) == "Upload-Metadata: 'k' is not base64 of UTF-8 text"


def test_metadata_not_utf8() -> None:
    with pytest.raises(ResumableError) as info:
        parse_tus_metadata(b"k " + base64.b64encode(b"\xff\xfe"))
    assert info.value.status == 400


def test_metadata_size_limit() -> None:
    at_limit = b"key " + b"QUFB" * 1023  # exactly 4096 bytes
    assert len(at_limit) == 4096
    assert parse_tus_metadata(at_limit) == {"key": "A" * 3069}
    with pytest.raises(ResumableError) as info:
        parse_tus_metadata(at_limit + b",")
    assert info.value.status == 400
    assert str(info.value) == "Upload-Metadata is over 4096 bytes"


def test_metadata_too_large_through_classify() -> None:
    err = refused(b"POST", "", H(TUS, (b"upload-length", b"5"), (b"upload-metadata", b"k " + b"A" * 4096)))
    assert err.status == 400


# --- classify: every action, both dialects ------------------------------------------------
def test_draft_create() -> None:
    req = classify(b"POST", "", H((b"upload-complete", b"?0")), None)
    assert req == ResumableRequest(Action.CREATE, Dialect.DRAFT, offset=0, complete=False)


def test_draft_create_put_and_interop_version() -> None:
    req = classify(b"PUT", "", H((b"upload-complete", b"?0"), (b"upload-draft-interop-version", b"7")), 0)
    assert (req.action, req.dialect, req.interop_version, req.content_length) == (Action.CREATE, Dialect.DRAFT, 7, 0)


def test_draft_create_needs_upload_complete() -> None:
    err = refused(b"POST", "", H())
    assert (err.status, str(err)) == (400, "an upload creation needs Upload-Complete (draft-15 §4.2.1)")
    assert refused(b"POST", "", H((b"upload-complete", b"yes"))).status == 400


def test_draft_create_complete_derives_length() -> None:
    req = classify(b"POST", "", H((b"upload-complete", b"?1")), 10)
    assert (req.length, req.complete, req.offset) == (10, True, 0)


def test_draft_create_incomplete_does_not_derive_length() -> None:
    assert classify(b"POST", "", H((b"upload-complete", b"?0")), 10).length is None
    assert classify(b"POST", "", H((b"upload-complete", b"?0"), (b"upload-length", b"99")), 10).length == 99


def test_draft_create_agreeing_length() -> None:
    req = classify(b"POST", "", H((b"upload-complete", b"?1"), (b"upload-length", b"10")), 10)
    assert req.length == 10


def test_draft_create_inconsistent_length() -> None:
    err = refused(b"POST", "", H((b"upload-complete", b"?1"), (b"upload-length", b"12")), 10)
    assert (err.status, err.problem) == (400, "inconsistent-upload-length")
    assert str(err) == "Upload-Length 12 but the request ends the upload at 10"


def test_draft_offset_and_cancel() -> None:
    head = classify(b"HEAD", UID, H((b"upload-draft-interop-version", b"6")), None)
    assert head == ResumableRequest(Action.OFFSET, Dialect.DRAFT, upload_id=UID, interop_version=6)
    delete = classify(b"DELETE", UID, H(), None)
    assert delete == ResumableRequest(Action.CANCEL, Dialect.DRAFT, upload_id=UID)


def test_draft_append() -> None:
    headers = H((b"content-type", PARTIAL_UPLOAD.encode()), (b"upload-offset", b"5"), (b"upload-complete", b"?0"))
    req = classify(b"PATCH", UID, headers, 20)
    assert req == ResumableRequest(Action.APPEND, Dialect.DRAFT, upload_id=UID, offset=5, complete=False,
                                   content_length=20)


def test_draft_append_content_type_parameters_and_case() -> None:
    headers = H((b"content-type", b"Application/Partial-Upload; x=1"), (b"upload-offset", b"0"),
                (b"upload-complete", b"?0"))
    assert classify(b"PATCH", UID, headers, 1).action is Action.APPEND


def test_draft_append_complete_derives_length() -> None:
    headers = H((b"content-type", PARTIAL_UPLOAD.encode()), (b"upload-offset", b"5"), (b"upload-complete", b"?1"))
    assert classify(b"PATCH", UID, headers, 10).length == 15
    assert classify(b"PATCH", UID, headers, None).length is None  # chunked: length still unknown


def test_draft_append_inconsistent_length() -> None:
    headers = H((b"content-type", PARTIAL_UPLOAD.encode()), (b"upload-offset", b"5"), (b"upload-complete", b"?1"),
                (b"upload-length", b"16"))
    err = refused(b"PATCH", UID, headers, 10)
    assert (err.status, err.problem) == (400, "inconsistent-upload-length")


def test_draft_append_missing_offset() -> None:
    headers = H((b"content-type", PARTIAL_UPLOAD.encode()), (b"upload-complete", b"?0"))
    err = refused(b"PATCH", UID, headers, 1)
    assert (err.status, str(err)) == (400, "an append needs Upload-Offset")
    bad = H((b"content-type", PARTIAL_UPLOAD.encode()), (b"upload-offset", b"-3"), (b"upload-complete", b"?0"))
    assert refused(b"PATCH", UID, bad, 1).status == 400


def test_draft_append_missing_complete() -> None:
    headers = H((b"content-type", PARTIAL_UPLOAD.encode()), (b"upload-offset", b"0"))
    err = refused(b"PATCH", UID, headers, 1)
    assert (err.status, str(err)) == (400, "an append needs Upload-Complete (draft-15 §4.4.1)")


def test_options_both_dialects() -> None:
    assert classify(b"OPTIONS", "", H(), None) == ResumableRequest(Action.OPTIONS, Dialect.DRAFT)
    assert classify(b"OPTIONS", UID, H(TUS), None) == ResumableRequest(Action.OPTIONS, Dialect.TUS)


def test_tus_options_ignores_version() -> None:
    # tus core: OPTIONS need not (and may wrongly) carry Tus-Resumable.
    assert classify(b"OPTIONS", "", H((b"tus-resumable", b"0.2.2")), None).action is Action.OPTIONS


def test_tus_create_with_length_and_metadata() -> None:
    raw = b"filename " + b64("a.txt") + b",empty"
    req = classify(b"POST", "", H(TUS, (b"upload-length", b"100"), (b"upload-metadata", raw)), 0)
    assert req == ResumableRequest(Action.CREATE, Dialect.TUS, offset=0, length=100,
                                   metadata={"filename": "a.txt", "empty": None}, raw_metadata=raw.decode(),
                                   content_length=0)
    assert req.complete is None


def test_tus_create_ignores_upload_complete() -> None:
    req = classify(b"POST", "", H(TUS, (b"upload-length", b"1"), (b"upload-complete", b"?1")), None)
    assert req.complete is None


def test_tus_create_deferred() -> None:
    req = classify(b"POST", "", H(TUS, (b"upload-defer-length", b"1")), None)
    assert (req.defer_length, req.length, req.metadata, req.raw_metadata) == (True, None, {}, None)


def test_tus_create_needs_length_or_defer() -> None:
    err = refused(b"POST", "", H(TUS))
    assert (err.status, str(err)) == (400, "creation needs Upload-Length or Upload-Defer-Length: 1")


def test_tus_create_both_length_and_defer() -> None:
    err = refused(b"POST", "", H(TUS, (b"upload-length", b"5"), (b"upload-defer-length", b"1")))
    assert (err.status, str(err)) == (400, "Upload-Length and Upload-Defer-Length together")


@pytest.mark.parametrize("value", [b"0", b"2", b"true", b""])
def test_tus_create_defer_must_be_1(value: bytes) -> None:
    err = refused(b"POST", "", H(TUS, (b"upload-defer-length", value)))
    assert (err.status, str(err)) == (400, "Upload-Defer-Length must be 1")


def test_tus_creation_with_upload() -> None:
    headers = H(TUS, (b"upload-length", b"10"), (b"content-type", TUS_OFFSET_STREAM.encode()))
    req = classify(b"POST", "", headers, 4)
    assert (req.action, req.content_length, req.offset) == (Action.CREATE, 4, 0)


@pytest.mark.parametrize("extra", [
    [(b"content-type", b"application/octet-stream")], [],
])
def test_tus_creation_with_upload_content_type(extra: list[tuple[bytes, bytes]]) -> None:
    err = refused(b"POST", "", H(TUS, (b"upload-length", b"10"), *extra), 4)
    assert (err.status, str(err)) == (415, f"creation-with-upload content must be {TUS_OFFSET_STREAM}")


def test_tus_creation_with_chunked_upload_content_type() -> None:
    headers = H(TUS, (b"upload-length", b"10"), (b"transfer-encoding", b"chunked"))
    assert refused(b"POST", "", headers, None).status == 415


def test_tus_offset_and_cancel() -> None:
    assert classify(b"HEAD", UID, H(TUS), None) == ResumableRequest(Action.OFFSET, Dialect.TUS, upload_id=UID)
    assert classify(b"DELETE", UID, H(TUS), None) == ResumableRequest(Action.CANCEL, Dialect.TUS, upload_id=UID)


def test_tus_append() -> None:
    headers = H(TUS, (b"content-type", TUS_OFFSET_STREAM.encode()), (b"upload-offset", b"7"))
    req = classify(b"PATCH", UID, headers, 3)
    assert req == ResumableRequest(Action.APPEND, Dialect.TUS, upload_id=UID, offset=7, content_length=3)


def test_tus_append_declares_deferred_length() -> None:
    headers = H(TUS, (b"content-type", TUS_OFFSET_STREAM.encode()), (b"upload-offset", b"7"),
                (b"upload-length", b"50"))
    assert classify(b"PATCH", UID, headers, 3).length == 50


def test_tus_append_missing_offset() -> None:
    err = refused(b"PATCH", UID, H(TUS, (b"content-type", TUS_OFFSET_STREAM.encode())), 3)
    assert (err.status, str(err)) == (400, "an append needs Upload-Offset")


@pytest.mark.parametrize(("tus", "content_type", "wanted"), [
    (False, TUS_OFFSET_STREAM, PARTIAL_UPLOAD),
    (False, "application/octet-stream", PARTIAL_UPLOAD),
    (False, None, PARTIAL_UPLOAD),
    (True, PARTIAL_UPLOAD, TUS_OFFSET_STREAM),
    (True, "text/plain", TUS_OFFSET_STREAM),
    (True, None, TUS_OFFSET_STREAM),
])
def test_append_content_type_415(tus: bool, content_type: str | None, wanted: str) -> None:
    pairs = [(b"upload-offset", b"0"), (b"upload-complete", b"?0")]
    if tus:
        pairs.append(TUS)
    if content_type is not None:
        pairs.append((b"content-type", content_type.encode()))
    err = refused(b"PATCH", UID, Headers(pairs), 1)
    assert (err.status, str(err)) == (415, f"an append's Content-Type must be {wanted}")
    assert err.headers == [ACCEPT_PATCH]


def test_method_override() -> None:
    headers = H(TUS, (b"x-http-method-override", b"patch"), (b"content-type", TUS_OFFSET_STREAM.encode()),
                (b"upload-offset", b"0"))
    assert classify(b"POST", UID, headers, 1).action is Action.APPEND
    assert classify(b"POST", UID, H(TUS, (b"x-http-method-override", b"DELETE")), None).action is Action.CANCEL
    assert classify(b"POST", UID, H((b"x-http-method-override", b"HEAD")), None).action is Action.OFFSET
    assert classify(b"GET", "", H((b"x-http-method-override", b"OPTIONS")), None).action is Action.OPTIONS
    err = refused(b"POST", "", H((b"x-http-method-override", b"GET")))
    assert err.status == 405


def test_lowercase_method() -> None:
    assert classify(b"head", UID, H(), None).action is Action.OFFSET


@pytest.mark.parametrize("version", [b"0.2.2", b"1.0", b"2.0.0", b""])
def test_tus_wrong_version_412(version: bytes) -> None:
    err = refused(b"HEAD", UID, H((b"tus-resumable", version)))
    assert err.status == 412
    assert str(err) == f"Tus-Resumable {version.decode()!r} is not supported"
    assert err.headers == [("Tus-Version", TUS_VERSION)]
    assert err.problem is None


def test_tus_version_checked_before_routing() -> None:
    assert refused(b"GET", "", H((b"tus-resumable", b"0.2.2"))).status == 412


@pytest.mark.parametrize("method", [b"GET", b"PATCH", b"DELETE", b"HEAD"])
def test_collection_405(method: bytes) -> None:
    err = refused(method, "", H())
    assert err.status == 405
    assert err.headers == [("Allow", "POST, PUT, OPTIONS")]
    assert str(err) == f"{method.decode()} on the upload collection: create an upload with POST"


@pytest.mark.parametrize("method", [b"GET", b"POST", b"PUT"])
def test_resource_405(method: bytes) -> None:
    for headers in (H(), H(TUS)):
        err = refused(method, UID, headers)
        assert err.status == 405
        assert err.headers == [("Allow", "HEAD, PATCH, DELETE, OPTIONS")]


@pytest.mark.parametrize("rest", [
    "A" * 15, "A" * 65, UID[:15], UID + "!", "abc/def" + "A" * 10, "A" * 16 + "/", "A" * 16 + "=", "..%2F" * 4,
    "\u00e9" * 20, " " + "A" * 16,
])
def test_malformed_id_404(rest: str) -> None:
    for method in (b"HEAD", b"PATCH", b"DELETE"):
        err = refused(method, rest, H())
        assert (err.status, str(err)) == (404, "no such upload")


@pytest.mark.parametrize("rest", ["A" * 16, "z" * 64, "-_" * 8])
def test_id_bounds_accepted(rest: str) -> None:
    assert classify(b"HEAD", rest, H(), None).upload_id == rest


# --- check_append -------------------------------------------------------------------------
def test_check_append_ok_returns_length() -> None:
    state = UploadState(offset=5, length=None, complete=False)
    assert check_append(draft_append(5, False, 10), state, LIMITS) is None
    assert check_append(draft_append(5, True, 10, length=15), state, LIMITS) == 15
    known = UploadState(offset=5, length=20, complete=False)
    assert check_append(tus_append(5, 15), known, LIMITS) == 20
    assert check_append(tus_append(5, None), known, LIMITS) == 20
    assert check_append(tus_append(5, 3, length=20), known, LIMITS) == 20


def test_check_append_completed_empty() -> None:
    err = appended(UploadState(10, 10, True), draft_append(10, True, 0))
    assert (err.status, err.problem) == (400, "completed-upload")
    assert str(err) == "upload is already completed"


@pytest.mark.parametrize("content_length", [5, None])
def test_check_append_completed_with_content(content_length: int | None) -> None:
    err = appended(UploadState(10, 10, True), draft_append(10, False, content_length))
    assert (err.status, err.problem) == (400, "inconsistent-upload-length")


def test_check_append_completed_before_offset() -> None:
    err = appended(UploadState(10, 10, True), draft_append(3, False, 0))
    assert (err.status, err.problem) == (400, "completed-upload")


@pytest.mark.parametrize("provided", [0, 4, 6])
def test_check_append_wrong_offset(provided: int) -> None:
    err = appended(UploadState(5, None, False), draft_append(provided, False, 1))
    assert (err.status, err.problem) == (409, "mismatching-upload-offset")
    assert err.headers == [("Upload-Offset", "5")]
    assert err.members == {"expected-offset": 5, "provided-offset": provided}
    assert str(err) == "offset from request does not match offset of resource"


def test_check_append_wrong_offset_tus() -> None:
    err = appended(UploadState(5, 10, False), tus_append(0, 1))
    assert (err.status, err.headers) == (409, [("Upload-Offset", "5")])


def test_check_append_length_change() -> None:
    err = appended(UploadState(5, 20, False), tus_append(5, 1, length=21))
    assert (err.status, err.problem) == (400, "inconsistent-upload-length")
    assert str(err) == "upload length 21 differs from 20"
    err = appended(UploadState(5, 20, False), draft_append(5, True, 10, length=15))
    assert (err.status, err.problem) == (400, "inconsistent-upload-length")


@pytest.mark.parametrize(("state", "request_"), [
    (UploadState(0, None, False), tus_append(0, 1001)),            # content past max_size
    (UploadState(990, None, False), draft_append(990, False, 11)),  # offset + content past max_size
    (UploadState(0, None, False), tus_append(0, 1, length=1001)),  # declared length past max_size
    (UploadState(0, 2000, False), tus_append(0, 1)),                # stored length past max_size
])
def test_check_append_over_max_size(state: UploadState, request_: ResumableRequest) -> None:
    err = appended(state, request_)
    assert err.status == 413
    assert err.problem is None
    assert err.headers == [("Upload-Limit", "max-size=1000, max-age=3600"), ("Tus-Max-Size", "1000")]


def test_check_append_at_max_size() -> None:
    assert check_append(tus_append(990, 10, length=1000), UploadState(990, None, False), LIMITS) == 1000


def test_check_append_no_max_size() -> None:
    unlimited = UploadLimits(max_size=None, max_age=60)
    assert check_append(tus_append(0, 10**12), UploadState(0, None, False), unlimited) is None


def test_check_append_content_past_length() -> None:
    err = appended(UploadState(5, 10, False), tus_append(5, 6))
    assert (err.status, err.problem) == (400, "inconsistent-upload-length")
    assert str(err) == "the content ends past the upload length 10"


def test_check_append_declared_length_below_offset_chunked() -> None:
    # A length below what the resource already holds is refused even without Content-Length.
    err = appended(UploadState(50, None, False), tus_append(50, None, length=40))
    assert (err.status, err.problem) == (400, "inconsistent-upload-length")


def test_check_size() -> None:
    check_size(1000, 1000, LIMITS)
    check_size(None, 0, LIMITS)
    check_size(10**15, 10**15, UploadLimits(None, 1))
    for length, reach in ((1001, 0), (None, 1001), (0, 1001)):
        with pytest.raises(ResumableError) as info:
            check_size(length, reach, LIMITS)
        assert info.value.status == 413
        assert str(info.value) == "1001 bytes is over the upload limit of 1000"


# --- ResumableError.body --------------------------------------------------------------------
def test_body_problem_json() -> None:
    err = appended(UploadState(5, None, False), draft_append(2, False, 1))
    content_type, body = err.body()
    assert content_type == "application/problem+json"
    assert json.loads(body) == {"type": PROBLEM_BASE + "mismatching-upload-offset",
                                "title": "offset from request does not match offset of resource",
                                "expected-offset": 5, "provided-offset": 2}
    assert json.loads(body)["type"] == "https://iana.org/assignments/http-problem-types#mismatching-upload-offset"


def test_body_problem_without_members() -> None:
    content_type, body = ResumableError(400, "upload is already completed", problem="completed-upload").body()
    assert content_type == "application/problem+json"
    assert json.loads(body) == {"type": PROBLEM_BASE + "completed-upload", "title": "upload is already completed"}


def test_body_text() -> None:
    err = ResumableError(404, "no such upload")
    assert err.body() == ("text/plain; charset=utf-8", b"no such upload\n")
    assert (err.headers, err.members, err.problem) == ([], {}, None)
    assert ResumableError(400, "Upload-Metadata: 'k' \u00e9").body()[1] == "Upload-Metadata: 'k' \u00e9\n".encode()


# --- answers --------------------------------------------------------------------------------
def test_upload_limit_field_value() -> None:
    assert LIMITS.field_value() == "max-size=1000, max-age=3600"
    assert LIMITS.field_value(120) == "max-size=1000, max-age=120"
    assert LIMITS.field_value(-5) == "max-size=1000, max-age=0"
    assert UploadLimits(None, 60).field_value() == "max-age=60"


def test_interim_response() -> None:
    block = interim_response("/uploads/" + UID, LIMITS, None)
    assert block.endswith(b"\r\n\r\n")
    lines = block[:-4].split(b"\r\n")
    assert lines == [b"HTTP/1.1 104 Upload Resumption Supported", b"Location: /uploads/" + UID.encode(),
                     b"Upload-Limit: max-size=1000, max-age=3600"]
    assert b"\n" not in block.replace(b"\r\n", b"")
    assert block.count(b"\r\n\r\n") == 1


def test_interim_response_interop_version() -> None:
    block = interim_response("/u/x", LIMITS, 6)
    assert block.split(b"\r\n")[3] == b"Upload-Draft-Interop-Version: 6"
    assert block.endswith(b"Upload-Draft-Interop-Version: 6\r\n\r\n")


def test_creation_headers_draft() -> None:
    req = ResumableRequest(Action.CREATE, Dialect.DRAFT, offset=0, complete=False, interop_version=6)
    headers = creation_headers(req, "/u/" + UID, UploadState(4, None, False), LIMITS, "never", 100)
    assert headers == [("Location", "/u/" + UID), ("Upload-Draft-Interop-Version", "6"), ("Upload-Complete", "?0"),
                       ("Upload-Offset", "4"), ("Upload-Limit", "max-size=1000, max-age=100")]


def test_creation_headers_tus() -> None:
    req = ResumableRequest(Action.CREATE, Dialect.TUS, offset=0, length=10)
    expires = "Wed, 25 Jun 2025 16:00:00 GMT"
    headers = creation_headers(req, "/u/" + UID, UploadState(3, 10, False), LIMITS, expires, 100)
    assert headers == [("Location", "/u/" + UID), ("Tus-Resumable", "1.0.0"), ("Upload-Offset", "3"),
                       ("Upload-Expires", expires)]


def test_append_headers() -> None:
    draft = draft_append(0, False, 5)
    assert append_headers(draft, UploadState(5, None, False), "x") == [("Upload-Offset", "5"),
                                                                       ("Upload-Complete", "?0")]
    assert append_headers(draft, UploadState(5, 5, True), "x")[-1] == ("Upload-Complete", "?1")
    tus = tus_append(0, 5)
    assert append_headers(tus, UploadState(5, 10, False), "EXP") == [("Tus-Resumable", "1.0.0"),
                                                                     ("Upload-Offset", "5"), ("Upload-Expires", "EXP")]


def test_offset_headers_draft() -> None:
    req = ResumableRequest(Action.OFFSET, Dialect.DRAFT, upload_id=UID)
    assert offset_headers(req, UploadState(4, None, False), LIMITS, "x", 30, "ignored") == [
        ("Upload-Offset", "4"), ("Cache-Control", "no-store"), ("Upload-Complete", "?0"),
        ("Upload-Limit", "max-size=1000, max-age=30")]
    assert offset_headers(req, UploadState(9, 9, True), LIMITS, "x", 30, None) == [
        ("Upload-Offset", "9"), ("Cache-Control", "no-store"), ("Upload-Complete", "?1"), ("Upload-Length", "9"),
        ("Upload-Limit", "max-size=1000, max-age=30")]


def test_offset_headers_tus() -> None:
    req = ResumableRequest(Action.OFFSET, Dialect.TUS, upload_id=UID)
    assert offset_headers(req, UploadState(4, 10, False), LIMITS, "EXP", 30, "k dg==") == [
        ("Tus-Resumable", "1.0.0"), ("Upload-Offset", "4"), ("Cache-Control", "no-store"), ("Upload-Length", "10"),
        ("Upload-Metadata", "k dg=="), ("Upload-Expires", "EXP")]
    assert offset_headers(req, UploadState(4, None, False), LIMITS, "EXP", 30, None) == [
        ("Tus-Resumable", "1.0.0"), ("Upload-Offset", "4"), ("Cache-Control", "no-store"),
        ("Upload-Defer-Length", "1"), ("Upload-Expires", "EXP")]


def test_options_headers() -> None:
    assert options_headers(LIMITS) == [
        ACCEPT_PATCH, ("Upload-Limit", "max-size=1000, max-age=3600"), ("Tus-Resumable", "1.0.0"),
        ("Tus-Version", "1.0.0"), ("Tus-Extension", TUS_EXTENSIONS), ("Tus-Max-Size", "1000")]
    unlimited = dict(options_headers(UploadLimits(None, 60)))
    assert "Tus-Max-Size" not in unlimited
    assert unlimited["Upload-Limit"] == "max-age=60"
    assert set(unlimited["Tus-Extension"].split(",")) == {
        "creation", "creation-with-upload", "creation-defer-length", "termination", "expiration"}
