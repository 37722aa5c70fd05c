"""Load on loopback: 8 concurrent streaming clients x 20 requests, one in five disconnecting.

Against `serve` (one request at a time) and `serve --parallel 4` (four decoded together).
Bounded in count and time; only 127.0.0.1. Reports requests served, failures and the
server's RSS before and after (run with -s to see the figures).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")
from server_process import running_server  # noqa: E402
from test_server import API_KEY, Server, server  # noqa: E402,F401  (the module-scoped server fixture)

pytestmark = pytest.mark.slow

CLIENTS, REQUESTS, MAX_TOKENS = 8, 20, 12
DEADLINE_S = 900


def rss_kb(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            key, value = line.split(":")
            out[key] = int(value.split()[0])
    return out


def one_request(url: str, i: int, j: int, disconnect: bool) -> str:
    body = {"messages": [{"role": "user", "content": f"Count from {i} to {i + j + 3}."}],
            "max_tokens": MAX_TOKENS, "temperature": 0, "stream": True}
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.Client(timeout=120) as c, c.stream("POST", f"{url}/v1/chat/completions", json=body,
                                                  headers=headers) as r:
        if r.status_code != 200:
            return f"http {r.status_code}"
        chunks = 0
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                return "ok" if chunks else "empty"
            json.loads(line[len("data: "):])
            chunks += 1
            if disconnect and chunks == 1:
                return "cancelled"  # leaving the with-block closes the connection mid-stream
    return "truncated"


@pytest.fixture(params=[1, 4], ids=lambda n: f"parallel{n}")
def load_server(request: pytest.FixtureRequest, smollm2: Path,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    if request.param == 1:
        yield request.getfixturevalue("server")
        return
    log = tmp_path_factory.mktemp("serve-load") / "serve.log"
    with running_server(smollm2, ["--api-key", API_KEY, "-c", str(1024 * request.param),
                                  "--parallel", str(request.param)], log) as srv:
        yield srv


def test_eight_streaming_clients(load_server: Server) -> None:
    server = load_server
    # warm up, then measure memory under load
    assert one_request(server.url, 0, 0, False) == "ok"
    before = rss_kb(server.proc.pid)
    results: dict[str, int] = {}
    lock = threading.Lock()
    t0 = time.monotonic()

    def client(i: int) -> None:
        for j in range(REQUESTS):
            if time.monotonic() - t0 > DEADLINE_S:
                outcome = "not sent (deadline)"
            else:
                try:
                    outcome = one_request(server.url, i, j, disconnect=(j % 5 == 4))
                except httpx.HTTPError as e:
                    outcome = f"error {type(e).__name__}"
            with lock:
                results[outcome] = results.get(outcome, 0) + 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    after = rss_kb(server.proc.pid)
    # a request whose client just left is stopped at its next token: allow a moment
    for _ in range(50):
        health = httpx.get(f"{server.url}/health", timeout=10).json()
        if not health["busy"]:
            break
        time.sleep(0.2)
    print(f"\nload: {CLIENTS} clients x {REQUESTS} requests in {elapsed:.0f} s: {results}; "
          f"server RSS {before['VmRSS'] / 1024:.0f} MB before, {after['VmRSS'] / 1024:.0f} MB after, "
          f"peak {after['VmHWM'] / 1024:.0f} MB")
    cancelled = CLIENTS * (REQUESTS // 5)
    assert results == {"ok": CLIENTS * REQUESTS - cancelled, "cancelled": cancelled}
    assert health["busy"] is False and health["queued"] == 0
    assert after["VmRSS"] - before["VmRSS"] < 64 * 1024, "server memory grew under load"
    assert one_request(server.url, 1, 1, False) == "ok"  # every disconnect freed the model


def test_server_listens_on_loopback_only_by_default(server: Server) -> None:
    """The fixture starts `serve` without --host: its socket must be bound to 127.0.0.1."""
    port_hex = f"{server.port:04X}"
    listening = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if Path(table).exists():
            for line in Path(table).read_text().splitlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                if state == "0A" and local.endswith(":" + port_hex):  # 0A = LISTEN
                    listening.append(local.split(":")[0])
    assert listening == ["0100007F"], listening  # 127.0.0.1, little-endian hex
