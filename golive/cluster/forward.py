"""Requests for what another worker holds, forwarded to it.

A room belongs to the worker that accepted its publisher, and a session to the worker that
answered its offer; a client reaches whichever worker its connection landed on (the kernel
spreads a node's connections over its workers, a load balancer spreads them over nodes). The
worker that gets a request for a room or session it does not hold forwards it, as it came
(method, path, query, the client's credentials and body), to the holder's own URL, marked
``Golive-Via: node/worker`` and carrying ``CLUSTER_SECRET`` (``Golive-Cluster``), and hands
the holder's answer back. A forwarded request is never forwarded again: its receiver answers
from what it has.
"""

from __future__ import annotations

from typing import Final

import aiohttp
import structlog
from aiohttp import web
from multidict import CIMultiDict

from golive.cluster.identity import WorkerIdentity
from golive.config import Config
from golive.http.auth import CLUSTER_CREDENTIAL, VIA
from golive.http.errors import json_error

log = structlog.get_logger(__name__)

#: A forwarded request's whole exchange (a WHIP offer is answered within a few seconds).
FORWARD_TIMEOUT_SECONDS: Final = 20.0

# Hop-by-hop headers (RFC 9110 section 7.6.1) and those the forwarding itself sets.
_NOT_FORWARDED: Final = frozenset(
    h.lower()
    for h in (
        "Host",
        "Connection",
        "Keep-Alive",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
        "Content-Length",
        "Accept-Encoding",
        VIA,
        CLUSTER_CREDENTIAL,
    )
)
_NOT_RETURNED: Final = frozenset(
    h.lower()
    for h in (
        "Connection",
        "Keep-Alive",
        "Transfer-Encoding",
        "Content-Length",
        "Content-Encoding",
        "Date",
        "Server",
    )
)


class Forwarder:
    """This worker's HTTP client towards the others. One per worker, on the loop."""

    def __init__(self, config: Config, identity: WorkerIdentity) -> None:
        self._secret = config.cluster_secret
        self.identity = identity
        self._client: aiohttp.ClientSession | None = None

    def headers(self) -> dict[str, str]:
        """What marks a request as this worker's: ``Golive-Via`` and the cluster's secret."""
        headers = {VIA: self.identity.name}
        if self._secret:
            headers[CLUSTER_CREDENTIAL] = self._secret
        return headers

    @property
    def client(self) -> aiohttp.ClientSession:
        """The pooled client session (made on first use, on the loop)."""
        if self._client is None or self._client.closed:
            self._client = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=FORWARD_TIMEOUT_SECONDS),
                auto_decompress=False,
            )
        return self._client

    async def forward(
        self, request: web.Request, base_url: str, body: bytes | None = None
    ) -> web.Response:
        """``request`` sent to the worker at ``base_url``, and its answer. ``body``: the
        request's body when the handler has read it already (else it is read here). A worker
        that cannot be reached is a 503."""
        if body is None:
            body = await request.read() if request.body_exists else b""
        headers = CIMultiDict(
            (name, value)
            for name, value in request.headers.items()
            if name.lower() not in _NOT_FORWARDED
        )
        headers.update(self.headers())
        if request.remote:
            previous = request.headers.get("X-Forwarded-For")
            headers["X-Forwarded-For"] = (
                f"{previous}, {request.remote}" if previous else request.remote
            )
        url = base_url.rstrip("/") + request.rel_url.raw_path_qs
        try:
            async with self.client.request(
                request.method, url, headers=headers, data=body, allow_redirects=False
            ) as answer:
                content = await answer.read()
                returned = CIMultiDict(
                    (name, value)
                    for name, value in answer.headers.items()
                    if name.lower() not in _NOT_RETURNED
                )
                return web.Response(status=answer.status, body=content, headers=returned)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            log.warning(
                "forwarding to another worker failed",
                method=request.method,
                path=request.path,
                target=base_url,
                error=str(exc) or type(exc).__name__,
            )
            return json_error(
                503, "the worker holding this room or session is unreachable", {"Retry-After": "5"}
            )

    async def relay_file(self, request: web.Request, base_url: str) -> web.StreamResponse | None:
        """A GET or HEAD of a file (a recording) answered by the worker at ``base_url``,
        streamed through as it arrives; None when it does not have it (404) or cannot be
        reached (logged)."""
        headers = CIMultiDict(
            (name, value)
            for name, value in request.headers.items()
            if name.lower() not in _NOT_FORWARDED
        )
        headers.update(self.headers())
        url = base_url.rstrip("/") + request.rel_url.raw_path_qs
        try:
            async with self.client.request(
                request.method,
                url,
                headers=headers,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=30),
            ) as answer:
                if answer.status == 404:
                    return None
                response = web.StreamResponse(
                    status=answer.status,
                    headers=CIMultiDict(
                        (name, value)
                        for name, value in answer.headers.items()
                        if name.lower() not in _NOT_RETURNED or name.lower() == "content-length"
                    ),
                )
                await response.prepare(request)
                async for chunk in answer.content.iter_chunked(1 << 16):
                    await response.write(chunk)
                await response.write_eof()
                return response
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            log.warning(
                "fetching a file from another node failed",
                path=request.path,
                target=base_url,
                error=str(exc) or type(exc).__name__,
            )
            return None

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
