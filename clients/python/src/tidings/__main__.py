"""``python -m tidings check``: is the gateway reachable, ready, and does the API key work?

    python -m tidings check --gateway http://127.0.0.1:8080 [--api-key KEY]
                            [--whoami http://127.0.0.1:8000/tidings/whoami/]

The key comes from ``--api-key`` or the environment variable
``TIDINGS_API_KEY``. Nothing is published: the key is tried with an empty
body, which the gateway refuses after checking the key. Exit status 0 when
every check passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from . import _http
from .errors import ConnectionFailed

OK, WARN, FAIL = "ok", "warning", "FAIL"


def _json(body: bytes) -> dict[str, object]:
    try:
        v = json.loads(body)
    except ValueError:
        return {}
    return v if isinstance(v, dict) else {}


def check(gateway: str, api_key: str | None, whoami: str | None, timeout: float) -> list[tuple[str, str]]:
    """The findings, as (level, text)."""
    out: list[tuple[str, str]] = []
    base = gateway.rstrip("/")
    try:
        status, _, body = _http.request_sync("GET", base + "/healthz", {}, None, timeout)
    except ConnectionFailed as e:
        return [(FAIL, f"the gateway is not reachable: {e}")]
    if status != 200:
        out.append((FAIL, f"GET {base}/healthz answered {status}: is this a Tidings gateway?"))
        return out
    out.append((OK, f"{base} is reachable"))

    status, _, body = _http.request_sync("GET", base + "/readyz", {}, None, timeout)
    text = body.decode("utf-8", "replace").strip()
    if status == 200:
        out.append((OK, "/readyz: ready"))
    else:
        out.append((FAIL, f"/readyz answered {status} ({text}): the broker (Redis) is not connected"))

    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    status, _, body = _http.request_sync("POST", base + "/api/publish", headers, b"{}", timeout)
    if status == 400:
        out.append((OK, "the API key is accepted" if api_key else "the API accepts this local process without a key"))
    elif status == 401:
        msg = str(_json(body).get("message", ""))
        if api_key:
            out.append((FAIL, f"the API key is refused (401): it must equal the gateway's TIDINGS_API_KEY. {msg}"))
        else:
            out.append((FAIL, f"the API needs a key (401): pass --api-key or set TIDINGS_API_KEY. {msg}"))
    else:
        out.append((FAIL, f"POST /api/publish answered {status}: {body[:200]!r}"))

    status, _, body = _http.request_sync("POST", base + "/api/tokens", headers, b"{}", timeout)
    if status == 404:
        out.append((WARN, "one-time tokens are disabled: add \"token\" to the gateway's identity.resolvers to mint them"))
    elif status == 400:
        out.append((OK, "one-time tokens are enabled (POST /api/tokens)"))

    if whoami:
        try:
            status, hdrs, body = _http.request_sync("GET", whoami, {}, None, timeout)
        except ConnectionFailed as e:
            out.append((FAIL, f"the whoami URL is not reachable: {e}"))
            return out
        if status == 200 and "user" in _json(body):
            out.append((OK, f"{whoami} answers an anonymous visitor with {body.decode()[:80]}"))
        elif status in (401, 403):
            out.append((OK, f"{whoami} answers an anonymous visitor with {status}"))
        elif 300 <= status < 400:
            out.append((FAIL, f"{whoami} redirects ({status} to {hdrs.get('location')}): a login redirect "
                        "(@login_required) or an HTTPS redirect (SECURE_SSL_REDIRECT); the gateway "
                        "answers every browser 503. Answer 200 {\"user\": null} or 401 instead"))
        elif status == 400:
            out.append((FAIL, f"{whoami} answered 400: is its host in Django's ALLOWED_HOSTS?"))
        else:
            out.append((FAIL, f"{whoami} answered {status}: the gateway needs 200 with JSON, 401 or 403"))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """The command line."""
    p = argparse.ArgumentParser(prog="python -m tidings", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("check", help="check a gateway: reachable, /readyz, API key")
    c.add_argument("--gateway", required=True, help="the gateway's base URL, http://127.0.0.1:8080")
    c.add_argument("--api-key", default=os.environ.get("TIDINGS_API_KEY"), help="default: $TIDINGS_API_KEY")
    c.add_argument("--whoami", help="also check this whoami URL as the gateway calls it (no cookies)")
    c.add_argument("--timeout", type=float, default=5.0)
    args = p.parse_args(argv)
    try:
        findings = check(args.gateway, args.api_key, args.whoami, args.timeout)
    except ConnectionFailed as e:
        findings = [(FAIL, f"the gateway stopped answering: {e}")]
    for level, text in findings:
        print(f"[{level}] {text}")
    return 1 if any(level == FAIL for level, _ in findings) else 0


if __name__ == "__main__":
    sys.exit(main())
