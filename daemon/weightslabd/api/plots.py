"""GetLatestLoggerData: signal curves for the Studio's plots.

Two shapes: the run's curves (one mean per step for each signal; full history reduced to
`max_points`, or the points new since this client's last read), and break-by-slices (one mean
curve per experiment over the samples carrying every requested tag, capped at
WL_MAX_POINTS_PER_SAMPLE). Reductions keep the first and last points and an even subset between.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from weightslabd.evaluation import passes
from weightslabd.proto import experiment_service_pb2 as pb
from weightslabd.store.history import Points, decimate_indexes
from weightslabd.store.run import Run


def _x_range(request: Any) -> tuple[int, int] | None:
    return (int(request.x_min), int(request.x_max)) if request.has_x_range else None


def curves(runs: list[Run], request: Any, cursor: dict[tuple[str, str], int]) -> Any:
    wanted = set(request.metric_names)
    max_points = int(request.max_points) if request.max_points > 0 else 0
    x_range = _x_range(request)
    response = pb.GetLatestLoggerDataResponse(applied_max_points=max_points)
    for run in runs:
        for name in run.history.names():
            if wanted and name not in wanted:
                continue
            key = (run.run_id, name)
            start = 0 if request.request_full_history or x_range else cursor.get(key, 0)
            pts = run.history.read(name, start, 0 if x_range else max_points)
            if x_range is None or not request.request_full_history:
                cursor[key] = pts.end
            if x_range is not None:
                pts = _within(pts, x_range, max_points)
            if run.history.length(name):
                first_step, last_step, total = run.history.span(name)  # from memory, the curve may be at rest
                response.curves.add(metric_name=name, experiment_hash=run.run_id,
                                    first_step=first_step, last_step=last_step, point_count=total,
                                    value_min=float(pts.vmin.min()) if len(pts.vmin) else 0.0,
                                    value_max=float(pts.vmax.max()) if len(pts.vmax) else 0.0)
            if request.index_only:
                continue
            notes = run.book.plot_notes  # (curve, model age) -> the user's note (plot_note_operation)
            first = len(response.points)
            for i in range(len(pts.steps)):
                response.points.add(
                    metric_name=name, model_age=int(pts.steps[i]), metric_value=float(pts.values[i]),
                    experiment_hash=run.run_id, timestamp=int(pts.stamps[i]),
                    value_min=float(pts.vmin[i]), value_max=float(pts.vmax[i]), has_value_range=True,
                    point_note=notes.get((name, int(pts.steps[i])), ""))
            passes.mark(run, name, response.points[first:])  # evaluation points (docs/evaluation-and-checkpoints.md)
    return response


def _within(pts: Points, x_range: tuple[int, int], max_points: int) -> Points:
    keep = np.flatnonzero((pts.steps >= x_range[0]) & (pts.steps <= x_range[1]))
    keep = keep[decimate_indexes(len(keep), max_points)]
    return Points(pts.name, pts.steps[keep], pts.values[keep], pts.vmin[keep], pts.vmax[keep], pts.stamps[keep],
                  pts.end)


def slice_curves(runs: list[Run], request: Any, lock_timeout: float) -> Any:
    """One mean curve per (experiment, signal) over the samples carrying all of `tags`."""
    tags = [t for t in request.tags if t]
    wanted = set(request.metric_names) | ({request.graph_name} if request.graph_name else set())
    x_range = _x_range(request)
    response = pb.GetLatestLoggerDataResponse()
    for run in runs:
        cap = run.options.max_points_per_sample
        if request.max_points > 0:
            cap = min(cap, int(request.max_points)) if cap else int(request.max_points)
        response.applied_max_points = cap
        how = run.instance_aggregation()
        for split, signal in run.sample_signals.names():
            store = run.sample_signals.get(split, signal)
            if store is None:
                continue
            name = signal if split == run.home_split(signal) else f"{signal}/{split}"
            if wanted and name not in wanted and signal not in wanted:
                continue
            with run.holding(lock_timeout):
                table = run.samples.get(split)
                if table is None:
                    continue
                mask: np.ndarray | None = None
                for tag in tags:
                    tag_mask = table.tag_masks.get(tag, np.zeros(table.size, dtype=bool))
                    mask = tag_mask.copy() if mask is None else mask & tag_mask
            curve = store.slice_curve(mask, cap, how, x_range)
            label = f"{name} [{' & '.join(tags)}]" if tags else name
            if len(curve.steps):
                response.curves.add(metric_name=label, experiment_hash=run.run_id, first_step=int(curve.steps[0]),
                                    last_step=int(curve.steps[-1]), point_count=int(curve.total_points),
                                    value_min=float(np.min(curve.mins)), value_max=float(np.max(curve.maxs)))
            if request.index_only:
                continue
            for i in range(len(curve.steps)):
                response.points.add(
                    metric_name=label, model_age=int(curve.steps[i]), metric_value=float(curve.means[i]),
                    experiment_hash=run.run_id, split_name=split, evaluation_tags=tags,
                    sample_count=int(curve.counts[i]), value_min=float(curve.mins[i]),
                    value_max=float(curve.maxs[i]), has_value_range=True)
    return response


def resolve_signal(run: Run, name: str) -> tuple[str, str] | None:
    """(split, signal) of a curve name as the plots show it: `loss` on its home split, `loss/eval` on another."""
    names = run.sample_signals.names()
    if not name:
        return None
    for split, signal in names:
        if name == signal and run.home_split(signal) in (split, None):
            return split, signal
        if name == f"{signal}/{split}":
            return split, signal
    return None


def _sample_id(text: str) -> int:
    try:
        return int(text.rsplit("/", 1)[-1])
    except ValueError:
        raise ValueError(f"sample id {text!r} is not a number") from None


def trajectories(run: Run, request: Any) -> Any:
    """GetSignalTrajectory: each sample's own values of one signal over the steps it was seen at."""
    found = resolve_signal(run, request.signal_name)
    if found is None:
        return pb.GetSignalTrajectoryResponse(success=False, message=f"no per-sample signal {request.signal_name!r}")
    try:
        ids = [_sample_id(s) for s in request.sample_ids]
    except ValueError as exc:
        return pb.GetSignalTrajectoryResponse(success=False, message=str(exc))
    store = run.sample_signals.get(*found)
    response = pb.GetSignalTrajectoryResponse(success=True, signal_name=request.signal_name)
    if store is None:
        return response
    by_id = store.trajectory(ids, int(request.max_points), run.instance_aggregation())
    for sid in ids:
        _, values = by_id.get(sid, (None, np.empty(0)))
        response.trajectories.add(sample_id=str(sid), value=np.asarray(values, dtype=np.float32).tolist())
    return response


def step_samples(run: Run, request: Any) -> Any:
    """GetStepSamples: the samples behind one plotted point, highest values first (instances folded)."""
    found = resolve_signal(run, request.metric_name)
    store = run.sample_signals.get(*found) if found else None
    if store is None:
        return pb.StepSamplesResponse(success=False, message=f"no per-sample signal {request.metric_name!r}")
    ids, values, total = store.step_samples(int(request.model_age), int(request.max_samples),
                                            run.instance_aggregation())
    return pb.StepSamplesResponse(success=True, sample_ids=[str(i) for i in ids.tolist()],
                                  total_available=total, sample_values=values.astype(np.float32).tolist())
