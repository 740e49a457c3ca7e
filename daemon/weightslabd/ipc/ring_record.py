"""A small JSON map of rings kept in the private runtime directory, so a restarted daemon knows them:
read once at start (an unreadable file is logged and treated as empty), replaced atomically on each
change (0600, no symlink followed), removed when empty. A failed save is logged: the record only
matters after a crash, and the work it describes goes on."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import structlog

log = structlog.get_logger("weightslabd.ipc")


class RingRecord:
    UNREADABLE = "record of rings unreadable"  # each kind says what that costs
    UNSAVED = "record of rings not saved"

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self.rings: dict[str, dict[str, Any]] = self._load()

    def _load(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.error(self.UNREADABLE, path=str(self.path), error=str(exc))
            return {}
        return {str(k): dict(v) for k, v in data.items() if isinstance(v, dict)} if isinstance(data, dict) else {}

    def _save(self) -> None:
        """Called with the lock held."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            if not self.rings:
                self.path.unlink(missing_ok=True)
                return
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(self.rings, f)
            os.replace(tmp, self.path)
        except OSError as exc:
            log.error(self.UNSAVED, path=str(self.path), error=str(exc))
