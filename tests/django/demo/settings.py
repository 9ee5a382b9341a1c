"""Settings of the Django app that Tidings' end-to-end tests run beside the gateway.

Everything that differs between runs comes from the environment:

- DEMO_DB: the sqlite file (each test run uses a fresh one in a temp dir);
- REDIS_URL: the Redis the gateway listens to (PUBLISH, and one-time tokens);
- DEMO_TOKEN_PREFIX, DEMO_TOKEN_TTL: where and for how long one-time
  tokens are stored; the prefix must match the gateway's `identity.token.prefix`.

None of them starts with TIDINGS_: every TIDINGS_* variable belongs to the
gateway, which refuses the ones it does not know, so the app's variables
would stop a gateway started from the same shell.
"""

import os
import tempfile
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "insecure-key-for-the-tidings-e2e-tests-only")
DEBUG = os.environ.get("DJANGO_DEBUG") == "1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "tidings.contrib.django",
    "notifications",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]

ROOT_URLCONF = "demo.urls"
WSGI_APPLICATION = "demo.wsgi.application"

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get(
            "DEMO_DB", str(Path(tempfile.gettempdir()) / "tidings-django.sqlite3")
        ),
    }
}

# A fast hasher keeps the tests quick. Tests only: real apps keep Django's default.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

TIME_ZONE = "UTC"
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Tidings (the `tidings` package, clients/python): publish and store one-time
# tokens straight in the gateway's Redis. Without REDIS_URL, with "URL" and
# "API_KEY", the package uses the gateway's HTTP API instead.
TIDINGS = {
    "REDIS_URL": os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
    "TOKEN_PREFIX": os.environ.get("DEMO_TOKEN_PREFIX", "tidings:token:"),
    "TOKEN_TTL": int(os.environ.get("DEMO_TOKEN_TTL", "5")),
}
