#!/usr/bin/env bash
# The quickstart: builds the gateway and runs it on the embedded default (SQLite) with the
# manifests of examples/quickstart, then checks it is healthy and serving the quickstart tools.
#
#   scripts/quickstart.sh            # runs until Ctrl-C
#   scripts/quickstart.sh --smoke    # checks, then stops (what the test command runs)
#
# QUICKSTART_PROFILE=dev builds the debug profile (default: release).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
SMOKE=0; [ "${1:-}" = "--smoke" ] && SMOKE=1
PROFILE="${QUICKSTART_PROFILE:-release}"
BIND="${QUICKSTART_BIND:-127.0.0.1:8089}"
DATA="$ROOT/target/quickstart"

if [ "$PROFILE" = release ]; then
  cargo build --release --locked -p aegis-seal-gateway
  BIN="$ROOT/target/release/aegis-seal-gateway"
else
  cargo build --locked -p aegis-seal-gateway
  BIN="$ROOT/target/debug/aegis-seal-gateway"
fi
"$BIN" --version

mkdir -p "$DATA"
export SEAL_GATEWAY_BIND="$BIND"
export SEAL_GATEWAY_DB="sqlite://$DATA/gateway.db"
export RUST_LOG="${RUST_LOG:-info}"
"$BIN" --config examples/quickstart/seal-gateway-config.yaml --manifests examples/quickstart/manifests &
GATEWAY=$!
trap 'kill -TERM $GATEWAY 2>/dev/null; wait $GATEWAY 2>/dev/null || true' EXIT

for _ in $(seq 1 100); do
  curl -fsS "http://$BIND/health" >/dev/null 2>&1 && break
  kill -0 "$GATEWAY" 2>/dev/null || { echo "the gateway exited; see its log above" >&2; exit 1; }
  sleep 0.1
done
echo "GET /health -> $(curl -fsS "http://$BIND/health")"
READY=$(curl -fsS "http://$BIND/ready")
echo "GET /ready  -> $READY"
echo "$READY" | grep -q '"workflows":1' || { echo "quickstart workflow not loaded" >&2; exit 1; }
echo "$READY" | grep -q '"cli_tools":1' || { echo "quickstart CLI tool not loaded" >&2; exit 1; }
echo "$READY" | grep -q '"security_contexts":1' || { echo "quickstart security context not loaded" >&2; exit 1; }

if [ "$SMOKE" = 1 ]; then
  echo "quickstart OK"
  exit 0
fi
echo "The gateway is serving on http://$BIND (database $DATA/gateway.db). Ctrl-C stops it."
wait "$GATEWAY"
