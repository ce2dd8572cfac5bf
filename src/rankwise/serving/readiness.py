"""Start a ``rankwise serve`` process and wait until it is ready (used by the tests, the load benchmark, scripts)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx


def wait_until_ready(url: str, process: subprocess.Popen[bytes], timeout_s: float) -> str | None:
    """Poll ``url/readyz`` until it answers 200; return ``None``, or why the server never got ready."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return f"the server exited with code {process.returncode}"
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return None
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    return f"the server was not ready after {timeout_s:.0f} s"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServeProcess:
    """``python -m rankwise serve ARGS`` on a free 127.0.0.1 port, its output in ``log``, waited for.

    ``problem`` is ``None`` once ``/readyz`` said ready, else why it never did (the process is then
    already stopped); what that means — a failed test, a benchmark that exits — is the caller's call.
    """

    def __init__(self, args: Sequence[str], log: Path, *, timeout_s: float,
                 env: Mapping[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        with open(log, "wb") as fh:  # the child keeps its own handle
            self.proc = subprocess.Popen([sys.executable, "-m", "rankwise", "serve", "--host", "127.0.0.1",
                                          "--port", str(self.port), *args], stdout=fh, stderr=subprocess.STDOUT,
                                         env=env)
        self.problem = wait_until_ready(self.url, self.proc, timeout_s)
        if self.problem:
            self.stop()

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not exited within 30 s."""
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
