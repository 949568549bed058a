#!/usr/bin/env bash
# Start kdflow's MLflow tracking server: PostgreSQL backend store, artifacts proxied to S3.
#
# Settings come from mlflow/server.env (or the file named by KDFLOW_MLFLOW_ENV_FILE); any variable already
# set in the environment overrides the file. Creates the PostgreSQL database if it is missing, then execs
# `mlflow server` (so a supervisor's signals reach MLflow directly). Extra arguments go to `mlflow server`.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
env_file="${KDFLOW_MLFLOW_ENV_FILE:-$here/server.env}"

# Load KEY=value defaults; the environment wins.
if [[ -f "$env_file" ]]; then
    while IFS= read -r line || [[ -n "$line" ]]; do
        [[ "$line" =~ ^[[:space:]]*(#|$) ]] && continue
        key="${line%%=*}"
        value="${line#*=}"
        [[ "$key" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || { echo "start-server.sh: bad line in $env_file: $line" >&2; exit 2; }
        if [[ -z "${!key+set}" ]]; then export "$key=$value"; fi
    done < "$env_file"
fi

: "${MLFLOW_BACKEND_STORE_URI:?set MLFLOW_BACKEND_STORE_URI (see $env_file)}"
: "${MLFLOW_ARTIFACTS_DESTINATION:?set MLFLOW_ARTIFACTS_DESTINATION (see $env_file)}"
host="${KDFLOW_MLFLOW_HOST:-127.0.0.1}"
port="${KDFLOW_MLFLOW_PORT:-5000}"
workers="${KDFLOW_MLFLOW_WORKERS:-2}"
if [[ -z "${MLFLOW_S3_ENDPOINT_URL:-}" ]]; then unset MLFLOW_S3_ENDPOINT_URL; fi  # empty: AWS S3 itself

# The repository's venv if there is one, else whatever `mlflow` is on PATH.
mlflow_bin="${KDFLOW_MLFLOW_BIN:-}"
if [[ -z "$mlflow_bin" ]]; then
    if [[ -x "$here/../.venv/bin/mlflow" ]]; then mlflow_bin="$here/../.venv/bin/mlflow"; else mlflow_bin=mlflow; fi
fi

# postgresql[+driver]://[user[:password]@]host[:port]/database[?params]: create the database if missing.
# SQLAlchemy 2.1 maps a bare postgresql:// to the psycopg (3) driver; kdflow installs psycopg2-binary.
if [[ "$MLFLOW_BACKEND_STORE_URI" == postgresql://* ]]; then
    export MLFLOW_BACKEND_STORE_URI="postgresql+psycopg2://${MLFLOW_BACKEND_STORE_URI#postgresql://}"
fi
backend="${MLFLOW_BACKEND_STORE_URI%%://*}"  # for the log line: never print a password
pg='^postgres(ql)?(\+[A-Za-z0-9_]+)?://(([^:@/]*)(:([^@/]*))?@)?([^:/?]*)(:([0-9]+))?/([^?]+)'
if [[ "$MLFLOW_BACKEND_STORE_URI" =~ $pg ]]; then
    pg_user="${BASH_REMATCH[4]:-postgres}"
    pg_password="${BASH_REMATCH[6]:-}"
    pg_host="${BASH_REMATCH[7]:-127.0.0.1}"
    pg_port="${BASH_REMATCH[9]:-5432}"
    pg_db="${BASH_REMATCH[10]}"
    backend="postgresql $pg_host:$pg_port/$pg_db"
    if [[ -n "$pg_password" ]]; then export PGPASSWORD="$pg_password"; fi
    exists() {
        psql -h "$pg_host" -p "$pg_port" -U "$pg_user" -d postgres -tAc \
            "SELECT 1 FROM pg_database WHERE datname = '${pg_db//\'/\'\'}'" | grep -q 1
    }
    if ! exists; then
        echo "start-server.sh: creating database $pg_db on $pg_host:$pg_port" >&2
        # Tolerate a concurrent start that created it between the check and here.
        createdb -h "$pg_host" -p "$pg_port" -U "$pg_user" "$pg_db" || exists
    fi
    unset PGPASSWORD
fi

# KDFLOW_MLFLOW_AUTH=1: MLflow's basic-auth app (--app-name basic-auth; users and per-experiment/model permissions;
# Flask-WTF, from mlflow[auth] in the lock). Its settings: MLFLOW_AUTH_CONFIG_PATH, a copy of mlflow/basic_auth.ini
# whose database_uri names where users live (required here: MLflow's own default is basic_auth.db in whatever
# directory the server starts in). Secrets only from the environment, never printed: MLFLOW_FLASK_SERVER_SECRET_KEY
# (CSRF, the same on every server) and, on the first start, MLFLOW_AUTH_ADMIN_PASSWORD (>= 12 characters).
auth_args=()
auth_note=""
if [[ "${KDFLOW_MLFLOW_AUTH:-0}" == 1 ]]; then
    python_bin="$(dirname "$(command -v "$mlflow_bin")")/python"
    if ! "$python_bin" -c 'import flask_wtf' 2>/dev/null; then
        echo "start-server.sh: KDFLOW_MLFLOW_AUTH=1 needs MLflow's basic-auth app, which needs the Flask-WTF package (mlflow[auth]); it is not installed in $python_bin's environment: run 'make install'" >&2
        exit 2
    fi
    if [[ -z "${MLFLOW_AUTH_CONFIG_PATH:-}" || ! -f "${MLFLOW_AUTH_CONFIG_PATH:-}" ]]; then
        echo "start-server.sh: KDFLOW_MLFLOW_AUTH=1 needs MLFLOW_AUTH_CONFIG_PATH naming an existing file (a copy of $here/basic_auth.ini with your database_uri); got '${MLFLOW_AUTH_CONFIG_PATH:-}'" >&2
        exit 2
    fi
    if [[ -z "${MLFLOW_FLASK_SERVER_SECRET_KEY:-}" ]]; then
        echo "start-server.sh: KDFLOW_MLFLOW_AUTH=1 needs MLFLOW_FLASK_SERVER_SECRET_KEY (a random string, the same for every server; e.g. from python -c 'import secrets; print(secrets.token_hex(32))')" >&2
        exit 2
    fi
    auth_args=(--app-name basic-auth)
    auth_note=", basic-auth users from $MLFLOW_AUTH_CONFIG_PATH"
fi

echo "start-server.sh: mlflow server on http://$host:$port (backend $backend, artifacts $MLFLOW_ARTIFACTS_DESTINATION${MLFLOW_S3_ENDPOINT_URL:+ via $MLFLOW_S3_ENDPOINT_URL}$auth_note)" >&2
exec "$mlflow_bin" server \
    --backend-store-uri "$MLFLOW_BACKEND_STORE_URI" \
    --artifacts-destination "$MLFLOW_ARTIFACTS_DESTINATION" \
    --serve-artifacts \
    --host "$host" --port "$port" --workers "$workers" \
    "${auth_args[@]}" "$@"
