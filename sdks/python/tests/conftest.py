"""Fixtures: real servers (one per role, shared by the session), a fresh
server per test where a test stops it, clients closed after each test, and
the sabotage proxy."""

from __future__ import annotations

from typing import Any, AsyncIterator, Awaitable, Callable, Dict, Iterator, List

import pytest

import arqonbus
from support import BusServer, TcpProxy

_servers: Dict[str, BusServer] = {}


def _server(role: str) -> BusServer:
    if role not in _servers:
        _servers[role] = BusServer(role=role, heartbeat_s=1)
    return _servers[role]


@pytest.fixture(scope="session", autouse=True)
def _stop_servers() -> Iterator[None]:
    yield
    for server in _servers.values():
        server.stop()
    _servers.clear()


@pytest.fixture
def bus() -> BusServer:
    """The shared server where everyone has role `user` (the default role)."""
    return _server("user")


@pytest.fixture
def admin_bus() -> BusServer:
    """The shared server where everyone is `admin`."""
    return _server("admin")


@pytest.fixture
def guest_bus() -> BusServer:
    """The shared server where everyone is `guest`."""
    return _server("guest")


@pytest.fixture
def fresh_bus() -> Iterator[BusServer]:
    """A server of this test's own, stopped after it."""
    server = BusServer(role="user", heartbeat_s=1)
    yield server
    server.stop()


ClientFactory = Callable[..., Awaitable[arqonbus.Client]]


@pytest.fixture
async def make_client() -> AsyncIterator[ClientFactory]:
    """``await make_client(url, **options)``: a started client, closed after the test."""
    clients: List[arqonbus.Client] = []

    async def make(url: str, **options: Any) -> arqonbus.Client:
        options.setdefault("request_timeout", 15.0)
        client = await arqonbus.connect(url, **options)
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


@pytest.fixture
async def make_proxy() -> AsyncIterator[Callable[[int], Awaitable[TcpProxy]]]:
    """``await make_proxy(port)``: a sabotage proxy, closed after the test."""
    proxies: List[TcpProxy] = []

    async def make(port: int) -> TcpProxy:
        proxy = await TcpProxy(port).start()
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        await proxy.close()


#: API keys and static tokens of :func:`api_bus` (keys are at least 16 bytes).
ADMIN_KEY = "test-admin-key-0123456789"
USER_KEY = "test-user-key-0123456789"
ALICE_TOKEN = "alice-token-0123456789"
BOB_TOKEN = "bob-token-0123456789"

API_CONFIG = f"""
[auth]
mode = "token"
allow_anonymous = true

[[auth.tokens]]
token = "{ALICE_TOKEN}"
role = "user"
client = "alice"

[[auth.tokens]]
token = "{BOB_TOKEN}"
role = "user"
client = "bob"

[[api.keys]]
name = "backend-admin"
key = "{ADMIN_KEY}"
role = "admin"

[[api.keys]]
name = "backend-user"
key = "{USER_KEY}"
role = "user"
"""


@pytest.fixture
def api_bus() -> BusServer:
    """The shared server with static tokens for users ``alice`` and ``bob``
    (anonymous connections allowed, role ``user``) and two API keys."""
    if "api" not in _servers:
        _servers["api"] = BusServer(role="user", heartbeat_s=1, config=API_CONFIG)
    return _servers["api"]
