#!/usr/bin/env bash
# ec2-quarantine: deploy to AWS, remove, or run the whole workflow offline.
#
#   deploy.sh local [EVENT] [--json] [--missing-instance] [--member-account] [--severity-threshold N]
#   deploy.sh invoke FUNCTION EVENT
#   deploy.sh deploy [--region R | --regions R1,R2] [--stack-name S] [--alert-email E] ...
#   deploy.sh nuke   [--region R | --regions R1,R2] [--stack-name S] [--purge-artifacts] [--yes]
#   deploy.sh test-instance | fire EVENT [INSTANCE_ID] | verify [INSTANCE_ID]   (the test path)
#
# Only deploy, nuke, test-instance, fire and verify talk to AWS, with the caller's credentials.
# local and invoke need no AWS at all.
set -euo pipefail
source "$(dirname "$0")/lib/common.sh"

usage() {
  cat <<'EOF'
Usage:
  deploy.sh local [EVENT] [--json] [--missing-instance] [--member-account] [--severity-threshold N]
                  [--parameter KEY=VALUE]... [--dry-run] [--exempt] [--repeat] [--release]
      Run the real state machine and the real Rust functions against a local AWS emulator, on a
      simulated compromised instance (two interfaces, two volumes, in an Auto Scaling group,
      behind a target group and a Classic Load Balancer), and print what happened. EVENT
      defaults to events/credential-exfiltration.json. --missing-instance points the event at an
      instance that does not exist, to show a failing step caught and reported. --member-account
      puts the instance in a member account, contained through the member role. --parameter
      sets a template parameter (RoleAction=revoke-sessions, ...); --dry-run is DryRun=true.
      --exempt tags the instance with the exemption tag first. --repeat sends a second finding
      for the same instance afterwards; --release then runs the release workflow and compares
      the state with the state before containment. Exit status: 0 when every execution
      succeeded or the rule did not match, 3 when one ended Failed.

  deploy.sh invoke FUNCTION EVENT
      Invoke one function (triage, isolate, deregister, snapshot, deny-role, notify, release)
      with an event, on the local
      emulator and a simulated instance: `sam local invoke` without Docker. Prints the result.

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
      names only. Lists everything and asks first (--yes: no question).

  deploy.sh test-instance [--region R] [--ssh-cidr CIDR]
      Deploy the deliberately "compromised" test instance (helper_scripts/test-instance.yaml);
      prints its instance id and role name.

  deploy.sh fire EVENT [INSTANCE_ID] [--region R] [--stack-name S] [--wait]
      Start the state machine with EVENT pointed at the instance (default: the test instance),
      without waiting 20-30 minutes for GuardDuty.

  deploy.sh verify [INSTANCE_ID] [--region R] [--stack-name S] [--json]
      What the workflow did to the instance: executions, groups per interface, snapshots, role
      policies, quarantine tags. Exit status 0 when contained, 3 otherwise.
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

need_value() { [[ $# -ge 2 && -n "$2" ]] || die "$1 needs a value"; }

# ------------------------------------------------------------------ local

cmd_local() {
  local args=()
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --json | --missing-instance | --member-account | --dry-run | --exempt | --repeat | --release) args+=("$1") ;;
      --severity-threshold | --parameter) need_value "$@"; args+=("$1" "$2"); shift ;;
      -h | --help) usage; exit 0 ;;
      -*) die "unknown option $1 (see deploy.sh --help)" ;;
      *) [[ -f "$1" ]] || die "no such event file: $1"; args+=("$(cd "$(dirname "$1")" && pwd)/$(basename "$1")") ;;
    esac
    shift
  done
  build_functions
  log "running the workflow on the local emulator"
  "$VENV/bin/python" "$PROJECT_ROOT/helper_scripts/local/run.py" --bin-dir "$CARGO_TARGET_DIR/debug" "${args[@]}"
}

build_functions() {
  command -v cargo >/dev/null || die "cargo is required (https://rustup.rs)"
  ensure_python_tools
  log "building the functions"
  # The test build's binaries: the same feature set as the test suite, so nothing builds twice.
  (cd "$PROJECT_ROOT" && cargo test --locked --no-run --quiet >&2)
  local bin
  for bin in isolate snapshot deny-role notify; do
    [[ -x "$CARGO_TARGET_DIR/debug/$bin" ]] || die "the build did not produce $bin"
  done
}

cmd_invoke() {
  [[ $# -eq 2 ]] || die "usage: deploy.sh invoke FUNCTION EVENT (FUNCTION: isolate, snapshot, deny-role, notify)"
  [[ -f "$2" ]] || die "no such event file: $2"
  local event
  event="$(cd "$(dirname "$2")" && pwd)/$(basename "$2")"
  build_functions
  "$VENV/bin/python" "$PROJECT_ROOT/helper_scripts/local/run.py" --bin-dir "$CARGO_TARGET_DIR/debug" --invoke "$1" "$event"
}

# ------------------------------------------------------------------ deploy / nuke

parse_aws_flags() {
  PURGE=false
  ASSUME_YES=false
  EXTRA_PARAMS=()
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --region) need_value "$@"; REGION="$2"; shift ;;
      --regions) need_value "$@"; REGIONS="$2"; shift ;;
      --member-role-name) need_value "$@"; MEMBER_ROLE_NAME="$2"; shift ;;
      --external-id) need_value "$@"; MEMBER_ROLE_EXTERNAL_ID="$2"; shift ;;
      --allow-accounts) need_value "$@"; MEMBER_ACCOUNTS_ALLOW="$2"; shift ;;
      --deny-accounts) need_value "$@"; MEMBER_ACCOUNTS_DENY="$2"; shift ;;
      --stack-name) need_value "$@"; STACK_NAME="$2"; shift ;;
      --alert-email) need_value "$@"; ALERT_EMAIL="$2"; shift ;;
      --severity-threshold) need_value "$@"; SEVERITY_THRESHOLD="$2"; shift ;;
      --parameter)
        need_value "$@"
        [[ "$2" =~ ^[A-Za-z][A-Za-z0-9]*=.*$ ]] || die "--parameter takes KEY=VALUE (a template parameter), got $2"
        EXTRA_PARAMS+=("$2"); shift ;;
      --purge-artifacts) PURGE=true ;;
      --yes) ASSUME_YES=true ;;
      -h | --help) usage; exit 0 ;;
      *) die "unknown argument $1 (see deploy.sh --help)" ;;
    esac
    shift
  done
  [[ "$STACK_NAME" =~ ^[A-Za-z][A-Za-z0-9-]{0,127}$ ]] || die "invalid stack name: $STACK_NAME"
  if [[ -n "$SEVERITY_THRESHOLD" ]] && ! [[ "$SEVERITY_THRESHOLD" =~ ^([0-9]|10)(\.[0-9]+)?$ ]]; then
    die "--severity-threshold must be a number from 0 to 10, got $SEVERITY_THRESHOLD"
  fi
  local list
  for list in "$MEMBER_ACCOUNTS_ALLOW" "$MEMBER_ACCOUNTS_DENY"; do
    [[ -z "$list" || "$list" =~ ^[0-9]{12}(,[0-9]{12})*$ ]] || die "account lists are comma-separated 12-digit ids, got $list"
  done
  if [[ -n "$MEMBER_ROLE_NAME" && -z "$MEMBER_ROLE_EXTERNAL_ID" ]]; then
    die "--member-role-name needs --external-id (the one given to helper_scripts/member-account-role.yaml)"
  fi
  [[ -n "$REGIONS" && -n "$REGION" && "$REGIONS" != *"$REGION"* ]] && log "--regions given: ignoring region $REGION"
  [[ -n "$REGIONS" ]] || REGIONS="$REGION"
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

cmd_deploy() {
  parse_aws_flags "$@"
  require_aws_tools
  cd "$PROJECT_ROOT"
  # cargo-lambda (pinned, into .tools/venv) and the aarch64 Rust target come with it.
  sam_build
  local params=()
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

# The AWS operations of the user's test path (helper_scripts/aws_ops.py, boto3).
ops() {
  ensure_python_tools
  "$VENV/bin/python" "$PROJECT_ROOT/helper_scripts/aws_ops.py" "$@"
}

# ------------------------------------------------------------------ main

[[ $# -ge 1 ]] || { usage; exit 2; }
command="$1"
shift
case "$command" in
  local) cmd_local "$@" ;;
  invoke) cmd_invoke "$@" ;;
  test-instance | fire | verify) ops "$command" "$@" ;;
  deploy) cmd_deploy "$@" ;;
  nuke) cmd_nuke "$@" ;;
  -h | --help | help) usage ;;
  *) usage >&2; exit 2 ;;
esac
