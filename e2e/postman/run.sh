#!/usr/bin/env bash
# Postman API tests (newman, pinned by package-lock.json: `make postman-tools`) against real
# processes on the local stack: the operator's probes (orderpipe-operator.postman_collection.json)
# and the intake gateway's API (orderpipe-intake.postman_collection.json) on the stack's broker, with
# a second gateway whose producer queue holds one record (429) and a third whose Kafka is
# unreachable (503). `make test-e2e` and `make api-test` run this with the stack up.
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${ORDERPIPE_E2E_ENV:=${CARGO_TARGET_DIR:-target}/e2e/env}"
# shellcheck source=/dev/null
source "$ORDERPIPE_E2E_ENV"
bin="${CARGO_TARGET_DIR:-target}/debug"
newman=e2e/postman/node_modules/.bin/newman
[[ -x $newman ]] || { echo "newman is not installed: run make postman-tools"; exit 1; }
logs="$(dirname "$ORDERPIPE_E2E_ENV")"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

pids=()
stop_all() {
  local pid
  for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null || true
  done
}
trap stop_all EXIT

# Waits until $1 answers 200, or fails with the log $3 of process $2.
wait_ok() {
  for _ in $(seq 1 150); do
    curl -fsS "$1" >/dev/null 2>&1 && return 0
    kill -0 "$2" 2>/dev/null || break
    sleep 0.2
  done
  echo "$1 never answered 200; log $3:"; tail -20 "$3"; exit 1
}

port=$(free_port)
log="$logs/api-test-operator.log"
"$bin/orderpipe-operator" --leader-election=false --log-format=text --metrics-addr "127.0.0.1:$port" >"$log" 2>&1 &
pids+=($!)
wait_ok "http://127.0.0.1:$port/readyz" "$!" "$log"
"$newman" run e2e/postman/orderpipe-operator.postman_collection.json \
  --env-var "baseUrl=http://127.0.0.1:$port" --reporters cli

# The gateways: topics of their own (the operator would create them), tokens of three scopes.
run="postman-$(date +%s)-$$"
"$bin/orderpipe-stack" --env-file "$ORDERPIPE_E2E_ENV" create-topics "$run.orders:3" "$run.changes:3"
tokens=$(printf '%s\n' "shop-$run" "reader-$run orders:read" "writer-$run orders:write")
# Starts a gateway named $1 with extra environment $2...; sets api and metrics to its ports.
gateway() {
  local name=$1
  shift
  api=$(free_port)
  metrics=$(free_port)
  env ORDERPIPE_PIPELINE=postman ORDERPIPE_POD_NAME="$run-$name" \
    ORDERPIPE_KAFKA_BOOTSTRAP_SERVERS="$KAFKA_BOOTSTRAP_SERVERS" \
    ORDERPIPE_INTAKE_ORDERS_TOPIC="$run.orders" ORDERPIPE_INTAKE_STATUS_TOPIC="$run.changes" \
    ORDERPIPE_INTAKE_PORT="$api" ORDERPIPE_METRICS_PORT="$metrics" \
    ORDERPIPE_INTAKE_TOKENS="$tokens" "$@" \
    "$bin/orderpipe-worker" intake >"$logs/api-test-intake-$name.log" 2>&1 &
  pids+=($!)
}
gateway main
wait_ok "http://127.0.0.1:$metrics/readyz" "$!" "$logs/api-test-intake-main.log"
intake=$api intake_metrics=$metrics
gateway narrow ORDERPIPE_INTAKE_QUEUE_MESSAGES=1
wait_ok "http://127.0.0.1:$metrics/readyz" "$!" "$logs/api-test-intake-narrow.log"
narrow=$api
# Nothing listens on a port just found free: Kafka is unreachable, the gateway live but not ready.
gateway down ORDERPIPE_KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:$(free_port)"
wait_ok "http://127.0.0.1:$metrics/healthz" "$!" "$logs/api-test-intake-down.log"
"$newman" run e2e/postman/orderpipe-intake.postman_collection.json --reporters cli \
  --env-var "intakeUrl=http://127.0.0.1:$intake" \
  --env-var "intakeMetricsUrl=http://127.0.0.1:$intake_metrics" \
  --env-var "narrowIntakeUrl=http://127.0.0.1:$narrow" \
  --env-var "downIntakeUrl=http://127.0.0.1:$api" \
  --env-var "downIntakeMetricsUrl=http://127.0.0.1:$metrics" \
  --env-var "shopToken=shop-$run" --env-var "readerToken=reader-$run" --env-var "writerToken=writer-$run"
