"""``prefork-serve``: the command-line entry point.

Strategy: parse flags, set up the process (``--chdir``, ``--pythonpath``),
load and validate the configuration (flags override the file, the file
overrides ``WEB_CONCURRENCY``, which overrides defaults), bind every listening
socket, then hand over to the master. The flags that set configuration keys
are a table in ``prefork.cli_flags``; ``--check-config`` is ``prefork.checks``.
Exit codes: 0 clean stop, 1 cannot listen, 2 bad configuration or usage, 3 the
application could not be loaded.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import ssl
import sys
import tempfile
from collections.abc import Sequence

from prefork import __version__, cli_flags
from prefork.apps import reloader
from prefork.process import systemd
from prefork.checks import broadcast_problems, check_config
from prefork.apps.broadcast_redis import probe, redacted
from prefork.worker.settings import broadcast_settings
from prefork.config.config import COMMAND_LINE, Config, describe_config, listener_is_tls, load_config
from prefork.config.sections import parse_listen
from prefork.config.values import format_size
from prefork.staging.diskspace import free_bytes
from prefork.protocol.errors import ConfigError
from prefork.process.exit_codes import EXIT_BIND, EXIT_CONFIG
from prefork.config.logs import error_log, setup_logging
from prefork.supervisor.master import Master
from prefork.process.privileges import give_directories, service_owner, socket_owner
from prefork.process.sockets import BindAddress, BindError, bind_listener, parse_bind, proxy_protocol_listeners
from prefork.process.tls_context import listener_contexts
from prefork.process.status import render_text


USAGE = """%(prog)s [-c FILE] [options] [APP]
       %(prog)s status [-c FILE] [-b ADDR] [--json]"""
EPILOG = """subcommands:
  status            show what every worker of a running server is doing (the
                    status page as a table, or --json); 'prefork-serve status -h'

environment:
  WEB_CONCURRENCY   worker processes, unless -w or [server] workers gives a number

exit codes: 0 clean stop, 1 cannot listen, 2 bad configuration or usage,
3 the application could not be imported"""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for ``prefork-serve``."""
    parser = argparse.ArgumentParser(
        prog="prefork-serve", usage=USAGE, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Pre-fork HTTP/1.1 + WebSocket server for WSGI and native prefork apps.")
    parser.add_argument("app", nargs="?", default=None, metavar="APP",
                        help="the application as module:callable (default: [server] app, else the demo)")
    parser.add_argument("-c", "--config", metavar="FILE", help="INI configuration file")
    parser.add_argument("--chdir", metavar="DIR",
                        help="change to DIR before loading the configuration and the application")
    parser.add_argument("--pythonpath", metavar="DIRS",
                        help="comma-separated directories to put first on sys.path for the application")
    parser.add_argument("--check-config", action="store_true",
                        help="check the configuration, the files it names and the application import, "
                             "print the effective settings and exit (0 ok, 2 bad config, 3 app fails)")
    parser.add_argument("--version", action="version", version=f"prefork {__version__}")
    cli_flags.add_setting_flags(parser)
    return parser


def overrides(args: argparse.Namespace) -> dict[str, dict[str, object]]:
    """The settings given as flags, which win over the file (at start and on every reload)."""
    result = cli_flags.overrides(args)
    result["server"]["app"] = args.app
    return result


def prepare_process(args: argparse.Namespace) -> str | None:
    """Apply ``--chdir`` and ``--pythonpath``; return the config file's path.

    The config path is made absolute against the starting directory first (as
    gunicorn reads ``-c``), so that ``--chdir`` moves everything the file names
    (relative log, upload and staging paths) but not the file itself, and so that
    the master can re-read it on HUP.

    Raises:
        ConfigError: the directory cannot be entered, or a pythonpath entry is not a directory.
    """
    config: str | None = args.config
    if args.chdir is not None:
        config = os.path.abspath(config) if config else None
        try:
            os.chdir(args.chdir)
        except OSError as exc:
            raise ConfigError(f"{COMMAND_LINE}: --chdir {args.chdir!r}: {exc.strerror}") from None
    entries = [entry.strip() for entry in (args.pythonpath or "").split(",") if entry.strip()]
    for entry in reversed(entries):  # inserted at the front, so the first entry ends up first
        path = os.path.abspath(entry)
        if not os.path.isdir(path):
            raise ConfigError(f"{COMMAND_LINE}: --pythonpath entry {entry!r}: no such directory")
        if path not in sys.path:
            sys.path.insert(0, path)
    return config


def load(args: argparse.Namespace) -> Config:
    """Set up the process, then load the configuration with the flags applied on top."""
    return load_config(prepare_process(args), overrides(args))


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
    try:
        # The same address forms as -b of the server (a host alone means port 8000).
        address = parse_bind(parse_listen(args.bind) if args.bind else cfg.server.bind[0])
    except ValueError as exc:
        print(f"prefork-serve: {COMMAND_LINE}: -b {args.bind!r}: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        document = fetch_status(address, cfg.status.path, tls=listener_is_tls(address.text, cfg.tls))
    except (OSError, ValueError) as exc:
        print(f"prefork-serve: cannot read the status of {address.text}: {exc}", file=sys.stderr)
        return EXIT_BIND
    sys.stdout.write(json.dumps(document, indent=1) + "\n" if args.json else render_text(document))
    return 0


def fetch_status(address: BindAddress, path: str, timeout: float = 5.0, *, tls: bool = False) -> dict[str, object]:
    """GET the status page as JSON from a server listening on ``address`` (over TLS with ``tls``)."""
    target = address.address
    if isinstance(target, tuple):
        host, port = target
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1" if address.family == socket.AF_INET else "::1"
        target = (host, port)
    with socket.socket(address.family, socket.SOCK_STREAM) as plain:
        plain.settimeout(timeout)
        plain.connect(target)
        sock = _status_tls().wrap_socket(plain) if tls else plain
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


def _status_tls() -> ssl.SSLContext:
    # The server's own status, asked by its address on this machine: the certificate
    # names the public host, not 127.0.0.1, so it is not checked (the answer is read-only).
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


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
        code = check_config(cfg)
        if code == 0:
            sys.stdout.write(describe_config(cfg))
        return code
    return serve(cfg, overrides(args))


def serve(cfg: Config, flags: dict[str, dict[str, object]]) -> int:
    """Bind, drop privileges and run the master; returns the exit code.

    Args:
        cfg: the loaded configuration.
        flags: the command-line overrides, re-applied by the master on every reload.
    """
    if cfg.server.umask is not None:
        os.umask(cfg.server.umask)
    try:
        setup_logging(cfg.logging.error_log, cfg.logging.access_log, cfg.logging.level,
                      service_owner(cfg.server.user, cfg.server.group))
        unix_owner = socket_owner(cfg.server.socket_owner, cfg.server.user, cfg.server.group)
    except (ConfigError, ValueError) as exc:
        print(f"prefork-serve: {cfg.source or COMMAND_LINE}: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if cfg.websocket.broadcast == "redis" and not _redis_usable(cfg):
        return EXIT_CONFIG
    reloader.set_config_file(cfg.source)  # workers inherit it; used only under --reload
    _warn_if_disk_too_small(cfg)
    if cfg.server.reload:
        error_log.warning("reload is on: workers restart when a source file changes (development only)")
    listeners = systemd.listen_fds()
    activated = bool(listeners)
    if not listeners:
        try:
            for text in cfg.server.bind:
                listeners.append(bind_listener(parse_bind(text), cfg.server.backlog,
                                               unix_mode=cfg.server.socket_mode, unix_owner=unix_owner))
        except BindError as exc:
            error_log.error("%s", exc.strerror)
            _close_listeners(listeners, cfg)
            return EXIT_BIND
    try:
        tls = listener_contexts(cfg, listeners, None if activated else cfg.server.bind)
    except ConfigError as exc:
        error_log.error("%s", exc)
        _close_listeners(listeners, cfg, unlink=not activated)
        return EXIT_CONFIG
    try:
        give_directories(cfg.server.user, cfg.server.group, [cfg.staging.dir, cfg.uploads.dir])
    except OSError as exc:
        error_log.error("cannot prepare the directories for user %r / group %r: %s",
                        cfg.server.user, cfg.server.group, exc)
        _close_listeners(listeners, cfg, unlink=not activated)
        return EXIT_CONFIG
    return Master(cfg, listeners, owns_unix_paths=not activated, overrides=flags, tls=tls,
                  proxy_protocol=proxy_protocol_listeners(cfg, listeners, None if activated else cfg.server.bind)).run()


def _redis_usable(cfg: Config) -> bool:
    """Refuse ``broadcast = redis`` without its client; only warn when Redis is down."""
    problems = broadcast_problems(cfg)
    if problems:
        error_log.error("%s", problems[0])
        return False
    settings = broadcast_settings(cfg)
    unreachable = probe(settings)
    if unreachable:
        error_log.warning("[websocket] broadcast = redis: Redis at %s does not answer (%s); starting anyway: "
                          "broadcasts reach this server's workers only until it does", redacted(settings.redis_url),
                          unreachable)
    return True


def _warn_if_disk_too_small(cfg: Config) -> None:
    """Say at start-up, not only per refused request, that min_free_disk is out of reach."""
    staging = cfg.staging
    try:
        free = free_bytes(staging.dir or None)
    except OSError as exc:
        error_log.warning("[staging] dir = %r: cannot read its free space: %s", staging.dir, exc.strerror or exc)
        return
    if staging.min_free_disk and free < staging.min_free_disk:
        error_log.warning("[staging] dir %s has %.1f GiB free, less than [staging] min_free_disk = %s: every "
                          "body over memory_threshold (%s) is refused with 507 until space is freed or the "
                          "setting lowered", staging.dir or tempfile.gettempdir(), free / 2**30,
                          format_size(staging.min_free_disk), format_size(staging.memory_threshold))


def _close_listeners(listeners: list[socket.socket], cfg: Config, unlink: bool = True) -> None:
    """Close what was bound before a failed start, and remove the unix socket files made."""
    for sock in listeners:
        sock.close()
    if unlink:
        for text in cfg.server.bind[:len(listeners)]:
            if text.startswith("unix:"):
                with contextlib.suppress(OSError):
                    os.unlink(text[5:])


if __name__ == "__main__":
    sys.exit(main())
