"""The deployed path: template.yaml deployed with the real `sam deploy` into a local emulator, a
GuardDuty finding through the deployed rule, the deployed state machine running the deployed
functions.

What runs where (README, "How the local run maps to AWS"):
- the control plane is MiniStack (control_plane.py, in its own venv .tools/ministack):
  CloudFormation with the SAM transform takes the change set `sam deploy` makes, and the stack's
  rule, state machines, functions, topic, queue and case table are MiniStack's;
- the data plane is moto server, where the simulated compromised instance lives (EC2, IAM, STS,
  Auto Scaling, load balancing): the more faithful EC2/IAM emulator, with the harness's
  simulated world built for it;
- the deployed functions are the release bootstraps, packaged as `sam build` packages them
  ([`build`]), run by MiniStack's Lambda as local processes with the Runtime API. They reach
  DynamoDB and SNS (the deployed case table and topic) at MiniStack through AWS_ENDPOINT_URL,
  and the data plane's services at moto through the SDK's service-specific variables
  (AWS_ENDPOINT_URL_EC2 and the like, DATA_PLANE_SERVICES): MiniStack's Lambda gives the
  functions its own environment, so these are set on its process, never in the template.

[`deployed_stack`] yields the same namespace as `stack.local_stack`, so the scenarios of run.py
run unchanged on it; `publish` replaces the rule check: the finding goes to the deployed rule.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import types
import urllib.error
import urllib.request
from pathlib import Path

from local import HarnessError
from local.control_plane import FINDINGS_PATH
from local.rie import free_ports
from local.template import ACCOUNT, REGION, ROOT, load_template
from local.world import put_in_service, simulate_compromised_instance

STACK_NAME = "ec2-quarantine"


# The bucket `sam deploy` uploads the packaged functions to (on AWS, --resolve-s3 makes one).
ARTIFACT_BUCKET = "ec2-quarantine-artifacts"


# MiniStack's own venv (helper_scripts/lib/common.sh, ensure_control_plane_tools).
CONTROL_PLANE_PYTHON = ROOT / ".tools" / "ministack" / "bin" / "python"


# The services the functions call that live in the data plane (moto), as the SDKs name them in
# service-specific endpoint variables
# (https://docs.aws.amazon.com/sdkref/latest/guide/feature-ss-endpoints.html): each one's
# AWS_ENDPOINT_URL_<ID>. DynamoDB and SNS are not among them: the deployed stack's.
DATA_PLANE_SERVICES = ("EC2", "IAM", "STS", "AUTO_SCALING", "ELASTIC_LOAD_BALANCING", "ELASTIC_LOAD_BALANCING_V2", "SECURITYHUB")


# Where each architecture's bootstraps run: the template's arm64, adapted to the host's.
HOST_ARCHITECTURE = {"x86_64": "x86_64", "aarch64": "arm64"}


# Test credentials: MiniStack takes any, and keeps what they create in ACCOUNT.
CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing", "region_name": REGION}


def build(release_dir: Path, out: Path) -> Path:
    """The functions packaged as `sam build` packages them, and the built template.

    `sam build` (BuildMethod rust-cargolambda) runs `cargo lambda build --release` for each
    function's binary and writes `<LogicalId>/bootstrap` and a template whose CodeUri points at
    those folders. This does the same from `cargo build --release` (the same profile, the same
    source), with one change: the functions' Architectures become the host's, because the local
    Lambda runs them as host processes (on AWS, cargo-lambda cross-builds arm64 with zig). The
    functions have no architecture-specific code, so nothing else differs. The state machines'
    DefinitionUri is made absolute, as `sam build` rewrites it relative to its build folder.
    Everything else is template.yaml as it is: parameters, policies, rule, substitutions.
    """
    machine = os.uname().machine
    if machine not in HOST_ARCHITECTURE:
        raise HarnessError(f"no Lambda architecture for a {machine} host")
    template = load_template()
    template["Globals"]["Function"].pop("CodeUri", None)
    template["Globals"]["Function"]["Architectures"] = [HOST_ARCHITECTURE[machine]]
    for logical_id, resource in template["Resources"].items():
        properties = resource.get("Properties", {})
        if resource["Type"] == "AWS::Serverless::Function":
            binary = resource["Metadata"]["BuildProperties"]["Binary"]
            source = release_dir / binary
            if not source.is_file():
                raise HarnessError(f"{source} is missing: build the functions first (cargo build --release --bins)")
            folder = out / logical_id
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, folder / "bootstrap")
            properties["CodeUri"] = str(folder)
        elif resource["Type"] == "AWS::Serverless::StateMachine":
            properties["DefinitionUri"] = str(ROOT / properties["DefinitionUri"])
    built = out / "template.json"
    built.write_text(json.dumps(template, indent=1))
    return built


@contextlib.contextmanager
def started(command: list[str], env: dict[str, str], log: Path, ready_url: str, what: str):
    """A server process (in its own process group, so that what it spawns stops with it),
    answering on ready_url; stopped on the way out."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(ready_url, timeout=1).read()
                break
            except (urllib.error.URLError, OSError):
                if proc.poll() is not None:
                    raise HarnessError(f"{what} did not start: {log.read_text(errors='replace')[-2000:]}") from None
                if time.monotonic() > deadline:
                    raise HarnessError(f"{what} did not answer on {ready_url} within 60 s") from None
                time.sleep(0.2)
            # A port taken between choosing and binding it: the answer came from another server.
            if proc.poll() is not None:
                raise HarnessError(f"{what} exited after {ready_url} answered (port taken?): {log.read_text(errors='replace')[-2000:]}")
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def harness_env(log_dir: Path) -> dict[str, str]:
    """An environment with no way to real AWS, whatever this machine's settings: the system's
    basics only, test keys, empty AWS config and credentials files (no profile, no
    `ignore_configured_endpoint_urls`), and a proxy that goes nowhere for anything not on
    loopback (boto3 and the SAM CLI honour it; the bootstraps' every endpoint is on loopback)."""
    empty = log_dir / "aws-config-empty"
    empty.write_text("")
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "LC_ALL", "PYTHONPATH", "VIRTUAL_ENV")}
    env.update(
        {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_REGION": REGION,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_CONFIG_FILE": str(empty),
            "AWS_SHARED_CREDENTIALS_FILE": str(empty),
            "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS": "false",
            "AWS_EC2_METADATA_DISABLED": "true",
            "SAM_CLI_TELEMETRY": "0",
            "HTTPS_PROXY": "http://127.0.0.1:9",
            "HTTP_PROXY": "http://127.0.0.1:9",
            "NO_PROXY": "127.0.0.1,localhost",
        }
    )
    return env


def sam_deploy(built: Path, control_plane: str, parameters: dict[str, str], log: Path) -> None:
    """`sam deploy` of the built template into the control plane: a change set with every
    resource, the SAM transform done by the emulator's CloudFormation, as on AWS."""
    import boto3

    boto3.client("s3", endpoint_url=control_plane, **CREDENTIALS).create_bucket(Bucket=ARTIFACT_BUCKET)
    sam = Path(sys.executable).parent / "sam"
    command = [
        str(sam),
        "deploy",
        "--template-file",
        str(built),
        "--stack-name",
        STACK_NAME,
        "--s3-bucket",
        ARTIFACT_BUCKET,
        "--capabilities",
        "CAPABILITY_IAM",
        "--region",
        REGION,
        "--no-confirm-changeset",
        "--no-fail-on-empty-changeset",
        "--no-progressbar",
    ]
    if parameters:
        command += ["--parameter-overrides", *(f"{k}={v}" for k, v in sorted(parameters.items()))]
    env = {**harness_env(log.parent), "AWS_ENDPOINT_URL": control_plane}
    # In the log folder, where no samconfig.toml can give it a profile or another stack.
    with open(log, "wb") as out:
        done = subprocess.run(command, env=env, cwd=log.parent, stdout=out, stderr=subprocess.STDOUT, timeout=300, check=False)
    if done.returncode != 0:
        raise HarnessError(f"sam deploy failed (exit {done.returncode}): {log.read_text(errors='replace')[-3000:]}")


def publish(control_plane: str, event: dict) -> dict:
    """The finding event as GuardDuty publishes it, through the control plane's test double
    (control_plane.py): PutEvents' answer."""
    if (event.get("account"), event.get("region")) != (ACCOUNT, REGION):
        raise HarnessError(
            f"the event is for account {event.get('account')} in {event.get('region')}; the deployed stack is in {ACCOUNT} {REGION}"
            " (GuardDuty publishes on the finding's own account's bus, where no rule of this stack listens)"
        )
    request = urllib.request.Request(control_plane + FINDINGS_PATH, data=json.dumps(event).encode(), method="POST")
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return json.loads(answer.read())
    except urllib.error.HTTPError as e:
        raise HarnessError(f"the GuardDuty double refused the event: {e.read()[:500]!r}") from None


def started_executions(sfn, machine: str, before: set[str], wait_s: float) -> list[str]:
    """The executions of `machine` started since `before`: waits up to wait_s for the first,
    then a little longer for any other."""
    deadline = time.monotonic() + wait_s

    def new() -> list[str]:
        return [e["executionArn"] for e in sfn.list_executions(stateMachineArn=machine)["executions"] if e["executionArn"] not in before]

    while not (found := new()) and time.monotonic() < deadline:
        time.sleep(0.1)
    if found:
        time.sleep(0.3)
        found = new()
    return found


def finding_id_of(sfn, execution: str) -> str | None:
    """The id of the finding an execution was started with (its input is the event)."""
    started = json.loads(sfn.describe_execution(executionArn=execution)["input"])
    return (started.get("detail") or {}).get("id") if isinstance(started, dict) else None


@contextlib.contextmanager
def deployed_stack(release_dir: Path, log_dir: Path, parameters: dict[str, str] | None = None):
    """The data plane with a simulated instance, the control plane with template.yaml deployed.

    Yields the namespace `stack.local_stack` yields (clients, case table, topic and subscriber
    queue, state machines, simulated instance), plus `stack_outputs`, `resources` (the deployed
    stack's resources), `control_plane` and `data_plane` (their addresses) and `deployed` (True).
    """
    import boto3

    if not CONTROL_PLANE_PYTHON.is_file():
        raise HarnessError(f"{CONTROL_PLANE_PYTHON} is missing: helper_scripts/test.sh or deploy.sh local --deployed installs it")
    log_dir.mkdir(parents=True, exist_ok=True)
    moto_port, control_port = free_ports(2)
    data_plane = f"http://127.0.0.1:{moto_port}"
    control_plane = f"http://127.0.0.1:{control_port}"
    # moto's server with the harness's corrections (local/moto_server.py).
    moto = [sys.executable, "-m", "local.moto_server", "-H", "127.0.0.1", "-p", str(moto_port)]
    scratch = log_dir / "tmp"
    scratch.mkdir(exist_ok=True)
    cp_env = {
        **harness_env(log_dir),
        "GATEWAY_PORT": str(control_port),
        "BIND_HOST": "127.0.0.1",
        "MINISTACK_ACCOUNT_ID": ACCOUNT,
        # Nothing but the gateway listens (no IoT or SFTP listener on other interfaces); the
        # unpacked bootstraps go to the run's own scratch folder, removed on the way out.
        "IOT_MTLS_ENABLED": "0",
        "SFTP_ENABLED": "0",
        "TMPDIR": str(scratch),
        # The functions' endpoints (MiniStack's Lambda passes its environment on to them).
        "AWS_ENDPOINT_URL": control_plane,
        **{f"AWS_ENDPOINT_URL_{service}": data_plane for service in DATA_PLANE_SERVICES},
        "PYTHONPATH": str(ROOT / "helper_scripts"),
    }
    control = [str(CONTROL_PLANE_PYTHON), "-m", "local.control_plane"]
    with (
        _removed(scratch, log_dir / "build"),
        started(
            moto,
            {**harness_env(log_dir), "PYTHONPATH": str(ROOT / "helper_scripts")},
            log_dir / "data-plane.log",
            data_plane + "/moto-api/",
            "the data plane (moto)",
        ),
        started(control, cp_env, log_dir / "control-plane.log", control_plane + "/_ministack/health", "the control plane (MiniStack)"),
    ):
        built = build(release_dir, log_dir / "build")
        sam_deploy(built, control_plane, parameters or {}, log_dir / "sam-deploy.log")
        cp = {
            s: boto3.client(s, endpoint_url=control_plane, **CREDENTIALS)
            for s in ("cloudformation", "sns", "sqs", "stepfunctions", "ssm", "lambda")
        }
        dp = {s: boto3.client(s, endpoint_url=data_plane, **CREDENTIALS) for s in ("ec2", "iam", "autoscaling", "elbv2", "elb")}
        stack = cp["cloudformation"].describe_stacks(StackName=STACK_NAME)["Stacks"][0]
        outputs = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
        st = types.SimpleNamespace(deployed=True, control_plane=control_plane, data_plane=data_plane, stack_outputs=outputs)
        st.resources = cp["cloudformation"].list_stack_resources(StackName=STACK_NAME)["StackResourceSummaries"]
        st.ec2, st.iam = dp["ec2"], dp["iam"]
        st.securityhub = boto3.client("securityhub", endpoint_url=data_plane, **CREDENTIALS)
        st.sns, st.sqs, st.sfn, st.ssm = cp["sns"], cp["sqs"], cp["stepfunctions"], cp["ssm"]
        st.lambda_client = cp["lambda"]
        st.pause_parameter = outputs["PauseParameterName"]
        st.case_table = boto3.resource("dynamodb", endpoint_url=control_plane, **CREDENTIALS).Table(outputs["CaseTableName"])
        st.topic = outputs["AlertTopicArn"]
        st.machine, st.release_machine = outputs["StateMachineArn"], outputs["ReleaseStateMachineArn"]
        # The security team's inbox: a queue subscribed to the deployed topic.
        st.queue_url = st.sqs.create_queue(QueueName="security-team-inbox")["QueueUrl"]
        queue_arn = st.sqs.get_queue_attributes(QueueUrl=st.queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        st.sns.subscribe(TopicArn=st.topic, Protocol="sqs", Endpoint=queue_arn)
        st.target_ec2, st.target_iam = st.ec2, st.iam
        st.sim = simulate_compromised_instance(st.ec2, st.iam)
        st.sim["account"] = ACCOUNT
        st.service_clients = (dp["autoscaling"], dp["elbv2"], dp["elb"])
        put_in_service(st.sim, *st.service_clients)
        st.publish = lambda event: publish(control_plane, event)
        st.facts = deployed_facts(control_plane, st.resources, outputs)
        yield st


@contextlib.contextmanager
def _removed(*folders: Path):
    """The folders removed on the way out (the bootstraps' copies; the logs stay)."""
    try:
        yield
    finally:
        for folder in folders:
            shutil.rmtree(folder, ignore_errors=True)


def deployed_facts(control_plane: str, resources: list[dict], outputs: dict[str, str]) -> dict:
    """What the deployed stack holds, as the control plane reports it: each resource and its
    status, each function's configuration (the environment its parameters reached), the rule's
    targets, and each state machine's definition checked for unresolved substitutions."""
    import boto3

    lam, events, sfn = (boto3.client(s, endpoint_url=control_plane, **CREDENTIALS) for s in ("lambda", "events", "stepfunctions"))
    facts: dict = {"resources": {}, "functions": {}, "state_machines": {}}
    for r in resources:
        logical, kind = r["LogicalResourceId"], r["ResourceType"]
        facts["resources"][logical] = {"type": kind, "status": r["ResourceStatus"]}
        if kind == "AWS::Lambda::Function":
            c = lam.get_function_configuration(FunctionName=r["PhysicalResourceId"])
            facts["functions"][logical] = {
                "arn": c.get("FunctionArn"),
                "runtime": c.get("Runtime"),
                "handler": c.get("Handler"),
                "architectures": c.get("Architectures"),
                "memory_mb": c.get("MemorySize"),
                "timeout_s": c.get("Timeout"),
                "environment": (c.get("Environment") or {}).get("Variables", {}),
            }
        elif kind == "AWS::StepFunctions::StateMachine":
            definition = sfn.describe_state_machine(stateMachineArn=r["PhysicalResourceId"])["definition"]
            facts["state_machines"][logical] = {
                "definition": json.loads(definition),
                "unresolved": sorted(set(re.findall(r"\$\{[A-Za-z0-9]+\}", definition))),
                "resources": sorted({state["Resource"] for state in _states(json.loads(definition)) if "Resource" in state}),
                "function_arns": sorted(set(re.findall(r"arn:aws:lambda:[^\"]+", definition))),
            }
    facts["rule_targets"] = events.list_targets_by_rule(Rule=outputs["FindingRuleName"])["Targets"]
    facts["outputs"] = outputs
    return facts


def _states(definition: dict):
    """Every state of a definition, those inside Map and Parallel states too."""
    for state in definition.get("States", {}).values():
        yield state
        for inner in [state.get("Iterator"), state.get("ItemProcessor"), *(state.get("Branches") or [])]:
            if isinstance(inner, dict):
                yield from _states(inner)
