"""golive as one node of a cluster: workers on every core, nodes that share one room
directory in Redis, and relays that carry one room's audience beyond its owner
(docs/deployment.md). Without ``REDIS_URL`` none of this runs."""
