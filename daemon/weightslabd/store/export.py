"""`weightslabd export RUN --to DIR`: a run's data as Parquet files any dataframe tool opens.

    DIR/samples.parquet    one row per (split, sample id): label, prediction, encounters, last step,
                           discarded, tags (a list), and the last value of every per-sample signal
    DIR/tags.parquet       split, sample_id, tag: one row per tag a sample carries
    DIR/history/**.parquet the per-sample history: split, signal, step, sample_id, value, instance
                           (the daemon's own files, linked; the chunk still in memory written alike)
    DIR/curves/**.parquet  the step curves: name, step, value, min, max, time (the daemon's own files,
                           linked; the points still in memory written alike)
    DIR/edits.parquet      the edit journal: seq, time, kind, split, and each entry whole as JSON
    DIR/manifest.json      the run's manifest

The run is read from a private copy of its folder (the snapshot and the history files linked, the log
after the snapshot copied), so a daemon serving the run is never disturbed and nothing in its folder
changes. docs/data-at-rest.md shows how to open the files.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from weightslabd.store import log_trim, parquet_curves, parquet_history, snapshot
from weightslabd.store.framedlog import read_frames
from weightslabd.store.run import Run, RunOptions

RUN_FILES = ("manifest.json", "edits.journal", log_trim.FILE)  # the trim mark: the copy never scans its hole
_WORK = ".export-work"


class ExportError(Exception):
    """The run or the target cannot be used (one line, for the command line)."""


def find_run(name: str, roots: list[Path]) -> Path:
    """A run folder: `name` itself, or a run id under one of `roots` (log dirs, or runs.json files)."""
    direct = Path(name).expanduser()
    if (direct / "manifest.json").is_file():
        return direct
    for root in roots:
        if root.name.endswith(".json"):
            try:
                known = json.loads(root.read_text())
            except (OSError, ValueError):
                continue
            if isinstance(known, dict) and name in known and (Path(known[name]) / "manifest.json").is_file():
                return Path(known[name])
        elif (root / name / "manifest.json").is_file():
            return root / name
    raise ExportError(f"no run {name!r}: give a run folder, or a run id under WEIGHTSLAB_ROOT_LOG_DIR")


def run_export(settings: Any, name: str, target: Path) -> int:
    """The command: find the run, export it, say what was written (or why not, one line); the exit code."""
    import sys

    roots = [p for p in (settings.weightslab_root_log_dir, settings.runtime_dir() / "runs.json") if p is not None]
    try:
        folder = find_run(name, roots)
        counts = export(folder, target.expanduser(), RunOptions.from_settings(settings))
    except (ExportError, OSError, ValueError) as exc:
        print(f"weightslabd export: {exc}", file=sys.stderr)
        return 2
    for file, rows in counts.items():
        print(f"{rows:>12} rows  {target / file}")
    return 0


def export(folder: Path, target: Path, options: RunOptions | None = None) -> dict[str, int]:
    """Write the run in `folder` to `target` (created; must be empty). Returns rows written per file.
    `options`: the daemon's (how instances fold); predictions, previews and snapshots are left alone."""
    if not (folder / "manifest.json").is_file():
        raise ExportError(f"{folder} is not a run folder (no manifest.json)")
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ExportError(f"{target} is not an empty folder")
    target.mkdir(parents=True, exist_ok=True)
    options = dataclasses.replace(options or RunOptions(), save_predictions_h5=False, preload_previews=False,
                                  snapshots=True, snapshot_every_records=0, compact_history=True,
                                  trim_signals_log=False)
    work = target / _WORK
    try:
        run = _open_copy(folder, work, options, whole_log=False)
        if not run.opened_from_snapshot:  # the snapshot did not serve: the log's prefix is needed after all
            run.close()
            shutil.rmtree(work)
            run = _open_copy(folder, work, options, whole_log=True)
        try:
            run.compactor.compact_now()  # every full chunk at rest: only the last of each store is written here
            counts = _write(run, folder, target)
        finally:
            run.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return counts


def _link_or_copy(source: Path, dest: Path) -> None:
    try:
        os.link(source, dest)
    except OSError:
        shutil.copy2(source, dest)


def _open_copy(folder: Path, work: Path, options: RunOptions, whole_log: bool) -> Run:
    _private_copy(folder, work, whole_log)
    return Run.open(work, options)


def _private_copy(folder: Path, work: Path, whole_log: bool) -> None:
    work.mkdir(mode=0o700)
    for name in RUN_FILES:
        if (folder / name).is_file():
            shutil.copy2(folder / name, work / name)
    loaded_end, frame_at = 0, 0
    root = folder / snapshot.DIR
    try:
        current = (root / snapshot.CURRENT).read_text().strip()
        meta = json.loads((root / current / snapshot.META).read_bytes().partition(b"\n")[2])
        end, last = meta["logs"]["signals"]
        loaded_end, frame_at = (int(end), int(last[0])) if last else (0, 0)
        (work / snapshot.DIR / current).mkdir(parents=True)
        shutil.copy2(root / snapshot.CURRENT, work / snapshot.DIR / snapshot.CURRENT)
        for f in (root / current).iterdir():
            _link_or_copy(f, work / snapshot.DIR / current / f.name)
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        shutil.rmtree(work / snapshot.DIR, ignore_errors=True)  # no usable snapshot: the whole log is copied
        loaded_end = frame_at = 0
    for sub in (parquet_history.DIR, parquet_history.BY_SAMPLE_DIR, parquet_curves.DIR):
        history = folder / sub
        for part in sorted(history.rglob("*.parquet")) if history.is_dir() else []:
            dest = work / part.relative_to(folder)
            dest.parent.mkdir(parents=True, exist_ok=True)
            _link_or_copy(part, dest)
    # signals.log: the snapshot's prefix as a hole (never read), from its last frame on copied
    log = folder / "signals.log"
    if not log.exists():
        return
    with open(log, "rb") as src, open(work / "signals.log", "wb") as dst:
        start = frame_at if loaded_end and not whole_log else 0
        src.seek(start)
        dst.truncate(start)
        dst.seek(start)
        shutil.copyfileobj(src, dst, 1 << 20)


def _write(run: Run, source: Path, target: Path) -> dict[str, int]:
    counts = {"samples.parquet": 0, "tags.parquet": 0, "history": 0, "curves": 0, "edits.parquet": 0}
    samples, tags = _sample_tables(run)
    parquet_history.write_durably(target / "samples.parquet", samples)
    parquet_history.write_durably(target / "tags.parquet", tags)
    counts["samples.parquet"], counts["tags.parquet"] = samples.num_rows, tags.num_rows
    for store in run.sample_signals.stores():
        folder = target / parquet_history.DIR / parquet_history.store_dir(store.split, store.signal)
        folder.mkdir(parents=True, exist_ok=True)
        for part, rows in store.rows():
            if part is not None:
                _link_or_copy(part.path, folder / part.path.name)
                counts["history"] += part.used
            elif rows is not None:
                parquet_history.write_durably(folder / f"c{rows.index:06d}-hot.parquet",
                                              parquet_history.chunk_table(rows))
                counts["history"] += len(rows.ids)
    counts["curves"] = _curves(run, target / parquet_curves.DIR)
    edits = _edits(source / "edits.journal")
    parquet_history.write_durably(target / "edits.parquet", edits)
    counts["edits.parquet"] = edits.num_rows
    shutil.copy2(source / "manifest.json", target / "manifest.json")
    return counts


def _sample_tables(run: Run) -> tuple[pa.Table, pa.Table]:
    with run.lock:
        tables = list(run.samples.splits.values())
        signal_names = sorted({name for t in tables for name in t.signals})
        cols: dict[str, list[Any]] = {k: [] for k in ("split", "sample_id", "label", "prediction", "encounters",
                                                      "last_step", "discarded", "tags")}
        sig_cols: dict[str, list[np.ndarray]] = {name: [] for name in signal_names}
        tag_rows: dict[str, list[Any]] = {"split": [], "sample_id": [], "tag": []}
        for t in tables:
            ids = np.arange(t.size, dtype=np.int64)
            cols["split"].append(np.full(t.size, t.name, dtype=object))
            cols["sample_id"].append(ids)
            cols["label"].append(t.label.copy())
            cols["prediction"].append(t.prediction.copy())
            cols["encounters"].append(t.encounters.copy())
            cols["last_step"].append(t.last_step.copy())
            cols["discarded"].append(t.denied.copy())
            per_sample: list[list[str]] = [[] for _ in range(t.size)]
            for tag, mask in sorted(t.tag_masks.items()):
                for i in np.flatnonzero(mask).tolist():
                    per_sample[i].append(tag)
                    tag_rows["split"].append(t.name)
                    tag_rows["sample_id"].append(i)
                    tag_rows["tag"].append(tag)
            cols["tags"].append(per_sample)
            for name in signal_names:
                col = t.signals.get(name)
                sig_cols[name].append(col.copy() if col is not None else np.full(t.size, np.nan, dtype=np.float32))
    data: dict[str, Any] = {}
    for key, parts in cols.items():
        if key == "tags":
            data[key] = pa.array([x for p in parts for x in p], type=pa.list_(pa.string()))
        elif key == "split":
            data[key] = pa.array(np.concatenate(parts).tolist() if parts else [], type=pa.string())
        else:
            data[key] = np.concatenate(parts) if parts else np.empty(0)
    for name, parts in sig_cols.items():
        data[name if name not in data else f"signal_{name}"] = np.concatenate(parts)
    tags = pa.table({"split": pa.array(tag_rows["split"], type=pa.string()),
                     "sample_id": pa.array(tag_rows["sample_id"], type=pa.int64()),
                     "tag": pa.array(tag_rows["tag"], type=pa.string())})
    return pa.table(data), tags


def _curves(run: Run, root: Path) -> int:
    """Every curve's files (the daemon's, linked) and its points in memory as one more file; points written."""
    points = 0
    for name in run.history.names():
        parts, hot = run.history.at_rest(name)
        folder = root / parquet_curves.curve_dir(name)
        folder.mkdir(parents=True, exist_ok=True)
        for part in parts:
            _link_or_copy(part.path, folder / part.path.name)
            points += part.count
        if len(hot.steps):
            first = sum(p.count for p in parts)
            data = parquet_curves.table(name, (hot.steps, hot.values, hot.vmin, hot.vmax, hot.stamps))
            parquet_history.write_durably(folder / f"p{first:010d}-hot.parquet", data)
            points += len(hot.steps)
    return points


def _edits(journal: Path) -> pa.Table:
    seq, ts, kind, split, entry = [], [], [], [], []
    for _, payload in read_frames(journal):
        try:
            e = json.loads(payload)
        except ValueError:
            continue
        seq.append(int(e.get("seq", 0)) if isinstance(e.get("seq"), int) else None)
        ts.append(float(e["ts"]) if isinstance(e.get("ts"), (int, float)) else None)
        kind.append(str(e.get("kind", "")))
        split.append(e.get("split") if isinstance(e.get("split"), str) else None)
        entry.append(json.dumps(e, sort_keys=True))
    return pa.table({"seq": pa.array(seq, type=pa.int64()),
                     "time": pa.array([None if t is None else int(t * 1000) for t in ts],
                                      type=pa.int64()).cast(pa.timestamp("ms")),
                     "kind": pa.array(kind, type=pa.string()), "split": pa.array(split, type=pa.string()),
                     "entry": pa.array(entry, type=pa.string())})

