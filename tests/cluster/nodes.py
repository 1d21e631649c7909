"""golive nodes of a cluster, as real processes on loopback addresses of the test's namespace
(127.0.0.1, 127.0.0.2, ...), each with its own HTTP port and media address, sharing a Redis."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp

from tests.cluster.redis import RedisServer, free_port
from tests.test_server import START_TIMEOUT, Golive, environment, python_m


class Node(Golive):
    """One golive node: a process listening on ``host:port``."""

    def __init__(self, host: str, port: int, env: Mapping[str, str], cwd: Path) -> None:
        super().__init__(python_m(), env, cwd)
        self.host = host
        self.port = port
        self.url = f"http://{host}:{port}"

    @property
    def name(self) -> str:
        return f"{self.host}:{self.port}"

    def wait_started(self, timeout: float = START_TIMEOUT) -> None:
        """Read its output until it listens and has registered in Redis."""
        deadline = time.monotonic() + timeout
        listening = registered = False
        while not (listening and registered):
            line = self.next_line(deadline)
            if line is None:
                raise AssertionError(
                    f"node {self.name} exited ({self.process.wait(timeout)}); "
                    f"stdout: {self.stdout}; stderr: {self.stderr()}"
                )
            event = json.loads(line).get("event")
            listening = listening or event == "golive listening"
            registered = registered or event == "registered in Redis"

    def json(self, path: str) -> Any:
        request = urllib.request.Request(self.url + path)  # noqa: S310  a loopback URL
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310  loopback
            return json.loads(response.read())

    def events(self) -> list[dict[str, Any]]:
        """Its log lines so far, parsed."""
        while not self._eof and not self._lines.empty():
            self.next_line(time.monotonic() + 1)
        return [json.loads(line) for line in self.stdout]


class Cluster:
    """Starts nodes sharing ``redis``; kills them all at the end."""

    def __init__(self, redis: RedisServer, cwd: Path) -> None:
        self.redis = redis
        self.cwd = cwd
        self.nodes: list[Node] = []

    def start(self, host: str, **settings: str) -> Node:
        port = free_port(host)
        directory = self.cwd / f"{host}-{port}"
        directory.mkdir()
        env = environment(
            {
                "HTTP_ADDR": f"{host}:{port}",
                "REDIS_URL": self.redis.url,
                "ICE_HOST_ADDRESSES": host,
                "STUN_URLS": ",",
                "PUBLISHER_RECONNECT_SECONDS": "0",
                **settings,
            }
        )
        node = Node(host, port, env, directory)
        self.nodes.append(node)
        node.wait_started()
        return node

    def close(self) -> None:
        for node in self.nodes:
            node.kill()


async def get_json(url: str) -> Any:
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        assert response.status == 200, await response.text()
        return await response.json()
