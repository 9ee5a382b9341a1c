"""The app's own views. What Tidings needs comes from the `tidings` package
(clients/python): `tidings.contrib.django` gives the whoami view the gateway
calls and the token view the page calls (included in demo/urls.py), and
`publish_to_user` publishes (here through Redis: settings.TIDINGS["REDIS_URL"]).

- POST /notify/: publishes to the logged-in user's own channel; any code of
  the app can publish like this, to any user, group or channel.
- POST /login/: Django's authenticate + login, for the tests.
"""

from django.contrib.auth import authenticate, login
from django.http import HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from tidings.contrib.django import identity_for, publish_to_user


@require_POST
def notify(request):
    if not request.user.is_authenticated:
        return JsonResponse({"error": "login required"}, status=401)
    publish_to_user(request.user, {"text": request.POST["text"]})
    return HttpResponse(status=204)


# Exempt from CSRF for the tests only, which log in without first fetching a
# login form; a real app keeps CSRF protection on its login view. (token and
# notify keep it: the tests send the csrftoken cookie and X-CSRFToken, as a
# browser's fetch() would.)
@csrf_exempt
@require_POST
def login_view(request):
    user = authenticate(
        request, username=request.POST.get("username"), password=request.POST.get("password")
    )
    if user is None:
        return JsonResponse({"error": "wrong username or password"}, status=401)
    login(request, user)
    return JsonResponse(identity_for(user))
