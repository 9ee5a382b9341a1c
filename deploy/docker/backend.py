#!/usr/bin/env python3
"""A stand-in for your web app in compose.yaml (Python standard library only).

It does what the Django recipe in docs/identity.md does, minus Django:

  GET /                    a page that opens a WebSocket to the gateway
  GET /login?user=42       "logs in": sets a random `sessionid` cookie for user 42
  GET /logout              forgets the session
  GET /tidings/whoami/     what the gateway's cookie proxy asks:
                           {"user": "42"} or {"user": null}

Sessions live in memory. Publishing is left to Redis:

  docker compose exec redis redis-cli PUBLISH /app/user/42/notifications '{"text":"hi"}'
"""

import html
import json
import os
import secrets
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

SESSIONS = {}  # sessionid -> user id
GATEWAY_PORT = os.environ.get("GATEWAY_PORT", "8080")

PAGE = """<!doctype html>
<meta charset="utf-8">
<title>Tidings compose demo</title>
<p>Signed in as: <b>{user}</b> &middot;
<a href="/login?user=42">sign in as 42</a> &middot;
<a href="/login?user=7">sign in as 7</a> &middot;
<a href="/logout">sign out</a></p>
<pre id="log"></pre>
<script>
  const log = (t) => document.getElementById("log").textContent += t + "\\n";
  // The gateway runs on another port, so this page is another origin for it:
  // compose.yaml lists it in TIDINGS_WEBSOCKET__ALLOWED_ORIGINS. Cookies are
  // not port-specific, so the sessionid cookie goes along.
  const ws = new WebSocket(`ws://${{location.hostname}}:{gateway_port}/ws`);
  ws.onmessage = (e) => log(e.data);
  ws.onclose = (e) => log(`closed: ${{e.code}}`);
</script>
"""


class Handler(BaseHTTPRequestHandler):
    def _session_user(self):
        cookie = SimpleCookie(self.headers.get("Cookie", ""))
        morsel = cookie.get("sessionid")
        return SESSIONS.get(morsel.value) if morsel else None

    def _send(self, status, body, content_type, headers=()):
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        url = urlsplit(self.path)
        if url.path == "/tidings/whoami/":
            user = self._session_user()
            self._send(200, json.dumps({"user": user}), "application/json")
        elif url.path == "/login":
            user = parse_qs(url.query).get("user", ["42"])[0]
            sid = secrets.token_urlsafe(24)
            SESSIONS[sid] = user
            self._send(
                303,
                "",
                "text/plain",
                [
                    ("Location", "/"),
                    ("Set-Cookie", f"sessionid={sid}; Path=/; HttpOnly; SameSite=Lax"),
                ],
            )
        elif url.path == "/logout":
            cookie = SimpleCookie(self.headers.get("Cookie", ""))
            if "sessionid" in cookie:
                SESSIONS.pop(cookie["sessionid"].value, None)
            self._send(
                303,
                "",
                "text/plain",
                [("Location", "/"), ("Set-Cookie", "sessionid=; Path=/; Max-Age=0")],
            )
        elif url.path == "/":
            user = html.escape(self._session_user() or "nobody")
            page = PAGE.format(user=user, gateway_port=GATEWAY_PORT)
            self._send(200, page, "text/html; charset=utf-8")
        else:
            self._send(404, "not found\n", "text/plain")


if __name__ == "__main__":
    port = int(os.environ.get("PORT", "8000"))
    ThreadingHTTPServer(("0.0.0.0", port), Handler).serve_forever()
