"""What tracing costs: per HTTP request (through the actors) and per traced actor command,
with tracing off (the default) and on (spans built and handed to an exporter).

Run with ``make bench``. Spans go through a batch processor, as in production, to an exporter
that keeps them in memory: the figures are the cost on golive's threads (OTLP's encoding and
network work happen in the batch processor's thread). Medians over
several rounds; read ratios, not the last digit.
"""

from __future__ import annotations

import asyncio
import statistics
import time

import aiohttp
from aiohttp import web
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from golive.config import Config
from golive.http.app import create_app
from golive.logs import configure_logging
from golive.tracing import Tracing

ROUNDS = 5
REQUESTS = 300
COMMANDS = 20_000
TRACEPARENT = {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}


async def request_cost(tracing: Tracing, headers: dict[str, str]) -> float:
    """Median microseconds per ``GET /api/rooms`` (an ask to the directory actor and back)."""
    runner = web.AppRunner(create_app(Config(), tracing=tracing), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    rounds = []
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(ROUNDS):
                start = time.perf_counter()
                for _ in range(REQUESTS):
                    async with http.get(f"http://{host}:{port}/api/rooms", headers=headers) as r:
                        await r.read()
                rounds.append((time.perf_counter() - start) / REQUESTS * 1e6)
    finally:
        await runner.cleanup()
    return statistics.median(rounds)


def command_cost(tracing: Tracing) -> float:
    """Median microseconds to fill a message's carrier on the loop and open the actor's span
    from it (both sides of one traced command, in one thread)."""
    rounds = []
    with tracing.tracer.start_as_current_span("request"):
        for _ in range(ROUNDS):
            start = time.perf_counter()
            for _ in range(COMMANDS):
                with tracing.handling("bench.command", tracing.carrier()):
                    pass
            rounds.append((time.perf_counter() - start) / COMMANDS * 1e6)
    return statistics.median(rounds)


def main() -> None:
    configure_logging("warning", "json")

    def on() -> Tracing:  # as in production: a batch processor, exporting from its thread
        return Tracing.with_processor(BatchSpanProcessor(InMemorySpanExporter()), "bench")

    off_request = asyncio.run(request_cost(Tracing.disabled(), TRACEPARENT))
    on_request = asyncio.run(request_cost(on(), TRACEPARENT))
    off_command = command_cost(Tracing.disabled())
    on_command = command_cost(on())
    print(f"GET /api/rooms, tracing off: {off_request:8.1f} us per request (median)")
    print(
        f"GET /api/rooms, tracing on:  {on_request:8.1f} us per request "
        f"({on_request / off_request:.2f}x off)"
    )
    print(f"traced command, tracing off: {off_command:8.2f} us (carrier + handling)")
    print(
        f"traced command, tracing on:  {on_command:8.2f} us ({on_command / off_command:.0f}x off)"
    )


if __name__ == "__main__":
    main()
