"""The reranking service behind ``rankwise serve``.

Modules, in the order a request meets them:

* :mod:`~rankwise.serving.config` — :class:`ServeConfig`, every limit and setting in one value object,
  one frozen part per component;
* :mod:`~rankwise.serving.state` — :func:`load_state` opens the index, loads the reranker, connects cache,
  keys and audit log (user mistakes fail here, before the server listens);
* :mod:`~rankwise.serving.app` — :func:`create_app` assembles: routes from the table, auth, error bodies,
  middleware;
* :mod:`~rankwise.serving.handlers` — one module-level function per route, the serving state first;
* :mod:`~rankwise.serving.answer` — what follows every answer, in one step: metrics, audit fields, query
  log, drift signals, shadow offer;
* :mod:`~rankwise.serving.schemas` — request/response models (Cohere-compatible ``/v1/rerank``);
* :mod:`~rankwise.serving.service` — cached, batched scoring within a latency budget, and search;
* :mod:`~rankwise.serving.batcher` / :mod:`~rankwise.serving.scoring` — cross-request micro-batching;
* :mod:`~rankwise.serving.cache`, :mod:`~rankwise.serving.auth`, :mod:`~rankwise.serving.audit`,
  :mod:`~rankwise.serving.metrics` — score cache, API keys and rate limits, audit log, Prometheus metrics;

Nothing is imported here: the CLI (:mod:`rankwise.cli.serve`) is loaded on every run, and the serving
stack (FastAPI, uvicorn, torch) should load only when a serving command runs.
"""
