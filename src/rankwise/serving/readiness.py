"""Wait for a ``rankwise serve`` process to report ready (used by the tests, the load benchmark, scripts)."""

from __future__ import annotations

import subprocess
import time

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
