#!/usr/bin/env bash
# Fuzzes the HTTP API from its own /openapi.json with schemathesis (PyPI): every generated request,
# valid or not, must be answered without a server error (5xx).
#
# The gateway binary runs on a fresh SQLite database with the quickstart manifests and operator
# authentication disabled, so generated requests reach the handlers instead of stopping at the
# token check (the token check itself is tested in dataplane/tests/control_auth.rs).
#
#   scripts/check-openapi.sh                 # debug build, ~25 examples per operation
#   CHECK_OPENAPI_EXAMPLES=100 scripts/check-openapi.sh
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
SCHEMATHESIS_VERSION=4.32.5
TOOLS="$ROOT/target/tools"
DATA="$ROOT/target/check-openapi"
EXAMPLES="${CHECK_OPENAPI_EXAMPLES:-25}"

cargo build --locked -p aegis-seal-gateway --bin aegis-seal-gateway
BIN="$ROOT/target/debug/aegis-seal-gateway"

if [ ! -x "$TOOLS/venv/bin/python" ]; then
  mkdir -p "$TOOLS"
  python3 -m venv "$TOOLS/venv"
fi
if ! "$TOOLS/venv/bin/schemathesis" --version 2>/dev/null | grep -qF "$SCHEMATHESIS_VERSION"; then
  "$TOOLS/venv/bin/pip" install -q --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi

rm -rf "$DATA"; mkdir -p "$DATA"
PORT="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
cat > "$DATA/config.yaml" <<EOF
apiVersion: seal.100monkeys.ai/v1
kind: SealGatewayConfig
metadata:
  name: check-openapi
spec:
  network:
    bind_addr: "127.0.0.1:$PORT"
  database:
    url: "sqlite://$DATA/gateway.db"
  auth:
    disabled: true
EOF

RUST_LOG="${RUST_LOG:-warn}" "$BIN" --config "$DATA/config.yaml" \
  --manifests examples/quickstart/manifests --no-watch > "$DATA/gateway.log" 2>&1 &
GATEWAY=$!
trap 'kill -TERM "$GATEWAY" 2>/dev/null || true; wait "$GATEWAY" 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  curl -fsS -o /dev/null "http://127.0.0.1:$PORT/health" 2>/dev/null && break
  kill -0 "$GATEWAY" 2>/dev/null || { cat "$DATA/gateway.log" >&2; echo "the gateway exited" >&2; exit 1; }
  sleep 0.1
done

# Fixed seed and no example database: the same requests on every run, so a failure reproduces.
status=0
"$TOOLS/venv/bin/schemathesis" run "http://127.0.0.1:$PORT/openapi.json" \
  --checks not_a_server_error \
  --phases examples,coverage,fuzzing \
  --max-examples "$EXAMPLES" \
  --seed 1 \
  --generation-database none \
  --workers 1 \
  --request-timeout 20 \
  --no-color \
  --report junit --report-dir "$DATA/report" > "$DATA/schemathesis.log" 2>&1 || status=$?
if [ "$status" != 0 ]; then
  cat "$DATA/schemathesis.log" >&2
  echo "schemathesis found server errors; gateway log: $DATA/gateway.log, report: $DATA/report" >&2
  exit "$status"
fi
# Its full output (warnings about operations it could not link) stays in the log: its closing
# line is shaped like pytest's and would read as the last test runner's verdict on the whole run.
echo "openapi check OK: schemathesis $(grep -oE '[0-9]+ generated, [0-9]+ passed' "$DATA/schemathesis.log" | tail -1) (log: $DATA/schemathesis.log)"
