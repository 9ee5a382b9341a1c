"""``settings.TIDINGS`` and the shared client made from it.

Keys:

- ``URL``: the gateway's base URL as Django reaches it (``http://127.0.0.1:8080``);
  publishing and tokens go through its HTTP API unless ``REDIS_URL`` is set.
- ``API_KEY``: the gateway's ``TIDINGS_API_KEY`` (optional for a gateway on
  the same machine with ``api.allow_local_without_key``).
- ``REDIS_URL``: publish and store tokens in this Redis instead (the
  gateway's ``TIDINGS_REDIS_URL``); needs ``pip install "tidings[redis]"``.
- ``TOKEN_PREFIX`` (``tidings:token:``), ``TOKEN_TTL`` (5 seconds).
- ``WHOAMI_URL``: the gateway's ``identity.cookie_proxy.url``, for the
  system checks (default ``http://127.0.0.1:8000/tidings/whoami/``).
- ``IDENTITY``: dotted path of ``f(user) -> dict``, the identity whoami and
  tokens carry (default: ``{"user": str(pk), "groups": [names]}``).
- ``CHANNELS``: ``{"user": ..., "group": ..., "broadcast": ...}`` templates
  when the gateway's routing rules differ from the defaults.
- ``TIMEOUT``: seconds (5).
- ``HISTORY``: with ``REDIS_URL``, which kinds of channel publish with
  history (``FCALL tidings_publish``) so that reconnecting clients recover
  what they missed: ``{"user": {"size": 100, "ttl_secs": 600}}`` by default,
  as the gateway's default routing rules keep for user notifications; keys
  ``user``, ``group``, ``broadcast``; ``{}`` publishes everything plainly.
  Through the HTTP API (``URL`` only) the gateway applies its rules itself.
"""

from __future__ import annotations

import threading
from typing import Any

from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver
from django.utils.module_loading import import_string

from ...channels import Channels
from ...client import DEFAULT_TOKEN_PREFIX, History, Tidings
from ...errors import ConfigurationError

DEFAULT_WHOAMI_URL = "http://127.0.0.1:8000/tidings/whoami/"

_lock = threading.Lock()
_client: Tidings | None = None


def settings_dict() -> dict[str, Any]:
    """``settings.TIDINGS`` (an empty dict when unset)."""
    value = getattr(settings, "TIDINGS", None)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigurationError("settings.TIDINGS must be a dict")
    return value


def client() -> Tidings:
    """The client made from ``settings.TIDINGS``, made once (again after the setting changes)."""
    global _client
    with _lock:
        if _client is None:
            s = settings_dict()
            if not s.get("URL") and not s.get("REDIS_URL"):
                raise ConfigurationError(
                    'settings.TIDINGS needs "URL" (the gateway, http://127.0.0.1:8080) or "REDIS_URL"'
                )
            _client = Tidings(
                s.get("URL"),
                s.get("API_KEY"),
                redis_url=s.get("REDIS_URL"),
                token_prefix=s.get("TOKEN_PREFIX", DEFAULT_TOKEN_PREFIX),
                channels=Channels(**s.get("CHANNELS", {})),
                timeout=float(s.get("TIMEOUT", 5.0)),
            )
        return _client


DEFAULT_HISTORY: dict[str, dict[str, int]] = {"user": {"size": 100, "ttl_secs": 600}}


def history_for(kind: str) -> History | None:
    """The ``History`` the ``HISTORY`` setting gives channels of ``kind``
    (``user``, ``group``, ``broadcast``), on the Redis path only."""
    s = settings_dict()
    if not s.get("REDIS_URL"):
        return None
    table = s.get("HISTORY", DEFAULT_HISTORY)
    if not isinstance(table, dict):
        raise ConfigurationError('settings.TIDINGS["HISTORY"] must be a dict')
    entry = table.get(kind)
    if entry is None:
        return None
    if not isinstance(entry, dict) or set(entry) - {"size", "ttl_secs", "meta_ttl_secs"}:
        raise ConfigurationError(
            f'settings.TIDINGS["HISTORY"]["{kind}"] must be {{"size": N, "ttl_secs": S}}'
        )
    try:
        return History(int(entry["size"]), int(entry["ttl_secs"]), entry.get("meta_ttl_secs"))
    except KeyError as e:
        raise ConfigurationError(f'settings.TIDINGS["HISTORY"]["{kind}"] needs {e}') from e


@receiver(setting_changed)
def _reset(setting: str, **kwargs: Any) -> None:
    global _client
    if setting == "TIDINGS":
        with _lock:
            if _client is not None:
                _client.close()
            _client = None


def default_identity(user: Any) -> dict[str, Any]:
    """``{"user": str(user.pk), "groups": [sorted group names]}``."""
    return {"user": str(user.pk), "groups": sorted(user.groups.values_list("name", flat=True))}


def identity_for(user: Any) -> dict[str, Any]:
    """The identity of a logged-in user, through ``TIDINGS["IDENTITY"]`` if set."""
    path = settings_dict().get("IDENTITY")
    fn = import_string(path) if path else default_identity
    return dict(fn(user))
