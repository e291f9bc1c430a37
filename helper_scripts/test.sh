#!/usr/bin/env bash
# Every check and test, from a fresh clone: installs the pinned tools into .tools/, starts the
# local AWS emulator on a free loopback port, runs fmt, ruff (format and lint), clippy and the
# Rust tests (unit tests and
# the integration tests against the emulator), evaluates every AWS call the functions made there
# and a list of abuses with IAM's evaluation logic against the template's policies
# (tests/tools/iam_check.py), stops the emulator (also on failure or Ctrl-C),
# checks the SAM template and the state machine, runs the offline end-to-end workflow tests (the
# deployed path among them: template.yaml deployed with sam deploy into a local control plane,
# from the release bootstraps), and runs the benchmarks in quick mode (helper_scripts/bench.sh
# --quick).
#
# The release build (fat LTO, one codegen unit: the longest stage) starts first, in the
# background at the lowest CPU priority: it takes the cores the other stages leave idle (the
# tools' download, the tests waiting on an emulator), and the stages that need it wait for it
# (log: .tools/release-build.log). The test suites themselves run one after another: run at
# once, the workflow tests' emulators slowed the shared emulator of the Rust suite past its
# clients' 2 s timeouts.
set -euo pipefail
source "$(dirname "$0")/lib/common.sh"
cd "$PROJECT_ROOT"
# Each stage says when it starts (minutes and seconds since the command began): where the time goes.
log() { printf '==> [%dm%02ds] %s\n' $((SECONDS / 60)) $((SECONDS % 60)) "$*" >&2; }

command -v cargo >/dev/null || die "cargo is required (https://rustup.rs)"
mkdir -p "$TOOLS_DIR"
RELEASE_LOG="$TOOLS_DIR/release-build.log"
log "cargo build --release, in the background (nice 19; log: ${RELEASE_LOG#"$PROJECT_ROOT/"})"
# A session of its own, so that stopping it stops its compilers too.
setsid nice -n 19 cargo build --release --locked --bins >"$RELEASE_LOG" 2>&1 &
RELEASE_PID=$!
stop_background() {
  if [[ -n "${RELEASE_PID:-}" ]] && kill -0 "$RELEASE_PID" 2>/dev/null; then
    kill -- "-$RELEASE_PID" 2>/dev/null || true
    wait "$RELEASE_PID" 2>/dev/null || true
  fi
}
wait_release_build() {
  log "waiting for the release build"
  wait "$RELEASE_PID" || { cat "$RELEASE_LOG" >&2; die "cargo build --release failed"; }
  RELEASE_PID=
  log "release build done"
}
trap stop_background EXIT
ensure_python_tools
ensure_control_plane_tools
ensure_node_tools
start_emulator
# start_emulator's trap, and the background stages'.
trap 'stop_emulator; stop_background' EXIT
start_fault_proxy

log "cargo fmt --check, ruff format --check and ruff check (the Python of the harness, tests and bench)"
cargo fmt --all --check
"$VENV/bin/ruff" format --check helper_scripts tests bench
"$VENV/bin/ruff" check helper_scripts tests bench
log "cargo clippy (warnings are errors)"
cargo clippy --locked --all-targets -- -D warnings
log "cargo test, the emulator tests included"
# The tests that need the emulator are #[ignore]d so that plain `cargo test` passes without it;
# here the emulator runs, so they run too.
cargo test --locked -- --include-ignored
# The whole suite's AWS calls went through the proxy: none may be destructive.
"$VENV/bin/python" - "$MOTO_ENDPOINT" <<'PY'
import json, sys, urllib.request
s = json.load(urllib.request.urlopen(sys.argv[1] + "/__proxy__/summary"))
o = s["outcomes"]
strict = sum((s.get("strict_refusals") or {}).values())
print(f"==> summary: AWS calls {s['calls']}, faults injected {s['faults_injected']}, "
      f"refused by the strict layer {strict}, "
      f"contained {o.get('contained', 0)}, honest failure reports {o.get('honest_failure', 0)}, "
      f"malformed inputs {o.get('malformed_input', 0)}, isolation cases checked {o.get('fail_closed', 0) + o.get('fail_open', 0)}, "
      f"fail-open: {o.get('fail_open', 0)}, panics 0, destructive calls {len(s['destructive_calls'])}")
if s["destructive_calls"]:
    sys.exit(f"destructive calls were made: {s['destructive_calls']}")
if o.get("fail_open", 0):
    sys.exit(f"isolation failed open in {o['fail_open']} case(s): see tests/fail_open.rs")
PY
# Every call the functions made is allowed by IAM's evaluation of the template's policies, and
# every abuse in the list is denied (tests/tools/iam_check.py).
"$VENV/bin/python" tests/tools/iam_check.py --proxy "$MOTO_ENDPOINT"
stop_emulator

log "sam validate --lint"
"$VENV/bin/sam" validate --lint --region us-east-1 --template-file template.yaml
log "cfn-lint helper_scripts/*.yaml (plain CloudFormation)"
"$VENV/bin/cfn-lint" helper_scripts/*.yaml
log "asl-validator"
for asl in statemachine/*.asl.json; do
  "$TOOLS_DIR/node/node_modules/.bin/asl-validator" --json-path "$asl"
done
log "the workflow end to end on the local emulator (every sample event)"
FUNCTIONS_BIN_DIR="$CARGO_TARGET_DIR/debug" \
  "$VENV/bin/pytest" -q -p no:cacheprovider tests/workflow --ignore=tests/workflow/test_deployed_path.py
wait_release_build
log "the workflow deployed with sam deploy, from the release bootstraps (tests/workflow/test_deployed_path.py)"
FUNCTIONS_BIN_DIR="$CARGO_TARGET_DIR/debug" RELEASE_BIN_DIR="$CARGO_TARGET_DIR/release" \
  "$VENV/bin/pytest" -q -p no:cacheprovider tests/workflow/test_deployed_path.py
log "deploy.sh local (the README's offline run)"
./helper_scripts/deploy.sh local >"$TOOLS_DIR/local-run.log" 2>&1 || { cat "$TOOLS_DIR/local-run.log" >&2; die "deploy.sh local failed"; }
grep -q '^State machine execution: SUCCEEDED' "$TOOLS_DIR/local-run.log" || { cat "$TOOLS_DIR/local-run.log" >&2; die "deploy.sh local did not contain the sample"; }
log "the benchmarks, quick mode (figures reported, never asserted; fails only on an invalid run)"
./helper_scripts/bench.sh --quick
