"""Header values with parameters: Content-Type and Content-Disposition (pure).

Strategy: one parser for ``value *( OWS ";" OWS name "=" value )`` headers
(RFC 9110 §5.6.6, §8.3.1; RFC 6266 §4.1), shared by the multipart parser, the
form decision and the native ``Request``. It never raises: it reports what it
found, including the parameter names given more than once, and the caller
decides (RFC 6838 §4.3 and RFC 6266 §4.1 make a repeated parameter invalid;
the multipart parser rejects it with 400). Quoted strings (RFC 9110 §5.6.4)
and RFC 8187 extended parameters (``filename*=UTF-8''...``, preferred over
the plain form) are decoded; other malformed parameters are skipped.

``is_form_data`` is the one place that decides what is a form: the media type's
essence (type/subtype, case-insensitive, parameters stripped) must be exactly
``multipart/form-data``, so ``multipart/form-datax`` is a raw body everywhere.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["FORM_DATA", "HeaderValue", "essence", "is_form_data", "parse_header_value", "parse_options_header"]

#: The media type whose bodies are parsed as forms (RFC 7578).
FORM_DATA = "multipart/form-data"

# One ``; key[=value]`` parameter; value is a quoted-string (RFC 9110 §5.6.4) or a token.
_PARAM_RE = re.compile(
    r';\s*(?P<key>[^\s;=]*)\s*(?:=\s*(?:"(?P<quoted>(?:[^"\\]|\\.)*)"\s*|(?P<token>[^;]*)))?',
    re.S,
)
# RFC 8187 §3.2.1: ext-value = charset "'" [ language ] "'" value-chars
_EXT_VALUE_RE = re.compile(r"(?P<charset>[^']*)'[^']*'(?P<value>.*)", re.S)


@dataclass(frozen=True, slots=True)
class HeaderValue:
    """A parsed header value.

    Attributes:
        main: the value before the first ``;``, stripped and lower-cased
            (a media type's essence, or a disposition type).
        params: lower-cased parameter names to decoded values; ``name*`` is
            reported as ``name`` and wins over a plain ``name``.
        repeated: parameter names (as written, lower-cased) that occur more
            than once, in order; ``name`` and ``name*`` count apart.
    """

    main: str
    params: dict[str, str]
    repeated: tuple[str, ...]


def _unquote(value: str) -> str:
    # Only \" and \\ are unescaped: IE-style paths (C:\dir\f.txt) keep their
    # backslashes, as in Werkzeug and defnull/multipart.
    return value.replace('\\\\', '\\').replace('\\"', '"')


def _decode_ext_value(value: str) -> str | None:
    """Decode an RFC 8187 ext-value; None when malformed or of unknown charset."""
    match = _EXT_VALUE_RE.fullmatch(value.strip())
    if match is None:
        return None
    charset = match["charset"].lower()
    if charset not in ("utf-8", "iso-8859-1"):  # the two RFC 8187 §3.2.1 requires
        return None
    pieces = match["value"].split("%")
    try:
        raw = bytearray(pieces[0].encode("ascii"))
        for piece in pieces[1:]:
            if len(piece) < 2:
                return None
            raw += bytes.fromhex(piece[:2]) + piece[2:].encode("ascii")
        return raw.decode(charset)
    except ValueError:  # non-hex, non-ASCII or undecodable
        return None


def _main(text: str) -> str:
    # OWS is SP and HTAB only (RFC 9110 §5.6.3): str.strip() would also take NBSP and friends.
    return text.strip(" \t").lower()


def parse_header_value(value: str) -> HeaderValue:
    """Split a header like Content-Type or Content-Disposition into value and parameters.

    Args:
        value: the header value.

    Returns:
        The main value, the parameters and the names that were repeated.
    """
    main, sep, _ = value.partition(";")
    params: dict[str, str] = {}
    extended: dict[str, str] = {}
    seen: set[str] = set()
    repeated: list[str] = []
    pos = len(main)
    while sep and pos < len(value):
        match = _PARAM_RE.match(value, pos)
        if match is None:  # junk after a quoted string: skip to the next ';'
            pos = value.find(";", pos + 1)
            if pos < 0:
                break
            continue
        pos = match.end()
        key = match["key"].lower()
        if not key:
            continue
        if key in seen:
            repeated.append(key)
        seen.add(key)
        if match["quoted"] is not None:
            params[key] = _unquote(match["quoted"])
        elif key.endswith("*"):
            decoded = _decode_ext_value(match["token"] or "")
            if decoded is not None:
                extended[key[:-1]] = decoded
        else:
            params[key] = (match["token"] or "").strip()
    params.update(extended)
    return HeaderValue(_main(main), params, tuple(repeated))


def parse_options_header(value: str) -> tuple[str, dict[str, str]]:
    """``parse_header_value`` as a (main value, parameters) pair; repeats: the last wins."""
    parsed = parse_header_value(value)
    return parsed.main, parsed.params


def essence(content_type: str | bytes | None) -> str:
    """The media type of a Content-Type value: ``type/subtype``, lower-cased, no parameters.

    RFC 9110 §8.3.1: type and subtype are case-insensitive, and OWS may precede the ``;``.
    """
    if content_type is None:
        return ""
    text = content_type.decode("latin-1") if isinstance(content_type, bytes) else content_type
    return _main(text.partition(";")[0])


def is_form_data(content_type: str | bytes | None) -> bool:
    """Whether a body of this Content-Type is a ``multipart/form-data`` form (RFC 7578)."""
    return essence(content_type) == FORM_DATA
