"""Token authentication on a real gRPC server: headers, rotation, rejection, open health checks."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent import futures

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from weightslabd.proto import experiment_service_pb2 as pb
from weightslabd.proto import experiment_service_pb2_grpc as pb_grpc
from weightslabd.security import auth
from weightslabd.security.auth import TokenAuthInterceptor, credential_label

PING = "/test.Echo/Ping"
COUNT = "/test.Echo/Count"
RPC_TIMEOUT = 10.0
OLD, NEW = "old-token-3f9a", "new-token-c41e"

Metadata = Sequence[tuple[str, str]]


class Echo:
    """A unary and a server-streaming method that record that they ran."""

    def __init__(self) -> None:
        self.calls = 0

    def ping(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        self.calls += 1
        return request

    def count(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        self.calls += 1
        for i in range(3):
            yield str(i).encode()

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler("test.Echo", {
            "Ping": grpc.unary_unary_rpc_method_handler(self.ping),
            "Count": grpc.unary_stream_rpc_method_handler(self.count),
        })


Start = Callable[[Sequence[str]], tuple[grpc.Channel, Echo]]


@pytest.fixture
def start() -> Iterator[Start]:
    """Starts a server guarded by the given tokens; returns a channel to it and its servicer."""
    servers: list[grpc.Server] = []
    channels: list[grpc.Channel] = []

    def run(tokens: Sequence[str]) -> tuple[grpc.Channel, Echo]:
        echo = Echo()
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4),
                             interceptors=[TokenAuthInterceptor(tokens)])
        server.add_generic_rpc_handlers([echo.handler()])
        health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        grpc.channel_ready_future(channel).result(timeout=RPC_TIMEOUT)
        channels.append(channel)
        return channel, echo

    yield run
    for channel in channels:
        channel.close()
    for server in servers:
        server.stop(None)


def _ping(channel: grpc.Channel, metadata: Metadata = ()) -> bytes:
    reply: bytes = channel.unary_unary(PING)(b"hi", metadata=metadata, timeout=RPC_TIMEOUT)
    return reply


def _count(channel: grpc.Channel, metadata: Metadata = ()) -> list[bytes]:
    return list(channel.unary_stream(COUNT)(b"", metadata=metadata, timeout=RPC_TIMEOUT))


def _rejected(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        call()
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    return err.value


@pytest.mark.parametrize(
    "metadata",
    [
        [("authorization", f"Bearer {NEW}")],
        [("authorization", f"bearer   {NEW} ")],
        [("x-api-key", NEW)],
        [("x-grpc-auth-token", NEW)],
    ],
    ids=["authorization", "authorization-lowercase-scheme", "x-api-key", "x-grpc-auth-token"],
)
def test_token_accepted_in_each_header(start: Start, metadata: Metadata) -> None:
    channel, echo = start([NEW])
    assert _ping(channel, metadata) == b"hi"
    assert _count(channel, metadata) == [b"0", b"1", b"2"]
    assert echo.calls == 2


def test_every_rotated_token_is_accepted(start: Start) -> None:
    channel, _ = start([OLD, NEW, "third-token"])
    for token in (OLD, NEW, "third-token"):
        assert _ping(channel, [("x-api-key", token)]) == b"hi"


def test_wrong_token_is_rejected_without_echo(start: Start) -> None:
    channel, echo = start([OLD, NEW])
    error = _rejected(lambda: _ping(channel, [("authorization", "Bearer guess-1234")]))
    assert "guess-1234" not in (error.details() or "")
    assert OLD not in (error.details() or "") and NEW not in (error.details() or "")
    _rejected(lambda: _count(channel, [("x-grpc-auth-token", "guess-1234")]))
    assert echo.calls == 0


def test_missing_token_is_rejected(start: Start) -> None:
    channel, echo = start([NEW])
    error = _rejected(lambda: _ping(channel))
    assert "missing credentials" in (error.details() or "")
    _rejected(lambda: _count(channel))
    # A token under another scheme or another header name does not count.
    _rejected(lambda: _ping(channel, [("authorization", f"Basic {NEW}")]))
    _rejected(lambda: _ping(channel, [("x-token", NEW)]))
    assert echo.calls == 0


def test_one_good_token_among_bad_headers_is_enough(start: Start) -> None:
    channel, _ = start([NEW])
    assert _ping(channel, [("x-api-key", "stale"), ("x-grpc-auth-token", NEW)]) == b"hi"


def test_no_tokens_means_open(start: Start) -> None:
    channel, echo = start(["", "  "])  # blank entries (e.g. a trailing comma) are not tokens
    assert _ping(channel) == b"hi"
    assert _count(channel, [("x-api-key", "anything")]) == [b"0", b"1", b"2"]
    assert echo.calls == 2


def test_unknown_method_without_token_is_unauthenticated(start: Start) -> None:
    channel, _ = start([NEW])
    # Unauthenticated callers learn nothing about which methods exist.
    _rejected(lambda: channel.unary_unary("/test.Echo/Nope")(b"", timeout=RPC_TIMEOUT))


def test_health_stays_open(start: Start) -> None:
    channel, _ = start([NEW])
    stub = health_pb2_grpc.HealthStub(channel)
    reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=RPC_TIMEOUT)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    watch = stub.Watch(health_pb2.HealthCheckRequest(), timeout=RPC_TIMEOUT)
    assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
    watch.cancel()


def test_every_token_is_compared(monkeypatch: pytest.MonkeyPatch) -> None:
    compared: list[bytes] = []
    real = auth.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append(b)
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    # A match on the first token must not stop the comparisons (timing would tell which matched).
    assert credential_label([("x-api-key", OLD)], [OLD, NEW, "third"]) == "token#1"
    assert compared == [OLD.encode(), NEW.encode(), b"third"]


def test_credential_label() -> None:
    tokens = [OLD, NEW]
    assert credential_label([], tokens) == "none"
    assert credential_label(None, tokens) == "none"
    assert credential_label([("user-agent", "grpc-python")], tokens) == "none"
    assert credential_label([("x-api-key", OLD)], tokens) == "token#1"
    assert credential_label([("authorization", f"Bearer {NEW}")], tokens) == "token#2"
    assert credential_label([("x-grpc-auth-token", "wrong")], tokens) == "invalid"
    assert credential_label([("x-api-key", "wrong"), ("x-api-key", NEW)], tokens) == "token#2"
    assert credential_label([("x-api-key", "anything")], []) == "unchecked"


def test_label_from_a_real_call(start: Start) -> None:
    # The audit interceptor will call credential_label with the servicer's metadata; check that shape.
    seen: list[str] = []

    def record(request: bytes, context: grpc.ServicerContext) -> bytes:
        seen.append(credential_label(context.invocation_metadata(), [OLD, NEW]))
        return request

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
        "test.Echo", {"Ping": grpc.unary_unary_rpc_method_handler(record)}
    )])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            _ping(channel, [("authorization", f"Bearer {NEW}")])
            _ping(channel)
    finally:
        server.stop(None)
    assert seen == ["token#2", "none"]


def test_guards_the_generated_studio_service() -> None:
    # Generated servicers register their methods up front, a different lookup path in grpcio.
    interceptors = [TokenAuthInterceptor([NEW])]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), interceptors=interceptors)
    pb_grpc.add_ExperimentServiceServicer_to_server(pb_grpc.ExperimentServiceServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.ExperimentServiceStub(channel)
            _rejected(lambda: stub.GetDataSplits(pb.Empty(), timeout=RPC_TIMEOUT))
            _rejected(lambda: list(stub.StreamStatus(pb.Empty(), timeout=RPC_TIMEOUT)))
            token = [("x-api-key", NEW)]
            for call in (lambda: stub.GetDataSplits(pb.Empty(), metadata=token, timeout=RPC_TIMEOUT),
                         lambda: list(stub.StreamStatus(pb.Empty(), metadata=token, timeout=RPC_TIMEOUT))):
                with pytest.raises(grpc.RpcError) as err:
                    call()
                assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED  # got past auth
    finally:
        server.stop(None)
