"""Logging: the WATCHDOG level, console and JSON output, the rotating file, secret redaction, and
reopening the file after logrotate moved it away."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from weightslabd.ops.logs import (
    LOG_FILE_NAME,
    WATCHDOG,
    configure_logging,
    get_logger,
    level_number,
    log_watchdog,
    reopen_log_files,
    reset_logging,
)

TOKEN = "tok-7f3a9c21"
API_KEY = 'sk-or-"quoted"\\key'  # a quote and a backslash: escaped differently by JSON and repr


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def clean_logging() -> Iterator[None]:
    root_level = logging.getLogger().level
    yield
    reset_logging()
    logging.getLogger().setLevel(root_level)


def json_lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line]


def test_watchdog_is_level_35_between_warning_and_error() -> None:
    assert WATCHDOG == 35
    assert logging.WARNING < WATCHDOG < logging.ERROR
    assert logging.getLevelName(WATCHDOG) == "WATCHDOG"
    assert level_number("watchdog") == level_number("WATCHDOG") == 35
    with pytest.raises(ValueError):
        level_number("verbose")


def test_json_lines_when_the_stream_is_not_a_tty() -> None:
    stream = io.StringIO()
    configure_logging("INFO", log_to_file=False, log_dir=None, stream=stream)
    get_logger("weightslabd.test").info("run attached", run="mnist", step=12)
    [line] = json_lines(stream.getvalue())
    assert line["event"] == "run attached"
    assert (line["run"], line["step"], line["level"]) == ("mnist", 12, "INFO")
    assert line["logger"] == "weightslabd.test"
    assert "timestamp" in line


def test_readable_lines_on_a_terminal() -> None:
    stream = Terminal()
    configure_logging("INFO", log_to_file=False, log_dir=None, stream=stream)
    get_logger("weightslabd.test").info("run attached", run="mnist")
    text = stream.getvalue()
    assert "run attached" in text and "mnist" in text
    with pytest.raises(json.JSONDecodeError):
        json.loads(text.splitlines()[0])


def test_watchdog_events_render_as_watchdog_and_pass_a_watchdog_level() -> None:
    stream = io.StringIO()
    configure_logging("watchdog", log_to_file=False, log_dir=None, stream=stream)
    log = get_logger("weightslabd.ops.watchdog")
    log.warning("slow poll")
    log.watchdog("rpc stuck", method="GetSamples")
    log.log(WATCHDOG, "restarting server")
    log_watchdog(logging.getLogger("weightslabd.plain"), "lock interrupted", holder="ingest")
    log.error("restart failed")
    lines = json_lines(stream.getvalue())
    assert [(line["event"], line["level"]) for line in lines] == [
        ("rpc stuck", "WATCHDOG"),
        ("restarting server", "WATCHDOG"),
        ("lock interrupted", "WATCHDOG"),
        ("restart failed", "ERROR"),
    ]
    assert lines[0]["method"] == "GetSamples" and lines[2]["holder"] == "ingest"


def test_watchdog_on_a_terminal_names_the_level() -> None:
    stream = Terminal()
    configure_logging("INFO", log_to_file=False, log_dir=None, stream=stream)
    get_logger().watchdog("rpc stuck")
    assert "WATCHDOG" in stream.getvalue()


def test_plain_stdlib_loggers_go_through_the_same_pipeline() -> None:
    stream = io.StringIO()
    configure_logging("INFO", log_to_file=False, log_dir=None, stream=stream)
    logging.getLogger("grpc._server").warning("port %d busy", 50051)
    logging.getLogger("grpc._server").debug("hidden")
    [line] = json_lines(stream.getvalue())
    assert (line["event"], line["level"], line["logger"]) == ("port 50051 busy", "WARNING", "grpc._server")


def test_the_file_is_written_under_log_dir_when_enabled(tmp_path: Path) -> None:
    log_dir = tmp_path / "logs"
    configure_logging("INFO", log_to_file=True, log_dir=log_dir, stream=io.StringIO())
    get_logger().info("to the file", n=1)
    [line] = json_lines((log_dir / LOG_FILE_NAME).read_text())
    assert (line["event"], line["n"]) == ("to the file", 1)


def test_no_file_when_disabled(tmp_path: Path) -> None:
    configure_logging("INFO", log_to_file=False, log_dir=tmp_path / "logs", stream=io.StringIO())
    get_logger().info("console only")
    assert not (tmp_path / "logs").exists()


def test_a_file_needs_a_directory() -> None:
    with pytest.raises(ValueError):
        configure_logging("INFO", log_to_file=True, log_dir=None, stream=io.StringIO())


def test_the_file_is_json_even_when_the_console_is_a_terminal(tmp_path: Path) -> None:
    configure_logging("INFO", log_to_file=True, log_dir=tmp_path, stream=Terminal())
    get_logger().info("both")
    assert json_lines((tmp_path / LOG_FILE_NAME).read_text())[0]["event"] == "both"


@pytest.mark.parametrize("stream_type", [io.StringIO, Terminal])
def test_secrets_never_appear_in_any_output(tmp_path: Path, stream_type: type[io.StringIO]) -> None:
    stream = stream_type()
    secrets = [TOKEN, API_KEY, ""]
    configure_logging("DEBUG", log_to_file=True, log_dir=tmp_path, stream=stream, secrets=secrets)
    log = get_logger("weightslabd.security.auth")
    log.info(f"client sent {TOKEN}")
    log.info("metadata", header=f"Bearer {TOKEN}", nested={"keys": [API_KEY, ("x", TOKEN)]}, raw=API_KEY)
    log.watchdog("stuck", args=(TOKEN,))
    logging.getLogger("grpc").warning("foreign %s %r", TOKEN, API_KEY)
    try:
        raise PermissionError(f"bad token {TOKEN} / key {API_KEY}")
    except PermissionError:
        log.exception("auth failed")
    outputs = [stream.getvalue(), (tmp_path / LOG_FILE_NAME).read_text()]
    for output in outputs:
        assert "****" in output
        assert "PermissionError" in output and "auth failed" in output
        for secret in (TOKEN, API_KEY, json.dumps(API_KEY)[1:-1], repr(API_KEY)[1:-1], "quoted"):
            assert secret not in output


def test_configuring_again_replaces_the_previous_setup(tmp_path: Path) -> None:
    first, second = io.StringIO(), io.StringIO()
    configure_logging("INFO", log_to_file=True, log_dir=tmp_path / "a", stream=first)
    get_logger().info("one")
    configure_logging("WARNING", log_to_file=False, log_dir=None, stream=second, secrets=[TOKEN])
    log = get_logger()
    log.info("hidden now")
    log.warning("two", token=TOKEN)
    assert [line["event"] for line in json_lines(first.getvalue())] == ["one"]
    [line] = json_lines(second.getvalue())
    assert (line["event"], line["token"]) == ("two", "****")
    assert [entry["event"] for entry in json_lines((tmp_path / "a" / LOG_FILE_NAME).read_text())] == ["one"]


def test_a_logger_made_before_configuration_follows_it() -> None:
    early = get_logger("weightslabd.early")
    stream = io.StringIO()
    configure_logging("INFO", log_to_file=False, log_dir=None, stream=stream)
    early.info("late config")
    assert json_lines(stream.getvalue())[0]["event"] == "late config"


def test_reopen_after_logrotate_moved_the_file(tmp_path: Path) -> None:
    configure_logging("INFO", log_to_file=True, log_dir=tmp_path, stream=io.StringIO())
    log = get_logger()
    log.info("before rotation")
    live = tmp_path / LOG_FILE_NAME
    rotated = tmp_path / f"{LOG_FILE_NAME}.1"
    live.rename(rotated)
    log.info("still into the moved file")
    reopen_log_files()
    log.info("after reopen")
    moved = [line["event"] for line in json_lines(rotated.read_text())]
    assert moved == ["before rotation", "still into the moved file"]
    assert [line["event"] for line in json_lines(live.read_text())] == ["after reopen"]


def test_reopen_without_a_file_does_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    stream = io.StringIO()
    configure_logging("INFO", log_to_file=False, log_dir=None, stream=stream)
    reopen_log_files()  # SIGHUP with no log file: no error, and no file appears anywhere
    get_logger("weightslabd.test").info("still logging")
    assert list(tmp_path.iterdir()) == []
    assert "still logging" in stream.getvalue() and "Traceback" not in stream.getvalue()


def test_the_log_folder_is_0700_and_the_file_0600_also_after_a_rotation(tmp_path: Path) -> None:
    import os
    import stat

    from weightslabd.ops import logs

    def mode(path: Path) -> int:
        return stat.S_IMODE(os.stat(path).st_mode)

    log_dir = tmp_path / "state" / "weightslabd"
    old = os.umask(0o022)
    try:
        configure_logging("INFO", log_to_file=True, log_dir=log_dir, stream=io.StringIO())
        get_logger().info("private")
        assert (mode(tmp_path / "state"), mode(log_dir), mode(log_dir / LOG_FILE_NAME)) == (0o700, 0o700, 0o600)
        [handler] = [h for h in logs._installed if isinstance(h, logging.FileHandler)]
        handler.doRollover()  # type: ignore[attr-defined]
        get_logger().info("after the rotation")
        reopen_log_files()
    finally:
        os.umask(old)
    assert mode(log_dir / LOG_FILE_NAME) == 0o600 and mode(log_dir / f"{LOG_FILE_NAME}.1") == 0o600
