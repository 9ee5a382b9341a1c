"""Real parts for the tests: the gateway binary, redis-server, and a
WebSocket client (the `websockets` package)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.client import connect

ROOT = Path(__file__).resolve().parents[3]
API_KEY = "test-api-key-0123456789"
PATIENCE = 20.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def binary() -> str:
    path = os.environ.get("TIDINGS_BIN") or str(ROOT / "target" / "debug" / "tidings")
    if not Path(path).exists():
        pytest.fail(f"{path} not found: build it with `cargo build -p tidings` or set TIDINGS_BIN")
    return path


class Gateway:
    """The real gateway on a free loopback port; its output is kept in `logs`."""

    def __init__(self, env: dict[str, str], config: str | None = None) -> None:
        self.logs: list[str] = []
        full = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
        full.pop("RUST_LOG", None)
        full.update({"TIDINGS_LISTEN": "127.0.0.1:0"})
        full.update(env)
        args = [binary()]
        self._config = None
        if config is not None:
            fd, self._config = tempfile.mkstemp(suffix=".toml")
            with os.fdopen(fd, "w") as f:
                f.write(config)
            args += ["--config", self._config]
        self.proc = subprocess.Popen(
            args, env=full, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True,
        )
        found = threading.Event()
        self.addr = ""

        def read() -> None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                self.logs.append(line)
                if not found.is_set() and "listening on http://" in line:
                    self.addr = line.split("listening on http://", 1)[1].split()[0]
                    found.set()
            found.set()

        threading.Thread(target=read, daemon=True).start()
        found.wait(PATIENCE)
        if not self.addr:
            self.stop()
            raise RuntimeError("the gateway did not start:\n" + "".join(self.logs))

    @property
    def url(self) -> str:
        return f"http://{self.addr}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.addr}/ws"

    def wait_ready(self) -> None:
        deadline = time.monotonic() + PATIENCE
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.url + "/readyz", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError("the gateway never became ready:\n" + "".join(self.logs))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        if self._config:
            os.unlink(self._config)


class RedisServer:
    """A private redis-server on a free port, no persistence."""

    def __init__(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.fail("redis-server is not installed")
        self.dir = tempfile.mkdtemp(prefix="tidings-py-redis-")
        for _ in range(3):
            self.port = free_port()
            self.proc = subprocess.Popen(
                [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", self.dir],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            if self._wait():
                return
            self.proc.kill()
            self.proc.wait()
        raise RuntimeError("redis-server did not start")

    def _wait(self) -> bool:
        deadline = time.monotonic() + PATIENCE
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(64).startswith(b"+PONG"):
                        return True
            except OSError:
                time.sleep(0.02)
        return False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


GROUP_RULES = """
[[routing.rules]]
channel = "/app/broadcast"
join = true
subscribe = true
anonymous = true

[[routing.rules]]
channel = "/app/user/{user}/notifications"
join = true
subscribe = true

[[routing.rules]]
channel = "/app/group/{group}"
join = true
subscribe = true
"""


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    r = RedisServer()
    yield r
    r.stop()


def _gateway_env(redis_url: str | None) -> dict[str, str]:
    env = {"TIDINGS_API_KEY": API_KEY, "TIDINGS_IDENTITY__RESOLVERS": '["token"]'}
    if redis_url:
        env["TIDINGS_REDIS_URL"] = redis_url
    return env


@pytest.fixture
def gateway() -> Iterator[Gateway]:
    """A gateway with the in-process broker, an API key, tokens, and the group rule."""
    g = Gateway(_gateway_env(None), GROUP_RULES)
    yield g
    g.stop()


@pytest.fixture
def redis_gateway(redis_server: RedisServer) -> Iterator[Gateway]:
    """The same, on a real Redis."""
    g = Gateway(_gateway_env(redis_server.url), GROUP_RULES)
    g.wait_ready()
    yield g
    g.stop()


class Socket:
    """A WebSocket to the gateway; `welcome` is its first frame."""

    def __init__(self, url: str, headers: dict[str, str] | None = None) -> None:
        self.ws = connect(url, additional_headers=headers or {}, open_timeout=PATIENCE)
        self.welcome = self.next()
        assert self.welcome["type"] == "welcome", self.welcome
        # A ping answered means the channels joined on connect are subscribed.
        self.ws.send(json.dumps({"type": "ping", "id": "ready"}))
        pong = self.next()
        assert pong == {"type": "pong", "id": "ready"}, pong

    def next(self) -> Any:
        return json.loads(self.ws.recv(timeout=PATIENCE))

    def close(self) -> None:
        self.ws.close()


@pytest.fixture
def sockets() -> Iterator[list[Socket]]:
    opened: list[Socket] = []
    yield opened
    for s in opened:
        s.close()
