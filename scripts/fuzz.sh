#!/usr/bin/env bash
# Fuzzes the data plane's parsers of agent input (dataplane/fuzz) with cargo-fuzz on the stable
# toolchain, one target after the other:
#   cli_arguments     a CLI tool's arguments into the container CLI's argv (the agent's strings
#                     kept whole and after the image, mount paths normalized and unreserved);
#   envelope          the SEAL envelope parser and canonicalizer;
#   manifests         a manifests file (or custom resources) through parse_manifests, compile and
#                     the data plane's served snapshot (no panic, a bad file adds nothing,
#                     compile deterministic, and whatever it builds a data plane can serve);
#   workflow_request  arguments through a step's templates into the upstream request (no escape
#                     from a JSON string, one path segment per path parameter, nothing added).
# CI runs each for 60 s from scripts/test.sh; developers run them for longer.
#
#   scripts/fuzz.sh [SECONDS] [-- LIBFUZZER_FLAGS...]   fuzz each target (default ${SEAL_FUZZ_SECONDS:-60} s each)
#   scripts/fuzz.sh repro FILE...                       re-run saved inputs (a crash reproducer)
#   scripts/fuzz.sh build                               only build the targets
#
# Environment:
#   SEAL_FUZZ_SECONDS    run time per target when SECONDS is not given (default 60)
#   SEAL_FUZZ_TARGET     one target only (default: all of them; repro takes it from the file's folder)
#   SEAL_FUZZ_SANITIZER  none (default) or address/leak/...: a sanitizer needs unstable rustc
#                        flags, so RUSTC_BOOTSTRAP=1 is set for it, and it rebuilds everything
#
# Examples: an hour of the envelope target on both cores, keeping what it finds in target/fuzz/corpus:
#   SEAL_FUZZ_TARGET=envelope scripts/fuzz.sh 3600 -- -fork=2
# Minimize a crash:
#   PATH="$PWD/target/tools/cargo/bin:$PATH" cargo fuzz tmin --dev -s none \
#     --fuzz-dir dataplane/fuzz --target-dir target/fuzz envelope CRASH_FILE
#
# Layout: cargo-fuzz is installed from crates.io into target/tools/cargo; the instrumented build
# goes to target/fuzz (it shares nothing with the main build); the growing corpus lives in
# target/fuzz/corpus/TARGET, seeded read-only from dataplane/fuzz/corpus/TARGET when that folder
# exists (the manifests target from the examples' manifests folders); crashes are written to
# dataplane/fuzz/artifacts/TARGET (git-ignored). Exits non-zero on any crash.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"

CARGO_FUZZ_VERSION=0.13.2
SANITIZER="${SEAL_FUZZ_SANITIZER:-none}"
FUZZ_DIR=dataplane/fuzz
TARGET_DIR="$ROOT/target/fuzz"
TOOLS="$ROOT/target/tools/cargo"
# Every target of the fuzz crate, from its fuzz_targets folder.
mapfile -t ALL_TARGETS < <(find "$FUZZ_DIR/fuzz_targets" -name '*.rs' -printf '%f\n' | sed 's/\.rs$//' | sort)

say() { printf 'fuzz: %s\n' "$*" >&2; }

mode=run
case "${1:-}" in
  repro | build) mode="$1"; shift ;;
  -h | --help) sed -n '2,/^set -e/p' "$0" | sed -n 's/^# \{0,1\}//p'; exit 0 ;;
esac
seconds="${SEAL_FUZZ_SECONDS:-60}"
if [[ $mode == run && $# -gt 0 && $1 != -- ]]; then seconds="$1"; shift; fi
[[ ${1:-} == -- ]] && shift
# (libFuzzer reads -max_total_time=0 as "forever", so 0 is refused.)
[[ $seconds =~ ^[1-9][0-9]*$ ]] || { say "SECONDS must be a positive whole number, got '$seconds'"; exit 2; }

# cargo-fuzz from crates.io, pinned and built here, so a fresh machine needs nothing else.
t0=$SECONDS
if [[ "$("$TOOLS/bin/cargo-fuzz" --version 2>/dev/null)" != "cargo-fuzz $CARGO_FUZZ_VERSION" ]]; then
  say "installing cargo-fuzz $CARGO_FUZZ_VERSION into target/tools/cargo"
  cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked --root "$TOOLS" --quiet
fi
export PATH="$TOOLS/bin:$PATH"
install_s=$((SECONDS - t0))

# The fuzz crate is its own workspace; resolve it against the root lockfile so that the data plane
# is fuzzed with exactly the dependency versions the rest of the test command builds.
cp Cargo.lock "$FUZZ_DIR/Cargo.lock"

if [[ $SANITIZER != none ]]; then
  # -Zsanitizer is unstable; RUSTC_BOOTSTRAP=1 lets the stable compiler accept it.
  export RUSTC_BOOTSTRAP=1
fi
# --dev: see the profiles in dataplane/fuzz/Cargo.toml (only the code the target runs is optimized).
fuzz_args=(--dev --sanitizer "$SANITIZER" --fuzz-dir "$FUZZ_DIR" --target-dir "$TARGET_DIR")

if [[ $mode == repro ]]; then
  [[ $# -gt 0 ]] || { say "repro needs the input files"; exit 2; }
  # A reproducer lives in artifacts/TARGET/.
  targets=("${SEAL_FUZZ_TARGET:-$(basename "$(dirname "$1")")}")
elif [[ -n ${SEAL_FUZZ_TARGET:-} ]]; then
  targets=("$SEAL_FUZZ_TARGET")
else
  targets=("${ALL_TARGETS[@]}")
fi
for target in "${targets[@]}"; do
  [[ " ${ALL_TARGETS[*]} " == *" $target "* ]] || { say "no fuzz target '$target' (targets: ${ALL_TARGETS[*]})"; exit 2; }
done

t0=$SECONDS
say "building ${targets[*]} (sanitizer: $SANITIZER) in target/fuzz"
for target in "${targets[@]}"; do
  cargo fuzz build "${fuzz_args[@]}" "$target"
done
build_s=$((SECONDS - t0))
say "cargo-fuzz install ${install_s}s, build ${build_s}s"

case $mode in
  build) exit 0 ;;
  repro) exec cargo fuzz run "${fuzz_args[@]}" "${targets[0]}" "$@" ;;
esac

stamp="$(mktemp)"
trap 'rm -f "$stamp"' EXIT
failed=0
for target in "${targets[@]}"; do
  work_corpus="$TARGET_DIR/corpus/$target"
  artifacts="$FUZZ_DIR/artifacts/$target"
  mkdir -p "$work_corpus" "$artifacts"
  corpora=("$work_corpus")
  [[ -d $FUZZ_DIR/corpus/$target ]] && corpora+=("$FUZZ_DIR/corpus/$target")
  # The manifests target starts from the example manifests themselves, so its seeds follow them.
  [[ $target == manifests ]] && corpora+=(examples/quickstart/manifests examples/kubernetes/manifests)
  dict=()
  [[ -f $FUZZ_DIR/$target.dict ]] && dict=(-dict="$FUZZ_DIR/$target.dict")
  t0=$SECONDS
  say "running $target for ${seconds}s (corpus: ${corpora[*]})"
  status=0
  cargo fuzz run "${fuzz_args[@]}" "$target" "${corpora[@]}" -- \
    -max_total_time="$seconds" -max_len=4096 -timeout=10 -rss_limit_mb=2048 \
    "${dict[@]}" -print_final_stats=1 "$@" || status=$?
  run_s=$((SECONDS - t0))

  mapfile -t found < <(find "$artifacts" -type f -newer "$stamp" | sort)
  if [[ $status -ne 0 || ${#found[@]} -gt 0 ]]; then
    say "$target FAILED (exit $status) after ${run_s}s"
    for f in "${found[@]}"; do
      say "reproducer: $f"
      say "  re-run it: scripts/fuzz.sh repro $f"
    done
    [[ ${#found[@]} -gt 0 ]] || say "no reproducer was written: see libFuzzer's output above"
    failed=1
  else
    say "$target: no crash in ${run_s}s"
  fi
done
exit "$failed"
