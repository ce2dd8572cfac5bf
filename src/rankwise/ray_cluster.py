"""Connecting to Ray for batch work: ``--ray local`` (a cluster of this machine's cores, started here),
``--ray auto`` (the cluster this machine belongs to, as ``ray start`` left it) or ``--ray ray://HOST:10001``.

Ray is an optional dependency (``pip install 'rankwise[ray]'``); nothing imports it until ``--ray`` is
given. Work sent to Ray is split so that results are keyed (a passage's row, a query's id): a task Ray
retries after a worker died replaces its own results and never adds a second copy.
"""

from __future__ import annotations

import os
from typing import Any

from rankwise.errors import RankwiseError


class RayError(RankwiseError):
    """Ray is not installed, or the cluster cannot be reached."""


def check_address(address: str) -> str:
    """``address`` when it is one ``--ray`` takes (checked before any work starts), else a one-line error."""
    if address not in ("local", "auto") and not address.startswith("ray://"):
        raise RayError(f"--ray takes local, auto or ray://HOST:PORT (got {address!r})")
    return address


def connect_ray(address: str, *, num_cpus: int | None = None) -> Any:
    """The ``ray`` module, connected to ``address`` (``local``, ``auto`` or ``ray://...``); a no-op when connected."""
    check_address(address)
    try:
        import ray
    except ImportError:
        raise RayError("--ray needs Ray: pip install 'rankwise[ray]'") from None
    if ray.is_initialized():
        return ray
    os.environ.setdefault("RAY_ACCEPT_CALLBACKS_FROM_ANY_THREAD", "1")
    try:
        if address == "local":
            ray.init(num_cpus=num_cpus or os.cpu_count() or 1, include_dashboard=False, log_to_driver=False,
                     configure_logging=False)
        else:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
    except Exception as err:  # noqa: BLE001 - Ray raises many types for an unreachable cluster
        raise RayError(f"cannot connect to the Ray cluster at {address} ({' '.join(str(err).split())[:300]})") from None
    return ray


def ray_failure(err: BaseException) -> str:
    """The first line of the error a worker raised (Ray wraps it in a task or actor error with its traceback)."""
    from ray.exceptions import RayTaskError

    cause = err.cause if isinstance(err, RayTaskError) and err.cause is not None else err
    text = str(cause).strip().splitlines()
    lines = [line for line in text if line.strip() and not line.startswith((" ", "Traceback"))]
    return " ".join((lines[-1] if lines else type(cause).__name__).split())[:400]


def cluster_cpus(ray: Any) -> int:
    return max(1, int(ray.cluster_resources().get("CPU", 1)))
