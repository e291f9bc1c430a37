#!/usr/bin/env bash
# Every check and test, from a fresh clone: installs the pinned tools into .tools/, starts the
# local AWS emulator on a free loopback port, runs fmt, clippy and the test suite (unit tests and
# the integration tests against the emulator), and stops the emulator, also on failure or Ctrl-C.
set -euo pipefail
source "$(dirname "$0")/lib/common.sh"
cd "$PROJECT_ROOT"

command -v cargo >/dev/null || die "cargo is required (https://rustup.rs)"
ensure_python_tools
start_emulator

log "cargo fmt --check"
cargo fmt --all --check
log "cargo clippy (warnings are errors)"
cargo clippy --locked --all-targets -- -D warnings
log "cargo test"
cargo test --locked
