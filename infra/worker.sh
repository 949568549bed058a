#!/usr/bin/env bash
# Production-style execution: register prefect.yaml's deployments on the server and run a worker.
#
#   export PREFECT_API_URL=http://127.0.0.1:4200/api     # a running server (infra/start-stack.sh)
#   infra/worker.sh [extra `kdflow worker` options: --limit N, --name NAME]
#
# 1. creates the process work pool `kdflow-pool` if it is missing (KDFLOW_WORK_POOL to rename it; rename it in
#    prefect.yaml too);
# 2. `prefect deploy --all` from the repository root (the deployments, their cron schedules and the retrain
#    trigger on kdflow.drift.detected); KDFLOW_DEPLOY=0 skips it;
# 3. execs `kdflow worker --pool kdflow-pool` (python -m app worker): a Prefect process worker that polls the
#    pool and runs each flow run as a local process in this checkout (prefect.yaml's pull step), with this
#    environment (AWS_*, AWS_ENDPOINT_URL_S3 ... for infra/kdflow-production.yaml's S3).
#    Not `prefect worker start`: on SIGTERM that one polled on until killed (Prefect 3.9 re-sends the signal to
#    itself as a SIGINT it never acts on); this one stops within seconds of SIGTERM or Ctrl-C after sending
#    its flow-run processes SIGTERM (their runs end Crashed; it waits up to 20 s for them). `exec`: the
#    signal reaches it directly.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
bin="$repo/.venv/bin"
[[ -x "$bin/prefect" ]] || bin="$(dirname "$(command -v prefect)")"
export PATH="$bin:$PATH"  # the worker's flow-run processes use this Python
pool="${KDFLOW_WORK_POOL:-kdflow-pool}"
export PREFECT_API_URL="${PREFECT_API_URL:-http://127.0.0.1:4200/api}"

if ! curl -fsS -o /dev/null --max-time 5 "$PREFECT_API_URL/health"; then
    echo "worker.sh: no Prefect server answers at $PREFECT_API_URL (start one: infra/start-stack.sh)" >&2
    exit 1
fi
if prefect work-pool inspect "$pool" >/dev/null 2>&1; then
    echo "worker.sh: work pool $pool exists" >&2
else
    prefect work-pool create "$pool" --type process
fi
if [[ "${KDFLOW_DEPLOY:-1}" != 0 ]]; then
    prefect --no-prompt deploy --all
fi
exec "$bin/python" -m app worker --pool "$pool" "$@"
