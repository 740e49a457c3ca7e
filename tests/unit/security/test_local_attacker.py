"""Issue 8's small parts: the loopback peer's uid, the auth throttle, folded refusals, masked CLI lines,
the bind checks."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from weightslabd.config import ConfigError, load_settings
from weightslabd.config import check_binds as check
from weightslabd.security.audit import describe_request, is_cli_edit, mask_cli_line
from weightslabd.security.loopback_uid import is_loopback_address, peer_uid, same_user
from weightslabd.security.refusals import RefusalAggregator, host_of
from weightslabd.security.throttle import AuthThrottle


def test_the_uid_of_a_real_loopback_peer_is_read_from_proc() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server, socket.create_connection(server.getsockname()):
        conn, peer = server.accept()
        with conn:
            assert peer_uid(peer[:2], conn.getsockname()[:2]) == os.geteuid()
            assert same_user(peer[:2], conn.getsockname()[:2]) == (True, os.geteuid())
            assert peer_uid(("127.0.0.1", 1), conn.getsockname()[:2]) is None  # no such connection


def test_the_proc_table_is_parsed_for_v4_and_mapped_v6(tmp_path: Path) -> None:
    table = tmp_path / "tcp6"
    table.write_text("  sl  local_address remote_address st tx rx tr tm retr uid\n"
                     "   0: 0000000000000000FFFF00000100007F:C06A 0000000000000000FFFF00000100007F:1F90 01 "
                     "00000000:00000000 00:00000000 00000000 65534 0 0 1\n")
    assert peer_uid(("127.0.0.1", 0xC06A), ("::ffff:127.0.0.1", 8080), (table,)) == 65534
    assert is_loopback_address("::ffff:127.0.0.1") and not is_loopback_address("10.0.0.1")


def test_failed_auth_locks_the_address_out_exponentially() -> None:
    now = [0.0]
    throttle = AuthThrottle(clock=lambda: now[0])
    assert [throttle.failed("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert throttle.failed("a") == 1.0 and throttle.wait_left("a") == 1.0 and throttle.wait_left("b") == 0.0
    assert throttle.failed("a") == 2.0 and throttle.failed("a") == 4.0
    assert max(throttle.failed("a") for _ in range(20)) == 60.0
    throttle.succeeded("a")
    assert throttle.wait_left("a") == 0.0


def test_refusals_are_folded_per_peer_and_reason() -> None:
    now = [0.0]
    out: list[tuple[str, str, int]] = []
    agg = RefusalAggregator(lambda p, r, c, s: out.append((p, r, c)), interval=10, clock=lambda: now[0])
    for port in range(1000):
        agg.refused(f"ipv4:127.0.0.1:{port}", "no client certificate")
    agg.refused("ipv4:127.0.0.1:5", "other reason")
    assert out == [("ipv4:127.0.0.1:0", "no client certificate", 1), ("ipv4:127.0.0.1:5", "other reason", 1)]
    now[0] = 11
    agg.flush()
    assert out[2] == ("ipv4:127.0.0.1:999", "no client certificate", 999)
    agg.close()
    assert len(out) == 3 and host_of("ipv6:[::1]:80") == "ipv6:[::1]"


def test_cli_lines_never_carry_a_token() -> None:
    assert mask_cli_line("auth tok") == "auth ****" and mask_cli_line("AUTH  tok") == "auth ****"
    assert mask_cli_line("tag train tok 1", ["tok"]) == "tag train **** 1"
    assert describe_request("auth tok") == "auth ****"
    assert is_cli_edit("hp set lr=1") and is_cli_edit("pause") and not is_cli_edit("hp") and not is_cli_edit("status")


@pytest.mark.parametrize(("env", "variable"), [
    ({"CLI_HOST": "0.0.0.0", "CLI_PORT": "50052"}, "CLI_HOST"),
    ({"GRPC_TLS_ENABLED": "0"}, "GRPC_TLS_ENABLED"),
    ({"GRPC_TLS_REQUIRE_CLIENT_AUTH": "0"}, "GRPC_TLS_REQUIRE_CLIENT_AUTH"),
])
def test_insecure_binds_are_refused(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError) as refused:
        check(load_settings(None, env))
    assert refused.value.variable == variable and "\n" not in str(refused.value)
    check(load_settings(None, {**env, "CLI_HOST": "127.0.0.1", "GRPC_BACKEND_HOST": "127.0.0.1"}))
    if variable != "CLI_HOST":
        check(load_settings(None, {**env, "GRPC_AUTH_TOKEN": "t"}))
