"""The backend in control (docs/control.md): commands to the sockets of a user
or of one connection, a user's connections on every gateway, a channel's
presence.

A command is one JSON object. Through the HTTP API it is the body of
``POST /api/<op>``; through Redis it is ``PUBLISH``ed on the control channel
(``tidings:control`` unless the gateway's ``control.channel`` says
otherwise), which every gateway listens to. Listing connections and presence
asks a gateway, so it needs the HTTP API.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from .errors import InvalidValue, TidingsError

DEFAULT_CONTROL_CHANNEL = "tidings:control"

#: Close code of a disconnect meaning "do not reconnect" (a revoked session).
REVOKED = 4003


@dataclass(frozen=True)
class Connection:
    """One socket of a user: its id (as in the socket's ``welcome``), the
    gateway holding it, and when it connected (ms since the Unix epoch)."""

    conn: str
    gateway: str
    since_ms: int


@dataclass(frozen=True)
class Connections:
    """A user's sockets on every gateway that answered.

    ``missing`` names the gateways that did not answer in time (their sockets
    may be absent): a gateway killed without a goodbye stays there until its
    entry in the set of live gateways expires."""

    user: str
    connections: list[Connection]
    gateways: int
    missing: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Member:
    """One socket on a channel with ``presence = "full"``."""

    conn: str
    user: str | None
    info: Any
    gateway: str


@dataclass(frozen=True)
class Presence:
    """Who is on a channel whose routing rule keeps presence. ``members`` is
    ``None`` for ``presence = "counts"``."""

    channel: str
    connections: int
    users: int
    members: list[Member] | None


def user_id(user: object) -> str:
    """A user id as the gateway compares it: the object's ``pk`` if it has
    one, else the value itself, as text."""
    text = str(getattr(user, "pk", user))
    if not text or len(text.encode("utf-8")) > 256 or any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        raise InvalidValue(f"user id {text!r}: a user id is 1 to 256 bytes without control characters")
    return text


def command(op: str, user: object | None, conn: str | None, **fields: Any) -> dict[str, Any]:
    """The command object for ``op`` aimed at ``user`` or ``conn`` (exactly
    one of them), with the other ``fields`` that are not ``None``."""
    if (user is None) == (conn is None):
        raise InvalidValue(f"{op}: name either user= or conn=, not both and not neither")
    body: dict[str, Any] = {"op": op}
    if user is not None:
        body["user"] = user_id(user)
    else:
        body["conn"] = conn
    body.update({k: v for k, v in fields.items() if v is not None})
    return body


def encode(body: dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def parse_connections(answer: Any) -> Connections:
    try:
        return Connections(
            user=str(answer["user"]),
            connections=[
                Connection(conn=str(c["conn"]), gateway=str(c["gateway"]), since_ms=int(c["since_ms"]))
                for c in answer["connections"]
            ],
            gateways=int(answer["gateways"]),
            missing=[str(g) for g in answer.get("missing", [])],
        )
    except (KeyError, TypeError, ValueError) as e:
        raise TidingsError(f"the gateway's connections answer is not as documented: {e!r}") from e


def parse_presence(answer: Any) -> Presence:
    try:
        members = answer.get("members")
        return Presence(
            channel=str(answer["channel"]),
            connections=int(answer["connections"]),
            users=int(answer["users"]),
            members=None
            if members is None
            else [
                Member(
                    conn=str(m["conn"]),
                    user=None if m.get("user") is None else str(m["user"]),
                    info=m.get("info"),
                    gateway=str(m["gateway"]),
                )
                for m in members
            ],
        )
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise TidingsError(f"the gateway's presence answer is not as documented: {e!r}") from e
