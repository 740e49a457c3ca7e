"""Snapshots: opening a run from one (and the records after it) gives exactly the state a full replay
gives; a snapshot that is damaged or no longer matches the folder is ignored with one line; writing one
is atomic, incremental, and survives a full disk."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs
from waiting import wait_for

from weightslab_shim import records
from weightslab_shim.records import SEP
from weightslab_shim.ring import RecordType
from weightslabd.store import snapshot
from weightslabd.store.history import Points
from weightslabd.store.run import Run, RunOptions
from weightslabd.store.sample_signals import SliceCurve

SPLITS = {"train": 48, "val": 12}
IGNORED = "snapshot ignored, replaying the whole log"
NO_H5 = RunOptions(save_predictions_h5=False)


class Feed:
    """Encoded records into a run through apply_record, as the ring delivers them."""

    def __init__(self, run: Run, seed: int = 0) -> None:
        self.run = run
        self.position = 0
        self.rng = np.random.default_rng(seed)

    def record(self, rtype: int, step: int, fields: list[tuple[str, np.ndarray]]) -> None:
        self.position += 1
        assert self.run.apply_record(rtype, step, memoryview(records.encode(fields)), self.position)

    def step(self, step: int, ids: list[int], values: list[float] | None = None, *, split: str = "train",
             rtype: int = RecordType.STEP, preds: bool = True, hp: dict[str, Any] | None = None) -> None:
        id_arr = np.asarray(ids, dtype=np.int64)
        vals = (self.rng.random(len(ids), dtype=np.float32) if values is None
                else np.asarray(values, dtype=np.float32))
        fields: list[tuple[str, np.ndarray]] = [
            (f"ids{SEP}{split}{SEP}loss{SEP}0", id_arr), (f"sig{SEP}{split}{SEP}loss{SEP}0", vals),
            (f"scalar{SEP}lr{SEP}2", np.array([0.01 * step], dtype=np.float64))]
        if preds:
            fields += [(f"tgt{SEP}{split}{SEP}0", id_arr % 7), (f"pred{SEP}{split}{SEP}0", (id_arr + step) % 7)]
        if hp is not None:
            fields.insert(0, ("hp", records.json_field(hp)))
        self.record(rtype, step, fields)

    def batch_only(self, step: int, ids: list[int], split: str = "val") -> None:
        """Targets and predictions with batch ids, no per-sample signal."""
        id_arr = np.asarray(ids, dtype=np.int64)
        self.record(RecordType.STEP, step, [(f"bids{SEP}{split}{SEP}1", id_arr),
                                            (f"tgt{SEP}{split}{SEP}1", np.ones((len(ids), 3, 4, 4), np.uint8)),
                                            (f"pred{SEP}{split}{SEP}1", id_arr.astype(np.float32) / 2)])

    def preview(self, step: int, ids: list[int], split: str = "train") -> None:
        id_arr = np.asarray(ids, dtype=np.int64)
        x = (id_arr[:, None, None] + np.zeros((1, 2, 3))).astype(np.float32)
        self.record(RecordType.PREVIEW, step, [(f"pids{SEP}{split}{SEP}0", id_arr), (f"x{SEP}{split}{SEP}0", x)])


def new_run(folder: Path, options: RunOptions = NO_H5, splits: dict[str, int] | None = None) -> Run:
    return Run.create(folder, {"run_id": "r", "created": 0.0, "splits": dict(splits or SPLITS)}, options)


# -- the state, all of it, in comparable form -------------------------------------------------------


def raw(a: np.ndarray | None) -> tuple[str, tuple[int, ...], bytes] | None:
    """Bit for bit, NaNs included."""
    return None if a is None else (a.dtype.str, a.shape, np.ascontiguousarray(a).tobytes())


def curve(c: SliceCurve) -> tuple[Any, ...]:
    return (raw(c.steps), raw(c.means), raw(c.mins), raw(c.maxs), raw(c.counts), c.total_points)


def points(p: Points) -> tuple[Any, ...]:
    return (p.name, raw(p.steps), raw(p.values), raw(p.vmin), raw(p.vmax), raw(p.stamps), p.end)


def state_of(run: Run) -> dict[str, Any]:
    out: dict[str, Any] = {
        "step": run.step, "last_position": run.last_position, "hparams": run.hparams,
        "effective": run.effective_hparams(), "desired": run.desired, "unacked": sorted(run.unacked_edits),
        "edits_version": run.edits_version, "signal home": run._signal_home, "preview masks": run.preview_masks(),
        "resend": run.commands_to_resend(), "splits": [(n, t.size) for n, t in run.samples.splits.items()],
        "aggregation": run.instance_aggregation(),
    }
    for name, t in run.samples.splits.items():
        out[f"table {name}"] = (t.task_type, {k: raw(v) for k, v in t.signals.items()}, raw(t.encounters),
                                raw(t.label), raw(t.prediction), raw(t.last_step), raw(t.denied),
                                {k: raw(m) for k, m in t.tag_masks.items()})
    for split, held in run.preview_store.masks().items():  # previews at rest: not in snapshots, read alike
        out[f"preview arrays {split}"] = [raw(run.preview_array(split, i)) for i in range(len(held))]
    h = run.history
    out["history"] = (h.version, h.names(), h.latest(), [points(h.read(n)) for n in h.names()],
                      [points(h.read(n, 1, 3)) for n in h.names()], [h.curves[n].last_append for n in h.names()])
    out["stores"] = run.sample_signals.names()
    for split, signal in run.sample_signals.names():
        store = run.sample_signals.get(split, signal)
        assert store is not None
        size = run.samples.splits[split].size
        mask = np.arange(size) % 3 == 0
        steps = sorted(set(store.image().steps.tolist()))
        out[f"store {split}/{signal}"] = (
            len(store), store.records, store.has_instances,
            [curve(store.slice_curve(m, 0, how)) for m in (None, mask) for how in ("mean", "max")],
            curve(store.slice_curve(None, 3)), curve(store.slice_curve(mask, 0, "mean", (2, 9))),
            {k: (raw(s), raw(v)) for k, v_ in store.trajectory(range(size + 2), 0, "mean").items()
             for s, v in [v_]},
            {k: (raw(s), raw(v)) for k, v_ in store.trajectory(range(size), 4, "max").items() for s, v in [v_]},
            [tuple(raw(a) if isinstance(a, np.ndarray) else a for a in store.step_samples(s, 0, how))
             for s in steps for how in ("mean", "max")],
            [[(raw(i), raw(v), raw(n)) for i, v, n in store.records_at(s)] for s in steps])
    return out


def assert_same(got: dict[str, Any], want: dict[str, Any]) -> None:
    assert list(got) == list(want)
    for key in want:
        assert got[key] == want[key], key


def opened(folder: Path, options: RunOptions = NO_H5) -> tuple[dict[str, Any], Run]:
    """The state of the run opened from `folder` (then closed), and the closed run (how it opened). The
    manifest is put back as it was: a close saves the state's step and hyperparameters into it, which the
    next open starts from, and a comparison must not inherit one open's state in the other."""
    manifest = (folder / "manifest.json").read_bytes()
    run = Run.open(folder, options)
    try:
        return state_of(run), run
    finally:
        run.close()
        (folder / "manifest.json").write_bytes(manifest)


def full_replay(folder: Path, options: RunOptions = NO_H5) -> dict[str, Any]:
    state, run = opened(folder, RunOptions(**{**options.__dict__, "snapshots": False}))
    assert not run.opened_from_snapshot
    return state


# -- a run with records of every kind -------------------------------------------------------------------


def first_half(feed: Feed) -> None:
    run = feed.run
    feed.step(0, [1, 2, 3, 4], hp={"learning_rate": 0.1, "depth": 3})
    feed.preview(0, [1, 2, 3, 4])
    feed.step(1, [5, 6, 7, 7, 7, 8], [0.5, 0.25, 1.0, 2.0, np.nan, 4.0])  # instances of 7, one NaN
    seq = run.journal_edit({"kind": "hparams", "values": {"learning_rate": 0.05}})
    run.record_applied(seq, 2, True)
    feed.step(2, [9, 10, 47, 60, -1])  # 60 and -1: outside the split
    feed.step(2, [0, 1, 2], split="val", rtype=RecordType.EVAL)
    feed.step(3, [1, 2], split="nosuch")  # an unregistered split: dropped
    run.journal_edit({"kind": "tags", "split": "train", "ids": [1, 2, 3], "tags": ["hard", "odd"], "mode": "add"})
    run.journal_edit({"kind": "deny", "split": "train", "ids": [4, 5], "deny": True})
    feed.batch_only(3, [0, 5, 6])
    feed.step(4, [11, 12, 13], [np.nan, np.nan, np.nan])  # no finite value: no point on the curve
    feed.step(5, [1, 1, 2, 2, 3], hp={"depth": 4})


def second_half(feed: Feed) -> None:
    run = feed.run
    feed.step(6, [20, 21, 22, 23], hp={"learning_rate": 0.2})
    feed.preview(6, [20, 21, 2])
    feed.preview(6, [0, 1], split="val")
    feed.step(7, [3, 4, 5, 5])
    run.journal_edit({"kind": "tags", "split": "train", "ids": [2, 20], "tags": ["hard"], "mode": "remove"})
    seq = run.journal_edit({"kind": "hparams", "values": {"depth": 9}})  # never acknowledged
    assert seq
    feed.step(8, [3, 4, 9], split="val", rtype=RecordType.EVAL)
    feed.step(9, [30, 31, 32], preds=False)
    run.journal_edit({"kind": "deny", "split": "val", "ids": [3], "deny": True})


@pytest.fixture
def folder() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as tmp:
        yield Path(tmp) / "run"


def built(folder: Path, options: RunOptions = NO_H5) -> Path:
    """A closed run with a snapshot taken half way (its copy is returned) and one written at close."""
    run = new_run(folder, options)
    feed = Feed(run)
    first_half(feed)
    assert run.write_snapshot() is not None
    aside = folder.parent / "mid-snapshot"
    shutil.copytree(folder / snapshot.DIR, aside)
    second_half(feed)
    run.close()
    return aside


def use(folder: Path, saved: Path) -> None:
    """Make a saved copy of a snapshot directory the run's snapshot."""
    shutil.rmtree(folder / snapshot.DIR, ignore_errors=True)
    shutil.copytree(saved, folder / snapshot.DIR)


@pytest.mark.parametrize("options", [NO_H5, RunOptions()], ids=["no-h5", "h5"])
def test_a_mid_way_snapshot_plus_the_tail_is_the_full_replay(folder: Path, options: RunOptions) -> None:
    mid = built(folder, options)
    want = full_replay(folder, options)
    at_close, run = opened(folder, options)
    assert run.opened_from_snapshot and run.replayed_records == 0
    assert_same(at_close, want)
    use(folder, mid)
    with capture_logs() as logs:
        got, run = opened(folder, options)
    assert run.opened_from_snapshot and run.replayed_records == 6  # the second half's records
    assert not [e for e in logs if e["event"] == IGNORED]
    assert_same(got, want)
    assert got["hparams"]["learning_rate"] == 0.2  # the trainer's report came after the applied edit


def test_the_journal_is_replayed_in_full_and_the_records_hparams_come_last(folder: Path) -> None:
    run = new_run(folder)
    feed = Feed(run)
    feed.step(0, [1, 2], hp={"learning_rate": 0.1})
    assert run.write_snapshot() is not None
    seq = run.journal_edit({"kind": "hparams", "values": {"learning_rate": 0.5, "wd": 1}})
    run.record_applied(seq, 1, True)  # after the snapshot: the journal says 0.5, the records still 0.1
    run.journal_edit({"kind": "tags", "split": "train", "ids": [1], "tags": ["late"], "mode": "add"})
    run.close()
    want = full_replay(folder)
    got, run = opened(folder)
    assert run.opened_from_snapshot
    assert_same(got, want)
    assert got["hparams"]["learning_rate"] == 0.1 and got["hparams"]["wd"] == 1
    assert got["table train"][-1].keys() == {"late"}


def crash(run: Run) -> None:
    """Stop a run as SIGKILL would: no manifest, no snapshot at close; the logs as they are."""
    run._closed = True
    run._periodic.stop()
    run.preview_cache.stop()
    run.preview_store.close(timeout=0)
    for framed in (run.signals, run.journal):
        framed.close()


def test_after_a_crash_the_last_snapshot_plus_the_tail_is_the_full_replay(folder: Path) -> None:
    run = new_run(folder)
    feed = Feed(run)
    first_half(feed)
    assert run.write_snapshot() is not None
    feed.preview(9, [7])  # the tail moves no step: the step is the snapshot's, not the manifest's
    run.journal_edit({"kind": "tags", "split": "train", "ids": [7], "tags": ["x"], "mode": "add"})
    crash(run)  # the manifest still says step 0 and has no hyperparameters
    assert json.loads((folder / "manifest.json").read_text())["step"] == 0
    want = full_replay(folder)
    got, reopened = opened(folder)
    assert reopened.opened_from_snapshot and reopened.replayed_records == 1
    assert_same(got, want)
    assert got["step"] == 6 and got["hparams"]["depth"] == 4


# -- random record sequences, random snapshot points ------------------------------------------------------

ids_st = st.lists(st.integers(-2, 52), min_size=1, max_size=10)
op_st = st.one_of(
    st.tuples(st.just("step"), ids_st, st.sampled_from(["train", "val"]), st.booleans()),
    st.tuples(st.just("eval"), ids_st),
    st.tuples(st.just("nan"), ids_st),
    st.tuples(st.just("batch"), ids_st),
    st.tuples(st.just("preview"), st.lists(st.integers(0, 47), min_size=1, max_size=4), st.sampled_from(["train",
                                                                                                          "val"])),
    st.tuples(st.just("hp"), st.sampled_from(["instance_aggregation", "learning_rate"]),
              st.sampled_from(["mean", "max", "median", 0.5])),
    st.tuples(st.just("tag"), ids_st, st.sampled_from(["a", "b"]), st.sampled_from(["add", "remove", "override"])),
    st.tuples(st.just("deny"), ids_st, st.booleans()),
    st.tuples(st.just("hpedit"), st.sampled_from(["instance_aggregation", "learning_rate"]),
              st.sampled_from(["mean", "max", 0.3]), st.booleans()),
    st.tuples(st.just("grow"), st.sampled_from(["train", "val", "extra"]), st.integers(1, 8)),
)


def play(run: Run, feed: Feed, ops: list[tuple[Any, ...]], aside: Path) -> None:
    for step, op in enumerate(ops, start=1):
        kind = op[0]
        if kind == "step":
            feed.step(step, op[1], split=op[2], preds=op[3])
        elif kind == "eval":
            feed.step(step, op[1], split="val", rtype=RecordType.EVAL)
        elif kind == "nan":
            feed.step(step, op[1], [np.nan] * len(op[1]))
        elif kind == "batch":
            feed.batch_only(step, op[1])
        elif kind == "preview":
            feed.preview(step, op[1], op[2])
        elif kind == "hp":
            feed.step(step, [0, 0, 1], hp={op[1]: op[2]})
        elif kind == "tag":
            run.journal_edit({"kind": "tags", "split": "train", "ids": op[1], "tags": [op[2]], "mode": op[3]})
        elif kind == "deny":
            run.journal_edit({"kind": "deny", "split": "train", "ids": op[1], "deny": op[2]})
        elif kind == "hpedit":
            seq = run.journal_edit({"kind": "hparams", "values": {op[1]: op[2]}})
            if op[3]:
                run.record_applied(seq, step, True)
        elif kind == "grow":  # as a trainer's REGISTER does
            with run.lock:
                table = run.samples.get(op[1])
                run.samples.ensure_split(op[1], (table.size if table else 0) + op[2])
            run.save_manifest()
        elif kind == "snapshot" and run.write_snapshot() is not None:
            shutil.rmtree(aside, ignore_errors=True)
            shutil.copytree(run.folder / snapshot.DIR, aside)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(op_st, min_size=1, max_size=25), cuts=st.sets(st.integers(0, 25), max_size=3),
       seed=st.integers(0, 3))
def test_random_records_and_snapshot_points_open_to_the_full_replays_state(ops: list[tuple[Any, ...]],
                                                                           cuts: set[int], seed: int) -> None:
    for at in sorted(cuts, reverse=True):
        ops.insert(min(at, len(ops)), ("snapshot",))
    with tempfile.TemporaryDirectory() as tmp:
        folder, aside = Path(tmp) / "run", Path(tmp) / "aside"
        run = new_run(folder)
        play(run, Feed(run, seed), ops, aside)
        grew = any(op[0] == "grow" for op in ops)
        run.close()
        want = full_replay(folder)
        got, reopened = opened(folder)
        assert_same(got, want)
        refolded = any("instance_aggregation" in op for op in ops)  # a replay may now fold otherwise
        if not grew and not refolded:
            assert reopened.opened_from_snapshot and reopened.replayed_records == 0
        event(f"opened from the close's snapshot: {reopened.opened_from_snapshot}")
        if aside.exists():
            use(folder, aside)
            got, reopened = opened(folder)
            assert_same(got, want)
            event(f"opened from a mid-way snapshot: {reopened.opened_from_snapshot}, "
                  f"with a tail: {reopened.replayed_records > 0}")


def test_records_that_named_samples_a_split_gets_later_stop_snapshots_until_reopened(folder: Path) -> None:
    run = new_run(folder)
    feed = Feed(run)
    feed.step(0, [1, 50])  # 50: past train's 48 samples, dropped from the table
    with capture_logs() as logs:
        with run.lock:
            run.samples.ensure_split("train", 64)  # now 50 is a sample: a replay would count it
        feed.step(1, [2])
    assert [e["event"] for e in logs if "snapshots off" in e["event"]]
    assert run.write_snapshot() is None
    run.save_manifest()
    run.close()
    assert not (folder / snapshot.DIR / snapshot.CURRENT).exists()
    state, reopened = opened(folder)  # a full replay: exact again, and the close wrote a snapshot
    assert not reopened.opened_from_snapshot
    assert (folder / snapshot.DIR / snapshot.CURRENT).exists()
    assert_same(opened(folder)[0], state)


def test_a_split_grown_before_it_was_named_keeps_snapshots_on(folder: Path) -> None:
    run = new_run(folder)
    feed = Feed(run)
    feed.step(0, [1, 2])
    with run.lock:
        run.samples.ensure_split("train", 64)
        run.samples.ensure_split("extra", 5)
    run.save_manifest()
    feed.step(1, [50])
    assert run.write_snapshot() is not None
    run.close()
    want = full_replay(folder)
    got, reopened = opened(folder)
    assert reopened.opened_from_snapshot
    assert_same(got, want)


def test_a_changed_instance_fold_makes_the_snapshot_unusable(folder: Path) -> None:
    run = new_run(folder, RunOptions(save_predictions_h5=False, instance_aggregation="mean"))
    Feed(run).step(0, [1, 1, 2], [1.0, 3.0, 5.0])
    run.close()
    with capture_logs() as logs:
        state, reopened = opened(folder, RunOptions(save_predictions_h5=False, instance_aggregation="max"))
    assert not reopened.opened_from_snapshot
    assert [e for e in logs if e["event"] == IGNORED]
    assert state["table train"][1]["loss"] == raw(np.array([np.nan, 3.0, 5.0] + [np.nan] * 45, dtype=np.float32))


def test_predictions_the_h5_file_lacks_make_the_snapshot_unusable(folder: Path) -> None:
    run = new_run(folder, RunOptions())
    Feed(run).step(0, [1, 2, 3])
    run.close()
    (folder / "predictions.h5").unlink()  # the derived copy lost: a full replay writes it again
    with capture_logs() as logs:
        _, reopened = opened(folder, RunOptions())
    assert not reopened.opened_from_snapshot
    assert [e["reason"] for e in logs if e["event"] == IGNORED] == [
        "predictions.h5 lacks predictions of split 'train' it covers (to step 0)"]
    from weightslabd.store.predictions_h5 import PredictionsH5

    with PredictionsH5(folder / "predictions.h5") as h5:
        assert h5.max_step("train") == 0


# -- damaged snapshots --------------------------------------------------------------------------------


def current_dir(folder: Path) -> Path:
    return folder / snapshot.DIR / (folder / snapshot.DIR / snapshot.CURRENT).read_text().strip()


def flip(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x40
    path.write_bytes(bytes(data))


def wrong_version(folder: Path) -> None:
    meta = current_dir(folder) / snapshot.META
    body = json.loads(meta.read_bytes().partition(b"\n")[2])
    body["version"] = 999
    data = json.dumps(body).encode()
    meta.write_bytes(b"%08x\n" % zlib.crc32(data) + data)


def truncated_log(folder: Path) -> None:
    """Cut signals.log back to an earlier frame boundary, as a lost tail would."""
    from weightslabd.store.framedlog import FramedLog

    log = FramedLog(folder / "signals.log")
    offsets = [offset for offset, _ in log.frames()]
    log.close()
    os.truncate(folder / "signals.log", offsets[len(offsets) // 2])


DAMAGE: dict[str, Callable[[Path], object]] = {
    "a flipped byte in a chunk": lambda f: flip(current_dir(f) / "s0000-c000000.bin", 5),
    "a flipped byte in the state": lambda f: flip(current_dir(f) / snapshot.STATE, 70),
    "a flipped byte in the meta": lambda f: flip(current_dir(f) / snapshot.META, 40),
    "a truncated state file": lambda f: os.truncate(current_dir(f) / snapshot.STATE, 100),
    "a truncated chunk file": lambda f: os.truncate(current_dir(f) / "s0000-c000000.bin", 8),
    "a missing chunk file": lambda f: (current_dir(f) / "s0001-c000000.bin").unlink(),
    "an unknown version": wrong_version,
    "CURRENT naming nothing": lambda f: (f / snapshot.DIR / snapshot.CURRENT).write_text("gone\n"),
    "signals.log cut before its end": truncated_log,
    "a snapshot of another run": lambda f: (f / "manifest.json").write_text(
        (f / "manifest.json").read_text().replace('"run_id": "r"', '"run_id": "q"')),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_snapshot_is_ignored_with_one_line_and_everything_replayed(folder: Path, damage: str) -> None:
    built(folder)
    DAMAGE[damage](folder)
    with capture_logs() as logs:
        got, run = opened(folder)
    assert not run.opened_from_snapshot
    assert len([e for e in logs if e["event"] == IGNORED]) == 1, logs
    assert run.replayed_records == run.last_position  # every record: positions count them here
    shutil.rmtree(folder / snapshot.DIR)
    assert_same(got, full_replay(folder))


def test_leftovers_of_a_crash_mid_write_are_removed_at_open(folder: Path) -> None:
    built(folder)
    root = folder / snapshot.DIR
    (root / "tmp-123-4-5").mkdir()
    (root / "tmp-123-4-5" / "state.bin").write_bytes(b"half")
    (root / "0000-old").mkdir()
    (root / "CURRENT.tmp").write_text("0000-old\n")
    _, run = opened(folder)
    assert run.opened_from_snapshot
    assert sorted(p.name for p in root.iterdir()) == sorted([snapshot.CURRENT, current_dir(folder).name])


# -- writing -------------------------------------------------------------------------------------------


def test_full_chunks_are_linked_not_written_again(folder: Path) -> None:
    run = new_run(folder, RunOptions(save_predictions_h5=False, compact_history=False), splits={"train": 4096})
    feed = Feed(run)
    batch = list(range(256))
    for step in range(300):  # 256 records fill the first 64 Ki-value chunk
        feed.step(step, batch, preds=False)
    first = run.write_snapshot()
    assert first is not None and first.bytes_linked == 0
    for step in range(300, 310):
        feed.step(step, batch, preds=False)
    second = run.write_snapshot()
    assert second is not None
    assert second.bytes_linked == 65536 * 8  # the full chunk: its file is the first snapshot's
    assert second.bytes_written < first.bytes_written
    chunk = current_dir(folder) / "s0000-c000000.bin"
    assert chunk.stat().st_nlink == 1  # the first snapshot's directory is gone; the file stayed
    run.close()
    got, reopened = opened(folder)
    assert reopened.opened_from_snapshot
    assert_same(got, full_replay(folder))


def test_nothing_new_writes_nothing(folder: Path) -> None:
    run = new_run(folder)
    Feed(run).step(0, [1])
    assert run.write_snapshot() is not None
    assert run.write_snapshot() is None
    run.journal_edit({"kind": "tags", "split": "train", "ids": [1], "tags": ["t"], "mode": "add"})
    assert run.write_snapshot() is None  # edits are the journal's, never a snapshot's
    run.close()


def test_a_full_disk_while_writing_leaves_the_old_snapshot_logs_once_and_recovers(
        folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = new_run(folder)
    feed = Feed(run)
    feed.step(0, [1, 2])
    first = run.write_snapshot()
    assert first is not None
    real = snapshot._write_all
    calls = [0]

    def full_disk(fd: int, data: memoryview) -> None:
        calls[0] += 1
        if calls[0] > 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd, data)

    monkeypatch.setattr(snapshot, "_write_all", full_disk)
    with capture_logs() as logs:
        for step in (1, 2, 3):
            feed.step(step, [3])
            assert run.write_snapshot() is None
            calls[0] = 0
    failures = [e for e in logs if e["event"] == "snapshot not written; the logs still hold everything"]
    assert len(failures) == 1 and "No space left on device" in failures[0]["error"]
    root = folder / snapshot.DIR
    assert sorted(p.name for p in root.iterdir()) == [first.name, snapshot.CURRENT]  # nothing partial left
    monkeypatch.setattr(snapshot, "_write_all", real)
    with capture_logs() as logs:
        assert run.write_snapshot() is not None
    assert [e["event"] for e in logs if e["event"] == "snapshots written again"]
    run.close()
    got, reopened = opened(folder)
    assert reopened.opened_from_snapshot
    assert_same(got, full_replay(folder))


@pytest.fixture
def tiny_disk(tmpfs: Callable[[str], Path]) -> Path:
    return tmpfs("2m")


def test_a_really_full_disk_keeps_the_run_going_on_its_logs(tiny_disk: Path) -> None:
    folder = tiny_disk / "run"
    run = new_run(folder, splits={"train": 200_000})  # its columns (~5 MB) cannot fit; its records do
    feed = Feed(run)
    with capture_logs() as logs:
        feed.step(0, [1, 2, 3])
        assert run.write_snapshot() is None
        feed.step(1, [4])
        run.close()
    assert len([e for e in logs if e["event"] == "snapshot not written; the logs still hold everything"]) == 1
    assert [p.name for p in (folder / snapshot.DIR).iterdir()] == []
    state, reopened = opened(folder)
    assert not reopened.opened_from_snapshot and reopened.replayed_records == 2
    assert state["step"] == 2


def test_background_snapshots_come_after_enough_records_or_time(folder: Path) -> None:
    run = new_run(folder, RunOptions(save_predictions_h5=False, snapshot_every_records=10, snapshot_every_s=3600))
    feed = Feed(run)
    for step in range(25):
        feed.step(step, [step % 40])
    first = wait_for(lambda: run._snapshot, 10, "a snapshot after 10 records")
    assert first.meta["state"]["last_position"] >= 10
    run.close()
    run = Run.open(folder, RunOptions(save_predictions_h5=False, snapshot_every_records=1000, snapshot_every_s=0.2))
    assert run.opened_from_snapshot
    before = run._snapshot
    feed = Feed(run)
    feed.position = run.last_position  # ring positions go on from where they were
    feed.record(RecordType.STEP, 30, [(f"scalar{SEP}x{SEP}0", np.array([1.0]))])
    wait_for(lambda: run._snapshot is not before, 10, "a snapshot 0.2 s after a record")
    run.close()


def test_the_background_thread_does_not_spin_while_snapshots_are_off(folder: Path) -> None:
    run = new_run(folder, RunOptions(save_predictions_h5=False, snapshot_every_records=3, snapshot_every_s=0))
    feed = Feed(run)
    feed.step(0, [50])  # past the split: growing it now makes the state a replay's no longer
    with run.lock:
        run.samples.ensure_split("train", 64)
    for step in range(1, 4):
        feed.step(step, [1])
    # Once it has tried, it waits for as much again instead of trying again at once (and forever).
    periodic = run._periodic
    wait_for(lambda: not run._exact and periodic.records == 0 and not periodic._due(), 10,
             "the background thread to try, then rest")
    assert run._snapshot is None or run._snapshot.meta["state"]["last_position"] == 1  # only before the change
    run.close()


def test_a_snapshot_taken_while_records_arrive_is_a_consistent_cut(folder: Path) -> None:
    run = new_run(folder, splits={"train": 1000})
    feed = Feed(run)
    stop = threading.Event()

    def ingest() -> None:
        step = 0
        while not stop.is_set():
            feed.step(step, list(range(step % 700, step % 700 + 256)), preds=False)
            step += 1

    thread = threading.Thread(target=ingest)
    thread.start()
    try:
        saved = []
        for i in range(5):
            wait_for(lambda i=i: feed.position > 40 * (i + 1), 10, "more records")  # type: ignore[misc]
            if run.write_snapshot() is not None:
                aside = folder.parent / f"cut{i}"
                shutil.copytree(folder / snapshot.DIR, aside)
                saved.append(aside)
    finally:
        stop.set()
        thread.join()
    run.close()
    want = full_replay(folder)
    for aside in saved:
        use(folder, aside)
        got, reopened = opened(folder)
        assert reopened.opened_from_snapshot and reopened.replayed_records > 0
        assert_same(got, want)


# -- crashes: a real process killed at any moment, in the middle of a snapshot write too ---------------

CHILD = """
import json, logging, sys
from pathlib import Path
import numpy as np
import structlog
from weightslab_shim import records
from weightslab_shim.records import SEP
from weightslab_shim.ring import RecordType
from weightslabd.store.run import Run, RunOptions

structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))  # stdout: one line
folder = Path(sys.argv[1])
options = RunOptions(save_predictions_h5=False, snapshot_every_records=int(sys.argv[2]))
if (folder / "manifest.json").exists():
    run = Run.open(folder, options)
else:
    run = Run.create(folder, {"run_id": "r", "created": 0.0, "splits": {"train": 100_000, "val": 500}}, options)
print(json.dumps({"from_snapshot": run.opened_from_snapshot, "replayed": run.replayed_records}), flush=True)
rng = np.random.default_rng(run.last_position + 1)
position, step = run.last_position, run.step
while True:
    step += 1
    ids = rng.integers(0, 100_000, 256)
    fields = [(f"ids{SEP}train{SEP}loss{SEP}0", ids), (f"sig{SEP}train{SEP}loss{SEP}0", rng.random(256, np.float32)),
              (f"tgt{SEP}train{SEP}0", ids % 10), (f"pred{SEP}train{SEP}0", rng.integers(0, 10, 256))]
    if step % 7 == 0:
        fields.append(("hp", records.json_field({"learning_rate": step / 1000})))
    position += 1
    run.apply_record(RecordType.STEP, step, memoryview(records.encode(fields)), position)
    if step % 11 == 0:
        position += 1
        run.apply_record(RecordType.EVAL, step, memoryview(records.encode([
            (f"ids{SEP}val{SEP}loss{SEP}0", ids % 500), (f"sig{SEP}val{SEP}loss{SEP}0", rng.random(256, np.float32))])),
            position)
    if step % 13 == 0:
        position += 1
        run.apply_record(RecordType.PREVIEW, step, memoryview(records.encode([
            (f"pids{SEP}train{SEP}0", ids[:4]), (f"x{SEP}train{SEP}0", rng.random((4, 2, 2), np.float32))])), position)
"""


def snapshot_names(root: Path) -> tuple[str, list[str]]:
    try:
        current = (root / snapshot.CURRENT).read_text()
    except (FileNotFoundError, ValueError):
        current = ""
    try:
        return current, [p.name for p in root.iterdir()]
    except FileNotFoundError:
        return current, []


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_sigkill_at_any_moment_of_a_snapshot_write_never_costs_the_state(folder: Path) -> None:
    import sys

    root = folder / snapshot.DIR
    opens = []
    # Kill the writer: while a snapshot is half written, right after the switch, or between two writes.
    moments: list[Callable[[str, list[str]], bool]] = [
        lambda cur, names: any(n.startswith("tmp-") for n in names),
        lambda cur, names: bool(cur) and cur != seen[0],
        lambda cur, names: len(names) > 2,  # a new one in place, the old one not yet pruned
    ]
    seen = [""]
    for cycle in range(9):
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(folder), "40"], stdout=subprocess.PIPE,
                                 stderr=subprocess.DEVNULL)
        try:
            assert child.stdout is not None
            opens.append(json.loads(child.stdout.readline()))
            seen[0] = snapshot_names(root)[0]
            moment = moments[cycle % len(moments)]
            deadline = time.monotonic() + 30
            while not moment(*snapshot_names(root)):  # polled without pause: the moments last milliseconds
                assert child.poll() is None and time.monotonic() < deadline, f"cycle {cycle}: no such moment"
        finally:
            child.kill()
            child.wait()
    assert any(o["from_snapshot"] and o["replayed"] for o in opens[1:]), opens
    want = full_replay(folder)
    got, run = opened(folder)
    assert run.opened_from_snapshot
    assert_same(got, want)
    assert not [n for n in snapshot_names(root)[1] if n.startswith("tmp-")]
