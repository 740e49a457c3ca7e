"""Predictions in HDF5: real files round-tripped, reopened, damaged, and written to a failing disk."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from structlog.testing import capture_logs

from weightslabd.store.predictions_h5 import FILE_NAME, PredictionsH5


def steps_of(found: list[tuple[int, np.ndarray]]) -> list[int]:
    return [s for s, _ in found]


def test_round_trip_of_class_indexes(tmp_path: Path) -> None:
    path = tmp_path / FILE_NAME
    with PredictionsH5(path) as h5:
        h5.append("train", 0, np.array([3, 1, 2]), np.array([7, 8, 9]))
        h5.append("train", 1, np.array([1, 3]), np.array([4, 5]))
        h5.append("val", 1, np.array([1]), np.array([6]))
        found = h5.read("train", 1)
        assert [(s, int(p)) for s, p in found] == [(0, 8), (1, 4)]
        assert [(s, int(p)) for s, p in h5.read("val", 1)] == [(1, 6)]
        assert h5.read("train", 99) == [] and h5.read("nope", 1) == []
        assert h5.max_step("train") == 1 and h5.max_step("nope") is None
    with h5py.File(path, "r") as f:
        group = f["train"]
        assert group["step"][:].tolist() == [0, 0, 0, 1, 1]
        assert group["sample_id"][:].tolist() == [3, 1, 2, 1, 3]
        assert group["prediction"][:].tolist() == [7, 8, 9, 4, 5]
        assert group["step"].dtype == np.int64 and group["sample_id"].dtype == np.int32
        assert group["prediction"].compression == "gzip" and group["prediction"].maxshape == (None,)
        assert f["val"]["prediction"][:].tolist() == [6]


def test_the_file_is_private(tmp_path: Path) -> None:
    path = tmp_path / FILE_NAME
    with PredictionsH5(path) as h5:
        h5.append("train", 0, np.array([1]), np.array([2]))
    assert path.stat().st_mode & 0o777 == 0o600  # h5py alone would leave it at the umask's 0644


def test_round_trip_of_masks(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    masks = [rng.integers(0, 4, (5, 16, 12), dtype=np.uint8) for _ in range(3)]
    ids = np.arange(5)[::-1]
    with PredictionsH5(tmp_path / FILE_NAME, flush_rows=7) as h5:
        for step, m in enumerate(masks):
            h5.append("train", step * 10, ids, m)
        found = h5.read("train", 4)
    assert steps_of(found) == [0, 10, 20]
    for (_, got), m in zip(found, masks, strict=True):
        assert got.dtype == np.uint8 and got.shape == (16, 12)
        assert np.array_equal(got, m[0])  # sample 4 is row 0
    with h5py.File(tmp_path / FILE_NAME, "r") as f:
        pred = f["train"]["prediction"]
        assert pred.shape == (15, 16, 12) and pred.maxshape == (None, 16, 12)
        assert pred.chunks is not None and pred.chunks[1:] == (16, 12)


def test_another_per_sample_shape_starts_another_set(tmp_path: Path) -> None:
    path = tmp_path / FILE_NAME
    with PredictionsH5(path) as h5:
        h5.append("train", 0, np.array([0, 1]), np.zeros((2, 3), dtype=np.float32))
        h5.append("train", 1, np.array([0]), np.ones((1, 4), dtype=np.float32))
        h5.append("train", 2, np.array([0]), np.full((1, 3), 2, dtype=np.float32))
        h5.append("train", 3, np.array([0]), np.array([5], dtype=np.int64))  # class index now
        found = h5.read("train", 0)
    assert steps_of(found) == [0, 1, 2, 3]
    assert [p.shape for _, p in found] == [(3,), (4,), (3,), ()]
    assert found[2][1].tolist() == [2, 2, 2] and int(found[3][1]) == 5
    with h5py.File(path, "r") as f:
        assert sorted(f["train"]) == ["prediction", "prediction_1", "prediction_2", "sample_id", "sample_id_1",
                                      "sample_id_2", "step", "step_1", "step_2"]
        assert f["train"]["prediction"].shape == (3, 3)
        assert f["train"]["prediction_1"].shape == (1, 4)


def test_reopen_appends(tmp_path: Path) -> None:
    path = tmp_path / FILE_NAME
    with PredictionsH5(path) as h5:
        h5.append("train", 0, np.array([0, 1]), np.array([1, 2]))
        h5.append("train", 0, np.array([2]), np.ones((1, 2)))
    with PredictionsH5(path) as h5:
        assert h5.max_step("train") == 0
        h5.append("train", 1, np.array([0, 1]), np.array([3, 4]))
        h5.append("train", 1, np.array([2]), np.full((1, 2), 7.0))
        h5.append("train", 2, np.array([2]), np.ones((1, 5)))
        assert [(s, int(p)) for s, p in h5.read("train", 1)] == [(0, 2), (1, 4)]
        assert [(s, p.tolist()) for s, p in h5.read("train", 2)] == [(0, [1.0, 1.0]), (1, [7.0, 7.0]),
                                                                    (2, [1.0] * 5)]
    with h5py.File(path, "r") as f:
        assert f["train"]["step"].shape == (4,) and f["train"]["step_1"].shape == (2,)
        assert f["train"]["prediction_2"].shape == (1, 5)
        assert f.attrs["format"] == "weightslabd-predictions/1"


def test_flush_every_n_rows_and_on_close(tmp_path: Path) -> None:
    path = tmp_path / FILE_NAME
    h5 = PredictionsH5(path, flush_rows=10)
    h5.append("train", 0, np.arange(4), np.arange(4))
    h5.append("train", 1, np.arange(4), np.arange(4))
    assert h5.pending_rows == 8 and h5.written_rows == 0
    h5.append("train", 2, np.arange(4), np.arange(4))
    assert h5.pending_rows == 0 and h5.written_rows == 12
    h5.append("train", 3, np.arange(4), np.arange(4))
    assert h5.pending_rows == 4
    h5.close()
    h5.close()  # idempotent
    with h5py.File(path, "r") as f:
        assert f["train"]["step"][:].tolist() == [0] * 4 + [1] * 4 + [2] * 4 + [3] * 4
    with capture_logs() as logs:
        h5.append("train", 4, np.arange(2), np.arange(2))  # after close: counted, not raised
    assert h5.dropped_rows == 2 and logs


def test_appended_arrays_are_copied(tmp_path: Path) -> None:
    with PredictionsH5(tmp_path / FILE_NAME) as h5:
        ids, preds = np.array([0, 1]), np.array([5, 6])
        h5.append("train", 0, ids, preds)
        ids[:] = 9
        preds[:] = 0
        assert [(s, int(p)) for s, p in h5.read("train", 1)] == [(0, 6)]


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty-layout"])
def test_unreadable_file_is_moved_aside(tmp_path: Path, damage: str) -> None:
    path = tmp_path / FILE_NAME
    if damage == "garbage":
        path.write_bytes(b"not an hdf5 file at all " * 100)
    else:
        with PredictionsH5(path) as h5:
            h5.append("train", 0, np.arange(5000), np.arange(5000))
        if damage == "truncated":
            data = path.read_bytes()
            path.write_bytes(data[: len(data) // 2])
        else:  # opens, but a set's dataset is not a dataset
            with h5py.File(path, "a") as f:
                del f["train"]["prediction"]
                f["train"].create_group("prediction")
                f["train"]["prediction"].attrs["x"] = 1
    with capture_logs() as logs:
        h5 = PredictionsH5(path)
    aside = list(tmp_path.glob(f"{FILE_NAME}.corrupt-*"))
    if damage == "empty-layout":  # an odd layout is skipped, not mistaken for damage
        assert aside == []
        assert any(e["event"].startswith("incomplete prediction set") for e in logs)
    else:
        assert len(aside) == 1
        assert any(e["log_level"] == "error" and "moved aside" in e["event"] for e in logs)
    h5.append("train", 7, np.array([1]), np.array([3]))
    assert [(s, int(p)) for s, p in h5.read("train", 1)][-1] == (7, 3)
    h5.close()
    with h5py.File(path, "r") as f:
        assert "train" in f


def test_locked_file_is_not_moved_aside(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / FILE_NAME
    with PredictionsH5(path) as h5:
        h5.append("train", 0, np.array([0]), np.array([1]))
    real = h5py.File

    def locked(*args: Any, **kwargs: Any) -> h5py.File:
        raise BlockingIOError(errno.EAGAIN, "Unable to open file (unable to lock file, errno = 11)")

    monkeypatch.setattr(h5py, "File", locked)
    with capture_logs() as logs:
        h5 = PredictionsH5(path, retry_s=0.0)
        h5.append("train", 1, np.array([0]), np.array([2]))
        assert h5.flush() is False
    assert not list(tmp_path.glob("*.corrupt-*"))
    assert [e["event"] for e in logs if e["log_level"] == "error"] == [
        "predictions file cannot be opened; buffering"]
    monkeypatch.setattr(h5py, "File", real)
    assert h5.flush() is True
    assert [(s, int(p)) for s, p in h5.read("train", 0)] == [(0, 1), (1, 2)]
    h5.close()


def test_a_full_disk_never_raises_into_the_caller(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / FILE_NAME
    h5 = PredictionsH5(path, flush_rows=4, max_buffer_bytes=40 * (8 + 12), retry_s=0.0)
    h5.append("train", 0, np.arange(4), np.arange(4))  # written
    real_setitem = h5py.Dataset.__setitem__

    def full(self: h5py.Dataset, key: Any, value: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(h5py.Dataset, "__setitem__", full)
    with capture_logs() as logs:
        for step in range(1, 20):
            h5.append("train", step, np.arange(4), np.arange(4))  # must not raise
        assert h5.flush() is False
    errors = [e["event"] for e in logs if e["log_level"] == "error"]
    assert errors == ["predictions write failed; buffering", "predictions buffer full: dropping rows until a write "
                      "succeeds"]  # each once
    assert h5.pending_rows == 40 and h5.dropped_rows == 19 * 4 - 40
    monkeypatch.setattr(h5py.Dataset, "__setitem__", real_setitem)
    assert h5.flush() is True
    assert h5.pending_rows == 0
    h5.close()
    with h5py.File(path, "r") as f:
        assert f["train"]["step"][:].tolist() == [0] * 4 + [s for s in range(1, 11) for _ in range(4)]
        assert len(f["train"]["prediction"]) == len(f["train"]["sample_id"]) == 44


def test_a_flush_that_dies_half_way_is_overwritten(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / FILE_NAME
    h5 = PredictionsH5(path, retry_s=0.0)
    h5.append("train", 0, np.arange(3), np.arange(3))
    assert h5.flush()
    real_setitem = h5py.Dataset.__setitem__

    def fail_on_predictions(self: h5py.Dataset, key: Any, value: Any) -> None:
        if self.name.endswith("/prediction"):
            raise OSError(errno.EIO, "Input/output error")
        real_setitem(self, key, value)

    monkeypatch.setattr(h5py.Dataset, "__setitem__", fail_on_predictions)
    h5.append("train", 1, np.arange(3), np.arange(3) + 10)
    assert h5.flush() is False  # step and sample_id written and grown, predictions not
    monkeypatch.setattr(h5py.Dataset, "__setitem__", real_setitem)
    with PredictionsH5(path) as other_view:  # pretend the daemon died now: the committed rows are 3
        pass
    del other_view
    h5.append("train", 2, np.arange(3), np.arange(3) + 20)
    h5.close()
    with h5py.File(path, "r") as f:
        g = f["train"]
        assert g["step"][:].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
        assert g["prediction"][:].tolist() == [0, 1, 2, 10, 11, 12, 20, 21, 22]


def test_rows_that_cannot_be_stored_are_counted(tmp_path: Path) -> None:
    with PredictionsH5(tmp_path / FILE_NAME) as h5, capture_logs() as logs:
        h5.append("train", 0, np.arange(3), np.arange(2))  # length mismatch
        h5.append("train", 0, np.arange(2), np.array(["a", "b"], dtype=object))
        h5.append("train", 0, np.arange(2), np.array(["a", "b"]))
        h5.append("train", 0, np.arange(2), np.zeros((2, 0)))
        h5.append("train", 0, np.arange(3), np.arange(2))  # the same reason again: logged once
        h5.append("train", 0, np.empty(0, dtype=np.int64), np.empty(0))
        assert h5.dropped_rows == 3 + 2 + 2 + 2 + 3
        assert h5.read("train", 0) == []
    assert len([e for e in logs if e["log_level"] == "error"]) == 2


def test_split_names_that_are_not_plain_hdf5_names(tmp_path: Path) -> None:
    path = tmp_path / FILE_NAME
    with PredictionsH5(path) as h5:
        for split in ("val/holdout", ".", "", "a b"):
            h5.append(split, 0, np.array([1]), np.array([len(split)]))
    with PredictionsH5(path) as h5:
        for split in ("val/holdout", ".", "", "a b"):
            assert [(s, int(p)) for s, p in h5.read(split, 1)] == [(0, len(split))]
    with h5py.File(path, "r") as f:
        assert sorted(f.attrs.get("format") and f.keys()) == sorted(["val%2Fholdout", "%2E", "%00", "a b"])


def test_an_empty_file_is_started_afresh(tmp_path: Path) -> None:
    path = tmp_path / FILE_NAME
    path.write_bytes(b"")
    with PredictionsH5(path) as h5:
        h5.append("train", 0, np.arange(3), np.arange(3))
        assert [(s, int(p)) for s, p in h5.read("train", 2)] == [(0, 2)]


def test_rows_hdf5_refuses_do_not_block_the_others(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    h5 = PredictionsH5(tmp_path / FILE_NAME)
    real_write = PredictionsH5._write

    def picky(self: PredictionsH5, key: Any, pend: Any) -> None:
        if key[0] == "bad":
            raise ValueError("cannot store this")
        real_write(self, key, pend)

    monkeypatch.setattr(PredictionsH5, "_write", picky)
    h5.append("bad", 0, np.arange(2), np.arange(2))
    h5.append("train", 0, np.arange(2), np.arange(2))
    assert h5.flush() is True
    assert h5.dropped_rows == 2 and h5.pending_rows == 0
    assert [(s, int(p)) for s, p in h5.read("train", 1)] == [(0, 1)]
    h5.close()


def test_floats_are_stored_plain_and_the_rest_compressed(tmp_path: Path) -> None:
    path = tmp_path / FILE_NAME
    logits = np.random.default_rng(0).standard_normal((4, 10)).astype(np.float32)
    with PredictionsH5(path) as h5:
        h5.append("train", 0, np.arange(4), logits)
        h5.append("val", 0, np.arange(4), np.arange(4))
    with PredictionsH5(path, compress_floats=True) as h5:
        h5.append("test", 0, np.arange(4), logits)
        assert np.array_equal(h5.read("train", 2)[0][1], logits[2])
    with h5py.File(path, "r") as f:
        assert f["train"]["prediction"].compression is None
        assert f["train"]["step"].compression == "gzip"
        assert f["val"]["prediction"].compression == "gzip"
        assert f["test"]["prediction"].compression == "gzip"
