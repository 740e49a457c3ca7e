"""`weightslabd` on the command line: serve (the default), config, certs."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from weightslabd import __version__
from weightslabd.config import ConfigError, Settings, load_settings, render_effective, unknown_key_warnings

EXIT_USAGE = 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="weightslabd", description="Serve Weights Studio beside a running training.")
    p.add_argument("--env", metavar="FILE", help="settings file (dotenv syntax); the environment overrides it")
    p.add_argument("--version", action="version", version=f"weightslabd {__version__}")
    # Users type `weightslabd config --env FILE` as often as `weightslabd --env FILE config`: take both.
    env_after = argparse.ArgumentParser(add_help=False)
    env_after.add_argument("--env", metavar="FILE", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    sub = p.add_subparsers(dest="command")
    sub.add_parser("serve", parents=[env_after], help="run the daemon (the default)")
    sub.add_parser("config", parents=[env_after],
                   help="print the effective settings and where each came from (secrets masked)")
    cli = sub.add_parser("cli", parents=[env_after],
                         help="talk to the running daemon: status, hyperparameters, pause, samples, tags")
    cli.add_argument("-c", dest="command_line", action="append", default=[],
                     help="run this command and exit (repeatable)")
    certs = sub.add_parser("certs", parents=[env_after],
                           help="create a CA, a server pair and a client pair for TLS/mTLS")
    certs.add_argument("--dir", type=Path, help="where to write them (default: GRPC_TLS_CERT_DIR)")
    certs.add_argument("--host", action="append", default=[], help="extra host name for the server certificate")
    certs.add_argument("--force", action="store_true", help="replace existing files")
    export = sub.add_parser("export", parents=[env_after],
                            help="write a run's samples, history, curves, tags and edits as Parquet files")
    export.add_argument("run", metavar="RUN", help="a run folder, or a run id under WEIGHTSLAB_ROOT_LOG_DIR")
    export.add_argument("--to", dest="export_to", type=Path, required=True, metavar="DIR",
                        help="an empty or new folder")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings(args.env)
    except ConfigError as exc:
        print(f"weightslabd: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if settings.grpc_verbosity:
        os.environ["GRPC_VERBOSITY"] = settings.grpc_verbosity  # read once, when grpc loads: so before that
    from weightslabd.api.server import BindError
    from weightslabd.security.tls import TlsError

    try:
        if args.command == "config":
            print(render_effective(settings))
            from weightslabd.agent.config import render as render_agent

            key = settings.openrouter_api_key
            valid, text = render_agent(settings.agent_config_path, key.get_secret_value() if key else "")
            print(text, end="")
            return 0 if valid else EXIT_USAGE
        if args.command == "certs":
            return _certs(settings, args)
        if args.command == "export":
            from weightslabd.store.export import run_export

            return run_export(settings, args.run, args.export_to)
        if args.command == "cli":
            from weightslabd.daemon import read_state
            from weightslabd.ops.cli_client import run as run_cli

            return run_cli(settings, args.command_line, read_state(settings.runtime_dir()))
        return _serve(settings)
    except (ConfigError, TlsError, BindError) as exc:
        print(f"weightslabd: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _certs(settings: Settings, args: argparse.Namespace) -> int:
    from weightslabd.security.tls import generate_certs

    cert_dir = (args.dir or settings.grpc_tls_cert_dir).expanduser()
    paths = generate_certs(cert_dir, args.host, overwrite=args.force)
    for role, path in paths.items():
        print(f"{role:>12}  {path}")
    return 0


def _serve(settings: Settings) -> int:
    from weightslabd.api.server import BindError
    from weightslabd.daemon import BootError, Daemon  # grpc and friends load only when serving
    from weightslabd.ops.logs import configure_logging, get_logger
    from weightslabd.security.tls import TlsError

    configure_logging(settings.weightslab_log_level, log_to_file=settings.weightslab_log_to_file,
                      log_dir=settings.log_dir(), secrets=settings.secret_values())
    for warning in unknown_key_warnings(settings):  # a mistyped GRPC_AUTH_TOKEN must not pass unseen
        print(f"weightslabd: {warning}", file=sys.stderr)
        get_logger("weightslabd").warning(warning)
    daemon = Daemon(settings)
    try:
        daemon.boot()
    except BootError as exc:
        print(f"weightslabd: {exc}", file=sys.stderr)
        daemon.shutdown()
        return EXIT_USAGE
    except (TlsError, BindError):
        daemon.shutdown()
        raise
    return daemon.run()


if __name__ == "__main__":
    sys.exit(main())
