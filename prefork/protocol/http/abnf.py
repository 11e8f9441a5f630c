"""RFC 9110/9112 request grammar as compiled regular expressions.

Strategy: each production we validate is written once, next to the ABNF it
implements, and combined into a few whole-line or whole-block patterns so the
parser validates a complete request head in a handful of C-level regex calls
rather than a Python loop per byte or per field. Patterns are bytes patterns
because the wire is bytes; nothing here decodes text.
"""

from __future__ import annotations

import re

__all__ = [
    "ABSOLUTE_FORM",
    "CHUNK_LINE",
    "FIELD_LINE",
    "FIELD_NAME",
    "FIELD_VALUE",
    "HTTP_VERSION",
    "REQUEST_LINE",
    "TCHAR_BYTES",
]

# tchar = "!" / "#" / "$" / "%" / "&" / "'" / "*" / "+" / "-" / "." /
#         "^" / "_" / "`" / "|" / "~" / DIGIT / ALPHA          (RFC 9110 §5.6.2)
_TCHAR = rb"!#$%&'*+\-.^_`|~0-9A-Za-z"
# token = 1*tchar
_TOKEN = rb"[" + _TCHAR + rb"]+"
TCHAR_BYTES = frozenset(b"!#$%&'*+-.^_`|~0123456789" b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")

# field-name = token (RFC 9110 §5.1)
FIELD_NAME = re.compile(_TOKEN)

# field-value   = *field-content                               (RFC 9110 §5.5)
# field-content = field-vchar [ 1*( SP / HTAB / field-vchar ) field-vchar ]
# field-vchar   = VCHAR / obs-text          ; VCHAR 0x21-0x7E, obs-text 0x80-0xFF
# Written so the captured value has no leading or trailing whitespace: OWS on
# both sides is outside the group (RFC 9112 §5: field-line = field-name ":" OWS
# field-value OWS). CTLs (NUL, BEL, DEL, bare CR, LF) match nothing, so any of
# them makes the line fail (RFC 9110 §5.5 lets a recipient reject them).
_VCHAR = rb"[\x21-\x7e\x80-\xff]"
_FIELD_VALUE = rb"(?:" + _VCHAR + rb"+(?:[ \t]+" + _VCHAR + rb"+)*)?"

# One field line, anchored by a look-behind on the LF that ended the previous
# line. ``findall`` over a block then yields one (name, value) pair per line
# that is well formed, and the caller compares the count of pairs with the
# count of lines: any mismatch means some line failed, with no Python loop.
FIELD_VALUE = re.compile(_FIELD_VALUE)
FIELD_LINE = re.compile(rb"(?<=\n)(" + _TOKEN + rb"):[ \t]*(" + _FIELD_VALUE + rb")[ \t]*\r\n")

# request-line = method SP request-target SP HTTP-version      (RFC 9112 §3)
# method = token. The target is checked loosely here (visible ASCII, which
# excludes SP, CTLs and non-ASCII, RFC 9112 §3.2) and by form afterwards. The
# version is any run of visible bytes so that a well-formed but unsupported
# version (505) can be told apart from junk (400) after the match.
REQUEST_LINE = re.compile(rb"(" + _TOKEN + rb") ([\x21-\x7e]+) ([\x21-\x7e]+)\r\n")

# HTTP-version = HTTP-name "/" DIGIT "." DIGIT                  (RFC 9112 §2.3)
HTTP_VERSION = re.compile(rb"HTTP/[0-9]\.[0-9]")

# authority = [ userinfo "@" ] host [ ":" port ]                (RFC 3986 §3.2)
# host = IP-literal / IPv4address / reg-name; reg-name and userinfo use
# unreserved / pct-encoded / sub-delims (userinfo also ":").
_UNRESERVED_SUB = rb"A-Za-z0-9\-._~%!$&'()*+,;="
_AUTHORITY = (
    rb"(?:[" + _UNRESERVED_SUB + rb":]*@)?"
    rb"(?:\[[0-9A-Fa-f:.vV]+\]|[" + _UNRESERVED_SUB + rb"]*)"
    rb"(?::[0-9]*)?"
)
# absolute-form = absolute-URI (RFC 9112 §3.2.2); we accept the hierarchical
# "scheme://authority path-abempty [ ? query ]" shape that HTTP URIs have
# (RFC 9110 §4.2). Groups: path, query (may be None).
ABSOLUTE_FORM = re.compile(
    rb"[A-Za-z][A-Za-z0-9+\-.]*://" + _AUTHORITY + rb"(/[^?#]*)?(?:\?([^#]*))?(?:#.*)?",
    re.DOTALL,
)
# authority-form (CONNECT, RFC 9112 §3.2.3) and every host: see http/target.py.

# chunk          = chunk-size [ chunk-ext ] CRLF chunk-data CRLF (RFC 9112 §7.1)
# chunk-size     = 1*HEXDIG
# chunk-ext      = *( BWS ";" BWS chunk-ext-name [ BWS "=" BWS chunk-ext-val ] )
# chunk-ext-val  = token / quoted-string
# quoted-string  = DQUOTE *( qdtext / quoted-pair ) DQUOTE     (RFC 9110 §5.6.4)
# Extensions are validated and dropped; no one uses them. Whitespace is only
# allowed around ";" and "=" (so "0 \r\n" is invalid, as gunicorn also rules).
_QUOTED = rb'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"'
_CHUNK_EXT = (
    rb"(?:[ \t]*;[ \t]*" + _TOKEN + rb"(?:[ \t]*=[ \t]*(?:" + _TOKEN + rb"|" + _QUOTED + rb"))?)*"
)
CHUNK_LINE = re.compile(rb"([0-9A-Fa-f]+)" + _CHUNK_EXT + rb"\r\n")
