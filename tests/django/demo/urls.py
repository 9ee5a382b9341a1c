from django.urls import include, path

from notifications import views

urlpatterns = [
    path("login/", views.login_view),
    path("notify/", views.notify),
    # tidings/whoami/ and tidings/token/, from the package.
    path("tidings/", include("tidings.contrib.django.urls")),
]
