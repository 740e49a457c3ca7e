"""Which samples a preview is sent of: each sample whose preview the daemon lacks, once, bounded per step.

The loader offers every batch it hands out (`PreviewOffers.offer`). On the training thread an offer
costs a dict lookup and, in a first epoch, an append: once the daemon has a split's every preview
(later epochs) there is nothing to do; until then the batch is kept for the step's preview record.
Which of its samples the daemon lacks, their image paths, the 8-bit reduction of their inputs: all of
it is worked out when the publisher writes the record, on its thread (`PreviewRecord`). A batch with a
tensor on a GPU is the exception: its pick and reduction are queued on the user's stream at once, so
they read the batch before the user's next kernels can change it (a CPU batch is read later, as every
value the shim publishes is).

`have` is a mask per split of the samples the daemon has a preview of: the daemon's welcome sends it,
samples are marked as they are picked and unmarked when their record is dropped.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from . import records, wire
from .previews import preview_bytes
from .previews import reduce as reduce_previews
from .publisher import Content
from .records import SEP
from .tensors import Deferred, Lazy, Staged, hold, nbytes_of, take, to_numpy

PREVIEWS_PER_STEP = 64
PREVIEW_BYTES_SHARE = 4  # previews of one step take at most 1/4 of the largest record

Fields = list[tuple[str, Staged | Lazy | Deferred]]
PathOf = Callable[[int], "str | None"]
Offer = tuple[str, Any, Any, Any, "PathOf | None"]  # split, ids, inputs, targets, path_of


class PreviewRecord:
    """A step's preview record whose CPU batches are picked when the publisher writes it, on its thread
    (the Publisher calls it for its fields; calling it again gives the same fields)."""

    __slots__ = ("fields", "held", "_offers", "_pick")

    def __init__(self, picked: Fields, offers: list[Offer], pick: Callable[[Fields, Offer], None],
                 held: int) -> None:
        self.fields = picked  # GPU batches' previews, picked already; the CPU batches' join them
        self.held = held  # bytes of the user's inputs this record keeps alive until it is written
        self._offers = offers
        self._pick = pick

    def ready(self) -> bool:
        return all(value.ready() for _, value in self.fields)

    def __call__(self) -> Fields:
        offers, self._offers = self._offers, []
        for offer in offers:
            self._pick(self.fields, offer)
        return self.fields


class PreviewOffers:
    def __init__(self) -> None:
        self.have: dict[str, np.ndarray] = {}
        self.reads_files = False  # the daemon reads the image files we name: such samples send no pixels
        self.budget = 0  # bytes of previews a record may carry (0: no ring, nothing is kept)
        self._missing: dict[str, tuple[np.ndarray, int, int]] = {}  # per split: (`have`, samples it lacks, gen)
        self._unmarked = 0  # previews given back after a drop, so far
        self._picked: Fields = []
        self._offers: list[Offer] = []
        self._held = 0

    def register(self, split: str, size: int) -> None:
        self.have.setdefault(split, np.zeros(size, dtype=bool))

    def welcome(self, have: Mapping[str, str], splits: Mapping[str, int], reads_files: bool) -> None:
        """The daemon's masks of the previews it has (control thread)."""
        self.reads_files = reads_files
        for split, size in list(splits.items()):
            packed = have.get(split)
            self.have[split] = wire.unpack_mask(packed, size) if packed else np.zeros(size, dtype=bool)

    # -- the training thread ---------------------------------------------------------------------

    def offer(self, split: str, ids: Any, inputs: Any, targets: Any = None, path_of: PathOf | None = None) -> None:
        """A batch the loader hands out: kept for this step's record unless the daemon has every preview."""
        have = self.have.get(split)
        if have is None or self.budget <= 0:
            return
        missing = self._missing.get(split)
        if missing is not None and missing[0] is have and missing[1] == 0 and missing[2] == self._unmarked:
            return  # the daemon has every sample's preview: nothing to look up (later epochs)
        offer = (split, ids, inputs, targets, path_of)
        if _on_device(inputs, ids, targets):
            self.pick(self._picked, offer)
        else:
            self._offers.append(offer)
            self._held += nbytes_of(inputs)

    def take(self) -> Fields | PreviewRecord | None:
        """What this step offered, as its preview record (None: nothing), and a new step begins."""
        picked, offers = self._picked, self._offers
        if not picked and not offers:
            return None
        self._picked, self._offers = [], []
        held, self._held = self._held, 0
        return PreviewRecord(picked, offers, self.pick, held) if offers else picked

    # -- where the pick runs (the publisher's thread; the training thread for a GPU batch) ---------------

    def pick(self, fields: Fields, offer: Offer) -> None:
        """Add to `fields` the previews of the offered batch's samples that the daemon lacks, within the
        record's budget, and mark them sent."""
        split, ids, inputs, targets, path_of = offer
        have = self.have.get(split)
        if have is None:
            return
        missing, gen = self._missing.get(split), self._unmarked
        id_arr = to_numpy(ids).astype(np.int64, copy=False).reshape(-1)
        in_range = (id_arr >= 0) & (id_arr < have.size)
        need = np.flatnonzero(in_range & ~have[np.where(in_range, id_arr, 0)])[:PREVIEWS_PER_STEP]
        if need.size == 0:
            if missing is None or missing[0] is not have:  # a mask from a welcome: count what it lacks once
                self._missing[split] = (have, have.size - int(np.count_nonzero(have)), gen)
            return
        paths: list[str | None] = []
        if path_of is None:
            pixels, named, by_file = need, need[:0], None
        else:
            paths = [path_of(int(i)) for i in id_arr[need]]
            # A sample whose image file the daemon reads too sends only the path (the daemon's thumbnails
            # come from the file, at full resolution); the others send their input, thinned and 8-bit.
            by_file = np.array([bool(p) and self.reads_files and _readable(p) for p in paths], dtype=bool)
            pixels, named = need[~by_file], need[by_file]
        per_sample = max(1, preview_bytes(inputs, None, 1))
        budget = self.budget - sum(value.nbytes() for _, value in fields)
        pixels = pixels[: max(0, budget // per_sample)]
        if pixels.size == 0 and named.size == 0:
            return  # too big for this record's share: these samples are offered again when seen again
        n = len(fields)
        if named.size and by_file is not None:
            have[id_arr[named]] = True
            fields.append((f"pids{SEP}{split}{SEP}{n}", Staged(id_arr[named].astype(np.int64))))
            fields.append((f"xpath{SEP}{split}{SEP}{n}", Staged(records.json_field(
                {"paths": [paths[int(i)] for i in np.flatnonzero(by_file)]}))))
            if targets is not None:
                fields.append((f"ptgt{SEP}{split}{SEP}{n}", hold(take(targets, named))))
            n += 1
        if pixels.size:
            whole = pixels.size == id_arr.size  # every sample of the batch, in order (a first epoch): no picking
            chosen = id_arr.copy() if whole else id_arr[pixels]
            have[chosen] = True
            fields.append((f"pids{SEP}{split}{SEP}{n}", Staged(chosen)))
            fields.append((f"x{SEP}{split}{SEP}{n}", reduce_previews(inputs, None if whole else pixels)))
            if targets is not None:
                fields.append((f"ptgt{SEP}{split}{SEP}{n}", hold(targets if whole else take(targets, pixels))))
            if by_file is not None:
                sent_paths = [paths[int(i)] for i in np.flatnonzero(~by_file)][: pixels.size]
                if any(sent_paths):  # a file the daemon may still read better than the thinned tensor
                    fields.append((f"xpath{SEP}{split}{SEP}{n}", Staged(records.json_field({"paths": sent_paths}))))
        # Samples still without a preview: counted down as they are sent, and counted again where the
        # count reaches 0 (a batch may hold an id twice), so that later epochs skip the lookup above.
        left = missing[1] - pixels.size - named.size if missing is not None and missing[0] is have else 0
        if left <= 0:
            left = have.size - int(np.count_nonzero(have))
        self._missing[split] = (have, left, gen)  # a drop meanwhile (another `gen`) voids a 0

    def unmark(self, fields: Content) -> None:
        """A record that could not be written: its samples are offered again when seen again."""
        for name, staged in fields if isinstance(fields, list) else fields.fields:
            parts = name.split(SEP)
            have = self.have.get(parts[1]) if parts[0] == "pids" else None
            if have is not None:
                have[staged.array()] = False
                self._unmarked += 1  # a count of 0 taken before this no longer holds


def _on_device(*values: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and any(isinstance(v, torch.Tensor) and v.is_cuda for v in values)


def _readable(path: str | None) -> bool:
    return bool(path) and os.access(str(path), os.R_OK)
