"""The package against the real gateway, with and without a real Redis."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest
from conftest import API_KEY, Gateway, RedisServer, Socket, _gateway_env, free_port
from websockets.exceptions import InvalidStatus

import tidings
from tidings import AsyncTidings, Tidings


def open_with_token(gw: Gateway, token: str, sockets: list[Socket]) -> Socket:
    s = Socket(f"{gw.ws_url}?token={token}")
    sockets.append(s)
    return s


def message(channel: str, data: object) -> dict[str, object]:
    return {"type": "message", "channel": channel, "data": data}


def clients(gw: Gateway, redis: RedisServer | None) -> list[Tidings]:
    """The HTTP client, and the Redis one when there is a Redis."""
    out = [Tidings(gw.url, API_KEY)]
    if redis is not None:
        out.append(Tidings(redis_url=redis.url))
    return out


def run_flow(gw: Gateway, t: Tidings, sockets: list[Socket]) -> None:
    """Tokens from `t` open sockets for alice and bob; what `t` publishes to a
    user reaches that user only, groups and broadcasts reach their members."""
    alice = open_with_token(gw, t.mint_token({"user": "alice", "groups": ["staff"]}).token, sockets)
    bob = open_with_token(gw, t.mint_token("bob", ttl_secs=10).token, sockets)
    assert alice.welcome["user"] == "alice"
    assert bob.welcome["user"] == "bob"
    assert "/app/group/staff" in alice.welcome["channels"]

    t.publish_to_user("alice", {"text": "for alice"})
    t.publish_to_user("bob", {"text": "for bob"})
    # Bob's first message is his own: alice's never reached him.
    assert bob.next() == message("/app/user/bob/notifications", {"text": "for bob"})
    assert alice.next() == message("/app/user/alice/notifications", {"text": "for alice"})

    t.publish_to_group("staff", ["only", "staff"])
    t.broadcast("everyone")
    assert bob.next() == message("/app/broadcast", "everyone")
    assert alice.next() == message("/app/group/staff", ["only", "staff"])
    assert alice.next() == message("/app/broadcast", "everyone")

    t.publish("/app/user/bob/notifications", None)
    assert bob.next() == message("/app/user/bob/notifications", None)


def test_http_publish_and_tokens_reach_real_sockets(gateway: Gateway, sockets: list[Socket]) -> None:
    run_flow(gateway, Tidings(gateway.url, API_KEY), sockets)


def test_redis_publish_and_tokens_reach_real_sockets(
    redis_gateway: Gateway, redis_server: RedisServer, sockets: list[Socket]
) -> None:
    with Tidings(redis_url=redis_server.url) as t:
        run_flow(redis_gateway, t, sockets)


def test_http_tokens_with_redis_and_mixed_clients(
    redis_gateway: Gateway, redis_server: RedisServer, sockets: list[Socket]
) -> None:
    # A token minted through the API is redeemed from Redis; a publish
    # through Redis reaches a socket opened with it, and vice versa.
    http = Tidings(redis_gateway.url, API_KEY)
    red = Tidings(redis_url=redis_server.url)
    a = open_with_token(redis_gateway, http.mint_token("alice").token, sockets)
    b = open_with_token(redis_gateway, red.mint_token("bob").token, sockets)
    red.publish_to_user("alice", 1)
    http.publish_to_user("bob", 2)
    assert a.next() == message("/app/user/alice/notifications", 1)
    assert b.next() == message("/app/user/bob/notifications", 2)
    red.close()


def test_a_token_works_once(gateway: Gateway, sockets: list[Socket]) -> None:
    t = Tidings(gateway.url, API_KEY)
    token = t.mint_token("alice")
    assert len(token.token) == 64 and token.expires_in == 5.0
    open_with_token(gateway, token.token, sockets)
    with pytest.raises(InvalidStatus) as refused:
        open_with_token(gateway, token.token, sockets)
    assert refused.value.response.status_code == 401


def test_asyncio_clients(redis_gateway: Gateway, redis_server: RedisServer, sockets: list[Socket]) -> None:
    async def mint() -> tuple[str, str]:
        async with AsyncTidings(redis_gateway.url, API_KEY) as h, AsyncTidings(redis_url=redis_server.url) as r:
            assert await h.ready()
            return (await h.mint_token("alice")).token, (await r.mint_token("bob")).token

    ta, tb = asyncio.run(mint())
    a = open_with_token(redis_gateway, ta, sockets)
    b = open_with_token(redis_gateway, tb, sockets)

    async def publish() -> None:
        async with AsyncTidings(redis_gateway.url, API_KEY) as h, AsyncTidings(redis_url=redis_server.url) as r:
            await h.publish_to_user("alice", {"via": "http"})
            await r.publish_to_user("bob", {"via": "redis"})
            await h.broadcast("all")
            await r.publish_to_group("staff", "nobody here")

    asyncio.run(publish())
    assert a.next() == message("/app/user/alice/notifications", {"via": "http"})
    assert b.next() == message("/app/user/bob/notifications", {"via": "redis"})
    assert a.next() == message("/app/broadcast", "all")
    assert b.next() == message("/app/broadcast", "all")


@pytest.mark.parametrize("use_async", [False, True])
def test_error_mapping(gateway: Gateway, use_async: bool) -> None:
    def call(t: Tidings | AsyncTidings, name: str, *args: object) -> object:
        fn = getattr(t, name)
        return asyncio.run(fn(*args)) if use_async else fn(*args)

    cls = AsyncTidings if use_async else Tidings
    with pytest.raises(tidings.Unauthorized) as e:
        call(cls(gateway.url, "wrong-key-0123456789"), "publish", "/app/broadcast", 1)
    assert (e.value.status, e.value.code) == (401, "unauthorized")

    good = cls(gateway.url, API_KEY)
    with pytest.raises(tidings.InvalidChannel) as ic:
        call(good, "publish", "/app/*", 1)
    assert ic.value.status == 400 and isinstance(ic.value, ValueError)
    with pytest.raises(tidings.PayloadTooLarge) as big:
        call(good, "publish", "/app/broadcast", "x" * (1024 * 1024 + 1))
    assert big.value.code == "too_large"
    with pytest.raises(tidings.BadRequest) as br:
        call(good, "mint_token", {"user": "alice", "groups": "not a list"})
    assert br.value.status == 400

    port = free_port()
    with pytest.raises(tidings.ConnectionFailed):
        call(cls(f"http://127.0.0.1:{port}", API_KEY), "publish", "/app/broadcast", 1)
    # Values the gateway would never put in a channel fail before any request.
    for bad in ["", "a/b", "..", "x*", "\n", "é" * 65]:
        with pytest.raises(tidings.InvalidValue):
            call(good, "publish_to_user", bad, 1)


def test_tokens_disabled_and_broker_unavailable() -> None:
    # No token resolver; a Redis that is not there.
    gw = Gateway({"TIDINGS_API_KEY": API_KEY, "TIDINGS_REDIS_URL": f"redis://127.0.0.1:{free_port()}"})
    try:
        t = Tidings(gw.url, API_KEY)
        with pytest.raises(tidings.TokensDisabled) as td:
            t.mint_token("alice")
        assert td.value.status == 404
        with pytest.raises(tidings.Unavailable) as un:
            t.publish("/app/broadcast", 1)
        assert un.value.code == "broker_unavailable" and un.value.retryable
        assert un.value.retry_after == 1.0
        assert not t.ready()
    finally:
        gw.stop()


def test_redis_unreachable_is_connection_failed() -> None:
    t = Tidings(redis_url=f"redis://127.0.0.1:{free_port()}", timeout=2)
    with pytest.raises(tidings.ConnectionFailed):
        t.publish("/app/broadcast", 1)
    with pytest.raises(tidings.ConnectionFailed):
        t.mint_token("alice")


def test_configuration_errors() -> None:
    with pytest.raises(tidings.ConfigurationError):
        Tidings()
    with pytest.raises(tidings.ConfigurationError):
        Tidings("127.0.0.1:8080")
    with pytest.raises(tidings.ConfigurationError):
        tidings.Channels(user="/app/u")


def run_check(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tidings", "check", *args], capture_output=True, text=True, timeout=60
    )


def test_check_command(redis_gateway: Gateway) -> None:
    ok = run_check("--gateway", redis_gateway.url, "--api-key", API_KEY)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "[ok] /readyz: ready" in ok.stdout
    assert "the API key is accepted" in ok.stdout
    assert "one-time tokens are enabled" in ok.stdout

    wrong = run_check("--gateway", redis_gateway.url, "--api-key", "wrong-key-0123456789")
    assert wrong.returncode == 1
    assert "the API key is refused" in wrong.stdout

    gone = run_check("--gateway", f"http://127.0.0.1:{free_port()}")
    assert gone.returncode == 1
    assert "not reachable" in gone.stdout


def test_check_command_sees_an_unready_gateway() -> None:
    gw = Gateway({"TIDINGS_API_KEY": API_KEY, "TIDINGS_REDIS_URL": f"redis://127.0.0.1:{free_port()}"})
    try:
        r = run_check("--gateway", gw.url, "--api-key", API_KEY)
        assert r.returncode == 1
        assert "/readyz answered 503" in r.stdout
        assert "one-time tokens are disabled" in r.stdout
    finally:
        gw.stop()


def test_redis_publish_with_history(redis_server: RedisServer) -> None:
    import redis

    from conftest import ROOT

    t = Tidings(redis_url=redis_server.url)
    h = tidings.History(size=2, ttl_secs=60)
    # Without the gateway's function library: a clear configuration error.
    with pytest.raises(tidings.ConfigurationError, match="function library"):
        t.publish_to_user(42, {"n": 0}, history=h)

    # The library as a gateway with history loads it (crates/tidings-history).
    lua = (ROOT / "crates/tidings-history/src/tidings.lua").read_text()
    r = redis.Redis.from_url(redis_server.url)
    r.function_load(lua.replace("__TIDINGS_PREFIX__", "tidings:history:"), replace=True)
    sub = r.pubsub()
    sub.subscribe("/app/user/42/notifications")
    assert sub.get_message(timeout=10)["type"] == "subscribe"

    first = t.publish_to_user(42, {"n": 1}, history=h)
    assert first is not None and first.offset == 1
    second = asyncio.run(AsyncTidings(redis_url=redis_server.url).publish_to_user(42, {"n": 2}, history=h))
    assert second == tidings.Position(2, first.epoch)
    assert t.publish_to_user(42, {"n": 3}) is None  # plain PUBLISH: live only

    got = [sub.get_message(timeout=10)["data"] for _ in range(3)]
    assert got == [
        f"\0th1 1 {first.epoch}\n".encode() + b'{"n":1}',
        f"\0th1 2 {first.epoch}\n".encode() + b'{"n":2}',
        b'{"n":3}',
    ]
    stream = r.xrange("tidings:history:{/app/user/42/notifications}:stream")
    assert [(i, f[b"d"]) for i, f in stream] == [(b"1-0", b'{"n":1}'), (b"2-0", b'{"n":2}')]

    with pytest.raises(tidings.ConfigurationError, match="Redis"):
        Tidings("http://127.0.0.1:9").publish("/app/x", 1, history=h)
    with pytest.raises(ValueError):
        t.publish("/app/x", 1, history=tidings.History(size=0, ttl_secs=60))
    sub.close()
    r.close()
    t.close()


def test_answers_the_gateway_itself_never_sends() -> None:
    # A proxy in front of the gateway may answer 429 or 502 with any body.
    from tidings.errors import error_for

    e = error_for(429, b"<html>slow down</html>", {"retry-after": "7"})
    assert isinstance(e, tidings.RateLimited) and e.retryable and e.retry_after == 7.0
    assert e.code is None and "slow down" in e.message
    bad_gateway = error_for(502, b"", {})
    assert isinstance(bad_gateway, tidings.Unavailable) and bad_gateway.message == "HTTP 502"
    assert type(error_for(418, b"{}", {})) is tidings.GatewayError


SHARDED_RULES = """
[[routing.rules]]
channel = "/app/user/{user}/notifications"
join = true
sharded = true

[[routing.rules]]
channel = "/app/kept/{user}"
join = true
sharded = true
history = { size = 10, ttl_secs = 60 }
"""


def test_redis_publish_sharded(redis_server: RedisServer, sockets: list[Socket]) -> None:
    """Channels whose rule says `sharded = true` are SSUBSCRIBEd by the gateway:
    `sharded=True` publishes with SPUBLISH (and the history step with its
    `sharded` argument); a plain PUBLISH is another namespace and reaches nobody."""
    gw = Gateway(_gateway_env(redis_server.url), SHARDED_RULES)
    t = Tidings(redis_url=redis_server.url)
    try:
        gw.wait_ready()
        s = open_with_token(gw, t.mint_token("7").token, sockets)
        assert set(s.welcome["channels"]) == {"/app/user/7/notifications", "/app/kept/7"}

        t.publish_to_user(7, {"n": 0})  # PUBLISH: not heard by SSUBSCRIBE
        t.publish_to_user(7, {"n": 1}, sharded=True)
        assert s.next() == message("/app/user/7/notifications", {"n": 1})
        asyncio.run(AsyncTidings(redis_url=redis_server.url).publish_to_user(7, {"n": 2}, sharded=True))
        assert s.next() == message("/app/user/7/notifications", {"n": 2})

        h = tidings.History(size=10, ttl_secs=60)
        assert h.args(sharded=True) == [10, 60, 86_400, "sharded"]
        assert tidings.History(size=1, ttl_secs=5, meta_ttl_secs=9).args(sharded=True) == [1, 5, 9, "sharded"]
        pos = t.publish("/app/kept/7", {"n": 3}, history=h, sharded=True)
        assert pos is not None and pos.offset == 1
        frame = s.next()
        assert frame["channel"] == "/app/kept/7" and frame["data"] == {"n": 3}, frame
        assert (frame["offset"], frame["epoch"]) == (pos.offset, pos.epoch)
    finally:
        t.close()
        gw.stop()
