"""A terminal chat on ArqonBus.

Run with:  python examples/chat.py ws://127.0.0.1:9100/ws ROOM CHANNEL [--nick NAME]

Shows the channel's last messages, then every new one, as
``[HH:MM:SS] <nick> text`` (UTC); each line typed on standard input is
published to the channel as ``{"nick": NAME, "text": LINE}`` and shown too
(the bus does not send you your own messages). End with Ctrl-D (or Ctrl-C).
The connection is kept alive and rejoined automatically; nothing said in the
channel meanwhile is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
import threading
from datetime import datetime, timezone
from typing import Dict, Optional

import arqonbus


def _short(client_id: Optional[str]) -> str:
    """The last 6 characters of a client id: enough to tell people apart."""
    return (client_id or "someone")[-6:]


def _line(message: arqonbus.Message, nicks: Dict[str, str]) -> str:
    """``[HH:MM:SS] <nick> text``: the payload's nick, else the sender's short
    id (a sender such as `arqon pub` or the Rust chat may send no nick)."""
    payload = message.payload
    if isinstance(payload, dict) and "text" in payload:
        text = str(payload["text"])
    else:
        text = str(payload)
    nick = payload.get("nick") if isinstance(payload, dict) else None
    if nick and message.from_:
        nicks[message.from_] = str(nick)
    shown = str(nick) if nick else _short(message.from_)
    return f"[{message.time:%H:%M:%S}] <{shown}> {text}"


def _own_line(nick: str, text: str) -> str:
    """A line you sent, as the others see it."""
    return f"[{datetime.now(timezone.utc):%H:%M:%S}] <{nick}> {text}"


def _who(client_id: Optional[str], nicks: Dict[str, str]) -> str:
    if not client_id:
        return "someone"
    return nicks.get(client_id, _short(client_id))


async def show(client: arqonbus.Client, nicks: Dict[str, str]) -> None:
    """Prints everything that arrives."""
    async for item in client.messages():
        if isinstance(item, arqonbus.Message):
            print(_line(item, nicks), flush=True)
        elif isinstance(item, arqonbus.Event):
            if item.name == "member_joined":
                print(f"* {_who(item.payload.get('client_id'), nicks)} joined", flush=True)
            elif item.name == "member_left":
                print(f"* {_who(item.payload.get('client_id'), nicks)} left", flush=True)
            elif item.name == "channel_deleted":
                print("* the channel was deleted", flush=True)
            elif item.name == "shutdown":
                print("* the server is shutting down", flush=True)
        elif isinstance(item, arqonbus.Disconnected):
            print(f"* connection lost ({item.reason}); reconnecting...", flush=True)
        elif isinstance(item, arqonbus.Reconnected):
            print("* reconnected", flush=True)
        elif isinstance(item, arqonbus.ErrorReceived):
            print(f"* error: {item.error}", flush=True)


def read_stdin(loop: asyncio.AbstractEventLoop, lines: "asyncio.Queue[str]") -> None:
    """Feeds stdin lines to ``lines`` from a daemon thread ('' at end of input).

    A daemon thread, not the default executor: a blocked read must not keep
    the program alive after Ctrl-C. Works for terminals and pipes alike.
    """

    def pump() -> None:
        for line in sys.stdin:
            loop.call_soon_threadsafe(lines.put_nowait, line)
        loop.call_soon_threadsafe(lines.put_nowait, "")

    threading.Thread(target=pump, daemon=True).start()


async def chat(url: str, room: str, channel: str, nick: str) -> None:
    loop = asyncio.get_running_loop()
    lines: "asyncio.Queue[str]" = asyncio.Queue()
    nicks: Dict[str, str] = {}
    async with arqonbus.connect(url) as client:
        # Recent history first, then join right after its last message, so
        # nothing falls between the two.
        since = None
        try:
            recent = await client.history(room, channel, limit=20)
        except arqonbus.NotFound:
            recent = []
        for message in recent:
            print(_line(message, nicks))
            since = message.id
        joined = await client.join(room, channel, since=since)
        print(f"* joined {room}/{channel} as {nick} ({joined.members} here); Ctrl-D to quit", flush=True)

        printer = asyncio.ensure_future(show(client, nicks))
        read_stdin(loop, lines)
        try:
            while True:
                line = await lines.get()
                if not line:
                    break
                text = line.rstrip("\n")
                if text:
                    try:
                        await client.publish(room, channel, {"nick": nick, "text": text})
                        # The bus delivers to every member but the sender.
                        print(_own_line(nick, text), flush=True)
                    except arqonbus.ArqonError as exc:
                        print(f"* not sent: {exc}", flush=True)
        finally:
            printer.cancel()
            await asyncio.gather(printer, return_exceptions=True)


def main() -> None:
    parser = argparse.ArgumentParser(description="Terminal chat on ArqonBus.")
    parser.add_argument("url", help="bus endpoint, e.g. ws://127.0.0.1:9100/ws")
    parser.add_argument("room")
    parser.add_argument("channel")
    parser.add_argument("--nick", default=getpass.getuser(), help="name shown to others (default: your login)")
    args = parser.parse_args()
    try:
        asyncio.run(chat(args.url, args.room, args.channel, args.nick))
    except KeyboardInterrupt:
        pass
    except arqonbus.ArqonError as exc:
        sys.exit(f"chat: {exc}")


if __name__ == "__main__":
    main()
