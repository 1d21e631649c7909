"""Where the app keeps what its handlers need (``web.AppKey``s, no module globals)."""

from __future__ import annotations

from aiohttp import web

from golive.cluster.identity import WorkerIdentity
from golive.cluster.node import Cluster
from golive.cluster.relay import Relays
from golive.config import Config
from golive.http.connections import Connections
from golive.http.limits import AdmissionLimits
from golive.media.peers import MediaHub
from golive.metrics import Metrics
from golive.rooms import RoomService
from golive.tracing import Tracing

CONFIG = web.AppKey("config", Config)
METRICS = web.AppKey("metrics", Metrics)
ROOMS = web.AppKey("rooms", RoomService)
MEDIA = web.AppKey("media", MediaHub)
LIMITS = web.AppKey("limits", AdmissionLimits)
TRACING = web.AppKey("tracing", Tracing)
CONNECTIONS = web.AppKey("connections", Connections)
#: This worker in its cluster (only with REDIS_URL).
IDENTITY = web.AppKey("identity", WorkerIdentity)
#: This worker's relays: rooms pulled from their owner elsewhere in the cluster.
RELAYS = web.AppKey("relays", Relays)
#: This worker's part in the cluster (only with REDIS_URL).
CLUSTER = web.AppKey("cluster", Cluster)
