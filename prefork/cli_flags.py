"""The command-line flags that set configuration keys, as one table.

Strategy: every flag that stands for a key of ``conf/server.ini`` is a row here:
its spellings (gunicorn's first, where gunicorn has the setting, then the
names of our own keys), the section and key it sets, and its help. argparse
keeps every value as the text typed, and ``overrides()`` hands those texts to
``load_config``, which validates them with the same parsers as the file; so a
bad ``--timeout 5x`` fails exactly like ``timeout = 5x`` would, naming
"command line" instead of a file and line. The master applies the same
overrides again after every HUP, so a flag keeps winning over the file.
Flags that are not settings (``-c``, ``--chdir``, ``--pythonpath``,
``--check-config``) live in ``prefork.cli``.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

__all__ = ["FLAGS", "Flag", "add_setting_flags", "overrides"]


@dataclass(frozen=True, slots=True)
class Flag:
    """One command-line flag that sets one configuration key.

    Attributes:
        names: the spellings, e.g. ``("-t", "--timeout")``.
        section: the INI section of the key.
        key: the INI key.
        metavar: the placeholder shown in ``--help``.
        help: what it does (the key is appended in ``--help``).
        switch: a flag without a value (sets the boolean key to on).
        repeat: may be given several times; the values form a list.
    """

    names: tuple[str, ...]
    section: str
    key: str
    metavar: str
    help: str
    switch: bool = False
    repeat: bool = False

    @property
    def dest(self) -> str:
        """The argparse attribute holding the value."""
        return f"set_{self.section}_{self.key}"


FLAGS: tuple[Flag, ...] = (
    Flag(("-b", "--bind"), "server", "bind", "ADDR",
         "listen on host[:port] (port 8000 if left out), [ipv6]:port or unix:/path; repeatable; "
         "replaces the file's list", repeat=True),
    Flag(("-w", "--workers"), "server", "workers", "N",
         "worker processes, or auto (WEB_CONCURRENCY if set, else one per CPU)"),
    Flag(("--threads",), "server", "threads", "N", "handler threads per worker (0 = inline)"),
    Flag(("--worker-connections", "--max-connections"), "server", "max_connections", "N",
         "open connections per worker"),
    Flag(("--backlog",), "server", "backlog", "N", "listen() backlog per socket"),
    Flag(("-u", "--user"), "server", "user", "USER", "run as this user after binding"),
    Flag(("-g", "--group"), "server", "group", "GROUP", "run as this group after binding"),
    Flag(("-p", "--pid"), "server", "pidfile", "FILE", "write the master's process id to FILE"),
    Flag(("-m", "--umask"), "server", "umask", "MASK", "file mode creation mask, octal (022)"),
    Flag(("--reload",), "server", "reload", "",
         "restart workers when the app's source changes (development only)", switch=True),
    Flag(("-t", "--timeout"), "process", "timeout", "TIME",
         "restart a worker silent for this long (seconds, or 500ms/30s/5m)"),
    Flag(("--graceful-timeout",), "process", "graceful_timeout", "TIME",
         "time workers get to finish requests on stop or reload"),
    Flag(("--max-requests",), "process", "max_requests", "N",
         "recycle a worker after N requests (0 = never)"),
    Flag(("--max-requests-jitter",), "process", "max_requests_jitter", "N",
         "add a random 0..N to --max-requests per worker"),
    Flag(("--keep-alive",), "limits", "keepalive_timeout", "TIME", "idle keep-alive timeout"),
    Flag(("--limit-request-line",), "limits", "max_request_line", "SIZE",
         "longest request line (414 beyond)"),
    Flag(("--limit-request-fields",), "limits", "max_header_count", "N",
         "most header fields in a request (431 beyond)"),
    Flag(("--access-logfile", "--access-log"), "logging", "access_log", "FILE",
         "access log file ('-' = stderr, '' = off)"),
    Flag(("--error-logfile", "--log-file", "--error-log"), "logging", "error_log", "FILE",
         "error log file ('-' = stderr)"),
    Flag(("--log-level",), "logging", "level", "LEVEL", "debug, info, warning, error or critical"),
    Flag(("--certfile",), "tls", "certfile", "FILE",
         "TLS certificate (chain) in PEM: binds without a scheme serve HTTPS"),
    Flag(("--keyfile",), "tls", "keyfile", "FILE", "TLS private key in PEM (if not in the certfile)"),
    Flag(("--ca-certs",), "tls", "ca_certs", "FILE", "CA certificates to verify client certificates with"),
    Flag(("--forwarded-allow-ips",), "proxy", "trusted", "IPS",
         "comma-separated proxies (IPs, networks, unix, *) whose X-Forwarded-*/Forwarded headers are believed"),
)


def add_setting_flags(parser: argparse.ArgumentParser) -> None:
    """Add every flag of ``FLAGS`` to ``parser``, in a group of its own.

    Args:
        parser: the ``prefork-serve`` parser.
    """
    group = parser.add_argument_group("settings (each overrides a key of the INI file)")
    for flag in FLAGS:
        where = f"[{flag.section}] {flag.key}"
        if flag.switch:
            # default None, not False: "not given" must leave the file's value alone.
            group.add_argument(*flag.names, dest=flag.dest, action="store_true", default=None,
                               help=f"{flag.help} ({where} = on)")
        else:
            group.add_argument(*flag.names, dest=flag.dest, metavar=flag.metavar,
                               action="append" if flag.repeat else "store",
                               help=f"{flag.help} ({where})")


def overrides(args: argparse.Namespace) -> dict[str, dict[str, object]]:
    """The settings given as flags, by section and key; None where a flag was not given.

    Args:
        args: what ``parse_args`` returned for a parser set up by ``add_setting_flags``.

    Returns:
        ``{"server": {"workers": "2", ...}, ...}``, for ``load_config``.
    """
    result: dict[str, dict[str, object]] = {}
    for flag in FLAGS:
        value = getattr(args, flag.dest)
        result.setdefault(flag.section, {})[flag.key] = tuple(value) if flag.repeat and value else value
    return result
