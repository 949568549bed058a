#!/usr/bin/env bash
# Stop what infra/start-stack.sh started: each service's process group, by the pid recorded in
# .kdflow/stack/<name>.pid (SIGTERM, then SIGKILL after KDFLOW_STOP_TIMEOUT seconds, default 20).
# Order: MLflow, Prefect (the reverse of the start), then an s3 pid left by an older stack (moto). Logs and
# the stack's state (prefect.db, mlartifacts/) are kept.
set -uo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
stack="${KDFLOW_STACK_DIR:-$repo/.kdflow/stack}"
grace="${KDFLOW_STOP_TIMEOUT:-20}"

stop() {
    local name="$1" pidfile="$stack/$1.pid" pid
    [[ -f "$pidfile" ]] || return 0
    pid="$(cat "$pidfile")"
    if ! kill -0 "$pid" 2>/dev/null; then
        echo "stop-stack.sh: $name (pid $pid) was not running" >&2
        rm -f "$pidfile"; return 0
    fi
    # setsid made the service a session and process-group leader: the group id is its pid.
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null
    for ((i = 0; i < grace * 4; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.25
    done
    if kill -0 "$pid" 2>/dev/null; then
        echo "stop-stack.sh: $name (pid $pid) ignored SIGTERM for ${grace}s; killing its process group" >&2
    fi
    # Children that outlive their leader (uvicorn/gunicorn workers) are still in the group.
    kill -KILL -- "-$pid" 2>/dev/null || true
    rm -f "$pidfile"
    echo "stop-stack.sh: $name stopped (pid $pid)" >&2
}

for name in mlflow prefect s3; do stop "$name"; done
