"""weightslabd: the daemon that serves Weights Studio beside a running training.

Layers, lowest first; a module imports only from its own layer or those below it:

    config.py, origins.py, proto/   the settings and the Studio's wire types: import nothing of the daemon
    store/      runs on disk and in memory
    ipc/        trainers in (control socket, ring drains), commands out
    security/   TLS front, tokens, peers, audit
    ops/        logging, watchdog, systemd, the CLI client
    api/        the gRPC servicer, grid, queries, plots, gRPC-Web, the CLI's command set
    daemon.py, cli.py   lifecycle and the command line: they assemble everything

tests/test_layers.py checks the rule against every import in the package.
"""

__version__ = "0.1.0"
