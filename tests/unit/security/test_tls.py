"""TLS: generated certificates, setting precedence, boot-time checks, and real mTLS handshakes."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import socket
import stat
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from waiting import wait_for

from weightslabd.security.peers import Peer, PeerTable, identify
from weightslabd.security.tls import (
    TlsConfig,
    TlsEnv,
    TlsError,
    TlsFile,
    channel_credentials,
    generate_certs,
    resolve_tls,
    server_ssl_context,
)
from weightslabd.security.tls_front import TlsFront

PING = "/test.Echo/Ping"
RPC_TIMEOUT = 10.0
CLIENT_CN = "weightslabd client"


def _config(cert_dir: Path, *, require_client_auth: bool = True) -> TlsConfig:
    return resolve_tls(TlsEnv(cert_dir=str(cert_dir), require_client_auth=require_client_auth))


@pytest.fixture
def certs(tmp_path: Path) -> Path:
    cert_dir = tmp_path / "certs"
    generate_certs(cert_dir)
    return cert_dir


@dataclass
class Served:
    """The daemon's TLS path in process: the front's engine with the context the daemon builds
    (`server_ssl_context`), relaying to a plain gRPC server on a unix socket, as in the daemon."""

    address: str
    refused: list[tuple[str, str]] = field(default_factory=list)
    seen: list[Peer] = field(default_factory=list)  # who each call that reached the gRPC server came from


Serve = Callable[[TlsConfig], Served]


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Serve]:
    """Starts the TLS front on 127.0.0.1 with `cfg`'s files and policy, before a real gRPC server."""
    started: list[tuple[TlsFront, grpc.Server]] = []

    def start(cfg: TlsConfig) -> Served:
        runtime = tmp_path / f"rt{len(started)}"
        runtime.mkdir(mode=0o700)
        upstream = runtime / "grpc.sock"
        peers = PeerTable()
        served = Served("")
        front = TlsFront("127.0.0.1", 0, server_ssl_context(cfg), upstream, runtime, peers,
                         lambda peer, reason: served.refused.append((peer, reason)))

        def echo(request: bytes, context: grpc.ServicerContext) -> bytes:
            served.seen.append(identify(context, peers))
            return request

        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), handlers=[
            grpc.method_handlers_generic_handler("test.Echo", {"Ping": grpc.unary_unary_rpc_method_handler(echo)})])
        server.add_insecure_port(f"unix:{upstream}")
        server.start()
        front.bind()
        front.start()
        started.append((front, server))
        served.address = f"127.0.0.1:{front.port}"
        return served

    yield start
    for front, server in started:
        front.close()
        server.stop(None)


def _ping(address: str, credentials: grpc.ChannelCredentials) -> bytes:
    with grpc.secure_channel(address, credentials) as channel:
        reply: bytes = channel.unary_unary(PING)(b"hello", timeout=RPC_TIMEOUT)
        return reply


def _refused(served: Served, credentials: grpc.ChannelCredentials) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as err:
        _ping(served.address, credentials)
    assert served.seen == []  # nothing reached the gRPC server
    return err.value.code()


def _reasons(served: Served) -> list[str]:
    return [reason for _, reason in wait_for(lambda: list(served.refused), 10.0, "the front to report the refusal")]


def _mixed_dir(tmp_path: Path, ca_from: Path, client_from: Path) -> Path:
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    shutil.copy(ca_from / "ca.crt", mixed / "ca.crt")
    shutil.copy(client_from / "client.crt", mixed / "client.crt")
    shutil.copy(client_from / "client.key", mixed / "client.key")
    return mixed


# ----------------------------------------------------------------------------------------------
# Handshakes, through the TLS front (the daemon serves TLS only there; tests/integration/test_tls_front_auth.py
# does the same through a real daemon)
# ----------------------------------------------------------------------------------------------


def test_mtls_call_is_accepted(certs: Path, serve: Serve) -> None:
    served = serve(_config(certs))
    assert _ping(served.address, channel_credentials(certs)) == b"hello"
    assert [p.client_cert for p in served.seen] == [CLIENT_CN]  # the certificate the front verified
    assert served.seen[0].address.startswith("ipv4:127.0.0.1:") and served.refused == []


def test_server_certificate_names_localhost(certs: Path, serve: Serve) -> None:
    served = serve(_config(certs))
    port = served.address.rsplit(":", 1)[1]
    # Name checks against the certificate, not only IP 127.0.0.1.
    assert _ping(f"localhost:{port}", channel_credentials(certs)) == b"hello"


def test_client_without_certificate_is_rejected(certs: Path, serve: Serve) -> None:
    served = serve(_config(certs))
    assert _refused(served, channel_credentials(certs, client_cert=False)) == grpc.StatusCode.UNAVAILABLE
    assert set(_reasons(served)) == {"no client certificate"}


def test_client_certificate_from_another_ca_is_rejected(
    certs: Path, tmp_path: Path, serve: Serve
) -> None:
    other = tmp_path / "other"
    generate_certs(other)
    served = serve(_config(certs))
    assert _refused(served, channel_credentials(_mixed_dir(tmp_path, certs, other))) == grpc.StatusCode.UNAVAILABLE
    assert set(_reasons(served)) == {"certificate verify failed: unable to get local issuer certificate"}


def test_client_rejects_server_from_another_ca(
    certs: Path, tmp_path: Path, serve: Serve
) -> None:
    other = tmp_path / "other"
    generate_certs(other)
    served = serve(_config(certs, require_client_auth=False))
    assert _refused(served, channel_credentials(other, client_cert=False)) == grpc.StatusCode.UNAVAILABLE


def test_without_client_auth_a_plain_tls_client_is_accepted(
    certs: Path, serve: Serve
) -> None:
    served = serve(_config(certs, require_client_auth=False))
    assert _ping(served.address, channel_credentials(certs, client_cert=False)) == b"hello"
    assert _ping(served.address, channel_credentials(certs)) == b"hello"  # a certificate is not asked for
    assert [p.client_cert for p in served.seen] == ["", ""] and served.refused == []


# ----------------------------------------------------------------------------------------------
# Boot-time checks
# ----------------------------------------------------------------------------------------------


def _expired_server_pair(certs: Path) -> None:
    """Replaces the server pair with one the CA signed but that expired yesterday."""
    ca_key = serialization.load_pem_private_key((certs / "ca.key").read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    ca_cert = x509.load_pem_x509_certificate((certs / "ca.crt").read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=30))
        .not_valid_after(now - dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    (certs / "backend-server.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (certs / "backend-server.key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                          serialization.NoEncryption())
    )


def _one_line_error(cfg: TlsConfig) -> str:
    with pytest.raises(TlsError) as err:
        server_ssl_context(cfg)  # what the daemon checks at boot, and its TLS front serves with
    message = str(err.value)
    assert "\n" not in message
    return message


def test_expired_server_certificate_stops_the_boot(certs: Path) -> None:
    _expired_server_pair(certs)
    message = _one_line_error(_config(certs))
    assert message.startswith(f"GRPC_TLS_CERT_FILE={certs / 'backend-server.crt'}: certificate expired on ")


def test_missing_certificate_names_the_variable(tmp_path: Path) -> None:
    message = _one_line_error(_config(tmp_path))
    assert message == (
        f"GRPC_TLS_CERT_FILE={tmp_path / 'backend-server.crt'}: file not found "
        "(run 'weightslabd certs' to create one)"
    )


def test_missing_key_names_the_variable(certs: Path) -> None:
    (certs / "backend-server.key").unlink()
    message = _one_line_error(_config(certs))
    assert message.startswith(f"GRPC_TLS_KEY_FILE={certs / 'backend-server.key'}: file not found")


def test_missing_ca_matters_only_with_client_auth(certs: Path) -> None:
    (certs / "ca.crt").unlink()
    message = _one_line_error(_config(certs))
    assert message.startswith(f"GRPC_TLS_CA_FILE={certs / 'ca.crt'}: file not found")
    server_ssl_context(_config(certs, require_client_auth=False))


def test_file_named_in_run_config_is_named_in_the_error(tmp_path: Path) -> None:
    missing = tmp_path / "elsewhere.crt"
    cfg = resolve_tls(TlsEnv(cert_dir=str(tmp_path)), {"grpc_tls_cert_file": str(missing)})
    assert _one_line_error(cfg).startswith(f"grpc_tls_cert_file={missing}: file not found")


def test_key_that_does_not_match_the_certificate(certs: Path) -> None:
    shutil.copy(certs / "client.key", certs / "backend-server.key")
    message = _one_line_error(_config(certs))
    assert message.startswith(f"GRPC_TLS_KEY_FILE={certs / 'backend-server.key'}: private key does not match")


def test_garbage_instead_of_pem(certs: Path) -> None:
    (certs / "backend-server.crt").write_text("not a certificate\n")
    assert _one_line_error(_config(certs)).endswith(": not a PEM certificate")
    shutil.copy(certs / "client.crt", certs / "backend-server.crt")
    (certs / "backend-server.key").write_text(
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
    )
    assert _one_line_error(_config(certs)).endswith(": not a PEM private key")


def test_ca_file_must_hold_a_ca(certs: Path) -> None:
    shutil.copy(certs / "client.crt", certs / "ca.crt")
    message = _one_line_error(_config(certs))
    assert message == f"GRPC_TLS_CA_FILE={certs / 'ca.crt'}: not a CA certificate"


def test_channel_credentials_report_a_missing_ca(tmp_path: Path) -> None:
    with pytest.raises(TlsError, match=r"^GRPC_TLS_CA_FILE=.*ca\.crt: file not found"):
        channel_credentials(tmp_path)


def test_disabled_tls_has_no_server_context(certs: Path) -> None:
    with pytest.raises(ValueError):
        server_ssl_context(resolve_tls(TlsEnv(enabled=False, cert_dir=str(certs))))


# ----------------------------------------------------------------------------------------------
# Generation
# ----------------------------------------------------------------------------------------------


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_keys_are_private_and_the_directory_too(tmp_path: Path) -> None:
    previous = os.umask(0)  # the modes must not rely on a friendly umask
    try:
        paths = generate_certs(tmp_path / "a" / "certs")
    finally:
        os.umask(previous)
    assert _mode(tmp_path / "a" / "certs") == 0o700
    for role in ("ca_key", "server_key", "client_key"):
        assert _mode(paths[role]) == 0o600, role
    for role in ("ca_cert", "server_cert", "client_cert"):
        assert _mode(paths[role]) == 0o644, role
    assert sorted(p.name for p in (tmp_path / "a" / "certs").iterdir()) == sorted(
        ["ca.crt", "ca.key", "backend-server.crt", "backend-server.key", "client.crt", "client.key"]
    )


def test_existing_files_are_not_overwritten(certs: Path) -> None:
    before = (certs / "ca.crt").read_bytes()
    with pytest.raises(TlsError) as err:
        generate_certs(certs)
    assert "\n" not in str(err.value) and "already exists" in str(err.value)
    assert (certs / "ca.crt").read_bytes() == before


def test_overwrite_replaces_and_keeps_keys_private(certs: Path) -> None:
    before = (certs / "ca.crt").read_bytes()
    (certs / "backend-server.key").chmod(0o644)  # a loosened old key must not pass its mode on
    generate_certs(certs, overwrite=True)
    assert (certs / "ca.crt").read_bytes() != before
    assert _mode(certs / "backend-server.key") == 0o600
    assert not [p for p in certs.iterdir() if p.name.startswith(".")]


def _usages(cert: x509.Certificate) -> x509.ExtendedKeyUsage:
    return cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value


def test_certificate_names_and_usages(tmp_path: Path) -> None:
    paths = generate_certs(tmp_path / "certs", ["studio.example", "10.1.2.3"], days=30)
    server = x509.load_pem_x509_certificate(paths["server_cert"].read_bytes())
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"localhost", socket.gethostname(), "studio.example"} <= set(san.get_values_for_type(x509.DNSName))
    assert {str(ip) for ip in san.get_values_for_type(x509.IPAddress)} >= {"127.0.0.1", "::1", "10.1.2.3"}
    assert ExtendedKeyUsageOID.SERVER_AUTH in _usages(server)
    lifetime = server.not_valid_after_utc - dt.datetime.now(dt.timezone.utc)
    assert dt.timedelta(days=29) < lifetime <= dt.timedelta(days=30)

    client = x509.load_pem_x509_certificate(paths["client_cert"].read_bytes())
    assert ExtendedKeyUsageOID.CLIENT_AUTH in _usages(client)
    ca = x509.load_pem_x509_certificate(paths["ca_cert"].read_bytes())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for leaf in (server, client):
        leaf.verify_directly_issued_by(ca)


# ----------------------------------------------------------------------------------------------
# Precedence: run config first, then environment, then ~/certs
# ----------------------------------------------------------------------------------------------


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_defaults_are_under_home_certs(home: Path) -> None:
    cfg = resolve_tls(TlsEnv())
    assert (cfg.enabled, cfg.require_client_auth) == (True, True)
    assert cfg.key_file == TlsFile("GRPC_TLS_KEY_FILE", home / "certs" / "backend-server.key")
    assert cfg.cert_file == TlsFile("GRPC_TLS_CERT_FILE", home / "certs" / "backend-server.crt")
    assert cfg.ca_file == TlsFile("GRPC_TLS_CA_FILE", home / "certs" / "ca.crt")


def test_environment_cert_dir_then_environment_files(home: Path) -> None:
    cfg = resolve_tls(TlsEnv(cert_dir="~/env-dir", cert_file="~/env.crt", key_file=""))
    assert cfg.cert_file.path == home / "env.crt"
    assert cfg.key_file.path == home / "env-dir" / "backend-server.key"  # empty means unset
    assert cfg.ca_file.path == home / "env-dir" / "ca.crt"


def test_config_cert_dir_beats_environment_dir_but_not_environment_files(home: Path) -> None:
    env = TlsEnv(cert_dir="/env-dir", ca_file="/env/ca.pem")
    cfg = resolve_tls(env, {"grpc_tls_cert_dir": "~/cfg-dir"})
    assert cfg.cert_file == TlsFile("GRPC_TLS_CERT_FILE", home / "cfg-dir" / "backend-server.crt")
    assert cfg.ca_file == TlsFile("GRPC_TLS_CA_FILE", Path("/env/ca.pem"))


def test_config_files_beat_everything(home: Path) -> None:
    env = TlsEnv(cert_dir="/env-dir", key_file="/env/k.pem", cert_file="/env/c.pem", ca_file="/env/ca.pem")
    cfg = resolve_tls(env, {
        "grpc_tls_cert_dir": "/cfg-dir",
        "grpc_tls_key_file": "~/k.pem",
        "grpc_tls_cert_file": Path("/cfg/c.pem"),
        "grpc_tls_ca_file": None,  # unset in the config: the environment decides
    })
    assert cfg.key_file == TlsFile("grpc_tls_key_file", home / "k.pem")
    assert cfg.cert_file == TlsFile("grpc_tls_cert_file", Path("/cfg/c.pem"))
    assert cfg.ca_file == TlsFile("GRPC_TLS_CA_FILE", Path("/env/ca.pem"))


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({}, (True, True)),
        ({"grpc_tls_enabled": False}, (False, True)),
        ({"grpc_tls_enabled": "0", "grpc_tls_require_client_auth": "false"}, (False, False)),
        ({"grpc_tls_require_client_auth": 0}, (True, False)),
        ({"grpc_tls_enabled": None, "grpc_tls_require_client_auth": None}, (True, True)),
        ({"grpc_tls_enabled": "", "grpc_tls_require_client_auth": " "}, (True, True)),
    ],
)
def test_config_flags_beat_environment_flags(config: dict[str, object], expected: tuple[bool, bool]) -> None:
    cfg = resolve_tls(TlsEnv(enabled=True, require_client_auth=True), config)
    assert (cfg.enabled, cfg.require_client_auth) == expected


def test_config_can_enable_what_the_environment_disabled() -> None:
    cfg = resolve_tls(TlsEnv(enabled=False, require_client_auth=False),
                      {"grpc_tls_enabled": "yes", "grpc_tls_require_client_auth": True})
    assert (cfg.enabled, cfg.require_client_auth) == (True, True)


def test_bad_config_values_are_one_line_errors() -> None:
    with pytest.raises(TlsError, match=r"^grpc_tls_enabled='maybe' \(run config\): expected a boolean"):
        resolve_tls(TlsEnv(), {"grpc_tls_enabled": "maybe"})
    with pytest.raises(TlsError, match=r"^grpc_tls_key_file=42 \(run config\): expected a path"):
        resolve_tls(TlsEnv(), {"grpc_tls_key_file": 42})
