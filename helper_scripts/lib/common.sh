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

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Installs the pinned Python tools into .tools/venv, once per change of requirements.txt.
ensure_python_tools() {
  local req="$PROJECT_ROOT/helper_scripts/requirements.txt" stamp="$VENV/.requirements.sha256"
  local want
  want="$(sha256sum "$req" | cut -d' ' -f1)"
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    return
  fi
  command -v python3 >/dev/null || die "python3 is required to install the AWS emulator"
  log "installing pinned Python tools into .tools/venv"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$req"
  echo "$want" >"$stamp"
}

ASL_VALIDATOR_VERSION=4.0.0
# Installs the pinned ASL validator into .tools/node.
ensure_node_tools() {
  local stamp="$TOOLS_DIR/node/.asl-validator-$ASL_VALIDATOR_VERSION"
  [[ -f "$stamp" ]] && return
  command -v npm >/dev/null || die "npm (Node.js) is required to validate the state machine"
  log "installing asl-validator $ASL_VALIDATOR_VERSION into .tools/node"
  mkdir -p "$TOOLS_DIR/node"
  npm install --prefix "$TOOLS_DIR/node" --no-audit --no-fund --silent "asl-validator@$ASL_VALIDATOR_VERSION" >/dev/null
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
  "$VENV/bin/moto_server" -H 127.0.0.1 -p "$port" >"$MOTO_LOG" 2>&1 &
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
  "$VENV/bin/python" "$PROJECT_ROOT/tests/tools/fault_proxy.py" --upstream "$MOTO_ENDPOINT" --seed "${FAULT_SEED:-1}" >"$out" 2>&1 &
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
