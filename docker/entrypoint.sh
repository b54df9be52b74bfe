#!/usr/bin/env bash
# satune-entrypoint: the entrypoint of the satune image (docker/Dockerfile).
#
#   satune-entrypoint ray-head | ray-worker | mlflow   start that role of docker/compose.yaml
#   satune-entrypoint check GROUP...                   check secrets and settings only (groups: postgres
#                                                      ray grafana mlflow-auth mlflow-client); prints "ok"
#   satune-entrypoint COMMAND...                       anything else runs as given (satune, ray, bash, ...)
#
# Secrets arrive as files (Docker secrets under /run/secrets, named by *_FILE / RAY_AUTH_TOKEN_PATH),
# never as values in the environment or on a command line: `ps`, `docker inspect` and Ray's dashboard
# show neither. A missing, empty, short or placeholder secret stops the container with one line and
# exit status 78, before anything starts. The line names the variable to set in docker/.env, never
# the value. SATUNE_ENTRYPOINT_DRY_RUN=1 prints the command a role would run (one argument a line)
# instead of running it; the unit tests use it.
set -euo pipefail

SECRETS_DIR=${SATUNE_SECRETS_DIR:-/run/secrets}
DOCKER_DIR=${SATUNE_DOCKER_DIR:-/opt/satune/docker} # docker/mlflow/ of the repository, in the image
MIN_SECRET_CHARS=16

fail() {
  printf 'satune-entrypoint: %s\n' "$*" >&2
  exit 78
}

# check_secret FILE: one word of at least 16 characters that is not an example placeholder.
# The variable to set in docker/.env is the file's name in capitals (ray_auth_token: RAY_AUTH_TOKEN).
check_secret() {
  local file=$1 var value
  var=$(basename -- "$file" | tr '[:lower:]-' '[:upper:]_')
  local fix="set $var in docker/.env (docker/example.env lists every secret)"
  [[ -f $file && -r $file ]] || fail "secret $var: $file is missing or unreadable; $fix"
  value=$(<"$file")
  [[ -n $value ]] || fail "secret $var is empty; $fix"
  [[ $value != *[[:space:]]* ]] || fail "secret $var holds spaces or several lines; use one word, e.g. \`openssl rand -hex 32\`"
  case ${value,,} in
    *change-me* | *changeme* | *change_me* | *example* | *placeholder* | password* | secret | admin | token)
      fail "secret $var is still the placeholder from docker/example.env; $fix to a random value (\`openssl rand -hex 32\`)" ;;
  esac
  ((${#value} >= MIN_SECRET_CHARS)) ||
    fail "secret $var is too short (${#value} characters, at least $MIN_SECRET_CHARS); use e.g. \`openssl rand -hex 32\`"
}

# Ray: token authentication on, the token in a file.
check_ray() {
  [[ ${RAY_AUTH_MODE:-} == token ]] ||
    fail "RAY_AUTH_MODE is '${RAY_AUTH_MODE:-unset}': satune's Ray nodes run with token authentication only (RAY_AUTH_MODE=token)"
  [[ -z ${RAY_AUTH_TOKEN:-} ]] ||
    fail "RAY_AUTH_TOKEN is set in the environment, where \`docker inspect\` shows it; pass the token as a file (RAY_AUTH_TOKEN_PATH)"
  [[ -n ${RAY_AUTH_TOKEN_PATH:-} ]] || fail "RAY_AUTH_TOKEN_PATH is not set; it names the token file ($SECRETS_DIR/ray_auth_token)"
  check_secret "$RAY_AUTH_TOKEN_PATH"
}

postgres_password_file() { printf '%s' "${POSTGRES_PASSWORD_FILE:-$SECRETS_DIR/postgres_password}"; }

check_group() {
  case $1 in
    postgres) check_secret "$(postgres_password_file)" ;;
    ray) check_ray ;;
    grafana) check_secret "${GRAFANA_ADMIN_PASSWORD_FILE:-$SECRETS_DIR/grafana_admin_password}" ;;
    mlflow-auth)
      check_secret "${MLFLOW_ADMIN_PASSWORD_FILE:-$SECRETS_DIR/mlflow_admin_password}"
      check_secret "${MLFLOW_FLASK_SECRET_KEY_FILE:-$SECRETS_DIR/mlflow_flask_secret_key}"
      check_secret "${MLFLOW_TRACKING_PASSWORD_FILE:-$SECRETS_DIR/mlflow_tracking_password}" ;;
    mlflow-client) check_secret "${MLFLOW_TRACKING_PASSWORD_FILE:-$SECRETS_DIR/mlflow_tracking_password}" ;;
    *) fail "check: unknown group '$1' (postgres ray grafana mlflow-auth mlflow-client)" ;;
  esac
}

run() {
  if [[ ${SATUNE_ENTRYPOINT_DRY_RUN:-0} == 1 ]]; then
    printf '%s\n' "$@"
    exit 0
  fi
  exec "$@"
}

# With MLflow's basic-auth app, the Ray nodes log in as MLFLOW_TRACKING_USERNAME with the password
# from a secret file: it goes into ~/.mlflow/credentials (owner-only), which MLflow's client reads in
# every process of the container, `docker compose exec` included.
mlflow_client_credentials() {
  local file=${MLFLOW_TRACKING_PASSWORD_FILE:-}
  [[ -n $file ]] || return 0
  check_secret "$file"
  [[ -n ${MLFLOW_TRACKING_USERNAME:-} ]] || fail "MLFLOW_TRACKING_USERNAME is not set; the nodes log in to MLflow with it"
  local password
  password=$(<"$file")
  (
    umask 077
    mkdir -p "$HOME/.mlflow"
    printf '[mlflow]\nmlflow_tracking_username = %s\nmlflow_tracking_password = %s\n' \
      "${MLFLOW_TRACKING_USERNAME//%/%%}" "${password//%/%%}" >"$HOME/.mlflow/credentials"
  )
}

start_ray_head() {
  check_ray
  mlflow_client_credentials
  run ray start --head --port=6379 --num-cpus="${RAY_HEAD_NUM_CPUS:-0}" \
    --dashboard-host=0.0.0.0 --dashboard-port=8265 --metrics-export-port=8080 --block
}

start_ray_worker() {
  check_ray
  mlflow_client_credentials
  local args=(ray start --address="${RAY_HEAD_ADDRESS:-ray-head:6379}" --metrics-export-port=8080)
  [[ -z ${RAY_WORKER_NUM_CPUS:-} ]] || args+=(--num-cpus="$RAY_WORKER_NUM_CPUS")
  [[ -z ${RAY_WORKER_NUM_GPUS:-} ]] || args+=(--num-gpus="$RAY_WORKER_NUM_GPUS")
  run "${args[@]}" --block
}

# MLflow reads the database password from the backend URI. Here the URI names no password: libpq
# (psycopg2) finds it in a pgpass file written from the secret, owner-only, so neither `ps` nor the
# environment of the server shows it.
start_mlflow() {
  local pw_file host=${PGHOST:-postgres} port=${PGPORT:-5432} user=${PGUSER:-mlflow} db=${PGDATABASE:-mlflow}
  pw_file=$(postgres_password_file)
  check_secret "$pw_file"
  local password
  password=$(<"$pw_file")
  password=${password//\\/\\\\}
  password=${password//:/\\:}
  export PGPASSFILE=${PGPASSFILE:-$HOME/.pgpass}
  (
    umask 077
    printf '%s:%s:*:%s:%s\n' "$host" "$port" "$user" "$password" >"$PGPASSFILE"
  )
  unset password
  local uri="postgresql+psycopg2://$user@$host:$port/$db"
  export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}

  # Host headers the server answers: its in-cluster name and the published port on this machine,
  # plus SATUNE_PUBLIC_HOST (the name browsers use when you publish beyond 127.0.0.1).
  local hosts="mlflow,mlflow:*,localhost,localhost:*,127.0.0.1,127.0.0.1:*"
  if [[ -n ${SATUNE_PUBLIC_HOST:-} && $SATUNE_PUBLIC_HOST != 127.0.0.1 && $SATUNE_PUBLIC_HOST != localhost ]]; then
    hosts+=",$SATUNE_PUBLIC_HOST,$SATUNE_PUBLIC_HOST:*"
  fi
  local args=(mlflow server --host=0.0.0.0 --port=5000 --workers="${MLFLOW_SERVER_WORKERS:-2}"
    --backend-store-uri="$uri"
    --artifacts-destination="${MLFLOW_ARTIFACTS_DIR:-/mlflow/artifacts}" --allowed-hosts="$hosts")

  if [[ ${SATUNE_MLFLOW_AUTH:-0} == 1 ]]; then
    check_group mlflow-auth
    export MLFLOW_AUTH_CONFIG_PATH=${MLFLOW_AUTH_CONFIG_PATH:-$DOCKER_DIR/mlflow/basic_auth.ini}
    MLFLOW_AUTH_ADMIN_PASSWORD=$(<"${MLFLOW_ADMIN_PASSWORD_FILE:-$SECRETS_DIR/mlflow_admin_password}")
    MLFLOW_FLASK_SERVER_SECRET_KEY=$(<"${MLFLOW_FLASK_SECRET_KEY_FILE:-$SECRETS_DIR/mlflow_flask_secret_key}")
    export MLFLOW_AUTH_ADMIN_PASSWORD MLFLOW_FLASK_SERVER_SECRET_KEY
    export MLFLOW_TRACKING_PASSWORD_FILE=${MLFLOW_TRACKING_PASSWORD_FILE:-$SECRETS_DIR/mlflow_tracking_password}
    [[ ${SATUNE_ENTRYPOINT_DRY_RUN:-0} == 1 ]] || python "$DOCKER_DIR/mlflow/auth_setup.py"
    args+=(--app-name=basic-auth)
  fi
  run "${args[@]}"
}

case ${1:-} in
  ray-head) start_ray_head ;;
  ray-worker) start_ray_worker ;;
  mlflow) start_mlflow ;;
  check)
    shift
    (($#)) || fail "check: name the groups to check (postgres ray grafana mlflow-auth mlflow-client)"
    for group in "$@"; do check_group "$group"; done
    echo "satune-entrypoint: ok ($*)"
    ;;
  "") fail "no command; give a role (ray-head, ray-worker, mlflow), check GROUP..., or a command" ;;
  *) exec "$@" ;;
esac
