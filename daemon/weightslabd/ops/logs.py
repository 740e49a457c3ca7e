"""Logging for weightslabd: structlog over the stdlib `logging` module, one processor pipeline.

Console: readable lines on a terminal, JSON lines otherwise. Optionally a rotating JSON file.
Every line, from structlog or from a plain stdlib logger (grpc, ...), passes the secret redactor.
"""

from __future__ import annotations

import io
import json
import logging
import logging.handlers
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any, cast

import structlog
from structlog.types import EventDict, Processor, WrappedLogger

from weightslabd.store.private import make_private_dirs, open_private

WATCHDOG = 35  # between WARNING and ERROR: watchdog and restart events
logging.addLevelName(WATCHDOG, "WATCHDOG")

LOG_FILE_NAME = "weightslabd.log"
LOG_FILE_MAX_BYTES = 10 * 1024 * 1024
LOG_FILE_BACKUPS = 5
MASK = "****"

_METHOD_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "watchdog": WATCHDOG,
    "error": logging.ERROR,
    "exception": logging.ERROR,
    "critical": logging.CRITICAL,
}

# The handlers this module installed on the root logger, so a reconfigure removes exactly those.
_installed: list[logging.Handler] = []


def level_number(level: str) -> int:
    """`"info"`, `"WATCHDOG"`, ... as a stdlib level number; ValueError for anything else."""
    number = _METHOD_LEVELS.get(level.strip().lower())
    if number is None:
        raise ValueError(f"unknown log level {level!r}")
    return number


# --- processors: each does one job ----------------------------------------------------------------


def drop_disabled(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """Stop an event below the logger's level before any other work is done on it."""
    if isinstance(logger, logging.Logger) and not logger.isEnabledFor(_METHOD_LEVELS.get(method_name, 0)):
        raise structlog.DropEvent
    return event_dict


def add_level(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """`level` is the stdlib level name (INFO, WATCHDOG, ...), the same words WEIGHTSLAB_LOG_LEVEL takes."""
    record = event_dict.get("_record")
    if isinstance(record, logging.LogRecord):
        event_dict["level"] = record.levelname
    else:
        event_dict["level"] = logging.getLevelName(_METHOD_LEVELS.get(method_name, logging.INFO))
    return event_dict


class RedactSecrets:
    """Replace every known secret with `****`: in each string of an event (nested too) before it is
    rendered, and in the rendered line itself, which catches tracebacks and reprs."""

    def __init__(self, secrets: Iterable[str]) -> None:
        values = {s for s in secrets if s}
        # A renderer may escape a secret (JSON, repr), so the escaped spellings are masked as well.
        variants = {v for s in values for v in (s, json.dumps(s)[1:-1], repr(s)[1:-1]) if v}
        self._secrets = sorted(variants, key=len, reverse=True)

    def __call__(self, logger: WrappedLogger, method_name: str, event: Any) -> Any:
        return self._scrub(event) if self._secrets else event

    def _scrub(self, value: Any) -> Any:
        if isinstance(value, str):
            for secret in self._secrets:
                value = value.replace(secret, MASK)
            return value
        if isinstance(value, dict):
            return {key: self._scrub(item) for key, item in value.items()}
        if type(value) in (list, tuple):  # exact types: a NamedTuple cannot be rebuilt from one iterable
            return type(value)(self._scrub(item) for item in value)
        return value


# --- the logger ------------------------------------------------------------------------------------


class Logger(structlog.stdlib.BoundLogger):
    """structlog's stdlib logger plus `watchdog()`, the WATCHDOG level."""

    def watchdog(self, event: str, *args: Any, **kw: Any) -> Any:
        if not self._logger.isEnabledFor(WATCHDOG):
            return None
        if args:
            kw["positional_args"] = args
        try:
            event_args, event_kw = self._process_event("watchdog", event, kw)
        except structlog.DropEvent:
            return None
        return self._logger.log(WATCHDOG, *event_args, **event_kw)

    def log(self, level: int, event: str | None = None, *args: Any, **kw: Any) -> Any:
        # structlog's own log() knows only the stdlib's level names.
        if level == WATCHDOG:
            return self.watchdog(event or "", *args, **kw)
        return super().log(level, event, *args, **kw)


def get_logger(name: str | None = None) -> Logger:
    """A logger of this module's class once configure_logging has run (a lazy proxy until first use)."""
    return cast(Logger, structlog.get_logger(name))


def log_watchdog(logger: Logger | logging.Logger, event: str, **kw: Any) -> None:
    """Log `event` at WATCHDOG through a structlog or a plain stdlib logger."""
    # A stdlib logger goes through structlog under the same name, so the keywords are kept.
    target = get_logger(logger.name) if isinstance(logger, logging.Logger) else logger
    target.watchdog(event, **kw)


# --- configuration ----------------------------------------------------------------------------------


class PrivateRotatingFileHandler(logging.handlers.RotatingFileHandler):
    """A rotating log file created 0600, the first one and each after a rotation or a reopen."""

    def _open(self) -> io.TextIOWrapper:
        fd = open_private(Path(self.baseFilename))
        # The handler owns the stream; mode is "a", so open() makes the TextIOWrapper FileHandler expects.
        return cast(io.TextIOWrapper, open(fd, self.mode, encoding=self.encoding, errors=self.errors))  # noqa: SIM115


# Run on every event: structlog's own, and stdlib records from other libraries (as the pre-chain).
_SHARED: list[Processor] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_logger_name,
    add_level,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
    structlog.stdlib.PositionalArgumentsFormatter(),
]


def _is_tty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _formatter(renderer: Processor, redact: RedactSecrets, *, console: bool) -> logging.Formatter:
    # Console keeps exc_info for its own pretty traceback; JSON turns it into a string first.
    exceptions: list[Processor] = [] if console else [structlog.processors.format_exc_info]
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_SHARED,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            *exceptions,
            redact,
            renderer,
            redact,
        ],
    )


def _json_renderer() -> Processor:
    return structlog.processors.JSONRenderer()


def configure_logging(
    level: str,
    *,
    log_to_file: bool,
    log_dir: Path | None,
    stream: IO[str] | None = None,
    secrets: Iterable[str] = (),
) -> None:
    """Set up logging for the whole process; calling it again replaces the previous set-up."""
    if log_to_file and log_dir is None:
        raise ValueError("log_to_file needs a log_dir")
    stream = sys.stdout if stream is None else stream
    redact = RedactSecrets(secrets)
    handlers: list[logging.Handler] = []

    console = logging.StreamHandler(stream)
    if _is_tty(stream):
        colors = "NO_COLOR" not in os.environ
        console.setFormatter(_formatter(structlog.dev.ConsoleRenderer(colors=colors), redact, console=True))
    else:
        console.setFormatter(_formatter(_json_renderer(), redact, console=False))
    handlers.append(console)

    if log_to_file and log_dir is not None:
        make_private_dirs(log_dir)  # logs, like runs, are private: folders 0700, files 0600
        file_handler = PrivateRotatingFileHandler(
            log_dir / LOG_FILE_NAME,
            maxBytes=LOG_FILE_MAX_BYTES,
            backupCount=LOG_FILE_BACKUPS,
            encoding="utf-8",
        )
        file_handler.setFormatter(_formatter(_json_renderer(), redact, console=False))
        handlers.append(file_handler)

    root = logging.getLogger()
    _remove_installed(root)
    _installed[:] = handlers
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level_number(level))

    structlog.configure(
        processors=[drop_disabled, *_SHARED, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=Logger,
        # Not cached: a logger made before configure_logging must follow the configuration made after.
        cache_logger_on_first_use=False,
    )


def reopen_log_files() -> None:
    """Close and reopen the log file (after logrotate moved it away); called on SIGHUP."""
    for handler in _installed:
        if isinstance(handler, logging.FileHandler):
            handler.acquire()
            try:
                if handler.stream is not None:
                    handler.stream.close()
                handler.stream = handler._open()
            finally:
                handler.release()


def reset_logging() -> None:
    """Undo configure_logging: remove and close its handlers and restore structlog's defaults."""
    _remove_installed(logging.getLogger())
    structlog.reset_defaults()


def _remove_installed(root: logging.Logger) -> None:
    for handler in _installed:
        root.removeHandler(handler)
        handler.close()
    _installed.clear()
