"""What a preview costs on the wire and on disk: inputs arrive thinned to at most 256 px a side, each
sample is kept at rest as one encoded image of at most 32 KB, a sample whose image file the daemon reads
too sends no pixels at all, and the Studio's modal still shows each sample at the resolution kept
(224x224 RGB whole), served from the encoded store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from weightslabd.store.framedlog import read_frames
from weightslabd.store.preview_encoder import MAX_BYTES
from weightslabd.store.preview_log import LOG, Entry, unpack_entry

from .harness import Daemon, Trainer, history, run_folder, wait_for
from .test_dataplane import image, samples, stats


def stored(tmp_path: Path) -> list[Entry]:
    """Every preview entry at rest (read-only: the daemon may still be writing); frame 0 is the header."""
    return [unpack_entry(frame) for _, frame in list(read_frames(run_folder(tmp_path) / LOG))[1:]]


def modal(daemon: Daemon, sample_id: int) -> Any:
    """The Studio's modal: one record at full resolution (resize -100)."""
    reply = samples(daemon.stub(), sample_id, 1, include_raw_data=True, resize_width=-100, resize_height=-100)
    return reply.data_records[0]


@pytest.mark.timeout(90)
@pytest.mark.parametrize(("shape", "kept"), [((3, 224, 224), (224, 224)), ((3, 600, 300), (100, 200))],
                         ids=["224-rgb-whole", "600x300-thinned"])
def test_inputs_arrive_thinned_are_kept_encoded_and_the_modal_shows_what_was_kept(
        daemon: Daemon, env: dict[str, str], tmp_path: Path, shape: tuple[int, int, int],
        kept: tuple[int, int]) -> None:
    trainer = Trainer(env, tmp_path, "--steps", "150", "--step-sleep", "0.004", "--size", "32", "--batch", "8",
                      "--shape", ",".join(map(str, shape)))
    trainer.wait(60)
    wait_for(lambda: len(history(daemon.stub())) >= 150, 10, "the run's records")
    entries = wait_for(lambda: (e := stored(tmp_path)) and len(e) >= 32 and e, 20, "every sample's preview at rest")
    assert sorted(e.sample_id for e in entries) == list(range(32))  # one entry per sample
    # uniform noise: a JPEG q85 of it is ~38 KB at 224 px, so this also shows the byte bound holding
    assert {(e.image.fmt, e.image.size) for e in entries if e.image} == {("JPEG", kept)}
    assert max(len(e.image.data) for e in entries if e.image) <= MAX_BYTES
    grid = samples(daemon.stub(), include_raw_data=True, resize_width=64, resize_height=64)  # a grid's cells
    shown = {r.sample_id for r in grid.data_records if "raw_data" in stats(r)}
    assert len(shown) == 32  # every sample's image
    assert {image(r).size for r in grid.data_records} == {tuple(64 * k // max(kept) for k in kept)}  # resized
    sid = next(iter(shown))
    record = modal(daemon, sid)
    assert image(record).size == kept
    at_rest = next(e.image for e in entries if e.sample_id == sid)
    assert at_rest is not None and bytes(int(v) for v in stats(record)["raw_data"].value) == at_rest.data


@pytest.mark.timeout(90)
def test_a_sample_whose_file_the_daemon_reads_sends_no_pixels(daemon: Daemon, env: dict[str, str],
                                                               tmp_path: Path) -> None:
    files = tmp_path / "images"
    Trainer(env, tmp_path, "--steps", "120", "--step-sleep", "0.004", "--image-files", str(files)).wait(60)
    wait_for(lambda: len(history(daemon.stub())) >= 120, 10, "the run's records")
    entries = wait_for(lambda: (e := stored(tmp_path)) and len(e) > 128 and e, 20, "the previews at rest")
    with_pixels = {e.sample_id for e in entries if e.image is not None}
    assert with_pixels <= {7}  # only the sample whose file is missing sends its tensor
    assert all(e.path for e in entries if e.sample_id != 7)  # the others: the path alone
    sizes = {r.sample_id: image(r).size for r in samples(daemon.stub(), include_raw_data=True).data_records
             if "raw_data" in stats(r)}
    assert len(sizes) > 128 and {size for sid, size in sizes.items() if sid != 7} == {(40, 24)}  # from the files
