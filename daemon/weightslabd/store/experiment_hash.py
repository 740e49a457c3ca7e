"""The experiment hash: 24 hex characters naming what a run's state is made of, in three parts of 8.

    hyperparameters (8) + model architecture (8) + data state (8)

- hyperparameters: the first 8 hex of SHA-256 over the trainer's hyperparameters as canonical JSON
  (keys sorted, no spaces), leaving out the keys that steer the run but are not the experiment:
  `is_training` (pause/resume), `checkpoint_frequency`, `checkpoint_keep_last`.
- model: computed by the shim (weightslab_shim.checkpoints.model_hash): SHA-256 over each model's
  class and, in order, its state's names, shapes and dtypes. Weights do not enter it; architecture does.
- data: the first 8 hex of SHA-256 over every split in name order: its name and size, its deny mask
  (packed bits), then each tag in name order with the mask of the samples that carry it. A discard, a
  restore, or a tag added or removed changes it; training does not.

Two checkpoints of one run taken without an edit between them share a hash; a checkpoint is named
by its hash and its step (`HASH@STEP`).
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

import numpy as np

from weightslabd.store.samples import SampleTable

UNHASHED = frozenset({"is_training", "checkpoint_frequency", "checkpoint_keep_last"})
PART = re.compile(r"[0-9a-f]{8}")
FULL = re.compile(r"[0-9a-f]{24}")
NO_MODEL = "00000000"  # a trainer that registered no model


def hp_hash(hparams: dict[str, Any]) -> str:
    kept = {str(k): v for k, v in hparams.items() if k not in UNHASHED}
    text = json.dumps(kept, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def data_hash(samples: SampleTable) -> str:
    """Call under the run lock."""
    h = hashlib.sha256()
    for name in sorted(samples.splits):
        table = samples.splits[name]
        h.update(f"split\0{name}\0{table.size}\0".encode())
        h.update(np.packbits(table.denied).tobytes())
        for tag in sorted(table.tag_masks):
            mask = table.tag_masks[tag]
            if mask.any():
                h.update(f"tag\0{tag}\0".encode())
                h.update(np.packbits(mask).tobytes())
    return h.hexdigest()[:8]


def experiment_hash(hparams: dict[str, Any], model: str | None, samples: SampleTable) -> str:
    model_part = model if isinstance(model, str) and PART.fullmatch(model) else NO_MODEL
    return hp_hash(hparams) + model_part + data_hash(samples)


def is_hash(text: str) -> bool:
    return FULL.fullmatch(text) is not None
