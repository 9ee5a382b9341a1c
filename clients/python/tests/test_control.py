"""The backend in control through the package, against the real gateway:
commands over the HTTP API and through Redis reach real sockets, a user's
connections are listed across two gateways, a channel's presence is read."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
from conftest import API_KEY, PATIENCE, Gateway, RedisServer, Socket, _gateway_env
from websockets.exceptions import ConnectionClosed

import tidings
from tidings import AsyncTidings, Tidings

PRESENCE_RULES = """
[[routing.rules]]
channel = "/app/room/*"
subscribe = true
presence = true
"""


class User:
    """What a Django user looks like to the package: an object with ``pk``."""

    def __init__(self, pk: int) -> None:
        self.pk = pk


def socket_of(gw: Gateway, t: Tidings, user: str, sockets: list[Socket]) -> Socket:
    s = Socket(f"{gw.ws_url}?token={t.mint_token(user).token}")
    sockets.append(s)
    return s


def closed_with(s: Socket) -> int | None:
    """Reads until the socket closes; its close code."""
    deadline = time.monotonic() + PATIENCE
    while time.monotonic() < deadline:
        try:
            s.ws.recv(timeout=PATIENCE)
        except ConnectionClosed as e:
            return e.rcvd.code if e.rcvd else None
    raise AssertionError("the socket stayed open")


@pytest.fixture
def two_gateways(redis_server: RedisServer) -> Iterator[tuple[Gateway, Gateway]]:
    env = _gateway_env(redis_server.url)
    a = Gateway({**env, "TIDINGS_CONTROL__GATEWAY_ID": "gw-a"}, PRESENCE_RULES)
    b = Gateway({**env, "TIDINGS_CONTROL__GATEWAY_ID": "gw-b"}, PRESENCE_RULES)
    a.wait_ready()
    b.wait_ready()
    yield a, b
    a.stop()
    b.stop()


def test_connections_across_gateways_then_a_disconnect_over_http(
    two_gateways: tuple[Gateway, Gateway], sockets: list[Socket]
) -> None:
    a, b = two_gateways
    ta, tb = Tidings(a.url, API_KEY), Tidings(b.url, API_KEY)
    s1 = socket_of(a, ta, "42", sockets)
    s2 = socket_of(b, tb, "42", sockets)
    other = socket_of(a, ta, "7", sockets)

    found = ta.connections(User(42))
    assert found.user == "42"
    assert found.gateways == 2 and found.missing == []
    assert sorted(c.conn for c in found.connections) == sorted(
        [s1.welcome["connection"], s2.welcome["connection"]]
    )
    assert sorted(c.gateway for c in found.connections) == ["gw-a", "gw-b"]
    assert all(c.since_ms > 0 for c in found.connections)

    tb.disconnect(user=User(42), code=tidings.REVOKED, reason="password changed")
    assert closed_with(s1) == 4003
    assert closed_with(s2) == 4003
    # Nobody else: user 7 is still served.
    other.ws.send('{"type":"ping","id":"still"}')
    assert other.next() == {"type": "pong", "id": "still"}
    deadline = time.monotonic() + PATIENCE
    while ta.connections("42").connections:
        assert time.monotonic() < deadline, "the closed sockets are still listed"
        time.sleep(0.02)


def test_commands_through_redis_and_presence(
    two_gateways: tuple[Gateway, Gateway], redis_server: RedisServer, sockets: list[Socket]
) -> None:
    a, b = two_gateways
    http = Tidings(a.url, API_KEY)
    red = Tidings(redis_url=redis_server.url)
    anna = socket_of(a, http, "anna", sockets)
    bob = socket_of(b, http, "bob", sockets)

    # Server-side subscribe through Redis: the next message on the room
    # reaches anna, on her gateway, although she never asked.
    red.subscribe("/app/room/1", user="anna")
    red.subscribe("/app/room/1", conn=bob.welcome["connection"])
    assert anna.next() == {"type": "subscribed", "channel": "/app/room/1"}
    assert bob.next() == {"type": "subscribed", "channel": "/app/room/1"}
    deadline = time.monotonic() + PATIENCE
    while (p := http.presence("/app/room/1")).users != 2:
        assert time.monotonic() < deadline, p
        time.sleep(0.02)
    assert p.channel == "/app/room/1" and p.connections == 2
    assert p.members is not None
    assert sorted(m.user or "" for m in p.members) == ["anna", "bob"]

    red.unsubscribe("/app/room/1", user="bob")
    red.refresh(user="anna")
    assert closed_with(anna) == 4004  # identity changed: reconnect
    red.close()


def test_asyncio_and_bad_input(redis_gateway: Gateway, redis_server: RedisServer, sockets: list[Socket]) -> None:
    t = Tidings(redis_gateway.url, API_KEY)
    s = socket_of(redis_gateway, t, "9", sockets)

    async def run() -> tidings.Connections:
        async with AsyncTidings(redis_gateway.url, API_KEY) as h, AsyncTidings(redis_url=redis_server.url) as r:
            found = await h.connections(9)
            await r.disconnect(conn=s.welcome["connection"], code=4100, reason="bye")
            return found

    found = asyncio.run(run())
    assert [c.conn for c in found.connections] == [s.welcome["connection"]]
    assert closed_with(s) == 4100

    # Both or neither target, a bad id: refused before anything is sent.
    with pytest.raises(tidings.InvalidValue):
        t.disconnect(user="1", conn="x")
    with pytest.raises(tidings.InvalidValue):
        t.refresh()
    with pytest.raises(tidings.InvalidValue):
        t.connections("a\nb")
    # What the gateway refuses comes back as its documented error.
    with pytest.raises(tidings.BadRequest) as bad:
        t.disconnect(user="1", code=1000)
    assert bad.value.status == 400
    with pytest.raises(tidings.NotFound):
        t.presence("/app/no-presence-here")
    with pytest.raises(tidings.Unauthorized):
        Tidings(redis_gateway.url, "wrong-key").connections("1")
    # Listing asks a gateway: not through Redis alone.
    with pytest.raises(tidings.ConfigurationError):
        Tidings(redis_url=redis_server.url).connections("1")
