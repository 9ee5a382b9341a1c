from django.contrib.auth.decorators import login_not_required
from django.http import HttpRequest, HttpResponse
from django.middleware.csrf import get_token
from django.urls import include, path


@login_not_required
def page(request: HttpRequest) -> HttpResponse:
    # What a template's {% csrf_token %} does: sets the csrftoken cookie.
    return HttpResponse(f'<meta name="csrf-token" content="{get_token(request)}">')


def private(request: HttpRequest) -> HttpResponse:
    # LoginRequiredMiddleware sends anonymous visitors to LOGIN_URL.
    return HttpResponse("private")


urlpatterns = [
    path("", page),
    path("private/", private),
    path("tidings/", include("tidings.contrib.django.urls")),
]
