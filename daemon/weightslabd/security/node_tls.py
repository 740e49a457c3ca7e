"""Mutual TLS between daemons: a job's home accepts forwarding nodes that show a client certificate of
the nodes' CA, and a forwarding node checks the home's server certificate against the same CA.

The files are those `weightslabd certs` writes, in one folder (WEIGHTSLAB_FORWARD_CERT_DIR, else
GRPC_TLS_CERT_DIR): `ca.crt`, `backend-server.crt`/`.key` (the home), `client.crt`/`.key` (a node).
They are read and checked at boot, so a bad one stops it with one line naming the setting and the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import grpc

from weightslabd.security.tls import (
    CA_CERT,
    CLIENT_CERT,
    CLIENT_KEY,
    SERVER_CERT,
    SERVER_KEY,
    TlsError,
    TlsFile,
    _check_pair,
    _is_ca,
    _load_certs,
    _read,
)

if TYPE_CHECKING:
    from weightslabd.config import Settings

SETTING = "WEIGHTSLAB_FORWARD_CERT_DIR"


def cert_dir(settings: Settings) -> tuple[str, Path]:
    """(the setting that names it, the folder) of the nodes' certificates."""
    if settings.weightslab_forward_cert_dir is not None:
        return SETTING, Path(settings.weightslab_forward_cert_dir).expanduser()
    return "GRPC_TLS_CERT_DIR", Path(settings.grpc_tls_cert_dir).expanduser()


def _files(setting: str, folder: Path, *names: str) -> list[TlsFile]:
    return [TlsFile(setting, folder / name) for name in names]


def _roots(ca: TlsFile) -> bytes:
    pem = _read(ca)
    if not any(_is_ca(cert) for cert in _load_certs(ca, pem)):
        raise TlsError.for_file(ca.setting, ca.path, "not a CA certificate")
    return pem


def _pair(cert: TlsFile, key: TlsFile) -> tuple[bytes, bytes]:
    cert_pem, key_pem = _read(cert), _read(key)
    _check_pair(key, key_pem, cert, _load_certs(cert, cert_pem))
    return cert_pem, key_pem


def home_credentials(settings: Settings) -> grpc.ServerCredentials:
    """The home's listener: its server pair, and a client certificate of the CA required of every node."""
    setting, folder = cert_dir(settings)
    ca, cert, key = _files(setting, folder, CA_CERT, SERVER_CERT, SERVER_KEY)
    roots = _roots(ca)
    cert_pem, key_pem = _pair(cert, key)
    return grpc.ssl_server_credentials([(key_pem, cert_pem)], root_certificates=roots, require_client_auth=True)


def node_credentials(settings: Settings) -> grpc.ChannelCredentials:
    """A forwarding node's channel: the home's certificate checked against the CA, the node's client pair."""
    setting, folder = cert_dir(settings)
    ca, cert, key = _files(setting, folder, CA_CERT, CLIENT_CERT, CLIENT_KEY)
    roots = _roots(ca)
    cert_pem, key_pem = _pair(cert, key)
    return grpc.ssl_channel_credentials(root_certificates=roots, private_key=key_pem, certificate_chain=cert_pem)
