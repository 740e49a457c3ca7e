"""Random but well-formed Studio requests to a daemon that has a run: every data-plane RPC answers
(success or a clear refusal), never crashes, never hangs (a deadline or a cancellation fails the test), and
after each batch the daemon still serves: health SERVING and real RPCs answered."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from weightslabd.proto import experiment_service_pb2 as pb
from weightslabd.proto import experiment_service_pb2_grpc as pb_grpc

from .harness import Daemon, Trainer, base_env, history, wait_for

COLUMNS = ["loss", "label", "prediction", "sample_id", "origin", "tags", "deny_listed", "encounters", "nope"]
WORDS = st.sampled_from(["loss", "label", ">", "<=", "==", "!=", "and", "or", "not", "(", ")", "sortby", "asc",
                         "desc", ",", "between", "contains", "has_tag", "not_has_tag", "reset", "0.5", "3", "'a'",
                         "nan", "-1e9", "`loss`", "bad", "train"])
INTS = st.integers(min_value=-(2**31), max_value=2**31 - 1)
SMALL = st.integers(min_value=-5, max_value=300)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    tmp = tmp_path_factory.mktemp("fuzz")
    env = base_env(tmp)
    daemon = Daemon(env, tmp / "daemon.log").start()
    try:
        Trainer(env, tmp, "--steps", "60", "--step-sleep", "0.004").wait(60)
        wait_for(lambda: len(history(daemon.stub())) >= 60, 10, "the run's records")
        yield daemon
    finally:
        daemon.stop()


requests = st.one_of(
    st.builds(lambda words, acc, nl: ("ApplyDataQuery", pb.DataQueryRequest(
        query=" ".join(words), accumulate=acc, is_natural_language=nl)),
        st.lists(WORDS, max_size=12), st.booleans(), st.booleans()),
    st.builds(lambda q: ("ApplyDataQuery", pb.DataQueryRequest(query=q)), st.text(max_size=80)),
    st.builds(lambda start, count, raw, w, h, stats: ("GetDataSamples", pb.DataSamplesRequest(
        start_index=start, records_cnt=count, include_raw_data=raw, resize_width=w, resize_height=h,
        stats_to_retrieve=stats)), SMALL, SMALL, st.booleans(), INTS, INTS, st.lists(st.sampled_from(COLUMNS))),
    st.builds(lambda name, f, text, b, kind, ids, origins: ("EditDataSample", pb.DataEditsRequest(
        stat_name=name, float_value=f, string_value=text, bool_value=b, type=kind, samples_ids=ids,
        sample_origins=origins)),
        st.sampled_from(["tags", "deny_listed", "label", ""]), st.floats(allow_nan=True), st.text(max_size=20),
        st.booleans(), st.integers(min_value=-1, max_value=5), st.lists(SMALL, max_size=6),
        st.lists(st.sampled_from(["train", "eval", ""]), max_size=6)),
    st.builds(lambda col, bins: ("GetHistogram", pb.HistogramRequest(column=col, max_bins=bins)),
              st.sampled_from(COLUMNS), INTS),
    st.builds(lambda full, mp, slices, tags, lo, hi, ranged, idx: ("GetLatestLoggerData",
              pb.GetLatestLoggerDataRequest(request_full_history=full, max_points=mp, break_by_slices=slices,
                                            tags=tags, x_min=lo, x_max=hi, has_x_range=ranged, index_only=idx)),
              st.booleans(), INTS, st.booleans(), st.lists(st.sampled_from(["a", "bad", ""]), max_size=3),
              SMALL, SMALL, st.booleans(), st.booleans()),
    st.builds(lambda name, ids, mp: ("GetSignalTrajectory", pb.GetSignalTrajectoryRequest(
        signal_name=name, sample_ids=ids, max_points=mp)),
        st.sampled_from(["loss", "lr", "loss/eval", ""]), st.lists(st.text(max_size=6), max_size=4), INTS),
    st.builds(lambda name, age, n: ("GetStepSamples", pb.StepSamplesRequest(
        metric_name=name, model_age=age, max_samples=n)), st.sampled_from(["loss", "x"]), INTS, INTS),
)


def assert_healthy(daemon: Daemon) -> None:
    """The daemon still serves: the process lives, health says SERVING, and real RPCs answer with the run."""
    assert daemon.proc is not None and daemon.proc.poll() is None
    with grpc.insecure_channel(daemon.address) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="ExperimentService"), timeout=5)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        stub = pb_grpc.ExperimentServiceStub(channel)
        assert list(stub.GetDataSplits(pb.Empty(), timeout=5).split_names) == ["train"]
        assert len(history(stub)) >= 60


# A refusal is an answer; a deadline or a cancellation is a hang (every call here is unary).
ANSWERS = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.lists(requests, min_size=1, max_size=5))
def test_well_formed_random_requests_get_an_answer(served: Daemon, batch: list[tuple[str, Any]]) -> None:
    with grpc.insecure_channel(served.address) as channel:
        stub = pb_grpc.ExperimentServiceStub(channel)
        for method, request in batch:
            try:
                getattr(stub, method)(request, timeout=10)
            except grpc.RpcError as exc:
                assert exc.code() in ANSWERS, (method, request, exc)
    assert_healthy(served)
