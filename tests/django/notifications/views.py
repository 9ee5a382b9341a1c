"""What a Django app needs for Tidings: tell the gateway who a browser is, and
publish to channels through Redis.

- GET /tidings/whoami/: the gateway calls it with the browser's cookies
  (identity.cookie_proxy.url) and reads `{"user": "<id>", "groups": [...]}`,
  or `{"user": null}` for a visitor who is not logged in.
- POST /tidings/token/: a one-time token for a WebSocket URL (`?token=...`),
  for when the gateway does not share the app's cookies; it lives in Redis
  for settings.TIDINGS_TOKEN_TTL seconds and the gateway deletes it on first use.
- POST /notify/: publishes to the logged-in user's own channel; any code of
  the app can publish like this, to any channel.
"""

import json
import secrets

import redis
from django.conf import settings
from django.contrib.auth import authenticate, login
from django.http import HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

redis_client = redis.Redis.from_url(settings.REDIS_URL)


def identity(user):
    """The identity the gateway gets, from whoami or from a token."""
    if not user.is_authenticated:
        return {"user": None}
    return {"user": str(user.pk), "groups": sorted(user.groups.values_list("name", flat=True))}


@require_GET
def whoami(request):
    return JsonResponse(identity(request.user))


@require_POST
def token(request):
    if not request.user.is_authenticated:
        return JsonResponse({"error": "login required"}, status=401)
    token = secrets.token_urlsafe(32)
    key = settings.TIDINGS_TOKEN_PREFIX + token
    redis_client.set(key, json.dumps(identity(request.user)), ex=settings.TIDINGS_TOKEN_TTL)
    return JsonResponse({"token": token})


@require_POST
def notify(request):
    if not request.user.is_authenticated:
        return JsonResponse({"error": "login required"}, status=401)
    channel = f"/app/user/{request.user.pk}/notifications"
    redis_client.publish(channel, json.dumps({"text": request.POST["text"]}))
    return HttpResponse(status=204)


# Exempt from CSRF for the tests only, which log in without first fetching a
# login form; a real app keeps CSRF protection on its login view. (token and
# notify above keep it: the tests send the csrftoken cookie and X-CSRFToken,
# as a browser's fetch() would.)
@csrf_exempt
@require_POST
def login_view(request):
    user = authenticate(
        request, username=request.POST.get("username"), password=request.POST.get("password")
    )
    if user is None:
        return JsonResponse({"error": "wrong username or password"}, status=401)
    login(request, user)
    return JsonResponse(identity(user))
