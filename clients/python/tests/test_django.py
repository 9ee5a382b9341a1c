"""tidings.contrib.django in a real Django, served on a loopback port, with the
real gateway calling its whoami view and the package publishing and minting
tokens through the gateway's API."""

from __future__ import annotations

import json
import os
import tempfile
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.cookies import SimpleCookie
from typing import Any

import pytest

_db = tempfile.NamedTemporaryFile(prefix="tidings-py-django-", suffix=".sqlite3", delete=False)
_db.close()
os.environ["DJANGO_TEST_DB"] = _db.name
os.environ["DJANGO_SETTINGS_MODULE"] = "djangoproject.settings"

import django  # noqa: E402

django.setup()

from conftest import API_KEY, GROUP_RULES, Gateway, Socket  # noqa: E402
from django.conf import settings  # noqa: E402
from django.contrib.auth.models import Group, User  # noqa: E402
from django.core.checks import run_checks  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.core.servers.basehttp import ThreadedWSGIServer, WSGIRequestHandler  # noqa: E402
from django.core.wsgi import get_wsgi_application  # noqa: E402
from django.test import Client, override_settings  # noqa: E402
from websockets.exceptions import InvalidStatus  # noqa: E402

from tidings.contrib.django import broadcast, publish_to_group, publish_to_user  # noqa: E402

PASSWORD = "tidings-test-password"


class Quiet(WSGIRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass


class Browser:
    """A logged-in (or anonymous) browser's cookies for the Django origin."""

    def __init__(self, base: str, username: str | None = None) -> None:
        self.base = base
        self.cookies: dict[str, str] = {}
        if username:
            c = Client()
            assert c.login(username=username, password=PASSWORD)
            self.cookies["sessionid"] = c.cookies["sessionid"].value
        # The CSRF token comes from a page, as {% csrf_token %} sets it.
        status, headers, _ = self.request("GET", "/")
        assert status == 200
        for h in headers.get_all("Set-Cookie") or []:
            jar = SimpleCookie(h)
            for k, m in jar.items():
                self.cookies[k] = m.value
        assert "csrftoken" in self.cookies

    def cookie(self) -> str:
        return "; ".join(f"{k}={v}" for k, v in self.cookies.items())

    def request(self, method: str, path: str, headers: dict[str, str] | None = None) -> tuple[int, Any, bytes]:
        h = {"Cookie": self.cookie()} if self.cookies else {}
        h.update(headers or {})
        req = urllib.request.Request(self.base + path, method=method, headers=h, data=b"" if method == "POST" else None)

        class NoRedirect(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, *a: Any, **k: Any) -> None:
                return None

        try:
            with urllib.request.build_opener(NoRedirect()).open(req, timeout=20) as r:
                return r.status, r.headers, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.headers, e.read()

    def token(self, csrf: bool = True) -> tuple[int, Any]:
        headers = {"X-CSRFToken": self.cookies["csrftoken"]} if csrf else {}
        status, _, body = self.request("POST", "/tidings/token/", headers)
        try:
            return status, json.loads(body)
        except ValueError:
            return status, body


@pytest.fixture(scope="module")
def live() -> Iterator[str]:
    call_command("migrate", verbosity=0)
    staff, _ = Group.objects.get_or_create(name="staff")
    alice = User.objects.create_user("alice", password=PASSWORD)
    alice.groups.add(staff)
    User.objects.create_user("bob", password=PASSWORD)
    server = ThreadedWSGIServer(("127.0.0.1", 0), Quiet, allow_reuse_address=False)
    server.set_app(get_wsgi_application())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    os.unlink(_db.name)


@pytest.fixture
def stack(live: str) -> Iterator[Gateway]:
    """The gateway asks Django who a socket is; Django's TIDINGS points at the gateway."""
    whoami = live + "/tidings/whoami/"
    gw = Gateway(
        {
            "TIDINGS_API_KEY": API_KEY,
            "TIDINGS_IDENTITY__RESOLVERS": '["cookie_proxy","token"]',
            "TIDINGS_IDENTITY__COOKIE_PROXY__URL": whoami,
        },
        GROUP_RULES,
    )
    with override_settings(TIDINGS={"URL": gw.url, "API_KEY": API_KEY, "WHOAMI_URL": whoami}):
        yield gw
    gw.stop()


def msg(channel: str, data: object) -> dict[str, object]:
    return {"type": "message", "channel": channel, "data": data}


def test_session_cookie_sockets_and_publishing(live: str, stack: Gateway, sockets: list[Socket]) -> None:
    alice = User.objects.get(username="alice")
    bob = User.objects.get(username="bob")
    a = Socket(stack.ws_url, {"Cookie": Browser(live, "alice").cookie()})
    b = Socket(stack.ws_url, {"Cookie": Browser(live, "bob").cookie()})
    anon = Socket(stack.ws_url, {"Cookie": Browser(live).cookie()})
    sockets += [a, b, anon]
    assert a.welcome["user"] == str(alice.pk)
    assert sorted(a.welcome["channels"]) == sorted(
        ["/app/broadcast", f"/app/user/{alice.pk}/notifications", "/app/group/staff"]
    )
    assert b.welcome["user"] == str(bob.pk)
    assert anon.welcome["user"] is None and anon.welcome["channels"] == ["/app/broadcast"]

    publish_to_user(alice, {"text": "for alice"})
    publish_to_user(bob.pk, {"text": "for bob"})
    publish_to_group(Group.objects.get(name="staff"), "staff only")
    broadcast("everyone")
    assert a.next() == msg(f"/app/user/{alice.pk}/notifications", {"text": "for alice"})
    assert a.next() == msg("/app/group/staff", "staff only")
    assert a.next() == msg("/app/broadcast", "everyone")
    # Bob's and the visitor's first messages are their own: nothing of alice's reached them.
    assert b.next() == msg(f"/app/user/{bob.pk}/notifications", {"text": "for bob"})
    assert b.next() == msg("/app/broadcast", "everyone")
    assert anon.next() == msg("/app/broadcast", "everyone")


def test_whoami_answers_json_never_a_redirect(live: str) -> None:
    # LoginRequiredMiddleware is on, and the visitor is anonymous.
    status, headers, body = Browser(live).request("GET", "/tidings/whoami/")
    assert status == 200 and json.loads(body) == {"user": None}
    assert "no-cache" in headers["Cache-Control"]
    alice = User.objects.get(username="alice")
    status, _, body = Browser(live, "alice").request("GET", "/tidings/whoami/")
    assert json.loads(body) == {"user": str(alice.pk), "groups": ["staff"]}
    status, _, _ = Browser(live).request("POST", "/tidings/whoami/")
    assert status in (403, 405)


def test_token_view(live: str, stack: Gateway, sockets: list[Socket]) -> None:
    alice = User.objects.get(username="alice")
    browser = Browser(live, "alice")
    status, body = browser.token()
    assert status == 200, body
    assert body["expires_in"] == 5.0 and len(body["token"]) == 64
    s = Socket(f"{stack.ws_url}?token={body['token']}")
    sockets.append(s)
    assert s.welcome["user"] == str(alice.pk)
    assert "/app/group/staff" in s.welcome["channels"]
    with pytest.raises(InvalidStatus) as used:
        Socket(f"{stack.ws_url}?token={body['token']}")
    assert used.value.response.status_code == 401

    # No CSRF token: Django refuses. Not logged in: 401 JSON, not a 302.
    assert browser.token(csrf=False)[0] == 403
    status, body = Browser(live).token()
    assert status == 401 and body["error"] == "login_required"


def test_token_view_when_the_gateway_is_down(live: str) -> None:
    with override_settings(TIDINGS={"URL": "http://127.0.0.1:9", "API_KEY": API_KEY}):
        status, body = Browser(live, "bob").token()
    assert status == 503 and body["error"] == "gateway_unavailable"


def ids(**overrides: Any) -> set[str]:
    with override_settings(**overrides):
        return {m.id for m in run_checks() if m.id and m.id.startswith("tidings.")}


def test_system_checks() -> None:
    whoami = "http://127.0.0.1:8000/tidings/whoami/"
    ok = {"URL": "http://127.0.0.1:8080", "API_KEY": API_KEY, "WHOAMI_URL": whoami}
    assert ids(TIDINGS=ok) == set()
    assert ids(TIDINGS=None) == {"tidings.E001"}
    assert ids(TIDINGS={"API_KEY": "x"}) == {"tidings.E001"}
    assert ids(TIDINGS={"URL": "https://gw.example.com"}) == {"tidings.E002"}
    assert ids(TIDINGS=ok, ALLOWED_HOSTS=["app.example.com"]) == {"tidings.E003"}
    assert ids(TIDINGS=ok, ALLOWED_HOSTS=[], DEBUG=True) == {"tidings.W007"}
    assert ids(TIDINGS=ok, SECURE_SSL_REDIRECT=True) == {"tidings.E004"}
    assert ids(TIDINGS=ok, SECURE_SSL_REDIRECT=True, SECURE_REDIRECT_EXEMPT=[r"^tidings/whoami/$"]) == set()
    assert ids(TIDINGS=ok, DEBUG=True) == {"tidings.W007"}
    assert ids(TIDINGS={**ok, "URL": "http://127.0.0.1:8000"}, DEBUG=True) == set()
    assert ids(TIDINGS={**ok, "WHOAMI_URL": "http://127.0.0.1:8000/ws/whoami/"}) == {"tidings.W006"}
    assert ids(TIDINGS=ok, ROOT_URLCONF="djangoproject.bare_urls") == {"tidings.W006"}
    assert settings.TIDINGS["URL"] == "http://127.0.0.1:9"


def test_check_command_with_whoami(live: str, stack: Gateway) -> None:
    from test_client import run_check

    base = ["--gateway", stack.url, "--api-key", API_KEY]
    ok = run_check(*base, "--whoami", live + "/tidings/whoami/")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert '[ok] ' + live + '/tidings/whoami/ answers an anonymous visitor with {"user": null}' in ok.stdout

    redirect = run_check(*base, "--whoami", live + "/private/")
    assert redirect.returncode == 1
    assert "redirects (302 to /login/?next=/private/)" in redirect.stdout

    with override_settings(ALLOWED_HOSTS=["app.example.com"]):
        bad_host = run_check(*base, "--whoami", live + "/tidings/whoami/")
    assert bad_host.returncode == 1
    assert "ALLOWED_HOSTS" in bad_host.stdout


def test_history_setting_on_the_redis_path() -> None:
    from tidings import History
    from tidings.contrib.django.conf import history_for
    from tidings.errors import ConfigurationError

    redis = {"REDIS_URL": "redis://127.0.0.1:9/0"}
    with override_settings(TIDINGS=redis):
        # The gateway's default rules: user notifications keep 100 for 600 s.
        assert history_for("user") == History(100, 600)
        assert history_for("group") is None
        assert history_for("broadcast") is None
    with override_settings(TIDINGS={**redis, "HISTORY": {}}):
        assert history_for("user") is None
    with override_settings(TIDINGS={**redis, "HISTORY": {"group": {"size": 5, "ttl_secs": 60}}}):
        assert history_for("group") == History(5, 60)
        assert history_for("user") is None
    with override_settings(TIDINGS={"URL": "http://127.0.0.1:8080"}):
        # Through the HTTP API the gateway applies its rules itself.
        assert history_for("user") is None
    for bad in ({"user": {"size": 5}}, {"user": 5}, {"user": {"size": 5, "ttl_secs": 1, "x": 1}}, []):
        with override_settings(TIDINGS={**redis, "HISTORY": bad}):
            with pytest.raises(ConfigurationError):
                history_for("user")
