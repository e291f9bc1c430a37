#!/usr/bin/env bash
# ec2-quarantine: deploy to AWS, remove, or run the whole workflow offline.
#
#   deploy.sh local [EVENT] [--deployed] [--json] [--missing-instance] [--member-account] [--severity-threshold N]
#   deploy.sh invoke FUNCTION EVENT
#   deploy.sh emulator [--json] [--bind ADDRESS] [--port N]   (for sam local invoke, safely)
#   deploy.sh deploy [--region R | --regions R1,R2] [--stack-name S] [--alert-email E] ...
#   deploy.sh nuke   [--region R | --regions R1,R2] [--stack-name S] [--purge-artifacts] [--yes]
#   deploy.sh test-instance | fire EVENT [INSTANCE_ID] | verify [INSTANCE_ID]   (the test path)
#   deploy.sh cases [--open] | case ID_OR_INSTANCE                             (the case record)
#   deploy.sh pause --reason TEXT | resume                                     (the pause switch)
#   deploy.sh approve APPROVAL_ID | reject APPROVAL_ID --reason TEXT           (approvals)
#   deploy.sh rails [--json]                                                    (the rails' state)
#   deploy.sh status [--json] | logs [--function NAME] [--since 1h]            (operations)
#
# Only deploy, nuke, test-instance, fire, verify, cases, case, pause, resume, approve, reject, rails, status and logs talk to AWS, with the caller's
# credentials (AWS_ENDPOINT_URL points them at an emulator).
# local, invoke and emulator need no AWS at all.
set -euo pipefail
source "$(dirname "$0")/lib/common.sh"

usage() {
  cat <<'EOF'
Usage:
  deploy.sh local [EVENT] [--deployed] [--json] [--missing-instance] [--member-account]
                  [--severity-threshold N] [--parameter KEY=VALUE]... [--dry-run] [--exempt]
                  [--paused] [--security-hub] [--repeat] [--release] [--no-forensic-account]
                  [--approval approve|reject|timeout [--collect]] [--burst N]
      Run the real state machine and the real Rust functions against a local AWS emulator, on a
      simulated compromised instance (two interfaces, two volumes, in an Auto Scaling group,
      behind a target group and a Classic Load Balancer), and print what happened. EVENT
      defaults to events/credential-exfiltration.json. --missing-instance points the event at an
      instance that does not exist, to show a failing step caught and reported. --member-account
      puts the instance in a member account, contained through the member role. --parameter
      sets a template parameter (RoleAction=revoke-sessions, ...); --dry-run is DryRun=true.
      --exempt tags the instance with the exemption tag first; --paused pauses the responder
      first, as deploy.sh pause does; --security-hub enables Security Hub where the finding is and
      puts the finding there first, as GuardDuty does. --repeat sends a second finding
      for the same instance afterwards; --release then runs the release workflow and compares
      the state with the state before containment. The evidence is copied to a simulated
      forensic account unless --no-forensic-account (the template's default: no account; the
      deployed path deploys the defaults). Exit status: 0 when every execution
      succeeded or the rule did not match, 3 when one ended Failed.
      --deployed deploys template.yaml itself: the release bootstraps packaged as sam build
      packages them, `sam deploy` into a local control plane (MiniStack: CloudFormation with
      the SAM transform, Lambda, EventBridge, Step Functions, SNS, DynamoDB), the finding
      published to the deployed rule, the deployed state machine running the deployed functions
      against the simulated instance (not with --member-account). --approval turns approvals on
      for the finding's type and answers the request as deploy.sh approve or reject does, or lets
      it time out (60 s); with --collect (default path), the workflow collects the instance's
      volatile evidence, then a memory image, while the approval is awaited
      (VolatileEvidenceDocument=Collect, MemoryImages=Collect: a simulated SSM agent runs the
      tool's documents on the simulated instance, its archive goes to the evidence bucket, a
      stand-in for AVML writes to the volume made for the image), and the answer comes once the
      collection has ended. With
      --deployed only: --burst N sets the rate cap to N and sends N+1 findings at once, one
      instance each: N are contained, the rest wait for approval (answered as --approval says,
      else left to time out).

  deploy.sh invoke FUNCTION EVENT
      Invoke one function (triage, isolate, deregister, snapshot, deny-role, notify, security-hub, evidence-copy, collect, release)
      with an event, on the local
      emulator and a simulated instance: `sam local invoke` without Docker. Prints the result.

  deploy.sh emulator [--json] [--bind ADDRESS] [--port N]
      For `sam local invoke`, which otherwise acts on the real account of your credentials: starts
      the local AWS emulator with the simulated compromised instance and the stack's resources,
      writes the sample events pointed at it (.tools/emulator/events/) and an --env-vars file
      that points every function at the emulator (.tools/emulator/env.json), prints the exact
      `sam local invoke` command for every function (test credentials, never yours), and keeps
      running until Ctrl-C. It listens on Docker's bridge address (docker0) where there is one;
      on Linux without one it asks for --bind; elsewhere on loopback (Docker Desktop:
      host.docker.internal). --json prints what it made as one JSON line.

  deploy.sh deploy [--region R | --regions R1,R2] [--stack-name S] [--alert-email E]
                   [--severity-threshold N] [--member-role-name NAME --external-id ID]
                   [--allow-accounts A1,A2] [--deny-accounts A1,A2] [--parameter KEY=VALUE]...
      sam build + sam deploy with your AWS credentials, in each region. Environment: AWS_REGION,
      REGIONS, STACK_NAME, ALERT_EMAIL, SEVERITY_THRESHOLD, MEMBER_ROLE_NAME,
      MEMBER_ROLE_EXTERNAL_ID, MEMBER_ACCOUNTS_ALLOW, MEMBER_ACCOUNTS_DENY.

  deploy.sh nuke [--region R | --regions R1,R2] [--stack-name S] [--purge-artifacts] [--yes]
      Delete the responder stack and the test instance stack. With --purge-artifacts, also the
      quarantine artifacts the responder created (forensic snapshots, quarantine groups, the
      DenyAll policy and inline denies, the quarantine profile), selected by the tool's tags and
      names only; what an open case (in any region's case table) holds is kept: its
      snapshots, its role's denies, the groups, the profile, its case table. Lists everything and asks first (--yes: no question).

  deploy.sh test-instance [--region R] [--ssh-cidr CIDR]
      Deploy the deliberately "compromised" test instance (helper_scripts/test-instance.yaml);
      prints its instance id and role name.

  deploy.sh fire EVENT [INSTANCE_ID] [--region R] [--stack-name S] [--wait]
      Start the state machine with EVENT pointed at the instance (default: the test instance),
      without waiting 20-30 minutes for GuardDuty.

  deploy.sh verify [INSTANCE_ID] [--region R] [--stack-name S] [--table T] [--json]
      What the workflow did to the instance: executions, groups per interface, snapshots, role
      policies (the role from its case), marker tags. Exit status 0 when contained, 3 otherwise.

  deploy.sh cases [--open] [--json] [--region R] [--stack-name S | --table T]
      The cases in the responder's case table, newest first: instance, account, region, status,
      opened, released. --open: only the cases not released.

  deploy.sh case ID_OR_INSTANCE [--json] [--region R] [--stack-name S | --table T]
      One case's timeline: its findings, each step (start, end, outcome, what it created), the
      exact previous state it recorded (what release restores), and every release attempt. An
      instance id shows its open case, else its latest.

  deploy.sh pause --reason TEXT [--region R] [--stack-name S]
  deploy.sh resume [--region R] [--stack-name S]
      The pause switch (the stack's PauseParameterName): while paused, every finding is reported
      and none contained automatically; the notification says since when, by whom (SSM's record)
      and why (TEXT). The functions read the switch within seconds. resume contains again.

  deploy.sh approve APPROVAL_ID [--reason TEXT] [--json] [--region R] [--stack-name S]
  deploy.sh reject APPROVAL_ID --reason TEXT [--json] [--region R] [--stack-name S]
      Answers an approval request (Approvals=true; APPROVAL_ID is apr-..., as the request
      message gives it): the decision, your identity (STS) and the time are recorded, and the
      waiting execution goes on (approve: the instances that waited are contained). A request
      decided already, past its deadline or unknown is refused and nothing changes (exit 1).

  deploy.sh rails [--json] [--region R] [--stack-name S]
      The safety rails as they stand: the pause switch (since when, by whom, why), each
      account's automatic containments in the last hour against MaxContainmentsPerHour (and
      when the first slot frees), and every approval request waiting for a person, with its
      deadline and the commands that answer it.

  deploy.sh status [--json] [--region R] [--stack-name S]
      For the on-call engineer: the pause switch, every alarm of the stack and its state (the
      ones in ALARM first), the last executions of the containment and release workflows with
      their status and duration, and the dashboard's address. Exit status 0, or 3 when an alarm
      is in ALARM or the responder is paused.

  deploy.sh logs [--function NAME] [--since DURATION] [--region R] [--stack-name S]
      The stack's log lines since DURATION ago (30m, 1h, 2d; default 1h), oldest first, each
      with the function or state machine it came from: every function and state machine, or
      NAME only (triage, isolate, deregister, snapshot, deny-role, notify, security-hub,
      approval, approval-link, evidence-copy, collect, release; containment, release-workflow,
      evidence-copy-workflow, collection-workflow for the state machines). At most 1,000 lines
      per log group; it says so when there are more.

  deploy.sh help | --help | -h
      This text. A mistake in the call (an unknown subcommand or option, a missing or bad value,
      an input file that is missing, unreadable, not JSON, not a JSON object, or not the event the
      subcommand takes) is named on one line, with exit status 2, before anything starts.
EOF
}

STACK_NAME="${STACK_NAME:-ec2-quarantine}"
REGIONS="${REGIONS:-}"
MEMBER_ROLE_NAME="${MEMBER_ROLE_NAME:-}"
MEMBER_ROLE_EXTERNAL_ID="${MEMBER_ROLE_EXTERNAL_ID:-}"
MEMBER_ACCOUNTS_ALLOW="${MEMBER_ACCOUNTS_ALLOW:-}"
MEMBER_ACCOUNTS_DENY="${MEMBER_ACCOUNTS_DENY:-}"
ALERT_EMAIL="${ALERT_EMAIL:-}"
SEVERITY_THRESHOLD="${SEVERITY_THRESHOLD:-}"
REGION="${AWS_REGION:-${AWS_DEFAULT_REGION:-}}"

# A mistake in how deploy.sh was called (a subcommand, an option, a value, an input file): one
# line on stderr, exit status 2, before anything slow (a build, the tools, the emulator) starts.
usage_error() { printf 'deploy.sh: %s\n' "$*" >&2; exit 2; }

need_value() { [[ $# -ge 2 && -n "$2" && "$2" != --* ]] || usage_error "$1 needs a value"; }

check_severity() {
  [[ "$1" =~ ^([0-9](\.[0-9]+)?|10(\.0+)?)$ ]] || usage_error "--severity-threshold must be a number from 0 to 10, got $1"
}

check_region() {
  [[ "$1" =~ ^[a-z]{2}(-[a-z]+)+-[0-9]+$ ]] || usage_error "not an AWS region name: $1"
}

check_stack_name() {
  [[ "$1" =~ ^[A-Za-z][A-Za-z0-9-]{0,127}$ ]] || usage_error "invalid stack name: $1"
}

# --parameter KEY=VALUE: KEY must be one of template.yaml's parameters.
check_parameter() {
  [[ "$1" =~ ^([A-Za-z][A-Za-z0-9]*)=.*$ ]] || usage_error "--parameter takes KEY=VALUE (a template parameter), got $1"
  local key="${BASH_REMATCH[1]}" known
  known="$(awk '/^Parameters:/ { p = 1; next } p && /^[^ #]/ { p = 0 } p && /^  [A-Za-z0-9]+:/ { sub(/^ +/, ""); sub(/:.*/, ""); printf "%s, ", $0 }' "$PROJECT_ROOT/template.yaml")"
  known="${known%, }"
  [[ -z "$known" || ", $known, " == *", $key, "* ]] || usage_error "--parameter $1: template.yaml has no parameter $key (one of $known)"
}

# The input file of local, invoke and fire, checked before anything slow starts: it must exist, be
# a readable regular file, hold one JSON object and, for KIND finding, be a GuardDuty finding event
# as EventBridge delivers it (source aws.guardduty, detail-type "GuardDuty Finding", an object
# detail); for KIND instance-finding, one that names an instance to point at (detail.resource with
# instanceDetails or accessKeyDetails). KIND object takes any JSON object (a function's input).
IFS= read -r -d '' CHECK_INPUT_PY <<'PY' || true
import json, sys

path, kind = sys.argv[1], sys.argv[2]


def bad(problem):
    print(problem)
    sys.exit(1)


def check():
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        bad(f"cannot be read ({e.strerror.lower() if e.strerror else e})")
    if not data.strip():
        bad("empty (expected a JSON object)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        bad(f"not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start})")

    def constant(name):
        raise ValueError(f"{name} is not a JSON value")

    try:
        doc = json.loads(text, parse_constant=constant)
    except json.JSONDecodeError as e:
        bad(f"not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})")
    except RecursionError:
        bad("not valid JSON (nested too deeply to read)")
    except ValueError as e:
        bad(f"not valid JSON ({e})")
    if not isinstance(doc, dict):
        what = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(type(doc), "a number")
        bad(f"not a JSON object (it holds {what})")
    if kind == "object":
        return
    if "source" not in doc and "detail-type" not in doc and "detail" not in doc:
        if "instance_id" in doc:
            hint = "; it looks like a release request: deploy.sh invoke release FILE"
        elif isinstance(doc.get("event"), dict):
            hint = "; it looks like the notify function's input: deploy.sh invoke notify FILE"
        else:
            hint = ""
        bad(f"not an EventBridge event (no source, detail-type or detail){hint}")
    source, detail_type = doc.get("source"), doc.get("detail-type")
    if source != "aws.guardduty" or detail_type != "GuardDuty Finding":
        bad(f"not a GuardDuty finding event (source {json.dumps(source)}, detail-type {json.dumps(detail_type)}; "
            'the rule takes source "aws.guardduty", detail-type "GuardDuty Finding")')
    detail = doc.get("detail")
    if not isinstance(detail, dict):
        bad(f"not a GuardDuty finding event (its detail is {'missing' if detail is None else 'not an object'})")
    if kind == "instance-finding":
        resource = detail.get("resource")
        if not (isinstance(resource, dict) and any(isinstance(resource.get(k), dict) for k in ("instanceDetails", "accessKeyDetails"))):
            bad("a finding that names no EC2 instance (no detail.resource.instanceDetails or accessKeyDetails) to point at")


try:
    check()
except SystemExit:
    raise
except BaseException as e:  # a problem of the check itself: still one line
    bad(f"could not be checked ({type(e).__name__}: {e})")
PY

check_input() {
  local file="$1" kind="$2" py problem
  if [[ ! -e "$file" ]]; then
    if [[ -L "$file" ]]; then usage_error "$file: a broken symbolic link"; fi
    usage_error "$file: no such file"
  fi
  if [[ -d "$file" ]]; then usage_error "$file: a directory, not a file"; fi
  [[ -f "$file" ]] || usage_error "$file: not a regular file (a pipe, socket or device)"
  [[ -r "$file" ]] || usage_error "$file: not readable (permission denied)"
  py="$(command -v python3 || true)"
  [[ -n "$py" ]] || { [[ -x "$VENV/bin/python" ]] && py="$VENV/bin/python"; } || die "python3 is required"
  problem="$("$py" -I -c "$CHECK_INPUT_PY" "$file" "$kind" 2>&1)" || usage_error "$file: ${problem//$'\n'/ }"
}

# ------------------------------------------------------------------ local

cmd_local() {
  local args=() alone=() event="" deployed=false member=false approval=false burst=false collect=false
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --deployed) deployed=true ;;
      --member-account) member=true; args+=("$1") ;;
      --json | --no-forensic-account) args+=("$1") ;;
      --collect) collect=true; args+=("$1") ;;
      --missing-instance | --dry-run | --exempt | --paused | --security-hub | --repeat | --release) alone+=("$1"); args+=("$1") ;;
      --severity-threshold) need_value "$@"; check_severity "$2"; args+=("$1" "$2"); shift ;;
      --parameter) need_value "$@"; check_parameter "$2"; args+=("$1" "$2"); shift ;;
      --approval)
        need_value "$@"
        [[ "$2" =~ ^(approve|reject|timeout)$ ]] || usage_error "--approval takes approve, reject or timeout, not $2"
        approval=true; args+=("$1" "$2"); shift ;;
      --burst)
        need_value "$@"
        [[ "$2" =~ ^[1-9]$ ]] || usage_error "--burst takes 1 to 9 (the rate cap; one more finding is sent), not $2"
        approval=true; burst=true; args+=("$1" "$2"); shift ;;
      -h | --help) usage; exit 0 ;;
      -*) usage_error "unknown option $1 for local (see deploy.sh --help)" ;;
      *) [[ -z "$event" ]] || usage_error "local takes one EVENT file, got $event and $1"; event="$1" ;;
    esac
    shift
  done
  if [[ -n "$event" ]]; then
    # A GuardDuty finding event: anything else is not what the rule and the workflow take.
    check_input "$event" finding
    args+=("$(cd "$(dirname "$event")" && pwd)/$(basename "$event")")
  fi
  $deployed && $member && usage_error "--deployed runs the stack as deployed in one account: not with --member-account"
  $burst && ! $deployed && usage_error "--burst publishes its findings to the deployed rule: add --deployed"
  $collect && { $deployed || $burst || ! $approval; } &&
    usage_error "--collect collects while an approval is awaited, on the default path: with --approval, not with --deployed or --burst"
  $approval && [[ ${#alone[@]} -gt 0 ]] &&
    usage_error "--approval and --burst need a request to answer and run their own findings: not with ${alone[*]}"
  build_functions
  if $deployed; then
    # What sam build builds: the release profile (helper_scripts/local/deployed.py, build).
    log "building the release bootstraps"
    (cd "$PROJECT_ROOT" && cargo build --release --locked --bins --quiet >&2)
    ensure_control_plane_tools
    log "deploying template.yaml with sam deploy into the local control plane, and running the finding through it"
    "$VENV/bin/python" -m local.run --bin-dir "$CARGO_TARGET_DIR/debug" --deployed --release-dir "$CARGO_TARGET_DIR/release" "${args[@]}"
    return
  fi
  log "running the workflow on the local emulator"
  "$VENV/bin/python" -m local.run --bin-dir "$CARGO_TARGET_DIR/debug" "${args[@]}"
}

build_functions() {
  command -v cargo >/dev/null || die "cargo is required (https://rustup.rs)"
  ensure_python_tools
  log "building the functions"
  # The test build's binaries: the same feature set as the test suite, so nothing builds twice.
  (cd "$PROJECT_ROOT" && cargo test --locked --no-run --quiet >&2)
  local bin
  for bin in isolate snapshot deny-role notify security-hub; do
    [[ -x "$CARGO_TARGET_DIR/debug/$bin" ]] || die "the build did not produce $bin"
  done
}

cmd_emulator() {
  local args=("$@")
  while [[ $# -gt 0 ]]; do
    case "$1" in
      -h | --help) usage; exit 0 ;;
      --json) ;;
      --bind)
        need_value "$@"
        [[ "$2" =~ ^[0-9.]+$|^[0-9a-fA-F:]+$ ]] || usage_error "--bind takes an IP address, got $2"
        shift ;;
      --port)
        need_value "$@"
        [[ "$2" =~ ^[0-9]{1,5}$ ]] && (($2 > 0 && $2 < 65536)) || usage_error "--port takes a port number, got $2"
        shift ;;
      *) usage_error "unknown option $1 for emulator (see deploy.sh --help)" ;;
    esac
    shift
  done
  ensure_python_tools
  exec "$VENV/bin/python" -m local.emulator ${args[@]+"${args[@]}"}
}

FUNCTIONS="triage, isolate, deregister, snapshot, deny-role, notify, security-hub, evidence-copy, collect, approval, release"

cmd_invoke() {
  local positional=()
  while [[ $# -gt 0 ]]; do
    case "$1" in
      -h | --help) usage; exit 0 ;;
      -*) usage_error "unknown option $1 for invoke (see deploy.sh --help)" ;;
      *) positional+=("$1") ;;
    esac
    shift
  done
  [[ ${#positional[@]} -eq 2 ]] ||
    usage_error "invoke takes FUNCTION EVENT, e.g. deploy.sh invoke isolate events/credential-exfiltration.json (FUNCTION: $FUNCTIONS)"
  local function="${positional[0]}" event="${positional[1]}"
  [[ ", $FUNCTIONS, " == *", $function, "* ]] || usage_error "unknown FUNCTION $function (one of $FUNCTIONS)"
  # Any JSON object: invoke shows what the function itself answers to its input, a wrong one included.
  check_input "$event" object
  event="$(cd "$(dirname "$event")" && pwd)/$(basename "$event")"
  build_functions
  "$VENV/bin/python" -m local.run --bin-dir "$CARGO_TARGET_DIR/debug" --invoke "$function" "$event"
}

# ------------------------------------------------------------------ deploy / nuke

parse_aws_flags() {
  PURGE=false
  ASSUME_YES=false
  EXTRA_PARAMS=()
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --region) need_value "$@"; check_region "$2"; REGION="$2"; shift ;;
      --regions) need_value "$@"; REGIONS="$2"; shift ;;
      --member-role-name) need_value "$@"; MEMBER_ROLE_NAME="$2"; shift ;;
      --external-id) need_value "$@"; MEMBER_ROLE_EXTERNAL_ID="$2"; shift ;;
      --allow-accounts) need_value "$@"; MEMBER_ACCOUNTS_ALLOW="$2"; shift ;;
      --deny-accounts) need_value "$@"; MEMBER_ACCOUNTS_DENY="$2"; shift ;;
      --stack-name) need_value "$@"; STACK_NAME="$2"; shift ;;
      --alert-email) need_value "$@"; ALERT_EMAIL="$2"; shift ;;
      --severity-threshold) need_value "$@"; SEVERITY_THRESHOLD="$2"; shift ;;
      --parameter) need_value "$@"; check_parameter "$2"; EXTRA_PARAMS+=("$2"); shift ;;
      --purge-artifacts) PURGE=true ;;
      --yes) ASSUME_YES=true ;;
      -h | --help) usage; exit 0 ;;
      -*) usage_error "unknown option $1 for $COMMAND (see deploy.sh --help)" ;;
      *) usage_error "unexpected argument $1 for $COMMAND (see deploy.sh --help)" ;;
    esac
    shift
  done
  check_stack_name "$STACK_NAME"
  [[ -z "$SEVERITY_THRESHOLD" ]] || check_severity "$SEVERITY_THRESHOLD"
  local list
  for list in "$MEMBER_ACCOUNTS_ALLOW" "$MEMBER_ACCOUNTS_DENY"; do
    [[ -z "$list" || "$list" =~ ^[0-9]{12}(,[0-9]{12})*$ ]] || usage_error "account lists are comma-separated 12-digit ids, got $list"
  done
  if [[ -n "$MEMBER_ROLE_NAME" && -z "$MEMBER_ROLE_EXTERNAL_ID" ]]; then
    usage_error "--member-role-name needs --external-id (the one given to helper_scripts/member-account-role.yaml)"
  fi
  [[ -n "$REGIONS" && -n "$REGION" && "$REGIONS" != *"$REGION"* ]] && log "--regions given: ignoring region $REGION"
  [[ -n "$REGIONS" ]] || REGIONS="$REGION"
  local r
  for r in ${REGIONS//,/ }; do
    check_region "$r"
  done
  return 0
}

SAM=""
require_aws_tools() {
  if command -v sam >/dev/null; then
    SAM=sam
  elif [[ -x "$VENV/bin/sam" ]]; then
    SAM="$VENV/bin/sam"
  else
    die "the AWS SAM CLI is not installed: pip install aws-sam-cli (or run helper_scripts/test.sh once, which installs it into .tools/venv)"
  fi
  command -v aws >/dev/null || die "the AWS CLI is not installed: see https://aws.amazon.com/cli/"
  if [[ -z "$REGIONS" ]]; then
    REGIONS="$(aws configure get region 2>/dev/null || true)"
  fi
  [[ -n "$REGIONS" ]] || die "no region: pass --region or --regions, or set AWS_REGION (use the regions where GuardDuty runs)"
  local r
  for r in ${REGIONS//,/ }; do
    [[ "$r" =~ ^[a-z]{2}(-[a-z]+)+-[0-9]+$ ]] || die "not an AWS region name: $r"
  done
  local identity
  identity="$(aws sts get-caller-identity --region "${REGIONS%%,*}" --output text --query Arn 2>&1)" ||
    die "no usable AWS credentials ($identity): configure them (aws configure, AWS_PROFILE or SSO) first"
  log "acting as $identity in ${REGIONS//,/, }"
  export SAM_CLI_TELEMETRY=0
}

# AVML (Microsoft's memory acquisition tool, crate avml, pinned) for MemoryImages=Collect: built
# here from the crate's published source and lock file, static (musl) for both architectures,
# without its upload features; uploaded to the evidence bucket once the stack is deployed. Its
# SHA-256 goes into the template's parameters: an instance runs only these bytes, fetched from
# the bucket through a presigned URL, never from the internet.
AVML_VERSION=0.21.0
AVML_DIR="$TOOLS_DIR/avml"
wants_memory_images() {
  local p
  for p in ${EXTRA_PARAMS[@]+"${EXTRA_PARAMS[@]}"}; do
    [[ "$p" == "MemoryImages=Collect" ]] && return 0
  done
  return 1
}

build_avml() {
  local src="$AVML_DIR/avml-$AVML_VERSION" fetch="$AVML_DIR/fetch" arch target
  if [[ ! -f "$src/Cargo.lock" ]]; then
    log "fetching the source of avml $AVML_VERSION from crates.io"
    mkdir -p "$fetch/src"
    printf '[package]\nname = "avml-fetch"\nversion = "0.0.0"\nedition = "2021"\n\n[dependencies]\navml = { version = "=%s", default-features = false }\n' \
      "$AVML_VERSION" >"$fetch/Cargo.toml"
    echo 'fn main() {}' >"$fetch/src/main.rs"
    local manifest
    manifest="$(cargo metadata --manifest-path "$fetch/Cargo.toml" --format-version 1 |
      python3 -c 'import json, sys; print(next(p["manifest_path"] for p in json.load(sys.stdin)["packages"] if p["name"] == "avml"))')"
    rm -rf "$src"
    cp -r "$(dirname "$manifest")" "$src"
  fi
  for arch in x86_64 aarch64; do
    target="$arch-unknown-linux-musl"
    if [[ ! -x "$AVML_DIR/$AVML_VERSION/$target/avml" ]]; then
      rustup target list --installed 2>/dev/null | grep -qx "$target" || timeout 600 rustup target add "$target" >&2 ||
        die "the $target Rust target could not be installed (rustup needs static.rust-lang.org)"
      log "building avml $AVML_VERSION for $target (cargo-lambda's zig links it)"
      (cd "$src" && CARGO_TARGET_DIR="$AVML_DIR/target" cargo lambda build --release --locked --no-default-features \
        --bin avml --target "$target") >&2
      mkdir -p "$AVML_DIR/$AVML_VERSION/$target"
      cp "$AVML_DIR/target/lambda/avml/bootstrap" "$AVML_DIR/$AVML_VERSION/$target/avml"
    fi
  done
}

avml_sha256() { sha256sum "$AVML_DIR/$AVML_VERSION/$1-unknown-linux-musl/avml" | cut -d' ' -f1; }

# Each binary under a name with its SHA-256 (src/steps/memory.rs, Arch::tool_key): the bucket
# writes a name once (WriteOnceOnly: If-None-Match), so a rebuilt binary gets a name of its own,
# and one already there is not uploaded again.

upload_avml() {
  local region=$1 bucket arch key
  bucket="$(aws cloudformation describe-stacks --stack-name "$STACK_NAME" --region "$region" \
    --query "Stacks[0].Outputs[?OutputKey=='EvidenceBucketName'].OutputValue" --output text)"
  [[ -n "$bucket" && "$bucket" != None ]] || die "the stack has no EvidenceBucketName output: the AVML binaries are not uploaded"
  for arch in x86_64 aarch64; do
    key="tools/avml-$AVML_VERSION-$arch-unknown-linux-musl-$(avml_sha256 "$arch")"
    if aws s3api head-object --region "$region" --bucket "$bucket" --key "$key" >/dev/null 2>&1; then
      log "avml ($arch) is already in s3://$bucket/$key"
      continue
    fi
    log "uploading avml ($arch) to s3://$bucket/$key"
    # Written once (the bucket refuses a PUT without If-None-Match), with an integrity header
    # (the bucket's default Object Lock retention needs one).
    aws s3api put-object --region "$region" --bucket "$bucket" --key "$key" --if-none-match '*' \
      --body "$AVML_DIR/$AVML_VERSION/$arch-unknown-linux-musl/avml" --checksum-algorithm SHA256 >/dev/null
  done
}

cmd_deploy() {
  parse_aws_flags "$@"
  require_aws_tools
  cd "$PROJECT_ROOT"
  # cargo-lambda (pinned, into .tools/venv) and the aarch64 Rust target come with it.
  sam_build
  local params=()
  if wants_memory_images; then
    build_avml
    params+=("AvmlSha256X8664=$(avml_sha256 x86_64)" "AvmlSha256Arm64=$(avml_sha256 aarch64)")
  fi
  [[ -n "$ALERT_EMAIL" ]] && params+=("AlertEmail=$ALERT_EMAIL")
  [[ -n "$SEVERITY_THRESHOLD" ]] && params+=("SeverityThreshold=$SEVERITY_THRESHOLD")
  [[ -n "$MEMBER_ROLE_NAME" ]] && params+=("MemberRoleName=$MEMBER_ROLE_NAME" "MemberRoleExternalId=$MEMBER_ROLE_EXTERNAL_ID")
  [[ -n "$MEMBER_ACCOUNTS_ALLOW" ]] && params+=("MemberAccountsAllow=$MEMBER_ACCOUNTS_ALLOW")
  [[ -n "$MEMBER_ACCOUNTS_DENY" ]] && params+=("MemberAccountsDeny=$MEMBER_ACCOUNTS_DENY")
  params+=(${EXTRA_PARAMS[@]+"${EXTRA_PARAMS[@]}"})
  # GuardDuty findings are regional: one responder per region, from the same build.
  local region
  for region in ${REGIONS//,/ }; do
    log "sam deploy: stack $STACK_NAME in $region"
    "$SAM" deploy --stack-name "$STACK_NAME" --region "$region" --resolve-s3 \
      --capabilities CAPABILITY_IAM --no-fail-on-empty-changeset --no-confirm-changeset \
      ${params[@]:+--parameter-overrides "${params[@]}"}
    wants_memory_images && upload_avml "$region"
    aws cloudformation describe-stacks --stack-name "$STACK_NAME" --region "$region" \
      --query 'Stacks[0].Outputs[].[OutputKey,OutputValue]' --output text
  done
  [[ -n "$ALERT_EMAIL" ]] && log "confirm the subscription mail(s) sent to $ALERT_EMAIL"
  return 0
}


cmd_nuke() {
  parse_aws_flags "$@"
  local flags=(--stack-name "$STACK_NAME")
  [[ "$PURGE" == true ]] && flags+=(--purge-artifacts)
  [[ "$ASSUME_YES" == true ]] && flags+=(--yes)
  local region
  for region in ${REGIONS//,/ }; do
    ops nuke --region "$region" "${flags[@]}"
  done
  [[ -n "$REGIONS" ]] || ops nuke "${flags[@]}"
}

# ------------------------------------------------------------------ the test path

# test-instance, fire and verify: their arguments are checked here, before the Python tools are
# installed or AWS is called, then passed unchanged to helper_scripts/aws_ops.py.
cmd_test_path() {
  local valued flags most args=("$@") positional=()
  case "$COMMAND" in
    test-instance) valued=" --region --ssh-cidr " flags=" " most=0 ;;
    fire) valued=" --region --stack-name --state-machine-arn " flags=" --wait " most=2 ;;
    verify) valued=" --region --stack-name --state-machine-arn --table " flags=" --json " most=1 ;;
    cases) valued=" --region --stack-name --table " flags=" --open --json " most=0 ;;
    case) valued=" --region --stack-name --table " flags=" --json " most=1 ;;
    pause) valued=" --region --stack-name --reason " flags=" " most=0 ;;
    resume) valued=" --region --stack-name " flags=" " most=0 ;;
    approve | reject) valued=" --region --stack-name --reason " flags=" --json " most=1 ;;
    rails | status) valued=" --region --stack-name " flags=" --json " most=0 ;;
    logs) valued=" --region --stack-name --function --since " flags=" " most=0 ;;
  esac
  local reason_given=false
  while [[ $# -gt 0 ]]; do
    case "$1" in
      -h | --help) usage; exit 0 ;;
      --*=*) set -- "${1%%=*}" "${1#*=}" "${@:2}"; continue ;; # aws_ops.py takes --option=value too
      -*)
        if [[ "$valued" == *" $1 "* ]]; then
          need_value "$@"
          case "$1" in
            --region) check_region "$2" ;;
            --stack-name) check_stack_name "$2" ;;
            --table) [[ "$2" =~ ^[A-Za-z0-9_.-]{3,255}$ ]] || usage_error "--table takes a DynamoDB table name, got $2" ;;
            --function) [[ "$2" =~ ^[a-z-]{3,40}$ ]] || usage_error "--function takes a function or workflow name (triage, isolate, ..., containment), got $2" ;;
            --since) [[ "$2" =~ ^[0-9]{1,4}[mhd]$ ]] || usage_error "--since takes a duration such as 30m, 1h or 2d, got $2" ;;
            --reason) [[ "$2" =~ [^[:space:]] ]] || usage_error "--reason takes a text for the team, got an empty one"; reason_given=true ;;
            --state-machine-arn)
              [[ "$2" =~ ^arn:[a-z-]+:states:[a-z0-9-]+:[0-9]{12}:stateMachine:[A-Za-z0-9_.-]+$ ]] ||
                usage_error "--state-machine-arn takes a state machine ARN (arn:aws:states:REGION:ACCOUNT:stateMachine:NAME), got $2" ;;
            --ssh-cidr)
              [[ "$2" =~ ^([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})/([0-9]{1,2})$ ]] &&
                ((10#${BASH_REMATCH[1]} < 256 && 10#${BASH_REMATCH[2]} < 256 && 10#${BASH_REMATCH[3]} < 256 && 10#${BASH_REMATCH[4]} < 256 && 10#${BASH_REMATCH[5]} <= 32)) ||
                usage_error "--ssh-cidr takes an IPv4 CIDR such as 203.0.113.7/32, got $2" ;;
          esac
          shift
        elif [[ "$flags" != *" $1 "* ]]; then
          usage_error "unknown option $1 for $COMMAND (see deploy.sh --help)"
        fi ;;
      *) positional+=("$1") ;;
    esac
    shift
  done
  [[ ${#positional[@]} -le $most ]] || usage_error "unexpected argument ${positional[$most]} for $COMMAND (see deploy.sh --help)"
  [[ "$COMMAND" != pause ]] || $reason_given || usage_error "pause takes --reason TEXT (why, for the team), e.g. deploy.sh pause --reason \"scanner mistaken for an attacker\""
  [[ "$COMMAND" != reject ]] || $reason_given || usage_error "reject takes --reason TEXT (why, for the record), e.g. deploy.sh reject apr-0123456789abcdef --reason \"our vulnerability scanner\""
  local instance_id="" event=""
  if [[ "$COMMAND" == fire ]]; then
    [[ ${#positional[@]} -ge 1 ]] || usage_error "fire takes EVENT [INSTANCE_ID], e.g. deploy.sh fire events/credential-exfiltration.json"
    event="${positional[0]}" instance_id="${positional[1]:-}"
  elif [[ "$COMMAND" == verify ]]; then
    instance_id="${positional[0]:-}"
  elif [[ "$COMMAND" == approve || "$COMMAND" == reject ]]; then
    [[ ${#positional[@]} -ge 1 ]] || usage_error "$COMMAND takes the request's id, e.g. deploy.sh $COMMAND apr-0123456789abcdef"
    [[ "${positional[0]}" =~ ^apr-[0-9a-f]{16}$ ]] ||
      usage_error "not an approval request id (apr- and 16 hexadecimal digits, as the request message gives it): ${positional[0]}"
  elif [[ "$COMMAND" == case ]]; then
    [[ ${#positional[@]} -ge 1 ]] || usage_error "case takes a case id or an instance id, e.g. deploy.sh case i-0123456789abcdef0"
    [[ "${positional[0]}" =~ ^i-([0-9a-f]{8}|[0-9a-f]{17})(-[0-9]{8}T[0-9]{9}Z)?$ ]] ||
      usage_error "not a case id (i-...-YYYYMMDDTHHMMSSmmmZ) or an instance id: ${positional[0]}"
  fi
  [[ -z "$instance_id" || "$instance_id" =~ ^i-([0-9a-f]{8}|[0-9a-f]{17})$ ]] ||
    usage_error "not an EC2 instance id: $instance_id (i- and 8 or 17 hexadecimal digits)"
  # fire starts the state machine with the finding pointed at an instance: it needs one that names
  # an instance (in instanceDetails, or the session of accessKeyDetails).
  [[ -z "$event" ]] || check_input "$event" instance-finding
  ops "$COMMAND" ${args[@]+"${args[@]}"}
}

# The AWS operations of the user's test path (helper_scripts/aws_ops.py, boto3).
ops() {
  ensure_python_tools
  "$VENV/bin/python" "$PROJECT_ROOT/helper_scripts/aws_ops.py" "$@"
}

# ------------------------------------------------------------------ main

[[ $# -ge 1 ]] || { usage; exit 2; }
COMMAND="$1"
shift
case "$COMMAND" in
  local) cmd_local "$@" ;;
  invoke) cmd_invoke "$@" ;;
  test-instance | fire | verify | cases | case | pause | resume | approve | reject | rails | status | logs) cmd_test_path "$@" ;;
  deploy) cmd_deploy "$@" ;;
  emulator) cmd_emulator "$@" ;;
  nuke) cmd_nuke "$@" ;;
  -h | --help | help) usage ;;
  -*) usage_error "unknown option $COMMAND: the subcommand comes first (see deploy.sh --help)" ;;
  *) usage_error "unknown subcommand $COMMAND: one of local, invoke, emulator, deploy, nuke, test-instance, fire, verify, cases, case, pause, resume, approve, reject, rails, status, logs (see deploy.sh --help)" ;;
esac
