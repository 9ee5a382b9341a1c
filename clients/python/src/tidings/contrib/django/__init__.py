"""Tidings for Django: the whoami and token views, publishing helpers, and
system checks. The three lines a project adds:

.. code-block:: python

    # settings.py
    INSTALLED_APPS = [..., "tidings.contrib.django"]
    TIDINGS = {"URL": "http://127.0.0.1:8080", "API_KEY": os.environ["TIDINGS_API_KEY"]}

    # urls.py  (from django.urls import include, path)
    path("tidings/", include("tidings.contrib.django.urls")),

Then, anywhere in the app::

    from tidings.contrib.django import publish_to_user
    publish_to_user(request.user, {"title": "Report ready"})

See docs/clients.md.
"""

from __future__ import annotations

from typing import Any

from ...client import History, Position
from .conf import client, history_for, identity_for


def publish(
    channel: str, data: Any, *, history: History | None = None, sharded: bool = False
) -> Position | None:
    """Publishes ``data`` (any JSON value) on ``channel``. ``history``: see
    :class:`tidings.History` (with ``REDIS_URL`` only). ``sharded``: the
    channel's routing rule is sharded (``SPUBLISH`` with ``REDIS_URL``)."""
    return client().publish(channel, data, history=history, sharded=sharded)


def publish_to_user(
    user: Any, data: Any, *, history: History | None = None, sharded: bool = False
) -> Position | None:
    """To every socket of ``user`` (a user object, or its pk). With
    ``REDIS_URL``, with the history the ``HISTORY`` setting gives user
    channels (by default the gateway's: 100 for 600 s), so a reconnecting
    browser recovers it."""
    return client().publish_to_user(user, data, history=history or history_for("user"), sharded=sharded)


def publish_to_group(
    group: Any, data: Any, *, history: History | None = None, sharded: bool = False
) -> Position | None:
    """To every socket of the group (a ``Group`` or its name); the gateway
    needs the ``/app/group/{group}`` routing rule (docs/routing.md)."""
    return client().publish_to_group(group, data, history=history or history_for("group"), sharded=sharded)


def broadcast(data: Any, *, history: History | None = None) -> Position | None:
    """To every socket, anonymous visitors included."""
    return client().broadcast(data, history=history or history_for("broadcast"))


def mint_token(user: Any, ttl_secs: float | None = None) -> str:
    """A one-time token for this user's identity (what the token view returns)."""
    from .conf import settings_dict

    ttl = ttl_secs if ttl_secs is not None else float(settings_dict().get("TOKEN_TTL", 5))
    return client().mint_token(identity_for(user), ttl).token


__all__ = ["broadcast", "client", "identity_for", "mint_token", "publish", "publish_to_group", "publish_to_user"]
