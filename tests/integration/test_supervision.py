"""Under systemd (Type=notify): READY=1 once serving, WATCHDOG=1 pings at half WatchdogSec, STOPPING=1."""

from __future__ import annotations

import configparser
import signal
import socket
from pathlib import Path

from .harness import Daemon, base_env

ROOT = Path(__file__).resolve().parents[2]


def test_daemon_speaks_the_notify_protocol(tmp_path: Path) -> None:
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    notify.settimeout(10)
    env = base_env(tmp_path)
    env.update(NOTIFY_SOCKET=str(tmp_path / "notify.sock"), WATCHDOG_USEC="200000")
    daemon = Daemon(env, tmp_path / "daemon.log").start()
    try:
        first = notify.recv(4096).decode()
        assert "READY=1" in first.splitlines() and "STATUS=serving gRPC on" in first
        pings = [notify.recv(4096).decode() for _ in range(3)]  # every 0.1 s: half of 0.2 s
        assert all(p == "WATCHDOG=1" for p in pings)
        assert daemon.kill(signal.SIGTERM) == 0
        rest = []
        while True:
            message = notify.recv(4096).decode()
            rest.append(message)
            if message.startswith("STOPPING=1"):
                break
        assert rest[-1].startswith("STOPPING=1")
    finally:
        daemon.stop()
        notify.close()


def test_systemd_unit_is_a_notify_service_that_always_restarts() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(ROOT / "systemd" / "weightslabd.service")
    service = unit["Service"]
    assert service["Type"] == "notify" and service["Restart"] == "always"
    assert int(service["WatchdogSec"]) > 0 and "weightslabd --env" in service["ExecStart"]
    assert service["RemoveIPC"] == "no"  # rings in /dev/shm must outlive a daemon restart
