"""The user's test path on an AWS account: the test instance, firing a finding at it, checking
what the workflow did, and removing everything the tool made. Used by deploy.sh.

Every call goes to the account and region of the caller's credentials (boto3's standard
configuration: profile, SSO, environment, AWS_ENDPOINT_URL for the emulator in the tests).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

import boto3
from botocore.exceptions import BotoCoreError, ClientError

ROOT = Path(__file__).resolve().parents[1]
TEST_TEMPLATE = ROOT / "helper_scripts" / "test-instance.yaml"
TEST_STACK = "ec2-quarantine-test-instance"
TAG = "ec2-quarantine:"
DENY_ALL = "ec2-quarantine-DenyAll"
INLINE_DENY = "ec2-quarantine-revoke-older-sessions"
QUARANTINE_PROFILE = "ec2-quarantine-quarantined"


class OpsError(Exception):
    pass


class UsageError(Exception):
    """A mistake in the call (an argument, an input file): one line, exit status 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(message)


def _not_json(name: str):
    raise ValueError(f"{name} is not a JSON value")


def load_event(path: str) -> dict:
    """The finding event file fire sends, or a UsageError naming the file and the problem
    (deploy.sh checks the same before it calls this; this is for a direct call)."""
    try:
        event = json.loads(Path(path).read_text(encoding="utf-8"), parse_constant=_not_json)
    except OSError as e:
        raise UsageError(f"{path}: cannot be read ({(e.strerror or str(e)).lower()})") from e
    except UnicodeDecodeError as e:
        raise UsageError(f"{path}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start})") from e
    except json.JSONDecodeError as e:
        raise UsageError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from e
    except (ValueError, RecursionError) as e:
        raise UsageError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(event, dict):
        raise UsageError(f"{path}: not a JSON object")
    if (
        event.get("source") != "aws.guardduty"
        or event.get("detail-type") != "GuardDuty Finding"
        or not isinstance(event.get("detail"), dict)
    ):
        raise UsageError(f"{path}: not a GuardDuty finding event (source aws.guardduty, detail-type GuardDuty Finding, an object detail)")
    resource = event["detail"].get("resource")
    if not (isinstance(resource, dict) and any(isinstance(resource.get(k), dict) for k in ("instanceDetails", "accessKeyDetails"))):
        raise UsageError(
            f"{path}: a finding that names no EC2 instance (no detail.resource.instanceDetails or accessKeyDetails) to point at"
        )
    return event


def clients(region: str | None):
    session = boto3.Session(region_name=region or os.environ.get("AWS_REGION") or None)
    if not session.region_name:
        raise OpsError("no region: pass --region or set AWS_REGION")
    try:
        identity = session.client("sts").get_caller_identity()
    except (ClientError, BotoCoreError) as e:
        raise OpsError(f"no usable AWS credentials: {e}") from e
    return session, identity["Account"], identity["Arn"].split(":")[1]


def stack_outputs(cfn, name: str) -> dict[str, str] | None:
    try:
        stacks = cfn.describe_stacks(StackName=name)["Stacks"]
    except ClientError as e:
        if "does not exist" in str(e):
            return None
        raise
    return {o["OutputKey"]: o["OutputValue"] for o in stacks[0].get("Outputs", [])}


def wait_stack(cfn, name: str, done: set[str], timeout_s: float = 1800) -> str:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            status = cfn.describe_stacks(StackName=name)["Stacks"][0]["StackStatus"]
        except ClientError as e:
            if "does not exist" in str(e) and "DELETE_COMPLETE" in done:
                return "DELETE_COMPLETE"
            raise
        if status in done or status.endswith(("_FAILED", "ROLLBACK_COMPLETE")):
            return status
        if time.monotonic() > deadline:
            raise OpsError(f"stack {name} still {status} after {timeout_s:.0f} s")
        time.sleep(min(5.0, max(0.2, timeout_s / 1000)))


# ---------------------------------------------------------------- test-instance


def test_instance(args) -> int:
    session, _, _ = clients(args.region)
    cfn = session.client("cloudformation")
    params = [{"ParameterKey": "SshCidr", "ParameterValue": args.ssh_cidr}]
    if stack_outputs(cfn, TEST_STACK) is None:
        cfn.create_stack(
            StackName=TEST_STACK,
            TemplateBody=TEST_TEMPLATE.read_text(),
            Parameters=params,
            Capabilities=["CAPABILITY_IAM"],
            Tags=[{"Key": f"{TAG}test-resource", "Value": "true"}],
        )
        status = wait_stack(cfn, TEST_STACK, {"CREATE_COMPLETE"})
        if status != "CREATE_COMPLETE":
            raise OpsError(f"the test stack ended {status}; see its events in the CloudFormation console")
    out = stack_outputs(cfn, TEST_STACK) or {}
    print(f"Test instance: {out.get('InstanceId')}")
    print(f"Role:          {out.get('RoleName')}")
    print(f"Public IP:     {out.get('PublicIp')}")
    print("Next: use the role's credentials from outside AWS (README: Test it on AWS), or")
    print("      ./helper_scripts/deploy.sh fire events/credential-exfiltration.json")
    return 0


# ---------------------------------------------------------------- fire


def responder_state_machine(session, stack: str, explicit: str | None) -> str:
    if explicit:
        return explicit
    out = stack_outputs(session.client("cloudformation"), stack)
    if not out or "StateMachineArn" not in out:
        raise OpsError(f"no responder stack {stack} with a StateMachineArn output in {session.region_name}: deploy it first")
    return out["StateMachineArn"]


def default_instance(session) -> str:
    out = stack_outputs(session.client("cloudformation"), TEST_STACK)
    if not out:
        raise OpsError("no instance given and no test instance stack: pass INSTANCE_ID or run deploy.sh test-instance")
    return out["InstanceId"]


def current_profile(ec2, instance_id: str) -> str | None:
    """The instance profile associated now (the association API is the authoritative view)."""
    associations = ec2.describe_iam_instance_profile_associations(
        Filters=[{"Name": "instance-id", "Values": [instance_id]}, {"Name": "state", "Values": ["associated"]}]
    )["IamInstanceProfileAssociations"]
    return associations[0]["IamInstanceProfile"]["Arn"] if associations else None


def instance_role(session, instance_id: str, table=None) -> str | None:
    """The instance's role; for a contained instance, the role of the profile it had before the
    quarantine profile (which holds none) replaced it, as its case records it."""
    ec2, iam = session.client("ec2"), session.client("iam")
    res = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
    if not res:
        raise OpsError(f"no instance {instance_id} in {session.region_name}")
    arn = current_profile(ec2, instance_id)
    if arn and arn.endswith("/" + QUARANTINE_PROFILE):
        arn = None
        if table is not None:
            import cases

            try:
                case = cases.read_case(table, cases.find_case(table, instance_id))
            except cases.CaseError:
                case = None
            arn = next((p["profile_arn"] for p in (case or {}).get("previous", []) if p.get("kind") == "profile"), None)
    if not arn:
        return None
    roles = iam.get_instance_profile(InstanceProfileName=arn.rsplit("/", 1)[1])["InstanceProfile"]["Roles"]
    return roles[0]["RoleName"] if roles else None


def point_event(event: dict, instance_id: str, role: str | None, account: str, region: str) -> dict:
    event = json.loads(json.dumps(event))
    event["account"], event["region"] = account, region
    detail = event.setdefault("detail", {})
    detail["accountId"], detail["region"] = account, region
    resource = detail.get("resource") or {}
    if isinstance(resource.get("instanceDetails"), dict):
        resource["instanceDetails"]["instanceId"] = instance_id
        resource["instanceDetails"].pop("iamInstanceProfile", None)
    keys = resource.get("accessKeyDetails")
    if isinstance(keys, dict):
        keys["principalId"] = re.sub(r":[^:]*$", "", keys.get("principalId") or "AROAEXAMPLE") + ":" + instance_id
        if role:
            keys["userName"] = role
    return event


def fire(args) -> int:
    raw = load_event(args.event)
    session, account, _ = clients(args.region)
    machine = responder_state_machine(session, args.stack_name, args.state_machine_arn)
    instance_id = args.instance_id or default_instance(session)
    event = point_event(raw, instance_id, instance_role(session, instance_id), account, session.region_name)
    sfn = session.client("stepfunctions")
    name = f"fire-{instance_id}-{int(time.time())}"
    execution = sfn.start_execution(stateMachineArn=machine, name=name, input=json.dumps(event))["executionArn"]
    print(f"Started {execution}")
    print(f"  with {args.event} pointed at {instance_id} (account {account}, {session.region_name})")
    print("EventBridge cannot be sent aws.guardduty events by hand (only AWS services publish aws.* sources),")
    print("so this starts the state machine directly, as the rule would. Check the outcome with deploy.sh verify.")
    if args.wait:
        d = wait_execution(sfn, execution)
        print(f"Execution {d['status']}")
        return 0 if d["status"] == "SUCCEEDED" else 3
    return 0


def wait_execution(sfn, arn: str, timeout_s: float = 300) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        d = sfn.describe_execution(executionArn=arn)
        if d["status"] != "RUNNING" or time.monotonic() > deadline:
            return d
        time.sleep(0.5)


# ---------------------------------------------------------------- verify


def verify(args) -> int:
    session, account, _ = clients(args.region)
    instance_id = args.instance_id or default_instance(session)
    ec2, iam, sfn = session.client("ec2"), session.client("iam"), session.client("stepfunctions")
    report: dict = {"account": account, "region": session.region_name, "instance_id": instance_id}

    try:
        machine = responder_state_machine(session, args.stack_name, args.state_machine_arn)
        executions = sfn.list_executions(stateMachineArn=machine, maxResults=20)["executions"]
        rows = []
        for e in executions:
            d = sfn.describe_execution(executionArn=e["executionArn"])
            if instance_id in (d.get("input") or ""):
                output = json.loads(d["output"]) if d.get("output") else {}
                rows.append(
                    {
                        "name": e["name"],
                        "status": d["status"],
                        "started": str(e["startDate"]),
                        "verdict": (output.get("notification") or {}).get("verdict"),
                        "error": d.get("error"),
                    }
                )
        report["executions"] = rows[:5]
    except OpsError as e:
        report["executions"], report["executions_error"] = [], str(e)

    inst = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
    report["state"] = inst["State"]["Name"]
    report["interfaces"] = {
        n["NetworkInterfaceId"]: [f"{g['GroupId']} ({g['GroupName']})" for g in n["Groups"]] for n in inst.get("NetworkInterfaces", [])
    }
    report["quarantine_tags"] = {
        t["Key"]: t["Value"] for t in inst.get("Tags", []) if t["Key"].startswith(TAG) and t["Key"] != f"{TAG}test-resource"
    }
    report["instance_profile"] = current_profile(ec2, instance_id)
    report["termination_protection"] = ec2.describe_instance_attribute(InstanceId=instance_id, Attribute="disableApiTermination")[
        "DisableApiTermination"
    ]["Value"]
    snaps = ec2.describe_snapshots(OwnerIds=["self"], Filters=[{"Name": f"tag:{TAG}instance-id", "Values": [instance_id]}])["Snapshots"]
    report["snapshots"] = [
        {
            "id": s["SnapshotId"],
            "volume": s["VolumeId"],
            "state": s.get("State"),
            "device": next((t["Value"] for t in s.get("Tags", []) if t["Key"] == f"{TAG}device"), None),
        }
        for s in snaps
    ]
    try:
        table = case_table(session, args.stack_name, args.table)
    except OpsError:
        table = None
    role = instance_role(session, instance_id, table)
    report["role"] = None
    if role:
        report["role"] = {
            "name": role,
            "attached": [p["PolicyName"] for p in iam.list_attached_role_policies(RoleName=role)["AttachedPolicies"]],
            "inline": iam.list_role_policies(RoleName=role)["PolicyNames"],
        }
    groups = {g for gs in report["interfaces"].values() for g in gs}
    report["contained"] = bool(
        report["interfaces"]
        and all(len(gs) == 1 and "ec2-quarantine-isolation" in gs[0] for gs in report["interfaces"].values())
        and report["snapshots"]
        and report["role"]
        and DENY_ALL in report["role"]["attached"]
        and INLINE_DENY in report["role"]["inline"]
        and (report["instance_profile"] or "").endswith("/" + QUARANTINE_PROFILE)
    )
    report["groups_seen"] = sorted(groups)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(render_verify(report))
    return 0 if report["contained"] else 3


def render_verify(r: dict) -> str:
    out = [
        f"Instance {r['instance_id']} ({r['state']}) in account {r['account']}, {r['region']}: "
        + ("CONTAINED" if r["contained"] else "NOT (fully) contained")
    ]
    out.append("Executions of the state machine for it (newest first):")
    for e in r["executions"]:
        out.append(
            f"  {e['name']}: {e['status']}"
            + (f", verdict {e['verdict']}" if e["verdict"] else "")
            + (f", {e['error']}" if e["error"] else "")
        )
    if not r["executions"]:
        out.append("  none" + (f" ({r['executions_error']})" if r.get("executions_error") else ""))
    out.append("Security groups per network interface:")
    for eni, gs in r["interfaces"].items():
        out.append(f"  {eni}: {', '.join(gs)}")
    out.append(f"Termination protection: {r['termination_protection']}")
    out.append(f"Instance profile: {r['instance_profile'] or 'none'}")
    out.append("Forensic snapshots:")
    out.extend(f"  {s['id']} of {s['volume']} ({s['device']}), {s['state']}" for s in r["snapshots"])
    if not r["snapshots"]:
        out.append("  none")
    if r["role"]:
        out.append(
            f"Role {r['role']['name']}: attached {', '.join(r['role']['attached']) or 'none'}; inline {', '.join(r['role']['inline']) or 'none'}"
        )
    else:
        out.append("Role: the instance has no instance profile")
    out.append("Quarantine tags:")
    out.extend(f"  {k} = {v}" for k, v in sorted(r["quarantine_tags"].items()))
    if not r["quarantine_tags"]:
        out.append("  none")
    return "\n".join(out)


# ---------------------------------------------------------------- cases


def responder_output(session, stack: str, key: str, hint: str) -> str:
    """One output of the responder stack; `hint` says how to name the stack (or do without it)."""
    outputs = stack_outputs(session.client("cloudformation"), stack)
    if outputs is None:
        raise OpsError(f"no stack {stack} in {session.region_name}: {hint}")
    value = outputs.get(key)
    if not value:
        raise OpsError(f"stack {stack} has no {key} output: deploy the current template first")
    return value


def case_table(session, stack: str, explicit: str | None):
    """The case table: the one named, or the responder stack's (its CaseTableName output)."""
    hint = "pass --stack-name, or --table with the case table's name"
    name = explicit or responder_output(session, stack, "CaseTableName", hint)
    return session.resource("dynamodb").Table(name)


def show_cases(args) -> int:
    import cases

    session, _, _ = clients(args.region)
    table = case_table(session, args.stack_name, args.table)
    try:
        if args.command == "cases":
            rows = cases.list_cases(table, args.open)
            print(json.dumps(rows, indent=2) if args.json else cases.render_cases(rows))
        else:
            case = cases.read_case(table, cases.find_case(table, args.case))
            print(json.dumps(case, indent=2, default=str) if args.json else cases.render_case(case))
    except cases.CaseError as e:
        raise OpsError(str(e)) from e
    return 0


# ---------------------------------------------------------------- the pause switch

# What `resume` writes as the switch's description (`pause` writes the reason there).
NOT_PAUSED = "Not paused."


def pause_switch(session, stack: str) -> str:
    """The pause switch's parameter name: the responder stack's PauseParameterName output."""
    return responder_output(session, stack, "PauseParameterName", "pass --stack-name")


def pause(ssm, name: str, reason: str) -> None:
    """Pauses the responder: every finding is then reported, none contained automatically.
    SSM records who did it and when; the reason goes into the parameter's description."""
    # One line, and nothing that would end the JSON string EventBridge's input transformer puts
    # the description in for the pause alert (it does not escape values:
    # https://docs.aws.amazon.com/eventbridge/latest/userguide/eb-transform-target-input.html).
    reason = " ".join(reason.split()).replace('"', "'").replace("\\", "/")
    if not reason:
        raise UsageError("pause needs --reason TEXT: the notification shows it to the team")
    if len(reason) > 1024:
        raise UsageError(f"--reason is {len(reason)} characters; SSM keeps at most 1024")
    _set_switch(ssm, name, "true", reason)


def resume(ssm, name: str) -> None:
    """Resumes automatic containment."""
    _set_switch(ssm, name, "false", NOT_PAUSED)


def _set_switch(ssm, name: str, value: str, description: str) -> None:
    # With the template's type and pattern each time: a switch deleted by hand is made again,
    # and a pattern changed by hand is set back to true|false.
    ssm.put_parameter(Name=name, Value=value, Type="String", AllowedPattern=SWITCH_PATTERN, Overwrite=True, Description=description)


# The switch's AllowedPattern, as template.yaml declares it.
SWITCH_PATTERN = "^(true|false)$"


def pause_state(ssm, name: str) -> dict:
    """The switch as triage reads it: its value, and SSM's record of the change that set that
    version (who, when, the reason)."""
    parameter = ssm.get_parameter(Name=name)["Parameter"]
    change = {}
    for page in ssm.get_paginator("get_parameter_history").paginate(Name=name):
        change = next((h for h in page["Parameters"] if h["Version"] == parameter["Version"]), change)
    since = change.get("LastModifiedDate")
    return {
        "parameter": name,
        "paused": parameter["Value"].strip() == "true",
        "value": parameter["Value"],
        "version": parameter["Version"],
        "since": since.isoformat() if since else None,
        "by": change.get("LastModifiedUser"),
        "reason": change.get("Description"),
    }


def set_pause(args) -> int:
    session, _, _ = clients(args.region)
    ssm = session.client("ssm")
    name = pause_switch(session, args.stack_name)
    if args.command == "pause":
        pause(ssm, name, args.reason)
    else:
        resume(ssm, name)
    state = pause_state(ssm, name)
    if state["paused"]:
        print(
            f"{args.stack_name} in {session.region_name} is PAUSED since {state['since']} by {state['by']} "
            f"({state['reason']}): every finding is reported, none contained automatically; the functions read the switch within seconds"
        )
    else:
        print(f"{args.stack_name} in {session.region_name} is running: findings are contained again (switch {name} = {state['value']})")
    return 0


# ---------------------------------------------------------------- the rails' state


def show_rails(args) -> int:
    """The safety rails as they stand: the pause switch, the rate cap's use per account in the
    last hour, and the approval requests waiting for a person."""
    import cases

    session, _, _ = clients(args.region)
    cfn = session.client("cloudformation")
    try:
        stack = cfn.describe_stacks(StackName=args.stack_name)["Stacks"][0]
    except ClientError as e:
        if "does not exist" in str(e):
            raise OpsError(f"no stack {args.stack_name} in {session.region_name}: pass --stack-name") from None
        raise
    # DescribeStacks lists every parameter the template declares, defaults included.
    parameters = {p["ParameterKey"]: p.get("ParameterValue") for p in stack.get("Parameters", [])}
    table = session.resource("dynamodb").Table(responder_output(session, args.stack_name, "CaseTableName", "pass --stack-name"))
    state = cases.rails_state(table, time.time())
    switch = pause_switch(session, args.stack_name)
    try:
        state["pause"] = pause_state(session.client("ssm"), switch)
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") != "ParameterNotFound":
            raise
        state["pause"] = {"parameter": switch, "missing": True, "paused": False}
    state["max_containments_per_hour"] = parameters.get("MaxContainmentsPerHour")
    state["approvals"] = parameters.get("Approvals")
    options = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in (("region", args.region), ("stack_name", args.stack_name)) if v)
    print(json.dumps(state, indent=2, default=str) if args.json else cases.render_rails(state, options))
    return 0


# ---------------------------------------------------------------- operations: status and logs

# deploy.sh logs --function NAME: the log group each name reads (template.yaml's logical ids).
LOG_GROUPS = {
    "triage": "TriageLogGroup",
    "isolate": "IsolateLogGroup",
    "deregister": "DeregisterLogGroup",
    "snapshot": "SnapshotLogGroup",
    "deny-role": "DenyRoleLogGroup",
    "notify": "NotifyLogGroup",
    "security-hub": "SecurityHubLogGroup",
    "approval": "ApprovalLogGroup",
    "approval-link": "ApprovalLinkLogGroup",
    "evidence-copy": "EvidenceCopyLogGroup",
    "collect": "CollectLogGroup",
    "release": "ReleaseLogGroup",
    "containment": "ContainmentStateMachineLogGroup",
    "release-workflow": "ReleaseStateMachineLogGroup",
    "evidence-copy-workflow": "EvidenceCopyStateMachineLogGroup",
    "collection-workflow": "CollectionStateMachineLogGroup",
}
MAX_LOG_LINES = 1000
WORKFLOWS = (("containment", "ContainmentStateMachine"), ("release", "ReleaseStateMachine"))


def stack_resources(session, stack: str) -> dict[str, tuple[str, str]]:
    """The stack's resources: logical id -> (physical id, type)."""
    cfn = session.client("cloudformation")
    out = {}
    try:
        for page in cfn.get_paginator("list_stack_resources").paginate(StackName=stack):
            for r in page["StackResourceSummaries"]:
                if r.get("PhysicalResourceId"):
                    out[r["LogicalResourceId"]] = (r["PhysicalResourceId"], r["ResourceType"])
    except ClientError as e:
        if "does not exist" in str(e):
            raise OpsError(f"no stack {stack} in {session.region_name}: pass --stack-name") from None
        raise
    return out


def since_ms(text: str, now_s: float) -> int:
    """The start of `--since` (30m, 1h, 2d) in milliseconds since the epoch."""
    match = re.fullmatch(r"([0-9]{1,4})([mhd])", text)
    if not match:
        raise UsageError(f"--since takes a duration such as 30m, 1h or 2d, got {text}")
    seconds = int(match[1]) * {"m": 60, "h": 3600, "d": 86400}[match[2]]
    return int((now_s - seconds) * 1000)


def show_logs(args) -> int:
    """The stack's log lines since `--since`, oldest first, each named by its function or
    workflow; at most MAX_LOG_LINES per log group, and a line says when there were more."""
    if args.function and args.function not in LOG_GROUPS:
        raise UsageError(f"--function takes one of {', '.join(LOG_GROUPS)}, got {args.function}")
    session, _, _ = clients(args.region)
    resources = stack_resources(session, args.stack_name)
    start = since_ms(args.since, time.time())
    logs = session.client("logs")
    lines, cut = [], []
    for name in [args.function] if args.function else list(LOG_GROUPS):
        group = resources.get(LOG_GROUPS[name], (None,))[0]
        if group is None:
            if args.function:
                raise OpsError(
                    f"the stack {args.stack_name} has no {LOG_GROUPS[name]} (the function is not deployed with these parameters)"
                )
            continue
        got = 0
        for page in logs.get_paginator("filter_log_events").paginate(logGroupName=group, startTime=start):
            for event in page.get("events", []):
                if got == MAX_LOG_LINES:
                    cut.append(name)
                    break
                lines.append((event["timestamp"], name, event["message"].rstrip("\n")))
                got += 1
            if name in cut:
                break
    for stamp, name, message in sorted(lines, key=lambda line: line[0]):
        at = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(stamp / 1000)) + f".{stamp % 1000:03d}Z"
        print(f"{at} {name:<22} {message}")
    if not lines:
        print(f"No log line since {args.since} ago.")
    for name in cut:
        print(f"(more than {MAX_LOG_LINES} lines from {name}: narrow --since, or use CloudWatch Logs Insights)")
    return 0


def status(session, stack: str, now_s: float) -> dict:
    """What the on-call engineer asks first: paused or not, the alarms, the last executions."""
    resources = stack_resources(session, stack)
    alarm_names = {physical: logical for logical, (physical, kind) in resources.items() if kind == "AWS::CloudWatch::Alarm"}
    alarms = []
    if alarm_names:
        found = session.client("cloudwatch").describe_alarms(AlarmNames=sorted(alarm_names)[:100])["MetricAlarms"]
        for a in found:
            updated = a.get("StateUpdatedTimestamp")
            alarms.append(
                {
                    "alarm": alarm_names.get(a["AlarmName"], a["AlarmName"]),
                    "name": a["AlarmName"],
                    "state": a["StateValue"],
                    "since": updated.isoformat() if updated else None,
                    "reason": a.get("StateReason"),
                }
            )
    alarms.sort(key=lambda a: (a["state"] != "ALARM", a["alarm"]))
    sfn = session.client("stepfunctions")
    executions = {}
    for name, logical in WORKFLOWS:
        arn = resources.get(logical, (None,))[0]
        if arn is None:
            continue
        listed = sfn.list_executions(stateMachineArn=arn, maxResults=10)["executions"]
        executions[name] = [
            {
                "name": e["name"],
                "status": e["status"],
                "started": e["startDate"].isoformat(),
                "seconds": round(((e.get("stopDate") or e["startDate"]).timestamp() - e["startDate"].timestamp()), 1)
                if e.get("stopDate")
                else round(now_s - e["startDate"].timestamp(), 1),
            }
            for e in listed
        ]
    try:
        pause = pause_state(session.client("ssm"), pause_switch(session, stack))
    except ClientError as e:
        pause = {"paused": False, "unreadable": e.response.get("Error", {}).get("Code", str(e))}
    region = session.region_name
    dashboard = resources.get("Dashboard", (None,))[0]
    return {
        "stack": stack,
        "region": region,
        "pause": pause,
        "alarms": alarms,
        "executions": executions,
        "dashboard": f"https://{region}.console.aws.amazon.com/cloudwatch/home?region={region}#dashboards/dashboard/{dashboard}"
        if dashboard
        else None,
    }


def render_status(state: dict) -> str:
    out = [f"{state['stack']} in {state['region']}"]
    pause = state["pause"]
    if pause.get("paused"):
        out.append(f"PAUSED since {pause.get('since')} by {pause.get('by')} ({pause.get('reason')}): findings are reported, none contained")
    elif pause.get("unreadable"):
        out.append(f"Pause switch: could not be read ({pause['unreadable']})")
    else:
        out.append("Pause switch: not paused")
    firing = [a for a in state["alarms"] if a["state"] == "ALARM"]
    out.append(f"Alarms: {len(firing)} in ALARM of {len(state['alarms'])}")
    for a in state["alarms"]:
        if a["state"] != "OK":
            out.append(f"  {a['state']:<17} {a['alarm']} since {a['since']}: {a['reason']}")
    for name, listed in state["executions"].items():
        out.append(f"Last {name} executions: " + ("none" if not listed else ""))
        for e in listed:
            out.append(f"  {e['started']}  {e['status']:<10} {e['seconds']:>8.1f} s  {e['name']}")
    if state["dashboard"]:
        out.append(f"Dashboard: {state['dashboard']}")
    return "\n".join(out)


def show_status(args) -> int:
    session, _, _ = clients(args.region)
    state = status(session, args.stack_name, time.time())
    print(json.dumps(state, indent=2, default=str) if args.json else render_status(state))
    firing = any(a["state"] == "ALARM" for a in state["alarms"])
    return 3 if firing or state["pause"].get("paused") else 0


# ---------------------------------------------------------------- approvals


def decide(args) -> int:
    """Approves or rejects a waiting request (`apr-...`, named in the request message): the
    stack's approval function records the decision, who made it (the caller's identity, as STS
    gives it) and when, and hands it to the waiting execution. A decision on a request that is
    decided already, past its deadline or unknown is refused and changes nothing."""
    session, _, _ = clients(args.region)
    function = responder_output(session, args.stack_name, "ApprovalFunctionName", "pass --stack-name")
    caller = session.client("sts").get_caller_identity()["Arn"]
    body = answer_approval(session.client("lambda"), function, args.approval_id, args.command == "approve", caller, args.reason)
    print(json.dumps(body, indent=2) if args.json else f"{body.get('status', '?').upper()}: {body.get('message', '')}")
    return 0 if body.get("status") == "recorded" else 1


def answer_approval(lam, function: str, approval_id: str, approve: bool, by: str, reason: str | None) -> dict:
    """The approval function's answer to a decision (`status` recorded or refused, `message`)."""
    payload = {"action": "decide", "approval_id": approval_id, "approve": approve, "by": by, "reason": " ".join((reason or "").split())}
    answer = lam.invoke(FunctionName=function, Payload=json.dumps(payload).encode())
    body = json.loads(answer["Payload"].read() or b"{}")
    if answer.get("FunctionError"):
        raise OpsError(f"the approval function failed: {body.get('errorType')}: {body.get('errorMessage')}")
    return body


# ---------------------------------------------------------------- clean-up


def artifacts(session, account: str, partition: str) -> dict:
    """Everything the responder made, selected only by the tool's own tags and names."""
    ec2, iam, cfn = session.client("ec2"), session.client("iam"), session.client("cloudformation")
    policy_arn = f"arn:{partition}:iam::{account}:policy/ec2-quarantine/{DENY_ALL}"
    found: dict = {"policy_arn": policy_arn}
    # Snapshots tagged with their case (or, by versions before the case table, the finding).
    # One call per key: moto answers a tag-key filter of two values with nothing for snapshots
    # that CreateSnapshots made (AWS ORs a filter's values), so the keys are asked one by one.
    tagged = {
        s["SnapshotId"]: s
        for key in (f"{TAG}case", f"{TAG}finding-id")
        for s in ec2.describe_snapshots(OwnerIds=["self"], Filters=[{"Name": "tag-key", "Values": [key]}])["Snapshots"]
    }
    found["snapshots"] = sorted(tagged)
    # The case each names (a tag: only ever a reason to keep a snapshot, never to delete one).
    found["snapshot_cases"] = {
        i: next((t["Value"] for t in s.get("Tags", []) if t["Key"] == f"{TAG}case"), None) for i, s in tagged.items()
    }
    found["snapshots"], found["locked_snapshots"] = split_locked(ec2, found["snapshots"])
    found["groups"] = [
        g["GroupId"]
        for g in ec2.describe_security_groups(Filters=[{"Name": "tag-key", "Values": [f"{TAG}isolation-group"]}])["SecurityGroups"]
    ]
    try:
        found["deny_all_roles"] = [r["RoleName"] for r in iam.list_entities_for_policy(PolicyArn=policy_arn)["PolicyRoles"]]
        found["deny_all_policy"] = True
    except ClientError:
        found["deny_all_roles"], found["deny_all_policy"] = [], False
    inline = []
    for page in iam.get_paginator("list_roles").paginate():
        for role in page["Roles"]:
            if INLINE_DENY in iam.list_role_policies(RoleName=role["RoleName"])["PolicyNames"]:
                inline.append(role["RoleName"])
    found["inline_roles"] = inline
    try:
        iam.get_instance_profile(InstanceProfileName=QUARANTINE_PROFILE)
        found["quarantine_profile"] = True
    except ClientError:
        found["quarantine_profile"] = False
    found["test_stack"] = stack_outputs(cfn, TEST_STACK) is not None
    return found


def case_table_names(session, stack: str, outputs: dict | None) -> list[str]:
    """The responder's case tables: the stack's output, and the tables CloudFormation named
    after the stack that earlier deployments left (the table is retained when a stack goes)."""
    names = [outputs["CaseTableName"]] if outputs and outputs.get("CaseTableName") else []
    prefix = f"{stack}-CaseTable-"
    for page in session.client("dynamodb").get_paginator("list_tables").paginate():
        names.extend(n for n in page["TableNames"] if n.startswith(prefix) and n not in names)
    return names


def open_cases(session, table: str) -> int:
    """How many cases of a table are not released (a table that cannot be read counts none)."""
    import cases

    try:
        return len(cases.list_cases(session.resource("dynamodb").Table(table), open_only=True))
    except (ClientError, BotoCoreError):
        return 0


def every_case_table(session) -> list[tuple[str, str]] | None:
    """Every responder case table of the account, in every region and whatever its stack's name
    (`<stack>-CaseTable-*`): the IAM denies are global, so an open case anywhere keeps them. None
    when a region cannot be listed."""
    try:
        regions = [r["RegionName"] for r in session.client("ec2").describe_regions()["Regions"]]
        found = []
        for region in regions:
            for page in session.client("dynamodb", region_name=region).get_paginator("list_tables").paginate():
                found.extend((region, n) for n in page["TableNames"] if "-CaseTable-" in n)
        return found
    except (ClientError, BotoCoreError):
        return None


def open_case_holds(session, tables: list[tuple[str, str]] | None, exempt_instances: set[str]) -> dict | None:
    """What the open cases hold, read from the responder's own record (the case tables, never a
    tag), consistently: their ids and tables, the snapshots each recorded, the roles their
    instances hold contained, and whether a role step did not settle (it acts before it records
    the hold: then every role's denies stay). The test stack's instance is left out (the nuke
    removes it). None when a table cannot be read: then nothing an open case might hold goes."""
    import cases
    from boto3.dynamodb.conditions import Attr

    if tables is None:
        return None
    held: dict = {"cases": {}, "snapshots": {}, "roles": {}, "every_role": False}
    for region, name in tables:
        table = session.resource("dynamodb", region_name=region).Table(name)
        try:
            still_open = [c for c in cases.list_cases(table, open_only=True, consistent=True) if c["instance_id"] not in exempt_instances]
            for case in still_open:
                held["cases"][case["case_id"]] = (region, name)
                for step in cases.read_case(table, case["case_id"])["steps"]:
                    if step["step"] == "snapshot":
                        for entry in step.get("created") or []:
                            held["snapshots"][str(entry).split(" ")[0]] = case["case_id"]
                    if step["step"] == "role" and step.get("outcome") not in ("done", "already_done", "skipped", "dry_run"):
                        held["every_role"] = True
            open_instances = {c["instance_id"] for c in still_open}
            holds = cases._scan(
                table, FilterExpression=Attr("pk").begins_with("role#") & Attr("sk").begins_with("hold#"), ConsistentRead=True
            )
            for hold in holds:
                instance = hold["sk"].split("#", 1)[1]
                if instance in open_instances:
                    held["roles"][hold["pk"].split("#", 2)[2]] = instance
        except (ClientError, BotoCoreError, cases.CaseError, KeyError, IndexError):
            return None
    return held


def merged(first: dict | None, second: dict | None) -> dict | None:
    """What either reading of the open cases holds (the second is taken after the question:
    a case opened meanwhile keeps what it holds)."""
    if first is None or second is None:
        return None
    return {
        "cases": {**first["cases"], **second["cases"]},
        "snapshots": {**first["snapshots"], **second["snapshots"]},
        "roles": {**first["roles"], **second["roles"]},
        "every_role": first["every_role"] or second["every_role"],
    }


def held_open(held: dict | None) -> bool:
    """Whether an open case (or a table that could not be read) may still need what the tool made."""
    return held is None or bool(held["cases"])


def keep_for_open_cases(found: dict, held: dict | None) -> dict[str, list[str]]:
    """Takes out of `found` what an open case holds (everything, when the record could not be
    read; every role's denies, when a role step did not settle), and returns what is kept, with
    why."""
    kept: dict[str, list[str]] = {"snapshots": [], "roles": []}
    roles = sorted(set(found["deny_all_roles"]) | set(found["inline_roles"]))
    if held is None or held["every_role"]:
        why = "a case table could not be read" if held is None else "an open case's role step did not settle"
        kept["roles"] = [f"{r} ({why})" for r in roles]
        found["deny_all_roles"], found["inline_roles"] = [], []
    else:
        kept["roles"] = [f"{r} (instance {held['roles'][r]}'s case is open)" for r in roles if r in held["roles"]]
        for key in ("deny_all_roles", "inline_roles"):
            found[key] = [r for r in found[key] if r not in held["roles"]]
    if held is None:
        kept["snapshots"] = [f"{s} (a case table could not be read)" for s in found["snapshots"]]
        found["snapshots"] = []
        return kept
    deletable = []
    for snap in found["snapshots"]:
        tagged = found["snapshot_cases"].get(snap)
        case = held["snapshots"].get(snap) or (tagged if tagged in held["cases"] else None)
        if case:
            kept["snapshots"].append(f"{snap} (case {case} is open)")
        else:
            deletable.append(snap)
    found["snapshots"] = deletable
    return kept


def confirm(question: str, assume_yes: bool) -> bool:
    if assume_yes:
        return True
    if not sys.stdin.isatty():
        raise OpsError(f"{question}: refusing without a terminal to confirm on (pass --yes)")
    return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")


def release_role(iam, role: str, policy_arn: str) -> None:
    """Takes the tool's DenyAll and inline deny off one role, if they are there."""
    try:
        iam.detach_role_policy(RoleName=role, PolicyArn=policy_arn)
    except ClientError as e:
        if e.response["Error"]["Code"] != "NoSuchEntity":
            raise
    try:
        iam.delete_role_policy(RoleName=role, PolicyName=INLINE_DENY)
    except ClientError as e:
        if e.response["Error"]["Code"] != "NoSuchEntity":
            raise


def test_stack_members(ec2, cfn) -> dict[str, str]:
    """The test stack's instance and role, from the stack's own resources (never its outputs,
    which whoever creates a stack of that name writes). The instance counts only if it carries
    the stack's id in its aws:cloudformation:stack-id tag, which no user can write."""
    members: dict[str, str] = {}
    try:
        stack_id = cfn.describe_stacks(StackName=TEST_STACK)["Stacks"][0]["StackId"]
        resources = cfn.describe_stack_resources(StackName=TEST_STACK)["StackResources"]
    except ClientError:
        return members
    by_id = {r.get("LogicalResourceId"): r for r in resources}
    instance = by_id.get("Instance", {})
    if instance.get("ResourceType") == "AWS::EC2::Instance" and instance.get("PhysicalResourceId"):
        try:
            found = ec2.describe_instances(InstanceIds=[instance["PhysicalResourceId"]])["Reservations"][0]["Instances"][0]
        except (ClientError, IndexError):
            found = {}
        if {t["Key"]: t["Value"] for t in found.get("Tags", [])}.get("aws:cloudformation:stack-id") == stack_id:
            members["instance"] = instance["PhysicalResourceId"]
    role = by_id.get("InstanceRole", {})
    if role.get("ResourceType") == "AWS::IAM::Role" and role.get("PhysicalResourceId"):
        members["role"] = role["PhysicalResourceId"]
    return members


def delete_test_stack(ec2, iam, cfn, policy_arn: str) -> str:
    """Deletes the test stack. The responder protected its instance from termination, denied its
    role and put a quarantine group in its VPC: lift the protection on that instance, take the
    tool's policies off that role (CloudFormation cannot delete a role with policies it did not
    attach), and remove the group in that VPC once the instance is gone and the VPC waits on it."""
    members = test_stack_members(ec2, cfn)
    if members.get("instance"):
        ec2.modify_instance_attribute(InstanceId=members["instance"], DisableApiTermination={"Value": False})
    if members.get("role"):
        release_role(iam, members["role"], policy_arn)
    vpc = next(
        (
            r["PhysicalResourceId"]
            for r in cfn.describe_stack_resources(StackName=TEST_STACK)["StackResources"]
            if r["LogicalResourceId"] == "Vpc"
        ),
        None,
    )
    status = "DELETE_FAILED"
    for attempt in range(2):
        try:
            cfn.delete_stack(StackName=TEST_STACK)
            status = wait_stack(cfn, TEST_STACK, {"DELETE_COMPLETE"})
        except ClientError as e:
            if "DependencyViolation" not in str(e):
                raise
            status = "DELETE_FAILED"
        if status == "DELETE_COMPLETE" or attempt == 1 or vpc is None:
            return status
        for group in ec2.describe_security_groups(
            Filters=[{"Name": "vpc-id", "Values": [vpc]}, {"Name": "tag-key", "Values": [f"{TAG}isolation-group"]}]
        )["SecurityGroups"]:
            ec2.delete_security_group(GroupId=group["GroupId"])
    return status


def split_locked(ec2, snapshot_ids: list[str]) -> tuple[list[str], list[str]]:
    """The snapshots that may be deleted, and those kept, each with why: a snapshot whose EBS
    Snapshot Lock holds (governance, compliance or its cooling-off period) is never deleted,
    and when the locks cannot be read none is."""
    if not snapshot_ids:
        return [], []
    held: dict[str, str] = {}
    try:
        for start in range(0, len(snapshot_ids), 100):
            token = None
            while True:
                page = ec2.describe_locked_snapshots(
                    SnapshotIds=snapshot_ids[start : start + 100], **({"NextToken": token} if token else {})
                )
                for s in page.get("Snapshots", []):
                    if s.get("LockState") and s["LockState"] != "expired":
                        expires = s.get("LockExpiresOn")
                        held[s["SnapshotId"]] = f"{s['LockState']} lock until {expires.isoformat() if expires else '?'}"
                token = page.get("NextToken")
                if not token:
                    break
    except (ClientError, BotoCoreError) as e:
        why = e.response["Error"]["Code"] if isinstance(e, ClientError) else type(e).__name__
        return [], [f"{i} (its lock could not be read: {why})" for i in snapshot_ids]
    return [i for i in snapshot_ids if i not in held], [f"{i} ({held[i]})" for i in snapshot_ids if i in held]


def tables_kept(held: dict | None, tables: list[str], region: str) -> set[str]:
    """The case tables of `region` that keep an open case (every one when the cases could not
    be read: `held` is None)."""
    return set(tables) if held is None else {name for where, name in held["cases"].values() if where == region}


def nuke(args) -> int:
    """After one confirmation, removes: with --purge-artifacts the forensic snapshots and the
    tool's IAM denies; the test stack (when present); then the quarantine groups, the DenyAll
    policy and the quarantine profile; last the responder stack. The order follows the
    dependencies: a role cannot go with policies on it, nor a group while an instance uses it."""
    session, account, partition = clients(args.region)
    ec2, iam, cfn = session.client("ec2"), session.client("iam"), session.client("cloudformation")
    test_stack = stack_outputs(cfn, TEST_STACK) is not None
    outputs = stack_outputs(cfn, args.stack_name)
    responder = outputs is not None
    tables = case_table_names(session, args.stack_name, outputs)
    found = artifacts(session, account, partition) if args.purge_artifacts else None
    kept: dict[str, list[str]] = {"snapshots": [], "roles": []}
    held: dict | None = {"cases": {}}
    exempt: set[str] = set()
    if found is not None:
        # What an open case holds stays: its evidence, its roles' denies, its record, read from
        # every case table of the account (IAM is global). The test stack's own instance is the
        # nuke's to remove, its case with it.
        exempt = {m for k, m in test_stack_members(ec2, cfn).items() if k == "instance"}
        held = open_case_holds(session, every_case_table(session), exempt)
        kept = keep_for_open_cases(found, held)
    here = session.region_name
    kept_tables = tables_kept(held, tables, here)
    print(f"In account {account}, {session.region_name}:")
    print(f"  responder stack:          {args.stack_name if responder else 'none'}")
    print(f"  test instance stack:      {TEST_STACK if test_stack else 'none'}")
    for table in tables or [None]:
        if table is None:
            print("  case table:               none")
            continue
        still_open = open_cases(session, table)
        if found is None:
            fate = "kept: the record of every case; --purge-artifacts deletes it"
        elif table in kept_tables:
            fate = "kept: it records open cases" if held is not None else "kept: it could not be read"
        else:
            fate = "deleted: the record of every case"
        print(f"  case table:               {table} ({fate})")
        if still_open:
            print(f"    {still_open} case(s) still open: release them first; a new deployment starts a new, empty case table")
    if outputs and outputs.get("EvidenceBucketName"):
        # Retained by the stack and object-locked: this tool never deletes evidence.
        print(f"  evidence bucket:          {outputs['EvidenceBucketName']} (kept: the cases' manifests, object-locked)")
    if responder:
        # Retained by the stack (DeletionPolicy: Retain): the audit trail of what the responder
        # did, kept for LogRetentionDays, then expired by CloudWatch Logs.
        log_groups = sorted(p for p, kind in stack_resources(session, args.stack_name).values() if kind == "AWS::Logs::LogGroup")
        if log_groups:
            print(f"  log groups (kept: the audit trail, expired after LogRetentionDays): {', '.join(log_groups)}")
    if found:
        print(f"  forensic snapshots:       {', '.join(found['snapshots']) or 'none'}")
        if found["locked_snapshots"]:
            print(f"  kept, locked (evidence):  {', '.join(found['locked_snapshots'])}")
        if kept["snapshots"]:
            print(f"  kept, open cases' evidence: {', '.join(kept['snapshots'])}")
        if kept["roles"]:
            print(f"  kept, denied for open cases: {', '.join(kept['roles'])}")
        groups = ", ".join(found["groups"]) or "none"
        if found["groups"] and held_open(held):
            groups += " (kept: open cases' instances are isolated in them)"
        print(f"  quarantine groups:        {groups}")
        policy = found["policy_arn"] if found["deny_all_policy"] else "none"
        if found["deny_all_policy"] and kept["roles"]:
            policy += " (kept: open cases' roles hold it)"
        elif found["deny_all_roles"]:
            policy += f" (attached to {', '.join(found['deny_all_roles'])})"
        print(f"  DenyAll policy:           {policy}")
        print(f"  revoke-sessions denies:   {', '.join(found['inline_roles']) or 'none'}")
        profile = QUARANTINE_PROFILE if found["quarantine_profile"] else "none"
        if found["quarantine_profile"] and held_open(held):
            profile += " (kept: open cases' instances use it)"
        print(f"  quarantine profile:       {profile}")
        print("Removing the IAM denies gives contained roles their permissions back; the snapshots are the evidence.")
    else:
        print("  (quarantine artifacts are kept; --purge-artifacts removes them too)")
    if not (
        responder
        or test_stack
        or (found and (tables or any(found[k] for k in ("snapshots", "groups", "deny_all_policy", "inline_roles", "quarantine_profile"))))
    ):
        print("Nothing to remove.")
        return 0
    if not confirm("Remove all of the above?", args.yes):
        print("Nothing removed.")
        return 0
    problems = []
    policy_arn = f"arn:{partition}:iam::{account}:policy/ec2-quarantine/{DENY_ALL}"
    if found:
        # Read again after the question: a case opened meanwhile keeps what it holds too.
        held = merged(held, open_case_holds(session, every_case_table(session), exempt))
        more = keep_for_open_cases(found, held)
        problems.extend(f"{what}: kept, an open case holds it since the list above" for what in more["snapshots"] + more["roles"])
        kept = {k: kept[k] + more[k] for k in kept}
        kept_tables |= tables_kept(held, tables, here)
        # Read again after the confirmation: a snapshot locked meanwhile (by hand, say) is kept.
        found["snapshots"], locked_now = split_locked(ec2, found["snapshots"])
        problems.extend(f"snapshot {s}: kept, locked since the list above" for s in locked_now)
        for snap in found["snapshots"]:
            try:
                ec2.delete_snapshot(SnapshotId=snap)
            except ClientError as e:
                problems.append(f"snapshot {snap}: {e.response['Error']['Code']}")
        for role in set(found["deny_all_roles"]) | set(found["inline_roles"]):
            release_role(iam, role, policy_arn)
    if test_stack:
        status = delete_test_stack(ec2, iam, cfn, policy_arn)
        if status != "DELETE_COMPLETE":
            problems.append(f"test stack: {status}")
    if found:
        for group in [] if held_open(held) else found["groups"]:
            try:
                ec2.delete_security_group(GroupId=group)
            except ClientError as e:
                code = e.response["Error"]["Code"]
                if code != "InvalidGroup.NotFound":  # gone with the test stack's VPC
                    problems.append(f"quarantine group {group} (still used by an isolated instance?): {code}")
        try:
            if found["deny_all_policy"] and not kept["roles"]:
                iam.delete_policy(PolicyArn=policy_arn)
        except ClientError as e:
            problems.append(f"DenyAll policy: {e.response['Error']['Code']}")
        try:
            if found["quarantine_profile"] and not held_open(held):
                iam.delete_instance_profile(InstanceProfileName=QUARANTINE_PROFILE)
        except ClientError as e:
            problems.append(f"quarantine profile: {e.response['Error']['Code']}")
    if responder:
        cfn.delete_stack(StackName=args.stack_name)
        status = wait_stack(cfn, args.stack_name, {"DELETE_COMPLETE"})
        if status != "DELETE_COMPLETE":
            problems.append(f"responder stack: {status}")
    if found:
        # Retained by the stack and protected from deletion: both lifted here, on request only.
        # DeleteTable is refused while the table is UPDATING: wait until it is ACTIVE again.
        db = session.client("dynamodb")
        import cases

        for table in tables:
            if table in kept_tables:
                continue
            try:
                # Checked once more just before: a case opened since is never deleted with it.
                still = cases.list_cases(session.resource("dynamodb").Table(table), open_only=True, consistent=True)
                if any(c["instance_id"] not in exempt for c in still):
                    problems.append(f"case table {table}: kept, a case opened in it meanwhile")
                    continue
                db.update_table(TableName=table, DeletionProtectionEnabled=False)
                db.get_waiter("table_exists").wait(TableName=table, WaiterConfig={"Delay": 2, "MaxAttempts": 60})
                db.delete_table(TableName=table)
            except (ClientError, BotoCoreError) as e:
                problems.append(f"case table {table}: {e}")
    for p in problems:
        print(f"  not removed: {p}")
    print("Done." if not problems else "Done, with the exceptions above.")
    return 0 if not problems else 4


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    common = Parser(add_help=False)
    common.add_argument("--region", default=None, help="default: the AWS SDK's (AWS_REGION, profile)")
    p = Parser(prog="deploy.sh", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("test-instance", parents=[common], help="deploy the compromised test instance stack")
    t.add_argument("--ssh-cidr", default="0.0.0.0/0")
    for name in ("fire", "verify"):
        s = sub.add_parser(name, parents=[common])
        if name == "fire":
            s.add_argument("event")
            s.add_argument("--wait", action="store_true", help="wait for the execution to end")
        s.add_argument("instance_id", nargs="?", default=None)
        s.add_argument("--stack-name", default="ec2-quarantine")
        s.add_argument("--state-machine-arn", default=None)
        if name == "verify":
            s.add_argument("--json", action="store_true")
            s.add_argument("--table", default=None, help="the case table's name (default: the stack's CaseTableName output)")
    for name in ("cases", "case"):
        c = sub.add_parser(name, parents=[common])
        if name == "case":
            c.add_argument("case", help="a case id, or an instance id (its open case, else its latest)")
        else:
            c.add_argument("--open", action="store_true", help="only the cases not released")
        c.add_argument("--stack-name", default="ec2-quarantine")
        c.add_argument("--table", default=None, help="the case table's name (default: the stack's CaseTableName output)")
        c.add_argument("--json", action="store_true")
    for name in ("pause", "resume"):
        c = sub.add_parser(name, parents=[common])
        c.add_argument("--stack-name", default="ec2-quarantine")
        if name == "pause":
            c.add_argument("--reason", required=True, help="why, for the team (it goes into every notification while paused)")
    r = sub.add_parser("rails", parents=[common], help="the pause switch, the rate cap's use, the approvals waiting")
    r.add_argument("--stack-name", default="ec2-quarantine")
    r.add_argument("--json", action="store_true")
    st = sub.add_parser("status", parents=[common], help="paused or not, the alarms, the last executions, the dashboard")
    st.add_argument("--stack-name", default="ec2-quarantine")
    st.add_argument("--json", action="store_true")
    lg = sub.add_parser("logs", parents=[common], help="the stack's log lines, oldest first")
    lg.add_argument("--stack-name", default="ec2-quarantine")
    lg.add_argument("--function", default=None, help=f"one of {', '.join(LOG_GROUPS)}")
    lg.add_argument("--since", default="1h", help="30m, 1h, 2d (default 1h)")
    for name in ("approve", "reject"):
        c = sub.add_parser(name, parents=[common])
        c.add_argument("approval_id", help="the request's id (apr-...), as the request message gives it")
        c.add_argument("--stack-name", default="ec2-quarantine")
        c.add_argument("--reason", required=name == "reject", help="why, for the record")
        c.add_argument("--json", action="store_true")
    n = sub.add_parser(
        "nuke", parents=[common], help="remove the test stack, the responder stack and, with --purge-artifacts, the tool's artifacts"
    )
    n.add_argument("--stack-name", default="ec2-quarantine")
    n.add_argument("--purge-artifacts", action="store_true")
    n.add_argument("--yes", action="store_true")
    try:
        args = p.parse_args(argv)
        return {
            "test-instance": test_instance,
            "fire": fire,
            "verify": verify,
            "nuke": nuke,
            "cases": show_cases,
            "case": show_cases,
            "pause": set_pause,
            "resume": set_pause,
            "rails": show_rails,
            "status": show_status,
            "logs": show_logs,
            "approve": decide,
            "reject": decide,
        }[args.command](args)
    except UsageError as e:
        print(f"deploy.sh: {e}", file=sys.stderr)
        return 2
    except (OpsError, ClientError, BotoCoreError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
