"""Three nodes and a Redis (issue 15): any node answers any request, one publisher per room in
the whole cluster, viewers served on every node, a node killed with ``kill -9`` forgotten with
its rooms, Redis stopped and started under a running node. Real processes, real aiortc peers,
Debian's redis-server; every address is a loopback one of the test's namespace."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from tests.cluster.nodes import Cluster, Node, get_json
from tests.cluster.redis import RedisServer
from tests.media.clients import Publisher, Viewer, close_all, delete, publish, view
from tests.support import eventually, require_loopback_namespace

pytestmark = pytest.mark.asyncio

DEADLINE = 30.0
#: What the issue allows a killed node's rooms to outlive it.
GONE_WITHIN_SECONDS = 10.0


@pytest.fixture(autouse=True)
def loopback_only() -> None:
    require_loopback_namespace()


async def rooms_of(node: Node) -> dict[str, dict[str, object]]:
    return {room["name"]: room for room in await get_json(node.url + "/api/rooms")}


async def test_three_nodes_share_rooms(cluster: Cluster) -> None:
    a = cluster.start("127.0.0.1")
    b = cluster.start("127.0.0.2")
    c = cluster.start("127.0.0.3")
    publisher = await publish(a.url, "stage")
    assert publisher.answer.status == 201, publisher.answer.body
    viewers = []
    try:
        for node in (b, c):
            viewer = await view(node.url, "stage")
            assert viewer.answer.status == 201, viewer.answer.body
            viewers.append(viewer)
        await asyncio.wait_for(asyncio.gather(*(v.got_video.wait() for v in viewers)), DEADLINE)

        # One publisher per room in the whole cluster.
        second = await publish(c.url, "stage")
        assert second.answer.status == 409, second.answer.body
        await close_all(second)

        # Every node lists the room, owned by A, with its viewers on B and C.
        async def listed() -> bool:
            for node in (a, b, c):
                room = (await rooms_of(node)).get("stage")
                if room is None or room["viewersByNode"] != {a.name: 0, b.name: 1, c.name: 1}:
                    return False
            return True

        await eventually(listed, what="every node listing the room's viewers", seconds=DEADLINE)
        room = (await rooms_of(c))["stage"]
        assert room["owner"] == {"node": a.name, "worker": 0}
        assert room["hasPublisher"] is True
        assert room["subscribers"] == 2

        # A session's resource works through any node: B's viewer leaves through C.
        assert await delete(c.url, viewers[0].answer.location) == 200
        await eventually(
            lambda: viewers[0].pc.connectionState in ("closed", "failed"),
            what="the viewer that left disconnected",
            seconds=DEADLINE,
        )
        # The publisher's session too: its DELETE through B ends the room everywhere.
        assert await delete(b.url, publisher.answer.location) == 200

        async def gone() -> bool:
            listings = [await rooms_of(node) for node in (a, b, c)]
            return all("stage" not in listing for listing in listings)

        await eventually(gone, what="the room gone from every node", seconds=DEADLINE)
        await eventually(
            lambda: viewers[1].pc.connectionState in ("closed", "failed"),
            what="C's viewer ended with the room",
            seconds=DEADLINE,
        )
        # ...with the room's reason, which the owner told the relays through Redis.
        ended = [
            e["reason"]
            for e in c.events()
            if e["event"] == "session ended" and e.get("role") == "subscriber"
        ]
        assert ended == ["publisher_left"], ended
    finally:
        await close_all(publisher, *viewers)


async def test_a_killed_node_is_forgotten_with_its_rooms(cluster: Cluster) -> None:
    a = cluster.start("127.0.0.1")
    b = cluster.start("127.0.0.2")
    publisher = await publish(a.url, "doomed")
    assert publisher.answer.status == 201
    viewer = await view(b.url, "doomed")
    try:
        assert viewer.answer.status == 201, viewer.answer.body
        await asyncio.wait_for(viewer.got_video.wait(), DEADLINE)
        a.process.kill()  # kill -9
        killed = time.monotonic()

        async def forgotten() -> bool:
            return "doomed" not in await rooms_of(b)

        await eventually(forgotten, what="the killed node's room forgotten", seconds=DEADLINE)
        await eventually(
            lambda: viewer.pc.connectionState in ("closed", "failed"),
            what="the viewer on B ended",
            seconds=DEADLINE,
        )
        assert time.monotonic() - killed <= GONE_WITHIN_SECONDS
        # The name is free again: a publisher on B takes it.
        again = await publish(b.url, "doomed")
        assert again.answer.status == 201, again.answer.body
        await close_all(again)
    finally:
        await close_all(publisher, viewer)


async def test_a_node_without_redis_serves_what_it_has(
    cluster: Cluster, redis_server: RedisServer
) -> None:
    a = cluster.start("127.0.0.1")
    publisher = await publish(a.url, "kept")
    viewer = await view(a.url, "kept")
    others: list[Publisher | Viewer] = []
    try:
        assert viewer.answer.status == 201
        await asyncio.wait_for(viewer.got_video.wait(), DEADLINE)
        redis_server.stop()
        # New publishers are refused while the directory is out of reach...
        refused = await publish(a.url, "new")
        others.append(refused)
        assert refused.answer.status == 503, refused.answer.body
        assert b"cluster directory unavailable" in refused.answer.body
        # ...what the node has keeps going: the viewer decodes, another viewer joins.
        frames = viewer.frames["video"]
        await eventually(
            lambda: viewer.frames["video"] >= frames + 10,
            what="the viewer still decoding without Redis",
            seconds=DEADLINE,
        )
        late = await view(a.url, "kept")
        others.append(late)
        assert late.answer.status == 201, late.answer.body
        await asyncio.wait_for(late.got_video.wait(), DEADLINE)

        # Redis comes back empty: the node registers again, with its room.
        redis_server.start()

        async def registered() -> bool:
            return "kept" in await rooms_of(a)

        await eventually(registered, what="the room registered again", seconds=DEADLINE)
        # (logged at the end of the heartbeat that listed the room again)
        await eventually(
            lambda: [e["event"] for e in a.events()].count("registered in Redis") == 2,
            what="the registration logged",
            seconds=DEADLINE,
        )
        logged = [e["event"] for e in a.events()]
        assert any(e.startswith("lost Redis") for e in logged)
        accepted = await publish(a.url, "new")
        others.append(accepted)
        assert accepted.answer.status == 201, accepted.answer.body
    finally:
        await close_all(publisher, viewer, *others)


async def test_recordings_of_every_node_through_any_node(cluster: Cluster) -> None:
    a = cluster.start("127.0.0.1", RECORD_ENABLED="1")
    b = cluster.start("127.0.0.2", RECORD_ENABLED="1")
    name = "stage_0_1764000000.ivf"
    content = bytes(range(256)) * 64
    records = cluster.cwd / f"{b.host}-{b.port}" / "records"
    records.mkdir(exist_ok=True)
    (records / name).write_bytes(content)

    listed = await get_json(a.url + "/api/records")
    assert [(entry["name"], entry["node"], entry["size"]) for entry in listed] == [
        (name, b.name, len(content))
    ]
    async with aiohttp.ClientSession() as http:
        async with http.get(a.url + f"/records/{name}") as response:
            assert response.status == 200
            assert await response.read() == content
            assert response.headers["Golive-Worker"] == f"{b.name}/0"
        async with http.get(
            a.url + f"/records/{name}", headers={"Range": "bytes=10-19"}
        ) as response:
            assert response.status == 206
            assert await response.read() == content[10:20]
        async with http.get(a.url + "/records/stage_0_1764000001.ivf") as response:
            assert response.status == 404
            assert await response.json() == {"error": "recording not found"}


async def test_one_room_viewed_on_both_workers_of_a_node(cluster: Cluster) -> None:
    node = cluster.start("127.0.0.1", WORKERS="2")
    publisher = await publish(node.url, "wide")
    assert publisher.answer.status == 201, publisher.answer.body
    owner = publisher.answer.worker
    viewers: list[Viewer] = []
    try:
        # Fresh connections until a viewer landed on each worker (the kernel spreads them).
        for _ in range(40):
            viewer = await view(node.url, "wide")
            viewers.append(viewer)
            assert viewer.answer.status == 201, viewer.answer.body
            if len({v.answer.worker for v in viewers}) == 2:
                break
        workers = {v.answer.worker for v in viewers}
        assert workers == {f"{node.name}/0", f"{node.name}/1"}, workers
        await asyncio.wait_for(asyncio.gather(*(v.got_video.wait() for v in viewers)), DEADLINE)

        # The node lists every viewer once: the relay's pull of the owner is not one.
        async def listed() -> bool:
            room = (await rooms_of(node)).get("wide")
            return room is not None and room["viewersByNode"] == {node.name: len(viewers)}

        await eventually(listed, what="the node's viewers listed", seconds=DEADLINE)
        relayed = [v for v in viewers if v.answer.worker != owner]
        assert relayed, "no viewer on the worker that does not own the room"
        # The room ends: the viewers on both workers end with it.
        assert await delete(node.url, publisher.answer.location) == 200
        await eventually(
            lambda: all(v.pc.connectionState in ("closed", "failed") for v in viewers),
            what="every viewer ended with the room",
            seconds=DEADLINE,
        )
    finally:
        await close_all(publisher, *viewers)


async def test_admin_close_and_trickle_through_any_node(cluster: Cluster) -> None:
    # An admin credential is configured: the nodes present CLUSTER_SECRET to each other.
    secured = {"ADMIN_TOKEN": "operator", "CLUSTER_SECRET": "between-nodes"}
    a = cluster.start("127.0.0.1", **secured)
    b = cluster.start("127.0.0.2", **secured)
    publisher = await publish(a.url, "closing")
    viewer = await view(b.url, "closing")
    try:
        assert viewer.answer.status == 201, viewer.answer.body
        await asyncio.wait_for(viewer.got_video.wait(), DEADLINE)
        # A trickle PATCH of B's viewer, sent to A: forwarded to B, which holds the session.
        fragment = "a=ice-ufrag:x\r\na=end-of-candidates\r\n"
        ufrag = next(
            line.split(":", 1)[1]
            for line in viewer.pc.localDescription.sdp.splitlines()
            if line.startswith("a=ice-ufrag:")
        )
        async with aiohttp.ClientSession() as http:
            async with http.patch(
                a.url + viewer.answer.location,
                data=fragment.replace("x", ufrag),
                headers={
                    "Content-Type": "application/trickle-ice-sdpfrag",
                    "If-Match": viewer.answer.etag,
                },
            ) as response:
                assert response.status == 204, await response.text()
                assert response.headers["Golive-Worker"] == f"{b.name}/0"
            # Admin close sent to B: forwarded to A, the owner.
            async with http.post(
                b.url + "/api/admin/rooms/closing/close",
                headers={"Authorization": "Bearer operator"},
            ) as response:
                assert response.status == 200, await response.text()
                assert await response.json() == {"room": "closing", "closed": True}
                assert response.headers["Golive-Worker"] == f"{a.name}/0"
        await eventually(
            lambda: viewer.pc.connectionState in ("closed", "failed"),
            what="the relayed viewer ended with the room",
            seconds=DEADLINE,
        )
        ended = [
            e["reason"]
            for e in b.events()
            if e["event"] == "session ended" and e.get("role") == "subscriber"
        ]
        assert ended == ["admin_closed"], ended
    finally:
        await close_all(publisher, viewer)
