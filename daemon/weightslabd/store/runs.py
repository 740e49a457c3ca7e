"""Every run the daemon knows: loaded from disk at start, created or resumed when a trainer says hello."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import structlog

from weightslab_shim.runtime import is_run_id
from weightslabd.store.run import Run, RunOptions

log = structlog.get_logger("weightslabd.store.runs")
INDEX = "runs.json"


class RunRegistry:
    def __init__(self, root_log_dir: Path | None, state_dir: Path, options: RunOptions | None = None) -> None:
        self.root_log_dir = root_log_dir
        self.options = options or RunOptions()
        self.index_path = state_dir / INDEX
        self.runs: dict[str, Run] = {}
        self.current_id: str | None = None
        self._lock = threading.Lock()

    def load(self) -> None:
        """Open every run listed in the index, and every run folder under an explicit root."""
        folders: list[Path] = []
        try:
            folders += [Path(p) for p in json.loads(self.index_path.read_text()).values()]
        except (FileNotFoundError, ValueError):
            pass
        if self.root_log_dir is not None and self.root_log_dir.is_dir():
            folders += [p for p in self.root_log_dir.iterdir() if (p / "manifest.json").is_file()]
        newest = 0.0
        for folder in dict.fromkeys(folders):
            if folder.resolve() in {r.folder.resolve() for r in self.runs.values()}:
                continue
            try:
                run = Run.open(folder, self.options)
            except (OSError, ValueError, KeyError) as exc:
                log.error("run folder unreadable, skipped", folder=str(folder), error=str(exc))
                continue
            if run.manifest.get("status") in ("running", "paused"):
                run.manifest["status"] = "detached"  # its trainer may come back and say hello
            self.runs[run.run_id] = run
            created = float(run.manifest.get("created", 0))
            if created >= newest:
                newest, self.current_id = created, run.run_id
        if self.runs:
            log.info("runs loaded", count=len(self.runs), current=self.current_id)

    def folder_for(self, hello: dict[str, Any]) -> Path:
        run_id = hello["run_id"]
        if not is_run_id(run_id):  # the control server checked already: never a folder outside the root
            raise ValueError(f"run id {run_id!r} is not a plain run folder name")
        root = self.root_log_dir or Path(str(hello.get("script_dir") or ".")) / "root_log_dir"
        return root / str(run_id)

    def attach(self, hello: dict[str, Any]) -> Run:
        """The run a hello names: the loaded one if known, else a new folder."""
        run_id = str(hello["run_id"])
        with self._lock:
            run = self.runs.get(run_id)
            if run is None:
                folder = self.folder_for(hello)
                if (folder / "manifest.json").is_file():
                    run = Run.open(folder, self.options)
                else:
                    run = Run.create(folder, {
                        "run_id": run_id, "run_name": hello.get("run_name", run_id), "created": time.time(),
                        "script_dir": hello.get("script_dir"), "host": hello.get("host"),
                        "rank": hello.get("rank", 0), "world_size": hello.get("world_size", 1),
                    }, self.options)
                self.runs[run_id] = run
                self._save_index()
        run.manifest.update(pid=hello.get("pid"), status="paused" if hello.get("paused") else "running",
                            ring=(hello.get("ring") or {}).get("name"))
        with run.lock:
            for split, size in (hello.get("splits") or {}).items():
                run.samples.ensure_split(split, int(size))
            run.hparams.update(hello.get("hparams") or {})
            run.paused = bool(hello.get("paused", False))
        run.save_manifest()
        return run

    def make_current(self, run_id: str) -> None:
        """The run the UI sees: set once its trainer is reachable, so an edit never finds it missing."""
        with self._lock:
            if run_id in self.runs:
                self.current_id = run_id

    def current(self) -> Run | None:
        with self._lock:
            return self.runs.get(self.current_id) if self.current_id else None

    def get(self, run_id: str) -> Run | None:
        return self.runs.get(run_id)

    def _save_index(self) -> None:
        data = json.dumps({rid: str(r.folder.resolve()) for rid, r in self.runs.items()}, indent=1)
        tmp = self.index_path.with_suffix(".tmp")
        tmp.write_text(data)
        os.replace(tmp, self.index_path)

    def close(self) -> None:
        for run in self.runs.values():
            run.close()
