"""UploadStore: committed uploads under generated names, with a metadata sidecar.

Strategy: the client's filename is never a path. A stored file is named
``<UTC time>Z-<16 random hex>.<ext>``, where ``ext`` comes from an allow-list
(the client's extension if listed and, for images, confirmed by the file's
first bytes; else the sniffed image type; else ``bin``). The client's name
survives only as display metadata, sanitised (last path segment, no control
or bidi characters, at most 255 characters, never empty), in a JSON sidecar
``.meta/<name>.json``.

Commit order makes an entry all-or-nothing: (1) the staged upload is linked
into place under its new name (``UploadedFile.save``: complete bytes or no
file, never an overwrite); (2) the sidecar is written to a temporary file and
linked to its final name. The sidecar is the commit record: ``list``, ``get``
and ``path`` only see entries whose sidecar and data both exist. If step (2)
fails the data file is removed; a crash between the steps leaves a complete
but uncommitted file that nothing lists or serves, which ``remove_orphans``
deletes. Several workers share one store safely: names are random and links
never overwrite.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import secrets
import time
import unicodedata
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import IO, Any

from prefork.staging.forms import UploadedFile
from prefork.staging.stagingfile import unlink_if_present

__all__ = ["DEFAULT_EXTENSIONS", "IMAGE_TYPES", "StoredFile", "UploadStore", "display_name"]

#: Extensions kept as they are; anything else is stored as ``.bin``. No html, svg, xml or
#: js: served from our origin, those could run script, whatever Content-Type they get.
DEFAULT_EXTENSIONS = frozenset({
    "png", "jpg", "jpeg", "gif", "webp", "bmp", "avif",
    "txt", "csv", "md", "json", "pdf", "zip", "gz", "tgz", "bz2", "xz", "7z", "tar",
    "mp3", "ogg", "wav", "flac", "mp4", "webm", "mkv", "mov", "bin", "dat", "iso",
})
#: Image types shown inline, with the magic bytes that must open the file.
IMAGE_TYPES: dict[str, tuple[str, tuple[bytes, ...]]] = {
    "png": ("image/png", (b"\x89PNG\r\n\x1a\n",)),
    "jpg": ("image/jpeg", (b"\xff\xd8\xff",)),
    "jpeg": ("image/jpeg", (b"\xff\xd8\xff",)),
    "gif": ("image/gif", (b"GIF87a", b"GIF89a")),
    "webp": ("image/webp", ()),  # RIFF....WEBP, checked in _sniff_image
    "bmp": ("image/bmp", (b"BM",)),
}
#: Longest display name kept (characters); a common file system limit on one name.
MAX_DISPLAY_NAME = 255
#: Bytes read from the start of an upload to recognise an image.
_SNIFF_BYTES = 16
_NAME = re.compile(r"[0-9]{8}T[0-9]{6}Z-[0-9a-f]{16}\.[a-z0-9]{1,8}", re.ASCII)
_MEDIA_TYPE = re.compile(r"[A-Za-z0-9!#$&^_.+-]{1,64}/[A-Za-z0-9!#$&^_.+-]{1,64}", re.ASCII)
_KEEP_FORMAT = frozenset({"\u200c", "\u200d"})  # ZWNJ/ZWJ: needed by some scripts and emoji
_META = ".meta"


def display_name(filename: str | None) -> str:
    """A client filename made safe to show (never to use as a path).

    Keeps the last segment after ``/`` or ``\\``; turns white space (tabs, line
    breaks, U+2028) into single spaces; drops other control, format (bidi overrides),
    surrogate, private-use and unassigned characters; strips leading/trailing dots and spaces;
    shortens to ``MAX_DISPLAY_NAME`` characters keeping a short extension.
    Returns "unnamed" when nothing is left.
    """
    if not filename:
        return "unnamed"
    text = unicodedata.normalize("NFC", filename).replace("\\", "/").rsplit("/", 1)[-1]
    text = "".join(" " if ch.isspace() else ch for ch in text  # tabs, newlines, U+2028...
                   if ch.isspace() or ch in _KEEP_FORMAT or unicodedata.category(ch)[0] != "C")
    text = " ".join(text.split()).strip(" .")
    if len(text) > MAX_DISPLAY_NAME:
        stem, dot, ext = text.rpartition(".")
        if dot and 0 < len(ext) <= 16:
            text = stem[:MAX_DISPLAY_NAME - len(ext) - 1].rstrip(" .") + "." + ext
        else:
            text = text[:MAX_DISPLAY_NAME]
    return text or "unnamed"


def _sniff_image(head: bytes) -> str | None:
    """The image extension whose magic bytes open ``head``, if any."""
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    for ext, (_, magics) in IMAGE_TYPES.items():
        if ext != "jpeg" and any(head.startswith(m) for m in magics):
            return ext
    return None


def choose_extension(display: str, head: bytes, allowed: Iterable[str] = DEFAULT_EXTENSIONS) -> str:
    """The extension to store a file under.

    Args:
        display: the sanitised client filename.
        head: the first bytes of the file.
        allowed: extensions kept as they are.

    Returns:
        The client's extension if allowed (for an image type only if the bytes agree),
        else the image type the bytes show, else "bin".
    """
    claimed = display.rpartition(".")[2].lower() if "." in display else ""
    sniffed = _sniff_image(head)
    if claimed in IMAGE_TYPES:
        same = sniffed == claimed or {sniffed, claimed} == {"jpg", "jpeg"}
        return claimed if same else (sniffed or "bin")
    if sniffed is not None:
        return sniffed
    return claimed if claimed in set(allowed) else "bin"


@dataclass(frozen=True, slots=True)
class StoredFile:
    """One committed upload.

    Attributes:
        name: the generated file name in the store (safe in URLs and paths).
        filename: the client's filename, sanitised for display only.
        size: size in bytes.
        sha256: hex SHA-256 of the content.
        content_type: the type we serve it as (from the stored extension).
        client_type: the Content-Type the client claimed (metadata only), or "".
        uploaded: commit time, seconds since the epoch.
        image: whether it is a recognised image shown inline.
    """

    name: str
    filename: str
    size: int
    sha256: str
    content_type: str
    client_type: str
    uploaded: float
    image: bool

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


def _served_type(ext: str) -> str:
    if ext in IMAGE_TYPES:
        return IMAGE_TYPES[ext][0]
    if ext in ("txt", "csv", "md"):
        return "text/plain; charset=utf-8"
    if ext == "json":
        return "application/json"
    if ext == "pdf":
        return "application/pdf"
    return "application/octet-stream"


class UploadStore:
    """Committed uploads in one directory (shared by every worker).

    Args:
        directory: where files go; created on first use. Staging and this directory
            on one file system make ``save`` a link instead of a copy.
        allowed_extensions: extensions kept as they are (others become ``.bin``).
    """

    def __init__(self, directory: str | os.PathLike[str],
                 allowed_extensions: Iterable[str] = DEFAULT_EXTENSIONS) -> None:
        self.directory = os.path.abspath(os.fspath(directory))
        self.meta_dir = os.path.join(self.directory, _META)
        self.allowed = frozenset(e.lower() for e in allowed_extensions)

    def _ensure_dirs(self) -> None:
        os.makedirs(self.meta_dir, mode=0o755, exist_ok=True)

    def _new_name(self, ext: str) -> str:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        return f"{stamp}-{secrets.token_hex(8)}.{ext}"

    # --- saving -------------------------------------------------------------------
    def save(self, upload: UploadedFile) -> StoredFile:
        """Commit a staged upload under a generated name (a link on the same file system).

        Raises:
            InsufficientStorage: the disk is full (nothing is left behind).
        """
        head = upload.open().read(_SNIFF_BYTES)
        display = display_name(upload.filename)
        ext = choose_extension(display, head, self.allowed)
        return self._commit(lambda dest: upload.save(dest), ext, display, upload.size,
                            upload.sha256, upload.content_type or "")

    def save_stream(self, body: IO[bytes], filename: str | None, content_type: str = "") -> StoredFile:
        """Commit a raw request body (``request.body``) under a generated name.

        A staged ``BodySpool`` is linked into place like a form upload; any other
        stream is copied into a hidden temporary file that is then linked.
        """
        display = display_name(filename)
        body.seek(0)
        digest, size = hashlib.sha256(), 0
        head = body.read(_SNIFF_BYTES)
        chunk = head
        while chunk:
            digest.update(chunk)
            size += len(chunk)
            chunk = body.read(1 << 20)
        ext = choose_extension(display, head, self.allowed)
        move_to = getattr(body, "move_to", None)
        place = move_to if move_to is not None else (lambda dest: self._copy_into_place(body, dest))
        return self._commit(place, ext, display, size, digest.hexdigest(), content_type)

    def _commit(self, place: Any, ext: str, display: str, size: int, sha256: str,
                client_type: str) -> StoredFile:
        self._ensure_dirs()
        for _attempt in range(8):
            name = self._new_name(ext)
            dest = os.path.join(self.directory, name)
            try:
                place(dest)
            except FileExistsError:
                continue  # 64 random bits collided: pick another name
            break
        else:
            raise FileExistsError(errno.EEXIST, "no free name for the upload", self.directory)
        media = client_type.split(";")[0].strip()
        stored = StoredFile(name, display, size, sha256, _served_type(ext),
                            media if _MEDIA_TYPE.fullmatch(media) else "", time.time(), ext in IMAGE_TYPES)
        try:
            self._write_sidecar(stored)
        except BaseException:
            unlink_if_present(dest)
            raise
        return stored

    def _write_sidecar(self, stored: StoredFile) -> None:
        tmp = os.path.join(self.meta_dir, f".tmp-{secrets.token_hex(8)}")
        try:
            with open(tmp, "x", encoding="utf-8") as handle:
                json.dump(stored.to_dict(), handle)
            os.link(tmp, os.path.join(self.meta_dir, stored.name + ".json"))  # never overwrites
        finally:
            unlink_if_present(tmp)

    def _copy_into_place(self, body: IO[bytes], dest: str) -> None:
        tmp = os.path.join(self.directory, f".incoming-{secrets.token_hex(8)}")
        try:
            with open(tmp, "xb") as out:
                body.seek(0)
                while chunk := body.read(1 << 20):
                    out.write(chunk)
            os.link(tmp, dest)
        finally:
            unlink_if_present(tmp)

    # --- reading ------------------------------------------------------------------
    def get(self, name: str) -> StoredFile | None:
        """The committed entry ``name``, or None (unknown, malformed or uncommitted)."""
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            return None
        try:
            with open(os.path.join(self.meta_dir, name + ".json"), encoding="utf-8") as handle:
                data = json.load(handle)
            stored = StoredFile(**data)
        except (OSError, ValueError, TypeError):
            return None
        if stored.name != name or not os.path.isfile(os.path.join(self.directory, name)):
            return None
        return stored

    def path(self, name: str) -> str | None:
        """The file system path of committed entry ``name``, or None."""
        return os.path.join(self.directory, name) if self.get(name) is not None else None

    def list(self, limit: int | None = None) -> list[StoredFile]:
        """Committed entries, newest first."""
        try:
            names = [e.name[:-5] for e in os.scandir(self.meta_dir) if e.name.endswith(".json")]
        except FileNotFoundError:
            return []
        entries = [s for s in map(self.get, names) if s is not None]
        entries.sort(key=lambda s: (s.uploaded, s.name), reverse=True)
        return entries if limit is None else entries[:limit]

    def delete(self, name: str) -> bool:
        """Remove entry ``name`` (uncommit first, then the data); False if unknown."""
        if self.get(name) is None:
            return False
        unlink_if_present(os.path.join(self.meta_dir, name + ".json"))
        unlink_if_present(os.path.join(self.directory, name))
        return True

    def remove_orphans(self, min_age: float = 3600.0) -> int:
        """Delete data files with no sidecar, older than ``min_age`` seconds (crash leftovers)."""
        removed, cutoff = 0, time.time() - min_age
        try:
            entries = list(os.scandir(self.directory))
        except FileNotFoundError:
            return 0
        for entry in entries:
            stale = entry.name.startswith(".incoming-") or (
                _NAME.fullmatch(entry.name) is not None
                and not os.path.exists(os.path.join(self.meta_dir, entry.name + ".json")))
            if stale and entry.is_file(follow_symlinks=False) and entry.stat().st_mtime < cutoff:
                unlink_if_present(entry.path)
                removed += 1
        return removed
