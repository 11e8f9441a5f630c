"""Command-line flags under gunicorn's names, WEB_CONCURRENCY, umask, help: in-process and as subprocesses.

Each flag must land on its configuration key through the same validation as
the file (so a bad value names "command line" and the key); the subprocess
tests check what a user sees.
"""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from prefork.cli import build_parser, overrides
from prefork.cli_flags import FLAGS
from prefork.config.config import Config, ServerConfig, describe_config, load_config
from prefork.config.values import UMASK_FORM, parse_umask
from prefork.protocol.errors import ConfigError
from tests.server import REPO, Server, wait_for

NO_ENV: dict[str, str] = {}


def _load(*argv: str, environ: dict[str, str] | None = None) -> Config:
    args = build_parser().parse_args(list(argv))
    return load_config(args.config, overrides(args), environ=NO_ENV if environ is None else environ)


def _run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k != "WEB_CONCURRENCY"}
    environ.update(PYTHONPATH=str(REPO), **(env or {}))
    return subprocess.run([sys.executable, "-m", "prefork.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=30, env=environ)


# --- the flag table -------------------------------------------------------------------------


def test_every_flag_names_a_real_key() -> None:
    for flag in FLAGS:
        section = getattr(Config(), flag.section)
        assert flag.key in {f.name for f in dataclasses.fields(section)}, flag


@pytest.mark.parametrize("argv, section, key, value", [
    (["--access-logfile", "/tmp/a.log"], "logging", "access_log", "/tmp/a.log"),
    (["--access-log", "/tmp/b.log"], "logging", "access_log", "/tmp/b.log"),
    (["--access-logfile", ""], "logging", "access_log", ""),
    (["--error-logfile", "/tmp/e.log"], "logging", "error_log", "/tmp/e.log"),
    (["--log-file", "/tmp/f.log"], "logging", "error_log", "/tmp/f.log"),
    (["--error-log", "/tmp/g.log"], "logging", "error_log", "/tmp/g.log"),
    (["--log-level", "WARNING"], "logging", "level", "warning"),
    (["-m", "027"], "server", "umask", 0o27),
    (["--umask", "0o22"], "server", "umask", 0o22),
    (["-p", "/run/p.pid"], "server", "pidfile", "/run/p.pid"),
    (["--pid", "/run/q.pid"], "server", "pidfile", "/run/q.pid"),
    (["-t", "90"], "process", "timeout", 90.0),
    (["--timeout", "500ms"], "process", "timeout", 0.5),
    (["--graceful-timeout", "5"], "process", "graceful_timeout", 5.0),
    (["--max-requests", "1000"], "process", "max_requests", 1000),
    (["--max-requests-jitter", "50"], "process", "max_requests_jitter", 50),
    (["-w", "3"], "server", "workers", 3),
    (["--workers", "2"], "server", "workers", 2),
    (["--threads", "0"], "server", "threads", 0),
    (["--worker-connections", "10"], "server", "max_connections", 10),
    (["--max-connections", "11"], "server", "max_connections", 11),
    (["--backlog", "64"], "server", "backlog", 64),
    (["-u", "nobody", "-g", "nogroup"], "server", "user", "nobody"),
    (["--group", "nogroup"], "server", "group", "nogroup"),
    (["--reload"], "server", "reload", True),
    (["--keep-alive", "2"], "limits", "keepalive_timeout", 2.0),
    (["--limit-request-line", "4096"], "limits", "max_request_line", 4096),
    (["--limit-request-fields", "50"], "limits", "max_header_count", 50),
    (["-b", "localhost", "-b", "[::1]:9"], "server", "bind", ("localhost:8000", "[::1]:9")),
])
def test_flag_sets_its_key(argv: list[str], section: str, key: str, value: object) -> None:
    assert getattr(getattr(_load(*argv), section), key) == value


def test_flags_not_given_leave_the_file_alone(tmp_path: Path) -> None:
    path = tmp_path / "s.ini"
    path.write_text("[server]\nreload = on\numask = 077\n[process]\ntimeout = 7s\n"
                    "[logging]\nerror_log = /tmp/x.log\n")
    cfg = _load("-c", str(path))
    assert cfg.server.reload is True and cfg.server.umask == 0o77
    assert cfg.process.timeout == 7.0 and cfg.logging.error_log == "/tmp/x.log"
    cfg = _load("-c", str(path), "-t", "9", "--log-file", "-")
    assert cfg.process.timeout == 9.0 and cfg.logging.error_log == "-"


@pytest.mark.parametrize("argv, message", [
    (["-t", "5x"], "command line: [process] timeout = '5x': expected a duration like 500ms, 30s, 5m, 1h"),
    (["--max-requests", "-1"], "command line: [process] max_requests = '-1': expected a whole number >= 0"),
    (["--log-level", "loud"], "command line: [logging] level = 'loud': expected one of: debug, info, "
                              "warning, error, critical"),
    (["--umask", "999"], f"command line: [server] umask = '999': {UMASK_FORM}"),
    (["-w", "lots"], "command line: [server] workers = 'lots': expected a whole number >= 1 or 'auto'"),
])
def test_bad_flag_values_name_the_command_line(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        _load(*argv)
    assert str(info.value) == message


# --- umask --------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, value", [
    ("", None), ("022", 0o22), ("0022", 0o22), ("0o027", 0o27), ("0O777", 0o777), ("7", 0o7), ("000", 0),
])
def test_parse_umask(text: str, value: int | None) -> None:
    assert parse_umask(text) == value


@pytest.mark.parametrize("text", ["8", "0x12", "1000", "0o", "-022", "22 7", "0o1777"])
def test_parse_umask_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="^" + re.escape(UMASK_FORM) + "$"):
        parse_umask(text)


def test_umask_and_reload_round_trip(tmp_path: Path) -> None:
    for server in (ServerConfig(umask=0o22, reload=True), ServerConfig(umask=0), ServerConfig()):
        cfg = Config(server=server)
        text = describe_config(cfg)
        path = tmp_path / "round.ini"
        path.write_text(text)
        loaded = load_config(path, environ=NO_ENV)
        assert loaded.server.umask == server.umask and loaded.server.reload == server.reload
    assert "umask = 0o022\n" in describe_config(Config(server=ServerConfig(umask=0o22)))


# --- WEB_CONCURRENCY ------------------------------------------------------------------------------


def test_web_concurrency_is_the_default_for_workers(tmp_path: Path) -> None:
    env = {"WEB_CONCURRENCY": "5"}
    assert _load(environ=env).server.workers == 5  # env > default
    assert _load(environ=NO_ENV).server.workers == (os.cpu_count() or 1)
    assert _load(environ={"WEB_CONCURRENCY": ""}).server.workers == (os.cpu_count() or 1)
    path = tmp_path / "s.ini"
    path.write_text("[server]\nworkers = 3\n")
    assert _load("-c", str(path), environ=env).server.workers == 3  # file > env
    assert _load("-c", str(path), "-w", "2", environ=env).server.workers == 2  # flag > file
    path.write_text("[server]\nworkers = auto\n")
    assert _load("-c", str(path), environ=env).server.workers == 5  # auto defers to it
    assert _load("-w", "auto", environ=env).server.workers == 5


@pytest.mark.parametrize("bad", ["lots", "0", "-2", "1.5", "²"])
def test_bad_web_concurrency_is_a_clear_error(bad: str) -> None:
    with pytest.raises(ConfigError) as info:
        _load(environ={"WEB_CONCURRENCY": bad})
    assert str(info.value) == (f"environment: WEB_CONCURRENCY = {bad!r}: expected a whole number >= 1 "
                               "(the number of worker processes), or unset it")
    assert _load("-w", "2", environ={"WEB_CONCURRENCY": bad}).server.workers == 2  # not consulted


def test_web_concurrency_end_to_end() -> None:
    result = _run_cli("--check-config", "tests.apps.echo:app", env={"WEB_CONCURRENCY": "3"})
    assert result.returncode == 0, result.stderr
    assert re.search(r"^workers = 3$", result.stdout, re.M)
    result = _run_cli("--check-config", "tests.apps.echo:app", env={"WEB_CONCURRENCY": "many"})
    assert result.returncode == 2
    assert result.stderr == ("prefork-serve: environment: WEB_CONCURRENCY = 'many': expected a whole "
                             "number >= 1 (the number of worker processes), or unset it\n")


# --- what the user sees ---------------------------------------------------------------------------


def test_bind_host_without_port_means_8000() -> None:
    result = _run_cli("--check-config", "-b", "localhost", "tests.apps.echo:app")
    assert result.returncode == 0, result.stderr
    assert re.search(r"^bind = localhost:8000$", result.stdout, re.M)
    result = _run_cli("--check-config", "-b", "localhost:http", "tests.apps.echo:app")
    assert result.returncode == 2
    assert "command line: [server] bind = 'localhost:http': expected host:port" in result.stderr
    assert "('" not in result.stderr  # the value, not a Python tuple


def test_help_shows_the_status_subcommand_and_gunicorn_flags() -> None:
    result = _run_cli("--help")
    assert result.returncode == 0
    out = result.stdout
    assert "prefork-serve status [-c FILE] [-b ADDR] [--json]" in out.split("\n\n")[0]  # usage
    assert re.search(r"^  status +show what every worker of a running server is doing", out, re.M)
    for name in ("--access-logfile", "--error-logfile", "--log-file", "--log-level", "--chdir",
                 "--pythonpath", "-m MASK, --umask", "-p FILE, --pid", "-t TIME, --timeout",
                 "--graceful-timeout", "--max-requests", "--max-requests-jitter", "--reload",
                 "--access-log FILE", "--error-log FILE", "WEB_CONCURRENCY"):
        assert name in out, name


def test_chdir_and_pythonpath(tmp_path: Path) -> None:
    app_dir = tmp_path / "code"
    app_dir.mkdir()
    (app_dir / "chdir_app.py").write_text("def app(environ, start_response):\n    return [b'']\n")
    (tmp_path / "rel.ini").write_text("[uploads]\ndir = stored\n")
    # -c is read relative to where we started; the file's relative paths and the app
    # import then work from the --chdir directory.
    result = _run_cli("-c", "rel.ini", "--chdir", str(app_dir), "--check-config", "chdir_app:app",
                      cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"(from {tmp_path / 'rel.ini'})" in result.stdout
    result = _run_cli("--check-config", "chdir_app:app", cwd=tmp_path)
    assert result.returncode == 3
    result = _run_cli("--pythonpath", f"{tmp_path},{app_dir}", "--check-config", "chdir_app:app",
                      cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    result = _run_cli("--chdir", str(tmp_path / "nope"), "--check-config")
    assert result.returncode == 2
    assert result.stderr == f"prefork-serve: command line: --chdir {str(tmp_path / 'nope')!r}: " \
                            "No such file or directory\n"
    result = _run_cli("--pythonpath", f"{app_dir}, missing", "--check-config", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == "prefork-serve: command line: --pythonpath entry 'missing': no such directory\n"


def test_new_flags_win_over_the_file_across_a_reload(start_server: Callable[..., Server], tmp_path: Path) -> None:
    flag_log = tmp_path / "flag-access.log"
    server = start_server(app="tests.apps.echo:app",
                          extra_args=["--access-log", str(flag_log), "--graceful-timeout", "3"])
    server.signal(signal.SIGHUP)
    wait_for(lambda: "reload complete" in server.output(), 20, what="the reload")
    requests.get(server.url + "/after-reload", timeout=5)
    wait_for(lambda: flag_log.exists() and "/after-reload" in flag_log.read_text(), 10,
             what="the access line in the flag's log")
    assert not server.access_log.exists() or "/after-reload" not in server.access_log.read_text()


def test_status_takes_the_same_bind_forms() -> None:
    result = _run_cli("status", "-b", "localhost")
    assert "Traceback" not in result.stderr
    assert "localhost:8000" in result.stderr or result.returncode == 0  # nothing listens, or a server does
    result = _run_cli("status", "-b", "bad!")
    assert result.returncode == 2
    assert result.stderr.startswith("prefork-serve: command line: -b 'bad!': expected host:port")
