"""SHA-256 whose running state can be saved and restored: one digest across resumptions.

Strategy: a resumable upload arrives over many requests, perhaps over many
server lifetimes, and its SHA-256 must come out as if it had arrived in one
piece, without reading back what is already on disk. ``hashlib`` cannot export
its state, so this uses OpenSSL's low-level ``SHA256_Init/Update/Final`` on a
``SHA256_CTX`` we own (112 bytes: eight state words, the bit count, the partial
block), through ``ctypes``. ``ctypes`` releases the GIL for the call, so the
write-behind thread hashes while the loop receives, as with ``hashlib``.

The state's layout is OpenSSL's, so a saved state is only restored by the same
library (``state()`` prefixes a tag with the library's version number). Where
libcrypto or its SHA256 symbols are missing, ``ResumableSha256.available`` is
False and callers fall back to hashing the stored prefix once on resumption
(``hash_prefix``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from typing import Any

__all__ = ["ResumableSha256", "hash_prefix"]

_CTX_SIZE = 112  # sizeof(SHA256_CTX): h[8], Nl, Nh, data[16] (32-bit words), num, md_len


def _load() -> tuple[ctypes.CDLL, bytes] | None:
    name = ctypes.util.find_library("crypto")
    if name is None:
        return None
    try:
        lib = ctypes.CDLL(name)
        for symbol in ("SHA256_Init", "SHA256_Update", "SHA256_Final"):
            getattr(lib, symbol).restype = ctypes.c_int
        lib.OpenSSL_version_num.restype = ctypes.c_ulong
        tag = b"ossl%x:" % lib.OpenSSL_version_num()
    except (OSError, AttributeError):
        return None
    return lib, tag


_LIB = _load()


class ResumableSha256:
    """An incremental SHA-256 with ``state()`` / ``from_state()``.

    Args:
        state: a value ``state()`` returned earlier (None: a fresh digest).

    Raises:
        ValueError: ``state`` is not one this library made.
        RuntimeError: libcrypto is not available (check ``available`` first).
    """

    available = _LIB is not None

    def __init__(self, state: bytes | None = None) -> None:
        if _LIB is None:
            raise RuntimeError("libcrypto's SHA256 functions are not available")
        self._lib, tag = _LIB
        self._ctx = ctypes.create_string_buffer(_CTX_SIZE)
        if state is None:
            self._lib.SHA256_Init(self._ctx)
        elif state.startswith(tag) and len(state) == len(tag) + _CTX_SIZE:
            ctypes.memmove(self._ctx, state[len(tag):], _CTX_SIZE)
        else:
            raise ValueError("not a SHA-256 state saved by this libcrypto")
        self._tag = tag

    def update(self, data: bytes | bytearray | memoryview) -> None:
        """Hash ``data`` next."""
        view = memoryview(data).cast("B")
        if not view.nbytes:
            return
        if view.readonly:  # bytes (or a view of them): ctypes takes bytes' buffer as is
            whole = data if isinstance(data, bytes) else view.tobytes()
            self._lib.SHA256_Update(self._ctx, ctypes.c_char_p(whole), ctypes.c_size_t(view.nbytes))
            return
        buffer = (ctypes.c_char * view.nbytes).from_buffer(view)
        self._lib.SHA256_Update(self._ctx, buffer, ctypes.c_size_t(view.nbytes))

    def state(self) -> bytes:
        """The running state, to give ``ResumableSha256(state)`` later."""
        return self._tag + self._ctx.raw

    def hexdigest(self) -> str:
        """The digest of everything hashed so far (the running state is unchanged)."""
        copy = ctypes.create_string_buffer(self._ctx.raw, _CTX_SIZE)
        out = ctypes.create_string_buffer(32)
        self._lib.SHA256_Final(out, copy)
        return out.raw.hex()


def hash_prefix(fd: int, size: int, digest: Any, block: int = 1 << 20) -> None:
    """Feed the first ``size`` bytes of ``fd`` to ``digest`` (the way back to a running
    digest when no saved state can be restored).

    Raises:
        OSError: the file is shorter than ``size``.
    """
    offset = 0
    while offset < size:
        chunk = os.pread(fd, min(block, size - offset), offset)
        if not chunk:
            raise OSError(f"file ends at {offset} of {size} bytes")
        digest.update(chunk)
        offset += len(chunk)
