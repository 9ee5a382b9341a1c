"""Server-side client for the Tidings real-time gateway.

Publish to a channel, a user, a group or everyone, mint one-time
WebSocket tokens, and act on users' sockets (disconnect, subscribe,
unsubscribe, refresh; list their connections and a channel's presence), through the gateway's HTTP API (standard library only) or
through Redis (``pip install "tidings[redis]"``); blocking (:class:`Tidings`)
or asyncio (:class:`AsyncTidings`). Django: :mod:`tidings.contrib.django`.
"""

from .channels import BROADCAST, DEFAULT_CHANNELS, GROUP, USER, Channels
from .client import DEFAULT_TOKEN_PREFIX, AsyncTidings, History, Position, Tidings, Token
from .control import DEFAULT_CONTROL_CHANNEL, REVOKED, Connection, Connections, Member, Presence
from .errors import (
    BadRequest,
    ConfigurationError,
    ConnectionFailed,
    Forbidden,
    GatewayError,
    InvalidChannel,
    InvalidValue,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    RequestTimeout,
    TidingsError,
    TokensDisabled,
    Unauthorized,
    Unavailable,
    UnsupportedMediaType,
)

__version__ = "0.1.0"

__all__ = [
    "AsyncTidings",
    "BROADCAST",
    "BadRequest",
    "Channels",
    "ConfigurationError",
    "Connection",
    "ConnectionFailed",
    "Connections",
    "DEFAULT_CHANNELS",
    "DEFAULT_CONTROL_CHANNEL",
    "DEFAULT_TOKEN_PREFIX",
    "Forbidden",
    "GROUP",
    "GatewayError",
    "History",
    "InvalidChannel",
    "InvalidValue",
    "Member",
    "NotFound",
    "PayloadTooLarge",
    "Position",
    "Presence",
    "REVOKED",
    "RateLimited",
    "RequestTimeout",
    "Tidings",
    "TidingsError",
    "Token",
    "TokensDisabled",
    "USER",
    "Unauthorized",
    "Unavailable",
    "UnsupportedMediaType",
]
