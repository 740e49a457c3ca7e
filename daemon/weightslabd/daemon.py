"""The daemon's lifecycle: boot, serve, and a main loop that reacts to signals.

Signal handlers only note the signal and wake the loop through a pipe; each signal has its own
`handle_<name>` method run by the loop, outside the handler.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import select
import signal
from collections import deque
from pathlib import Path
from typing import Any

import structlog

from weightslab_shim.runtime import DAEMON_LOCK, UnsafeRuntimeDir, ensure_private_dir
from weightslabd.agent import config as agent_config
from weightslabd.agent.service import DataQueryAgent
from weightslabd.api.cli_server import CliCommands, LineServer
from weightslabd.api.grpcweb import SOCKET_NAME, GrpcWebBridge, check_exposure
from weightslabd.api.grpcweb import enabled as grpc_web_enabled
from weightslabd.api.server import BindError, GrpcServer, build_server
from weightslabd.api.servicer import ExperimentServicer
from weightslabd.config import Settings, check_binds
from weightslabd.evaluation.coordinator import TimeoutPolicy
from weightslabd.ipc.control import ControlServer
from weightslabd.nodes.link import NodeLink, NodesError
from weightslabd.ops.logs import reopen_log_files
from weightslabd.ops.supervision import Supervisor
from weightslabd.ops.watchdog import InflightCalls, Watchdog
from weightslabd.security.audit import WEB_PEER, AuditLog, handshake_event, refusal_event
from weightslabd.security.front_process import FrontProcess
from weightslabd.security.peers import PeerTable
from weightslabd.security.tls import TlsConfig, server_ssl_context, settings_tls
from weightslabd.security.tls_front import SOCKET_NAME as FRONT_SOCKET
from weightslabd.security.tls_front import FrontError
from weightslabd.store.run import RunOptions
from weightslabd.store.runs import RunRegistry

log = structlog.get_logger("weightslabd")
STATE_FILE = "daemon.json"
DRAIN_SECONDS = 5.0
WEB_DRAIN_SECONDS = 2.0  # browser streams end within half a second of `stopping`; later, calls are cancelled
FRONT_CLOSE_SECONDS = 1.0  # after the gRPC server has drained, what the front still holds is flushed, then cut


class BootError(Exception):
    """The daemon cannot start; the message says why in one line."""


class Daemon:
    SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.runtime_dir = settings.runtime_dir()
        self._signals: deque[int] = deque()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        os.set_blocking(self._wake_r, False)
        self._running = False
        self._lock_fd: int | None = None
        self.grpc: GrpcServer | None = None
        self.control: ControlServer | None = None
        self.registry: RunRegistry | None = None
        self.servicer: ExperimentServicer | None = None
        self.audit: AuditLog | None = None
        self.peers = PeerTable()  # who is behind each of the TLS front's connections
        self.calls = InflightCalls(self.peers)
        self.watchdog: Watchdog | None = None
        self.cli: CliCommands | None = None
        self.cli_server: LineServer | None = None
        self.web: GrpcWebBridge | None = None
        self._web_socket = self.runtime_dir / SOCKET_NAME if grpc_web_enabled(settings) else None
        self._front_socket: Path | None = None  # with TLS on: where the front reaches the gRPC server
        self.front: FrontProcess | None = None
        self.supervisor = Supervisor()
        self.nodes: NodeLink | None = None  # a forwarding node, or a home of jobs on several nodes

    # -- boot ------------------------------------------------------------------------------------

    def _agent(self) -> DataQueryAgent:
        """agent_config.yaml read and checked at boot: a bad one stops it, one line per problem."""
        key = self.settings.openrouter_api_key
        try:
            config = agent_config.load(self.settings.agent_config_path, key.get_secret_value() if key else "")
        except agent_config.AgentConfigError as exc:
            raise BootError("\n".join(exc.problems)) from None
        agent = DataQueryAgent(config)
        log.info("agent", provider=config.provider or "none (built-in interpreter)", source=config.source)
        return agent

    def boot(self) -> None:
        s = self.settings
        check_exposure(s)
        check_binds(s)
        agent = self._agent()
        tls = self._tls_config()
        try:
            nodes = NodeLink(s)  # its settings and certificates checked before anything starts
        except NodesError as exc:
            raise BootError(str(exc)) from None
        try:
            ensure_private_dir(self.runtime_dir)
        except UnsafeRuntimeDir as exc:  # another user's directory, or one others can enter: refused
            raise BootError(str(exc)) from None
        except OSError as exc:
            raise BootError(f"WEIGHTSLAB_RUNTIME_DIR={self.runtime_dir}: {exc}") from None
        self._take_lock()
        self.registry = RunRegistry(s.weightslab_root_log_dir, self.runtime_dir, RunOptions.from_settings(s))
        self.registry.load()
        self.control = ControlServer(self.runtime_dir, self.registry, hp_sync=s.wl_enable_hp_sync,
                                     heartbeat_timeout=s.weightslab_heartbeat_timeout_seconds)
        self.control.recover_orphans()
        self.nodes = nodes
        nodes.forward(self.control, self.runtime_dir)  # before any hello is taken
        self.control.start()
        try:
            nodes.listen_for_nodes(self.control, self.registry, self.runtime_dir)
        except NodesError as exc:
            raise BindError(str(exc)) from None
        self.servicer = ExperimentServicer(self.registry, self.control, s.grpc_watchdog_stuck_seconds, agent,
                                           eval_policy=TimeoutPolicy.from_settings(s))
        self.audit = AuditLog(s.audit_log_format, s.log_dir())
        self.cli = CliCommands(self.servicer)
        shared = s.cli_shares_grpc_port()
        if tls is not None:
            self._front_socket = self.runtime_dir / FRONT_SOCKET
            self.front = FrontProcess(s.grpc_backend_host, s.grpc_backend_port, tls, self._front_socket,
                                      self.runtime_dir, self.peers, self._audit_refusal)
            try:
                self.front.bind()  # the TCP port first: taken, it is the same one-line error as without TLS
            except FrontError as exc:
                raise BindError(str(exc)) from None
        self.grpc = self._build_grpc(s)
        self.grpc.server.start()
        self.grpc.set_serving(True)
        if self.front is not None:
            try:
                self.front.start()
            except FrontError as exc:
                raise BootError(str(exc)) from None
            log.info("TLS front listening", address=self.front.address, upstream=str(self._front_socket),
                     pid=self.front.pid)
        if self._web_socket is not None:
            self.web = GrpcWebBridge(s, self._web_socket, self._audit_web_refusal)
            self.web.start()
            log.info("gRPC-Web listening", address=self.web.address, origins=s.weightslab_grpc_web_allowed_origins)
        if not shared:
            try:
                self.cli_server = LineServer(s.cli_host, s.cli_port, self.cli, s.auth_tokens(), self.audit,
                                             self.servicer.current_folder)
            except (OSError, ValueError) as exc:
                raise BootError(f"CLI_HOST:CLI_PORT={s.cli_host}:{s.cli_port}: {exc}") from None
            self.cli_server.start()
            log.info("CLI listening", address=f"{s.cli_host}:{self.cli_server.port}")
        if not s.weightslab_disable_watchdogs:
            registry = self.registry
            self.watchdog = Watchdog(
                stuck_seconds=s.grpc_watchdog_stuck_seconds, interval=s.grpc_watchdog_interval_seconds,
                restart_threshold=s.grpc_watchdog_restart_threshold,
                details_limit=s.grpc_watchdog_inflight_details_limit, exit_on_stuck=s.grpc_watchdog_exit_on_stuck,
                locks=lambda: [run.lock for run in list(registry.runs.values())], calls=self.calls,
                restart=self.restart_grpc)
            self.watchdog.start()
            log.info("watchdog on", stuck_s=s.grpc_watchdog_stuck_seconds, every_s=s.grpc_watchdog_interval_seconds,
                     restart_after=s.grpc_watchdog_restart_threshold, exit_on_stuck=s.grpc_watchdog_exit_on_stuck)
        else:
            log.info("watchdogs disabled (WEIGHTSLAB_DISABLE_WATCHDOGS)")
        # Logged before daemon.json and systemd's READY=1 announce it: whoever waits on either finds the line.
        log.info("weightslabd ready", grpc=self.grpc_address, tls=self.front is not None,
                 grpc_web=self.web.address if self.web is not None else "off",
                 control=self.control.endpoint, runs=len(self.registry.known), pid=os.getpid())
        self._write_state()
        self.supervisor.ready(f"serving gRPC on {self.grpc_address}")

    def restart_grpc(self) -> None:
        """A new gRPC server on the same address; clients reconnect by themselves."""
        assert self.grpc is not None and self.servicer is not None and self.audit is not None
        old = self.grpc
        old.server.stop(1.0).wait(2.0)  # the front's connections to it end; the front itself keeps listening
        settings = self.settings.model_copy(update={"grpc_backend_port": old.port})
        self.calls = InflightCalls(self.peers)
        if self.watchdog is not None:
            self.watchdog.replace_calls(self.calls)
        self.grpc = self._build_grpc(settings)
        self.grpc.server.start()
        self.grpc.set_serving(True)
        if self.web is not None:
            self.web.reconnect()  # the socket was re-created: no waiting out the channels' reconnect backoff
        log.info("gRPC server restarted", grpc=self.grpc_address)

    @property
    def grpc_port(self) -> int:
        """The TCP port clients use: the TLS front's with TLS on, else the gRPC server's."""
        assert self.grpc is not None
        return self.front.port if self.front is not None else self.grpc.port

    @property
    def grpc_address(self) -> str:
        assert self.grpc is not None
        return self.front.address if self.front is not None else self.grpc.address

    def _build_grpc(self, settings: Settings) -> GrpcServer:
        assert self.servicer is not None and self.audit is not None
        return build_server(settings, self.servicer, self.audit, self.calls,
                            self.cli if settings.cli_shares_grpc_port() else None, web_socket=self._web_socket,
                            front_socket=self._front_socket, peers=self.peers)

    def _tls_config(self) -> TlsConfig | None:
        """The TLS settings, their files checked now: a bad one stops the boot with one line."""
        cfg = settings_tls(self.settings)
        if not cfg.enabled:
            return None
        server_ssl_context(cfg)  # the front's process builds its own from the same files
        return cfg

    def _audit_refusal(self, peer: str, reason: str, count: int = 1) -> None:
        """A handshake the TLS front refused, or a summary of `count` (on the front's thread: only enqueues)."""
        if self.audit is not None:
            folder = self.servicer.current_folder() if self.servicer is not None else None
            self.audit.record(folder, handshake_event(peer, reason, count))

    def _audit_web_refusal(self, peer: str, reason: str, count: int = 1) -> None:
        """A gRPC-Web call refused because another local user made it (or a summary of `count`)."""
        if self.audit is not None:
            folder = self.servicer.current_folder() if self.servicer is not None else None
            self.audit.record(folder, refusal_event(WEB_PEER, peer, reason, count))

    def _take_lock(self) -> None:
        path = self.runtime_dir / DAEMON_LOCK
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise BootError(f"another weightslabd (pid {other}) is running with runtime dir {self.runtime_dir}; "
                            "set WEIGHTSLAB_RUNTIME_DIR to run one beside it") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._lock_fd = fd

    def _write_state(self) -> None:
        assert self.grpc is not None and self.control is not None
        state = {"pid": os.getpid(), "grpc_address": self.grpc_address, "grpc_port": self.grpc_port,
                 "control": self.control.endpoint,
                 "cli_port": self.cli_server.port if self.cli_server is not None else self.grpc_port,
                 "grpc_web_port": self.web.port if self.web is not None else None,
                 "forward_port": self.nodes.port if self.nodes is not None else None}
        tmp = self.runtime_dir / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, self.runtime_dir / STATE_FILE)

    # -- main loop -------------------------------------------------------------------------------

    def run(self) -> int:
        for sig in self.SIGNALS:
            signal.signal(sig, self._note_signal)
        self._running = True
        while self._running:
            self.supervisor.ping_if_due(healthy=self.control is not None and self.control.alive())
            with contextlib.suppress(InterruptedError):
                select.select([self._wake_r], [], [], self.supervisor.wait_timeout(1.0))
            with contextlib.suppress(BlockingIOError):
                os.read(self._wake_r, 512)
            while self._signals:
                signum = self._signals.popleft()
                getattr(self, f"handle_{signal.Signals(signum).name.lower()}")()
        self.shutdown()
        return 0

    def _note_signal(self, signum: int, frame: Any) -> None:
        self._signals.append(signum)
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_w, b"!")

    def handle_sigterm(self) -> None:
        log.info("SIGTERM: draining and stopping")
        self._running = False

    def handle_sigint(self) -> None:
        log.info("SIGINT: draining and stopping")
        self._running = False

    def handle_sighup(self) -> None:
        reopen_log_files()
        log.info("SIGHUP: log files reopened")

    def shutdown(self) -> None:
        self.supervisor.stopping()
        if self.watchdog is not None:
            self.watchdog.stop()
        if self.servicer is not None:
            self.servicer.stopping.set()
            self.servicer.agent.shutdown()
        if self.web is not None:  # before the gRPC server, so open browser streams end with a trailer
            self.web.stop(WEB_DRAIN_SECONDS)
        if self.front is not None:  # no new connections; open ones drain with the gRPC server behind them
            self.front.stop_accepting()
        if self.grpc is not None:
            self.grpc.stop(DRAIN_SECONDS)
        if self.front is not None:
            self.front.close(FRONT_CLOSE_SECONDS)
        if self.cli_server is not None:
            self.cli_server.stop()
        if self.audit is not None:
            self.audit.close()
        if self.control is not None:
            self.control.stop()
        if self.nodes is not None:  # after the control server: ranks' last records and leaving forwarded
            self.nodes.stop()
        if self.registry is not None:
            self.registry.close()
        with contextlib.suppress(FileNotFoundError):
            (self.runtime_dir / STATE_FILE).unlink()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        log.info("weightslabd stopped")


def read_state(runtime_dir: Path) -> dict[str, Any] | None:
    """What a running daemon wrote about itself (address, pid), for tools and tests."""
    try:
        return dict(json.loads((runtime_dir / STATE_FILE).read_text()))
    except (FileNotFoundError, ValueError):
        return None
