"""What a preview costs on the wire and on disk: inputs arrive thinned to at most 256 px a side and 8-bit,
a sample whose image file the daemon reads too sends no pixels at all, and the Studio's modal still shows
each sample at the resolution kept (224x224 RGB whole)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from weightslab_shim import records
from weightslabd.store.framedlog import read_frames

from .harness import Daemon, Trainer, history, run_folder, wait_for
from .test_dataplane import image, samples, stats


def preview_fields(tmp_path: Path) -> list[dict[str, np.ndarray]]:
    """Every preview record the daemon stored, decoded (read-only: the daemon may still be writing)."""
    return [records.decode(memoryview(frame)) for _, frame in read_frames(run_folder(tmp_path) / "previews.log")]


def pixels(fields: list[dict[str, np.ndarray]]) -> list[np.ndarray]:
    return [arr for record in fields for key, arr in record.items() if key.startswith("x" + records.SEP)]


def modal(daemon: Daemon, sample_id: int) -> Any:
    """The Studio's modal: one record at full resolution (resize -100)."""
    reply = samples(daemon.stub(), sample_id, 1, include_raw_data=True, resize_width=-100, resize_height=-100)
    return image(reply.data_records[0])


@pytest.mark.timeout(90)
@pytest.mark.parametrize(("shape", "kept"), [((3, 224, 224), (224, 224)), ((3, 600, 300), (100, 200))],
                         ids=["224-rgb-whole", "600x300-thinned"])
def test_inputs_arrive_thinned_and_8_bit_and_the_modal_shows_what_was_kept(
        daemon: Daemon, env: dict[str, str], tmp_path: Path, shape: tuple[int, int, int],
        kept: tuple[int, int]) -> None:
    trainer = Trainer(env, tmp_path, "--steps", "150", "--step-sleep", "0.004", "--size", "32", "--batch", "8",
                      "--shape", ",".join(map(str, shape)))
    trainer.wait(60)
    wait_for(lambda: len(history(daemon.stub())) >= 150, 10, "the run's records")
    sent = pixels(preview_fields(tmp_path))
    assert sent and all(arr.dtype == np.uint8 for arr in sent)
    assert {arr.shape[1:] for arr in sent} == {(3, kept[1], kept[0])}  # CHW; every 3rd pixel of 600 px
    grid = samples(daemon.stub(), include_raw_data=True, resize_width=64, resize_height=64)  # a grid's cells
    shown = {r.sample_id for r in grid.data_records if "raw_data" in stats(r)}
    assert len(shown) == 32  # every sample's image
    assert modal(daemon, next(iter(shown))).size == kept


@pytest.mark.timeout(90)
def test_a_sample_whose_file_the_daemon_reads_sends_no_pixels(daemon: Daemon, env: dict[str, str],
                                                               tmp_path: Path) -> None:
    files = tmp_path / "images"
    Trainer(env, tmp_path, "--steps", "120", "--step-sleep", "0.004", "--image-files", str(files)).wait(60)
    wait_for(lambda: len(history(daemon.stub())) >= 120, 10, "the run's records")
    fields = preview_fields(tmp_path)
    with_pixels = {int(i) for record in fields for key, ids in record.items()
                   if key.startswith("pids" + records.SEP)
                   and key.replace("pids", "x", 1) in record for i in ids.reshape(-1)}
    assert with_pixels <= {7}  # only the sample whose file is missing sends its tensor
    sizes = {r.sample_id: image(r).size for r in samples(daemon.stub(), include_raw_data=True).data_records
             if "raw_data" in stats(r)}
    assert len(sizes) > 128 and {size for sid, size in sizes.items() if sid != 7} == {(40, 24)}  # from the files
