"""The clients: :class:`Tidings` (blocking) and :class:`AsyncTidings` (asyncio).

Two ways to reach the gateway, chosen when the client is made:

- ``Tidings(url, api_key)``: the gateway's HTTP API, ``POST /api/publish``
  and ``POST /api/tokens`` with ``Authorization: Bearer <api_key>``. Needs
  nothing beyond the standard library. Errors are the gateway's documented
  answers, as exceptions (:mod:`tidings.errors`).
- ``Tidings(redis_url=...)``: Redis itself (``PUBLISH`` on the channel, or
  ``SPUBLISH`` with ``sharded=True`` for channels whose routing rule says
  ``sharded = true``; and
  ``SET <prefix><token> <identity JSON> PX <ttl>`` for tokens), with redis-py
  (``pip install "tidings[redis]"``). The gateway must use the same Redis
  (``TIDINGS_REDIS_URL``) and, for tokens, the same prefix
  (``identity.token.prefix``, ``tidings:token:`` by default).

With both, Redis is used for publishing and tokens; ``url`` serves
:meth:`Tidings.ready` and the check command.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import ssl
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from . import _http
from . import control as _control
from .control import DEFAULT_CONTROL_CHANNEL, Connections, Presence
from .channels import DEFAULT_CHANNELS, Channels
from .errors import ConfigurationError, ConnectionFailed, TidingsError, error_for

#: The gateway's default ``identity.token.prefix``.
DEFAULT_TOKEN_PREFIX = "tidings:token:"

#: How long a channel's history keeps its epoch and offset after the last
#: publication, unless ``History.meta_ttl_secs`` says otherwise (one day).
DEFAULT_META_TTL_SECS = 86_400

Identity = Mapping[str, Any]


@dataclass(frozen=True)
class History:
    """Publish through Redis with the channel's history (issue 12's atomic step,
    ``FCALL tidings_publish``): the message gets the next offset and is kept
    for clients that reconnect with their position. Use the size and TTL of
    the gateway's routing rule for that channel. Needs Redis 7.0+ with the
    ``tidings`` function library loaded (a gateway with history loads it)."""

    size: int
    ttl_secs: int
    meta_ttl_secs: int | None = None

    def args(self, sharded: bool = False) -> list[int | str]:
        """The size and TTL arguments of ``FCALL tidings_publish`` (then the
        word ``sharded`` for a sharded channel, whose live message goes out
        with ``SPUBLISH``)."""
        for name, v in (("size", self.size), ("ttl_secs", self.ttl_secs), ("meta_ttl_secs", self.meta_ttl_secs)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"History.{name} must be a positive integer")
        out: list[int | str] = [self.size, self.ttl_secs]
        if self.meta_ttl_secs is not None:
            out.append(self.meta_ttl_secs)
        elif sharded:
            # Positional: the default the gateway uses (a day, or the TTL).
            out.append(max(self.ttl_secs, DEFAULT_META_TTL_SECS))
        if sharded:
            out.append("sharded")
        return out


@dataclass(frozen=True)
class Position:
    """Where a publication with history went: its offset in the channel's epoch."""

    offset: int
    epoch: str


def _position(reply: Any) -> Position:
    offset, epoch = reply
    return Position(int(offset), epoch.decode() if isinstance(epoch, bytes) else str(epoch))


def _function_missing(e: Exception) -> bool:
    text = str(e)
    return "Function not found" in text or "No matching library" in text


def _verb(sharded: bool) -> str:
    return "SPUBLISH" if sharded else "PUBLISH"


def _redis_error(what: str, e: Exception) -> TidingsError:
    text = str(e)
    if "Function not found" in text or "No matching library" in text:
        return ConfigurationError(
            "the tidings function library is not loaded in this Redis (a gateway with history "
            "loads it; see crates/tidings-history): " + text
        )
    if type(e).__name__ == "ResponseError":
        return TidingsError(f"{what}: Redis answered {text}")
    return ConnectionFailed(f"{what} through Redis: {text}")


@dataclass(frozen=True)
class Token:
    """A one-time token: open ``/ws?token=<token>`` within ``expires_in`` seconds."""

    token: str
    expires_in: float

    def __str__(self) -> str:
        return self.token


def identity_of(who: Identity | str | int) -> dict[str, Any]:
    """The identity JSON for a token: a mapping as is, a bare id as ``{"user": id}``."""
    if isinstance(who, Mapping):
        return dict(who)
    if isinstance(who, bool) or not isinstance(who, (str, int)):
        raise TypeError(f"an identity is a mapping or a user id, not {type(who).__name__}")
    return {"user": str(who)}


def _encode(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


class _Base:
    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        redis_url: str | None = None,
        token_prefix: str = DEFAULT_TOKEN_PREFIX,
        channels: Channels = DEFAULT_CHANNELS,
        timeout: float = 5.0,
        ssl_context: ssl.SSLContext | None = None,
        control_channel: str = DEFAULT_CONTROL_CHANNEL,
    ) -> None:
        if not url and not redis_url:
            raise ConfigurationError(
                "give the gateway's URL (url='http://127.0.0.1:8080') or a Redis URL (redis_url=...)"
            )
        if url and not url.startswith(("http://", "https://")):
            raise ConfigurationError(f"the gateway URL must start with http:// or https://: {url!r}")
        self.url = url.rstrip("/") if url else None
        self.api_key = api_key
        self.redis_url = redis_url
        self.token_prefix = token_prefix
        self.channels = channels
        self.timeout = timeout
        self.ssl_context = ssl_context
        self.control_channel = control_channel

    @staticmethod
    def _no_history_over_http(history: History | None) -> None:
        if history is not None:
            raise ConfigurationError(
                "history= applies to publishing through Redis (redis_url=...); the gateway's "
                "HTTP API applies its routing rules' history itself"
            )

    def _require_url(self) -> str:
        if not self.url:
            raise ConfigurationError("this needs the gateway's URL (url=...)")
        return self.url

    def _headers(self) -> dict[str, str]:
        h = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            h["Authorization"] = f"Bearer {self.api_key}"
        return h

    @staticmethod
    def _check(answer: _http.Answer, ok: int) -> Any:
        status, headers, body = answer
        if status != ok:
            raise error_for(status, body, headers)
        try:
            return json.loads(body) if body else None
        except ValueError as e:
            raise TidingsError(f"the gateway answered {status} with a body that is not JSON") from e

    def _token_request(self, who: Identity | str | int, ttl_secs: float) -> bytes:
        if ttl_secs <= 0:
            raise ValueError("ttl_secs must be positive")
        return _encode({"identity": identity_of(who), "ttl_secs": ttl_secs})

    def _new_token(self, who: Identity | str | int, ttl_secs: float) -> tuple[str, str, int]:
        if ttl_secs <= 0:
            raise ValueError("ttl_secs must be positive")
        token = secrets.token_hex(32)
        value = json.dumps(identity_of(who), separators=(",", ":"))
        return self.token_prefix + token, value, max(1, int(ttl_secs * 1000))

    def _get_path(self, path: str, query: dict[str, str]) -> str:
        return self._require_url() + path + "?" + urlencode(query)

    @staticmethod
    def _command_over_http(body: dict[str, Any]) -> tuple[str, bytes]:
        """A command's path and body for ``POST /api/<op>``."""
        body = dict(body)
        return f"/api/{body.pop('op')}", _control.encode(body)

    def _connections_url(self, user: object) -> str:
        return self._get_path("/api/connections", {"user": _control.user_id(user)})

    def _presence_url(self, channel: str) -> str:
        return self._get_path("/api/presence", {"channel": channel})

    def _redis_module(self) -> Any:
        try:
            import redis  # noqa: F401
        except ImportError as e:
            raise ConfigurationError(
                'publishing through Redis needs redis-py: pip install "tidings[redis]"'
            ) from e
        return redis


class Tidings(_Base):
    """A blocking client. Thread-safe; make one and share it.

    >>> t = Tidings("http://127.0.0.1:8080", api_key="...")   # doctest: +SKIP
    >>> t.publish_to_user(42, {"title": "Report ready"})        # doctest: +SKIP
    """

    _redis: Any = None
    _redis_lock = threading.Lock()

    def _redis_client(self) -> Any:
        with self._redis_lock:
            if self._redis is None:
                self._redis = self._redis_module().Redis.from_url(
                    self.redis_url, socket_timeout=self.timeout, socket_connect_timeout=self.timeout
                )
            return self._redis

    def _post(self, path: str, body: bytes) -> _http.Answer:
        return _http.request_sync(
            "POST", self._require_url() + path, self._headers(), body, self.timeout, self.ssl_context
        )

    def publish(
        self, channel: str, data: Any, *, history: History | None = None, sharded: bool = False
    ) -> Position | None:
        """Publishes ``data`` (any JSON value) on ``channel``; every socket
        listening to it receives ``{"type": "message", "channel": ..., "data": data}``.
        With ``history`` (Redis only), through the history step; returns its position.
        ``sharded=True``: the channel's routing rule says ``sharded = true``, so
        through Redis it goes out with ``SPUBLISH`` (a plain ``PUBLISH`` would
        not reach the gateway's ``SSUBSCRIBE``). Over the HTTP API the gateway
        applies its rules itself and ``sharded`` changes nothing."""
        if self.redis_url:
            # On Redis the payload is the data's JSON text itself.
            try:
                if history is not None:
                    deadline = time.monotonic() + self.timeout
                    while True:
                        try:
                            return _position(
                                self._redis_client().fcall(
                                    "tidings_publish", 1, channel, _encode(data), *history.args(sharded)
                                )
                            )
                        except Exception as e:
                            # A Redis restarted without persistence has lost the
                            # library until the gateway reconnects and loads it.
                            if not _function_missing(e) or time.monotonic() >= deadline:
                                raise
                            time.sleep(0.05)
                self._redis_client().execute_command(_verb(sharded), channel, _encode(data))
            except ValueError:
                raise
            except Exception as e:  # redis.exceptions.RedisError, OSError
                raise _redis_error(_verb(sharded), e) from e
            return None
        self._no_history_over_http(history)
        body = _encode({"channel": channel, "data": data})
        self._check(self._post("/api/publish", body), 202)
        return None

    def publish_to_user(
        self, user: object, data: Any, *, history: History | None = None, sharded: bool = False
    ) -> Position | None:
        """To every socket of one user (a user id, or an object with ``pk``)."""
        return self.publish(self.channels.for_user(user), data, history=history, sharded=sharded)

    def publish_to_group(
        self, group: object, data: Any, *, history: History | None = None, sharded: bool = False
    ) -> Position | None:
        """To every socket whose identity lists this group (needs the group rule)."""
        return self.publish(self.channels.for_group(group), data, history=history, sharded=sharded)

    def broadcast(self, data: Any, *, history: History | None = None) -> Position | None:
        """To every socket, anonymous visitors included."""
        return self.publish(self.channels.broadcast, data, history=history)

    def mint_token(self, who: Identity | str | int, ttl_secs: float = 5) -> Token:
        """A one-time token for this identity (a mapping with ``user``,
        ``groups``...; or a bare user id)."""
        if self.redis_url:
            key, value, ms = self._new_token(who, ttl_secs)
            try:
                self._redis_client().set(key, value, px=ms)
            except Exception as e:
                raise _redis_error("SET", e) from e
            return Token(key[len(self.token_prefix):], ms / 1000)
        answer = self._check(self._post("/api/tokens", self._token_request(who, ttl_secs)), 201)
        return Token(str(answer["token"]), float(answer["expires_in"]))

    # -- the backend in control (docs/control.md) -------------------------

    def _command(self, body: dict[str, Any]) -> None:
        if self.redis_url:
            try:
                self._redis_client().publish(self.control_channel, _control.encode(body))
            except Exception as e:
                raise _redis_error("PUBLISH", e) from e
            return
        self._check(self._post(*self._command_over_http(body)), 202)

    def disconnect(
        self,
        *,
        user: object | None = None,
        conn: str | None = None,
        code: int | None = None,
        reason: str | None = None,
    ) -> None:
        """Closes every socket of ``user`` (on every gateway), or the one
        connection ``conn``, with ``code`` (4001 when not given: the client
        may reconnect; :data:`tidings.control.REVOKED`, 4003: it must not;
        4100-4999 your own) and ``reason``."""
        self._command(_control.command("disconnect", user, conn, code=code, reason=reason))

    def subscribe(self, channel: str, *, user: object | None = None, conn: str | None = None) -> None:
        """Subscribes the sockets of ``user`` (or ``conn``) to ``channel``,
        whatever the routing rules would let them ask for."""
        self._command(_control.command("subscribe", user, conn, channel=channel))

    def unsubscribe(self, channel: str, *, user: object | None = None, conn: str | None = None) -> None:
        """Unsubscribes the sockets of ``user`` (or ``conn``) from ``channel``."""
        self._command(_control.command("unsubscribe", user, conn, channel=channel))

    def refresh(self, *, user: object | None = None, conn: str | None = None) -> None:
        """Makes the gateways resolve the identity of ``user`` (or ``conn``)
        again: its cached answer is forgotten and its sockets reconnect (after
        a change of groups, or a logout elsewhere)."""
        self._command(_control.command("refresh", user, conn))

    def connections(self, user: object) -> Connections:
        """The sockets of ``user`` on every gateway (HTTP API only: the gateway
        asks the others)."""
        answer = _http.request_sync(
            "GET", self._connections_url(user), self._headers(), None, self.timeout, self.ssl_context
        )
        return _control.parse_connections(self._check(answer, 200))

    def presence(self, channel: str) -> Presence:
        """Who is on ``channel`` (its routing rule must keep presence; HTTP API
        only)."""
        answer = _http.request_sync(
            "GET", self._presence_url(channel), self._headers(), None, self.timeout, self.ssl_context
        )
        return _control.parse_presence(self._check(answer, 200))

    def ready(self) -> bool:
        """Whether the gateway's ``/readyz`` answers 200 (its broker is connected)."""
        status, _, _ = _http.request_sync(
            "GET", self._require_url() + "/readyz", {}, None, self.timeout, self.ssl_context
        )
        return status == 200

    def close(self) -> None:
        """Closes the Redis connections, if any."""
        if self._redis is not None:
            self._redis.close()
            self._redis = None

    def __enter__(self) -> Tidings:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncTidings(_Base):
    """The asyncio client: the same methods as :class:`Tidings`, awaited.
    Speaks HTTP/1.1 over asyncio streams (https through ``ssl``), or uses
    ``redis.asyncio`` with ``redis_url``."""

    _redis: Any = None

    def _redis_client(self) -> Any:
        if self._redis is None:
            mod = self._redis_module()
            self._redis = mod.asyncio.Redis.from_url(
                self.redis_url, socket_timeout=self.timeout, socket_connect_timeout=self.timeout
            )
        return self._redis

    async def _post(self, path: str, body: bytes) -> _http.Answer:
        return await _http.request_async(
            "POST", self._require_url() + path, self._headers(), body, self.timeout, self.ssl_context
        )

    async def publish(
        self, channel: str, data: Any, *, history: History | None = None, sharded: bool = False
    ) -> Position | None:
        """See :meth:`Tidings.publish`."""
        if self.redis_url:
            try:
                if history is not None:
                    deadline = time.monotonic() + self.timeout
                    while True:
                        try:
                            return _position(
                                await self._redis_client().fcall(
                                    "tidings_publish", 1, channel, _encode(data), *history.args(sharded)
                                )
                            )
                        except Exception as e:
                            if not _function_missing(e) or time.monotonic() >= deadline:
                                raise
                            await asyncio.sleep(0.05)
                await self._redis_client().execute_command(_verb(sharded), channel, _encode(data))
            except ValueError:
                raise
            except Exception as e:
                raise _redis_error(_verb(sharded), e) from e
            return None
        self._no_history_over_http(history)
        body = _encode({"channel": channel, "data": data})
        self._check(await self._post("/api/publish", body), 202)
        return None

    async def publish_to_user(
        self, user: object, data: Any, *, history: History | None = None, sharded: bool = False
    ) -> Position | None:
        """See :meth:`Tidings.publish_to_user`."""
        return await self.publish(self.channels.for_user(user), data, history=history, sharded=sharded)

    async def publish_to_group(
        self, group: object, data: Any, *, history: History | None = None, sharded: bool = False
    ) -> Position | None:
        """See :meth:`Tidings.publish_to_group`."""
        return await self.publish(self.channels.for_group(group), data, history=history, sharded=sharded)

    async def broadcast(self, data: Any, *, history: History | None = None) -> Position | None:
        """See :meth:`Tidings.broadcast`."""
        return await self.publish(self.channels.broadcast, data, history=history)

    async def mint_token(self, who: Identity | str | int, ttl_secs: float = 5) -> Token:
        """See :meth:`Tidings.mint_token`."""
        if self.redis_url:
            key, value, ms = self._new_token(who, ttl_secs)
            try:
                await self._redis_client().set(key, value, px=ms)
            except Exception as e:
                raise _redis_error("SET", e) from e
            return Token(key[len(self.token_prefix):], ms / 1000)
        answer = self._check(await self._post("/api/tokens", self._token_request(who, ttl_secs)), 201)
        return Token(str(answer["token"]), float(answer["expires_in"]))

    async def _command(self, body: dict[str, Any]) -> None:
        if self.redis_url:
            try:
                await self._redis_client().publish(self.control_channel, _control.encode(body))
            except Exception as e:
                raise _redis_error("PUBLISH", e) from e
            return
        self._check(await self._post(*self._command_over_http(body)), 202)

    async def disconnect(
        self,
        *,
        user: object | None = None,
        conn: str | None = None,
        code: int | None = None,
        reason: str | None = None,
    ) -> None:
        """See :meth:`Tidings.disconnect`."""
        await self._command(_control.command("disconnect", user, conn, code=code, reason=reason))

    async def subscribe(self, channel: str, *, user: object | None = None, conn: str | None = None) -> None:
        """See :meth:`Tidings.subscribe`."""
        await self._command(_control.command("subscribe", user, conn, channel=channel))

    async def unsubscribe(self, channel: str, *, user: object | None = None, conn: str | None = None) -> None:
        """See :meth:`Tidings.unsubscribe`."""
        await self._command(_control.command("unsubscribe", user, conn, channel=channel))

    async def refresh(self, *, user: object | None = None, conn: str | None = None) -> None:
        """See :meth:`Tidings.refresh`."""
        await self._command(_control.command("refresh", user, conn))

    async def connections(self, user: object) -> Connections:
        """See :meth:`Tidings.connections`."""
        answer = await _http.request_async(
            "GET", self._connections_url(user), self._headers(), None, self.timeout, self.ssl_context
        )
        return _control.parse_connections(self._check(answer, 200))

    async def presence(self, channel: str) -> Presence:
        """See :meth:`Tidings.presence`."""
        answer = await _http.request_async(
            "GET", self._presence_url(channel), self._headers(), None, self.timeout, self.ssl_context
        )
        return _control.parse_presence(self._check(answer, 200))

    async def ready(self) -> bool:
        """See :meth:`Tidings.ready`."""
        status, _, _ = await _http.request_async(
            "GET", self._require_url() + "/readyz", {}, None, self.timeout, self.ssl_context
        )
        return status == 200

    async def aclose(self) -> None:
        """Closes the Redis connections, if any."""
        if self._redis is not None:
            close = getattr(self._redis, "aclose", None) or self._redis.close
            await close()
            self._redis = None

    async def __aenter__(self) -> AsyncTidings:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
