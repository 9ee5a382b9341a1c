from django.urls import path

from notifications import views

urlpatterns = [
    path("login/", views.login_view),
    path("notify/", views.notify),
    path("tidings/whoami/", views.whoami),
    path("tidings/token/", views.token),
]
