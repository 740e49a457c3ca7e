"""Each data-plane setting changes what the daemon does: break-by-slices curves and their cap,
instance aggregation, predictions in HDF5, and the preview cache's size, preload, warm-up wait,
chunking and default thumbnail size."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from PIL import Image

from weightslabd.proto import experiment_service_pb2 as pb

from .harness import Daemon, Trainer, base_env, history, run_folder, wait_for
from .test_cli_server import grpc_cli
from .test_dataplane import edit, samples, stats


def start(tmp_path: Path, **settings: str) -> tuple[Daemon, dict[str, str]]:
    env = base_env(tmp_path)
    env.update(settings)
    return Daemon(env, tmp_path / "daemon.log").start(), env


def train(daemon: Daemon, env: dict[str, str], tmp_path: Path, *args: str, steps: int = 120) -> dict[str, Any]:
    status = Trainer(env, tmp_path, "--steps", str(steps), "--step-sleep", "0.004", "--attach-first", "30",
                     *args).wait(60)
    wait_for(lambda: len(history(daemon.stub(), metric_names=["loss"])) >= steps, 10, "the run's records")
    return status


def outputs(size: int = 256) -> np.ndarray:
    """The test trainer's model output per sample: its data is seeded, its model fixed."""
    rng = np.random.default_rng(0)
    return np.array([rng.random((1, 4, 4), dtype=np.float32).mean() * 10 for _ in range(size)], dtype=np.float32)


def expected_losses(size: int = 256) -> np.ndarray:
    return ((outputs(size) - np.arange(size) % 10) ** 2).astype(np.float64)


def slices(stub: Any, tags: list[str], **kw: Any) -> Any:
    return stub.GetLatestLoggerData(pb.GetLatestLoggerDataRequest(
        request_full_history=True, break_by_slices=True, tags=tags, metric_names=["loss"], **kw), timeout=10)


@pytest.mark.parametrize("cap", ["0", "7"])
def test_break_by_slices_is_the_mean_over_the_tagged_samples_capped_per_curve(tmp_path: Path, cap: str) -> None:
    daemon, env = start(tmp_path, WL_MAX_POINTS_PER_SAMPLE=cap)
    try:
        trainer = Trainer(env, tmp_path, "--steps", "80", "--step-sleep", "0.004")
        wait_for(lambda: len(history(daemon.stub(), metric_names=["loss"])) > 5, 10, "the first steps")
        tagged = list(range(0, 256, 5))
        assert edit(daemon.stub(), "tags", tagged, tag="fifth").success  # a slice covers steps before its tag
        status = trainer.wait(60)
        wait_for(lambda: len(history(daemon.stub(), metric_names=["loss"])) >= 80, 10, "every step")
        losses, in_slice = expected_losses(), set(tagged)
        want = {}
        for step, ids in zip(status["step_of"], status["seen"], strict=True):
            mine = [i for i in ids if i in in_slice]
            if mine:
                want[step] = (float(np.mean(losses[mine])), len(mine))
        reply = slices(daemon.stub(), ["fifth"])
        points = [p for p in reply.points if p.experiment_hash == status_run(tmp_path)]
        steps = [p.model_age for p in points]
        if cap == "0":
            assert steps == sorted(want) and reply.applied_max_points == 0
        else:
            assert len(steps) == 7 and reply.applied_max_points == 7
            assert steps[0] == min(want) and steps[-1] == max(want)  # first and last kept
        for p in points:
            mean, count = want[p.model_age]
            assert p.metric_value == pytest.approx(mean, rel=1e-5) and p.sample_count == count
            assert p.has_value_range and p.value_min <= p.metric_value <= p.value_max
        curve = reply.curves[0]
        assert curve.point_count == len(want) and curve.metric_name == "loss [fifth]"
        index = slices(daemon.stub(), ["fifth"], index_only=True)
        assert not index.points and index.curves[0].point_count == len(want)
        ranged = slices(daemon.stub(), ["fifth"], has_x_range=True, x_min=10, x_max=20)
        assert ranged.points and all(10 <= p.model_age <= 20 for p in ranged.points)
        assert not slices(daemon.stub(), ["nobody-has-this"]).points
    finally:
        daemon.stop()


def status_run(tmp_path: Path) -> str:
    return run_folder(tmp_path).name


@pytest.mark.parametrize(("setting", "hp", "how"), [("mean", None, "mean"), ("max", None, "max"),
                                                    ("mean", "max", "max")])
def test_instance_aggregation_folds_each_samples_instances(tmp_path: Path, setting: str, hp: str | None,
                                                           how: str) -> None:
    daemon, env = start(tmp_path, WL_INSTANCE_AGGREGATION=setting)
    try:
        extra = ["--hp", f"instance_aggregation={hp}"] if hp else []  # the run's own choice wins
        train(daemon, env, tmp_path, "--instances", *extra, steps=60)
        stub = daemon.stub()
        box = {r.sample_id: stats(r)["box"].value[0] for r in samples(stub).data_records
               if np.isfinite(stats(r)["box"].value[0])}
        assert len(box) > 100
        offset = 50 if how == "mean" else 100  # instances are valued id and id + 100
        assert all(v == sid + offset for sid, v in box.items())
        at = stub.GetStepSamples(pb.StepSamplesRequest(metric_name="box", model_age=30, max_samples=5), timeout=10)
        assert at.success and at.total_available == 16 and len(at.sample_ids) == 5
        values = list(at.sample_values)
        assert values == sorted(values, reverse=True)
        assert all(v == int(s) + offset for s, v in zip(at.sample_ids, values, strict=True))
        sid = next(iter(box))
        path = stub.GetSignalTrajectory(pb.GetSignalTrajectoryRequest(signal_name="box", sample_ids=[str(sid)]),
                                        timeout=10)
        assert path.success and set(path.trajectories[0].value) == {sid + offset}
    finally:
        daemon.stop()


@pytest.mark.parametrize("save", ["1", "0"])
def test_predictions_go_to_hdf5_only_when_asked(tmp_path: Path, save: str) -> None:
    daemon, env = start(tmp_path, WEIGHTSLAB_SAVE_PREDICTIONS_IN_H5=save)
    try:
        status = train(daemon, env, tmp_path, steps=40)
    finally:
        daemon.stop()  # closing the run flushes the file
    path = run_folder(tmp_path) / "predictions.h5"
    if save == "0":
        assert not path.exists()
        return
    with h5py.File(path, "r") as f:
        steps, ids, preds = f["train/step"][:], f["train/sample_id"][:], f["train/prediction"][:]
    assert len(ids) > 0 and set(steps.tolist()) <= set(range(40))
    by_step = dict(zip(status["step_of"], status["seen"], strict=True))
    for step in set(steps.tolist()):
        assert sorted(ids[steps == step].tolist()) == sorted(by_step[step])  # every sample of the step
    assert np.array_equal(preds.reshape(-1), np.round(outputs()[ids]))  # the trainer's preds=np.round(out)


def preview_stats(daemon: Daemon) -> dict[str, int]:
    return dict(grpc_cli(daemon, "status")["previews"])


@pytest.mark.parametrize("preload", ["1", "0"])
def test_preload_builds_thumbnails_of_what_is_at_rest_when_the_daemon_starts(tmp_path: Path, preload: str) -> None:
    daemon, env = start(tmp_path, WL_PRELOAD_IMAGE_OVERVIEW=preload)
    try:
        train(daemon, env, tmp_path)
        # while training ran, nothing was encoded for the grid: no one asked
        wait_for(lambda: dict(grpc_cli(daemon, "status")["previews_at_rest"])["pending"] == 0, 10,
                 "the previews at rest")
        live = preview_stats(daemon)
        assert (live["preloaded"], live["encodes"]) == (0, 0)
        daemon.stop()
        daemon.start()
        if preload == "1":
            wait_for(lambda: preview_stats(daemon)["preloaded"] > 100, 10, "the preload at start")
            samples(daemon.stub(), 0, 64, include_raw_data=True)
            assert preview_stats(daemon)["hits"] > 0
        else:
            samples(daemon.stub(), 0, 64, include_raw_data=True)
            stats_ = preview_stats(daemon)
            assert stats_["preloaded"] == 0 and stats_["hits"] == 0 and stats_["encodes"] > 0
    finally:
        daemon.stop()


def test_cache_size_bounds_the_thumbnails_held(tmp_path: Path) -> None:
    daemon, env = start(tmp_path, WL_MAX_PREVIEW_CACHE_SIZE="10", WL_PRELOAD_IMAGE_OVERVIEW="0")
    try:
        train(daemon, env, tmp_path)
        samples(daemon.stub(), 0, 256, include_raw_data=True)
        held = preview_stats(daemon)
        assert held["entries"] == 10 and held["evictions"] > 0
    finally:
        daemon.stop()


@pytest.mark.parametrize("chunk", ["0", "8"])
def test_chunk_size_splits_on_demand_encoding(tmp_path: Path, chunk: str) -> None:
    daemon, env = start(tmp_path, WL_BATCH_CHUNK_SIZE=chunk, WL_PRELOAD_IMAGE_OVERVIEW="0")
    try:
        train(daemon, env, tmp_path)
        samples(daemon.stub(), 0, 64, include_raw_data=True)  # 64 misses: one chunk, or eight of 8
        assert preview_stats(daemon)["chunks"] == (1 if chunk == "0" else 8)
    finally:
        daemon.stop()


@pytest.mark.parametrize(("wait_ms", "applied"), [("5000", 1000), ("250", 250), ("0", 0)])
def test_warmup_wait_reaches_the_cache_clamped(tmp_path: Path, wait_ms: str, applied: int) -> None:
    # What the wait does (a reader takes the preload's thumbnail instead of encoding it twice) is shown
    # with a gated source in tests/unit/store/test_previews.py; here, that the daemon applies the setting.
    daemon, env = start(tmp_path, WL_PREVIEW_CACHE_WARMUP_WAIT_MS=wait_ms)
    try:
        Trainer(env, tmp_path, "--steps", "3").wait(60)
        assert preview_stats(daemon)["warmup_wait_ms"] == applied
    finally:
        daemon.stop()


@pytest.mark.parametrize(("size", "expected"), [("720", (4, 4)), ("2", (2, 2))])
def test_default_thumbnail_size_is_the_longest_edge(tmp_path: Path, size: str, expected: tuple[int, int]) -> None:
    daemon, env = start(tmp_path, WL_DEFAULT_THUMBNAIL_SIZE=size)
    try:
        train(daemon, env, tmp_path)
        with_image = [r for r in samples(daemon.stub(), include_raw_data=True).data_records if "raw_data" in stats(r)]
        raw = stats(with_image[0])["raw_data"]
        assert Image.open(io.BytesIO(bytes(int(v) for v in raw.value))).size == expected
    finally:
        daemon.stop()
