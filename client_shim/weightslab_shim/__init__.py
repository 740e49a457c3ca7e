"""weightslab_shim: the training-side half of weightslabd.

    import weightslab_shim as wl

    hp = wl.watch_or_edit({"learning_rate": 1e-3, "training_steps_to_do": 1000}, flag="hyperparameters")
    loader = wl.watch_or_edit(train_set, flag="data", loader_name="train", batch_size=64,
                              shuffle=True, is_training=True)
    model = wl.watch_or_edit(model, flag="model")
    optimizer = wl.watch_or_edit(optimizer, flag="optimizer")
    criterion = wl.watch_or_edit(nn.CrossEntropyLoss(reduction="none"), flag="loss", signal_name="train-loss")

    with wl.guard_training_context:          # the step boundary: edits apply here, a pause waits here
        inputs, ids, targets = next(loader)
        out = model(inputs)
        loss = criterion(out, targets, batch_ids=ids, preds=out.argmax(1))
        loss.mean().backward()
        optimizer.step()

Nothing in the loop changes when no daemon runs: the shim warns once and stays out of the way.

The shim owns the wire between trainer and daemon: `wire` (control messages and the protocol version),
`records` (the arrays in a ring record), `ring` (the shared-memory ring's layout) and `runtime` (the
private runtime directory, run ids and ring names). The daemon imports these, once, from here; the shim
imports nothing of the daemon, and needs only numpy and pyzmq (torch when the training uses it).
"""

from __future__ import annotations

from typing import Any

from .data import WatchedLoader
from .session import Session
from .wrappers import SignalFunction, StepContext

__all__ = [
    "watch_or_edit", "save_signals", "guard_training_context", "guard_testing_context", "step",
    "serve", "keep_serving", "start_training", "session", "close", "hyperparameters",
]

_session: Session | None = None


def session() -> Session:
    """The process's run (created on first use)."""
    global _session
    if _session is None:
        _session = Session()
    return _session


def watch_or_edit(obj: Any, obj_name: str | None = None, flag: str | None = None, **kwargs: Any) -> Any:
    """Register `obj` so the daemon can watch it and the user's edits reach it.

    flag: "hyperparameters" (a dict, edited in place), "data" (a dataset, returns a loader yielding
    (inputs, sample_ids, targets)), "model", "optimizer" (learning-rate edits go into its param groups),
    "loss" / "metric" / "signal" (a callable; called with batch_ids= it records one value per sample),
    "evaluation" (a callable run on each batch of an evaluation pass instead of model + losses).
    """
    s = session()
    kind = (flag or "").lower()
    if kind in ("hyperparameters", "hyperparams", "hp", "parameters"):
        if not isinstance(obj, dict):
            raise TypeError(f"hyperparameters must be a dict, not {type(obj).__name__}")
        s.register_hparams(obj)
        return obj
    if kind == "data":
        return WatchedLoader(obj, s, kwargs.pop("loader_name", None) or obj_name, **_loader_kwargs(kwargs))
    if kind == "model":
        s.models.append(obj)
        return obj
    if kind == "optimizer":
        s.optimizers.append(obj)
        return obj
    if kind in ("loss", "metric", "signal"):
        name = kwargs.get("signal_name") or obj_name or getattr(obj, "__class__", type(obj)).__name__
        wrapped = SignalFunction(obj, s, str(name))
        s.signal_functions.append(wrapped)
        return wrapped
    if kind == "evaluation":  # the script's own evaluation of one batch, fn(batch): docs/shim.md
        if not callable(obj):
            raise TypeError(f"an evaluation function must be callable, not {type(obj).__name__}")
        s.evaluation.function = obj
        return obj
    raise ValueError(f"unknown flag {flag!r}: expected hyperparameters, data, model, optimizer, loss, metric, "
                     "signal or evaluation")


def _loader_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    # WeightsLab options that have no meaning here are accepted and ignored.
    for ignored in ("preload_labels", "preload_metadata", "compute_hash", "enable_h5_persistence", "array_autoload",
                    "use_tags", "tags_mapping", "device", "log", "poll_interval", "defaults"):
        kwargs.pop(ignored, None)
    return kwargs


def save_signals(signals: dict[str, Any] | None = None, *, batch_ids: Any = None, preds: Any = None,
                 targets: Any = None, preds_raw: Any = None, origin: str | None = None,
                 step: int | None = None, **_: Any) -> None:
    """Record per-sample values (one per id in batch_ids) under each signal name; scalars when 0-d."""
    s = session()
    split = origin or s.current_split
    for name, values in (signals or {}).items():
        if batch_ids is not None and getattr(values, "ndim", 1) > 0:
            s.add_signal(name, split, batch_ids, values)
        else:
            s.add_scalar(name, values)
    if batch_ids is not None and (preds is not None or targets is not None or preds_raw is not None):
        s.add_batch(split, batch_ids, targets, preds, preds_raw)


guard_training_context = StepContext(session, training=True)
guard_testing_context = StepContext(session, training=False)


def step() -> StepContext:
    """`with wl.step():` is the same boundary as `with wl.guard_training_context:`."""
    return guard_training_context


def hyperparameters() -> dict[str, Any]:
    return session().hparams


def serve(*_: Any, **__: Any) -> None:
    """Kept for WeightsLab scripts: weightslabd serves the UI, so there is nothing to start here."""
    session().start()


def keep_serving(*_: Any, **__: Any) -> None:
    """Kept for WeightsLab scripts: the daemon keeps serving after the trainer exits, so this returns."""


def start_training(*_: Any, **__: Any) -> None:
    """Kept for WeightsLab scripts: training starts at once; pause it from the UI if needed."""
    session().start()


def close() -> None:
    """End the run cleanly now (also done at interpreter exit)."""
    if _session is not None:
        _session.close()
