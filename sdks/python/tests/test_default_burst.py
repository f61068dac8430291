"""A burst that the default limits allow reaches an ordinary subscriber whole.

The server runs with its DEFAULT configuration (rate limit 100/s, burst 200,
heartbeat 20 s, default outbound backlog). 100 publishers each send 200
messages at once, inside their own burst, to one channel that one subscriber
has joined. Everyone is the kind of client applications write: plain
`websockets` on one asyncio event loop, one JSON parse per message, and a
yield to the loop after each message (``await asyncio.sleep(0)``). So the
loop takes turns: while the subscriber reads one message, each publisher
sends one, and the subscriber falls up to the whole burst (about 8 MB) behind
the bus. Protocol section 8.1: a burst that fits the backlog limits is
delivered whole and in order, and the subscriber is not closed.
"""

from __future__ import annotations

import asyncio
import inspect
import json
from typing import Any, Dict, List, Optional, Tuple

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from support import BusServer, bounded, unique

PUBLISHERS = 100
#: Per publisher: exactly the default burst.
MESSAGES = 200
#: Payload padding: a delivered envelope of about 400 bytes.
PAD = "x" * 128
#: BusServer's test settings removed, so the server's defaults apply.
DEFAULTS: Dict[str, Optional[str]] = {"ARQON_LIMITS__RATE_PER_S": None, "ARQON_SERVER__HEARTBEAT_S": None}
#: websockets >= 15 honours HTTP(S)_PROXY; the bus on localhost is reached directly.
CONNECT_ARGS = {"proxy": None} if "proxy" in inspect.signature(connect.__init__).parameters else {}


async def _open(url: str) -> Tuple[ClientConnection, Dict[str, Any]]:
    """A connection and its `welcome` payload."""
    ws = await connect(url, **CONNECT_ARGS)
    welcome = json.loads(await asyncio.wait_for(ws.recv(), 30))
    assert (welcome["type"], welcome["payload"]["event"]) == ("event", "welcome")
    return ws, welcome["payload"]


async def _count_frames(ws: ClientConnection, seen: Dict[str, int]) -> None:
    """What the bus sends a publisher, by error code or type: nothing, unless something fails."""
    try:
        async for raw in ws:
            frame = json.loads(raw)
            key = frame["error"]["code"] if frame["type"] == "error" else frame["type"]
            seen[key] = seen.get(key, 0) + 1
    except ConnectionClosed as exc:
        code = exc.rcvd.code if exc.rcvd is not None else 1006
        seen[f"CLOSE_{code}"] = seen.get(f"CLOSE_{code}", 0) + 1


async def _publish(ws: ClientConnection, room: str, channel: str, publisher: int) -> None:
    for seq in range(MESSAGES):
        frame = {"type": "message", "room": room, "channel": channel, "payload": {"p": publisher, "s": seq, "x": PAD}}
        await ws.send(json.dumps(frame))
        await asyncio.sleep(0)


@bounded(120)
async def test_default_burst_reaches_a_plain_websockets_subscriber() -> None:
    loop = asyncio.get_running_loop()
    server = await loop.run_in_executor(None, lambda: BusServer(extra_env=DEFAULTS))
    room, channel = unique("burst"), unique("ch")
    total = PUBLISHERS * MESSAGES
    next_seq = [0] * PUBLISHERS
    received = 0
    misordered: List[Tuple[int, int, int]] = []
    other_frames: List[Any] = []
    closed: Optional[Tuple[int, str]] = None
    publisher_frames: Dict[str, int] = {}
    conns: List[ClientConnection] = []
    tasks: List["asyncio.Future[None]"] = []
    try:
        sub, welcome = await _open(server.url)
        conns.append(sub)
        # The defaults this test is about (protocol section 7).
        assert (welcome["limits"]["rate_per_s"], welcome["limits"]["burst"]) == (100, MESSAGES)
        assert welcome["heartbeat_s"] == 20
        join = {"type": "command", "command": "join_channel", "args": {"room": room, "channel": channel}}
        await sub.send(json.dumps(join))
        assert json.loads(await asyncio.wait_for(sub.recv(), 30))["type"] == "response"
        publishers = [ws for ws, _ in await asyncio.gather(*[_open(server.url) for _ in range(PUBLISHERS)])]
        conns.extend(publishers)
        tasks = [asyncio.ensure_future(_count_frames(ws, publisher_frames)) for ws in publishers]
        sending = asyncio.gather(*[_publish(ws, room, channel, p) for p, ws in enumerate(publishers)])
        tasks.append(sending)
        try:
            while received < total:
                # 60 s without a frame means the burst was lost; the bound is 120 s.
                frame = json.loads(await asyncio.wait_for(sub.recv(), 60))
                if frame["type"] != "message":
                    other_frames.append(frame)
                    continue
                publisher, seq = frame["payload"]["p"], frame["payload"]["s"]
                if seq != next_seq[publisher]:
                    misordered.append((publisher, next_seq[publisher], seq))
                next_seq[publisher] = seq + 1
                received += 1
                await asyncio.sleep(0)
        except ConnectionClosed as exc:
            closed = (exc.rcvd.code, exc.rcvd.reason) if exc.rcvd is not None else (1006, "no close frame")
        await asyncio.wait_for(sending, 30)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*[ws.close() for ws in conns], return_exceptions=True)
        await loop.run_in_executor(None, server.stop)

    assert closed is None, f"subscriber closed with {closed[0]} {closed[1]!r} after {received} of {total} messages"
    assert misordered == [], f"{len(misordered)} out of order, first (publisher, expected, got): {misordered[:5]}"
    assert next_seq == [MESSAGES] * PUBLISHERS
    assert received == total
    assert other_frames == []
    assert publisher_frames == {}
