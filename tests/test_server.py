"""golive as an operator runs it (contract sections 1, 6, 7, 10): a real process, started
with ``python -m golive`` or the ``golive`` console script, configured only through its
environment, talked to over HTTP on 127.0.0.1, stopped with a signal.

Every wait is bounded by a deadline; nothing sleeps. Each process is killed at the end of
its test whatever happened.
"""

from __future__ import annotations

import ipaddress
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any, TypeAlias
from urllib.parse import urlsplit

import pytest

from golive.config import Config

START_TIMEOUT = 20.0
STOP_TIMEOUT = 20.0
EXIT_TIMEOUT = 30.0
LISTENING = "golive listening"

Command: TypeAlias = tuple[str, ...]


def python_m() -> Command:
    return (sys.executable, "-m", "golive")


def console_script() -> Command:
    """The ``golive`` entry point installed next to this interpreter."""
    path = shutil.which("golive", path=os.path.dirname(sys.executable))  # noqa: PTH120  shutil.which takes a PATH string
    assert path is not None, "the golive console script is not installed in the venv"
    return (path,)


COMMANDS = {"python-m": python_m, "console-script": console_script}


def environment(overrides: Mapping[str, str]) -> dict[str, str]:
    """This process's environment without any golive variable, listening on 127.0.0.1."""
    env = dict(os.environ)
    for name in Config().describe():
        env.pop(name, None)
    # The logs must reach a pipe line by line without help from the interpreter.
    env.pop("PYTHONUNBUFFERED", None)
    env["HTTP_ADDR"] = "127.0.0.1:0"
    env.update(overrides)
    return env


class Golive:
    """A running golive process whose stdout is read line by line, with deadlines."""

    def __init__(self, command: Sequence[str], env: Mapping[str, str], cwd: Path) -> None:
        self.process = subprocess.Popen(
            list(command),
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
        )
        assert self.process.stdout is not None
        assert self.process.stderr is not None
        self.stdout: list[str] = []  # the lines read so far
        self._stderr: list[str | None] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._readers = [
            threading.Thread(target=self._read, args=(self.process.stdout, self._lines.put)),
            threading.Thread(target=self._read, args=(self.process.stderr, self._stderr.append)),
        ]
        for reader in self._readers:
            reader.daemon = True
            reader.start()
        self.url = ""
        self._eof = False

    @staticmethod
    def _read(stream: IO[str], sink: Callable[[str | None], None]) -> None:
        for line in stream:
            sink(line.rstrip("\n"))
        sink(None)

    def next_line(self, deadline: float) -> str | None:
        """The next stdout line; None once stdout is closed. Fails at ``deadline``."""
        if self._eof:
            return None
        try:
            line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise AssertionError(f"no output from golive in time; so far: {self.stdout}") from None
        if line is None:
            self._eof = True
        else:
            self.stdout.append(line)
        return line

    def wait_listening(self, timeout: float = START_TIMEOUT) -> str:
        """Read stdout until the "golive listening" line; return ``http://host:port``."""
        deadline = time.monotonic() + timeout
        while (line := self.next_line(deadline)) is not None:
            record = json.loads(line)
            if record.get("event") == LISTENING:
                addresses = record["addresses"]
                assert len(addresses) == 1
                assert addresses[0].startswith("127.0.0.1:")
                self.url = f"http://{addresses[0]}"
                return self.url
        raise AssertionError(
            f"golive exited ({self.process.wait(timeout)}) before listening; "
            f"stdout: {self.stdout}; stderr: {self.stderr()}"
        )

    def get(self, path: str, headers: Mapping[str, str] | None = None) -> tuple[int, str, str]:
        """GET ``path``: status, content type and body."""
        return self.request("GET", path, headers)

    def request(
        self, method: str, path: str, headers: Mapping[str, str] | None = None
    ) -> tuple[int, str, str]:
        assert ipaddress.ip_address(urlsplit(self.url).hostname or "").is_loopback, self.url
        request = urllib.request.Request(  # noqa: S310  a loopback URL built here
            self.url + path, method=method, headers=dict(headers or {})
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310  loopback
                return response.status, response.headers["Content-Type"], response.read().decode()
        except urllib.error.HTTPError as error:
            with error:
                return error.code, error.headers["Content-Type"], error.read().decode()

    def stop(self, signum: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> int:
        """Send ``signum``, wait for the exit, read the rest of the output; the exit status."""
        self.process.send_signal(signum)
        return self.wait(timeout)

    def wait(self, timeout: float = STOP_TIMEOUT) -> int:
        deadline = time.monotonic() + timeout
        try:
            status = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"golive did not exit within {timeout}s; stdout: {self.stdout}"
            ) from None
        while self.next_line(deadline) is not None:
            pass
        self._readers[1].join(max(0.0, deadline - time.monotonic()))
        assert not self._readers[1].is_alive(), "stderr still open after exit"
        return status

    def stderr(self) -> list[str]:
        """The stderr lines (complete once :meth:`wait` returned)."""
        return [line for line in self._stderr if line is not None]

    def kill(self) -> None:
        """Kill the process if it still runs; close its pipes once the readers are done."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        for reader, stream in zip(
            self._readers, (self.process.stdout, self.process.stderr), strict=True
        ):
            reader.join(10)
            if stream is not None and not reader.is_alive():
                stream.close()


StartGolive: TypeAlias = Callable[..., Golive]


@pytest.fixture
def start_golive(tmp_path: Path) -> Iterator[StartGolive]:
    """Start golive processes in ``tmp_path``; every one is killed when the test ends."""
    started: list[Golive] = []

    def start(env: Mapping[str, str] | None = None, command: Command | None = None) -> Golive:
        golive = Golive(command or python_m(), environment(env or {}), tmp_path)
        started.append(golive)
        return golive

    yield start
    for golive in started:
        golive.kill()


def records(lines: Sequence[str]) -> list[dict[str, Any]]:
    """Every line as a structured log record: a JSON object with UTC timestamp, level, event."""
    now = datetime.now(UTC)
    parsed = []
    for line in lines:
        record = json.loads(line)
        assert isinstance(record, dict), line
        timestamp = record["timestamp"]
        assert isinstance(timestamp, str), line
        assert timestamp.endswith("Z"), line
        moment = datetime.fromisoformat(timestamp)
        assert moment.utcoffset() == timedelta(0), line
        assert abs(moment - now) < timedelta(minutes=10), line
        assert record["level"] in {"debug", "info", "warning", "error", "critical"}, line
        assert isinstance(record["event"], str), line
        assert record["event"], line
        parsed.append(record)
    return parsed


# --------------------------------------------------------------------------- serving


@pytest.mark.timeout(60)
def test_serves_health_and_rooms(start_golive: StartGolive) -> None:
    golive = start_golive()
    golive.wait_listening()
    assert golive.get("/healthz") == (200, "text/plain; charset=utf-8", "ok")
    status, content_type, body = golive.get("/api/rooms")
    assert (status, json.loads(body)) == (200, [])
    assert content_type.startswith("application/json")
    status, content_type, body = golive.get("/no/such/route")
    assert status == 404
    assert content_type.startswith("application/json")
    assert set(json.loads(body)) == {"error"}
    assert golive.stop() == 0


@pytest.mark.timeout(60)
def test_start_up_objects_are_frozen_out_of_the_garbage_collector(
    start_golive: StartGolive,
) -> None:
    """A full collection scans every tracked object while the event loop waits: what start-up
    made lives as long as the process and is left out of every collection."""
    golive = start_golive()
    golive.wait_listening()
    listening = next(r for r in records(golive.stdout) if r["event"] == LISTENING)
    assert listening["gc_frozen"] > 10_000


@pytest.mark.timeout(60)
@pytest.mark.parametrize("command", COMMANDS.values(), ids=COMMANDS.keys())
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_golive_cleanly(
    start_golive: StartGolive, command: Callable[[], Command], signum: signal.Signals
) -> None:
    golive = start_golive(command=command())
    golive.wait_listening()
    assert golive.get("/healthz")[0] == 200
    assert golive.stop(signum) == 0
    assert golive.stderr() == []
    logged = records(golive.stdout)
    events = [record["event"] for record in logged]
    assert events[-1] == "golive stopped"
    listening, shutting_down = events.index(LISTENING), events.index("shutting down")
    assert listening < shutting_down < len(events) - 1
    assert logged[shutting_down]["signal"] == signum.name
    # Nothing went wrong on the way down.
    assert not [r for r in logged if r["level"] in {"warning", "error", "critical"}]


@pytest.mark.timeout(60)
def test_every_stdout_line_is_a_structured_record(start_golive: StartGolive) -> None:
    golive = start_golive({"LOG_LEVEL": "debug"})
    golive.wait_listening()
    golive.get("/healthz")
    golive.get("/api/rooms")
    golive.request("POST", "/api/admin/rooms/nobody/close")
    assert golive.stop() == 0
    logged = records(golive.stdout)
    loggers = {record.get("logger") for record in logged}
    # golive's own events and library records (access log, pykka) share the one format.
    assert {"golive.server", "aiohttp.access", "pykka"} <= loggers
    (listening,) = [record for record in logged if record["event"] == LISTENING]
    assert listening["config"]["HTTP_ADDR"] == "127.0.0.1:0"


MALFORMED = (
    b"GARBAGE\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
)


def send_raw(url: str, payload: bytes) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as connection:
        connection.sendall(payload)
        return connection.recv(1024)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("level", ["info", "debug"])
def test_malformed_requests_are_the_clients_error_not_the_servers(
    start_golive: StartGolive, level: str
) -> None:
    """aiohttp would log each at ERROR with a traceback: a client could flood the logs."""
    golive = start_golive({"LOG_LEVEL": level})
    golive.wait_listening()
    for payload in MALFORMED:
        answer = send_raw(golive.url, payload)
        assert answer.startswith(b"HTTP/1.0 400 ")
        assert b"Content-Type: application/json" in answer  # {"error": ...}, as every error
    assert golive.stop() == 0
    logged = records(golive.stdout)
    assert not [r for r in logged if r["level"] in {"warning", "error"}], logged
    assert not [r for r in logged if "exception" in r]
    bad = [r for r in logged if str(r["event"]).startswith("malformed HTTP request")]
    if level == "debug":  # one line each, naming the problem
        assert [(r["level"], r["logger"]) for r in bad] == [("debug", "aiohttp.server")] * 2
        assert "Content-Length" in bad[1]["event"]
        assert "\n" not in bad[1]["event"]
    else:
        assert not bad
    access = [r for r in logged if r.get("logger") == "aiohttp.access"]
    assert len([r for r in access if '" 400 ' in r["event"]]) == 2  # still in the access log


# --------------------------------------------------------------------------- bad settings


BAD_SETTINGS = {
    "rate-limit": ({"RATE_LIMIT_RPS": "abc"}, "RATE_LIMIT_RPS"),
    "http-addr": ({"HTTP_ADDR": "nonsense"}, "HTTP_ADDR"),
    "upload-without-bucket": ({"UPLOAD_RECORDINGS": "1"}, "S3_BUCKET"),
    "max-subs": ({"MAX_SUBS_PER_ROOM": "-1"}, "MAX_SUBS_PER_ROOM"),
    "log-level": ({"LOG_LEVEL": "loud"}, "LOG_LEVEL"),
}


def run_to_exit(
    command: Command, env: Mapping[str, str], cwd: Path
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(command),
        env=environment(env),
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=EXIT_TIMEOUT,
        check=False,
    )


@pytest.mark.timeout(60)
@pytest.mark.parametrize("command", COMMANDS.values(), ids=COMMANDS.keys())
@pytest.mark.parametrize(("env", "variable"), BAD_SETTINGS.values(), ids=BAD_SETTINGS.keys())
def test_a_bad_setting_stops_start_up_with_status_2(
    tmp_path: Path, command: Callable[[], Command], env: dict[str, str], variable: str
) -> None:
    result = run_to_exit(command(), env, tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert variable in lines[0]
    for name in env:
        assert name in lines[0]


@pytest.mark.timeout(60)
def test_a_bad_secret_setting_is_named_but_not_shown(tmp_path: Path) -> None:
    hidden = "rt-SECRET-5150"
    result = run_to_exit(python_m(), {"ROOM_TOKENS": f"ok:tok;bad.room:{hidden}"}, tmp_path)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "ROOM_TOKENS" in lines[0]
    assert hidden not in result.stderr
    assert hidden not in result.stdout


def test_the_console_script_is_installed() -> None:
    (path,) = console_script()
    assert os.access(path, os.X_OK)
    assert Path(path).parent == Path(sys.executable).parent


# --------------------------------------------------------------------------- secrets


@pytest.mark.timeout(60)
def test_secrets_never_reach_the_logs(start_golive: StartGolive) -> None:
    secrets = {
        "AUTH_TOKEN": "tok-SECRET-123",
        "ADMIN_TOKEN": "adm-SECRET-456",
        "TURN_PASSWORD": "turn-SECRET-789",
        "S3_SECRET_KEY": "s3-SECRET-000",
        "S3_ACCESS_KEY": "s3-ACCESS-111",
        "JWT_SECRET": "jwt-SECRET-222",
        "ROOM_TOKENS": "r1:room-SECRET-333",
    }
    env = {**secrets, "TURN_URLS": "turn:turn.example.com:3478", "TURN_USERNAME": "alice"}
    golive = start_golive({**env, "LOG_LEVEL": "debug"})
    golive.wait_listening()
    # Requests that carry the secrets where a careless server would log them.
    auth, admin = secrets["AUTH_TOKEN"], secrets["ADMIN_TOKEN"]
    status, _, body = golive.get(
        f"/api/bootstrap?token={auth}", {"X-Auth-Token": auth, "User-Agent": f"probe {admin}"}
    )
    assert status == 200
    assert not [value for value in secrets.values() if value in body]
    status, _, _ = golive.request(
        "POST", "/api/admin/rooms/nobody/close", {"Authorization": f"Bearer {admin}"}
    )
    assert status == 404  # admitted as admin; the room does not exist
    status, _, _ = golive.request(
        "POST", f"/api/admin/rooms/nobody/close?key={auth}", {"User-Agent": auth}
    )
    assert status == 401
    assert golive.stop() == 0

    output = [*golive.stdout, *golive.stderr()]
    logged = records(golive.stdout)
    assert len([r for r in logged if r.get("logger") == "aiohttp.access"]) == 3
    leaks = {name for name, value in secrets.items() for line in output if value in line}
    assert leaks == set()
    # Only a marker that each secret is set: the startup line describes the configuration.
    (listening,) = [record for record in logged if record["event"] == LISTENING]
    for name in secrets:
        assert listening["config"][name] in {"<set>", "[REDACTED]"}
