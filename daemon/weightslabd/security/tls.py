"""TLS for the gRPC socket: local certificates, where the files are, and credentials from them.

Three jobs, in the order a deployment meets them:

- `generate_certs` makes a private CA, a server pair and a client pair (what `weightslabd certs` writes).
- `resolve_tls` decides which settings and files apply: run config (sent by the shim) first, then the
  environment, then `~/certs` (see the gRPC Server table of the configuration document).
- `server_ssl_context` (the daemon's TLS front), `server_credentials` and `channel_credentials` read and
  check those files, so a bad file stops the boot with one line that names the setting, the path and the
  problem instead of a TLS handshake error later.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import socket
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes, PrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

if TYPE_CHECKING:
    from weightslabd.config import Settings

DEFAULT_CERT_DIR = "~/certs"
CA_CERT = "ca.crt"
CA_KEY = "ca.key"
SERVER_CERT = "backend-server.crt"
SERVER_KEY = "backend-server.key"
CLIENT_CERT = "client.crt"
CLIENT_KEY = "client.key"

# Tolerates a client clock slightly behind the machine that issued the certificate.
_BACKDATE = dt.timedelta(minutes=5)
_CREATE_HINT = "run 'weightslabd certs' to create one"

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


class TlsError(Exception):
    """A TLS setting or file is unusable; `str()` is one line fit for a boot failure."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))

    @classmethod
    def for_file(cls, setting: str, path: Path, problem: str) -> TlsError:
        return cls(f"{setting}={path}: {problem}" if setting else f"{path}: {problem}")


@dataclass(frozen=True)
class TlsEnv:
    """The environment's TLS settings (GRPC_TLS_*), already parsed by the settings class."""

    enabled: bool = True
    require_client_auth: bool = True
    cert_dir: str = DEFAULT_CERT_DIR
    key_file: str | None = None
    cert_file: str | None = None
    ca_file: str | None = None


@dataclass(frozen=True)
class TlsFile:
    """A resolved path and the setting that names it ("" if none), so errors point at what to change."""

    setting: str
    path: Path


@dataclass(frozen=True)
class TlsConfig:
    """The TLS settings that apply, after run config and environment are merged."""

    enabled: bool
    require_client_auth: bool
    key_file: TlsFile
    cert_file: TlsFile
    ca_file: TlsFile


# ----------------------------------------------------------------------------------------------
# Resolution
# ----------------------------------------------------------------------------------------------


def _config_bool(run_config: Mapping[str, object], key: str) -> bool | None:
    value = run_config.get(key)
    # Blank means unset: an empty config value must not switch TLS off.
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise TlsError(f"{key}={value!r} (run config): expected a boolean (1/0, true/false)")


def _config_path(run_config: Mapping[str, object], key: str) -> str | None:
    value = run_config.get(key)
    if value is None:
        return None
    if not isinstance(value, str | os.PathLike):
        raise TlsError(f"{key}={value!r} (run config): expected a path")
    text = os.fspath(value).strip()
    return text or None


def _expand(path: str) -> Path:
    return Path(path).expanduser()


def resolve_tls(env: TlsEnv, run_config: Mapping[str, object] | None = None) -> TlsConfig:
    """Merges the run config over the environment; each path: its own setting, then the cert dir."""
    config = run_config or {}
    enabled = _config_bool(config, "grpc_tls_enabled")
    require = _config_bool(config, "grpc_tls_require_client_auth")

    config_dir = _config_path(config, "grpc_tls_cert_dir")
    env_dir = (env.cert_dir or "").strip() or None
    cert_dir = _expand(config_dir or env_dir or DEFAULT_CERT_DIR)

    def pick(name: str, env_value: str | None, default_name: str) -> TlsFile:
        key = f"grpc_tls_{name}_file"
        variable = key.upper()
        from_config = _config_path(config, key)
        if from_config:
            return TlsFile(key, _expand(from_config))
        from_env = (env_value or "").strip()
        if from_env:
            return TlsFile(variable, _expand(from_env))
        # The per-file variable's documented default is "<cert dir>/<name>", so errors name it.
        return TlsFile(variable, cert_dir / default_name)

    return TlsConfig(
        enabled=env.enabled if enabled is None else enabled,
        require_client_auth=env.require_client_auth if require is None else require,
        key_file=pick("key", env.key_file, SERVER_KEY),
        cert_file=pick("cert", env.cert_file, SERVER_CERT),
        ca_file=pick("ca", env.ca_file, CA_CERT),
    )


# ----------------------------------------------------------------------------------------------
# Reading and checking
# ----------------------------------------------------------------------------------------------


def settings_tls(settings: Settings, run_config: Mapping[str, object] | None = None) -> TlsConfig:
    """The daemon's TLS with the documented precedence: the run config's grpc_tls_* keys, then GRPC_TLS_*."""
    env = TlsEnv(
        enabled=settings.grpc_tls_enabled,
        require_client_auth=settings.grpc_tls_require_client_auth,
        cert_dir=str(settings.grpc_tls_cert_dir),
        key_file=str(settings.grpc_tls_key_file) if settings.grpc_tls_key_file else None,
        cert_file=str(settings.grpc_tls_cert_file) if settings.grpc_tls_cert_file else None,
        ca_file=str(settings.grpc_tls_ca_file) if settings.grpc_tls_ca_file else None,
    )
    return resolve_tls(env, run_config)


def _read(file: TlsFile) -> bytes:
    try:
        return file.path.read_bytes()
    except FileNotFoundError:
        raise TlsError.for_file(file.setting, file.path, f"file not found ({_CREATE_HINT})") from None
    except IsADirectoryError:
        raise TlsError.for_file(file.setting, file.path, "is a directory, expected a PEM file") from None
    except PermissionError:
        raise TlsError.for_file(file.setting, file.path, "not readable (permission denied)") from None
    except OSError as exc:
        raise TlsError.for_file(file.setting, file.path, f"cannot read: {exc.strerror}") from None


def _load_certs(file: TlsFile, pem: bytes) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise TlsError.for_file(file.setting, file.path, "not a PEM certificate") from None
    now = dt.datetime.now(dt.timezone.utc)
    for cert in certs:
        if cert.not_valid_after_utc <= now:
            expired = cert.not_valid_after_utc.strftime("%Y-%m-%d %H:%M UTC")
            problem = f"certificate expired on {expired} ({_CREATE_HINT})"
            raise TlsError.for_file(file.setting, file.path, problem)
        if cert.not_valid_before_utc > now:
            start = cert.not_valid_before_utc.strftime("%Y-%m-%d %H:%M UTC")
            raise TlsError.for_file(file.setting, file.path, f"certificate not valid before {start}")
    return certs


def _load_key(file: TlsFile, pem: bytes) -> PrivateKeyTypes:
    try:
        return serialization.load_pem_private_key(pem, password=None)
    except TypeError:
        # cryptography's way of saying the key needs a password.
        problem = "private key is encrypted; give an unencrypted one"
        raise TlsError.for_file(file.setting, file.path, problem) from None
    except ValueError:
        raise TlsError.for_file(file.setting, file.path, "not a PEM private key") from None
    except UnsupportedAlgorithm:
        raise TlsError.for_file(file.setting, file.path, "private key algorithm not supported") from None


def _public_der(owner: PrivateKeyTypes | x509.Certificate) -> bytes:
    return owner.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _check_pair(key_file: TlsFile, key_pem: bytes, cert_file: TlsFile, chain: list[x509.Certificate]) -> None:
    if _public_der(_load_key(key_file, key_pem)) != _public_der(chain[0]):
        problem = f"private key does not match the certificate {cert_file.path}"
        raise TlsError.for_file(key_file.setting, key_file.path, problem)


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return True  # an old v1 root has no extensions; let the handshake judge it
    return constraints.ca


def _server_material(cfg: TlsConfig) -> tuple[bytes, bytes, bytes | None]:
    """The server's certificate chain, key and (with client auth) CA roots, read and checked now (boot)."""
    if not cfg.enabled:
        raise ValueError("TLS is disabled (GRPC_TLS_ENABLED=0); bind an insecure port instead")
    cert_pem = _read(cfg.cert_file)
    key_pem = _read(cfg.key_file)
    _check_pair(cfg.key_file, key_pem, cfg.cert_file, _load_certs(cfg.cert_file, cert_pem))

    root_pem: bytes | None = None
    if cfg.require_client_auth:
        root_pem = _read(cfg.ca_file)
        roots = _load_certs(cfg.ca_file, root_pem)
        if not any(_is_ca(cert) for cert in roots):
            raise TlsError.for_file(cfg.ca_file.setting, cfg.ca_file.path, "not a CA certificate")
    return cert_pem, key_pem, root_pem


def server_credentials(cfg: TlsConfig) -> grpc.ServerCredentials:
    """Checks the server's files now (boot), then builds credentials; mTLS when client auth is required."""
    cert_pem, key_pem, root_pem = _server_material(cfg)
    return grpc.ssl_server_credentials(
        [(key_pem, cert_pem)],
        root_certificates=root_pem,
        require_client_auth=cfg.require_client_auth,
    )


def server_ssl_context(cfg: TlsConfig) -> ssl.SSLContext:
    """The same files and policy for the daemon's own TLS front: TLS >= 1.2, ALPN h2 (grpc clients insist),
    and a verified client certificate when client auth is required."""
    cert_pem, key_pem, root_pem = _server_material(cfg)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["h2"])
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    try:
        # load_cert_chain reads only files: these are the ones just checked.
        context.load_cert_chain(cfg.cert_file.path, cfg.key_file.path)
    except (ssl.SSLError, OSError) as exc:
        raise TlsError.for_file(cfg.cert_file.setting, cfg.cert_file.path, f"rejected by OpenSSL ({exc})") from None
    if root_pem is not None:
        try:
            context.load_verify_locations(cadata=root_pem.decode("ascii", errors="replace"))
        except ssl.SSLError as exc:
            raise TlsError.for_file(cfg.ca_file.setting, cfg.ca_file.path, f"rejected by OpenSSL ({exc})") from None
        context.verify_mode = ssl.CERT_REQUIRED
    else:
        context.verify_mode = ssl.CERT_NONE  # as grpc's require_client_auth=False: no certificate asked for
    return context


def channel_credentials(cert_dir: Path, *, client_cert: bool = True) -> grpc.ChannelCredentials:
    """Client side: trust `ca.crt` in `cert_dir`, and present `client.crt` unless `client_cert` is off."""
    cert_dir = Path(cert_dir).expanduser()
    ca = TlsFile("GRPC_TLS_CA_FILE", cert_dir / CA_CERT)
    root_pem = _read(ca)
    _load_certs(ca, root_pem)
    if not client_cert:
        return grpc.ssl_channel_credentials(root_certificates=root_pem)
    cert = TlsFile("", cert_dir / CLIENT_CERT)
    key = TlsFile("", cert_dir / CLIENT_KEY)
    cert_pem, key_pem = _read(cert), _read(key)
    _check_pair(key, key_pem, cert, _load_certs(cert, cert_pem))
    return grpc.ssl_channel_credentials(
        root_certificates=root_pem, private_key=key_pem, certificate_chain=cert_pem
    )


# ----------------------------------------------------------------------------------------------
# Generation
# ----------------------------------------------------------------------------------------------


def _san(names: Sequence[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for name in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(entries)


def _name(common_name: str) -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "weightslabd"),
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
    ])


def _builder(subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey,
             now: dt.datetime, days: int) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def _leaf(common_name: str, usage: x509.ObjectIdentifier, ca_cert: x509.Certificate,
          ca_key: CertificateIssuerPrivateKeyTypes, now: dt.datetime, days: int,
          san: x509.SubjectAlternativeName | None) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        _builder(_name(common_name), ca_cert.subject, key.public_key(), now, days)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
    )
    if san is not None:
        builder = builder.add_extension(san, critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _write(path: Path, data: bytes, mode: int) -> None:
    """Writes through a temp file created with `mode`: a key is never readable by others, even briefly."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def generate_certs(
    cert_dir: Path,
    hostnames: Sequence[str] | None = None,
    *,
    days: int = 825,
    overwrite: bool = False,
) -> dict[str, Path]:
    """Creates a private CA plus server and client pairs in `cert_dir`; returns their paths by role.

    The server certificate is valid for localhost, 127.0.0.1, ::1, this host's name and `hostnames`.
    Keys are EC P-256, written mode 0600; the directory is created mode 0700.
    """
    if days < 1:
        raise ValueError(f"days must be at least 1, got {days}")
    cert_dir = Path(cert_dir).expanduser()
    paths = {
        "ca_cert": cert_dir / CA_CERT,
        "ca_key": cert_dir / CA_KEY,
        "server_cert": cert_dir / SERVER_CERT,
        "server_key": cert_dir / SERVER_KEY,
        "client_cert": cert_dir / CLIENT_CERT,
        "client_key": cert_dir / CLIENT_KEY,
    }
    if not overwrite:
        existing = [p for p in paths.values() if p.exists()]
        if existing:
            raise TlsError(f"{existing[0]}: already exists; refusing to overwrite it")

    names = list(dict.fromkeys(["localhost", "127.0.0.1", "::1", socket.gethostname(), *(hostnames or ())]))
    names = [n for n in names if n]
    now = dt.datetime.now(dt.timezone.utc)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name(f"weightslabd local CA ({socket.gethostname()})")
    ca_cert = (
        _builder(ca_name, ca_name, ca_key.public_key(), now, days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    server_key, server_cert = _leaf(
        names[0], ExtendedKeyUsageOID.SERVER_AUTH, ca_cert, ca_key, now, days, _san(names)
    )
    client_key, client_cert = _leaf(
        "weightslabd client", ExtendedKeyUsageOID.CLIENT_AUTH, ca_cert, ca_key, now, days, None
    )

    # The directory's mode is set at creation only: an existing one belongs to the user.
    cert_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    pem = serialization.Encoding.PEM
    _write(paths["ca_key"], _key_pem(ca_key), 0o600)
    _write(paths["server_key"], _key_pem(server_key), 0o600)
    _write(paths["client_key"], _key_pem(client_key), 0o600)
    _write(paths["ca_cert"], ca_cert.public_bytes(pem), 0o644)
    _write(paths["server_cert"], server_cert.public_bytes(pem), 0o644)
    _write(paths["client_cert"], client_cert.public_bytes(pem), 0o644)
    return paths
