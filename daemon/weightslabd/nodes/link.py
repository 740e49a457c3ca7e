"""This daemon's part among several nodes, from its settings: a forwarding node (WEIGHTSLAB_FORWARD_TO),
a home listening for nodes (WEIGHTSLAB_FORWARD_LISTEN), or neither (the default)."""

from __future__ import annotations

from pathlib import Path

import grpc
import structlog

from weightslabd.config import Settings
from weightslabd.ipc.control import ControlServer
from weightslabd.nodes.forwarder import Forwarder, node_name
from weightslabd.nodes.home import Home, ListenError, serve
from weightslabd.nodes.spool import FILE as SPOOL_FILE
from weightslabd.security.node_tls import home_credentials, node_credentials
from weightslabd.security.tls import TlsError
from weightslabd.store.runs import RunRegistry

log = structlog.get_logger("weightslabd.nodes")


class NodesError(Exception):
    """A node setting or certificate that cannot be used; one line."""


class NodeLink:
    def __init__(self, settings: Settings) -> None:
        """Checks the settings and reads the certificates now (boot), so a bad one stops it with one line."""
        self.settings = settings
        self.forward_to = settings.weightslab_forward_to
        self.listen = settings.weightslab_forward_listen
        if self.forward_to and self.listen:
            raise NodesError(f"WEIGHTSLAB_FORWARD_TO={self.forward_to} and WEIGHTSLAB_FORWARD_LISTEN={self.listen}: a "
                             "daemon is a job's home or forwards to one, not both; unset one of them")
        try:
            self._channel_creds = node_credentials(settings) if self.forward_to else None
            self._server_creds = home_credentials(settings) if self.listen else None
        except TlsError as exc:
            raise NodesError(str(exc)) from None
        self.forwarder: Forwarder | None = None
        self.home: Home | None = None
        self._server: grpc.Server | None = None
        self.port: int | None = None

    def forward(self, control: ControlServer, runtime_dir: Path) -> None:
        """Before the control server takes hellos: a forwarding node's first job hello finds its forwarder."""
        s = self.settings
        if self.forward_to and self._channel_creds is not None:
            self.forwarder = Forwarder(self.forward_to, self._channel_creds, node_name(runtime_dir),
                                       s.weightslab_forward_buffer_mb << 20, s.grpc_max_message_bytes,
                                       runtime_dir / SPOOL_FILE)
            control.forwarding = self.forwarder
            self.forwarder.start()
            log.info("forwarding the jobs whose rank 0 is on another node", home=self.forward_to,
                     buffer_mb=s.weightslab_forward_buffer_mb)

    def listen_for_nodes(self, control: ControlServer, registry: RunRegistry, runtime_dir: Path) -> None:
        """A home's listener (NodesError with one line when it cannot bind)."""
        s = self.settings
        if self.listen and self._server_creds is not None:
            self.home = Home(control, registry, runtime_dir)
            try:
                self._server, self.port = serve(self.home, self.listen, self._server_creds, s.grpc_max_message_bytes)
            except ListenError as exc:
                raise NodesError(str(exc)) from None
            log.info("home of jobs: nodes forward here (mutual TLS)", address=self.listen, port=self.port)

    def stop(self) -> None:
        if self.forwarder is not None:
            self.forwarder.stop()
        if self._server is not None:
            self._server.stop(1.0).wait(2.0)
        if self.home is not None:
            self.home.stop()
