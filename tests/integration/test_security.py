"""The daemon's defaults are secure: mTLS on the gRPC port, tokens when set, private IPC, one-line
boot errors for missing TLS files."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from weightslab_shim.runtime import control_endpoint
from weightslabd.proto import experiment_service_pb2 as pb
from weightslabd.proto import experiment_service_pb2_grpc as pb_grpc
from weightslabd.security.tls import channel_credentials, generate_certs

from .harness import Daemon, Trainer, base_env


@pytest.fixture
def tls_env(tmp_path: Path) -> dict[str, str]:
    env = base_env(tmp_path)
    generate_certs(tmp_path / "certs")
    del env["GRPC_TLS_ENABLED"]  # the default: TLS with client certificates
    env.update(GRPC_TLS_CERT_DIR=str(tmp_path / "certs"), GRPC_AUTH_TOKENS="first-token,second-token")
    return env


def call(address: str, credentials: grpc.ChannelCredentials, metadata: tuple = ()) -> pb.DataSplitsResponse:  # type: ignore[type-arg]
    with grpc.secure_channel(address, credentials) as channel:  # closed: no reconnect attempts behind the test
        return pb_grpc.ExperimentServiceStub(channel).GetDataSplits(pb.Empty(), timeout=5, metadata=metadata)


def test_default_daemon_requires_a_client_certificate_and_a_token(tls_env: dict[str, str], tmp_path: Path) -> None:
    daemon = Daemon(tls_env, tmp_path / "daemon.log").start()
    try:
        Trainer(tls_env, tmp_path, "--steps", "5").wait()
        address = f"localhost:{tls_env['GRPC_BACKEND_PORT']}"
        good = channel_credentials(tmp_path / "certs")
        for token in ("first-token", "second-token"):  # rotation: every listed token works
            assert call(address, good, (("authorization", f"Bearer {token}"),)).split_names == ["train"]
        with pytest.raises(grpc.RpcError) as no_token:
            call(address, good)
        assert no_token.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as no_cert:
            call(address, channel_credentials(tmp_path / "certs", client_cert=False), (("x-api-key", "first-token"),))
        assert no_cert.value.code() == grpc.StatusCode.UNAVAILABLE
        with pytest.raises(grpc.RpcError) as plaintext:
            pb_grpc.ExperimentServiceStub(grpc.insecure_channel(address)).GetDataSplits(pb.Empty(), timeout=5)
        assert plaintext.value.code() == grpc.StatusCode.UNAVAILABLE
        # The IPC side is private: the runtime directory is ours alone, the socket too.
        runtime = Path(tls_env["WEIGHTSLAB_RUNTIME_DIR"])
        assert stat.S_IMODE(runtime.stat().st_mode) == 0o700
        sock = Path(control_endpoint(runtime)[len("ipc://"):])
        assert stat.S_IMODE(sock.stat().st_mode) == 0o600
        assert "first-token" not in daemon.log() and "second-token" not in daemon.log()
    finally:
        daemon.stop()


@pytest.mark.parametrize(("remove", "variable"), [("backend-server.crt", "GRPC_TLS_CERT_FILE"),
                                                  ("backend-server.key", "GRPC_TLS_KEY_FILE"),
                                                  ("ca.crt", "GRPC_TLS_CA_FILE")])
def test_missing_tls_file_stops_the_boot_with_one_line(tls_env: dict[str, str], tmp_path: Path, remove: str,
                                                       variable: str) -> None:
    (tmp_path / "certs" / remove).unlink()
    result = subprocess.run([sys.executable, "-m", "weightslabd"], env=tls_env, capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and variable in lines[0] and "file not found" in lines[0], result.stderr
    assert not (Path(tls_env["WEIGHTSLAB_RUNTIME_DIR"]) / "daemon.json").exists()


def expired_client(cert_dir: Path, out: Path) -> grpc.ChannelCredentials:
    """A client certificate signed by the right CA that expired yesterday."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca_cert = x509.load_pem_x509_certificate((cert_dir / "ca.crt").read_bytes())
    ca_key = serialization.load_pem_private_key((cert_dir / "ca.key").read_bytes(), password=None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "old")]))
            .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=30)).not_valid_after(now - dt.timedelta(days=1))
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))  # type: ignore[arg-type]
    pem_key = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return grpc.ssl_channel_credentials((cert_dir / "ca.crt").read_bytes(), pem_key,
                                        cert.public_bytes(serialization.Encoding.PEM))


def test_auth_matrix(tls_env: dict[str, str], tmp_path: Path) -> None:
    """Each way in, refused or let through with the right status, and the audit log says who."""
    import json
    import re

    from .harness import run_folder

    generate_certs(tmp_path / "other-ca")
    daemon = Daemon(tls_env, tmp_path / "daemon.log").start()
    try:
        Trainer(tls_env, tmp_path, "--steps", "3").wait()
        address = f"localhost:{tls_env['GRPC_BACKEND_PORT']}"
        certs = tmp_path / "certs"
        good = channel_credentials(certs)
        token = (("x-grpc-auth-token", "first-token"),)
        cases = [
            ("no client certificate", channel_credentials(certs, client_cert=False), token, "UNAVAILABLE"),
            ("client certificate of another CA", grpc.ssl_channel_credentials(
                (certs / "ca.crt").read_bytes(), (tmp_path / "other-ca" / "client.key").read_bytes(),
                (tmp_path / "other-ca" / "client.crt").read_bytes()), token, "UNAVAILABLE"),
            ("expired client certificate", expired_client(certs, tmp_path), token, "UNAVAILABLE"),
            ("no token", good, (), "UNAUTHENTICATED"),
            ("wrong token", good, (("authorization", "Bearer nope"),), "UNAUTHENTICATED"),
            ("first token", good, (("authorization", "Bearer first-token"),), "OK"),
            ("second token", good, (("x-api-key", "second-token"),), "OK"),
        ]
        for what, credentials, metadata, expected in cases:
            try:
                call(address, credentials, metadata)
                got = "OK"
            except grpc.RpcError as exc:
                got = exc.code().name
            assert got == expected, what
    finally:
        daemon.stop()
    lines = [json.loads(line) for line in (run_folder(tmp_path) / "audit.jsonl").read_text().splitlines()]
    # The daemon terminates TLS itself (tls_front.py): a refused handshake is audited with the client's
    # address and the reason, though no call ever existed.
    peer = re.compile(r"ipv4:127\.0\.0\.1:\d+")
    refused = [e for e in lines if e["action"] == "tls_handshake"]
    assert all(e["outcome"] == "REFUSED" and peer.fullmatch(e["peer"]) for e in refused), refused
    reasons = [e["detail"] for i, e in enumerate(refused) if i == 0 or e["detail"] != refused[i - 1]["detail"]]
    assert reasons == ["no client certificate", "certificate verify failed: unable to get local issuer certificate",
                       "certificate verify failed: certificate has expired"]
    # The calls that got through are there too, each with the real TCP peer, the certificate and the token.
    calls = [e for e in lines if e["action"] != "tls_handshake"]
    assert [(e["credential"], e["outcome"], e["client_cert"]) for e in calls] == [
        ("none", "UNAUTHENTICATED", "weightslabd client"), ("invalid", "UNAUTHENTICATED", "weightslabd client"),
        ("token#1", "OK", "weightslabd client"), ("token#2", "OK", "weightslabd client")]
    assert all(peer.fullmatch(e["peer"]) for e in calls), calls
    assert calls[0]["detail"].startswith("missing credentials") and calls[1]["detail"] == "invalid credentials"
    logged = [e for e in daemon.log_events() if e.get("event") == "TLS handshake refused"]
    assert [e["reason"] for e in logged][:1] == ["no client certificate"] and len(logged) >= 3
    assert "first-token" not in daemon.log() and "second-token" not in daemon.log()
