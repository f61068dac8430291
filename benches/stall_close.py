"""How long after a subscriber stops reading does the bus close it?

Protocol section 8.1: a connection whose backlog is not empty and whose
socket accepts no byte for the write timeout (10 s by default) is closed as a
slow consumer. This script measures it as a user sees it, against a running
server: one subscriber with a 4 KiB receive buffer reads for a moment, then
stops at T0 while a publisher keeps a steady stream going to the channel, and
100 other subscribers keep reading. The time from T0 to the close (read from
/metrics, `arqon_slow_consumer_disconnects_total{cause="write_timeout"}`)
includes the seconds the kernel's buffers take to fill after T0; the
moment the socket really stopped accepting is when the largest send queue
of the server's connections (`ss -tn`) stopped growing, and the script
reports the close time from there too (`socket_full_to_close_s`). The
readers' rate before and after T0 shows what the stall costs them.

    python benches/stall_close.py ws://127.0.0.1:9100/ws http://127.0.0.1:9101

Bounded: at most 30 s of publishing. Needs `websockets`.
"""

import asyncio
import json
import socket
import subprocess
import sys
import time
import urllib.request

from websockets.asyncio.client import connect

URL, MON = sys.argv[1], sys.argv[2]
READERS = 100
RATE = 2000  # messages per second from the publisher
LIMIT_S = 30.0


def closes(cause: str) -> float:
    text = urllib.request.urlopen(f"{MON}/metrics", timeout=5).read().decode()
    for line in text.splitlines():
        if line.startswith(f'arqon_slow_consumer_disconnects_total{{cause="{cause}"}}'):
            return float(line.split()[-1])
    return 0.0


def largest_send_queue(port: str) -> int:
    """The largest Send-Q among the server's connections on `port`."""
    out = subprocess.run(["ss", "-tnH", "state", "established", f"( sport = :{port} )"],
                         capture_output=True, text=True, timeout=5).stdout
    return max((int(line.split()[1]) for line in out.splitlines() if line.strip()), default=0)


async def opened(**kwargs):
    ws = await connect(URL, proxy=None, **kwargs)
    await ws.recv()
    await ws.send(json.dumps({"type": "command", "command": "join_channel", "args": {"room": "stall", "channel": "c"}}))
    while json.loads(await ws.recv())["type"] != "response":
        pass
    return ws


async def main() -> None:
    before = closes("write_timeout")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    host, port = URL.split("//")[1].split("/")[0].split(":")
    sock.connect((host, int(port)))
    # max_queue=1: the library itself stops reading the socket once one
    # message waits, so not calling recv() really stops the reading.
    stalled = await opened(sock=sock, max_queue=1, max_size=None)
    readers = [await opened() for _ in range(READERS)]
    publisher = await connect(URL, proxy=None)
    await publisher.recv()
    counts = [0] * READERS

    async def read(i, ws):
        async for _ in ws:
            counts[i] += 1

    tasks = [asyncio.ensure_future(read(i, ws)) for i, ws in enumerate(readers)]
    start = time.monotonic()
    t0 = start + 2.0  # the stalled client stops reading 2 s in
    sent, closed_at, rate_before, rate_after = 0, None, None, None
    mark = (start, 0)
    queue, queue_grew_at = 0, None
    while time.monotonic() - start < LIMIT_S:
        now = time.monotonic()
        due = int((now - start) * RATE)
        while sent < due:
            frame = {"type": "message", "room": "stall", "channel": "c", "payload": {"n": sent, "x": "x" * 200}}
            await publisher.send(json.dumps(frame))
            sent += 1
        if now < t0:
            try:  # read everything available, then stop at T0
                while True:
                    await asyncio.wait_for(stalled.recv(), 0.001)
            except (asyncio.TimeoutError, TimeoutError):
                pass
        if rate_before is None and now >= t0:
            rate_before = sum(counts) / (now - start)
            mark = (now, sum(counts))
        if now >= t0:
            q = largest_send_queue(port)
            if q > queue:
                queue, queue_grew_at = q, now
        if closed_at is None and now >= t0 and int(now * 10) % 2 == 0:
            if closes("write_timeout") > before:
                closed_at = now
                rate_after = (sum(counts) - mark[1]) / (now - mark[0])
                break
        await asyncio.sleep(0.01)
    for t in tasks:
        t.cancel()
    print(json.dumps({
        "stop_to_close_s": None if closed_at is None else round(closed_at - t0, 2),
        "socket_full_to_close_s": None if closed_at is None or queue_grew_at is None else round(closed_at - queue_grew_at, 2),
        "send_queue_bytes": queue,
        "readers_rate_before": round(rate_before or 0), "readers_rate_during_stall": round(rate_after or 0),
        "published": sent,
    }))


asyncio.run(main())
