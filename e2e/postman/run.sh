#!/usr/bin/env bash
# Postman API tests (newman) against a real orderpipe-operator process connected to the local
# stack: `make api-test` starts the stack, runs this, and stops the stack.
set -euo pipefail
cd "$(dirname "$0")/../.."
: "${ORDERPIPE_E2E_ENV:=${CARGO_TARGET_DIR:-target}/e2e/env}"
# shellcheck source=/dev/null
source "$ORDERPIPE_E2E_ENV"
operator="${CARGO_TARGET_DIR:-target}/debug/orderpipe-operator"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
log="$(dirname "$ORDERPIPE_E2E_ENV")/api-test-operator.log"
"$operator" --leader-election=false --log-format=text --metrics-addr "127.0.0.1:$port" >"$log" 2>&1 &
pid=$!
trap 'kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
  kill -0 "$pid" 2>/dev/null || { echo "operator exited; log:"; tail -20 "$log"; exit 1; }
  sleep 0.2
done
npx --yes newman@6 run e2e/postman/orderpipe-operator.postman_collection.json \
  --env-var "baseUrl=http://127.0.0.1:$port" --reporters cli
