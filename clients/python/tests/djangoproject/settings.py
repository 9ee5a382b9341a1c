"""A minimal Django project for clients/python/tests/test_django.py."""

import os
import tempfile

SECRET_KEY = "insecure-key-for-the-tidings-python-tests-only"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "tidings.contrib.django",
]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # Every other view needs a login (Django 5.1+): the Tidings views must
    # still answer JSON, never a redirect to the login page.
    "django.contrib.auth.middleware.LoginRequiredMiddleware",
]
ROOT_URLCONF = "djangoproject.urls"
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get(
            "DJANGO_TEST_DB", os.path.join(tempfile.gettempdir(), "tidings-py-tests.sqlite3")
        ),
    }
}
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
LOGIN_URL = "/login/"
# The test sets URL once the gateway runs.
TIDINGS = {"URL": "http://127.0.0.1:9", "WHOAMI_URL": "http://127.0.0.1:8000/tidings/whoami/"}
