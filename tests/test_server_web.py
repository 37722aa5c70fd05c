"""Browser apps against `sdfp-edge serve`: CORS, in headers and in a real headless Chromium.

The page (PAGE below) is served by a plain HTTP server on another port, so its origin differs
from the API's; it streams a chat reply with `fetch` and the test reads the result back over
the DevTools protocol. Chromium resolves app.example to 127.0.0.1, so the same page also runs
under a foreign origin. The server runs with an API key, `--strict-model`, and one foreign
origin allowed (app.example on the second page port).
"""

from __future__ import annotations

import http.server
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from chromium import CHROMIUM, Chromium  # noqa: E402
from server_process import Server, running_server, sdfp_edge_command  # noqa: E402

pytestmark = pytest.mark.slow

API_KEY = "web-key-456"
CHAT = [{"role": "user", "content": "What is the capital of France?"}]
PREFLIGHT = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization,content-type"}

PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>chat</title></head><body>
<pre id="out">running</pre>
<script>
const q = new URLSearchParams(location.search);
async function chat() {
  const r = await fetch(q.get("api") + "/v1/chat/completions", {method: "POST",
    headers: {"Content-Type": "application/json", "Authorization": "Bearer " + q.get("key")},
    body: JSON.stringify({model: q.get("model"), messages: [{role: "user", content: q.get("ask")}],
                          max_tokens: 12, temperature: 0, stream: true})});
  if (!r.ok) throw new Error("HTTP " + r.status + ": " + await r.text());
  const reader = r.body.getReader(), utf8 = new TextDecoder();
  let buf = "", text = "", chunks = 0, done = false;
  while (!done) {
    const part = await reader.read();
    if (part.done) break;
    buf += utf8.decode(part.value, {stream: true});
    for (let i; !done && (i = buf.indexOf("\\n\\n")) >= 0; buf = buf.slice(i + 2)) {
      const event = buf.slice(0, i);
      if (event === "data: [DONE]") done = true;
      else if (event.startsWith("data: "))
        for (const c of JSON.parse(event.slice(6)).choices)
          if (c.delta.content) { text += c.delta.content; chunks++; }
    }
  }
  return {ok: true, text, chunks, done};
}
window.result = chat().catch(e => ({ok: false, error: String(e)})).then(res => {
  document.getElementById("out").textContent = JSON.stringify(res);
  return res;
});
</script></body></html>"""


class _PageHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        body = PAGE.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def page_ports() -> Iterator[tuple[int, int]]:
    """Two page servers: the second port is the one whose app.example origin is allowed."""
    servers = [http.server.ThreadingHTTPServer(("127.0.0.1", 0), _PageHandler) for _ in range(2)]
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in servers]
    for t in threads:
        t.start()
    try:
        yield servers[0].server_address[1], servers[1].server_address[1]
    finally:
        for s in servers:
            s.shutdown()
            s.server_close()


@pytest.fixture(scope="module")
def server(smollm2: Path, page_ports: tuple[int, int], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    log = tmp_path_factory.mktemp("serve-web") / "serve.log"
    args = ["--api-key", API_KEY, "--strict-model", "--cors-origin", f"http://app.example:{page_ports[1]}"]
    with running_server(smollm2, args, log) as srv:
        yield srv


@pytest.fixture(scope="module")
def model_id(server: Server) -> str:
    return httpx.get(f"{server.url}/health", timeout=10).json()["model"]


# --- CORS as the browser's requests see it ----------------------------------------------------
@pytest.mark.parametrize("origin", ["http://localhost:5173", "http://127.0.0.1:8000", "https://localhost",
                                    "http://[::1]:3000"])
def test_local_origins_are_allowed_by_default(server: Server, origin: str) -> None:
    url = f"{server.url}/v1/chat/completions"
    pre = httpx.options(url, headers={"Origin": origin, **PREFLIGHT}, timeout=30)
    assert pre.status_code == 200, pre.text
    assert pre.headers["access-control-allow-origin"] == origin
    assert {"authorization", "content-type"} <= set(pre.headers["access-control-allow-headers"].split(","))
    assert "POST" in pre.headers["access-control-allow-methods"]
    # the request itself still needs the key; its 401 is readable by the page
    r = httpx.post(url, json={"messages": CHAT}, headers={"Origin": origin}, timeout=30)
    assert r.status_code == 401 and r.headers["access-control-allow-origin"] == origin
    assert r.json()["error"]["code"] == "invalid_api_key"
    r = httpx.get(f"{server.url}/v1/models", headers={"Origin": origin, "Authorization": f"Bearer {API_KEY}"},
                  timeout=30)
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == origin


@pytest.mark.parametrize("origin", ["https://evil.example", "http://localhost.evil.example",
                                    "http://127.0.0.1.evil.example:8000", "null"])
def test_other_origins_are_refused_unless_allowed(server: Server, page_ports: tuple[int, int], origin: str) -> None:
    url = f"{server.url}/v1/chat/completions"
    pre = httpx.options(url, headers={"Origin": origin, **PREFLIGHT}, timeout=30)
    assert pre.status_code == 400 and "access-control-allow-origin" not in pre.headers
    r = httpx.get(f"{server.url}/v1/models", headers={"Origin": origin, "Authorization": f"Bearer {API_KEY}"},
                  timeout=30)
    assert "access-control-allow-origin" not in r.headers
    allowed = f"http://app.example:{page_ports[1]}"
    pre = httpx.options(url, headers={"Origin": allowed, **PREFLIGHT}, timeout=30)
    assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == allowed


def test_a_star_allows_every_origin(smollm2: Path) -> None:
    """In process: CORS is answered before any route or model is used."""
    from fastapi.testclient import TestClient

    from sdfp_edge.server.app import create_app
    from sdfp_edge.server.settings import Settings

    model: Any = SimpleNamespace(path=smollm2)  # never used: no request gets past the key
    http = TestClient(create_app(Settings(api_key=API_KEY, cors_origins=("*",)), model))
    pre = http.options("/v1/chat/completions", headers={"Origin": "https://anything.example", **PREFLIGHT})
    assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == "*"
    r = http.post("/v1/chat/completions", json={"messages": CHAT}, headers={"Origin": "https://x.example"})
    assert r.status_code == 401 and r.headers["access-control-allow-origin"] == "*"


def test_a_malformed_cors_origin_is_a_usage_error(tmp_path: Path) -> None:
    out = subprocess.run(sdfp_edge_command() + ["serve", "--cors-origin", "app.example/path", "--model",
                                                str(tmp_path / "never-opened.gguf")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1].startswith("error: --cors-origin 'app.example/path'")


# --- the model name ---------------------------------------------------------------------------
def test_strict_model_refuses_other_names(server: Server, model_id: str) -> None:
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0, timeout=300)
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-4o", messages=CHAT, max_tokens=4)
    assert e.value.body["code"] == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-3.5-turbo-instruct", prompt="Hi", max_tokens=4, stream=True)
    r = client.chat.completions.create(model=model_id, messages=CHAT, max_tokens=4, temperature=0)
    assert r.model == model_id and r.choices[0].message.content


# --- a real browser ---------------------------------------------------------------------------
def _chat_in_browser(server: Server, model_id: str, page: str, *, timeout: float = 300) -> dict[str, Any]:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is absent (Debian: apt-get install -y chromium)")
    query = httpx.QueryParams(api=server.url, key=API_KEY, model=model_id, ask=CHAT[0]["content"])
    with Chromium(f"{page}/?{query}", extra_flags=["--host-resolver-rules=MAP app.example 127.0.0.1"]) as browser:
        return browser.wait_for("result", timeout=timeout)


def test_a_page_on_localhost_streams_a_chat_reply(server: Server, model_id: str,
                                                  page_ports: tuple[int, int]) -> None:
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0, timeout=300)
    expected = client.chat.completions.create(model=model_id, messages=CHAT, max_tokens=12,
                                              temperature=0).choices[0].message.content
    got = _chat_in_browser(server, model_id, f"http://localhost:{page_ports[0]}")
    assert got == {"ok": True, "text": expected, "chunks": got.get("chunks"), "done": True}, got
    assert got["chunks"] > 1  # streamed, not one blob


def test_a_foreign_page_is_blocked_unless_its_origin_is_allowed(server: Server, model_id: str,
                                                                page_ports: tuple[int, int]) -> None:
    refused = '"OPTIONS /v1/chat/completions HTTP/1.1" 400'
    before = server.log_text().count(refused)
    blocked = _chat_in_browser(server, model_id, f"http://app.example:{page_ports[0]}")
    assert blocked == {"ok": False, "error": "TypeError: Failed to fetch"}
    assert server.log_text().count(refused) == before + 1  # the server refused its preflight
    allowed = _chat_in_browser(server, model_id, f"http://app.example:{page_ports[1]}")
    assert allowed["ok"] and allowed["done"] and allowed["text"], allowed
