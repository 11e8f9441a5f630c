"""Tests for prefork.staging.forms: fields in RAM, files in spools, cleanup on every error."""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from prefork.protocol.errors import BodyTooLarge, HeadersTooLarge, InsufficientStorage, MultipartError
from prefork.staging.forms import FormData, FormParser
from prefork.protocol.limits import FormLimits
from prefork.protocol.multipart import parse_boundary

SEED = Path(__file__).parent / "data" / "seed_multipart.http"
B = b"xYzZY"
BIG = os.urandom(200_000)


def _part(name: str, data: bytes, filename: str | None = None, extra: str = "") -> bytes:
    disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
    return f"Content-Disposition: {disp}\r\n{extra}\r\n".encode() + data


def _body(*parts: bytes) -> bytes:
    return b"".join(b"--" + B + b"\r\n" + p + b"\r\n" for p in parts) + b"--" + B + b"--\r\n"


def _feed_variants(body: bytes) -> Iterator[list[bytes]]:
    """Whole, byte by byte (small bodies only), seeded random splits, trailing data."""
    yield [body]
    if len(body) < 5000:
        yield [body[i : i + 1] for i in range(len(body))]
    for seed in range(3):
        rnd = random.Random(seed)
        cuts = sorted(rnd.sample(range(1, len(body)), 10))
        yield [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)])]
    yield [body, b"epilogue bytes"]


def _parser(tmp_path: Path, boundary: bytes = B, **kw: object) -> FormParser:
    args: dict[str, object] = {"limits": FormLimits(), "spool_threshold": 1024, "spool_dir": str(tmp_path)}
    args.update(kw)
    return FormParser(boundary, **args)  # type: ignore[arg-type]


def _parse(tmp_path: Path, pieces: list[bytes], **kw: object) -> FormData:
    parser = _parser(tmp_path, B, **kw)
    for piece in pieces:
        parser.feed(piece)
    parser.feed(b"")
    return parser.finish()


def test_fields_and_files_in_every_split(tmp_path: Path) -> None:
    body = _body(
        _part("title", "caf\u00e9".encode()),
        _part("tag", b"a"),
        _part("tag", b"b"),
        _part("doc", BIG, "big.bin", "Content-Type: application/octet-stream\r\n"),
        _part("doc", b"tiny", "small.txt"),
        _part("empty", b"", ""),
    )
    for pieces in _feed_variants(body):
        with _parse(tmp_path, pieces) as form:
            assert form.fields.get("title") == "caf\u00e9" and form.fields["tag"] == "a"
            assert form.fields.getlist("tag") == ["a", "b"] and form.fields.getlist("nope") == []
            assert "doc" in form.files and "title" not in form.files and len(form.files) == 2
            big, small = form.files.getlist("doc")
            assert (big.filename, big.content_type, big.size) == ("big.bin", "application/octet-stream", len(BIG))
            assert big.sha256 == hashlib.sha256(BIG).hexdigest() and big.open().read() == BIG
            assert (small.filename, small.content_type, small.size) == ("small.txt", None, 4)
            assert small.open().read() == b"tiny" and small.open().read() == b"tiny"  # rewound
            empty = form.files["empty"]
            assert (empty.filename, empty.size, empty.sha256) == ("", 0, hashlib.sha256().hexdigest())
            assert form.fields.to_dict() == {"title": ["caf\u00e9"], "tag": ["a", "b"]}
    assert os.listdir(tmp_path) == []


def test_seed_request(tmp_path: Path) -> None:
    head, _, body = SEED.read_bytes().partition(b"\r\n\r\n")
    ctype = next(line for line in head.split(b"\r\n") if line.lower().startswith(b"content-type:"))
    parser = _parser(tmp_path, parse_boundary(ctype.split(b":", 1)[1]), spool_threshold=0)
    parser.feed(body)
    with parser.finish() as form:
        assert form.fields["commenter"] == "Ada Lovelace \u2014 first comment"
        up = form.files["upload"]
        assert (up.name, up.filename, up.content_type, up.size) == ("upload", "pixel.png", "image/png", 93)
        assert up.sha256 == "f1a4b28875a4195245c87c7b9d2918ad70c313bc581dbb2b6818151f1bfef695"
        up.save(tmp_path / "saved.png")
    assert os.listdir(tmp_path) == ["saved.png"]
    assert (tmp_path / "saved.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_save_is_a_link_not_a_copy(tmp_path: Path) -> None:
    staging, uploads = tmp_path / "staging", tmp_path / "uploads"
    staging.mkdir()
    uploads.mkdir()
    form = _parse(staging, [_body(_part("f", BIG, "../../etc/passwd"))])
    upload = form.files["f"]
    staged_inode = os.fstat(upload.open().fileno()).st_ino
    upload.save(uploads / "0001.bin")  # the app picks the name, never filename
    st = os.stat(uploads / "0001.bin")
    assert st.st_ino == staged_inode and st.st_nlink == 1
    assert (uploads / "0001.bin").read_bytes() == BIG
    with pytest.raises(ValueError, match="not moved yet"):
        upload.save(uploads / "0002.bin")
    form.close()
    other = _parse(staging, [_body(_part("f", b"other", "x"))])
    with pytest.raises(FileExistsError):
        other.files["f"].save(uploads / "0001.bin")  # never overwrites
    other.close()
    assert os.listdir(staging) == [] and os.listdir(uploads) == ["0001.bin"]
    assert (uploads / "0001.bin").read_bytes() == BIG


def test_small_upload_save_from_ram(tmp_path: Path) -> None:
    with _parse(tmp_path, [_body(_part("f", b"hello", "h.txt"))]) as form:
        form.files["f"].save(tmp_path / "h.txt")
    assert os.listdir(tmp_path) == ["h.txt"] and (tmp_path / "h.txt").read_bytes() == b"hello"


def test_charset_handling(tmp_path: Path) -> None:
    body = _body(
        _part("_charset_", b"iso-8859-1"),
        _part("a", "\u00e9".encode("latin-1")),
        _part("b", "\u00e9".encode(), extra="Content-Type: text/plain; charset=utf-8\r\n"),
        _part("c", b"\xff", extra="Content-Type: text/plain; charset=hex\r\n"),
    )
    with _parse(tmp_path, [body]) as form:
        assert form.fields["a"] == "\u00e9" and form.fields["b"] == "\u00e9" and form.fields["c"] == "\u00ff"
    with _parse(tmp_path, [_body(_part("x", b"\xff"))]) as form:
        assert form.fields["x"] == "\ufffd"  # utf-8 default, errors="replace"


def test_field_too_large_is_413_and_aborts(tmp_path: Path) -> None:
    body = _body(_part("f", BIG, "keep.bin"), _part("x", b"0123456789A"))
    parser = _parser(tmp_path, limits=FormLimits(max_field_size=10), spool_threshold=0)
    with pytest.raises(BodyTooLarge) as info:
        parser.feed(body)
    assert str(info.value) == "form field 'x' exceeds limit of 10 bytes" and info.value.status == 413
    assert os.listdir(tmp_path) == []


def test_file_too_large_is_413_and_aborts(tmp_path: Path) -> None:
    parser = _parser(tmp_path, max_file_size=1000, spool_threshold=10)
    with pytest.raises(BodyTooLarge, match="exceeds limit of 1000 bytes"):
        for i in range(0, 5000, 100):
            parser.feed((_body(_part("f", b"y" * 5000, "f.bin")))[i : i + 100])
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (_body(_part("a", b"1", "a"), _part("b", b"2", "b"), _part("c", b"3", "c")), BodyTooLarge),
        (_body(_part("a", b"1", "a"), b"X-Long: " + b"h" * 200 + b"\r\n\r\n"), HeadersTooLarge),
        (_body(_part("a", BIG, "a"), b"Content-Type: x\r\n\r\n"), MultipartError),
    ],
)
def test_errors_leave_nothing_on_disk(tmp_path: Path, body: bytes, error: type[Exception]) -> None:
    parser = _parser(tmp_path, limits=FormLimits(max_parts=2, max_part_header_bytes=100), spool_threshold=0)
    with pytest.raises(error):
        parser.feed(body)
    assert os.listdir(tmp_path) == []


def test_incomplete_body_and_abort(tmp_path: Path) -> None:
    body = _body(_part("a", BIG, "a.bin"), _part("b", BIG, "b.bin"))
    parser = _parser(tmp_path, spool_threshold=0)
    parser.feed(body[:-30])
    with pytest.raises(MultipartError, match="ended before the closing delimiter"):
        parser.finish()
    assert os.listdir(tmp_path) == []
    parser = _parser(tmp_path, spool_threshold=0)
    parser.feed(body[: len(body) // 2])  # client disconnects mid-upload
    parser.abort()
    parser.abort()
    assert os.listdir(tmp_path) == []
    with pytest.raises(MultipartError):
        parser = _parser(tmp_path, spool_threshold=0)
        parser.feed(body[:-30])
        parser.feed(b"")
    assert os.listdir(tmp_path) == []


def test_disk_full_is_507_and_aborts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from prefork.staging import spool

    def full(self: spool.BodySpool, fd: int, data: bytes | bytearray | memoryview) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(spool.BodySpool, "_write_to_file", full)
    parser = _parser(tmp_path, spool_threshold=0)
    with pytest.raises(InsufficientStorage) as info:
        parser.feed(_body(_part("a", b"x" * 100, "a.bin")))
    assert info.value.status == 507 and os.listdir(tmp_path) == []


def test_budget_and_disk_accounting(tmp_path: Path) -> None:
    class Budget:
        used = 0

        def try_reserve(self, nbytes: int) -> bool:
            self.used += nbytes
            return True

        def release(self, nbytes: int) -> None:
            self.used -= nbytes

    budget, disk = Budget(), list[int]()
    form = _parse(tmp_path, [_body(_part("a", BIG, "a"), _part("b", b"small", "b"))],
                  budget=budget, on_disk_bytes=disk.append)
    # Only the small file is in RAM, and its reservation covers the bytearray holding it
    # (CPython allocates up to size + size/8 + 6 bytes for it), not just its 5 bytes.
    small = form.files["b"].open()
    assert sum(disk) == len(BIG) and 5 < budget.used <= 5 + 5 // 8 + 8
    assert budget.used >= small._ram._small.__alloc__()  # type: ignore[attr-defined]
    form.close()
    assert sum(disk) == 0 and budget.used == 0 and os.listdir(tmp_path) == []


@pytest.mark.parametrize("charset", [b"utf\x00-8", b"latin-1\x00", b"no-such-charset", b"x" * 5000, b"hex", b" "])
def test_unusable_charsets_are_ignored_in_every_split(tmp_path: Path, charset: bytes) -> None:
    """RFC 7578 §4.6: ``_charset_`` and a part's ``charset`` are hints; one that Python cannot
    use as a text encoding (unknown, NUL inside, absurdly long) leaves the UTF-8 default."""
    ctype = b"Content-Type: text/plain; charset=\"" + charset + b"\"\r\n"
    body = _body(
        _part("_charset_", charset),
        _part("a", "\u00e9".encode()),
        b'Content-Disposition: form-data; name="b"\r\n' + ctype + b"\r\n" + "\u00e8".encode(),
    )
    for pieces in _feed_variants(body):
        with _parse(tmp_path, pieces) as form:
            assert form.fields["a"] == "\u00e9" and form.fields["b"] == "\u00e8"
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("disposition", [
    b'form-data; name="f"; filename="a.txt"; filename="b.exe"',
    b'form-data; name="f"; name="g"; filename="a.txt"',
])
def test_repeated_parameters_are_400_and_leave_nothing_on_disk(tmp_path: Path, disposition: bytes) -> None:
    body = _body(_part("big", BIG, "big.bin"), b"Content-Disposition: " + disposition + b"\r\n\r\nx")
    for pieces in _feed_variants(body):
        parser = _parser(tmp_path, spool_threshold=0)
        with pytest.raises(MultipartError, match=r"^repeated parameter '(filename|name)' in part Content-Disp"):
            for piece in pieces:
                parser.feed(piece)
            parser.feed(b"")
        assert os.listdir(tmp_path) == []


def test_file_parts_growing_past_min_free_disk_are_507_in_every_split(tmp_path: Path) -> None:
    """Each file part is checked as it goes to disk (issue 12): no disk has 1000 TiB free."""
    body = _body(_part("small", b"in RAM", "s.txt"), _part("big", BIG, "big.bin"))
    for pieces in _feed_variants(body):
        parser = _parser(tmp_path, min_free_disk=1000 << 40)
        with pytest.raises(InsufficientStorage, match=r"^not enough disk space to keep staging a body in "):
            for piece in pieces:
                parser.feed(piece)
        assert os.listdir(tmp_path) == []
    with _parse(tmp_path, [_body(_part("small", b"in RAM", "s.txt"))], min_free_disk=1000 << 40) as form:
        assert form.files["small"].open().read() == b"in RAM"


class _CappedBudget:
    """A RAM budget of ``capacity`` bytes, like the scoreboard's."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0

    def try_reserve(self, nbytes: int) -> bool:
        if self.used + nbytes > self.capacity:
            return False
        self.used += nbytes
        return True

    def release(self, nbytes: int) -> None:
        self.used -= nbytes


def test_text_fields_over_their_total_are_413_in_every_split(tmp_path: Path) -> None:
    body = _body(_part("a", b"0123456789"), _part("f", BIG, "keep.bin"), _part("b", b"0123456789"),
                 _part("c", b"0123456789"))
    for pieces in _feed_variants(body):
        budget = _CappedBudget(1 << 30)
        parser = _parser(tmp_path, limits=FormLimits(max_field_size=10, max_fields_total=25), spool_threshold=0,
                         budget=budget)
        with pytest.raises(BodyTooLarge) as info:
            for piece in pieces:
                parser.feed(piece)
        assert str(info.value) == "form text fields exceed the limit of 25 bytes in total"
        assert info.value.status == 413
        assert os.listdir(tmp_path) == [] and budget.used == 0


def test_text_fields_count_in_the_ram_budget(tmp_path: Path) -> None:
    from prefork.protocol.errors import ServiceUnavailable
    from prefork.staging.forms import FormSink

    content_type = b"multipart/form-data; boundary=" + B
    sink_args: dict[str, object] = {"limits": FormLimits(), "spool_threshold": 0, "spool_dir": str(tmp_path)}
    budget = _CappedBudget(1000)
    sink = FormSink(content_type, budget=budget, **sink_args)  # type: ignore[arg-type]
    sink.write(_body(_part("a", b"x" * 600), _part("b", b"y" * 300)))
    form = sink.seal()
    assert form.fields["a"] == "x" * 600 and budget.used == 900, "held text fields are reserved"
    with pytest.raises(ServiceUnavailable) as info:
        other = FormSink(content_type, budget=budget, **sink_args)  # type: ignore[arg-type]
        other.write(_body(_part("c", b"z" * 200)))
    assert info.value.status == 503 and budget.used == 900, "a refused request keeps nothing"
    sink.close()
    assert budget.used == 0, "the request is over: its fields' share is back"
