#!/usr/bin/env bash
# Start kdflow's single-machine stack on the loopback: [moto S3] -> Prefect server -> [MLflow server].
#
#   infra/start-stack.sh            # Prefect on PostgreSQL (database kdflow_prefect, created if missing)
#   KDFLOW_PREFECT_DB=sqlite infra/start-stack.sh    # Prefect on SQLite under .kdflow/stack/
#   KDFLOW_LOCAL_S3=1 infra/start-stack.sh           # also moto_server as S3 on 127.0.0.1:${S3_PORT:-9000}
#
# Each service runs in its own session (setsid) so infra/stop-stack.sh can stop it and its children by the
# process-group id it records. Pids and logs: .kdflow/stack/{s3,prefect,mlflow}.{pid,log}. A service whose
# recorded pid is still alive is left running. MLflow is started only if mlflow/start-server.sh exists
# (settings in mlflow/server.env; PostgreSQL backend, S3 artifacts) unless KDFLOW_START_MLFLOW=0.
#
# Environment (defaults):
#   PREFECT_PORT=4200                 Prefect API/UI port (http://127.0.0.1:$PREFECT_PORT/api)
#   KDFLOW_PREFECT_DB=postgres        postgres | sqlite
#   KDFLOW_PREFECT_DB_URL=postgresql+asyncpg://postgres@127.0.0.1:5432/kdflow_prefect
#   PREFECT_HOME=.kdflow/prefect      Prefect's profile/home (shared with the `kdflow` commands)
#   KDFLOW_LOCAL_S3=0, S3_PORT=9000   moto S3 for MLflow artifacts and the logit store (bucket created)
#   KDFLOW_STACK_DIR=.kdflow/stack    pids and logs
#   KDFLOW_STACK_TIMEOUT=120          seconds to wait for each service to be healthy
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
s3_port="${S3_PORT:-9000}"
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

# --- S3 (moto), first: MLflow's artifact store may live on it --------------------------------------------
if [[ "${KDFLOW_LOCAL_S3:-0}" == 1 ]]; then
    export AWS_ACCESS_KEY_ID="${AWS_ACCESS_KEY_ID:-testing}" AWS_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY:-testing}"
    export AWS_DEFAULT_REGION="${AWS_DEFAULT_REGION:-us-east-1}"
    export MLFLOW_S3_ENDPOINT_URL="${MLFLOW_S3_ENDPOINT_URL:-http://$host:$s3_port}"
    if alive s3; then log "s3 already running (pid $(cat "$stack/s3.pid"))"; else
        launch s3 "$bin/moto_server" -H "$host" -p "$s3_port"
    fi
    wait_http s3 "http://$host:$s3_port/moto-api/"
    # The bucket MLflow's artifacts go to (mlflow/server.env), created if missing.
    artifacts="${MLFLOW_ARTIFACTS_DESTINATION:-$(sed -n 's/^MLFLOW_ARTIFACTS_DESTINATION=//p' mlflow/server.env 2>/dev/null || true)}"
    if [[ "$artifacts" == s3://* ]]; then
        bucket="${artifacts#s3://}"; bucket="${bucket%%/*}"
        "$bin/python" - "$MLFLOW_S3_ENDPOINT_URL" "$bucket" <<'PY'
import sys, boto3
endpoint, bucket = sys.argv[1:]
s3 = boto3.client("s3", endpoint_url=endpoint)
if bucket not in {b["Name"] for b in s3.list_buckets().get("Buckets", [])}:
    s3.create_bucket(Bucket=bucket)
print(f"start-stack.sh: bucket s3://{bucket} ready on {endpoint}", file=sys.stderr)
PY
    fi
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
if [[ "${KDFLOW_LOCAL_S3:-0}" == 1 ]]; then
    # Credentials go to a file only its owner can read, never to the terminal or a log: print how to load them.
    creds="$stack/s3-credentials.env"
    (umask 077; printf 'export AWS_ACCESS_KEY_ID=%q AWS_SECRET_ACCESS_KEY=%q AWS_DEFAULT_REGION=%q\n' \
        "$AWS_ACCESS_KEY_ID" "$AWS_SECRET_ACCESS_KEY" "$AWS_DEFAULT_REGION" > "$creds")
    echo "export MLFLOW_S3_ENDPOINT_URL=$MLFLOW_S3_ENDPOINT_URL AWS_ENDPOINT_URL_S3=$MLFLOW_S3_ENDPOINT_URL"
    echo ". $creds  # AWS credentials of the stack's S3 (mode 600; values not printed)"
fi
log "stack up; stop it with infra/stop-stack.sh"
