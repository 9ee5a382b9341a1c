"""The two views the gateway and the page call.

- :func:`whoami` (``GET``): the gateway's cookie proxy calls it on every
  WebSocket upgrade with the browser's cookies. A logged-in user gets 200
  ``{"user": "<pk>", "groups": [...]}``; anyone else 200 ``{"user": null}``
  ("not recognised": the gateway tries its next resolver, then its
  ``identity.anonymous`` policy). Never a redirect to the login page, never
  a page: the gateway answers every browser 503 when whoami redirects.
- :func:`token` (``POST``, CSRF-protected): a one-time token for the
  logged-in user, ``{"token": "...", "expires_in": 5.0}``, for
  ``/ws?token=``. Not logged in: 401 JSON (not a 302 to the login page, which
  ``fetch()`` would follow). The page sends Django's CSRF token in the
  ``X-CSRFToken`` header: read it from the ``csrftoken`` cookie, or render
  ``{% csrf_token %}`` / ``{{ csrf_token }}`` into the page.
"""

from __future__ import annotations

import logging

from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_POST

from ...errors import ConfigurationError, TidingsError
from .conf import client, identity_for, settings_dict

log = logging.getLogger("tidings")

try:  # Django 5.1+: LoginRequiredMiddleware would redirect these views to the login page.
    from django.contrib.auth.decorators import login_not_required
except ImportError:  # pragma: no cover - older Django

    def login_not_required(f):  # type: ignore[no-untyped-def,misc]
        return f


@login_not_required
@never_cache
@require_GET
def whoami(request: HttpRequest) -> JsonResponse:
    """Who the browser whose cookies these are is, for the gateway."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return JsonResponse({"user": None})
    return JsonResponse(identity_for(user))


@login_not_required
@never_cache
@require_POST
def token(request: HttpRequest) -> JsonResponse:
    """A one-time WebSocket token for the logged-in user."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return JsonResponse({"error": "login_required", "message": "log in first"}, status=401)
    ttl = float(settings_dict().get("TOKEN_TTL", 5))
    try:
        minted = client().mint_token(identity_for(user), ttl)
    except ConfigurationError:
        raise
    except TidingsError as e:
        log.warning("tidings: could not mint a token: %s", e)
        return JsonResponse(
            {"error": "gateway_unavailable", "message": "could not get a token; try again"},
            status=503,
            headers={"Retry-After": "1"},
        )
    return JsonResponse({"token": minted.token, "expires_in": minted.expires_in})
