"""Exceptions: one class per answer of the gateway's HTTP API (docs/protocol.md, "HTTP API").

Every error the package raises is a :class:`TidingsError`. An answer of the
gateway is a :class:`GatewayError` with the HTTP ``status``, the gateway's
``code`` (the ``error`` field of its JSON body, such as ``"unauthorized"``)
and its ``message``; the subclass says what to do about it.
"""

from __future__ import annotations

from typing import Any


class TidingsError(Exception):
    """Anything that went wrong talking to the gateway or to Redis."""


class ConfigurationError(TidingsError):
    """The client was set up wrongly (no URL, no Redis URL, a bad template...)."""


class InvalidValue(TidingsError, ValueError):
    """A user id or group name that the gateway's routing would never put in a
    channel (``/``, ``..``, glob characters, control characters, empty, more
    than 128 bytes): publishing to it could reach nobody, or somebody else."""


class ConnectionFailed(TidingsError):
    """The gateway (or Redis) could not be reached, or did not answer in time.
    Retrying later may work; after a timeout the message may have been published."""


class GatewayError(TidingsError):
    """The gateway answered with an error status."""

    #: Whether the same request may succeed later.
    retryable: bool = False

    def __init__(
        self,
        status: int,
        code: str | None,
        message: str,
        retry_after: float | None = None,
    ) -> None:
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after
        super().__init__(f"{status} {code or 'error'}: {message}")


class BadRequest(GatewayError):
    """400: ``bad_json``, ``bad_body``, ``bad_request`` (the request is malformed)."""


class InvalidChannel(BadRequest, InvalidValue):
    """400 ``invalid_channel``: not a valid channel name (glob characters, too long...)."""


class Unauthorized(GatewayError):
    """401 ``unauthorized``: missing or wrong API key (``Authorization: Bearer``),
    or no ``api_key`` configured on the gateway and the request is not local."""


class Forbidden(GatewayError):
    """403 ``forbidden``: the broker refused the channel (a Redis ACL). Do not retry."""


class NotFound(GatewayError):
    """404: the endpoint does not exist (an older gateway, a wrong URL)."""


class TokensDisabled(NotFound):
    """404 ``tokens_disabled``: the gateway's ``identity.resolvers`` does not list ``"token"``."""


class RequestTimeout(GatewayError):
    """408 ``body_timeout``: the body did not arrive in time."""

    retryable = True


class PayloadTooLarge(GatewayError):
    """413 ``too_large``: the body is over the gateway's ``api.max_body_bytes``."""


class UnsupportedMediaType(GatewayError):
    """415 ``unsupported_media_type`` (never sent by this package)."""


class RateLimited(GatewayError):
    """429: too many requests (a proxy in front of the gateway). Retry after ``retry_after``."""

    retryable = True


class Unavailable(GatewayError):
    """503 ``broker_unavailable`` / ``store_unavailable``: Redis is down or slow.
    Retry after ``retry_after`` seconds (after a timeout a publish may still
    have gone through)."""

    retryable = True


_BY_STATUS: dict[int, type[GatewayError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    408: RequestTimeout,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
    429: RateLimited,
    502: Unavailable,
    503: Unavailable,
    504: Unavailable,
}


def error_for(status: int, body: bytes, headers: dict[str, str]) -> GatewayError:
    """The exception for a non-2xx answer of the gateway."""
    import json

    code: str | None = None
    message = body.decode("utf-8", "replace").strip() or f"HTTP {status}"
    try:
        parsed: Any = json.loads(body)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        if isinstance(parsed.get("error"), str):
            code = parsed["error"]
        if isinstance(parsed.get("message"), str):
            message = parsed["message"]
    retry_after: float | None = None
    raw = headers.get("retry-after")
    if raw is not None:
        try:
            retry_after = float(raw)
        except ValueError:
            retry_after = None
    cls: type[GatewayError]
    if code == "invalid_channel":
        cls = InvalidChannel
    elif code == "tokens_disabled":
        cls = TokensDisabled
    else:
        cls = _BY_STATUS.get(status, GatewayError)
        if cls is GatewayError and status >= 500:
            cls = Unavailable
    return cls(status, code, message, retry_after)
