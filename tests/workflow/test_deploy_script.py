"""deploy.sh's argument handling and its messages when tools or credentials are missing.

Never calls AWS: the script runs from a copy of helper_scripts/ (so it finds no project tools)
with a PATH holding only the system's basic commands and, where a test wants them, stand-ins for
`aws`, `sam` and `cargo-lambda` that record how they were called.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "helper_scripts", tmp_path / "helper_scripts", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "template.yaml", tmp_path / "template.yaml")
    (tmp_path / "bin").mkdir()
    return tmp_path


def stand_in(project: Path, name: str, script: str) -> None:
    path = project / "bin" / name
    path.write_text("#!/bin/bash\n" + f'echo "{name} $*" >> "{project}/calls.log"\n' + script + "\n")
    path.chmod(0o755)


def aws_with_credentials(project: Path) -> None:
    stand_in(
        project,
        "aws",
        """case "$1 $2" in
  "sts get-caller-identity") echo "arn:aws:iam::111122223333:user/responder" ;;
  "configure get") exit 1 ;;
  "cloudformation describe-stacks") echo "StateMachineArn arn:aws:states:eu-west-1:111122223333:stateMachine:x" ;;
esac""",
    )


def deploy_sh(project: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    environment = {
        "PATH": f"{project / 'bin'}:/usr/bin:/bin",
        "HOME": str(project),
        **(env or {}),
    }
    return subprocess.run(
        ["bash", str(project / "helper_scripts" / "deploy.sh"), *args],
        check=False,
        env=environment,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
    )


def calls(project: Path) -> list[str]:
    log = project / "calls.log"
    return log.read_text().splitlines() if log.exists() else []


def test_without_arguments_it_prints_usage(project):
    r = deploy_sh(project)
    assert r.returncode == 2
    assert "deploy.sh local" in r.stdout and "deploy.sh nuke" in r.stdout


def test_an_unknown_subcommand_is_refused(project):
    assert deploy_sh(project, "destroy-everything").returncode == 2


def test_a_bad_threshold_is_refused_before_anything_runs(project):
    r = deploy_sh(project, "deploy", "--severity-threshold", "11", "--region", "eu-west-1")
    assert r.returncode != 0
    assert "from 0 to 10" in r.stderr
    assert calls(project) == []


def test_missing_sam_cli_is_named(project):
    r = deploy_sh(project, "deploy", "--region", "eu-west-1")
    assert r.returncode != 0
    assert "AWS SAM CLI is not installed" in r.stderr


def test_missing_aws_cli_is_named(project):
    stand_in(project, "sam", "exit 0")
    r = deploy_sh(project, "deploy", "--region", "eu-west-1")
    assert r.returncode != 0
    assert "AWS CLI is not installed" in r.stderr


def test_missing_credentials_are_named(project):
    stand_in(project, "sam", "exit 0")
    stand_in(project, "aws", 'echo "Unable to locate credentials. You can configure credentials by running aws configure." >&2; exit 255')
    r = deploy_sh(project, "deploy", "--region", "eu-west-1")
    assert r.returncode != 0
    assert "no usable AWS credentials" in r.stderr
    assert "Unable to locate credentials" in r.stderr
    assert not any(c.startswith("sam ") for c in calls(project)), "nothing was built or deployed"


def test_a_wrong_region_is_refused(project):
    stand_in(project, "sam", "exit 0")
    aws_with_credentials(project)
    r = deploy_sh(project, "deploy", "--region", "mars-north")
    assert r.returncode != 0
    assert "not an AWS region name" in r.stderr


def test_no_region_at_all_is_named(project):
    stand_in(project, "sam", "exit 0")
    aws_with_credentials(project)
    r = deploy_sh(project, "deploy")
    assert r.returncode != 0
    assert "no region" in r.stderr


def test_deploy_builds_and_deploys_with_the_parameters(project):
    stand_in(project, "sam", "exit 0")
    stand_in(project, "cargo-lambda", "exit 0")
    aws_with_credentials(project)
    r = deploy_sh(
        project,
        "deploy",
        "--region",
        "eu-west-1",
        "--stack-name",
        "ir-test",
        "--alert-email",
        "soc@example.com",
        "--severity-threshold",
        "5.5",
    )
    assert r.returncode == 0, r.stderr
    sam = [c for c in calls(project) if c.startswith("sam ")]
    assert sam[0].startswith("sam build --beta-features")
    deploy = sam[1]
    for part in (
        "--stack-name ir-test",
        "--region eu-west-1",
        "--capabilities CAPABILITY_IAM",
        "--parameter-overrides AlertEmail=soc@example.com SeverityThreshold=5.5",
    ):
        assert part in deploy, deploy


def test_environment_variables_configure_deploy(project):
    stand_in(project, "sam", "exit 0")
    stand_in(project, "cargo-lambda", "exit 0")
    aws_with_credentials(project)
    r = deploy_sh(project, "deploy", env={"AWS_REGION": "ap-southeast-2", "STACK_NAME": "from-env", "SEVERITY_THRESHOLD": "8"})
    assert r.returncode == 0, r.stderr
    deploy = next(c for c in calls(project) if c.startswith("sam deploy"))
    assert "--stack-name from-env" in deploy and "--region ap-southeast-2" in deploy
    assert "SeverityThreshold=8" in deploy and "AlertEmail" not in deploy


def test_deploy_in_several_regions_deploys_one_stack_per_region(project):
    stand_in(project, "sam", "exit 0")
    stand_in(project, "cargo-lambda", "exit 0")
    aws_with_credentials(project)
    r = deploy_sh(project, "deploy", "--regions", "eu-west-1,us-east-2")
    assert r.returncode == 0, r.stderr
    sam = [c for c in calls(project) if c.startswith("sam ")]
    assert [c for c in sam if c.startswith("sam build")] == [sam[0]], "one build for every region"
    deploys = [c for c in sam if c.startswith("sam deploy")]
    assert len(deploys) == 2
    assert "--region eu-west-1" in deploys[0] and "--region us-east-2" in deploys[1]


def test_organization_parameters_reach_the_stack(project):
    stand_in(project, "sam", "exit 0")
    stand_in(project, "cargo-lambda", "exit 0")
    aws_with_credentials(project)
    r = deploy_sh(
        project,
        "deploy",
        "--region",
        "eu-west-1",
        "--member-role-name",
        "ec2-quarantine-member",
        "--external-id",
        "s3cr3t-external",
        "--allow-accounts",
        "111111111111,222222222222",
    )
    assert r.returncode == 0, r.stderr
    deploy = next(c for c in calls(project) if c.startswith("sam deploy"))
    assert "MemberRoleName=ec2-quarantine-member MemberRoleExternalId=s3cr3t-external" in deploy
    assert "MemberAccountsAllow=111111111111,222222222222" in deploy


def test_a_member_role_without_external_id_is_refused(project):
    r = deploy_sh(project, "deploy", "--region", "eu-west-1", "--member-role-name", "ec2-quarantine-member")
    assert r.returncode != 0
    assert "needs --external-id" in r.stderr


def test_a_malformed_account_list_is_refused(project):
    r = deploy_sh(project, "deploy", "--region", "eu-west-1", "--deny-accounts", "1234")
    assert r.returncode != 0
    assert "12-digit" in r.stderr


# ------------------------------------------------------------------ mistakes in the call
#
# Every mistake in how deploy.sh is called (an input file, an option, a value) is named on ONE
# line of stderr, "deploy.sh: ...", with exit status 2, before anything slow starts: the tests
# give the script stand-ins for cargo and the Python tools, so "nothing ran" is checked (an empty
# calls.log), not assumed. An input file must exist, be a readable regular file and hold a JSON
# object; local and fire take only a GuardDuty finding event (fire: one naming an instance);
# invoke takes any object (it shows what the function itself answers).

EVENTS = ROOT / "events"


def fake_tools(project: Path) -> dict[str, str]:
    """Stand-ins for the build (cargo and its binaries) and the pinned Python tools, recording
    their calls: a valid call goes through to the local run or aws_ops.py and builds or reaches nothing."""
    stand_in(project, "cargo", "exit 0")
    venv = project / ".tools" / "venv"
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"
    python.write_text(f'#!/bin/bash\necho "python $*" >> "{project}/calls.log"\n')
    python.chmod(0o755)
    requirements = (project / "helper_scripts" / "requirements.txt").read_bytes()
    (venv / ".requirements.sha256").write_text(hashlib.sha256(requirements).hexdigest() + "\n")
    control_plane = project / ".tools" / "ministack"
    control_plane.mkdir(parents=True)
    requirements = (project / "helper_scripts" / "requirements-control-plane.txt").read_bytes()
    (control_plane / ".requirements.sha256").write_text(hashlib.sha256(requirements).hexdigest() + "\n")
    debug = project / "target" / "debug"
    debug.mkdir(parents=True)
    for binary in ("isolate", "snapshot", "deny-role", "notify", "security-hub"):
        (debug / binary).write_text("#!/bin/sh\n")
        (debug / binary).chmod(0o755)
    return {"CARGO_TARGET_DIR": str(project / "target")}


def write(path: Path, content: str | bytes) -> Path:
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def make_fifo(d: Path) -> Path:
    os.mkfifo(d / "event.fifo")
    return d / "event.fifo"


def make_unreadable(d: Path) -> Path:
    if os.geteuid() == 0:
        pytest.skip("root reads a mode-000 file: the directory and the FIFO cases stand for it")
    path = write(d / "secret.json", "{}")
    path.chmod(0)
    return path


def make_dir(d: Path) -> Path:
    (d / "events.json").mkdir()
    return d / "events.json"


GUARDDUTY = {"version": "0", "source": "aws.guardduty", "detail-type": "GuardDuty Finding", "account": "111122223333"}

# name -> (how to make the file in a folder, what the one line says). The two "unreadable" cases
# root cannot read either are a directory and a FIFO (reading one blocks: it is refused unread).
BAD_FILES = {
    "missing": (lambda d: d / "no-such-event.json", "no such file"),
    "under-a-missing-folder": (lambda d: d / "no-such-folder" / "event.json", "no such file"),
    "broken-symlink": (lambda d: (d / "link.json").symlink_to(d / "gone.json") or d / "link.json", "broken symbolic link"),
    "directory": (make_dir, "a directory, not a file"),
    "fifo": (make_fifo, "not a regular file"),
    "no-read-permission": (make_unreadable, "not readable"),
    "empty": (lambda d: write(d / "empty.json", ""), "empty"),
    "not-json": (
        lambda d: write(d / "bad.json", '{\n  "source": "aws.guardduty"\n  "detail": {}\n}\n'),
        "not valid JSON (line 3, column 3: Expecting ',' delimiter)",
    ),
    "truncated": (lambda d: write(d / "cut.json", (EVENTS / "credential-exfiltration.json").read_text()[:200]), "not valid JSON (line"),
    "not-utf8": (lambda d: write(d / "latin1.json", '{"title": "caf\u00e9"}'.encode("latin-1")), "not UTF-8 text"),
    "nan": (lambda d: write(d / "nan.json", '{"severity": NaN}'), "NaN is not a JSON value"),
    "array": (lambda d: write(d / "array.json", "[{}]"), "not a JSON object (it holds an array)"),
    "string": (lambda d: write(d / "string.json", '"event"'), "not a JSON object (it holds a string)"),
    "null": (lambda d: write(d / "null.json", "null"), "not a JSON object (it holds null)"),
    "number": (lambda d: write(d / "number.json", "7.5"), "not a JSON object (it holds a number)"),
}
# Objects that are not a GuardDuty finding event: refused by local and fire, taken by invoke.
NOT_A_FINDING = {
    "release-request": (
        lambda d: write(d / "release.json", (EVENTS / "release-request.json").read_text()),
        "not an EventBridge event (no source, detail-type or detail); it looks like a release request",
    ),
    "notify-input": (
        lambda d: write(d / "notify.json", (EVENTS / "notify-input.json").read_text()),
        "it looks like the notify function's input",
    ),
    "other-source": (
        lambda d: write(
            d / "ec2.json",
            json.dumps({**GUARDDUTY, "source": "aws.ec2", "detail-type": "EC2 Instance State-change Notification", "detail": {}}),
        ),
        'not a GuardDuty finding event (source "aws.ec2"',
    ),
    "detail-null": (lambda d: write(d / "detail-null.json", json.dumps({**GUARDDUTY, "detail": None})), "its detail is missing"),
    "detail-string": (lambda d: write(d / "detail-string.json", json.dumps({**GUARDDUTY, "detail": "x"})), "its detail is not an object"),
}
# A finding fire cannot point at an instance: the EKS sample.
NO_INSTANCE = {
    "names-no-instance": (lambda d: write(d / "eks.json", (EVENTS / "eks-runtime-cryptomining.json").read_text()), "names no EC2 instance")
}

# subcommand -> its arguments around the input file
WITH_INPUT = {
    "local": lambda f: ["local", f, "--json"],
    "invoke": lambda f: ["invoke", "isolate", f],
    "fire": lambda f: ["fire", f, "--region", "eu-west-1", "--wait"],
}
REFUSED = (
    [(sub, kind) for sub in WITH_INPUT for kind in BAD_FILES]
    + [(sub, kind) for sub in ("local", "fire") for kind in NOT_A_FINDING]
    + [("fire", kind) for kind in NO_INSTANCE]
)


def assert_one_line(r: subprocess.CompletedProcess, project: Path, *parts: str) -> str:
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("deploy.sh: "), lines[0]
    for part in parts:
        assert part in lines[0], (part, lines[0])
    assert r.stdout == ""
    assert calls(project) == [], "refused before anything was built, installed or called"
    return lines[0]


@pytest.mark.parametrize("subcommand,kind", REFUSED, ids=[f"{s}-{k}" for s, k in REFUSED])
def test_a_bad_input_file_is_named_on_one_line(project, tmp_path, subcommand, kind):
    env = fake_tools(project)
    make, says = {**BAD_FILES, **NOT_A_FINDING, **NO_INSTANCE}[kind]
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    path = make(inputs)
    r = deploy_sh(project, *WITH_INPUT[subcommand](str(path)), env=env)
    line = assert_one_line(r, project, says)
    assert line.startswith(f"deploy.sh: {path}: "), "the line names the file as given"


def test_a_relative_input_file_is_named_as_given(project):
    write(project / "broken.json", "{,}")
    r = subprocess.run(
        ["bash", str(project / "helper_scripts" / "deploy.sh"), "local", "broken.json"],
        check=False,
        cwd=project,
        env={"PATH": "/usr/bin:/bin", "HOME": str(project)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2
    assert r.stderr == "deploy.sh: broken.json: not valid JSON (line 1, column 2: Expecting property name enclosed in double quotes)\n"


@pytest.mark.parametrize("kind", list(NOT_A_FINDING) + list(NO_INSTANCE))
def test_invoke_takes_any_object_the_function_answers_for_itself(project, tmp_path, kind):
    env = fake_tools(project)
    make, _ = {**NOT_A_FINDING, **NO_INSTANCE}[kind]
    path = make(tmp_path)
    r = deploy_sh(project, "invoke", "triage", str(path), env=env)
    assert r.returncode == 0, r.stderr
    assert calls(project)[-1].endswith(f"-m local.run --bin-dir {project}/target/debug --invoke triage {path}")


@pytest.mark.parametrize(
    "event",
    [
        "credential-exfiltration.json",
        "instance-backdoor.json",
        "low-severity-ssh-probe.json",
        "eks-runtime-cryptomining.json",
        "port-probe-target.json",
    ],
)
def test_local_takes_every_sample_finding(project, event):
    env = fake_tools(project)
    r = deploy_sh(project, "local", str(EVENTS / event), "--severity-threshold", "4", "--parameter", "DryRun=true", env=env)
    assert r.returncode == 0, r.stderr
    assert calls(project)[0] == "cargo test --locked --no-run --quiet", "validated, then built"
    assert calls(project)[-1].endswith(
        f"-m local.run --bin-dir {project}/target/debug --severity-threshold 4 --parameter DryRun=true {EVENTS / event}"
    )


def test_local_approval_and_collect_run_on_the_default_path(project):
    env = fake_tools(project)
    event = EVENTS / "instance-backdoor.json"
    r = deploy_sh(project, "local", str(event), "--approval", "approve", "--collect", env=env)
    assert r.returncode == 0, r.stderr
    assert calls(project)[0] == "cargo test --locked --no-run --quiet", "the debug build only: no release build"
    assert calls(project)[-1].endswith(f"-m local.run --bin-dir {project}/target/debug --approval approve --collect {event}")


def test_local_deployed_builds_the_release_bootstraps_and_runs_the_deployed_path(project):
    env = fake_tools(project)
    event = EVENTS / "instance-backdoor.json"
    r = deploy_sh(project, "local", str(event), "--deployed", "--release", env=env)
    assert r.returncode == 0, r.stderr
    assert calls(project)[:2] == ["cargo test --locked --no-run --quiet", "cargo build --release --locked --bins --quiet"]
    assert calls(project)[-1].endswith(
        f"-m local.run --bin-dir {project}/target/debug --deployed --release-dir {project}/target/release --release {event}"
    )


@pytest.mark.parametrize(
    "args",
    [
        ["pause", "--reason", "scanner mistaken for an attacker", "--region=eu-west-1"],
        ["resume"],
        ["approve", "apr-0123456789abcdef"],
        ["reject", "apr-0123456789abcdef", "--reason", "our scanner", "--json"],
        ["rails", "--json", "--stack-name", "responder"],
        ["status", "--json", "--stack-name", "responder"],
        ["logs", "--function", "isolate", "--since", "30m"],
        ["logs"],
    ],
)
def test_pause_resume_and_approvals_pass_their_arguments_on(project, args):
    env = fake_tools(project)
    r = deploy_sh(project, *args, env=env)
    assert r.returncode == 0, r.stderr
    assert calls(project) == [f"python {project}/helper_scripts/aws_ops.py " + " ".join(args)]


@pytest.mark.parametrize("event", ["credential-exfiltration.json", "instance-backdoor.json"])
def test_fire_passes_a_finding_that_names_an_instance_on(project, event):
    env = fake_tools(project)
    args = ["fire", str(EVENTS / event), "i-0123456789abcdef0", "--region=eu-west-1", "--wait"]
    r = deploy_sh(project, *args, env=env)
    assert r.returncode == 0, r.stderr
    assert calls(project) == [f"python {project}/helper_scripts/aws_ops.py " + " ".join(args)]


BAD_OPTIONS = [
    (["local", "--verbose"], "unknown option --verbose for local"),
    (["local", "--severity-threshold"], "--severity-threshold needs a value"),
    (["local", "--severity-threshold", "--json"], "--severity-threshold needs a value"),
    (["local", "--severity-threshold", "high"], "--severity-threshold must be a number from 0 to 10, got high"),
    (["local", "--severity-threshold", "10.5"], "from 0 to 10"),
    (["local", "--parameter", "DryRun"], "--parameter takes KEY=VALUE"),
    (["local", "--deployed", "--member-account"], "--deployed runs the stack as deployed in one account: not with --member-account"),
    (["local", "--parameter", "NoSuchThing=1"], "template.yaml has no parameter NoSuchThing"),
    (["local", str(EVENTS / "instance-backdoor.json"), str(EVENTS / "credential-exfiltration.json")], "local takes one EVENT file"),
    (["invoke"], "invoke takes FUNCTION EVENT"),
    (["invoke", "isolate"], "invoke takes FUNCTION EVENT"),
    (["invoke", "quarantine", str(EVENTS / "credential-exfiltration.json")], "unknown FUNCTION quarantine (one of triage, isolate"),
    (["invoke", "isolate", str(EVENTS / "credential-exfiltration.json"), "--json"], "unknown option --json for invoke"),
    (["deploy", "--regoin", "eu-west-1"], "unknown option --regoin for deploy"),
    (["deploy", "--region"], "--region needs a value"),
    (["deploy", "--alert-email", "--region", "eu-west-1"], "--alert-email needs a value"),
    (["deploy", "--region", "eu-west-1", "--severity-threshold", "high"], "--severity-threshold must be a number from 0 to 10, got high"),
    (["deploy", "--region", "mars-north"], "not an AWS region name: mars-north"),
    (["deploy", "--regions", "eu-west-1,Mars"], "not an AWS region name: Mars"),
    (["deploy", "--region", "eu-west-1", "--stack-name", "9lives"], "invalid stack name: 9lives"),
    (["deploy", "--region", "eu-west-1", "--parameter", "RoleActon=none"], "template.yaml has no parameter RoleActon"),
    (["deploy", "--region", "eu-west-1", "now"], "unexpected argument now for deploy"),
    (["nuke", "--force"], "unknown option --force for nuke"),
    (["nuke", "--stack-name"], "--stack-name needs a value"),
    (["test-instance", "--ssh-cidr"], "--ssh-cidr needs a value"),
    (["test-instance", "--ssh-cidr", "203.0.113.7"], "--ssh-cidr takes an IPv4 CIDR"),
    (["test-instance", "--ssh-cidr", "203.0.113.300/32"], "--ssh-cidr takes an IPv4 CIDR"),
    (["test-instance", "--wait"], "unknown option --wait for test-instance"),
    (["test-instance", "i-0123456789abcdef0"], "unexpected argument i-0123456789abcdef0 for test-instance"),
    (["fire"], "fire takes EVENT [INSTANCE_ID]"),
    (["fire", str(EVENTS / "credential-exfiltration.json"), "--json"], "unknown option --json for fire"),
    (["fire", str(EVENTS / "credential-exfiltration.json"), "my-instance"], "not an EC2 instance id: my-instance"),
    (
        ["fire", str(EVENTS / "credential-exfiltration.json"), "--state-machine-arn", "containment"],
        "--state-machine-arn takes a state machine ARN",
    ),
    (["fire", str(EVENTS / "credential-exfiltration.json"), "--region=somewhere"], "not an AWS region name: somewhere"),
    (["verify", "--wait"], "unknown option --wait for verify"),
    (["verify", "--stack-name"], "--stack-name needs a value"),
    (["verify", "i-123"], "not an EC2 instance id: i-123"),
    (["verify", "i-0123456789abcdef0", "i-0123456789abcdef1"], "unexpected argument i-0123456789abcdef1 for verify"),
    (["cases", "i-0123456789abcdef0"], "unexpected argument i-0123456789abcdef0 for cases"),
    (["cases", "--wait"], "unknown option --wait for cases"),
    (["cases", "--table"], "--table needs a value"),
    (["cases", "--table", "a table"], "--table takes a DynamoDB table name"),
    (["case"], "case takes a case id or an instance id"),
    (["case", "--open"], "unknown option --open for case"),
    (["case", "case-1"], "not a case id (i-...-YYYYMMDDTHHMMSSmmmZ) or an instance id: case-1"),
    (["case", "i-0123456789abcdef0-2026"], "not a case id"),
    (["pause"], "pause takes --reason TEXT (why, for the team)"),
    (["pause", "--reason", "  "], "--reason takes a text for the team, got an empty one"),
    (["pause", "--reason"], "--reason needs a value"),
    (["pause", "--reason", "x", "now"], "unexpected argument now for pause"),
    (["resume", "--reason", "x"], "unknown option --reason for resume"),
    (["rails", "apr-0123456789abcdef"], "unexpected argument apr-0123456789abcdef for rails"),
    (["status", "--since", "1h"], "unknown option --since for status"),
    (["emulator", "--bind", "localhost"], "--bind takes an IP address, got localhost"),
    (["emulator", "--port", "70000"], "--port takes a port number, got 70000"),
    (["emulator", "--stack-name", "x"], "unknown option --stack-name for emulator"),
    (["logs", "--since", "an hour"], "--since takes a duration such as 30m, 1h or 2d, got an hour"),
    (["logs", "--since"], "--since needs a value"),
    (["logs", "--function", "Isolate!"], "--function takes a function or workflow name"),
    (["logs", "isolate"], "unexpected argument isolate for logs"),
    (["local", "--approval", "maybe"], "--approval takes approve, reject or timeout, not maybe"),
    (["local", "--burst", "10"], "--burst takes 1 to 9"),
    (["local", "--burst", "2"], "--burst publishes its findings to the deployed rule: add --deployed"),
    (["local", "--collect"], "--collect collects while an approval is awaited, on the default path: with --approval"),
    (["local", "--deployed", "--approval", "approve", "--collect"], "not with --deployed or --burst"),
    (
        ["local", "--deployed", "--approval", "approve", "--paused"],
        "need a request to answer and run their own findings: not with --paused",
    ),
    (["approve"], "approve takes the request's id"),
    (["approve", "i-0123456789abcdef0"], "not an approval request id (apr- and 16 hexadecimal digits"),
    (["approve", "apr-0123456789ABCDEF"], "not an approval request id"),
    (["approve", "apr-0123456789abcdef", "apr-0123456789abcdee"], "unexpected argument apr-0123456789abcdee for approve"),
    (["reject", "apr-0123456789abcdef"], "reject takes --reason TEXT (why, for the record)"),
    (["reject", "apr-0123456789abcdef", "--wait"], "unknown option --wait for reject"),
]


@pytest.mark.parametrize("args,says", BAD_OPTIONS, ids=[" ".join(a).replace(str(EVENTS) + "/", "") for a, _ in BAD_OPTIONS])
def test_a_bad_option_is_named_on_one_line(project, args, says):
    env = fake_tools(project)
    stand_in(project, "sam", "exit 0")
    aws_with_credentials(project)
    r = deploy_sh(project, *args, env=env)
    assert_one_line(r, project, says)


@pytest.mark.parametrize(
    "args",
    [["--help"], ["-h"], ["help"]]
    + [
        [sub, "--help"]
        for sub in (
            "local",
            "invoke",
            "deploy",
            "nuke",
            "test-instance",
            "fire",
            "verify",
            "cases",
            "case",
            "pause",
            "resume",
            "approve",
            "reject",
            "rails",
            "status",
            "logs",
            "emulator",
        )
    ],
)
def test_help_prints_the_usage_and_succeeds(project, args):
    r = deploy_sh(project, *args)
    assert r.returncode == 0 and r.stderr == ""
    assert r.stdout.startswith("Usage:") and "deploy.sh verify" in r.stdout


def test_an_unknown_subcommand_is_one_line_with_a_hint(project):
    r = deploy_sh(project, "destroy-everything")
    assert_one_line(r, project, "unknown subcommand destroy-everything", "deploy.sh --help")
    r = deploy_sh(project, "--region", "eu-west-1", "deploy")
    assert_one_line(r, project, "the subcommand comes first")
