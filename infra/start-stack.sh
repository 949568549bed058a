#!/usr/bin/env bash
# Start kdflow's single-machine stack on the loopback: [buckets] -> Prefect server -> [MLflow server].
# Everything it keeps survives a restart: Prefect's and MLflow's databases (PostgreSQL, or SQLite under the stack
# directory) and MLflow's artifacts (a directory under the stack directory, or a real S3 endpoint).
#
#   infra/start-stack.sh            # Prefect on PostgreSQL (database kdflow_prefect, created if missing)
#   KDFLOW_PREFECT_DB=sqlite infra/start-stack.sh    # Prefect on SQLite under .kdflow/stack/
#   KDFLOW_S3_ENDPOINT_URL=http://minio:9000 infra/start-stack.sh   # MLflow's artifacts on that S3; every bucket
#                                                    # the configs name is created there
#
# Each service runs in its own session (setsid) so infra/stop-stack.sh can stop it and its children by the
# process-group id it records. Pids and logs: .kdflow/stack/{prefect,mlflow}.{pid,log}. A service whose
# recorded pid is still alive is left running. MLflow is started only if mlflow/start-server.sh exists
# (settings in mlflow/server.env; PostgreSQL backend) unless KDFLOW_START_MLFLOW=0.
#
# Environment (defaults):
#   PREFECT_PORT=4200                 Prefect API/UI port (http://127.0.0.1:$PREFECT_PORT/api)
#   KDFLOW_PREFECT_DB=postgres        postgres | sqlite
#   KDFLOW_PREFECT_DB_URL=postgresql+asyncpg://postgres@127.0.0.1:5432/kdflow_prefect
#   PREFECT_HOME=.kdflow/prefect      Prefect's profile/home (shared with the `kdflow` commands)
#   KDFLOW_STACK_DIR=.kdflow/stack    pids, logs and the stack's state (prefect.db, mlartifacts/)
#   KDFLOW_S3_ENDPOINT_URL=(unset)    unset: MLflow's artifacts in $KDFLOW_STACK_DIR/mlartifacts. Set (any S3 API
#                                     endpoint: MinIO, Ceph, https://s3.<region>.amazonaws.com): artifacts on
#                                     $MLFLOW_ARTIFACTS_DESTINATION (mlflow/server.env) there, and the buckets of
#                                     that and of every s3:// URI in $KDFLOW_STACK_CONFIGS are created if missing.
#                                     Credentials: the boto3 chain of this environment (AWS_*), never printed.
#   KDFLOW_STACK_CONFIGS="infra/kdflow-production.yaml infra/kdflow-production-teacher.yaml"
#   KDFLOW_STACK_TIMEOUT=120          seconds to wait for each service to be healthy
#   PREFECT_SERVER_API_AUTH_STRING    user:password: the Prefect server refuses requests without it (401); clients
#                                     (kdflow, worker, serve, flow runs) set PREFECT_API_AUTH_STRING to the same
#   KDFLOW_MLFLOW_AUTH=0              1: MLflow's basic-auth app (mlflow/start-server.sh: also set MLFLOW_AUTH_CONFIG_PATH,
#                                     MLFLOW_FLASK_SERVER_SECRET_KEY, MLFLOW_AUTH_ADMIN_PASSWORD on the first start)
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
bin="$repo/.venv/bin"
[[ -x "$bin/prefect" ]] || bin="$(dirname "$(command -v prefect)")"

stack="${KDFLOW_STACK_DIR:-$repo/.kdflow/stack}"
mkdir -p "$stack"
timeout_s="${KDFLOW_STACK_TIMEOUT:-120}"
host=127.0.0.1
prefect_port="${PREFECT_PORT:-4200}"
export PREFECT_HOME="${PREFECT_HOME:-$repo/.kdflow/prefect}"
export PREFECT_SERVER_ANALYTICS_ENABLED="${PREFECT_SERVER_ANALYTICS_ENABLED:-false}"

log() { echo "start-stack.sh: $*" >&2; }

# alive NAME: whether .kdflow/stack/NAME.pid names a running process.
alive() { [[ -f "$stack/$1.pid" ]] && kill -0 "$(cat "$stack/$1.pid")" 2>/dev/null; }

# launch NAME CMD...: run CMD in a new session, output to NAME.log, pid (= process-group id) to NAME.pid.
launch() {
    local name="$1"; shift
    setsid "$@" >>"$stack/$name.log" 2>&1 < /dev/null &
    echo $! > "$stack/$name.pid"
    log "$name started (pid $!, log $stack/$name.log)"
}

# wait_http NAME URL: poll URL until it answers 2xx; fail with the log's tail if the process dies or time runs out.
wait_http() {
    local name="$1" url="$2" deadline=$((SECONDS + timeout_s))
    until curl -fsS -o /dev/null --max-time 5 "$url" 2>/dev/null; do
        if ! alive "$name"; then
            log "$name exited before it was healthy; last lines of $stack/$name.log:"; tail -n 30 "$stack/$name.log" >&2
            exit 1
        fi
        if (( SECONDS > deadline )); then
            log "$name not healthy after ${timeout_s}s at $url; last lines of $stack/$name.log:"; tail -n 30 "$stack/$name.log" >&2
            exit 1
        fi
        sleep 1
    done
    log "$name healthy at $url"
}

# --- Where MLflow keeps artifacts: a directory of the stack, or a real S3 endpoint (buckets first) -------------
if [[ -n "${KDFLOW_LOCAL_S3:-}" && "${KDFLOW_LOCAL_S3}" != 0 ]]; then
    log "KDFLOW_LOCAL_S3 is gone: its moto S3 kept everything in memory and lost it on a restart. MLflow's"
    log "artifacts now stay in $stack/mlartifacts; for S3 set KDFLOW_S3_ENDPOINT_URL to a real endpoint."
    exit 2
fi
s3_endpoint="${KDFLOW_S3_ENDPOINT_URL:-}"
if [[ -n "$s3_endpoint" ]]; then
    export MLFLOW_S3_ENDPOINT_URL="$s3_endpoint"
    artifacts="${MLFLOW_ARTIFACTS_DESTINATION:-$(sed -n 's/^MLFLOW_ARTIFACTS_DESTINATION=//p' mlflow/server.env 2>/dev/null || true)}"
    [[ "$artifacts" == s3://* ]] || { log "KDFLOW_S3_ENDPOINT_URL is set but MLflow's artifacts go to '$artifacts', not s3://"; exit 2; }
    export MLFLOW_ARTIFACTS_DESTINATION="$artifacts"
    read -r -a configs <<< "${KDFLOW_STACK_CONFIGS:-infra/kdflow-production.yaml infra/kdflow-production-teacher.yaml}"
    # Every bucket named by MLflow's destination or by an s3:// value anywhere in the configs, created if missing.
    "$bin/python" - "$s3_endpoint" "$artifacts" "${configs[@]}" <<'PY'
import sys

import boto3
import yaml


def s3_uris(node):
    """Every string starting with s3:// in a parsed YAML document."""
    if isinstance(node, dict):
        node = list(node.values())
    if isinstance(node, list):
        return [uri for item in node for uri in s3_uris(item)]
    return [node] if isinstance(node, str) and node.startswith("s3://") else []


endpoint, artifacts, *configs = sys.argv[1:]
uris = [artifacts]
for path in configs:
    try:
        with open(path) as f:
            uris += s3_uris(yaml.safe_load(f))
    except (OSError, yaml.YAMLError) as exc:
        sys.exit(f"start-stack.sh: cannot read the config {path}: {exc}")
s3 = boto3.client("s3", endpoint_url=endpoint)
try:
    existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
    for bucket in sorted({uri[len("s3://") :].split("/", 1)[0] for uri in uris}):
        if bucket not in existing:
            region = s3.meta.region_name
            where = {} if region in (None, "us-east-1") else {"CreateBucketConfiguration": {"LocationConstraint": region}}
            s3.create_bucket(Bucket=bucket, **where)
        print(f"start-stack.sh: bucket s3://{bucket} ready on {endpoint}", file=sys.stderr)
except Exception as exc:  # one line naming the endpoint, not a traceback
    sys.exit(f"start-stack.sh: S3 at {endpoint}: {type(exc).__name__}: {exc}")
PY
else
    # Local disk under the stack directory: kept across restarts, served to clients by MLflow (--serve-artifacts).
    export MLFLOW_ARTIFACTS_DESTINATION="${MLFLOW_ARTIFACTS_DESTINATION:-$stack/mlartifacts}"
    if [[ "$MLFLOW_ARTIFACTS_DESTINATION" == s3://* ]]; then
        log "MLFLOW_ARTIFACTS_DESTINATION is $MLFLOW_ARTIFACTS_DESTINATION: set KDFLOW_S3_ENDPOINT_URL too (the S3 to use)"
        exit 2
    fi
    mkdir -p "$MLFLOW_ARTIFACTS_DESTINATION"
    export MLFLOW_S3_ENDPOINT_URL=""  # set and empty: mlflow/server.env's endpoint is not used
    log "MLflow artifacts in $MLFLOW_ARTIFACTS_DESTINATION"
fi

# --- Prefect server ---------------------------------------------------------------------------------------
if [[ "${KDFLOW_PREFECT_DB:-postgres}" == sqlite ]]; then
    db_url="sqlite+aiosqlite:///$stack/prefect.db"
else
    db_url="${KDFLOW_PREFECT_DB_URL:-postgresql+asyncpg://postgres@$host:5432/kdflow_prefect}"
    pg='^postgres(ql)?(\+[A-Za-z0-9_]+)?://(([^:@/]*)(:([^@/]*))?@)?([^:/?]*)(:([0-9]+))?/([^?]+)'
    [[ "$db_url" =~ $pg ]] || { log "KDFLOW_PREFECT_DB_URL is not a postgresql URL: ${db_url%%://*}://..."; exit 2; }
    pg_user="${BASH_REMATCH[4]:-postgres}" pg_password="${BASH_REMATCH[6]:-}"
    pg_host="${BASH_REMATCH[7]:-$host}" pg_port="${BASH_REMATCH[9]:-5432}" pg_db="${BASH_REMATCH[10]}"
    pg_exists() {
        PGPASSWORD="$pg_password" psql -h "$pg_host" -p "$pg_port" -U "$pg_user" -d postgres -tAc \
            "SELECT 1 FROM pg_database WHERE datname = '${pg_db//\'/\'\'}'" | grep -q 1
    }
    if ! pg_exists; then
        log "creating PostgreSQL database $pg_db on $pg_host:$pg_port"
        PGPASSWORD="$pg_password" createdb -h "$pg_host" -p "$pg_port" -U "$pg_user" "$pg_db" || pg_exists
    fi
fi
if alive prefect; then log "prefect already running (pid $(cat "$stack/prefect.pid"))"; else
    PREFECT_SERVER_DATABASE_CONNECTION_URL="$db_url" \
        launch prefect "$bin/prefect" server start --host "$host" --port "$prefect_port"
fi
wait_http prefect "http://$host:$prefect_port/api/health"

# --- MLflow server ----------------------------------------------------------------------------------------
if [[ -f mlflow/start-server.sh && "${KDFLOW_START_MLFLOW:-1}" != 0 ]]; then
    mlflow_port="${KDFLOW_MLFLOW_PORT:-$(sed -n 's/^KDFLOW_MLFLOW_PORT=//p' mlflow/server.env 2>/dev/null || true)}"
    mlflow_port="${mlflow_port:-5000}"
    if alive mlflow; then log "mlflow already running (pid $(cat "$stack/mlflow.pid"))"; else
        KDFLOW_MLFLOW_PORT="$mlflow_port" launch mlflow bash mlflow/start-server.sh
    fi
    wait_http mlflow "http://$host:$mlflow_port/health"
    echo "export MLFLOW_TRACKING_URI=http://$host:$mlflow_port"
fi

echo "export PREFECT_API_URL=http://$host:$prefect_port/api"
if [[ -n "$s3_endpoint" ]]; then
    # For the flows' s3:// data, logit store and logs (infra/kdflow-production.yaml); credentials: your AWS_*.
    echo "export AWS_ENDPOINT_URL_S3=$s3_endpoint"
fi
if [[ -n "${PREFECT_SERVER_API_AUTH_STRING:-}" ]]; then
    log "Prefect's API requires basic auth: set PREFECT_API_AUTH_STRING (the same user:password) for every client"
fi
log "stack up; stop it with infra/stop-stack.sh"
