"""The settings: documented defaults, validation, precedence, provenance, and agreement of the class
with `.env`, `docs/configuration.md` and the user's configuration document."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from weightslabd.config import (
    GROUPS,
    ConfigError,
    Settings,
    describe_sources,
    load_settings,
    render_effective,
    settings_reference,
    unknown_keys,
)
from weightslabd.security.tls import TlsError, settings_tls

REPO = Path(__file__).resolve().parents[2]
SPEC = Path(__file__).resolve().parents[3] / "shared" / "CONFIGURATION-SPEC.rst"
DOTENV_LINE = re.compile(r"^#? *(export +)?([A-Z][A-Z0-9_]*)=(.*)$")

# The defaults of the configuration document, written out by hand (None: unset by default).
DOCUMENTED_DEFAULTS: dict[str, Any] = {
    "WEIGHTSLAB_LOG_LEVEL": "INFO",
    "WEIGHTSLAB_LOG_TO_FILE": False,
    "WEIGHTSLAB_ROOT_LOG_DIR": None,
    "AUDIT_LOG_FORMAT": "json",
    "CLI_HOST": "0.0.0.0",
    "CLI_PORT": 50051,
    "GRPC_BACKEND_HOST": "0.0.0.0",
    "GRPC_BACKEND_PORT": 50051,
    "GRPC_MAX_MESSAGE_BYTES": 268435456,
    "GRPC_MAX_CONCURRENT_RPCS": None,
    "GRPC_VERBOSITY": None,
    "GRPC_TLS_ENABLED": True,
    "GRPC_TLS_CERT_DIR": Path("~/certs").expanduser(),
    "GRPC_TLS_KEY_FILE": None,
    "GRPC_TLS_CERT_FILE": None,
    "GRPC_TLS_CA_FILE": None,
    "GRPC_TLS_REQUIRE_CLIENT_AUTH": True,
    "GRPC_AUTH_TOKEN": None,
    "GRPC_AUTH_TOKENS": None,
    "WEIGHTSLAB_DISABLE_WATCHDOGS": False,
    "GRPC_WATCHDOG_STUCK_SECONDS": 60,
    "GRPC_WATCHDOG_INTERVAL_SECONDS": 5,
    "GRPC_WATCHDOG_RESTART_THRESHOLD": 3,
    "GRPC_WATCHDOG_INFLIGHT_DETAILS_LIMIT": 10,
    "GRPC_WATCHDOG_EXIT_ON_STUCK": False,
    "WEIGHTSLAB_SAVE_PREDICTIONS_IN_H5": True,
    "WL_MAX_PREVIEW_CACHE_SIZE": 2000,
    "WL_PRELOAD_IMAGE_OVERVIEW": True,
    "WL_DEFAULT_THUMBNAIL_SIZE": 720,
    "WL_BATCH_CHUNK_SIZE": 0,
    "WL_PREVIEW_CACHE_WARMUP_WAIT_MS": 100,
    "WL_ENABLE_HP_SYNC": True,
    "WL_INSTANCE_AGGREGATION": "mean",
    "WL_MAX_POINTS_PER_SAMPLE": 200,
    "WEIGHTSLAB_EVAL_TIMEOUT_MULTIPLIER": 1.3,
    "WEIGHTSLAB_EVAL_TIMEOUT_MIN_SECONDS": 5,
    "WEIGHTSLAB_EVAL_TIMEOUT_SECONDS": 0,
    "OPENROUTER_API_KEY": None,
    "AGENT_CONFIG_PATH": None,
    "WL_TEST_TIMEOUT": 30,
    # weightslabd additions
    "WEIGHTSLAB_RUNTIME_DIR": None,
    "WEIGHTSLAB_HEARTBEAT_TIMEOUT_SECONDS": 1.5,
    "WEIGHTSLAB_GRPC_WEB_HOST": "127.0.0.1",
    "WEIGHTSLAB_GRPC_WEB_PORT": 8080,
    "WEIGHTSLAB_GRPC_WEB_ALLOWED_ORIGINS": "http://localhost:*,http://127.0.0.1:*,http://[::1]:*",
    "WEIGHTSLAB_FORWARD_TO": None,
    "WEIGHTSLAB_FORWARD_LISTEN": None,
    "WEIGHTSLAB_FORWARD_CERT_DIR": None,
    "WEIGHTSLAB_FORWARD_BUFFER_MB": 64,
}
SECRETS = {"GRPC_AUTH_TOKEN", "GRPC_AUTH_TOKENS", "OPENROUTER_API_KEY"}


def env_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "weightslabd.env"
    path.write_text(text)
    return path


def rejected(environ: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as caught:
        load_settings(None, environ)
    message = str(caught.value)
    assert "\n" not in message
    return message


# --- defaults -------------------------------------------------------------------------------------


def test_the_fields_are_exactly_the_documented_variables() -> None:
    assert [name.upper() for name in Settings.model_fields] == list(DOCUMENTED_DEFAULTS)


@pytest.mark.parametrize(("variable", "expected"), DOCUMENTED_DEFAULTS.items())
def test_every_default_is_the_documented_one(variable: str, expected: Any) -> None:
    assert getattr(Settings(), variable.lower()) == expected
    assert getattr(load_settings(None, {}), variable.lower()) == expected


def test_documented_tls_file_defaults_lie_in_the_cert_dir() -> None:
    tls = settings_tls(Settings())
    certs = Path("~/certs").expanduser()
    assert (tls.key_file.path, tls.cert_file.path, tls.ca_file.path) == (
        certs / "backend-server.key",
        certs / "backend-server.crt",
        certs / "ca.crt",
    )
    assert tls.enabled and tls.require_client_auth


def test_settings_alone_reads_no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRPC_BACKEND_PORT", "50099")
    assert Settings().grpc_backend_port == 50051
    assert load_settings(None).grpc_backend_port == 50099


# --- accepted values ------------------------------------------------------------------------------

BAD_VALUES = [
    ("WEIGHTSLAB_LOG_LEVEL", "verbose", "DEBUG, INFO, WARNING, ERROR, WATCHDOG"),
    ("WEIGHTSLAB_LOG_TO_FILE", "maybe", "1/true/yes/on or 0/false/no/off"),
    ("AUDIT_LOG_FORMAT", "xml", "json, csv, none"),
    ("CLI_HOST", "local host", "host name or IP address"),
    ("CLI_PORT", "-1", "an integer port 0..65535"),
    ("GRPC_BACKEND_PORT", "70000", "an integer port 0..65535"),
    ("GRPC_BACKEND_PORT", "http", "an integer port 0..65535"),
    ("GRPC_MAX_MESSAGE_BYTES", "2147483648", "1..2147483647"),
    ("GRPC_MAX_CONCURRENT_RPCS", "0", "an integer >= 1"),
    ("GRPC_VERBOSITY", "TRACE", "DEBUG, INFO, ERROR"),
    ("GRPC_TLS_ENABLED", "2", "1/true/yes/on or 0/false/no/off"),
    ("GRPC_TLS_REQUIRE_CLIENT_AUTH", "sometimes", "1/true/yes/on or 0/false/no/off"),
    ("WEIGHTSLAB_DISABLE_WATCHDOGS", "y", "1/true/yes/on or 0/false/no/off"),
    ("GRPC_WATCHDOG_STUCK_SECONDS", "0", "> 0"),
    ("GRPC_WATCHDOG_INTERVAL_SECONDS", "-1", "> 0"),
    ("GRPC_WATCHDOG_INTERVAL_SECONDS", "nan", "> 0"),
    ("GRPC_WATCHDOG_RESTART_THRESHOLD", "0", "an integer >= 1"),
    ("GRPC_WATCHDOG_INFLIGHT_DETAILS_LIMIT", "-1", "an integer >= 0"),
    ("GRPC_WATCHDOG_INFLIGHT_DETAILS_LIMIT", "2.5", "an integer >= 0"),
    ("GRPC_WATCHDOG_EXIT_ON_STUCK", "enable", "1/true/yes/on or 0/false/no/off"),
    ("WEIGHTSLAB_SAVE_PREDICTIONS_IN_H5", "h5", "1/true/yes/on or 0/false/no/off"),
    ("WL_MAX_PREVIEW_CACHE_SIZE", "0", "an integer >= 1"),
    ("WL_PRELOAD_IMAGE_OVERVIEW", "lazy", "1/true/yes/on or 0/false/no/off"),
    ("WL_DEFAULT_THUMBNAIL_SIZE", "-720", "an integer >= 1"),
    ("WL_BATCH_CHUNK_SIZE", "-1", "an integer >= 0"),
    ("WL_PREVIEW_CACHE_WARMUP_WAIT_MS", "soon", "milliseconds"),
    ("WL_ENABLE_HP_SYNC", "always", "1/true/yes/on or 0/false/no/off"),
    ("WL_INSTANCE_AGGREGATION", "median", "mean, max"),
    ("WL_MAX_POINTS_PER_SAMPLE", "-5", "an integer >= 0"),
    ("WEIGHTSLAB_EVAL_TIMEOUT_MULTIPLIER", "0", "a number > 0"),
    ("WEIGHTSLAB_EVAL_TIMEOUT_MIN_SECONDS", "-1", ">= 0"),
    ("WEIGHTSLAB_EVAL_TIMEOUT_SECONDS", "inf", ">= 0"),
    ("WL_TEST_TIMEOUT", "0", "> 0"),
    ("WEIGHTSLAB_HEARTBEAT_TIMEOUT_SECONDS", "-0.5", "> 0"),
    ("WEIGHTSLAB_GRPC_WEB_HOST", "local host", "host name or IP address"),
    ("WEIGHTSLAB_GRPC_WEB_PORT", "-2", "or -1 (off)"),
    ("WEIGHTSLAB_GRPC_WEB_ALLOWED_ORIGINS", "localhost:5173", "scheme://host[:port]"),
    ("WEIGHTSLAB_FORWARD_TO", "nodeA", "host:port (port 1..65535)"),
    ("WEIGHTSLAB_FORWARD_TO", "nodeA:0", "host:port (port 1..65535)"),
    ("WEIGHTSLAB_FORWARD_LISTEN", "0.0.0.0:70000", "host:port (port 0..65535"),
    ("WEIGHTSLAB_FORWARD_BUFFER_MB", "0", "an integer >= 1"),
]


@pytest.mark.parametrize(("variable", "value", "accepts"), BAD_VALUES)
def test_a_bad_value_is_one_line_naming_variable_value_and_what_is_accepted(
    variable: str, value: str, accepts: str
) -> None:
    message = rejected({variable: value})
    assert message.startswith(f"{variable}={value!r} is invalid: expected ")
    assert accepts in message
    assert message.endswith("(from environment)")


def test_every_rule_has_a_rejection_test() -> None:
    checked = {variable for variable, _, _ in BAD_VALUES}
    free_text = {"GRPC_TLS_CERT_DIR", "GRPC_TLS_KEY_FILE", "GRPC_TLS_CERT_FILE", "GRPC_TLS_CA_FILE",
                 "WEIGHTSLAB_ROOT_LOG_DIR", "AGENT_CONFIG_PATH", "WEIGHTSLAB_RUNTIME_DIR",
                 "OPENROUTER_API_KEY", "GRPC_AUTH_TOKEN", "GRPC_AUTH_TOKENS", "GRPC_BACKEND_HOST",
                 "WEIGHTSLAB_FORWARD_CERT_DIR"}
    assert checked | free_text == set(DOCUMENTED_DEFAULTS)


def test_the_message_says_where_the_bad_value_came_from(tmp_path: Path) -> None:
    path = env_file(tmp_path, "WL_BATCH_CHUNK_SIZE=-3\n")
    with pytest.raises(ConfigError, match=rf"^WL_BATCH_CHUNK_SIZE='-3' is invalid: .*\(from file {path}\)$"):
        load_settings(path, {})


def test_a_second_bad_value_is_counted_on_the_same_line() -> None:
    message = rejected({"CLI_PORT": "x", "GRPC_BACKEND_PORT": "y"})
    assert message.startswith("CLI_PORT='x'") and message.endswith("(and 1 more invalid)")


@pytest.mark.parametrize(
    ("variable", "secret"),
    [("GRPC_AUTH_TOKEN", "hunter2 with spaces"), ("GRPC_AUTH_TOKENS", "good,bad token"),
     ("GRPC_AUTH_TOKEN", "tök")],
)
def test_an_invalid_secret_is_named_but_never_shown(variable: str, secret: str) -> None:
    message = rejected({variable: secret})
    assert message.startswith(f"{variable}='****' is invalid: expected ")
    assert secret not in message
    assert "bad token" not in message and "hunter2" not in message


@pytest.mark.parametrize("text", ["1", "true", "TRUE", "Yes", "on", " On "])
def test_flags_accept_the_documented_true_words(text: str) -> None:
    assert load_settings(None, {"WEIGHTSLAB_DISABLE_WATCHDOGS": text}).weightslab_disable_watchdogs is True


@pytest.mark.parametrize("text", ["0", "false", "False", "NO", "off"])
def test_flags_accept_the_documented_false_words(text: str) -> None:
    assert load_settings(None, {"GRPC_TLS_ENABLED": text}).grpc_tls_enabled is False


def test_choices_are_case_insensitive_and_stored_canonically() -> None:
    settings = load_settings(
        None,
        {"WEIGHTSLAB_LOG_LEVEL": "watchdog", "AUDIT_LOG_FORMAT": "CSV", "WL_INSTANCE_AGGREGATION": "Max",
         "GRPC_VERBOSITY": "debug"},
    )
    assert settings.weightslab_log_level == "WATCHDOG"
    assert settings.audit_log_format == "csv"
    assert settings.wl_instance_aggregation == "max"
    assert settings.grpc_verbosity == "DEBUG"


@pytest.mark.parametrize(
    ("text", "expected"), [("-5", 0), ("0", 0), ("250", 250), ("1000", 1000), ("5000", 1000)]
)
def test_warmup_wait_is_clamped_not_rejected(text: str, expected: int) -> None:
    settings = load_settings(None, {"WL_PREVIEW_CACHE_WARMUP_WAIT_MS": text})
    assert settings.wl_preview_cache_warmup_wait_ms == expected


def test_numbers_and_paths_are_parsed() -> None:
    settings = load_settings(
        None,
        {"GRPC_WATCHDOG_STUCK_SECONDS": "0.5", "GRPC_MAX_CONCURRENT_RPCS": "32", "GRPC_TLS_CERT_DIR": "~/tls",
         "WEIGHTSLAB_ROOT_LOG_DIR": "/data/runs"},
    )
    assert settings.grpc_watchdog_stuck_seconds == 0.5
    assert settings.grpc_max_concurrent_rpcs == 32
    assert settings.grpc_tls_cert_dir == Path("~/tls").expanduser()
    assert settings.weightslab_root_log_dir == Path("/data/runs")


# --- sources and precedence -----------------------------------------------------------------------


def test_environment_overrides_file_which_overrides_default(tmp_path: Path) -> None:
    path = env_file(tmp_path, "GRPC_BACKEND_PORT=50061\nCLI_PORT=50062\n")
    settings = load_settings(path, {"GRPC_BACKEND_PORT": "50071"})
    assert settings.grpc_backend_port == 50071
    assert settings.cli_port == 50062
    assert settings.grpc_backend_host == "0.0.0.0"


def test_dotenv_syntax_commented_lines_and_empty_values(tmp_path: Path) -> None:
    path = env_file(
        tmp_path,
        "# a comment\n"
        "# WL_BATCH_CHUNK_SIZE=64\n"
        "export WL_MAX_POINTS_PER_SAMPLE=50\n"
        'AUDIT_LOG_FORMAT="csv"  # inline comment\n'
        "GRPC_BACKEND_PORT=\n"
        "CLI_PORT=50099\n",
    )
    settings = load_settings(path, {"CLI_PORT": ""})
    assert settings.wl_batch_chunk_size == 0
    assert settings.wl_max_points_per_sample == 50
    assert settings.audit_log_format == "csv"
    assert settings.grpc_backend_port == 50051  # empty in the file: unset
    assert settings.cli_port == 50099  # empty in the environment: the file applies


def test_a_missing_env_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "absent.env", {})


def test_a_malformed_line_is_an_error_that_does_not_show_the_line(tmp_path: Path) -> None:
    path = env_file(tmp_path, 'CLI_PORT=50052\nGRPC_AUTH_TOKEN="s3cret-unterminated\n')
    with pytest.raises(ConfigError) as caught:
        load_settings(path, {})
    assert "line 2" in str(caught.value) and "s3cret" not in str(caught.value)


def test_unknown_keys_in_the_file_are_not_fatal_and_ours_are_reported(tmp_path: Path) -> None:
    path = env_file(tmp_path, "WL_MAX_PREVIEW_CACHE=10\nGRPC_TRACE=all\nVITE_PORT=5173\nCLI_PORT=50052\n")
    settings = load_settings(path, {})
    assert settings.cli_port == 50052
    assert unknown_keys(settings) == ("WL_MAX_PREVIEW_CACHE", "GRPC_TRACE")
    assert "WL_MAX_PREVIEW_CACHE" in render_effective(settings)


def test_describe_sources_says_where_each_value_came_from(tmp_path: Path) -> None:
    path = env_file(tmp_path, "CLI_PORT=50052\nGRPC_BACKEND_PORT=50053\n")
    settings = load_settings(path, {"GRPC_BACKEND_PORT": "50054", "XDG_RUNTIME_DIR": "/run/user/1"})
    rows = {row.variable: row for row in describe_sources(settings)}
    assert list(rows) == list(DOCUMENTED_DEFAULTS)
    assert (rows["GRPC_BACKEND_PORT"].value, rows["GRPC_BACKEND_PORT"].source) == ("50054", "environment")
    assert (rows["CLI_PORT"].value, rows["CLI_PORT"].source) == ("50052", f"file {path}")
    assert (rows["CLI_HOST"].value, rows["CLI_HOST"].source) == ("0.0.0.0", "default")
    assert rows["GRPC_TLS_ENABLED"].value == "1"
    assert rows["GRPC_TLS_KEY_FILE"].value == "(unset: <GRPC_TLS_CERT_DIR>/backend-server.key)"


def test_secrets_are_masked_everywhere_they_could_show(tmp_path: Path) -> None:
    secrets = {"GRPC_AUTH_TOKEN": "tok-alpha-123", "GRPC_AUTH_TOKENS": "tok-beta-456,tok-gamma-789",
               "OPENROUTER_API_KEY": "sk-or-v1-abcdef"}
    path = env_file(tmp_path, "OPENROUTER_API_KEY=sk-or-v1-abcdef\n")
    settings = load_settings(path, {k: v for k, v in secrets.items() if k != "OPENROUTER_API_KEY"})
    rows = {row.variable: row for row in describe_sources(settings)}
    assert rows["GRPC_AUTH_TOKEN"].value == f"**** ({len('tok-alpha-123')} chars)"
    assert rows["OPENROUTER_API_KEY"].source == f"file {path}"
    shown = "\n".join([render_effective(settings), repr(settings), str(describe_sources(settings))])
    for value in ["tok-alpha-123", "tok-beta-456", "tok-gamma-789", "sk-or-v1-abcdef"]:
        assert value not in shown
    assert {info.variable for info in settings_reference() if info.secret} == SECRETS


def test_render_effective_is_an_aligned_table() -> None:
    lines = render_effective(load_settings(None, {"CLI_PORT": "50052"})).splitlines()
    assert lines[0].split() == ["VARIABLE", "VALUE", "SOURCE"]
    value_column = lines[0].index("VALUE")
    source_column = lines[0].index("SOURCE")
    for line in lines[1:]:
        assert line[value_column - 2 : value_column] == "  " and line[value_column] != " "
        assert line[source_column - 2 : source_column] == "  "
    assert any(line.startswith("CLI_PORT ") and line.endswith("environment") for line in lines)


# --- the methods ----------------------------------------------------------------------------------


def test_auth_tokens_merge_strip_and_deduplicate() -> None:
    settings = load_settings(None, {"GRPC_AUTH_TOKEN": " a1 ", "GRPC_AUTH_TOKENS": "b2, a1,,c3 ,b2"})
    assert settings.auth_tokens() == ["a1", "b2", "c3"]
    assert Settings().auth_tokens() == []
    assert Settings(grpc_auth_tokens=SecretStr("x9")).auth_tokens() == ["x9"]


def test_cli_shares_the_grpc_port_by_default_only() -> None:
    assert Settings().cli_shares_grpc_port()
    assert not load_settings(None, {"CLI_PORT": "50052"}).cli_shares_grpc_port()
    assert load_settings(None, {"CLI_PORT": "50060", "GRPC_BACKEND_PORT": "50060"}).cli_shares_grpc_port()
    assert load_settings(None, {"GRPC_BACKEND_PORT": "6000"}).cli_shares_grpc_port()  # unset CLI_PORT follows


def test_runtime_dir_resolves_as_the_shim_does(tmp_path: Path) -> None:
    assert Settings().runtime_dir({"XDG_RUNTIME_DIR": "/run/user/7"}) == Path("/run/user/7/weightslabd")
    assert Settings().runtime_dir({}).name.startswith("weightslabd-")
    explicit = load_settings(None, {"WEIGHTSLAB_RUNTIME_DIR": str(tmp_path)})
    assert explicit.runtime_dir({"XDG_RUNTIME_DIR": "/run/user/7"}) == tmp_path


def test_root_log_dir_defaults_next_to_the_training_script(tmp_path: Path) -> None:
    assert Settings().root_log_dir(tmp_path) == tmp_path / "root_log_dir"
    assert load_settings(None, {"WEIGHTSLAB_ROOT_LOG_DIR": "/data"}).root_log_dir(tmp_path) == Path("/data")


def test_tls_run_config_comes_first_then_environment(tmp_path: Path) -> None:
    environ = {"GRPC_TLS_ENABLED": "1", "GRPC_TLS_KEY_FILE": "/env/key.pem", "GRPC_TLS_CERT_DIR": "/env/crt"}
    settings = load_settings(None, environ)
    tls = settings_tls(settings, {"grpc_tls_enabled": False, "grpc_tls_cert_file": "/run/cert.pem",
                        "grpc_tls_cert_dir": "/run/certs"})
    assert tls.enabled is False
    assert tls.key_file.path == Path("/env/key.pem")  # no run value: the environment's file
    assert tls.cert_file.path == Path("/run/cert.pem")  # run value first
    assert tls.ca_file.path == Path("/run/certs/ca.crt")  # run cert dir before GRPC_TLS_CERT_DIR
    assert settings_tls(settings).ca_file.path == Path("/env/crt/ca.crt")
    with pytest.raises(TlsError, match=r"^grpc_tls_require_client_auth='perhaps' \(run config\)"):
        settings_tls(settings, {"grpc_tls_require_client_auth": "perhaps"})


# --- agreement of the class with .env, the docs and the configuration document ---------------------


def dotenv_entries() -> dict[str, str]:
    entries = {}
    for line in (REPO / ".env").read_text().splitlines():
        match = DOTENV_LINE.match(line)
        if match:
            entries[match.group(2)] = match.group(3)
    return entries


def test_dotenv_lists_every_field_with_its_default() -> None:
    entries = dotenv_entries()
    assert sorted(entries) == sorted(name.upper() for name in Settings.model_fields)
    defaults = Settings()
    for variable, text in entries.items():
        field = variable.lower()
        written = None if text == "" else getattr(Settings(**{field: text}), field)
        assert written == getattr(defaults, field), variable


def test_dotenv_has_a_comment_above_every_variable_and_unset_ones_commented_out() -> None:
    lines = (REPO / ".env").read_text().splitlines()
    for number, line in enumerate(lines):
        match = DOTENV_LINE.match(line)
        if not match:
            continue
        info = next(i for i in settings_reference() if i.variable == match.group(2))
        assert lines[number - 1].startswith(f"# {info.description}"), info.variable
        assert line.startswith("#") == (info.default == ""), info.variable


def test_dotenv_file_loads_to_the_defaults() -> None:
    assert load_settings(REPO / ".env", {}).model_dump() == Settings().model_dump()


def test_docs_list_every_field_with_default_accepted_values_and_description() -> None:
    docs = (REPO / "docs" / "configuration.md").read_text()
    for info in settings_reference():
        rows = [line for line in docs.splitlines() if line.startswith(f"| `{info.variable}` |")]
        assert len(rows) == 1, info.variable
        cells = [cell.strip() for cell in rows[0].strip("|").split("|")]
        default = cells[1]
        if info.default:
            assert default == f"`{info.default}`", info.variable
        else:
            assert default.startswith("*unset*"), info.variable
        plain = rows[0].replace("`", "")
        assert info.description in plain, info.variable
    for group in GROUPS:
        assert f"### {group}\n" in docs
    for topic in ["weightslabd config --env FILE", "exit status 2", "run configuration", "CLI_PORT"]:
        assert topic in docs


def test_the_documented_error_example_is_what_weightslabd_prints() -> None:
    docs = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")
    printed = "weightslabd: " + rejected({"GRPC_BACKEND_PORT": "70000"})  # cli.main's prefix
    assert f"\n{printed}\n" in docs


def spec_backend_rows() -> list[tuple[str, str]]:
    """(variable, default cell) of every table row in the spec's backend part."""
    text = SPEC.read_text(encoding="utf-8")
    backend = text.split("WeightsLab (Python backend)", 1)[1].split("Weights Studio (frontend)", 1)[0]
    return re.findall(r"^\s*\* - ``([A-Z][A-Z0-9_]*)``\s*\n\s*- (.+)$", backend, flags=re.MULTILINE)


@pytest.mark.skipif(not SPEC.is_file(), reason=f"the configuration document is not at {SPEC}")
def test_every_backend_variable_of_the_spec_is_a_field_with_its_default() -> None:
    rows = spec_backend_rows()
    assert len(rows) >= 40
    assert {variable for variable, _ in rows} <= {name.upper() for name in Settings.model_fields}
    defaults = Settings()
    resolved = settings_tls(defaults)
    tls = {"GRPC_TLS_KEY_FILE": resolved.key_file.path, "GRPC_TLS_CERT_FILE": resolved.cert_file.path,
           "GRPC_TLS_CA_FILE": resolved.ca_file.path}
    for variable, cell in rows:
        literal = re.fullmatch(r"``(.+)``", cell.strip())
        field = variable.lower()
        if literal is None:  # *(unset)*, *(empty)*, *(thread-pool size)*, ...
            assert getattr(defaults, field) is None, variable
        elif variable in tls:
            assert tls[variable] == Path(literal.group(1)).expanduser(), variable
        else:
            assert getattr(Settings(**{field: literal.group(1)}), field) == getattr(defaults, field), variable
