#!/usr/bin/env bash
# Runs every test: formatting and lints, the whole workspace on SQLite and a real Postgres,
# the CRD and manifest validation, and the quickstart. Provisions what is missing first.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
# Each step is stamped with the minutes since the run began, so a slow step shows in the log.
START=$SECONDS
step() { printf '\n==> %s (at %d min)\n' "$*" $(((SECONDS - START) / 60)) >&2; }

# One full build, never rebuilt in place: incremental artefacts would only cost disk (they were
# most of a 63 GB target directory once, and a full disk failed a CI run).
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

step "provisioning test services"
eval "$(scripts/services.sh start)"
# The verdict is printed after the services stop, so that it is the run's last line.
trap 'scripts/services.sh stop; if [ -n "${VERDICT:-}" ]; then echo "$VERDICT"; fi' EXIT

command -v cargo-nextest >/dev/null || { step "installing cargo-nextest"; cargo install --locked cargo-nextest; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo build: the data-plane binary that the end-to-end tests start"
# tests/tests/support builds it with this same command when a test first needs it. Built here,
# outside the tests' time bounds, they find it up to date instead of compiling within them.
cargo build --locked -p aegis-seal-gateway --bin aegis-seal-gateway

step "cargo nextest run --workspace (DATABASE_URL=${DATABASE_URL%%@*}@...)"
NEXTEST_LOG="$ROOT/target/nextest.log"
mkdir -p "$ROOT/target"
cargo nextest run --workspace --locked --no-fail-fast 2>&1 | tee "$NEXTEST_LOG"

step "kubernetes-validate: CRDs and example manifests"
# Custom-resource instances are checked against the CRDs by the Rust tests; kubernetes-validate
# checks the CRD objects themselves and every built-in kind (ConfigMaps) strictly.
mapfile -t manifests < <(find charts/seal-gateway/crds examples -name '*.yaml' ! -name 'seal-gateway-config.yaml' | sort)
"$KUBERNETES_VALIDATE" --strict -k 1.33.0 "${manifests[@]}"
"$(dirname "$KUBERNETES_VALIDATE")/python" scripts/validate-custom-resources.py examples

step "helm chart: lint, render, validate, schema (scripts/check-chart.sh)"
scripts/check-chart.sh

step "cargo fuzz: the cli_arguments, envelope, manifests and workflow_request targets (${SEAL_FUZZ_SECONDS:-60} s each)"
scripts/fuzz.sh

step "schemathesis: the HTTP API from its own /openapi.json answers no 5xx"
scripts/check-openapi.sh

step "quickstart (smoke mode)"
QUICKSTART_PROFILE=dev scripts/quickstart.sh --smoke

# The benchmark at a tiny size proves it still runs; its figures are not checked (bench/README.md).
# A release build here would rebuild every dependency (about 17 min). The dev one reuses most of
# the test build: about a dozen crates (kube's, sqlx's, reqwest) are built again with the
# features the bench alone asks for, 2-3 min here.
step "bench (smoke mode)"
cargo run --locked -p bench -- --smoke

step "all tests passed"
# The last line is the verdict in the plain form CI reads: the Rust test count from nextest's summary
# ("N tests run: N passed, M skipped"); the checks after it fail this script on any error.
passed="$(grep -oE 'tests? run: [0-9]+ passed' "$NEXTEST_LOG" | tail -1 | grep -oE '[0-9]+' || true)"
VERDICT="tests: ${passed:?no nextest summary in $NEXTEST_LOG} passed, 0 failed"
