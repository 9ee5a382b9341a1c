"""System checks (``manage.py check``, and every ``runserver``): the
mistakes that make every browser's upgrade fail with 503 or 403.

=============  ==========================================================
``E001``       ``settings.TIDINGS`` missing, not a dict, or without ``URL``/``REDIS_URL``
``E002``       ``URL`` is not loopback and there is no ``API_KEY``
``E003``       ``ALLOWED_HOSTS`` refuses the host of the gateway's whoami call
``E004``       ``SECURE_SSL_REDIRECT`` would redirect the (http) whoami call
``E005``       ``REDIS_URL`` without redis-py installed
``W006``       the whoami view is not at ``WHOAMI_URL``'s path (urls.py ``include``)
``W007``       development across two origins: the gateway needs ``websocket.allowed_origins``
=============  ==========================================================

Silence one with ``SILENCED_SYSTEM_CHECKS = ["tidings.W007"]``.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core.checks import CheckMessage, Error, Warning

from .conf import DEFAULT_WHOAMI_URL, settings_dict

THREE_LINES = (
    'INSTALLED_APPS += ["tidings.contrib.django"]; '
    'TIDINGS = {"URL": "http://127.0.0.1:8080", "API_KEY": "..."}; '
    'in urls.py: path("tidings/", include("tidings.contrib.django.urls"))'
)


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _whoami_url(s: dict[str, Any]) -> str:
    return str(s.get("WHOAMI_URL") or DEFAULT_WHOAMI_URL)


def check_settings(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Settings-level checks."""
    out: list[CheckMessage] = []
    raw = getattr(settings, "TIDINGS", None)
    if not isinstance(raw, dict) or not (raw.get("URL") or raw.get("REDIS_URL")):
        out.append(
            Error(
                "settings.TIDINGS is missing or has neither \"URL\" nor \"REDIS_URL\".",
                hint=f"Add the three lines: {THREE_LINES}",
                id="tidings.E001",
            )
        )
        if not isinstance(raw, dict):
            return out
    s = settings_dict()
    url = s.get("URL")
    if url:
        host = urlsplit(url).hostname
        if not s.get("API_KEY") and not s.get("REDIS_URL") and not _is_loopback(host):
            out.append(
                Error(
                    f"TIDINGS[\"URL\"] ({url}) is not on this machine and TIDINGS has no \"API_KEY\".",
                    hint="Without a key the gateway only accepts local callers: set the gateway's "
                    "TIDINGS_API_KEY and the same value as TIDINGS[\"API_KEY\"].",
                    id="tidings.E002",
                )
            )

    whoami = _whoami_url(s)
    parts = urlsplit(whoami)
    host = parts.hostname or ""
    from django.http.request import validate_host

    allowed = list(settings.ALLOWED_HOSTS)
    if settings.DEBUG and not allowed:
        allowed = [".localhost", "127.0.0.1", "[::1]"]
    check_host = f"[{host}]" if ":" in host else host
    if not validate_host(check_host, allowed):
        out.append(
            Error(
                f"ALLOWED_HOSTS does not allow {host!r}, the host of the gateway's whoami call "
                f"({whoami}): Django answers it 400 and the gateway refuses every browser with 503.",
                hint=f"Add {host!r} to ALLOWED_HOSTS, or set TIDINGS[\"WHOAMI_URL\"] to the gateway's "
                "identity.cookie_proxy.url if it uses another host.",
                id="tidings.E003",
            )
        )

    if getattr(settings, "SECURE_SSL_REDIRECT", False) and parts.scheme == "http":
        path = parts.path.lstrip("/")
        exempt = getattr(settings, "SECURE_REDIRECT_EXEMPT", [])
        if not any(re.search(p, path) for p in exempt):
            out.append(
                Error(
                    f"SECURE_SSL_REDIRECT redirects the gateway's http whoami call ({whoami}) "
                    "to https: the gateway does not follow redirects and refuses every browser with 503.",
                    hint=f"Add r\"^{re.escape(path)}$\" to SECURE_REDIRECT_EXEMPT.",
                    id="tidings.E004",
                )
            )

    if s.get("REDIS_URL"):
        try:
            import redis  # noqa: F401
        except ImportError:
            out.append(
                Error(
                    "TIDINGS[\"REDIS_URL\"] is set but redis-py is not installed.",
                    hint='pip install "tidings[redis]"',
                    id="tidings.E005",
                )
            )

    if settings.DEBUG and url:
        g = urlsplit(url)
        gport = g.port or (443 if g.scheme == "https" else 80)
        dport = parts.port or 80
        if _is_loopback(g.hostname) and _is_loopback(host) and gport != dport:
            out.append(
                Warning(
                    f"In development the pages come from Django (port {dport}) and the WebSocket goes "
                    f"to the gateway (port {gport}): two origins, so the gateway refuses every "
                    "browser's upgrade with 403 until it allows Django's origin.",
                    hint="Start the gateway with TIDINGS_WEBSOCKET__ALLOWED_ORIGINS='"
                    f"[\"http://127.0.0.1:{dport}\",\"http://localhost:{dport}\"]' "
                    "(websocket.allowed_origins), or serve both behind one proxy (deploy/). "
                    "Silence with SILENCED_SYSTEM_CHECKS = [\"tidings.W007\"].",
                    id="tidings.W007",
                )
            )
    return out


def check_urls(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """The whoami view must be where the gateway calls it."""
    from django.urls import NoReverseMatch, reverse

    s = settings_dict() if isinstance(getattr(settings, "TIDINGS", None), dict) else {}
    whoami = _whoami_url(s)
    try:
        path = reverse("tidings:whoami")
    except NoReverseMatch:
        return [
            Warning(
                "The Tidings views are not in the URLconf.",
                hint='In urls.py: from django.urls import include, path; and in urlpatterns: '
                'path("tidings/", include("tidings.contrib.django.urls")).',
                id="tidings.W006",
            )
        ]
    want = urlsplit(whoami).path
    if path != want:
        return [
            Warning(
                f"The whoami view is at {path}, but the gateway calls {want} ({whoami}).",
                hint="Make the gateway's identity.cookie_proxy.url and TIDINGS[\"WHOAMI_URL\"] "
                f"end in {path}.",
                id="tidings.W006",
            )
        ]
    return []
