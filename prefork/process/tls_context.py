"""The TLS server context: certificates, keys and protocol settings from ``[tls]``.

Strategy: the master builds one ``ssl.SSLContext`` before it forks (and again
on HUP), while it can still read keys that only root may read; the workers
inherit it, so every worker serves the same certificates and shares the
session-ticket key OpenSSL made for that context (a client resumes its session
on whichever worker accepts it). Every way a certificate can be wrong becomes a
``ConfigError`` naming the key and the file: a missing or unreadable file, a
key that does not match its certificate, a wrong or missing password (OpenSSL
would otherwise prompt on the terminal). An expired certificate only warns, as
nginx does: the operator may have a reason, and clients will say so loudly.
Renegotiation is refused (``OP_NO_RENEGOTIATION``): it lets a client make the
server redo the expensive part of a handshake at will. ALPN offers only
``http/1.1``, so a client never believes it may speak h2 here.
"""

from __future__ import annotations

import datetime
import os
import socket
import ssl
from collections.abc import Callable, Sequence
from typing import Any

from prefork.config.config import Config, listener_is_tls
from prefork.config.logs import error_log
from prefork.config.sections import TlsConfig
from prefork.protocol.errors import ConfigError

__all__ = ["ALPN_PROTOCOLS", "SERVER_NAME_ATTRIBUTE", "ListenerContexts", "build_server_context",
           "certificate_warnings", "listener_contexts", "reloaded_contexts"]

#: The TLS context of each TLS listener, by its file descriptor (plain listeners are absent).
ListenerContexts = dict[int, ssl.SSLContext]

#: What ALPN offers: the only protocol this server speaks over TLS.
ALPN_PROTOCOLS = ["http/1.1"]
_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
_VERIFY = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}
#: The attribute of an ``SSLSocket`` where the SNI callback keeps the name the client asked for.
SERVER_NAME_ATTRIBUTE = "prefork_server_name"
# Warn this long before a certificate expires.
EXPIRY_WARNING = datetime.timedelta(days=14)


def build_server_context(tls: TlsConfig, source: str | None = None) -> ssl.SSLContext:
    """Build the server context for ``tls`` (``tls.certfile`` must be set).

    Args:
        tls: the ``[tls]`` section.
        source: the config file, named in messages.

    Returns:
        A context with the default certificate loaded and an SNI callback that notes
        the name asked for (``SERVER_NAME_ATTRIBUTE`` on the socket) and, with
        ``[tls] sni``, switches to the certificate of that name.

    Raises:
        ConfigError: a file is missing or unreadable, a key does not match its
            certificate, the password is wrong, or ``ciphers`` selects nothing.
    """
    where = source or "command line"
    password = _read_password(tls, where)
    context = _context(tls, where)
    _load_chain(context, "certfile", tls.certfile, tls.keyfile, password, where)
    named: dict[str, ssl.SSLContext] = {}
    for entry in tls.sni:
        name, certfile, *keyfile = entry.split()
        child = _context(tls, where)
        _load_chain(child, f"sni {name}", certfile, keyfile[0] if keyfile else "", password, where)
        named[name] = child
    context.sni_callback = _sni_callback(named)
    return context


def _context(tls: TlsConfig, where: str) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = _VERSIONS[tls.min_version]
    context.options |= ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_COMPRESSION
    context.set_alpn_protocols(ALPN_PROTOCOLS)
    if tls.ciphers:
        try:
            context.set_ciphers(tls.ciphers)
        except ssl.SSLError:
            raise ConfigError(f"{where}: [tls] ciphers = {tls.ciphers!r}: OpenSSL selects no cipher from it "
                              "(see `openssl ciphers -v 'ECDHE+AESGCM'`); TLS 1.3 suites are not set here") from None
    context.verify_mode = _VERIFY[tls.verify_client]
    if tls.ca_certs:
        _check_readable("ca_certs", tls.ca_certs, where)
        try:
            context.load_verify_locations(cafile=tls.ca_certs)
        except ssl.SSLError as exc:
            raise ConfigError(f"{where}: [tls] ca_certs = {tls.ca_certs!r}: no CA certificate in it "
                              f"({exc.reason or exc})") from None
    return context


def _read_password(tls: TlsConfig, where: str) -> bytes:
    if not tls.password_file:
        return b""
    _check_readable("password_file", tls.password_file, where)
    with open(tls.password_file, "rb") as fh:
        return fh.read().rstrip(b"\r\n")


def _check_readable(key: str, path: str, where: str) -> None:
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise ConfigError(f"{where}: [tls] {key} = {path!r}: cannot read it: {exc.strerror or exc}") from None


def _load_chain(context: ssl.SSLContext, key: str, certfile: str, keyfile: str, password: bytes,
                where: str) -> None:
    _check_readable(key, certfile, where)
    if keyfile:
        _check_readable("keyfile" if key == "certfile" else key, keyfile, where)
    try:
        # A callable, never None: with None, OpenSSL asks for a pass phrase on the terminal.
        context.load_cert_chain(certfile, keyfile or None, password=lambda: password)
    except ssl.SSLError as exc:
        encrypted = _is_encrypted(keyfile or certfile)
        raise ConfigError(f"{where}: [tls] {key} = {certfile!r}: {_explain(exc, bool(password), encrypted)}") from None


def _is_encrypted(path: str) -> bool:
    """Whether the PEM file holds an encrypted private key (PKCS#8 or the older Proc-Type form)."""
    try:
        with open(path, "rb") as fh:
            text = fh.read(1 << 20)
    except OSError:
        return False
    return b"-----BEGIN ENCRYPTED PRIVATE KEY-----" in text or b"Proc-Type: 4,ENCRYPTED" in text


def _explain(exc: ssl.SSLError, has_password: bool, encrypted: bool) -> str:
    # OpenSSL 3 reports a wrong pass phrase as a bare "PEM lib": the file says whether it is one.
    reason = (exc.reason or "").upper()
    if "KEY_VALUES_MISMATCH" in reason:
        return "the private key (keyfile) does not belong to this certificate"
    if encrypted or "BAD_DECRYPT" in reason or "BAD_PASSWORD_READ" in reason:
        if has_password:
            return "the private key is encrypted and [tls] password_file holds the wrong password"
        return "the private key is encrypted: give its password in [tls] password_file"
    if "NO_START_LINE" in reason or "PEM" in reason:
        return ("no PEM certificate and private key found (a keyfile is needed unless the certfile "
                f"holds the key too; OpenSSL: {exc.reason or exc})")
    return f"OpenSSL refused it: {exc.reason or exc}"


def _sni_callback(named: dict[str, ssl.SSLContext]) -> Callable[[Any, str | None, ssl.SSLContext], None]:
    def choose(connection: Any, server_name: str | None, _default: ssl.SSLContext) -> None:
        if not server_name:
            return  # no SNI: the default certificate
        name = server_name.lower()
        setattr(connection, SERVER_NAME_ATTRIBUTE, name)
        chosen = named.get(name) or named.get("*." + name.partition(".")[2])
        if chosen is not None:
            connection.context = chosen
    return choose


def certificate_warnings(tls: TlsConfig, now: datetime.datetime | None = None) -> list[str]:
    """Messages for certificates that are expired, not yet valid, or expire within two weeks.

    Args:
        tls: the ``[tls]`` section (its files are readable: the context was built).
        now: the time to judge by (default: now, UTC).

    Returns:
        One message per certificate in trouble; empty when all are fine.
    """
    now = now or datetime.datetime.now(datetime.timezone.utc)
    files = [("certfile", tls.certfile)] + [(f"sni {e.split()[0]}", e.split()[1]) for e in tls.sni]
    messages = []
    for key, path in files:
        validity = _validity(path)
        if validity is None:
            continue
        not_before, not_after = validity
        if now > not_after:
            messages.append(f"[tls] {key} = {path!r}: the certificate expired on {not_after:%Y-%m-%d %H:%M} UTC; "
                            "clients will refuse it")
        elif now < not_before:
            messages.append(f"[tls] {key} = {path!r}: the certificate is not valid before "
                            f"{not_before:%Y-%m-%d %H:%M} UTC")
        elif not_after - now < EXPIRY_WARNING:
            messages.append(f"[tls] {key} = {path!r}: the certificate expires on {not_after:%Y-%m-%d %H:%M} UTC")
    return messages


def _validity(path: str) -> tuple[datetime.datetime, datetime.datetime] | None:
    """notBefore and notAfter of the first certificate in ``path``, or None if it cannot be read.

    The standard library decodes a certificate only through this private helper
    (what ``ssl.get_server_certificate`` users end up with too); without it, or on
    a file it cannot decode, there is simply no warning.
    """
    decode = getattr(getattr(ssl, "_ssl", None), "_test_decode_cert", None)
    if decode is None or not os.path.isfile(path):
        return None
    try:
        fields = decode(path)
        return (_utc(ssl.cert_time_to_seconds(fields["notBefore"])),
                _utc(ssl.cert_time_to_seconds(fields["notAfter"])))
    except (ssl.SSLError, OSError, KeyError, ValueError):
        return None


def _utc(seconds: float) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)


def listener_contexts(cfg: Config, listeners: Sequence[socket.socket],
                      binds: Sequence[str] | None) -> ListenerContexts:
    """Which listeners serve TLS, each with the context they serve it with.

    Args:
        cfg: the configuration.
        listeners: the listening sockets, in the order of ``binds``.
        binds: the ``bind`` entries the listeners were made from, or None for
            sockets systemd passed: those on TCP serve TLS when a certificate is set.

    Returns:
        The context of every TLS listener by file descriptor (one context for all).

    Raises:
        ConfigError: see ``build_server_context``.
    """
    if binds is None:
        secure = [bool(cfg.tls.certfile) and sock.family != socket.AF_UNIX for sock in listeners]
    else:
        secure = [listener_is_tls(entry, cfg.tls) for entry in binds]
    if not any(secure):
        return {}
    context = build_server_context(cfg.tls, cfg.source)
    for message in certificate_warnings(cfg.tls):
        error_log.warning("%s", message)
    return {sock.fileno(): context for sock, tls in zip(listeners, secure) if tls}


def reloaded_contexts(current: ListenerContexts, cfg: Config) -> ListenerContexts:
    """The contexts after a HUP: the same TLS listeners, certificates read again.

    Listeners stay what they were until a restart, so a renewed certificate is
    served by new connections while old ones finish with the old.

    Raises:
        ConfigError: the new certificates cannot be used, or the new configuration
            has no certificate for the TLS listeners that are open.
    """
    if not current:
        if cfg.tls.certfile:
            error_log.warning("reload: [tls] certfile is set but no listener serves TLS; "
                              "a restart is needed to add HTTPS listeners")
        return {}
    if not cfg.tls.certfile:
        raise ConfigError(f"{cfg.source or 'command line'}: [tls] certfile is empty, but {len(current)} "
                          "listener(s) serve TLS: keep a certificate, or restart without the HTTPS binds")
    context = build_server_context(cfg.tls, cfg.source)
    for message in certificate_warnings(cfg.tls):
        error_log.warning("%s", message)
    return {fd: context for fd in current}
