"""``prefork-serve``: the command-line entry point.

Strategy: parse flags, load and validate the configuration (flags override
the file, the file overrides defaults), bind every listening socket, then hand
over to the master. Exit codes: 0 clean stop, 1 cannot listen, 2 bad
configuration or usage, 3 the application could not be loaded.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from prefork import __version__, systemd
from prefork.config import Config, describe_config, load_config
from prefork.errors import ConfigError
from prefork.logs import error_log, setup_logging
from prefork.master import Master
from prefork.sockets import BindError, bind_listener, parse_bind

EXIT_BIND = 1
EXIT_CONFIG = 2


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for ``prefork-serve``."""
    parser = argparse.ArgumentParser(
        prog="prefork-serve",
        description="Pre-fork HTTP/1.1 + WebSocket server for WSGI and native prefork apps.")
    parser.add_argument("app", nargs="?", default=None,
                        help="the application as module:callable (default: [server] app, else the demo)")
    parser.add_argument("-c", "--config", metavar="FILE", help="INI configuration file")
    parser.add_argument("-b", "--bind", action="append", metavar="ADDR",
                        help="listen on host:port, [v6]:port or unix:/path (repeatable)")
    parser.add_argument("-w", "--workers", type=int, metavar="N", help="worker processes")
    parser.add_argument("--threads", type=int, metavar="N", help="handler threads per worker (0 = inline)")
    parser.add_argument("--check-config", action="store_true",
                        help="validate the configuration, print the effective settings and exit")
    parser.add_argument("--version", action="version", version=f"prefork {__version__}")
    return parser


def load(args: argparse.Namespace) -> Config:
    """Load the configuration named by the flags, with the flags applied on top."""
    server: dict[str, object] = {
        "bind": tuple(args.bind) if args.bind else None,
        "workers": args.workers,
        "threads": args.threads,
        "app": args.app,
    }
    return load_config(args.config, {"server": server})


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``prefork-serve``; returns the process exit code."""
    args = build_parser().parse_args(argv)
    try:
        cfg = load(args)
    except ConfigError as exc:
        print(f"prefork-serve: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.check_config:
        sys.stdout.write(describe_config(cfg))
        return 0
    setup_logging(cfg.logging.error_log, cfg.logging.access_log, cfg.logging.level)
    listeners = systemd.listen_fds()
    activated = bool(listeners)
    if not listeners:
        try:
            for text in cfg.server.bind:
                listeners.append(bind_listener(parse_bind(text), cfg.server.backlog))
        except BindError as exc:
            error_log.error("%s", exc.strerror)
            for sock in listeners:
                sock.close()
            return EXIT_BIND
    return Master(cfg, listeners, owns_unix_paths=not activated).run()


if __name__ == "__main__":
    sys.exit(main())
