"""Server-side client for the Tidings real-time gateway.

Publish to a channel, a user, a group or everyone, and mint one-time
WebSocket tokens, through the gateway's HTTP API (standard library only) or
through Redis (``pip install "tidings[redis]"``); blocking (:class:`Tidings`)
or asyncio (:class:`AsyncTidings`). Django: :mod:`tidings.contrib.django`.
"""

from .channels import BROADCAST, DEFAULT_CHANNELS, GROUP, USER, Channels
from .client import DEFAULT_TOKEN_PREFIX, AsyncTidings, History, Position, Tidings, Token
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
    "ConnectionFailed",
    "DEFAULT_CHANNELS",
    "DEFAULT_TOKEN_PREFIX",
    "Forbidden",
    "GROUP",
    "GatewayError",
    "History",
    "InvalidChannel",
    "InvalidValue",
    "NotFound",
    "PayloadTooLarge",
    "Position",
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
