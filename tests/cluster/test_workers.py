"""``WORKERS``: one node's worker processes under golive's supervisor (golive/cluster/workers.py),
as an operator runs them: a real ``python -m golive`` with a real Redis, talked to over HTTP on
127.0.0.1, stopped with signals, one worker killed with ``kill -9``.

Every wait is bounded by a deadline; nothing sleeps to synchronise. Every process is killed at
the end of its test whatever happened.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any, TypeAlias

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from golive.cluster.identity import WorkerIdentity
from golive.config import Config
from golive.logs import configure_logging, get_logger
from golive.tracing import Tracing
from tests.cluster.redis import RedisServer, free_port
from tests.support import metric_samples

pytestmark = pytest.mark.timeout(120)

START_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0
LISTENING = "golive listening"
Record: TypeAlias = dict[str, Any]


def environment(overrides: Mapping[str, str]) -> dict[str, str]:
    """This process's environment without any golive variable, on 127.0.0.1, plus ``overrides``."""
    env = dict(os.environ)
    for name in Config().describe():
        env.pop(name, None)
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.update({"HTTP_ADDR": "127.0.0.1:0", "ICE_HOST_ADDRESSES": "127.0.0.1"})
    env.update(overrides)
    return env


class Node:
    """A running ``golive`` (a supervisor and its workers, or one process) whose stdout is
    read as JSON records by a thread; every wait has a deadline."""

    def __init__(self, env: Mapping[str, str], cwd: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "golive"],
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
        self.records: list[Record] = []
        self.stderr: list[str] = []
        self._changed = threading.Condition()
        self._readers = [
            threading.Thread(target=self._read_records, args=(self.process.stdout,), daemon=True),
            threading.Thread(target=self._read_stderr, args=(self.process.stderr,), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read_records(self, stream: IO[str]) -> None:
        for line in stream:
            record = json.loads(line)  # every stdout line is one JSON record
            with self._changed:
                self.records.append(record)
                self._changed.notify_all()

    def _read_stderr(self, stream: IO[str]) -> None:
        self.stderr.extend(line.rstrip("\n") for line in stream)

    def wait_for(
        self, condition: Callable[[list[Record]], Any], what: str, timeout: float = START_TIMEOUT
    ) -> Any:
        """Wait until ``condition(records)`` is truthy; its value."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not (found := condition(self.records)):
                left = deadline - time.monotonic()
                if left <= 0 or (
                    self.process.poll() is not None and not self._readers[0].is_alive()
                ):
                    raise AssertionError(f"timed out waiting for {what}; records: {self.records}")
                self._changed.wait(min(left, 0.5))
            return found

    def listening(self, count: int, timeout: float = START_TIMEOUT) -> list[Record]:
        """The first ``count`` "golive listening" records (one per worker started)."""

        def first(records: list[Record]) -> list[Record] | None:
            found = [r for r in records if r["event"] == LISTENING]
            return found[:count] if len(found) >= count else None

        listening: list[Record] = self.wait_for(first, f"{count} workers listening", timeout)
        return listening

    def stop(self, signum: int = signal.SIGTERM) -> int:
        self.process.send_signal(signum)
        return self.wait()

    def wait(self, timeout: float = STOP_TIMEOUT) -> int:
        try:
            status = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"golive did not exit in {timeout}s: {self.records}") from None
        self._close(timeout)
        return status

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self._close(10)

    def _close(self, timeout: float) -> None:
        """Once the readers have read everything, close the pipes."""
        for reader, stream in zip(
            self._readers, (self.process.stdout, self.process.stderr), strict=True
        ):
            reader.join(timeout)
            if stream is not None and not reader.is_alive():
                stream.close()


StartNode: TypeAlias = Callable[[Mapping[str, str]], Node]


@pytest.fixture
def start_node(tmp_path: Path) -> Iterator[StartNode]:
    started: list[Node] = []
    pids: list[int] = []

    def start(overrides: Mapping[str, str]) -> Node:
        node = Node(environment(overrides), tmp_path)
        started.append(node)
        return node

    yield start
    for node in started:
        pids.extend(r["pid"] for r in node.records if r["event"] == "worker started")
        node.kill()
    for pid in pids:  # workers left behind by a failed test: no stray process
        if alive(pid):
            os.kill(pid, signal.SIGKILL)


def alive(pid: int) -> bool:
    """The process exists and is not a zombie (a child this test never reaps)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def request(
    address: str, method: str = "GET", path: str = "/healthz"
) -> tuple[int, dict[str, str], bytes]:
    """One request on a fresh connection to ``host:port`` (127.0.0.1 only)."""
    host, port = address.rsplit(":", 1)
    assert host == "127.0.0.1"
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        connection.request(method, path, headers={"Connection": "close"})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def worker_of(address: str, path: str = "/healthz") -> str:
    status, headers, _ = request(address, path=path)
    assert status == 200
    return headers["Golive-Worker"]


def cluster_env(redis: RedisServer, **more: str) -> dict[str, str]:
    return {"REDIS_URL": redis.url, "WORKERS": "2", **more}


def public_address(listening: list[Record]) -> str:
    """The public address every worker listens on (their first), the same for all."""
    (public,) = {record["addresses"][0] for record in listening}
    assert isinstance(public, str)
    return public


def own_address(record: Record) -> str:
    url = record["worker_url"]
    assert isinstance(url, str)
    assert url.startswith("http://127.0.0.1:")
    return url.removeprefix("http://")


# --------------------------------------------------------------------------- two workers


def test_two_workers_serve_the_public_address_and_each_its_own(
    start_node: StartNode, redis_server: RedisServer
) -> None:
    node = start_node(cluster_env(redis_server))
    listening = node.listening(2)
    public = public_address(listening)
    node_name = public  # no NODE_URL: the node is HTTP_ADDR, with the port the system chose
    by_worker = {record["worker"]: record for record in listening}
    assert sorted(by_worker) == [0, 1]
    for index, record in by_worker.items():
        assert record["node"] == node_name
        assert record["addresses"] == [public, own_address(record)]
        # each worker's own address answers as that worker
        assert worker_of(own_address(record)) == f"{node_name}/{index}"
    # the kernel spreads fresh connections on the public address over both workers
    seen: set[str] = set()
    for _ in range(200):
        seen.add(worker_of(public))
        if len(seen) == 2:
            break
    assert seen == {f"{node_name}/0", f"{node_name}/1"}
    assert node.stop() == 0


def test_workers_listen_where_http_addr_does_and_are_named_at_node_url(
    start_node: StartNode, redis_server: RedisServer
) -> None:
    """Behind NAT or in a container NODE_URL names an address this machine does not have:
    each worker's own port is bound where HTTP_ADDR listens and advertised at NODE_URL's
    host (a name that resolves nowhere here: binding there would fail)."""
    node = start_node(cluster_env(redis_server, NODE_URL="http://golive-a.invalid:8080"))
    listening = node.listening(2)
    for record in listening:
        url = record["worker_url"]
        assert isinstance(url, str)
        assert url.startswith("http://golive-a.invalid:"), url
        port = url.rsplit(":", 1)[1]
        assert worker_of(f"127.0.0.1:{port}") == f"golive-a.invalid:8080/{record['worker']}"
    assert node.stop() == 0


def test_metrics_on_any_worker_are_the_nodes(
    start_node: StartNode, redis_server: RedisServer
) -> None:
    """A counter advanced once on each worker reads 2 on either; gauges are summed over the
    live workers; what cannot be summed (process figures, GC, loop lag) is per worker."""
    # One POST per client IP before a 429, per worker (each has its own buckets).
    node = start_node(cluster_env(redis_server, RATE_LIMIT_RPS="0.001"))
    listening = node.listening(2)
    own = [own_address(record) for record in sorted(listening, key=lambda r: r["worker"])]
    for address in own:
        assert request(address, "POST", "/api/nothing")[0] == 404
        assert request(address, "POST", "/api/nothing")[0] == 429
    node_name = public_address(listening)
    for address in [*own, public_address(listening)]:
        status, _, body = request(address, path="/metrics")
        assert status == 200
        samples = metric_samples(body.decode())
        assert samples["golive_http_rate_limited_total", (("method", "POST"),)] == 2.0
        labels = (("node", node_name), ("workers", "2"))
        assert samples["golive_node_info", labels] == 1.0
        # every worker's actor system has its directory: the node has two
        assert samples["golive_actors", (("actor", "directory"),)] == 2.0
        for worker in ("0", "1"):
            assert samples["process_resident_memory_bytes", (("worker", worker),)] > 0
            assert ("python_gc_collections_total", (("generation", "0"), ("worker", worker))) in (
                samples
            )
            assert ("golive_event_loop_lag_seconds_count", (("worker", worker),)) in samples
    assert node.stop() == 0


def test_every_log_line_names_its_node_and_worker(
    start_node: StartNode, redis_server: RedisServer
) -> None:
    node = start_node(cluster_env(redis_server))
    listening = node.listening(2)
    for record in listening:
        worker_of(own_address(record))
    assert node.stop() == 0
    node_name = public_address(listening)
    assert node.records
    for record in node.records:
        assert record["node"] == node_name, record
        assert record["worker"] in (None, 0, 1), record
    workers = {r["worker"] for r in node.records if r.get("logger") == "aiohttp.access"}
    assert workers == {0, 1}  # library lines too
    supervisor = [r for r in node.records if r.get("logger") == "golive.cluster.workers"]
    assert supervisor
    assert {r["worker"] for r in supervisor} == {None}


def test_sigterm_stops_every_worker_and_the_node_exits_0(
    start_node: StartNode, redis_server: RedisServer
) -> None:
    node = start_node(cluster_env(redis_server))
    node.listening(2)
    pids = [r["pid"] for r in node.records if r["event"] == "worker started"]
    assert len(pids) == 2
    assert all(alive(pid) for pid in pids)
    assert node.stop(signal.SIGTERM) == 0
    assert not [pid for pid in pids if alive(pid)]
    stopped = [r for r in node.records if r["event"] == "golive stopped"]
    assert [r["worker"] for r in stopped] == [0, 1, None] or sorted(
        (r["worker"] for r in stopped[:2]), key=str
    ) == [0, 1]
    assert stopped[-1]["worker"] is None  # the supervisor's is the last line
    assert stopped[-1]["status"] == 0
    assert not [r for r in node.records if r["level"] in {"warning", "error", "critical"}]


def test_a_killed_worker_is_restarted_while_the_other_serves(
    start_node: StartNode, redis_server: RedisServer
) -> None:
    node = start_node(cluster_env(redis_server))
    listening = node.listening(2)
    public = public_address(listening)
    first = {r["worker_index"]: r["pid"] for r in node.records if r["event"] == "worker started"}
    old_zero = next(r for r in listening if r["worker"] == 0)
    os.kill(first[0], signal.SIGKILL)
    # Connections the kernel queued for worker 0 before its end are lost with it: from its
    # end until it is back, every request on the public address is answered (by worker 1).
    # Its end is when the supervisor reaps it: a killed process's listening sockets close with
    # its last thread, and its main thread shows as a zombie before the others are gone.
    deadline = time.monotonic() + START_TIMEOUT
    died = node.wait_for(
        lambda rs: next((r for r in rs if r["event"] == "worker died"), None), "worker died"
    )
    assert not alive(first[0])
    answered = 0
    while len([r for r in node.records if r["event"] == LISTENING]) < 3:
        assert time.monotonic() < deadline, f"worker 0 not restarted: {node.records}"
        assert request(public)[0] == 200
        answered += 1
    assert answered > 0
    assert (died["worker_index"], died["pid"], died["signal"]) == (0, first[0], "SIGKILL")
    assert [r["event"] for r in node.records].count("restarting worker") == 1
    restarted = [r for r in node.records if r["event"] == "worker started"][-1]
    assert restarted["worker_index"] == 0
    assert restarted["pid"] != first[0]
    new_zero = [r for r in node.records if r["event"] == LISTENING][-1]
    assert new_zero["worker"] == 0
    assert new_zero["worker_tag"] != old_zero["worker_tag"]  # a new process, a new tag
    assert worker_of(own_address(new_zero)) == f"{public}/0"
    assert worker_of(own_address(next(r for r in listening if r["worker"] == 1))) == f"{public}/1"
    assert node.stop() == 0


def test_workers_shut_down_when_their_supervisor_is_killed(
    start_node: StartNode, redis_server: RedisServer
) -> None:
    """No orphans holding the port: a worker whose supervisor is gone (``kill -9``) shuts down
    as for SIGTERM."""
    node = start_node(cluster_env(redis_server))
    node.listening(2)
    pids = [r["pid"] for r in node.records if r["event"] == "worker started"]
    node.process.kill()
    node.process.wait(STOP_TIMEOUT)
    gone = node.wait_for(
        lambda rs: (
            [r for r in rs if r["event"] == "golive stopped"]
            if not any(alive(pid) for pid in pids)
            else None
        ),
        "both workers stopped",
        STOP_TIMEOUT,
    )
    assert sorted(r["worker"] for r in gone) == [0, 1]
    warned = [r for r in node.records if r["event"] == "the supervisor is gone: shutting down"]
    assert sorted(r["worker"] for r in warned) == [0, 1]


@contextlib.contextmanager
def taken_port_before_a_free_one() -> Iterator[int]:
    """A port held by a listening socket (worker 0's own port, taken) whose next one is free
    (worker 1's: a random port's neighbour may be in use, and worker 1 then died too). The
    next one is checked by binding it, released as the port is handed out."""
    for _ in range(100):
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            with socket.socket() as probe:
                try:
                    probe.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
            yield port
            return
    raise AssertionError("no free port next to a free port in 100 tries")


def test_a_worker_that_cannot_start_is_restarted_with_a_backoff_then_given_up(
    start_node: StartNode, redis_server: RedisServer
) -> None:
    """Worker 0's own port is taken: it exits at each start. The supervisor waits longer
    each time, then stops the node with status 1 (no spinning, no endless restarts)."""
    with taken_port_before_a_free_one() as port:
        node = start_node(cluster_env(redis_server, CLUSTER_PORT=str(port)))
        assert node.wait(timeout=90) == 1
    events = [r for r in node.records if r.get("logger") == "golive.cluster.workers"]
    died = [r for r in events if r["event"] == "worker died"]
    others = [r for r in node.records if r.get("worker") == 1 and r.get("level") != "info"]
    assert {r["worker_index"] for r in died} == {0}, (died, others)
    assert len(died) == 5
    delays = [r["delay_seconds"] for r in events if r["event"] == "restarting worker"]
    assert delays == [0.5, 1.0, 2.0, 4.0]
    assert any(r["event"].startswith("worker keeps dying") for r in events)
    assert events[-1]["event"] == "golive stopped"
    assert events[-1]["status"] == 1


def test_workers_without_redis_exit_2_with_one_line(start_node: StartNode) -> None:
    node = start_node({"WORKERS": "2"})
    assert node.wait() == 2
    assert node.records == []
    assert len(node.stderr) == 1
    assert "WORKERS" in node.stderr[0]
    assert "REDIS_URL" in node.stderr[0]


# --------------------------------------------------------------------------- one worker


def test_one_worker_with_redis_is_one_process_named_by_its_node(
    start_node: StartNode, redis_server: RedisServer
) -> None:
    # NODE_URL derived from a concrete HTTP_ADDR (":0" would name no node)
    public = f"127.0.0.1:{free_port()}"
    node = start_node({"REDIS_URL": redis_server.url, "HTTP_ADDR": public})
    (listening,) = node.listening(1)
    assert listening["addresses"] == [public]  # no listener of its own
    assert listening["worker_url"] == listening["config"]["NODE_URL"] == f"http://{public}"
    assert (listening["node"], listening["worker"]) == (public, 0)
    assert worker_of(public) == f"{public}/0"
    assert not [r for r in node.records if r.get("logger") == "golive.cluster.workers"]
    status, _, body = request(public, path="/metrics")
    assert status == 200
    samples = metric_samples(body.decode())
    node_info = (("node", listening["node"]), ("workers", "1"))
    assert samples["golive_node_info", node_info] == 1.0
    assert ("process_resident_memory_bytes", ()) in samples  # as without Redis
    assert node.stop() == 0


# --------------------------------------------------------------------------- in process


def test_the_tracers_resource_names_the_worker() -> None:
    identity = WorkerIdentity.create("http://10.0.0.5:8080", 3, "http://10.0.0.5:9003")
    exporter = InMemorySpanExporter()
    tracing = Tracing.with_exporter(exporter, identity=identity)
    with tracing.tracer.start_as_current_span("a span"):
        pass
    tracing.shutdown()
    (span,) = exporter.get_finished_spans()
    attributes = dict(span.resource.attributes)
    assert attributes["service.instance.id"] == "10.0.0.5:8080/3"
    assert attributes["golive.node"] == "10.0.0.5:8080"
    assert attributes["golive.worker"] == 3
    plain = InMemorySpanExporter()
    Tracing.with_exporter(plain).tracer.start_span("another").end()
    (other,) = plain.get_finished_spans()
    assert "golive.node" not in other.resource.attributes  # (the SDK's own random instance id)


def test_configured_fields_are_on_every_line() -> None:
    stream = io.StringIO()
    try:
        fields = {"node": "10.0.0.5:8080", "worker": 1}
        configure_logging("info", "json", stream=stream, fields=fields)
        get_logger().info("from golive")
        logging.getLogger("aiohttp.access").info("from a library")
    finally:
        configure_logging("info", "json")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(r["event"], r["node"], r["worker"]) for r in lines] == [
        ("from golive", "10.0.0.5:8080", 1),
        ("from a library", "10.0.0.5:8080", 1),
    ]
