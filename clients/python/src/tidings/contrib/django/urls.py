"""``path("tidings/", include("tidings.contrib.django.urls"))`` gives
``tidings/whoami/`` (URL name ``tidings:whoami``) and ``tidings/token/``
(``tidings:token``)."""

from django.urls import path

from . import views

app_name = "tidings"

urlpatterns = [
    path("whoami/", views.whoami, name="whoami"),
    path("token/", views.token, name="token"),
]
