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
"""

from __future__ import annotations

import threading
from typing import Any

from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver
from django.utils.module_loading import import_string

from ...channels import Channels
from ...client import DEFAULT_TOKEN_PREFIX, Tidings
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
