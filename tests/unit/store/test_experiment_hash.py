"""The experiment hash: three 8-hex parts; each changes with its own part of the state only."""

from __future__ import annotations

import numpy as np

from weightslabd.store.experiment_hash import data_hash, experiment_hash, hp_hash, is_hash
from weightslabd.store.samples import SampleTable


def table() -> SampleTable:
    samples = SampleTable()
    samples.ensure_split("train", 100)
    samples.ensure_split("eval", 20)
    return samples


def test_the_parts_follow_hyperparameters_model_and_data() -> None:
    samples = table()
    full = experiment_hash({"learning_rate": 0.1, "batch_size": 8}, "abcdef01", samples)
    assert is_hash(full) and full[8:16] == "abcdef01"
    assert hp_hash({"batch_size": 8, "learning_rate": 0.1}) == full[:8]  # key order does not matter
    assert hp_hash({"batch_size": 8, "learning_rate": 0.1, "is_training": False, "checkpoint_frequency": 5}) == \
        full[:8]  # pausing and the checkpoint schedule are not the experiment
    assert hp_hash({"batch_size": 8, "learning_rate": 0.2}) != full[:8]
    before = data_hash(samples)
    samples.splits["train"].set_denied(np.array([3]), True)
    denied = data_hash(samples)
    samples.splits["train"].edit_tags(np.array([5, 6]), ["hard"], "add")
    tagged = data_hash(samples)
    assert len({before, denied, tagged}) == 3
    samples.splits["train"].edit_tags(np.array([5, 6]), ["hard"], "remove")
    assert data_hash(samples) == denied  # a tag on no sample is no tag
    assert experiment_hash({}, None, samples)[8:16] == "00000000"
