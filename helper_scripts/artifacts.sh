#!/usr/bin/env bash
# The deployed artifacts, as `sam local invoke` runs them but without Docker: `sam build` makes
# the arm64 bootstraps (.aws-sam/build), then each runs under AWS's Runtime Interface Emulator
# (qemu-user on x86_64 hosts) with its sample event against the local AWS emulator.
#   helper_scripts/artifacts.sh [--no-build]
set -euo pipefail
source "$(dirname "$0")/lib/common.sh"
cd "$PROJECT_ROOT"

ensure_python_tools
[[ "${1:-}" == "--no-build" ]] || sam_build
args=()
if [[ "$(uname -m)" != aarch64 ]]; then
  ensure_arm64_emulation
  args+=(--qemu "$QEMU_AARCH64" --sysroot "$ARM64_SYSROOT")
fi
start_emulator
"$VENV/bin/python" -m local.artifacts "${args[@]}"
