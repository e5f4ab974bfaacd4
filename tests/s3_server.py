"""A real S3 server for the tests: moto's ThreadedMotoServer on 127.0.0.1 and a free port.

moto 5.x enforces If-None-Match on PutObject and CompleteMultipartUpload, If-Match on PutObject
and DeleteObject, and hides uncompleted multipart uploads, like S3. Fixtures (registered in
conftest.py): ``s3_endpoint`` (one server per session), ``s3_root`` (a fresh bucket per test:
``(url, storage_options)``). :func:`counting` records each HTTP request botocore sends.
"""

from __future__ import annotations

import contextlib
import socket
import uuid
from collections import Counter
from typing import Any, Iterator

import pytest

CREDS = {"key": "testing", "secret": "testing"}
#: Every network call in the tests is bounded: short timeouts, one retry.
FAST = {"connect_timeout": 2, "read_timeout": 20, "retries": 2}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server() -> tuple[Any, str]:
    moto_server = pytest.importorskip("moto.server")
    port = free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    return server, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    pytest.importorskip("botocore")
    server, endpoint = start_server()
    try:
        yield endpoint
    finally:
        server.stop()


def options(endpoint: str, **extra: Any) -> dict[str, Any]:
    return {"endpoint_url": endpoint, **CREDS, **FAST, **extra}


def make_bucket(endpoint: str) -> str:
    from ckpt.storage import _s3client

    client, _ = _s3client.make_client(options(endpoint))
    name = f"ckpt-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=name)
    return name


@pytest.fixture
def s3_root(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> tuple[str, dict[str, Any]]:
    for var in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    return f"s3://{make_bucket(s3_endpoint)}/runs/exp1", options(s3_endpoint)


@contextlib.contextmanager
def counting(storage: Any) -> Iterator[Counter[str]]:
    """Count the HTTP requests ``storage``'s client sends, by S3 operation, while the block runs."""
    counts: Counter[str] = Counter()

    def hook(event_name: str = "", **_: Any) -> None:
        counts[event_name.rsplit(".", 1)[-1]] += 1

    events = storage.client.meta.events
    events.register("before-send.s3", hook, unique_id=f"count-{id(counts)}")
    try:
        yield counts
    finally:
        events.unregister("before-send.s3", unique_id=f"count-{id(counts)}")


class Proxy:
    """A loopback TCP proxy in front of the S3 server: adds ``latency`` seconds before each
    request, can strip conditional-request headers (a store that ignores them), and can
    ``cut()`` the network: every connection dropped, new ones refused."""

    def __init__(self, upstream: str, *, latency: float = 0.0, strip_conditions: bool = False):
        import threading

        host, port = upstream.rsplit("//", 1)[1].split(":")
        self._up = (host, int(port))
        self.latency = latency
        self.strip = strip_conditions
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.endpoint = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        self._cut = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import threading

        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self._up)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._cut:
                    client.close()
                    upstream.close()
                    continue
                self._socks += [client, upstream]
            state = {"turn": "request"}
            threading.Thread(target=self._pump, args=(client, upstream, True, state), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False, state), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, to_server: bool, state: dict[str, str]) -> None:
        import re
        import time

        try:
            while True:
                data = src.recv(1 << 16)
                if not data:
                    break
                if to_server:
                    if state["turn"] == "response" or state.get("new", "1") == "1":
                        state["new"] = "0"
                        if self.latency:
                            time.sleep(self.latency)
                        if self.strip:
                            data = re.sub(rb"\r\n[Ii]f-(?:[Nn]one-)?[Mm]atch: [^\r]*", b"", data)
                    state["turn"] = "request"
                else:  # an interim "100 Continue" is not the answer: the request's body follows
                    state["turn"] = "continue" if data.startswith(b"HTTP/1.1 100") else "response"
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self) -> None:
        with self._lock:
            self._cut = True
            socks, self._socks = self._socks, []
        self._listener.close()
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def close(self) -> None:
        self.cut()
