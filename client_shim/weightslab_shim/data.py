"""A data loader with stable sample ids and a deny-aware sampler.

Sample ids are dataset indexes, stable for the life of the split. The sampler reads the deny mask
as it builds each batch, so a discard applied at a step boundary keeps the sample out of every
batch drawn after it, mid-epoch included.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np

from .preview_offers import PathOf


class DenyAwareBatchSampler:
    def __init__(self, size: int, batch_size: int, shuffle: bool, drop_last: bool = False, seed: int = 0) -> None:
        self.size = size
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.denied = np.zeros(size, dtype=bool)
        self._rng = np.random.default_rng(seed)
        # Where an epoch stands, for checkpoints (checkpoints.py): its order, and after each batch handed
        # out, the position in that order that follows it. `resume_at` makes the next epoch continue one.
        self.order: np.ndarray | None = None
        self.marks: list[int] = []
        self.resume_at: tuple[np.ndarray, int] | None = None

    def _new_order(self) -> np.ndarray:
        return self._rng.permutation(self.size) if self.shuffle else np.arange(self.size)

    def _begin_epoch(self) -> tuple[np.ndarray, int]:
        """This epoch's order and the position to start at: a restored checkpoint's, or a new order."""
        if self.resume_at is not None:
            (order, start), self.resume_at = self.resume_at, None
        else:
            order, start = self._new_order(), 0
        self.order, self.marks = order, []
        return order, start

    def __iter__(self) -> Iterator[list[int]]:
        order, start = self._begin_epoch()
        batch: list[int] = []
        denied = self.denied
        for pos, i in enumerate(order[start:].tolist(), start + 1):
            if denied[i]:
                continue
            batch.append(i)
            if len(batch) >= self.batch_size:  # read live: a batch-size edit applies to the next batch
                self.marks.append(pos)
                yield batch
                batch = []
        if batch and not self.drop_last:
            self.marks.append(len(order))
            yield batch

    def __len__(self) -> int:
        active = self.size - int(self.denied.sum())
        return active // self.batch_size if self.drop_last else math.ceil(active / self.batch_size)


class _Indexed:
    """Dataset view whose items are (input, sample_id, target, *rest), as WeightsLab's loader yields them:
    whatever a dataset item carries after its target (boxes, masks, metadata) is kept, in order."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Any, ...]:
        item = self.dataset[index]
        if isinstance(item, (tuple, list)):
            if len(item) > 1:
                return (item[0], index, item[1], *item[2:])
            return item[0], index, -1
        return item, index, -1


def _path_lookup(dataset: Any, given: Any) -> PathOf | None:
    """Where each sample's original image file is, when known: `preview_paths=` (a list or a function of
    the sample id), else a torchvision-style `dataset.samples` / `dataset.imgs` of (path, target) pairs.
    The daemon makes thumbnails from the file (full resolution, before augmentation) when it can read it."""
    if callable(given):
        return lambda i: _text(given(i))
    pairs = given if given is not None else getattr(dataset, "samples", None) or getattr(dataset, "imgs", None)
    if not isinstance(pairs, (list, tuple)) or not pairs:
        return None
    first = pairs[0]
    if isinstance(first, (tuple, list)) and first and isinstance(first[0], (str, os.PathLike)):
        return lambda i: _text(pairs[i][0]) if 0 <= i < len(pairs) else None
    if isinstance(first, (str, os.PathLike)):
        return lambda i: _text(pairs[i]) if 0 <= i < len(pairs) else None
    return None


def _text(path: Any) -> str | None:
    return os.fspath(path) if isinstance(path, (str, os.PathLike)) else None


class WatchedLoader:
    """Yields `(inputs, sample_ids, targets, *rest)`: `rest` is what a dataset item carries after its target.
    Iterate an epoch with `for`, or call `next()` forever."""

    def __init__(self, dataset: Any, session: Any, loader_name: str | None = None, *, batch_size: int = 32,
                 shuffle: bool = False, is_training: bool = False, num_workers: int = 0,
                 drop_last: bool = False, collate_fn: Any = None, seed: int = 0, preview_paths: Any = None,
                 **loader_kwargs: Any) -> None:
        self.dataset = dataset
        self.path_of = _path_lookup(dataset, preview_paths)
        self.split = loader_name or ("train" if is_training else f"split{len(session.loaders)}")
        self.is_training = is_training
        self.sampler = DenyAwareBatchSampler(len(dataset), batch_size, shuffle, drop_last, seed)
        # a torchrun job (even of one rank: its epoch orders do not depend on the world size): this rank's share
        if getattr(session, "job", None) or getattr(session, "world_size", 1) > 1:
            from .distributed import ShardedBatchSampler

            self.sampler = ShardedBatchSampler(len(dataset), batch_size, shuffle, drop_last, seed,
                                               rank=session.rank, world_size=session.world_size)
        self._session = session
        self._iter: Iterator[Any] | None = None
        self.taken = 0
        torch = sys.modules.get("torch")
        self._loader: Any
        if torch is not None:
            from torch.utils.data import DataLoader

            self._loader = DataLoader(_Indexed(dataset), batch_sampler=self.sampler,  # type: ignore[arg-type]
                                      num_workers=num_workers, collate_fn=collate_fn, **loader_kwargs)
        else:
            self._loader = None
        session.loaders[self.split] = self
        session.register_split(self.split, len(dataset))

    @property
    def batch_size(self) -> int:
        return self.sampler.batch_size

    @batch_size.setter
    def batch_size(self, value: int) -> None:
        if value < 1:
            raise ValueError(f"batch size must be at least 1, not {value}")
        self.sampler.batch_size = value

    def set_denied(self, ids: np.ndarray, deny: bool) -> int:
        ids = ids[(ids >= 0) & (ids < self.sampler.size)]
        changed = int((self.sampler.denied[ids] != deny).sum())
        self.sampler.denied[ids] = deny
        return changed

    def active_count(self) -> int:
        return self.sampler.size - int(self.sampler.denied.sum())

    def __len__(self) -> int:
        return len(self.sampler)

    def _epoch(self) -> Iterator[Any]:
        """A new epoch's batches: the underlying iterator is made now (a torch DataLoader draws its base
        seed here), the sampler's order on the first batch."""
        self.taken = 0  # batches handed out this epoch (checkpoints read the sampler's mark of the last)
        if self._loader is not None:
            batches: Iterator[Any] = iter(self._loader)
        else:
            indexed = _Indexed(self.dataset)
            batches = (_stack([indexed[i] for i in b]) for b in self.sampler)
        return self._walk(batches)

    def _walk(self, batches: Iterator[Any]) -> Iterator[Any]:
        for batch in batches:
            self.taken += 1
            batch = self._without_denied(batch)  # worker processes built it before a later discard
            inputs, ids, targets = batch[0], batch[1], batch[2]
            self._session.note_inputs(self.split, ids, inputs, targets, self.path_of)
            self._session.current_split = self.split
            yield batch

    def _without_denied(self, batch: Any) -> Any:
        """Drop samples denied after their batch was built (prefetching workers); cheap when none is."""
        ids = np.asarray(batch[1].numpy() if hasattr(batch[1], "numpy") else batch[1]).reshape(-1)
        denied = self.sampler.denied
        ok = (ids >= 0) & (ids < denied.size)
        keep = ~denied[np.where(ok, ids, 0)] | ~ok
        if keep.all():
            return batch
        pick: Any = keep
        if hasattr(batch[1], "numpy"):
            import torch  # only with torch batches in hand

            pick = torch.from_numpy(keep)
        try:
            return type(batch)(part[pick] for part in batch) if isinstance(batch, tuple) else [
                part[pick] for part in batch]
        except (TypeError, IndexError):
            return batch  # parts that cannot be masked (dicts, lists of boxes): keep the batch whole

    def __iter__(self) -> Iterator[Any]:
        return self._epoch()

    def __next__(self) -> Any:
        for _ in range(2):  # a fresh epoch when the last one ran out
            if self._iter is None:
                self._iter = self._epoch()
            try:
                return next(self._iter)
            except StopIteration:
                self._iter = None
        raise StopIteration(f"loader {self.split!r} has no samples left in the loop")


def _stack(items: list[tuple[Any, ...]]) -> tuple[Any, ...]:
    xs, ids, ys, *rest = zip(*items, strict=True)
    extra = tuple(_column(values) for values in rest)
    return (np.stack([np.asarray(x) for x in xs]), np.asarray(ids, dtype=np.int64), np.asarray(ys), *extra)


def _column(values: tuple[Any, ...]) -> Any:
    """One extra field of a batch: stacked when every sample's value has the same shape, else a list
    (boxes per image, metadata dicts), as a collate_fn for detection data would leave them."""
    try:
        arrays = [np.asarray(v) for v in values]
        if all(a.dtype != object and a.shape == arrays[0].shape for a in arrays):
            return np.stack(arrays)
    except (TypeError, ValueError):
        pass
    return list(values)
