#!/usr/bin/env bash
# Overload of `rankwise serve`: 64 connections from wrk (C, so the load generator does not compete with the
# server for the GIL), 100 SciFact passages per /v1/rerank request with timeout_ms 200, score cache off,
# for each --max-in-flight value. Prints wrk's latency percentiles (client side, every answer, shed 503s
# included), the server's own p99 (from its audit log) for answered and shed requests, the shed and
# degraded counts, and writes
# benchmarks/results/serve_overload.json.
#   bash benchmarks/serve_overload.sh [MAX_IN_FLIGHT ...]      (default: 1000 32 8; needs Debian's wrk)
set -euo pipefail
cd "$(dirname "$0")/.."
command -v wrk >/dev/null || { echo "error: wrk is not installed (apt-get install wrk)"; exit 2; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
HF_HUB_OFFLINE=1 .venv/bin/python - "$work" <<'PY'
import json, sys
from pathlib import Path
sys.path.insert(0, "benchmarks")
from common import DEFAULT_SCIFACT
from serve_load import load_inputs, small_model
work = Path(sys.argv[1])
small_model(work / "model")
queries, passages, _ = load_inputs(Path(DEFAULT_SCIFACT), 100)
(work / "body.json").write_text(json.dumps({"query": queries[0], "documents": passages[:100], "timeout_ms": 200}))
(work / "post.lua").write_text(f'''wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = io.open("{work}/body.json", "r"); wrk.body = f:read("*a"); f:close()
done = function(summary, latency, requests)
  io.write(string.format("LAT %.1f %.1f %.1f %.1f\\n", latency:percentile(50)/1000, latency:percentile(90)/1000,
    latency:percentile(99)/1000, latency.max/1000))
end
''')
PY
port=18080
results=()
for mif in "${@:-1000 32 8}"; do
  for m in $mif; do
    HF_HUB_OFFLINE=1 .venv/bin/python -m rankwise serve --reranker "$work/model" --cache-size 0 \
      --port $port --max-in-flight "$m" --audit "$work/audit-$m.sqlite" > "$work/server.log" 2>&1 &
    server=$!
    for _ in $(seq 120); do curl -sf -o /dev/null "localhost:$port/readyz" && break; sleep 1; done
    out=$(wrk -t2 -c64 -d30s --timeout 30s -s "$work/post.lua" "http://127.0.0.1:$port/v1/rerank")
    metrics=$(curl -s "localhost:$port/metrics")
    kill $server; wait $server 2>/dev/null || true  # stopping commits the audit rows still queued
    read -r p50 p90 p99 max <<<"$(grep '^LAT' <<<"$out" | cut -d' ' -f2-)"
    total=$(grep -oP '\d+(?= requests in)' <<<"$out")
    non2xx=$(grep -oP '(?<=Non-2xx or 3xx responses: )\d+' <<<"$out" || echo 0)
    degraded=$(grep -oP '(?<=^rankwise_degraded_total\{endpoint="rerank"\} )[\d.]+' <<<"$metrics" || echo 0)
    # the server's own latency per request, from its audit log (every request, answered or shed, with the
    # time from arrival to answer): exact percentiles, where the histogram's buckets are 0.25-0.5-1 s wide
    read -r server_p99 shed_p99 <<<"$(.venv/bin/python - "$work/audit-$m.sqlite" <<'PY'
import sqlite3, sys
import numpy as np
rows = sqlite3.connect(sys.argv[1]).execute("SELECT status, latency_ms FROM requests WHERE endpoint = '/v1/rerank'").fetchall()
def p99(status):
    values = [ms for code, ms in rows if (code == 503) == (status == 503)]
    return f"{np.percentile(values, 99):.1f}" if values else "null"
print(p99(200), p99(503))
PY
)"
    echo "max-in-flight $m: $total answers in 30 s, $non2xx shed (503), ${degraded%.*} degraded; client p50 $p50 ms, p90 $p90 ms, p99 $p99 ms, max $max ms; server p99 $server_p99 ms answered, $shed_p99 ms shed (budget 200 ms)"
    results+=("{\"max_in_flight\": $m, \"answers\": $total, \"shed\": $non2xx, \"degraded\": ${degraded%.*}, \"p50_ms\": $p50, \"p90_ms\": $p90, \"p99_ms\": $p99, \"max_ms\": $max, \"server_p99_ms\": $server_p99, \"server_shed_p99_ms\": $shed_p99}")
  done
done
cpu=$(lscpu | grep -m1 'Model name' | cut -d: -f2 | xargs)
vnni=$(grep -q avx512_vnni /proc/cpuinfo && echo avx512-vnni || echo avx2)
printf '{"what": "64 wrk connections, 30 s per setting, /v1/rerank with 100 SciFact passages and timeout_ms 200, cache off, small model", "command": "bash benchmarks/serve_overload.sh %s", "cpu": "%s (%s)", "runs": [%s]}\n' \
  "$*" "$cpu" "$vnni" "$(IFS=,; echo "${results[*]}")" > benchmarks/results/serve_overload.json
echo "wrote benchmarks/results/serve_overload.json"
