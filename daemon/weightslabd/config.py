"""Every setting of weightslabd: one typed class holds each variable, its default, its validation and
the words that document it (docs/configuration.md and .env are checked against it by the tests)."""

from __future__ import annotations

import io
import ipaddress
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple, get_args

from pydantic import Field, GetCoreSchemaHandler, PrivateAttr, SecretStr, ValidationError
from pydantic_core import CoreSchema, PydanticCustomError, core_schema
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from weightslab_shim.runtime import resolve_runtime_dir
from weightslabd.origins import parse_origins

ENVIRONMENT = "environment"
DEFAULT = "default"
# Unknown keys with these prefixes in an env file are probably typos of ours, so they are reported.
OUR_PREFIXES = ("WEIGHTSLAB_", "WL_", "GRPC_")
GRPC_MAX_MESSAGE_LIMIT = 2**31 - 1  # gRPC stores message limits in a signed 32-bit int


class ConfigError(Exception):
    """A setting that cannot be used; str() is one line a user can act on."""

    def __init__(self, message: str, variable: str | None = None) -> None:
        super().__init__(message)
        self.variable = variable


# --- how a setting is read from text -------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """Parses one setting from text (or a typed value) and says, in words, what it accepts."""

    accepts: str
    parse: Callable[[Any], Any]

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return core_schema.no_info_before_validator_function(self._validate, handler(source))

    def _validate(self, value: Any) -> Any:
        try:
            return self.parse(value)
        except (TypeError, ValueError):
            # One uniform message per setting: the same words the docs show.
            error = PydanticCustomError("invalid_setting", "expected {accepts}", {"accepts": self.accepts})
            raise error from None


_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
_TOKEN = re.compile(r"[\x21-\x7e]+")  # what a gRPC metadata value can carry, spaces excluded
_INTEGER = re.compile(r"[+-]?\d+")


def _text(value: Any) -> str:
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if not isinstance(value, (str, Path)):
        raise TypeError(type(value).__name__)
    return str(value).strip()


def _flag(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(text)


def _integer(low: int, high: int | None = None, *, clamp: bool = False) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise TypeError(type(value).__name__)
        if isinstance(value, str) and not _INTEGER.fullmatch(value.strip()):
            raise ValueError(value)
        number = int(value)
        if clamp and high is not None:
            return min(max(number, low), high)
        if number < low or (high is not None and number > high):
            raise ValueError(number)
        return number

    return parse


def _number(low: float, *, inclusive: bool) -> Callable[[Any], float]:
    def parse(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise TypeError(type(value).__name__)
        number = float(value)
        if not math.isfinite(number) or number < low or (number == low and not inclusive):
            raise ValueError(number)
        return number

    return parse


def _choice(*options: str, upper: bool) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        text = _text(value)
        text = text.upper() if upper else text.lower()
        if text not in options:
            raise ValueError(text)
        return text

    return parse


def _host(value: Any) -> str:
    text = _text(value)
    if not text or any(c.isspace() for c in text):
        raise ValueError(text)
    return text


def _path(value: Any) -> Path:
    text = _text(value)
    if not text:
        raise ValueError(text)
    return Path(text).expanduser()


def _token_list(value: Any) -> str:
    items = [item.strip() for item in _text(value).split(",")]
    if not all(_TOKEN.fullmatch(item) for item in items if item):
        raise ValueError("token")
    return ",".join(item for item in items if item)


def _token(value: Any) -> str:
    text = _text(value)
    if not _TOKEN.fullmatch(text):
        raise ValueError("token")
    return text


def _origins(value: Any) -> str:
    return ",".join(parse_origins(_text(value)))


def _address(low_port: int) -> Callable[[Any], str]:
    """`host:port` (`[v6]:port`), the port in low_port..65535; stored as given, stripped."""

    def parse(value: Any) -> str:
        text = _text(value)
        host, sep, port = text.rpartition(":")
        if not sep or not _host(host.strip("[]")) or not _INTEGER.fullmatch(port):
            raise ValueError(text)
        _integer(low_port, 65535)(port)
        return text

    return parse


def _unset_or(parse: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """Empty text means unset, so `VAR=` in a file behaves like a missing line."""

    def parse_optional(value: Any) -> Any:
        if value is None or (isinstance(value, (str, SecretStr)) and not _text(value)):
            return None
        return parse(value)

    return parse_optional


_ACCEPTS_FLAG = "1/true/yes/on or 0/false/no/off"
Flag = Annotated[bool, Rule(_ACCEPTS_FLAG, _flag)]
# 0 asks the OS for a free port; the one chosen is logged and written to <runtime dir>/daemon.json.
Port = Annotated[int, Rule("an integer port 0..65535 (0 = any free port)", _integer(0, 65535))]
Host = Annotated[str, Rule("a host name or IP address without spaces", _host)]
GRPC_WEB_OFF = -1  # WEIGHTSLAB_GRPC_WEB_PORT value that turns the gRPC-Web endpoint off
WebPort = Annotated[int, Rule("an integer port 0..65535 (0 = any free port), or -1 (off)", _integer(-1, 65535))]
Origins = Annotated[str, Rule("comma-separated origins scheme://host[:port], scheme://host:* or *", _origins)]
NodeAddress = Annotated[str | None, Rule("host:port (port 1..65535), or unset", _unset_or(_address(1)))]
ListenAddress = Annotated[str | None, Rule("host:port (port 0..65535, 0 = any free port), or unset",
                                           _unset_or(_address(0)))]
Positive = Annotated[int, Rule("an integer >= 1", _integer(1))]
NonNegative = Annotated[int, Rule("an integer >= 0", _integer(0))]
Seconds = Annotated[float, Rule("a number of seconds > 0", _number(0, inclusive=False))]
SecondsOrZero = Annotated[float, Rule("a number of seconds >= 0", _number(0, inclusive=True))]
SomePath = Annotated[Path, Rule("a path", _path)]
OptionalPath = Annotated[Path | None, Rule("a path, or unset", _unset_or(_path))]
Token = Annotated[SecretStr | None, Rule("printable ASCII without spaces, or unset", _unset_or(_token))]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "WATCHDOG"]
GrpcVerbosity = Literal["DEBUG", "INFO", "ERROR"]
AuditFormat = Literal["json", "csv", "none"]
Aggregation = Literal["mean", "max"]


def _setting(default: Any, group: str, description: str, *, unset: str | None = None) -> Any:
    """A field with its documentation group; `unset` says what a None default means."""
    extra: dict[str, Any] = {"group": group}
    if unset is not None:
        extra["unset_means"] = unset
    return Field(default, description=description, json_schema_extra=extra)


_LOGGING = "Logging"
_CLI = "CLI Server"
_GRPC = "gRPC Server"
_WATCHDOG = "Watchdog"
_DATA = "Data and Cache"
_EVALUATION = "Evaluation Mode"
_API_KEYS = "AI / LLM API Keys"
_AGENT = "Agent Configuration"
_TESTING = "Testing"
_ADDITIONS = "weightslabd additions"
GROUPS = (_LOGGING, _CLI, _GRPC, _WATCHDOG, _DATA, _EVALUATION, _API_KEYS, _AGENT, _TESTING, _ADDITIONS)


# --- the settings ---------------------------------------------------------------------------------


class Settings(BaseSettings):
    """Every backend variable of the configuration document, plus the weightslabd additions.

    Field name = variable name lower-cased. `Settings()` gives the documented defaults and reads no
    environment: `load_settings` is the one place that reads the env file and the environment.
    """

    model_config = SettingsConfigDict(frozen=True, extra="forbid", validate_default=True)

    # Logging
    weightslab_log_level: Annotated[
        LogLevel,
        Rule("one of DEBUG, INFO, WARNING, ERROR, WATCHDOG", _choice(*get_args(LogLevel), upper=True)),
    ] = _setting(
        "INFO", _LOGGING,
        "Lowest level logged by every weightslabd component; WATCHDOG (35, between WARNING and ERROR) "
        "carries watchdog and restart events.",
    )
    weightslab_log_to_file: Flag = _setting(
        False, _LOGGING,
        "Also write the log as JSON lines to a rotating weightslabd.log (10 MiB x 5) besides stdout; "
        "it lies in WEIGHTSLAB_ROOT_LOG_DIR when set, else in $XDG_STATE_HOME/weightslabd.",
    )
    weightslab_root_log_dir: OptionalPath = _setting(
        None, _LOGGING,
        "Root folder under which each run's data is saved (manifest, signals, sample table, edit journal, "
        "predictions, audit log).",
        unset="root_log_dir/ next to the training script",
    )
    audit_log_format: Annotated[
        AuditFormat, Rule("one of json, csv, none", _choice(*get_args(AuditFormat), upper=False))
    ] = _setting(
        "json", _LOGGING,
        "Format of the per-run audit log of every user action received over gRPC: json lines, csv, "
        "or none to keep no audit log; one file per run.",
    )

    # CLI Server
    cli_host: Host = _setting(
        "0.0.0.0", _CLI,
        "Address the CLI inspection server binds to; used only when CLI_PORT differs from "
        "GRPC_BACKEND_PORT.",
    )
    cli_port: Port = _setting(
        50051, _CLI,
        "Port of the CLI inspection server; unset or equal to GRPC_BACKEND_PORT serves the CLI on the "
        "gRPC server itself, another port opens a separate line-protocol listener on CLI_HOST.",
    )

    # gRPC Server
    grpc_backend_host: Host = _setting(
        "0.0.0.0", _GRPC, "Address the gRPC server that Weights Studio talks to binds to."
    )
    grpc_backend_port: Port = _setting(50051, _GRPC, "Port the gRPC server listens on.")
    grpc_max_message_bytes: Annotated[
        int, Rule(f"an integer 1..{GRPC_MAX_MESSAGE_LIMIT} (bytes)", _integer(1, GRPC_MAX_MESSAGE_LIMIT))
    ] = _setting(
        268435456, _GRPC,
        "Largest gRPC message sent or received, in bytes (256 MiB); raise it for very large weight "
        "tensors or image batches.",
    )
    grpc_max_concurrent_rpcs: Annotated[
        int | None, Rule("an integer >= 1, or unset", _unset_or(_integer(1)))
    ] = _setting(
        None, _GRPC, "Most RPCs served at the same time; further calls are refused with RESOURCE_EXHAUSTED.",
        unset="the worker thread count",
    )
    grpc_verbosity: Annotated[
        GrpcVerbosity | None,
        Rule("one of DEBUG, INFO, ERROR, or unset", _unset_or(_choice(*get_args(GrpcVerbosity), upper=True))),
    ] = _setting(
        None, _GRPC, "Verbosity of gRPC's C core, handed to it before the server starts.",
        unset="gRPC's own default",
    )
    grpc_tls_enabled: Flag = _setting(
        True, _GRPC, "Serve gRPC over TLS; turn it off only for isolated local debugging."
    )
    grpc_tls_cert_dir: SomePath = _setting(
        Path("~/certs"), _GRPC,
        "Folder in which the TLS key, certificate and CA files are looked up when GRPC_TLS_*_FILE are unset.",
    )
    grpc_tls_key_file: OptionalPath = _setting(
        None, _GRPC, "Server private key (PEM).", unset="<GRPC_TLS_CERT_DIR>/backend-server.key"
    )
    grpc_tls_cert_file: OptionalPath = _setting(
        None, _GRPC, "Server certificate (PEM).", unset="<GRPC_TLS_CERT_DIR>/backend-server.crt"
    )
    grpc_tls_ca_file: OptionalPath = _setting(
        None, _GRPC, "CA certificate (PEM) that client certificates must chain to under mutual TLS.",
        unset="<GRPC_TLS_CERT_DIR>/ca.crt",
    )
    grpc_tls_require_client_auth: Flag = _setting(
        True, _GRPC, "Require every client to present a certificate signed by the CA (mutual TLS)."
    )
    grpc_auth_token: Token = _setting(
        None, _GRPC,
        "Shared token a client must send in its authorization: Bearer, x-api-key or "
        "x-grpc-auth-token metadata; with no token set, no token is asked for.",
    )
    grpc_auth_tokens: Annotated[
        SecretStr | None,
        Rule("comma-separated tokens of printable ASCII without spaces, or unset", _unset_or(_token_list)),
    ] = _setting(
        None, _GRPC,
        "More accepted tokens, comma-separated, so a token can be rotated without downtime; "
        "merged with GRPC_AUTH_TOKEN.",
    )

    # Watchdog
    weightslab_disable_watchdogs: Flag = _setting(
        False, _WATCHDOG,
        "Turn off the lock-interrupt and stuck-RPC watchdogs, e.g. while paused at a debugger breakpoint.",
    )
    grpc_watchdog_stuck_seconds: Seconds = _setting(
        60.0, _WATCHDOG,
        "Seconds a lock or in-flight RPC may be held before it counts as stuck; also how long an RPC "
        "waits for the state lock before failing with RESOURCE_EXHAUSTED.",
    )
    grpc_watchdog_interval_seconds: Seconds = _setting(
        5.0, _WATCHDOG, "Seconds between two watchdog polls for stuck locks and RPCs."
    )
    grpc_watchdog_restart_threshold: Positive = _setting(
        3, _WATCHDOG, "Consecutive unhealthy watchdog polls after which the gRPC server is restarted."
    )
    grpc_watchdog_inflight_details_limit: NonNegative = _setting(
        10, _WATCHDOG, "Most in-flight RPCs listed in one watchdog log message."
    )
    grpc_watchdog_exit_on_stuck: Flag = _setting(
        False, _WATCHDOG,
        "On a stuck RPC, exit the process with status 1 for its supervisor to restart, instead of "
        "restarting the gRPC server in place.",
    )

    # Data and Cache
    weightslab_save_predictions_in_h5: Flag = _setting(
        True, _DATA,
        "Store per-sample predictions in an HDF5 file in the run folder; turn off to save disk I/O on "
        "very large datasets.",
    )
    wl_max_preview_cache_size: Positive = _setting(
        2000, _DATA, "Most thumbnails held in the in-memory preview cache; the least recently used go first."
    )
    wl_preload_image_overview: Flag = _setting(
        True, _DATA,
        "At start, encode in the background the thumbnails of the previews already at rest, so the grid's "
        "first pages are ready; off encodes only what the UI asks for. Samples arriving while training "
        "runs are encoded when the UI asks, never before.",
    )
    wl_default_thumbnail_size: Positive = _setting(
        720, _DATA,
        "Longest edge, in pixels, of a default-size thumbnail (the grid asks for 0x0); images are never upscaled."
    )
    wl_batch_chunk_size: NonNegative = _setting(
        0, _DATA,
        "Thumbnails encoded and published per chunk, for a page's misses and the preload queue; 0 does a whole "
        "batch at once."
    )
    wl_preview_cache_warmup_wait_ms: Annotated[
        int, Rule("an integer number of milliseconds (clamped to 0..1000)", _integer(0, 1000, clamp=True))
    ] = _setting(
        100, _DATA,
        "Milliseconds a preview request waits for the warming cache before encoding the thumbnail "
        "itself, to avoid decoding an image twice; clamped to 0..1000, 0 never waits.",
    )
    wl_enable_hp_sync: Flag = _setting(
        True, _DATA,
        "Send the hyperparameters to the UI at every training step; off saves IPC, and they stay "
        "readable on demand through the CLI.",
    )
    wl_instance_aggregation: Annotated[
        Aggregation, Rule("one of mean, max", _choice(*get_args(Aggregation), upper=False))
    ] = _setting(
        "mean", _DATA,
        "How per-instance (per-annotation) numeric columns fold into one value per sample: mean, or max "
        "to surface each sample's worst instance; a run's instance_aggregation hyperparameter overrides it.",
    )
    wl_max_points_per_sample: NonNegative = _setting(
        200, _DATA,
        "Most points per mean curve of the break-by-slices plot; longer curves are downsampled evenly, "
        "keeping the first and last points and inventing none; 0 returns every step.",
    )

    # Evaluation Mode
    weightslab_eval_timeout_multiplier: Annotated[
        float, Rule("a number > 0", _number(0, inclusive=False))
    ] = _setting(
        1.3, _EVALUATION,
        "Safety factor of the evaluation timeout avg_batch_seconds x batches x multiplier "
        "(1.3 gives a 30% margin).",
    )
    weightslab_eval_timeout_min_seconds: SecondsOrZero = _setting(
        5.0, _EVALUATION, "Smallest timeout, in seconds, that an evaluation pass gets."
    )
    weightslab_eval_timeout_seconds: SecondsOrZero = _setting(
        0.0, _EVALUATION,
        "Fixed evaluation timeout in seconds that replaces the computed one; 0 keeps the computed one.",
    )

    # AI / LLM API Keys
    openrouter_api_key: Annotated[
        SecretStr | None, Rule("any text, or unset", _unset_or(_text))
    ] = _setting(
        None, _API_KEYS, "OpenRouter API key, needed only by the agent when its provider is openrouter.",
    )

    # Agent Configuration
    agent_config_path: OptionalPath = _setting(
        None, _AGENT,
        "Folder whose agent_config.yaml is tried first, before the repository, package and "
        "working-directory copies.",
    )

    # Testing
    wl_test_timeout: Seconds = _setting(
        30.0, _TESTING, "Hard limit, in seconds, on each unit test of the WeightsLab test suite."
    )

    # weightslabd additions
    weightslab_runtime_dir: OptionalPath = _setting(
        None, _ADDITIONS,
        "Private folder (mode 0700) holding the control socket where shims meet the daemon; set the same "
        "value for the trainer.",
        unset="$XDG_RUNTIME_DIR/weightslabd, else /tmp/weightslabd-<uid>",
    )
    weightslab_heartbeat_timeout_seconds: Seconds = _setting(
        1.5, _ADDITIONS,
        "Seconds without a heartbeat from a trainer after which the daemon checks whether its process is "
        "gone and, if so, closes the run.",
    )
    weightslab_grpc_web_host: Host = _setting(
        "127.0.0.1", _ADDITIONS,
        "Address the built-in gRPC-Web endpoint (the Studio's browser calls, no Envoy needed) binds to; "
        "it speaks plain HTTP, so an address other than loopback is refused unless GRPC_AUTH_TOKEN or "
        "GRPC_AUTH_TOKENS is set.",
    )
    weightslab_grpc_web_port: WebPort = _setting(
        8080, _ADDITIONS,
        "Port of the built-in gRPC-Web endpoint, where the Studio looks (http://localhost:8080); 0 picks "
        "any free port (written to <runtime dir>/daemon.json), -1 turns the endpoint off.",
    )
    weightslab_grpc_web_allowed_origins: Origins = _setting(
        "http://localhost:*,http://127.0.0.1:*,http://[::1]:*", _ADDITIONS,
        "Browser origins allowed to call the gRPC-Web endpoint (CORS), comma-separated: scheme://host[:port], "
        "scheme://host:* for any port, or * for any origin; a request from any other origin is refused.",
    )
    weightslab_forward_to: NodeAddress = _setting(
        None, _ADDITIONS,
        "The home daemon (on the node of rank 0) to which this daemon forwards, over mutual TLS, the records "
        "of its ranks of a torchrun job that spans several nodes (docs/distributed.md).",
        unset="no forwarding: every job is kept here",
    )
    weightslab_forward_listen: ListenAddress = _setting(
        None, _ADDITIONS,
        "Address on which this daemon, as a job's home, accepts other nodes' forwarded records over mutual TLS; "
        "0 as the port picks any free one (written to <runtime dir>/daemon.json).",
        unset="no listener",
    )
    weightslab_forward_cert_dir: OptionalPath = _setting(
        None, _ADDITIONS,
        "Folder of the certificates nodes use between them: ca.crt, backend-server.crt/.key for the home's "
        "listener, client.crt/.key for a forwarding node (as weightslabd certs writes them).",
        unset="GRPC_TLS_CERT_DIR",
    )
    weightslab_forward_buffer_mb: Positive = _setting(
        64, _ADDITIONS,
        "Most MiB of records a forwarding node holds while the home is away; past it, records wait in the "
        "ranks' rings, and a full ring drops and counts new ones.",
    )

    _sources: dict[str, str] = PrivateAttr(default_factory=dict)
    _unknown_keys: tuple[str, ...] = PrivateAttr(default=())
    _env_file: str | None = PrivateAttr(default=None)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Only explicit values: load_settings owns the reading, so nothing leaks in from os.environ.
        return (init_settings,)

    def auth_tokens(self) -> list[str]:
        """Every accepted token: GRPC_AUTH_TOKEN then GRPC_AUTH_TOKENS, stripped, de-duplicated."""
        raw = [s.get_secret_value() for s in (self.grpc_auth_token, self.grpc_auth_tokens) if s is not None]
        items = (item.strip() for text in raw for item in text.split(","))
        return list(dict.fromkeys(item for item in items if item))

    def secret_values(self) -> list[str]:
        """Every secret value set, for the log redactor."""
        key = self.openrouter_api_key.get_secret_value() if self.openrouter_api_key else ""
        return [*self.auth_tokens(), *([key] if key else [])]

    def cli_shares_grpc_port(self) -> bool:
        """True when the CLI is served by the gRPC server instead of its own listener: CLI_PORT equal to
        GRPC_BACKEND_PORT, or CLI_PORT not set at all (so moving the gRPC port moves the CLI with it)."""
        if self.cli_port == self.grpc_backend_port:
            return True
        return "cli_port" not in self._sources and "cli_port" not in self.model_fields_set

    def runtime_dir(self, environ: Mapping[str, str] | None = None) -> Path:
        """The runtime directory, resolved exactly as the shim resolves it."""
        env = dict(os.environ if environ is None else environ)
        env["WEIGHTSLAB_RUNTIME_DIR"] = str(self.weightslab_runtime_dir or "")
        return resolve_runtime_dir(env)

    def root_log_dir(self, script_dir: Path) -> Path:
        """Where a run started from `script_dir` saves its data."""
        return self.weightslab_root_log_dir or script_dir / "root_log_dir"

    def log_dir(self, environ: Mapping[str, str] | None = None) -> Path:
        """Folder of the daemon's own weightslabd.log when WEIGHTSLAB_LOG_TO_FILE is on."""
        if self.weightslab_root_log_dir is not None:
            return self.weightslab_root_log_dir
        env = os.environ if environ is None else environ
        state = env.get("XDG_STATE_HOME", "").strip()
        return (Path(state) if state else Path("~/.local/state").expanduser()) / "weightslabd"


# --- documentation of the fields ------------------------------------------------------------------


class SettingInfo(NamedTuple):
    variable: str
    field: str
    group: str
    default: str  # as written in .env; "" when unset
    unset_means: str | None
    accepts: str
    description: str
    secret: bool


def format_value(value: Any) -> str:
    """A value as it is written in an env file (booleans as 1/0, whole floats without '.0')."""
    if value is None:
        return ""
    if isinstance(value, SecretStr):
        raise TypeError("a secret is never formatted")
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def settings_reference() -> list[SettingInfo]:
    """Every setting in declaration order, with what the docs and .env say about it."""
    infos = []
    for name, field in Settings.model_fields.items():
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        rule = next(m for m in field.metadata if isinstance(m, Rule))
        unset = extra.get("unset_means")
        infos.append(
            SettingInfo(
                variable=name.upper(),
                field=name,
                group=str(extra["group"]),
                default=format_value(field.default),
                unset_means=None if unset is None else str(unset),
                accepts=rule.accepts,
                description=field.description or "",
                secret=_is_secret(name),
            )
        )
    return infos


def _is_secret(name: str) -> bool:
    annotation = Settings.model_fields[name].annotation
    return annotation is SecretStr or SecretStr in get_args(annotation)


# --- loading --------------------------------------------------------------------------------------


def load_settings(env_file: str | Path | None, environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from `env_file` (dotenv syntax, may be None) overridden by `environ` (default:
    os.environ). An empty value counts as unset. Raises ConfigError, one line, on any invalid value."""
    environ = os.environ if environ is None else environ
    file_values = {} if env_file is None else _read_env_file(Path(env_file))
    layers = ((environ, ENVIRONMENT), (file_values, f"file {env_file}"))
    raw: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for name in Settings.model_fields:
        for layer, label in layers:
            value = (layer.get(name.upper()) or "").strip()
            if value:
                raw[name], sources[name] = value, label
                break
    try:
        settings = Settings(**raw)
    except ValidationError as exc:
        raise _first_error(exc, raw, sources) from None
    settings._sources = sources
    unknown = (key for key in file_values if key.lower() not in Settings.model_fields)
    # Ours: our prefixes, or close to one of our variables (CLI_PROT, AUDIT_LOG_FORMT): typos, most likely.
    settings._unknown_keys = tuple(key for key in unknown if key.startswith(OUR_PREFIXES) or closest_variable(key))
    settings._env_file = str(env_file) if env_file is not None else None
    return settings


def is_loopback_host(host: str) -> bool:
    """`localhost` or a literal loopback address; any other name may resolve anywhere."""
    name = host.strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name.split("%")[0]).is_loopback
    except ValueError:
        return False


def check_binds(settings: Settings) -> None:
    """Binds that would hand the daemon to the network stop the boot (ConfigError: exit 2, one line).

    - the CLI line server (CLI_PORT other than GRPC_BACKEND_PORT) speaks plain text, its `auth <token>`
      included: loopback only;
    - gRPC without TLS, or TLS without client certificates, off loopback: only with a token.
    """
    if not settings.cli_shares_grpc_port() and not is_loopback_host(settings.cli_host):
        raise ConfigError(
            f"CLI_HOST={settings.cli_host} is not loopback and the CLI line server is plain text (tokens would "
            "cross the network in clear): set CLI_HOST=127.0.0.1, or unset CLI_PORT to serve the CLI on the gRPC "
            "port with TLS", "CLI_HOST")
    host = settings.grpc_backend_host
    if is_loopback_host(host) or settings.auth_tokens():
        return
    if not settings.grpc_tls_enabled:
        raise ConfigError(
            f"GRPC_TLS_ENABLED=0 with GRPC_BACKEND_HOST={host} (not loopback) and no GRPC_AUTH_TOKEN: anyone who "
            "reaches the port could drive the run; turn TLS on, set GRPC_AUTH_TOKEN, or bind GRPC_BACKEND_HOST="
            "127.0.0.1", "GRPC_TLS_ENABLED")
    if not settings.grpc_tls_require_client_auth:
        raise ConfigError(
            f"GRPC_TLS_REQUIRE_CLIENT_AUTH=0 with GRPC_BACKEND_HOST={host} (not loopback) and no GRPC_AUTH_TOKEN: "
            "anyone who reaches the port could drive the run; require client certificates, set GRPC_AUTH_TOKEN, "
            "or bind GRPC_BACKEND_HOST=127.0.0.1", "GRPC_TLS_REQUIRE_CLIENT_AUTH")


def unknown_keys(settings: Settings) -> tuple[str, ...]:
    """Keys of the env file that look like ours but are no setting (typos, most likely)."""
    return settings._unknown_keys


def closest_variable(key: str) -> str | None:
    """The setting a mistyped variable most likely meant (GRPC_AUTH_TOKNE: GRPC_AUTH_TOKEN), or None."""
    import difflib

    names = [name.upper() for name in Settings.model_fields]
    found = difflib.get_close_matches(key.upper(), names, n=1, cutoff=0.8)
    return found[0] if found else None


def unknown_key_warnings(settings: Settings) -> list[str]:
    """One line per unknown key of the env file, naming the closest setting: `serve` and `config` show them."""
    lines = []
    for key in unknown_keys(settings):
        near = closest_variable(key)
        hint = f"; did you mean {near}?" if near else ""
        lines.append(f"warning: {key} in the env file {settings._env_file} is not a weightslabd setting "
                     f"and was ignored{hint}")
    return lines


def _read_env_file(path: Path) -> dict[str, str]:
    from dotenv.parser import parse_stream  # python-dotenv, installed with pydantic-settings

    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"env file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"env file {path} cannot be read: {exc}") from None
    values: dict[str, str] = {}
    for binding in parse_stream(io.StringIO(text)):
        if binding.error:
            # The line itself is not shown: it may hold a secret.
            raise ConfigError(f"env file {path}, line {binding.original.line}: not a VAR=value line")
        if binding.key is not None:
            values[binding.key] = binding.value or ""
    return values


def _invalid(variable: str, shown_value: str, accepts: str, source: str | None = None) -> str:
    where = f" (from {source})" if source else ""
    return f"{variable}={shown_value} is invalid: expected {accepts}{where}"


def _first_error(exc: ValidationError, raw: Mapping[str, str], sources: Mapping[str, str]) -> ConfigError:
    errors = exc.errors(include_url=False)
    error = errors[0]
    name = str(error["loc"][0]) if error["loc"] else ""
    variable = name.upper() or "settings"
    value = raw.get(name, error.get("input"))
    shown = "'****'" if name in Settings.model_fields and _is_secret(name) else _short_repr(value)
    ctx = error.get("ctx") or {}
    accepts = str(ctx["accepts"]) if "accepts" in ctx else str(error["msg"]).replace("\n", " ")
    message = _invalid(variable, shown, accepts, sources.get(name))
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more invalid)"
    return ConfigError(message, variable)


def _short_repr(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --- showing the effective configuration ----------------------------------------------------------


class SettingSource(NamedTuple):
    variable: str
    value: str  # secrets masked
    source: str  # "environment", "file <path>" or "default" ("argument" when built directly)


def describe_sources(settings: Settings) -> list[SettingSource]:
    """Every setting's effective value and where it came from; secret values never appear."""
    rows = []
    for info in settings_reference():
        value = getattr(settings, info.field)
        source = settings._sources.get(info.field)
        if source is None:
            source = "argument" if info.field in settings.model_fields_set else DEFAULT
        rows.append(SettingSource(info.variable, _display(value, info), source))
    return rows


def _display(value: Any, info: SettingInfo) -> str:
    if value is None:
        return f"(unset: {info.unset_means})" if info.unset_means else "(unset)"
    if isinstance(value, SecretStr):
        return f"**** ({len(value.get_secret_value())} chars)"
    return format_value(value)


def render_effective(settings: Settings) -> str:
    """An aligned table of describe_sources, for `weightslabd config`."""
    rows = [SettingSource("VARIABLE", "VALUE", "SOURCE"), *describe_sources(settings)]
    width_var = max(len(r.variable) for r in rows)
    width_value = max(len(r.value) for r in rows)
    lines = [f"{r.variable:<{width_var}}  {r.value:<{width_value}}  {r.source}".rstrip() for r in rows]
    lines += unknown_key_warnings(settings)
    return "\n".join(lines) + "\n"
