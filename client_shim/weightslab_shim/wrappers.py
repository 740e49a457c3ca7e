"""Wrappers for the objects a training loop calls: the step boundary and signal-recording callables."""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import Any, Literal

from .session import Session


class StepContext:
    """`with` marks one step: commands apply on entry (a pause waits there), the record goes out on exit."""

    def __init__(self, session: Callable[[], Session], *, training: bool) -> None:
        self._session = session
        self.training = training

    def __enter__(self) -> StepContext:
        self._session().begin_step(training=self.training)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> Literal[False]:
        self._session().end_step(training=self.training and exc_type is None)
        return False

    def __call__(self) -> StepContext:
        return self


class SignalFunction:
    """A loss or metric that, called with batch_ids=, records its per-sample values under `name`."""

    def __init__(self, fn: Any, session: Session, name: str) -> None:
        self.fn = fn
        self.name = name
        self._session = session

    def __call__(self, *args: Any, batch_ids: Any = None, preds: Any = None, **kwargs: Any) -> Any:
        out = self.fn(*args, **kwargs)
        if batch_ids is None:
            return out
        s = self._session
        split = s.current_split
        targets = args[1] if len(args) > 1 else kwargs.get("target", kwargs.get("targets"))
        if getattr(out, "ndim", 0) > 0:
            s.add_signal(self.name, split, batch_ids, out, targets, preds)
        else:
            s.add_scalar(self.name, out)
            s.add_batch(split, batch_ids, targets, preds)
        return out

    def __getattr__(self, item: str) -> Any:
        return getattr(self.fn, item)
