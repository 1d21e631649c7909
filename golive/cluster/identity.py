"""Who this process is in the cluster: its node, its worker, and where others reach it."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from urllib.parse import urlsplit

from golive.actors.messages import SESSION_ID_BYTES, SessionId

#: Hex digits of a worker's tag, the prefix of every session id it makes.
TAG_DIGITS = 8


@dataclass(frozen=True, slots=True)
class WorkerIdentity:
    """One worker process of one node.

    ``node`` names the node (its ``NODE_URL``'s ``host:port``); ``worker`` is the worker's
    index on it (0 with ``WORKERS=1``); ``tag`` is made afresh each time the process starts and
    prefixes every session id the worker makes, so any worker of any node can tell from a
    session's URL which worker holds it; ``url`` is the base URL of the worker's own listener
    (the node's with one worker), which other workers and nodes send its requests and relay
    pulls to.
    """

    node: str
    node_url: str
    worker: int
    tag: str
    url: str

    @classmethod
    def create(cls, node_url: str, worker: int, url: str) -> WorkerIdentity:
        return cls(node_name(node_url), node_url, worker, secrets.token_hex(TAG_DIGITS // 2), url)

    @property
    def name(self) -> str:
        """``node/worker``, as logs and traces show it."""
        return f"{self.node}/{self.worker}"

    def new_session_id(self) -> SessionId:
        """An unguessable session id (96 random bits) that starts with this worker's tag."""
        random_digits = SESSION_ID_BYTES * 2 - TAG_DIGITS
        return SessionId(self.tag + secrets.token_hex(random_digits // 2))


def node_name(node_url: str) -> str:
    """``host:port`` of a node's URL (the port the scheme implies when it has none)."""
    parts = urlsplit(node_url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    host = parts.hostname or ""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def tag_of(session: str) -> str | None:
    """The worker tag a session id starts with, or None if it is not a session id."""
    if len(session) != SESSION_ID_BYTES * 2:
        return None
    return session[:TAG_DIGITS]
