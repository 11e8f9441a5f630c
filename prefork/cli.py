"""``prefork-serve``: the command-line entry point.

Strategy: parse flags, load and validate the configuration (flags override
the file, the file overrides defaults), bind every listening socket, then hand
over to the master. Exit codes: 0 clean stop, 1 cannot listen, 2 bad
configuration or usage, 3 the application could not be loaded.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
from collections.abc import Sequence

from prefork import __version__, systemd
from prefork.config import COMMAND_LINE, Config, describe_config, load_config
from prefork.errors import ConfigError
from prefork.logs import error_log, setup_logging
from prefork.master import Master
from prefork.privileges import drop_privileges, service_owner
from prefork.sockets import BindAddress, BindError, bind_listener, parse_bind
from prefork.status import render_text

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


def overrides(args: argparse.Namespace) -> dict[str, dict[str, object]]:
    """The settings given as flags, which win over the file (at start and on every reload)."""
    server: dict[str, object] = {
        "bind": tuple(args.bind) if args.bind else None,
        "workers": args.workers,
        "threads": args.threads,
        "app": args.app,
    }
    return {"server": server}


def load(args: argparse.Namespace) -> Config:
    """Load the configuration named by the flags, with the flags applied on top."""
    return load_config(args.config, overrides(args))


def status_main(argv: Sequence[str]) -> int:
    """``prefork-serve status [-c FILE] [-b ADDR]``: print the status table of a running server."""
    parser = argparse.ArgumentParser(prog="prefork-serve status",
                                     description="Show what every worker of a running server is doing.")
    parser.add_argument("-c", "--config", metavar="FILE", help="the server's INI configuration file")
    parser.add_argument("-b", "--bind", metavar="ADDR", help="address to ask (default: the first bind)")
    parser.add_argument("--json", action="store_true", help="print the raw JSON")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        print(f"prefork-serve: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if not cfg.status.path:
        print("prefork-serve: the status page is off ([status] path is empty)", file=sys.stderr)
        return EXIT_CONFIG
    address = parse_bind(args.bind or cfg.server.bind[0])
    try:
        document = fetch_status(address, cfg.status.path)
    except (OSError, ValueError) as exc:
        print(f"prefork-serve: cannot read the status of {address.text}: {exc}", file=sys.stderr)
        return EXIT_BIND
    sys.stdout.write(json.dumps(document, indent=1) + "\n" if args.json else render_text(document))
    return 0


def fetch_status(address: BindAddress, path: str, timeout: float = 5.0) -> dict[str, object]:
    """GET the status page as JSON from a server listening on ``address``."""
    target = address.address
    if isinstance(target, tuple):
        host, port = target
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1" if address.family == socket.AF_INET else "::1"
        target = (host, port)
    with socket.socket(address.family, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(target)
        sock.sendall(f"GET {path}?format=json HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode())
        response = b""
        while chunk := sock.recv(65536):
            response += chunk
    head, _, body = response.partition(b"\r\n\r\n")
    status = head.split(b" ", 2)[1:2]
    if status != [b"200"]:
        raise ValueError(f"the server answered {head.splitlines()[0].decode('latin-1') if head else 'nothing'}")
    result: dict[str, object] = json.loads(body)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``prefork-serve``; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["status"]:
        return status_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        cfg = load(args)
    except ConfigError as exc:
        print(f"prefork-serve: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.check_config:
        sys.stdout.write(describe_config(cfg))
        return 0
    try:
        setup_logging(cfg.logging.error_log, cfg.logging.access_log, cfg.logging.level,
                      service_owner(cfg.server.user, cfg.server.group))
    except (ConfigError, ValueError) as exc:
        print(f"prefork-serve: {cfg.source or COMMAND_LINE}: {exc}", file=sys.stderr)
        return EXIT_CONFIG
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
    try:
        drop_privileges(cfg.server.user, cfg.server.group, [cfg.staging.dir, cfg.uploads.dir])
    except (ValueError, OSError) as exc:
        error_log.error("cannot switch to user %r / group %r: %s", cfg.server.user, cfg.server.group, exc)
        return EXIT_CONFIG
    return Master(cfg, listeners, owns_unix_paths=not activated, overrides=overrides(args)).run()


if __name__ == "__main__":
    sys.exit(main())
