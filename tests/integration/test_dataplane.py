"""The Studio's data plane over real gRPC: the grid's pages and stats, queries, tags and discards,
thumbnails, histograms and the chat box without a model."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from weightslabd.proto import experiment_service_pb2 as pb

from .harness import Daemon, Trainer, history, wait_for


def query(stub: Any, text: str, *, accumulate: bool = False, natural: bool = False) -> Any:
    return stub.ApplyDataQuery(pb.DataQueryRequest(query=text, accumulate=accumulate, is_natural_language=natural),
                               timeout=10)


def samples(stub: Any, start: int = 0, count: int = 256, **kw: Any) -> Any:
    return stub.GetDataSamples(pb.DataSamplesRequest(start_index=start, records_cnt=count, **kw), timeout=10)


def stats(record: Any) -> dict[str, Any]:
    return {s.name: s for s in record.data_stats}


def value(record: Any, name: str) -> float:
    return float(stats(record)[name].value[0])


def edit(stub: Any, stat: str, ids: list[int], *, tag: str = "", deny: bool = False,
         kind: int = pb.EDIT_ACCUMULATE) -> Any:
    return stub.EditDataSample(pb.DataEditsRequest(stat_name=stat, string_value=tag, bool_value=deny, type=kind,
                                                   samples_ids=ids, sample_origins=["train"] * len(ids)), timeout=10)


def image(record: Any) -> Image.Image:
    raw = stats(record)["raw_data"]
    data = bytes(int(v) for v in raw.value)
    return Image.open(io.BytesIO(data))


def trained(daemon: Daemon, env: dict[str, str], tmp_path: Path, steps: int = 120) -> Any:
    # Attached from the first step: inputs become previews only once the daemon is there.
    Trainer(env, tmp_path, "--steps", str(steps), "--step-sleep", "0.004", "--attach-first", "30").wait(60)
    stub = daemon.stub()
    wait_for(lambda: len(history(stub)) >= steps, 10, "the run's records")
    return stub


def test_grid_pages_carry_every_stat_the_studio_reads(daemon: Daemon, env: dict[str, str], tmp_path: Path) -> None:
    stub = trained(daemon, env, tmp_path)
    counts = query(stub, "")
    assert counts.success and counts.number_of_all_samples == 256
    assert counts.number_of_samples_in_the_loop == 256 and counts.number_of_discarded_samples == 0
    page = samples(stub, 0, 8, include_raw_data=True)
    assert page.success and [r.sample_id for r in page.data_records] == list(range(8))
    first = stats(page.data_records[0])
    assert first["origin"].value_string == "train" and first["deny_listed"].value[0] == 0.0
    assert first["tags"].value_string == "" and first["task_type"].value_string == "classification"
    assert {"label", "prediction", "loss", "encounters"} <= set(first)
    assert value(page.data_records[3], "label") == 3.0
    seen = [r for r in samples(stub).data_records if value(r, "encounters") > 0]
    assert seen and all(np.isfinite(value(r, "loss")) for r in seen)
    with_image = [r for r in samples(stub, include_raw_data=True).data_records if "raw_data" in stats(r)]
    assert len(with_image) > 128, "most samples were seen attached and have a thumbnail"
    assert image(with_image[0]).size == (4, 4)  # 4x4 inputs: never upscaled to 720
    only = samples(stub, 0, 2, stats_to_retrieve=["loss"])
    assert [s.name for s in only.data_records[0].data_stats] == ["loss"]  # no raw_data unless asked
    assert samples(stub, 250, 50).data_records[-1].sample_id == 255  # a page past the end is cut short
    assert not samples(stub, -1, 5).success


def test_thumbnails_follow_the_studio_resize_rules(daemon: Daemon, env: dict[str, str], tmp_path: Path) -> None:
    stub = trained(daemon, env, tmp_path)
    ids_with_image = [r.sample_id for r in samples(stub, 0, 256, include_raw_data=True).data_records
                      if "raw_data" in stats(r)]
    assert ids_with_image, "the trainer's inputs became thumbnails"
    start = ids_with_image[0]
    for width, height, size in ((0, 0, (4, 4)), (-50, -50, (2, 2)), (2, 2, (2, 2)), (100, 100, (4, 4)),
                                (-100, -100, (4, 4))):
        record = samples(stub, start, 1, include_raw_data=True, resize_width=width, resize_height=height)
        assert image(record.data_records[0]).size == size, (width, height)


def test_queries_filter_and_sort_the_view_and_a_bad_one_changes_nothing(
        daemon: Daemon, env: dict[str, str], tmp_path: Path) -> None:
    stub = trained(daemon, env, tmp_path)
    sorted_reply = query(stub, "sortby loss desc")
    assert sorted_reply.success, sorted_reply.message
    losses = [value(r, "loss") for r in samples(stub).data_records]
    finite = [v for v in losses if np.isfinite(v)]
    assert finite == sorted(finite, reverse=True) and losses[:len(finite)] == finite  # unseen (NaN) last
    bad = query(stub, "loss >")
    assert not bad.success and "position" in bad.message
    assert [value(r, "loss") for r in samples(stub).data_records][:5] == losses[:5]  # the view stayed
    label3 = query(stub, "label == 3")
    assert label3.success and label3.number_of_all_samples == 26  # ids 3, 13, ..., 253
    assert {value(r, "label") for r in samples(stub).data_records} == {3.0}
    narrowed = query(stub, "sample_id < 100", accumulate=True)
    assert narrowed.number_of_all_samples == 10
    assert query(stub, "reset").number_of_all_samples == 256
    unknown = query(stub, "lss > 1")
    assert not unknown.success and "unknown column 'lss'" in unknown.message
    natural = query(stub, "show me the worst samples", natural=True)  # no model configured: tests/integration/
    assert not natural.success and "docs/agent.md" in natural.message  # test_agent.py has the agent itself
    health = stub.CheckAgentHealth(pb.Empty(), timeout=5)
    assert health.available and "no model configured" in health.message


def test_tags_and_discards_are_journaled_counted_and_queryable(daemon: Daemon, env: dict[str, str],
                                                                tmp_path: Path) -> None:
    stub = trained(daemon, env, tmp_path)
    assert edit(stub, "tags", [3, 13], tag="bad").success
    assert edit(stub, "tags", [13, 20], tag="blurry;bad").success
    assert list(query(stub, "").unique_tags) == ["bad", "blurry"]
    assert query(stub, "has_tag bad").number_of_all_samples == 3
    tags = {r.sample_id: stats(r)["tags"].value_string for r in samples(stub).data_records}
    assert tags == {3: "bad", 13: "bad;blurry", 20: "bad;blurry"}
    assert edit(stub, "tags", [13], tag="bad", kind=pb.EDIT_REMOVE).success
    assert edit(stub, "tags", [20], tag="clean", kind=pb.EDIT_OVERRIDE).success
    query(stub, "reset")
    tags = {r.sample_id: stats(r)["tags"].value_string for r in samples(stub).data_records
            if stats(r)["tags"].value_string}
    assert tags == {3: "bad", 13: "blurry", 20: "clean"}
    reply = edit(stub, "deny_listed", [5, 6], deny=True)
    assert reply.success, reply.message
    counts = query(stub, "")
    assert (counts.number_of_samples_in_the_loop, counts.number_of_discarded_samples) == (254, 2)
    assert query(stub, "deny_listed == 1").number_of_all_samples == 2
    assert edit(stub, "deny_listed", [5], deny=False).success
    assert query(stub, "reset").number_of_discarded_samples == 1
    refused = stub.EditDataSample(pb.DataEditsRequest(stat_name="tags", string_value="x", type=pb.EDIT_ACCUMULATE,
                                                      samples_ids=[1, 9999], sample_origins=["train", "train"]))
    assert not refused.success and "9999" in refused.message
    assert "x" not in query(stub, "").unique_tags  # nothing applied from a refused edit
    assert not edit(stub, "label", [1]).success

    daemon.stop()
    daemon.start()  # everything above was journaled: a restarted daemon serves the same
    stub = daemon.stub()
    counts = query(stub, "")
    assert list(counts.unique_tags) == ["bad", "blurry", "clean"] and counts.number_of_discarded_samples == 1


def test_discard_through_the_grid_leaves_the_loop_at_the_acked_step(daemon: Daemon, env: dict[str, str],
                                                                     tmp_path: Path) -> None:
    trainer = Trainer(env, tmp_path, "--steps", "300", "--step-sleep", "0.004")
    stub = daemon.stub()
    wait_for(lambda: len(history(stub)) > 30, 10, "the first steps")
    gone = list(range(1, 256, 3))
    reply = edit(stub, "deny_listed", gone, deny=True)
    assert reply.success and "applied at step" in reply.message, reply.message
    step = int(reply.message.rsplit(" ", 1)[1])
    status = trainer.wait(60)
    by_step = dict(zip(status["step_of"], status["seen"], strict=True))
    assert not any(set(gone) & set(by_step[s]) for s in range(step, 300))
    assert any(set(gone) & set(by_step[s]) for s in range(step))


def test_histograms_bin_numeric_columns_and_count_categories(daemon: Daemon, env: dict[str, str],
                                                             tmp_path: Path) -> None:
    stub = trained(daemon, env, tmp_path)
    edit(stub, "deny_listed", [0, 1], deny=True)
    edit(stub, "tags", [2, 3], tag="odd")
    loss = stub.GetHistogram(pb.HistogramRequest(column="loss", max_bins=10), timeout=10)
    assert loss.success and not loss.is_categorical and 1 <= len(loss.bins) <= 10 and loss.total_rows == 256
    finite = [value(r, "loss") for r in samples(stub).data_records if np.isfinite(value(r, "loss"))]
    assert sum(b.count for b in loss.bins) == len(finite)
    assert all(sum(s.count for s in b.sub_bars) == b.count for b in loss.bins)
    label = stub.GetHistogram(pb.HistogramRequest(column="label", max_bins=100000), timeout=10)
    assert len(label.bins) <= 512
    origin = stub.GetHistogram(pb.HistogramRequest(column="origin"), timeout=10)
    assert origin.is_categorical and [(b.label, b.count) for b in origin.categorical_bars] == [("train", 256)]
    sub = {(s.origin, s.discarded): s.count for s in origin.categorical_bars[0].sub_bars}
    assert sub == {("train", False): 254, ("train", True): 2}
    tags = stub.GetHistogram(pb.HistogramRequest(column="tags"), timeout=10)
    assert {(b.label, b.count) for b in tags.categorical_bars} == {("odd", 2), ("(no tag)", 254)}
    assert not stub.GetHistogram(pb.HistogramRequest(column="nope"), timeout=10).success


def test_thumbnails_come_from_the_image_files_the_loader_names(daemon: Daemon, env: dict[str, str],
                                                                 tmp_path: Path) -> None:
    files = tmp_path / "images"
    Trainer(env, tmp_path, "--steps", "120", "--step-sleep", "0.004", "--image-files", str(files),
            "--attach-first", "30").wait(60)
    stub = daemon.stub()
    wait_for(lambda: len(history(stub)) >= 120, 10, "the run's records")
    sizes = {r.sample_id: image(r).size for r in samples(stub, include_raw_data=True).data_records
             if "raw_data" in stats(r)}
    assert len(sizes) > 128
    assert {size for sid, size in sizes.items() if sid != 7} == {(40, 24)}  # the file, not the 4x4 tensor
    if 7 in sizes:
        assert sizes[7] == (4, 4)  # its file is missing: the training tensor serves instead
    half = samples(stub, next(iter(sizes)), 1, include_raw_data=True, resize_width=-50, resize_height=-50)
    assert image(half.data_records[0]).size == (20, 12)
