"""Tensors to host arrays without stalling the trainer.

CPU tensors and numpy arrays are views (no copy). A CUDA tensor is copied device->host into pinned
staging with `non_blocking=True` on the current stream and an event recorded after it; the record is
written once the event has completed (`Staged.ready()` polls it), so the user's stream is never
synchronised on the hot path. torch is imported only if the caller already uses it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
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

    def nbytes(self) -> int:
        return nbytes_of(self._host)

    def array(self) -> np.ndarray:
        host = self._host
        if isinstance(host, np.ndarray):
            return host
        return np.asarray(host.numpy())


class Lazy:
    """A value kept as it is, converted to an array later, on the publisher's thread."""

    __slots__ = ("_value", "_dtype")

    def __init__(self, value: Any, dtype: Any) -> None:
        self._value = value
        self._dtype = dtype

    def ready(self) -> bool:
        return True

    def nbytes(self) -> int:
        return nbytes_of(self._value)

    def array(self) -> np.ndarray:
        return stage(self._value, self._dtype).array()


def hold(value: Any, dtype: Any = None) -> Staged | Lazy:
    """Keep `value` for the publisher: a CUDA tensor starts its device copy now, ordered on the
    user's stream; anything else is converted later, off the training thread."""
    torch = _torch()
    if torch is not None and isinstance(value, torch.Tensor) and value.is_cuda:
        return stage(value, dtype)
    return Lazy(value, dtype)


F32 = np.dtype(np.float32)
F64 = np.dtype(np.float64)
I64 = np.dtype(np.int64)


def stage(value: Any, dtype: Any = None) -> Staged:
    """Start moving `value` to the host; never blocks on a device."""
    if isinstance(value, np.ndarray):
        return Staged(value if dtype is None or value.dtype is dtype or value.dtype == dtype else value.astype(dtype))
    torch = _torch()
    if torch is not None and isinstance(value, torch.Tensor):
        t = value.detach() if value.requires_grad else value
        if t.dtype == torch.bfloat16 or t.dtype == torch.float16:
            t = t.float()  # numpy has no bfloat16; converting on the device keeps the copy async
        if not t.is_cuda:
            arr = t.numpy() if t.is_cpu else t.cpu().numpy()
            return Staged(arr if dtype is None or arr.dtype is dtype or arr.dtype == dtype else arr.astype(dtype))
        if dtype is not None:
            t = t.to(_TORCH_DTYPES.get(np.dtype(dtype), t.dtype))
        # pin_memory goes through torch's caching host allocator: no cudaHostAlloc per step.
        host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
        stream = torch.cuda.current_stream(t.device)  # the copy is queued on the tensor's device
        host.copy_(t, non_blocking=True)
        event = torch.cuda.Event()
        event.record(stream)
        return Staged(host, event)
    arr = np.asarray(value)
    return Staged(arr if dtype is None or arr.dtype == dtype else arr.astype(dtype))


def _torch_dtypes() -> dict[np.dtype[Any], Any]:
    torch = _torch()
    if torch is None:
        return {}
    return {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64,
            np.dtype(np.int64): torch.int64, np.dtype(np.int32): torch.int32}


class _LazyDtypes(dict):  # type: ignore[type-arg]
    """numpy -> torch dtypes, filled on first use (torch may be imported after the shim)."""

    def get(self, key: Any, default: Any = None) -> Any:
        if not self:
            self.update(_torch_dtypes())
        return super().get(key, default)


_TORCH_DTYPES = _LazyDtypes()


def to_numpy(value: Any, dtype: Any = None) -> np.ndarray:
    """Host array now; for a CUDA tensor this waits for its copy (only off the hot path)."""
    staged = stage(value, dtype)
    if staged._event is not None:
        staged._event.synchronize()
    return staged.array()


def take(values: Any, idx: np.ndarray) -> Any:
    """`values[idx]` for a tensor (a CUDA one indexed without waiting for its stream) or an array."""
    torch = _torch()
    if torch is not None and isinstance(values, torch.Tensor):
        index = torch.from_numpy(idx)
        if values.is_cuda:  # a pinned, non-blocking upload: a pageable one would wait for the stream
            index = index.pin_memory().to(values.device, non_blocking=True)
        return values[index]
    return np.asarray(values)[idx]


def nbytes_of(value: Any) -> int:
    """Size in bytes of a tensor or array-like, without copying a tensor to the host."""
    if hasattr(value, "element_size"):
        return int(value.element_size() * value.nelement())
    return int(np.asarray(value).nbytes)


class Deferred:
    """A value computed later, on the publisher's thread (`make` runs there, once). `held`: bytes of the
    user's data that `make` keeps alive until then (the publisher wakes early when they add up)."""

    __slots__ = ("_make", "_nbytes", "held")

    def __init__(self, make: Callable[[], np.ndarray], nbytes: int, held: int = 0) -> None:
        self._make = make
        self._nbytes = nbytes
        self.held = held

    def ready(self) -> bool:
        return True

    def nbytes(self) -> int:
        return self._nbytes

    def array(self) -> np.ndarray:
        return self._make()
