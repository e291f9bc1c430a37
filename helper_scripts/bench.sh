#!/usr/bin/env bash
# The benchmarks (bench/bench.py): bootstrap sizes, cold and warm starts and memory under AWS's
# Runtime Interface Emulator beside a Python boto3 baseline, AWS calls per finding, and a burst of
# findings through EC2's token buckets. Prints a Markdown table; writes .tools/bench/results.json
# and .tools/bench/results.md (quick mode: .tools/bench/quick.json and quick.md, so that a test run
# leaves the last full results in place).
#
#   helper_scripts/bench.sh           full: 10 cold starts x 10 warm invocations, a 100-finding
#                                     burst, and the arm64 bootstraps built by `sam build`
#   helper_scripts/bench.sh --quick   quick (the test command's): 2 x 3, a 10-finding burst,
#                                     x86_64 only
# Everything runs on loopback against the local emulator; nothing reaches AWS.
set -euo pipefail
source "$(dirname "$0")/lib/common.sh"
cd "$PROJECT_ROOT"

mode=full
case "${1:-}" in
  --quick) mode=quick ;;
  "") ;;
  *) die "usage: $0 [--quick]" ;;
esac

ensure_python_tools
ensure_baseline_python
log "cargo build --release (x86_64 bootstraps)"
cargo build --release --locked --bins
args=(--x86-dir "$CARGO_TARGET_DIR/release" --python "$BASELINE_VENV/bin/python")
if [[ "$mode" == full ]]; then
  sam_build
  args+=(--arm-dir "$PROJECT_ROOT/.aws-sam/build")
else
  args+=(--quick)
fi
out="$TOOLS_DIR/bench/results"
[[ "$mode" == quick ]] && out="$TOOLS_DIR/bench/quick"
mkdir -p "$TOOLS_DIR/bench"
start_emulator
"$VENV/bin/python" bench/bench.py "${args[@]}" --json "$out.json" --markdown "$out.md"
