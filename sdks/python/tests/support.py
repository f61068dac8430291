"""Test support: the real server as a subprocess, a TCP proxy that can cut or
freeze its connections, and small helpers for bounded waiting."""

from __future__ import annotations

import asyncio
import functools
import os
import queue
import signal
import subprocess
import tempfile
import threading
import uuid
from pathlib import Path
from typing import Any, Awaitable, Callable, Dict, List, Optional, Set, Type, TypeVar

import arqonbus

#: sdks/python/tests -> the repository root.
REPO = Path(__file__).resolve().parents[3]
DEFAULT_BIN = REPO / "target" / "debug" / "arqonbus"

T = TypeVar("T")


def server_binary() -> Path:
    return Path(os.environ.get("ARQONBUS_BIN") or DEFAULT_BIN)


class BusServer:
    """``arqonbus`` on a free port, with one role for everyone."""

    def __init__(
        self,
        role: str = "user",
        heartbeat_s: int = 1,
        extra_env: Optional[Dict[str, Optional[str]]] = None,
        config: Optional[str] = None,
    ) -> None:
        """``extra_env`` overrides the test settings below; a value of None
        removes the variable, so that the server's default applies.
        ``config`` is TOML for a ``--config`` file (e.g. ``[[api.keys]]``);
        the variables still apply over it."""
        binary = server_binary()
        if not binary.exists():
            raise RuntimeError(
                f"server binary {binary} not found: build it with `cargo build -p arqonbus` "
                "or point ARQONBUS_BIN at it"
            )
        env = dict(os.environ)
        env.update(
            {
                "ARQON_SERVER__PORT": "0",
                "ARQON_LIMITS__RATE_PER_S": "0",
                "ARQON_LIMITS__BYTES_PER_S": "0",
                "ARQON_SERVER__HEARTBEAT_S": str(heartbeat_s),
                "ARQON_AUTH__DEFAULT_ROLE": role,
                # A short drain so SIGTERM at teardown is quick.
                "ARQON_SERVER__SHUTDOWN_GRACE_MS": "1000",
                # The monitoring listener defaults to the fixed port 9101,
                # which would make parallel servers collide.
                "ARQON_MONITORING__PORT": "0",
            }
        )
        for key, value in (extra_env or {}).items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
        self.role = role
        self.heartbeat_s = heartbeat_s
        self._args: List[str] = []
        self._config_path: Optional[str] = None
        if config is not None:
            with tempfile.NamedTemporaryFile("w", prefix="arqonbus-", suffix=".toml", delete=False) as file:
                file.write(config)
            self._config_path = file.name
            self._args = ["--config", file.name]
        line = self._launch(binary, env)
        if not line and "ARQON_MONITORING__PORT names no configuration key" in self._log_text():
            # A server built before the monitoring listener existed rejects
            # the variable (unknown ARQON_ variables are errors): retry.
            del env["ARQON_MONITORING__PORT"]
            self._discard_log()
            line = self._launch(binary, env)
        prefix = "ArqonBus listening on "
        if not line.startswith(prefix):
            self.stop()
            raise RuntimeError(f"unexpected ready line {line!r}; server log:\n{self._log_text()}")
        self.url = line[len(prefix) :].strip()
        self.port = int(self.url.rsplit(":", 1)[1].split("/", 1)[0])

    def _launch(self, binary: Path, env: Dict[str, str]) -> str:
        """Starts the process; returns its first stdout line ('' if it exited)."""
        self.log = tempfile.NamedTemporaryFile(prefix=f"arqonbus-{self.role}-", suffix=".log", delete=False)
        self.process = subprocess.Popen(
            [str(binary), *self._args],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
        )
        lines: "queue.Queue[str]" = queue.Queue()
        stdout = self.process.stdout
        assert stdout is not None
        threading.Thread(target=lambda: lines.put(stdout.readline()), daemon=True).start()
        try:
            line = lines.get(timeout=60)
        except queue.Empty:
            self.stop()
            raise RuntimeError(f"arqonbus printed no ready line within 60 s; log:\n{self._log_text()}") from None
        if not line:
            self.process.wait(timeout=15)
        return line

    def _log_text(self) -> str:
        try:
            return Path(self.log.name).read_text(errors="replace")[-4000:]
        except OSError:
            return "(no log)"

    def terminate(self) -> None:
        """Sends SIGTERM (the server then sends `shutdown` and closes with 1001)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def stop(self) -> Optional[int]:
        """SIGTERM, then waits (SIGKILL after 15 s); returns the exit code."""
        self.terminate()
        try:
            code = self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait(timeout=15)
        if self.process.stdout is not None:
            self.process.stdout.close()
        self._discard_log()
        if self._config_path is not None:
            try:
                os.unlink(self._config_path)
            except OSError:
                pass
            self._config_path = None
        return code

    def _discard_log(self) -> None:
        self.log.close()
        try:
            os.unlink(self.log.name)
        except OSError:
            pass


class _Pair:
    def __init__(self, client: asyncio.StreamWriter, upstream: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream = upstream
        self.frozen = False
        self.drop_down = False

    def abort(self) -> None:
        for writer in (self.client, self.upstream):
            transport = writer.transport
            if transport is not None and not transport.is_closing():
                transport.abort()


class TcpProxy:
    """A TCP proxy to 127.0.0.1:``port`` that tests can sabotage.

    - :meth:`kill_all` aborts every live connection (both sides see a reset).
    - :meth:`freeze_all` makes every live connection silently stop forwarding
      in both directions, without closing anything: a dead network path.
    - :meth:`drop_downstream_all` keeps forwarding client to server but
      discards server to client: requests are carried out, answers are lost.
    - ``accepting = False`` makes new connections close at once.
    """

    def __init__(self, port: int) -> None:
        self.target_port = port
        self.accepting = True
        self.pairs: Set[_Pair] = set()
        self.accepted = 0
        #: Bytes from clients swallowed by frozen connections.
        self.swallowed_upstream = 0
        self._server: Optional[asyncio.Server] = None
        self._tasks: Set["asyncio.Task[None]"] = set()

    async def start(self) -> "TcpProxy":
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.accepting:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self.accepted += 1
        pair = _Pair(writer, up_writer)
        self.pairs.add(pair)
        down = asyncio.ensure_future(self._pump(pair, up_reader, writer, downstream=True))
        up = asyncio.ensure_future(self._pump(pair, reader, up_writer, downstream=False))
        for task in (down, up):
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        await asyncio.gather(down, up, return_exceptions=True)
        self.pairs.discard(pair)
        if not pair.frozen:
            pair.abort()

    async def _pump(
        self, pair: _Pair, src: asyncio.StreamReader, dst: asyncio.StreamWriter, *, downstream: bool
    ) -> None:
        try:
            while True:
                data = await src.read(65536)
                if pair.frozen:
                    if not data:
                        # A frozen path shows nothing, not even a close.
                        await asyncio.Event().wait()
                    if not downstream:
                        self.swallowed_upstream += len(data)
                    continue
                if not data:
                    break
                if downstream and pair.drop_down:
                    continue
                dst.write(data)
                await dst.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            if not pair.frozen:
                pair.abort()

    def kill_all(self) -> int:
        pairs = list(self.pairs)
        for pair in pairs:
            pair.frozen = False
            pair.abort()
        return len(pairs)

    def freeze_all(self) -> int:
        for pair in self.pairs:
            pair.frozen = True
        return len(self.pairs)

    def drop_downstream_all(self) -> int:
        for pair in self.pairs:
            pair.drop_down = True
        return len(self.pairs)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        self.kill_all()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()


def bounded(seconds: float) -> Callable[[Callable[..., Awaitable[T]]], Callable[..., Awaitable[T]]]:
    """Bounds an async test's total running time."""

    def decorate(fn: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
        @functools.wraps(fn)
        async def wrapper(*args: Any, **kwargs: Any) -> T:
            return await asyncio.wait_for(fn(*args, **kwargs), seconds)

        return wrapper

    return decorate


def unique(prefix: str = "t") -> str:
    """A fresh room/channel name (tests share servers)."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


async def next_item(
    client: arqonbus.Client,
    kind: Type[T],
    predicate: Optional[Callable[[T], bool]] = None,
    timeout: float = 15.0,
    skipped: Optional[List[Any]] = None,
) -> T:
    """The next item of ``kind`` (matching ``predicate``) from ``client.messages()``;
    other items are skipped (and appended to ``skipped`` if given)."""

    async def find() -> T:
        while True:
            item = await client.receive()
            if isinstance(item, kind) and (predicate is None or predicate(item)):
                return item
            if skipped is not None:
                skipped.append(item)

    return await asyncio.wait_for(find(), timeout)


async def eventually(check: Callable[[], Any], timeout: float = 15.0, interval: float = 0.05) -> None:
    """Waits until ``check()`` is truthy."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)
