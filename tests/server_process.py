"""`sdfp-edge serve` as a real process on a free loopback port, for the server test modules."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx

STARTUP_TIMEOUT = 180  # model load on 2 shared cores


def sdfp_edge_command() -> list[str]:
    script = Path(sys.executable).with_name("sdfp-edge")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from sdfp_edge.cli.main import main; main()"]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.proc, self.port, self.log = proc, port, log
        self.url = f"http://127.0.0.1:{port}"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@contextlib.contextmanager
def running_server(model: Path, args: Sequence[str], log: Path) -> Iterator[Server]:
    """Start the server, wait for /health, yield it; stop it with SIGTERM and check a clean end."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "SDFP_EDGE_API_KEY"}
    cmd = sdfp_edge_command() + ["serve", "--model", str(model), "--threads", "2", "-c", "1024",
                                 "--port", str(port), *args]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    srv = Server(proc, port, log)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            assert proc.poll() is None, f"the server exited early:\n{srv.log_text()}"
            try:
                if httpx.get(f"{srv.url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"no /health after {STARTUP_TIMEOUT} s:\n{srv.log_text()}"
            time.sleep(0.5)
        yield srv
    finally:
        proc.terminate()
        try:
            rc = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise AssertionError(f"the server ignored SIGTERM for 30 s:\n{srv.log_text()[-3000:]}") from None
    # uvicorn re-raises the signal it stopped on, after a clean shutdown
    assert rc in (0, -signal.SIGTERM), f"the server's shutdown failed ({rc}):\n{srv.log_text()[-3000:]}"
    assert "Application shutdown complete" in srv.log_text()
