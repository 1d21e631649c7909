"""``ICE_PORT_MIN``/``ICE_PORT_MAX``: the UDP ports media may use.

aioice binds every host candidate with ``loop.create_datagram_endpoint(local_addr=(ip, 0))``
and has no port-range setting. In golive only ICE opens UDP sockets, so the server's own event
loop is told to bind port-0 UDP endpoints inside the range instead (on that loop instance
only; nothing process-wide changes).
"""

from __future__ import annotations

import asyncio
import random
from typing import Any


def restrict_udp_ports(loop: asyncio.AbstractEventLoop, port_min: int, port_max: int) -> None:
    """Make ``loop`` bind UDP endpoints asked for port 0 on a free port in the range."""
    if port_min == 0 and port_max == 0:
        return
    original = loop.create_datagram_endpoint

    async def create_datagram_endpoint(
        protocol_factory: Any, local_addr: tuple[str, int] | None = None, **kwargs: Any
    ) -> Any:
        if local_addr is None or local_addr[1] != 0:
            return await original(protocol_factory, local_addr=local_addr, **kwargs)
        ports = list(range(port_min, port_max + 1))
        random.shuffle(ports)
        last: OSError | None = None
        for port in ports:
            try:
                return await original(protocol_factory, local_addr=(local_addr[0], port), **kwargs)
            except OSError as exc:  # taken: try the next one
                last = exc
        raise OSError(f"no free UDP port in {port_min}-{port_max} on {local_addr[0]}") from last

    loop.create_datagram_endpoint = create_datagram_endpoint  # type: ignore[method-assign,assignment]
