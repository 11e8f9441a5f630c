"""Certificates for the TLS tests, made by ``trustme`` at test time (no key is ever committed)."""

from __future__ import annotations

import datetime
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization


@dataclass
class Pki:
    """A test CA and the files made from it.

    Attributes:
        ca: the CA (``ca.pem`` is its certificate).
        dir: where the files are.
    """

    ca: trustme.CA
    dir: Path

    @property
    def ca_file(self) -> Path:
        """The CA certificate clients verify the server with."""
        return self.dir / "ca.pem"

    def server_cert(self, name: str, *identities: str, not_after: datetime.datetime | None = None,
                    not_before: datetime.datetime | None = None) -> tuple[Path, Path]:
        """A server certificate (chain) and key for ``identities``, as ``name``.pem / ``name``.key."""
        cert = self.ca.issue_cert(*(identities or ("localhost", "127.0.0.1")), not_after=not_after,
                                  not_before=not_before)
        chain, key = self.dir / f"{name}.pem", self.dir / f"{name}.key"
        chain.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
        key.write_bytes(cert.private_key_pem.bytes())
        return chain, key

    def client_cert(self, name: str, common_name: str) -> Path:
        """A client certificate with its key in one PEM file."""
        cert = self.ca.issue_cert(f"{common_name}@example.test", common_name=common_name)
        path = self.dir / f"{name}.pem"
        path.write_bytes(cert.private_key_and_cert_chain_pem.bytes())
        return path

    def encrypted_key(self, key: Path, password: bytes) -> Path:
        """``key`` re-written encrypted with ``password``."""
        loaded = serialization.load_pem_private_key(key.read_bytes(), password=None)
        out = key.with_suffix(".enc.key")
        out.write_bytes(loaded.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                             serialization.BestAvailableEncryption(password)))
        return out


def make_pki(directory: Path) -> Pki:
    """A fresh CA in ``directory``."""
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(directory / "ca.pem"))
    return Pki(ca, directory)


def client_context(pki: Pki, client_cert: Path | None = None) -> ssl.SSLContext:
    """A client context that trusts the test CA (and presents ``client_cert``)."""
    context = ssl.create_default_context(cafile=str(pki.ca_file))
    if client_cert is not None:
        context.load_cert_chain(str(client_cert))
    return context


def tls_connect(port: int, context: ssl.SSLContext, server_name: str = "localhost",
                timeout: float = 10.0) -> ssl.SSLSocket:
    """A TLS connection to 127.0.0.1:``port``, handshake done."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        return context.wrap_socket(raw, server_hostname=server_name)
    except BaseException:
        raw.close()
        raise


def peer_serial(port: int, pki: Pki) -> int:
    """The serial number of the certificate a new connection is served."""
    with tls_connect(port, client_context(pki)) as sock:
        der = sock.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number
