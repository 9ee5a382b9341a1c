"""The two HTTP/1.1 clients: urllib (sync) and asyncio streams (async).

Both return ``(status, headers, body)`` with lower-case header names, and
raise ConnectionFailed when no answer arrives.
"""

from __future__ import annotations

import asyncio
import ssl
import http.client
from urllib.parse import urlsplit

from .errors import ConfigurationError, ConnectionFailed

Answer = tuple[int, dict[str, str], bytes]


def _headers(items: object) -> dict[str, str]:
    return {str(k).lower(): str(v) for k, v in items}  # type: ignore[attr-defined]


def request_sync(
    method: str,
    url: str,
    headers: dict[str, str],
    body: bytes | None,
    timeout: float,
    ssl_context: ssl.SSLContext | None = None,
) -> Answer:
    """One request with http.client; redirects are not followed (a redirect is
    an answer). When the gateway answers before the whole body is sent (a 413
    decided on Content-Length alone) and closes, its answer is still read."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(f"not an http(s) URL: {url!r}")
    conn: http.client.HTTPConnection
    if parts.scheme == "https":
        conn = http.client.HTTPSConnection(
            parts.hostname, parts.port, timeout=timeout,
            context=ssl_context or ssl.create_default_context(),
        )
    else:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    try:
        try:
            conn.putrequest(method, target, skip_accept_encoding=True)
            for k, v in headers.items():
                conn.putheader(k, v)
            if body is not None:
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders()
            if body:
                conn.send(body)
        except (BrokenPipeError, ConnectionResetError):
            if conn.sock is None:
                raise
            # The server answered early and closed: read that answer below.
        resp = conn.getresponse()
        return resp.status, _headers(resp.getheaders()), resp.read()
    except (OSError, http.client.HTTPException) as e:
        raise ConnectionFailed(f"{method} {url}: {e}") from e
    finally:
        conn.close()


async def request_async(
    method: str,
    url: str,
    headers: dict[str, str],
    body: bytes | None,
    timeout: float,
    ssl_context: ssl.SSLContext | None = None,
) -> Answer:
    """One request over asyncio streams (``Connection: close``), http or https."""
    try:
        return await asyncio.wait_for(
            _request_async(method, url, headers, body, ssl_context), timeout
        )
    except asyncio.TimeoutError as e:
        raise ConnectionFailed(f"{method} {url}: no answer within {timeout} s") from e
    except (OSError, asyncio.IncompleteReadError, ValueError) as e:
        raise ConnectionFailed(f"{method} {url}: {e}") from e


async def _request_async(
    method: str,
    url: str,
    headers: dict[str, str],
    body: bytes | None,
    ssl_context: ssl.SSLContext | None,
) -> Answer:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(f"not an http(s) URL: {url!r}")
    tls = parts.scheme == "https"
    port = parts.port or (443 if tls else 80)
    ctx = (ssl_context or ssl.create_default_context()) if tls else None
    reader, writer = await asyncio.open_connection(
        parts.hostname, port, ssl=ctx, server_hostname=parts.hostname if tls else None
    )
    try:
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        host = parts.netloc.rsplit("@", 1)[-1]
        lines = [f"{method} {target} HTTP/1.1", f"Host: {host}", "Connection: close"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        if body is not None or method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {len(body or b'')}")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b""))
        try:
            await writer.drain()
        except (BrokenPipeError, ConnectionResetError):
            pass  # The server answered early and closed: read that answer.

        head = await reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        version, code, *_ = status_line.split(" ", 2)
        if not version.startswith("HTTP/1."):
            raise ValueError(f"not an HTTP/1.x answer: {status_line!r}")
        hdrs: dict[str, str] = {}
        for line in header_lines:
            if ":" in line:
                k, v = line.split(":", 1)
                hdrs[k.strip().lower()] = v.strip()
        if method == "HEAD" or int(code) in (204, 304) or 100 <= int(code) < 200:
            data = b""
        elif "chunked" in hdrs.get("transfer-encoding", "").lower():
            data = await _read_chunked(reader)
        elif "content-length" in hdrs:
            data = await reader.readexactly(int(hdrs["content-length"]))
        else:
            data = await reader.read()
        return int(code), hdrs, data
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except (OSError, ssl.SSLError):
            pass


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    out = bytearray()
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            # Trailers, up to the empty line.
            while (await reader.readuntil(b"\r\n")) != b"\r\n":
                pass
            return bytes(out)
        out += await reader.readexactly(size)
        await reader.readexactly(2)
