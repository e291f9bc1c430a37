"""`deploy.sh emulator`, for `sam local invoke` with the sample events, and every sample event
through the path `sam local invoke` runs: the function's bootstrap under AWS's Runtime Interface
Emulator (the one in SAM's container, shipped in the SAM CLI wheel), with the environment SAM
gives it from the template and the emulator's --env-vars file. Without Docker: the bootstrap is
this host's build (FUNCTIONS_BIN_DIR) and the emulator listens on loopback; what SAM's container
adds (the image, the network) is what these tests cannot check (tests/README.md).
"""

from __future__ import annotations

import json
import os
import select
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import boto3
import pytest
from local import rie
from local.artifacts import ARTIFACTS
from local.template import LOCAL_NAMES, REGION, load_template

ROOT = Path(__file__).resolve().parents[2]
BIN_DIR = Path(os.environ.get("FUNCTIONS_BIN_DIR") or Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "debug")
EVENTS = ROOT / "events"
# The finding events not among the artifacts' own: each goes through triage.
FUNCTION_INPUTS = {"notify-input.json", "security-hub-input.json", "approval-decide.json", "release-request.json", "collect-input.json"}


def start_emulator(out: Path) -> tuple[dict, subprocess.Popen]:
    """`deploy.sh emulator --json` (its Python module, with the project's modules on the path as
    deploy.sh puts them), on loopback; its log in `out`."""
    path = os.pathsep.join([str(ROOT / "helper_scripts"), str(ROOT / "tests" / "tools"), os.environ.get("PYTHONPATH", "")])
    proc = subprocess.Popen(
        [sys.executable, "-m", "local.emulator", "--json", "--bind", "127.0.0.1", "--out", str(out)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=open(out / "emulator.log", "w"),  # noqa: SIM115 (the process keeps it)
        text=True,
        env={**os.environ, "PYTHONPATH": path, "AWS_PROFILE": "someone-real", "DRY_RUN": "false"},
    )
    ready, _, _ = select.select([proc.stdout], [], [], 120)
    assert ready, "the emulator printed nothing in 120 s"
    line = proc.stdout.readline()
    if not line:
        proc.wait(10)
        pytest.fail(f"the emulator stopped: {(out / 'emulator.log').read_text()}")
    return json.loads(line), proc


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    out = tmp_path_factory.mktemp("emulator")
    state, proc = start_emulator(out)
    yield state, out, proc
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        proc.wait(20)


def template_functions() -> dict[str, dict]:
    return {k: r for k, r in load_template()["Resources"].items() if r["Type"] == "AWS::Serverless::Function"}


def sam_env(logical_id: str, parameters: dict[str, str], endpoint: str) -> dict[str, str]:
    """The environment SAM gives a function: the variables it declares (the Globals' and its
    own), valued from the env file's "Parameters", its AWS variables (here the test
    credentials the printed command gives SAM), and AWS_SAM_LOCAL."""
    template = load_template()
    declared = set(template["Globals"]["Function"]["Environment"]["Variables"])
    declared |= set((template_functions()[logical_id]["Properties"].get("Environment") or {}).get("Variables") or {})
    env = {name: str(parameters.get(name, "")) for name in declared}
    # On this host the emulator is on loopback, not host.docker.internal.
    env["SAM_LOCAL_ENDPOINT_URL"] = endpoint
    return {
        **env,
        "PATH": os.environ.get("PATH", ""),
        "AWS_SAM_LOCAL": "true",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": REGION,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_LAMBDA_LOG_FORMAT": "JSON",
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
    }


def test_the_commands_name_every_function_an_event_and_the_env_file_with_test_credentials(emulator):
    state, _, _ = emulator
    functions = template_functions()
    # Every function a state machine or a person invokes; the approval page is a function URL's.
    assert {c["logical_id"] for c in state["commands"]} == set(functions) - {"ApprovalLinkFunction"}
    for c in state["commands"]:
        words = shlex.split(c["command"])
        assert words[0] == "env"
        unset = {words[i + 1] for i, w in enumerate(words) if w == "-u"}
        # No profile, session token or expiry of the caller's, nor a DRY_RUN of their shell.
        assert unset == {
            "AWS_PROFILE",
            "AWS_DEFAULT_PROFILE",
            "AWS_SESSION_TOKEN",
            "AWS_SECURITY_TOKEN",
            "AWS_CREDENTIAL_EXPIRATION",
            "DRY_RUN",
        }
        assert {
            "AWS_ACCESS_KEY_ID=testing",
            "AWS_SECRET_ACCESS_KEY=testing",
            f"AWS_DEFAULT_REGION={REGION}",
            "AWS_CONFIG_FILE=/dev/null",
            "AWS_SHARED_CREDENTIALS_FILE=/dev/null",
        } <= set(words)
        assert words[-2:] == ["--region", REGION]
        at = words.index("sam")
        assert words[at : at + 3] == ["sam", "local", "invoke"]
        assert words[at + 3] in functions, words
        assert (ROOT / words[words.index("-e") + 1]).is_file(), words
        assert words[words.index("--env-vars") + 1] == state["env_file"]
    parameters = json.loads((ROOT / state["env_file"]).read_text())["Parameters"]
    assert set(load_template()["Globals"]["Function"]["Environment"]["Variables"]) <= set(parameters)
    assert parameters["SAM_LOCAL_ENDPOINT_URL"] == state["container_endpoint"]
    assert state["container_endpoint"].startswith("http://host.docker.internal:"), "loopback is reached from Docker Desktop so"
    assert state["container_endpoint"].rsplit(":", 1)[1] == state["endpoint"].rsplit(":", 1)[1]


def test_the_endpoint_answers_with_the_simulated_instance_the_events_name(emulator):
    state, out, _ = emulator
    ec2 = boto3.client(
        "ec2", endpoint_url=state["endpoint"], region_name=REGION, aws_access_key_id="testing", aws_secret_access_key="testing"
    )
    [reservation] = ec2.describe_instances(InstanceIds=[state["instance_id"]])["Reservations"]
    assert reservation["Instances"][0]["State"]["Name"] == "running"
    written = {p.name for p in (out / "events").glob("*.json")}
    assert written == {p.name for p in EVENTS.glob("*.json")}
    backdoor = json.loads((out / "events" / "instance-backdoor.json").read_text())
    assert backdoor["detail"]["resource"]["instanceDetails"]["instanceId"] == state["instance_id"]


def run_under_rie(name: str, logical_id: str, payloads: list[dict], parameters: dict, endpoint: str, log_dir: Path) -> list:
    bootstrap = BIN_DIR / name
    assert bootstrap.is_file(), f"no {bootstrap}: build the functions first"
    run = rie.invoke_all(
        [str(bootstrap)],
        sam_env(logical_id, parameters, endpoint),
        [json.dumps(p).encode() for p in payloads],
        ROOT,
        log_dir / f"{name}.log",
    )
    return run["results"]


def world(ec2, iam, state, asg=None, db=None) -> dict:
    """What a containment step would change: the interfaces' groups, the snapshots, the
    instance's attributes, the role's policies."""
    [instance] = ec2.describe_instances(InstanceIds=[state["instance_id"]])["Reservations"][0]["Instances"]
    return {
        "groups": {eni["NetworkInterfaceId"]: sorted(g["GroupId"] for g in eni["Groups"]) for eni in instance["NetworkInterfaces"]},
        "profile": (instance.get("IamInstanceProfile") or {}).get("Arn"),
        "snapshots": sorted(s["SnapshotId"] for s in ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"]),
        "role_policies": sorted(p["PolicyArn"] for p in iam.list_attached_role_policies(RoleName=state["role_name"])["AttachedPolicies"]),
        "inline": sorted(iam.list_role_policies(RoleName=state["role_name"])["PolicyNames"]),
        "tags": sorted((t["Key"], t["Value"]) for t in instance.get("Tags", [])),
        "attributes": [
            {
                k: v
                for k, v in ec2.describe_instance_attribute(InstanceId=state["instance_id"], Attribute=a).items()
                if k != "ResponseMetadata"
            }
            for a in ("disableApiTermination", "instanceInitiatedShutdownBehavior")
        ],
        "auto_scaling": sorted(
            (i["InstanceId"], i["LifecycleState"]) for i in asg.describe_auto_scaling_instances()["AutoScalingInstances"]
        ),
        "cases": db.scan(TableName=LOCAL_NAMES["CaseTable"])["Count"],
    }


def test_a_dry_run_on_an_account_only_reads_and_reports(emulator, tmp_path):
    """The recipe for a real account: `sam local invoke ... --parameter-overrides DryRun=true` with
    the caller's credentials. The emulator stands for the account here (AWS_ENDPOINT_URL, as the
    function's AWS), and nothing in it may change."""
    state, out, _ = emulator
    parameters = json.loads((ROOT / state["env_file"]).read_text())["Parameters"]
    creds = {"endpoint_url": state["endpoint"], "region_name": REGION, "aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
    ec2, iam, asg, db = (boto3.client(s, **creds) for s in ("ec2", "iam", "autoscaling", "dynamodb"))
    before = world(ec2, iam, state, asg, db)
    # Every function the README's dry-run recipe names: all but notify (it publishes its report,
    # a dry run's too) and approval (a person's decision).
    dry = [a for a in ARTIFACTS if a[0] not in ("notify", "approval")]
    assert [a[0] for a in dry] == [
        "triage",
        "isolate",
        "deregister",
        "snapshot",
        "deny-role",
        "security-hub",
        "evidence-copy",
        "collect",
        "release",
    ]
    for name, logical_id, event in dry:
        env = sam_env(logical_id, {**parameters, "DRY_RUN": "true"}, "")
        env["AWS_ENDPOINT_URL"] = state["endpoint"]
        payload = json.loads((out / "events" / event).read_text())
        run = rie.invoke_all([str(BIN_DIR / name)], env, [json.dumps(payload).encode()], ROOT, tmp_path / f"{name}.log")
        [result] = run["results"]
        assert rie.error_of(result) is None, (name, result)
        if name == "triage":
            assert result["dry_run"] is True, result
        elif name in ("isolate", "deregister", "snapshot", "deny-role"):
            assert result["status"] == "dry_run" and result["actions"], (name, result)
        else:
            assert result["status"] in ("dry_run", "skipped"), (name, result)
    assert world(ec2, iam, state, asg, db) == before, "a dry run changed the account"


def test_every_sample_event_runs_through_the_runtime_interface_emulator_against_the_emulator(emulator, tmp_path):
    state, out, _ = emulator
    parameters = json.loads((ROOT / state["env_file"]).read_text())["Parameters"]
    ec2 = boto3.client(
        "ec2", endpoint_url=state["endpoint"], region_name=REGION, aws_access_key_id="testing", aws_secret_access_key="testing"
    )

    def groups() -> dict[str, list[str]]:
        [instance] = ec2.describe_instances(InstanceIds=[state["instance_id"]])["Reservations"][0]["Instances"]
        return {eni["NetworkInterfaceId"]: sorted(g["GroupId"] for g in eni["Groups"]) for eni in instance["NetworkInterfaces"]}

    before = groups()
    used = set()
    # In workflow order, as `sam local invoke` would run them one after the other.
    for name, logical_id, event in ARTIFACTS:
        [result] = run_under_rie(
            name, logical_id, [json.loads((out / "events" / event).read_text())], parameters, state["endpoint"], tmp_path
        )
        assert rie.error_of(result) is None, (name, result)
        used.add(event)
        if name == "isolate":
            # It acted on the emulator, not on an account: the instance is isolated there.
            assert groups() != before and result["status"] == "done", result
    # The other finding events, each through triage.
    findings = sorted(p.name for p in EVENTS.glob("*.json") if p.name not in FUNCTION_INPUTS and p.name not in used)
    results = run_under_rie(
        "triage",
        "TriageFunction",
        [json.loads((out / "events" / e).read_text()) for e in findings],
        parameters,
        state["endpoint"],
        tmp_path,
    )
    for event, result in zip(findings, results, strict=True):
        assert rie.error_of(result) is None, (event, result)
        assert result["status"] == "done" and result["decision"], (event, result)
        used.add(event)
    assert used == {p.name for p in EVENTS.glob("*.json")}, "every sample event ran"
    # Release ran last and restored the groups the instance had.
    assert groups() == before


def test_outside_sam_local_a_function_with_the_local_endpoint_refuses_to_start(emulator, tmp_path):
    state, out, _ = emulator
    parameters = json.loads((ROOT / state["env_file"]).read_text())["Parameters"]
    env = sam_env("IsolateFunction", parameters, state["endpoint"])
    del env["AWS_SAM_LOCAL"]
    run = rie.invoke_all(
        [str(BIN_DIR / "isolate")],
        env,
        [(out / "events" / "instance-backdoor.json").read_bytes()],
        ROOT,
        tmp_path / "isolate.log",
    )
    assert "SAM_LOCAL_ENDPOINT_URL is for sam local invoke only" in (tmp_path / "isolate.log").read_text(), run
    # Inside SAM, with someone's own keys (a --profile SAM was given): refused too.
    env = {**sam_env("IsolateFunction", parameters, state["endpoint"]), "AWS_ACCESS_KEY_ID": "AKIAIOSFODNN7EXAMPLE"}
    run = rie.invoke_all(
        [str(BIN_DIR / "isolate")], env, [(out / "events" / "instance-backdoor.json").read_bytes()], ROOT, tmp_path / "keys.log"
    )
    assert "the credentials are not the emulator's" in (tmp_path / "keys.log").read_text(), run


def test_ctrl_c_stops_the_emulator(tmp_path):
    _, proc = start_emulator(tmp_path)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(20) == 0


def test_every_sample_event_has_its_line_in_the_readme():
    readme = (ROOT / "README.md").read_text()
    missing = [p.name for p in EVENTS.glob("*.json") if f"| `{p.name}` |" not in readme]
    assert missing == [], "events without a line in the README's table"
