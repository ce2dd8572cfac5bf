"""``rankwise serve --ray ADDRESS --replicas N``: the same server as N Ray Serve replicas behind Ray's proxy.

Each replica is the whole rankwise app — the same route table, keys, roles, admission, audit and stores —
built on the replica from the same :class:`~rankwise.serving.config.ServeConfig` (Ray Serve's ASGI
builder), so a request is answered exactly as the plain server answers it. Each replica micro-batches
across the requests it receives with rankwise's own batcher, which does what ``@serve.batch`` would and
is the one measured in the benchmarks. Ray Serve routes requests to replicas, restarts a replica that
dies (requests it held fail; the others keep being answered) and adds replicas without a restart of the
others (``serve.run`` again with a higher count). Per-replica state stays per replica: the rate limit
(N replicas allow N times ``--rate-limit`` in all), ``/metrics`` and the in-process score cache (use
``--cache redis://...`` to share it).

Several replicas must share their audit log and query log, so they need the PostgreSQL store
(``--store``) or no such log: SQLite files are one process's, and two writers would fork the audit chain.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any

from rankwise.ray_cluster import connect_ray
from rankwise.serving.config import ServeConfig, ServeConfigError

APP_NAME = "rankwise"


def check_replicable(config: ServeConfig, replicas: int) -> None:
    """Refuse, in one line, what several replicas cannot share."""
    if replicas < 1:
        raise ServeConfigError("--replicas must be at least 1")
    if replicas > 1:
        local = [flag for flag, where in (("--audit", config.audit), ("--feedback-db", config.loop.feedback))
                 if isinstance(where, Path)]
        if local:
            raise ServeConfigError(f"{replicas} replicas cannot share the SQLite file of {' and '.join(local)}: pass "
                                   "--store postgresql://... (one log for every replica), or turn it off with 'none'")
        if config.monitor.every_s is not None:
            raise ServeConfigError(f"--monitor-every would run the scheduled evaluation on each of the {replicas} "
                                   "replicas: run `rankwise monitor run` from one scheduler (cron) instead")


def _build_app(config: ServeConfig) -> Any:
    """Run on each replica: load the state there (index, models, stores) and return its ASGI app."""
    from rankwise.serving.app import create_app
    from rankwise.serving.state import load_state

    return create_app(load_state(config))


def serve_on_ray(config: ServeConfig, address: str, replicas: int, *, blocking: bool = True) -> None:
    """Deploy the server on the Ray cluster at ``address`` with ``replicas`` replicas on ``config.host:port``."""
    check_replicable(config, replicas)
    connect_ray(address)
    from ray import serve

    serve.start(http_options={"host": config.host, "port": config.port})
    def build() -> Any:  # a plain function: Ray Serve calls it on each replica (a partial would be taken for an app)
        return _build_app(config)

    ingress = serve.ingress(build)()
    deployment = serve.deployment(ingress, name=APP_NAME, num_replicas=replicas, ray_actor_options={"num_cpus": 1},
                                  max_ongoing_requests=config.limits.max_in_flight + 16, health_check_period_s=2,
                                  health_check_timeout_s=30)
    serve.run(deployment.bind(), name=APP_NAME, route_prefix="/", blocking=False)
    if not blocking:
        return
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())  # a process manager's stop: shut the cluster down too
    try:
        while not stop.wait(1):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        if address == "local":  # the cluster is this command's own
            serve.shutdown()
            import ray

            ray.shutdown()
        else:  # a shared cluster: take away only rankwise's application
            serve.delete(APP_NAME)
