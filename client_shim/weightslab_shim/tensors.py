"""Tensors to host arrays without stalling the trainer.

CPU tensors and numpy arrays are views (no copy). A CUDA tensor is copied device->host into pinned
staging with `non_blocking=True` on the current stream and an event recorded after it; the record is
written once the event has completed (`Staged.ready()` polls it), so the user's stream is never
synchronised on the hot path. torch is imported only if the caller already uses it.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np


def _torch() -> Any:
    return sys.modules.get("torch")


class Staged:
    """A host copy that may still be in flight."""

    __slots__ = ("_host", "_event")

    def __init__(self, host: Any, event: Any = None) -> None:
        self._host = host
        self._event = event

    def ready(self) -> bool:
        return self._event is None or bool(self._event.query())

    def array(self) -> np.ndarray:
        host = self._host
        if isinstance(host, np.ndarray):
            return host
        return np.asarray(host.numpy())


def stage(value: Any, dtype: Any = None) -> Staged:
    """Start moving `value` to the host; never blocks on a device."""
    torch = _torch()
    if torch is not None and isinstance(value, torch.Tensor):
        t = value.detach()
        if t.dtype in (torch.bfloat16, torch.float16) and dtype is None:
            t = t.float()
        if t.is_cuda:
            host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
            host.copy_(t, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            return Staged(host, event)
        arr = t.cpu().numpy()
        return Staged(arr if dtype is None else arr.astype(dtype, copy=False))
    arr = np.asarray(value)
    return Staged(arr if dtype is None else arr.astype(dtype, copy=False))


def to_numpy(value: Any, dtype: Any = None) -> np.ndarray:
    """Host array now; for a CUDA tensor this waits for its copy (only off the hot path)."""
    staged = stage(value, dtype)
    if staged._event is not None:
        staged._event.synchronize()
    return staged.array()


def ids_array(value: Any) -> np.ndarray:
    return to_numpy(value).astype(np.int64, copy=False).reshape(-1)
