#!/usr/bin/env bash
# The quickstart: the gateway on the embedded default (SQLite) with the manifests of
# examples/quickstart, a small local API for its workflow, and one signed invocation end to end:
# register a session, sign an envelope, run the three-step workflow, print the result and the audit
# rows it wrote.
#
#   scripts/quickstart.sh            # then keeps the gateway running until Ctrl-C
#   scripts/quickstart.sh --smoke    # stops after the call (what the test command runs)
#
# QUICKSTART_PROFILE=dev builds the debug profile (default: release).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
SMOKE=0; [ "${1:-}" = "--smoke" ] && SMOKE=1
PROFILE="${QUICKSTART_PROFILE:-release}"
BIND="${QUICKSTART_BIND:-127.0.0.1:8089}"
UPSTREAM="127.0.0.1:8090"   # the workflow's base_url in examples/quickstart/manifests
DATA="$ROOT/target/quickstart"

if [ "$PROFILE" = release ]; then
  cargo build --release --locked -p aegis-seal-gateway --bin aegis-seal-gateway --example quickstart
  OUT="$ROOT/target/release"
else
  cargo build --locked -p aegis-seal-gateway --bin aegis-seal-gateway --example quickstart
  OUT="$ROOT/target/debug"
fi
BIN="$OUT/aegis-seal-gateway"
PARTIES="$OUT/examples/quickstart"
"$BIN" --version

rm -rf "$DATA"; mkdir -p "$DATA"
"$PARTIES" keys --dir "$DATA"

PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
wait_for() { # wait_for URL PID
  for _ in $(seq 1 100); do
    curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
    kill -0 "$2" 2>/dev/null || { echo "a quickstart process exited; see its log above" >&2; return 1; }
    sleep 0.1
  done
  echo "timed out waiting for $1" >&2; return 1
}

"$PARTIES" upstream --bind "$UPSTREAM" &
PIDS+=($!)

export SEAL_GATEWAY_BIND="$BIND"
export SEAL_GATEWAY_DB="sqlite://$DATA/gateway.db"
export QUICKSTART_ISSUER_PUBLIC_KEY_PEM="$(cat "$DATA/issuer.pub.pem")"
export RUST_LOG="${RUST_LOG:-info}"
"$BIN" --config examples/quickstart/seal-gateway-config.yaml --manifests examples/quickstart/manifests &
PIDS+=($!)
wait_for "http://$BIND/health" "${PIDS[1]}"
echo "GET /ready -> $(curl -fsS "http://$BIND/ready")"

"$PARTIES" call --dir "$DATA" --gateway "http://$BIND" --database "sqlite://$DATA/gateway.db"

if [ "$SMOKE" = 1 ]; then
  echo "quickstart OK"
  exit 0
fi
echo
echo "The gateway is serving on http://$BIND (database $DATA/gateway.db). Ctrl-C stops it."
wait "${PIDS[1]}"
