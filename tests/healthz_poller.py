"""Poll ``GET /healthz`` of a server on one keep-alive connection until stdin closes, then print
how long the slowest answers took, as JSON: ``{"requests": N, "slowest_ms": [...]}``.

Run as its own process (``python -m tests.healthz_poller HOST PORT``), so that the test's own
event loop and threads cannot delay it: what it measures is the server's loop. Bounded: it
stops when stdin closes, after at most ``MAX_SECONDS`` whatever happens.
"""

from __future__ import annotations

import http.client
import json
import sys
import threading
import time

MAX_SECONDS = 120.0
PAUSE = 0.002  # between requests: about 300 a second


def main() -> None:
    host, port = sys.argv[1], int(sys.argv[2])
    stop = threading.Event()

    def until_stdin_closes() -> None:
        sys.stdin.read()
        stop.set()

    threading.Thread(target=until_stdin_closes, daemon=True).start()
    connection = http.client.HTTPConnection(host, port, timeout=10)
    durations: list[float] = []
    give_up = time.monotonic() + MAX_SECONDS
    print("polling", flush=True)  # the test waits for this line
    while not stop.is_set() and time.monotonic() < give_up:
        started = time.perf_counter()
        connection.request("GET", "/healthz")
        response = connection.getresponse()
        response.read()
        if response.status != 200:
            raise SystemExit(f"/healthz answered {response.status}")
        durations.append((time.perf_counter() - started) * 1000)
        stop.wait(PAUSE)
    durations.sort()
    print(json.dumps({"requests": len(durations), "slowest_ms": durations[-5:]}), flush=True)


if __name__ == "__main__":
    main()
