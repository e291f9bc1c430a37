"""The offline end-to-end run: the real state machine and the real Rust functions, no AWS.

What runs where (see README, "How the local run maps to AWS"):
- moto's AWS emulator runs in this process, with its Step Functions interpreter executing the
  state machine from statemachine/containment.asl.json (the same file the template deploys);
- a ThreadedMotoServer in this process serves the same emulated state over HTTP, and the Rust
  functions (the same binaries as on Lambda, speaking the Lambda Runtime API) call it through
  AWS_ENDPOINT_URL;
- the interpreter's Lambda Tasks reach the functions through lambda_service.py, which answers as
  Lambda does, function errors included, so Retry and Catch match the functions' errorType.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import signal
import socket
import sys
import tempfile
import time
import types
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lambda_service import LambdaService, function_env  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import cases  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "template.yaml"
STATE_MACHINE = ROOT / "statemachine" / "containment.asl.json"
RELEASE_MACHINE = ROOT / "statemachine" / "release.asl.json"
DEFAULT_EVENT = ROOT / "events" / "credential-exfiltration.json"
REGION = "us-east-1"
ACCOUNT = "123456789012"
IMAGE_ID = "ami-1e749f67"
MISSING_INSTANCE = "i-0fffffffffffffff0"
MEMBER_ACCOUNT = "210987654321"
MEMBER_ROLE = "ec2-quarantine-member"
MEMBER_EXTERNAL_ID = "local-run-external-id"
MEMBER_TEMPLATE = ROOT / "helper_scripts" / "member-account-role.yaml"
# The physical names the local stack gives the template's resources a function's environment
# refers to (CloudFormation would generate them).
LOCAL_NAMES = {"CaseTable": "ec2-quarantine-CaseTable-local"}
# Binary name -> the template's substitution for its ARN.
FUNCTIONS = {
    "triage": "TriageFunctionArn",
    "isolate": "IsolateFunctionArn",
    "deregister": "DeregisterFunctionArn",
    "release": "ReleaseFunctionArn",
    "snapshot": "SnapshotFunctionArn",
    "deny-role": "DenyRoleFunctionArn",
    "notify": "NotifyFunctionArn",
}
# The template's substitution for the alert topic: the state machines publish a short fallback
# message to it themselves when the notify function fails.
TOPIC_SUBSTITUTION = "AlertTopicArn"
# A topic that does not exist, for the notify function when the run makes it fail (notify_fails).
MISSING_TOPIC = f"arn:aws:sns:{REGION}:{ACCOUNT}:ec2-quarantine-no-such-topic"
# Step Functions refuses a state input or output (and a task's parameters or result) over 256 KiB,
# 262,144 bytes of UTF-8, with States.DataLimitExceeded, which no Catch catches: States.ALL does
# not match it (https://docs.aws.amazon.com/step-functions/latest/dg/concepts-error-handling.html,
# https://docs.aws.amazon.com/step-functions/latest/dg/service-quotas.html; the history's input and
# output fields have the same maximum, https://docs.aws.amazon.com/step-functions/latest/apireference/API_StateEnteredEventDetails.html).
# moto's interpreter does not enforce it, so the run checks the history (oversized_payloads).
PAYLOAD_LIMIT_BYTES = 262_144


class HarnessError(Exception):
    """The local run itself could not be set up (not a containment failure)."""


# ---------------------------------------------------------------- template and event pattern


class _CfnLoader(yaml.SafeLoader):
    pass


def _cfn_tag(loader, tag_suffix, node):
    name = "Ref" if tag_suffix == "Ref" else f"Fn::{tag_suffix}"
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
        if name == "Fn::GetAtt":
            value = value.split(".", 1)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    return {name: value}


_CfnLoader.add_multi_constructor("!", _cfn_tag)


def load_template() -> dict:
    return yaml.load(TEMPLATE.read_text(), Loader=_CfnLoader)


def rule_pattern(template: dict, overrides: dict[str, str]) -> dict:
    """The EventBridge pattern of the template's rule, with its parameters substituted."""
    rules = [r for r in template["Resources"].values() if r.get("Type") == "AWS::Events::Rule"]
    if len(rules) != 1:
        raise HarnessError(f"expected one AWS::Events::Rule in template.yaml, found {len(rules)}")
    pattern = rules[0]["Properties"]["EventPattern"]
    if isinstance(pattern, dict) and "Fn::Sub" in pattern:
        params = {k: str(v.get("Default", "")) for k, v in template.get("Parameters", {}).items()}
        params.update(overrides)

        def sub(m: re.Match) -> str:
            if m.group(1) not in params:
                raise HarnessError(f"the rule pattern uses ${{{m.group(1)}}}, which is not a parameter")
            return params[m.group(1)]

        pattern = json.loads(re.sub(r"\$\{([A-Za-z0-9]+)\}", sub, pattern["Fn::Sub"]))
    return pattern


def rule_matches(pattern: dict, event: dict) -> bool:
    from moto.events.models import EventPattern

    return EventPattern.load(json.dumps(pattern)).matches_event(event)


def function_settings(template: dict, overrides: dict[str, str], account: str) -> dict[str, str]:
    """The functions' environment as the template's Globals give it, parameters resolved (their
    defaults, or the overrides as `sam deploy --parameter-overrides` would give them)."""
    params = {k: str(v.get("Default", "")) for k, v in template.get("Parameters", {}).items()}
    unknown = set(overrides) - set(params)
    if unknown:
        raise HarnessError(f"no such template parameter: {', '.join(sorted(unknown))}")
    params.update(overrides)
    params.update({"AWS::AccountId": account, "AWS::Region": REGION, "AWS::Partition": "aws"})
    params.update(LOCAL_NAMES)
    out = {}
    for name, value in template["Globals"]["Function"]["Environment"]["Variables"].items():
        if isinstance(value, dict) and "Ref" in value:
            value = params[value["Ref"]]
        out[name] = str(value)
    return out


def create_case_table(dynamodb, template: dict) -> str:
    """The case table as the template declares it (keys, billing), under its local name."""
    props = template["Resources"]["CaseTable"]["Properties"]
    name = LOCAL_NAMES["CaseTable"]
    dynamodb.create_table(
        TableName=name, KeySchema=props["KeySchema"], AttributeDefinitions=props["AttributeDefinitions"],
        BillingMode=props["BillingMode"],
    )
    return name


def state_machine_definition(arns: dict[str, str], path: Path = STATE_MACHINE, topic_arn: str | None = None) -> str:
    text = path.read_text()
    for binary, placeholder in FUNCTIONS.items():
        text = text.replace("${" + placeholder + "}", arns[binary])
    if topic_arn is not None:
        text = text.replace("${" + TOPIC_SUBSTITUTION + "}", topic_arn)
    left = re.findall(r"\$\{[A-Za-z0-9]+\}", text)
    if left:
        raise HarnessError(f"unresolved substitutions in the state machine: {left}")
    return text


# ---------------------------------------------------------------- the simulated stack


def simulate_compromised_instance(ec2, iam) -> dict:
    """Like the user's test stack: VPC, subnet, SSH-open group, role and profile, an instance with
    two network interfaces and two volumes."""
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.1.0/24", AvailabilityZone=f"{REGION}a")["Subnet"]["SubnetId"]
    ssh = ec2.create_security_group(GroupName="ssh-open", Description="SSH from anywhere", VpcId=vpc)["GroupId"]
    ec2.authorize_security_group_ingress(
        GroupId=ssh, IpPermissions=[{"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}]
    )
    web = ec2.create_security_group(GroupName="web", Description="web tier", VpcId=vpc)["GroupId"]
    role = "compromised-instance-role"
    iam.create_role(
        RoleName=role,
        AssumeRolePolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}]}
        ),
    )
    read_only = iam.create_policy(
        PolicyName="s3-ssm-read-only",
        PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": ["s3:Get*", "s3:List*", "ssm:GetParameter*"], "Resource": "*"}]}
        ),
    )["Policy"]["Arn"]
    iam.attach_role_policy(RoleName=role, PolicyArn=read_only)
    profile = iam.create_instance_profile(InstanceProfileName="compromised-instance-profile")["InstanceProfile"]
    iam.add_role_to_instance_profile(InstanceProfileName="compromised-instance-profile", RoleName=role)
    root = ec2.describe_images(ImageIds=[IMAGE_ID])["Images"][0].get("RootDeviceName", "/dev/sda1")
    instance = ec2.run_instances(
        ImageId=IMAGE_ID,
        InstanceType="t3.micro",
        MinCount=1,
        MaxCount=1,
        IamInstanceProfile={"Arn": profile["Arn"]},
        NetworkInterfaces=[
            {"DeviceIndex": 0, "SubnetId": subnet, "Groups": [ssh]},
            {"DeviceIndex": 1, "SubnetId": subnet, "Groups": [web, ssh]},
        ],
        BlockDeviceMappings=[
            {"DeviceName": root, "Ebs": {"VolumeSize": 8, "DeleteOnTermination": True}},
            {"DeviceName": "/dev/sdf", "Ebs": {"VolumeSize": 10, "DeleteOnTermination": True}},
        ],
        TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": "Name", "Value": "compromised-instance"}]}],
    )["Instances"][0]
    return {
        "instance_id": instance["InstanceId"],
        "subnet_id": subnet,
        "vpc_id": vpc,
        "role_name": role,
        "profile_arn": profile["Arn"],
        "interfaces": [n["NetworkInterfaceId"] for n in instance["NetworkInterfaces"]],
        "volumes": [m["Ebs"]["VolumeId"] for m in instance["BlockDeviceMappings"]],
    }


def more_instances(ec2, sim: dict, count: int) -> list[dict]:
    """`count` more compromised instances like the first (same subnet, groups, profile and role;
    two interfaces and two volumes each), for a finding that names a group."""
    first = ec2.describe_instances(InstanceIds=[sim["instance_id"]])["Reservations"][0]["Instances"][0]
    groups = {n["Attachment"]["DeviceIndex"]: [g["GroupId"] for g in n["Groups"]] for n in first["NetworkInterfaces"]}
    root = ec2.describe_images(ImageIds=[IMAGE_ID])["Images"][0].get("RootDeviceName", "/dev/sda1")
    out = []
    for k in range(count):
        instance = ec2.run_instances(
            ImageId=IMAGE_ID,
            InstanceType="t3.micro",
            MinCount=1,
            MaxCount=1,
            IamInstanceProfile={"Arn": sim["profile_arn"]},
            NetworkInterfaces=[{"DeviceIndex": i, "SubnetId": sim["subnet_id"], "Groups": g} for i, g in sorted(groups.items())],
            BlockDeviceMappings=[
                {"DeviceName": root, "Ebs": {"VolumeSize": 8, "DeleteOnTermination": True}},
                {"DeviceName": "/dev/sdf", "Ebs": {"VolumeSize": 10, "DeleteOnTermination": True}},
            ],
            TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": "Name", "Value": f"compromised-instance-{k + 2}"}]}],
        )["Instances"][0]
        out.append({
            **sim,
            "instance_id": instance["InstanceId"],
            "interfaces": [n["NetworkInterfaceId"] for n in instance["NetworkInterfaces"]],
            "volumes": [m["Ebs"]["VolumeId"] for m in instance["BlockDeviceMappings"]],
        })
    return out


INSTANCE_ID = re.compile(r"\bi-(?:[0-9a-f]{17}|[0-9a-f]{8})\b")


def sequence_instances(event: dict) -> list[str]:
    """The instance ids an attack sequence's resources name, in order of first mention (an
    instance resource, or a group's `ec2InstanceUids`); empty for any other finding."""
    detail = event.get("detail") if isinstance(event.get("detail"), dict) else {}
    resource = detail.get("resource") if isinstance(detail.get("resource"), dict) else {}
    if resource.get("resourceType") != "AttackSequence":
        return []
    resources = (((detail.get("service") or {}).get("detection") or {}).get("sequence") or {}).get("resources") or []
    found: list[str] = []
    for r in resources:
        for i in INSTANCE_ID.findall(json.dumps(r)):
            if i not in found:
                found.append(i)
    return found


def point_sequence_at(event: dict, sim: dict, sims: list[dict]) -> dict:
    """An attack sequence pointed at the simulated instances: each instance id it names becomes
    one simulated instance (in order), wherever it appears; its account the simulated one's."""
    named = sequence_instances(event)
    text = json.dumps(event)
    original_account = (event.get("detail") or {}).get("accountId")
    for old, new in zip(named, sims):
        text = text.replace(old, new["instance_id"])
    if isinstance(original_account, str) and original_account != sim["account"]:
        text = text.replace(f'"{original_account}"', f'"{sim["account"]}"').replace(f":{original_account}:", f":{sim['account']}:")
    return point_event_at(json.loads(text), sim, sim["instance_id"])


SIM_GROUP = "web-asg"
SIM_CLASSIC = "web-classic"


def put_in_service(sim: dict, asg, elbv2, elb) -> None:
    """Like a production web tier: the instance in an Auto Scaling group, behind a target group
    (instance target, port 80) and a Classic Load Balancer."""
    asg.create_launch_configuration(LaunchConfigurationName="web-lc", ImageId=IMAGE_ID, InstanceType="t3.micro")
    asg.create_auto_scaling_group(
        AutoScalingGroupName=SIM_GROUP, LaunchConfigurationName="web-lc", MinSize=0, MaxSize=3, DesiredCapacity=0,
        VPCZoneIdentifier=sim["subnet_id"],
    )
    asg.attach_instances(AutoScalingGroupName=SIM_GROUP, InstanceIds=[sim["instance_id"]])
    tg = elbv2.create_target_group(Name="web-tg", Protocol="HTTP", Port=80, VpcId=sim["vpc_id"], TargetType="instance")
    sim["target_group_arn"] = tg["TargetGroups"][0]["TargetGroupArn"]
    elbv2.register_targets(TargetGroupArn=sim["target_group_arn"], Targets=[{"Id": sim["instance_id"], "Port": 80}])
    elb.create_load_balancer(
        LoadBalancerName=SIM_CLASSIC, Listeners=[{"Protocol": "HTTP", "LoadBalancerPort": 80, "InstancePort": 80}],
        AvailabilityZones=[f"{REGION}a"],
    )
    elb.register_instances_with_load_balancer(LoadBalancerName=SIM_CLASSIC, Instances=[{"InstanceId": sim["instance_id"]}])


def point_event_at(event: dict, sim: dict, instance_id: str) -> dict:
    """Where the event names an instance or a role, they become the simulated ones (and its
    account the simulated instance's)."""
    event = json.loads(json.dumps(event))
    event["account"], event["region"] = sim["account"], REGION
    detail = event.get("detail")
    if not isinstance(detail, dict):
        return event
    detail["accountId"], detail["region"] = sim["account"], REGION
    resource = detail.get("resource")
    if not isinstance(resource, dict):
        return event
    details = resource.get("instanceDetails")
    if isinstance(details, dict) and details.get("instanceId"):
        details["instanceId"] = instance_id
        # GuardDuty names the interfaces' VPC, which isolation reads as a hint.
        if isinstance(details.get("networkInterfaces"), list) and sim.get("vpc_id"):
            for eni in details["networkInterfaces"]:
                if isinstance(eni, dict):
                    eni["vpcId"] = sim["vpc_id"]
        if isinstance(details.get("iamInstanceProfile"), dict):
            details["iamInstanceProfile"]["arn"] = sim["profile_arn"]
    keys = resource.get("accessKeyDetails")
    if isinstance(keys, dict) and isinstance(keys.get("principalId"), str) and re.search(r":i-[0-9a-f]+$", keys["principalId"]):
        keys["principalId"] = re.sub(r":i-[0-9a-f]+$", ":" + instance_id, keys["principalId"])
        if keys.get("userName"):
            keys["userName"] = sim["role_name"]
    return event


def point_sample_at(raw: dict, sim: dict) -> dict:
    """A sample input of any function pointed at the simulated instance: a release request, a
    notify input (its finding), or a finding event."""
    if "instance_id" in raw:
        return {**raw, "instance_id": sim["instance_id"]}
    if isinstance(raw.get("event"), dict):
        return {**raw, "event": point_event_at(raw["event"], sim, sim["instance_id"])}
    return point_event_at(raw, sim, sim["instance_id"])


def administrator_state(ec2, iam) -> dict:
    """What the responder made in its own account (nothing, when the finding is a member's)."""
    tagged = [{"Name": "tag-key", "Values": ["ec2-quarantine:isolation-group"]}]
    policies = iam.list_policies(Scope="Local", PathPrefix="/ec2-quarantine/")["Policies"]
    return {
        "quarantine_groups": len(ec2.describe_security_groups(Filters=tagged)["SecurityGroups"]),
        "forensic_snapshots": len(
            ec2.describe_snapshots(Filters=[{"Name": "tag-key", "Values": ["ec2-quarantine:case"]}])["Snapshots"]
        ),
        "deny_all_policies": len(policies),
    }


def emulator_state(ec2, iam, sim: dict, asg=None, elbv2=None, elb=None) -> dict:
    enis = ec2.describe_network_interfaces(NetworkInterfaceIds=sim["interfaces"])["NetworkInterfaces"]
    groups = {n["NetworkInterfaceId"]: sorted(g["GroupId"] for g in n["Groups"]) for n in enis}
    quarantine = ec2.describe_security_groups(
        Filters=[{"Name": "vpc-id", "Values": [sim["vpc_id"]]}, {"Name": "tag-key", "Values": ["ec2-quarantine:isolation-group"]}]
    )["SecurityGroups"]
    snapshots = ec2.describe_snapshots(Filters=[{"Name": "volume-id", "Values": sim["volumes"]}])["Snapshots"]
    instance = ec2.describe_instances(InstanceIds=[sim["instance_id"]])["Reservations"][0]["Instances"][0]
    attrs = {
        "termination_protection": ec2.describe_instance_attribute(InstanceId=sim["instance_id"], Attribute="disableApiTermination")[
            "DisableApiTermination"
        ]["Value"],
        "deleted_on_termination": sorted(
            m["DeviceName"] for m in instance.get("BlockDeviceMappings", []) if m.get("Ebs", {}).get("DeleteOnTermination")
        ),
        "shutdown_behavior": ec2.describe_instance_attribute(InstanceId=sim["instance_id"], Attribute="instanceInitiatedShutdownBehavior")[
            "InstanceInitiatedShutdownBehavior"
        ]["Value"],
    }
    role = sim["role_name"]
    associations = ec2.describe_iam_instance_profile_associations(
        Filters=[{"Name": "instance-id", "Values": [sim["instance_id"]]}, {"Name": "state", "Values": ["associated"]}]
    )["IamInstanceProfileAssociations"]
    attrs["instance_profile"] = associations[0]["IamInstanceProfile"]["Arn"] if associations else None
    service = {}
    if asg is not None:
        groups_out = asg.describe_auto_scaling_groups(AutoScalingGroupNames=[SIM_GROUP])["AutoScalingGroups"]
        service["auto_scaling"] = [
            {"group": g["AutoScalingGroupName"], "desired": g["DesiredCapacity"],
             "instances": sorted([i["InstanceId"], i["LifecycleState"]] for i in g["Instances"])}
            for g in groups_out
        ]
        service["targets"] = sorted(
            [d["Target"]["Id"], d["Target"].get("Port")]
            for d in elbv2.describe_target_health(TargetGroupArn=sim["target_group_arn"])["TargetHealthDescriptions"]
        )
        service["classic"] = sorted(
            i["InstanceId"] for lb in elb.describe_load_balancers()["LoadBalancerDescriptions"] for i in lb["Instances"]
        )
    return {
        **service,
        "interface_groups": groups,
        "quarantine_groups": [
            {"id": g["GroupId"], "ingress_rules": len(g["IpPermissions"]), "egress_rules": len(g["IpPermissionsEgress"])} for g in quarantine
        ],
        "snapshots": sorted(
            (
                {
                    "id": s["SnapshotId"],
                    "volume_id": s["VolumeId"],
                    "tags": {t["Key"]: t["Value"] for t in s.get("Tags", [])},
                }
                for s in snapshots
            ),
            key=lambda s: s["volume_id"],
        ),
        "instance_tags": {t["Key"]: t["Value"] for t in instance.get("Tags", [])},
        "instance": attrs,
        "role": {
            "name": role,
            "attached_policies": sorted(p["PolicyArn"] for p in iam.list_attached_role_policies(RoleName=role)["AttachedPolicies"]),
            "inline_policies": sorted(iam.list_role_policies(RoleName=role)["PolicyNames"]),
            "tags": sorted(t["Key"] for t in iam.list_role_tags(RoleName=role)["Tags"]),
        },
    }


# ---------------------------------------------------------------- the execution and its history


def _entered_state(event: dict, by_id: dict) -> str | None:
    """The state an event belongs to: the nearest StateEntered event before it."""
    e = event
    while e is not None:
        details = e.get("stateEnteredEventDetails")
        if details:
            return details["name"]
        e = by_id.get(e.get("previousEventId"))
    return None


def oversized_payloads(events: list[dict], limit: int = PAYLOAD_LIMIT_BYTES) -> list[dict]:
    """Each payload in the history over Step Functions' limit: a state's input or output, a task's
    parameters (its input after Parameters) or its result, in UTF-8 bytes, in history order."""
    by_id = {e["id"]: e for e in events}
    found = []
    for e in events:
        for key, details in e.items():
            if not (key.endswith("EventDetails") and isinstance(details, dict)):
                continue
            for field in ("input", "output", "parameters"):
                value = details.get(field)
                size = len(value.encode("utf-8")) if isinstance(value, str) else 0
                if size > limit:
                    found.append({"state": _entered_state(e, by_id), "event": e["type"], "field": field, "bytes": size})
    return found


def execution_outcome(done: dict, history: list[dict]) -> dict:
    """The execution's outcome as AWS would report it: the emulator's, unless a payload in its
    history is over the limit, which fails the execution on AWS with States.DataLimitExceeded."""
    outcome = {
        "status": done["status"],
        "error": done.get("error"),
        "cause": done.get("cause"),
        "output": json.loads(done["output"]) if done.get("output") else None,
    }
    oversized = oversized_payloads(history)
    if oversized:
        first = oversized[0]
        outcome.update(
            status="FAILED",
            error="States.DataLimitExceeded",
            cause=(
                f"the {first['field']} of state {first['state']} ({first['event']}) is {first['bytes']} bytes, over the "
                f"{PAYLOAD_LIMIT_BYTES}-byte limit: on AWS the execution fails there, and no Catch catches it "
                f"(the emulator does not enforce the limit; it ended {done['status']})"
            ),
            output=None,
            emulator_status=done["status"],
            oversized=oversized,
        )
    return outcome


def states_from_history(events: list[dict]) -> list[dict]:
    """Each state that ran: its result or error, and how many times its function was invoked."""
    by_id = {e["id"]: e for e in events}
    states: dict[str, dict] = {}
    order: list[str] = []

    def entered_state(event: dict) -> str | None:
        return _entered_state(event, by_id)

    for e in events:
        t = e["type"]
        if t.endswith("StateEntered"):
            name = e["stateEnteredEventDetails"]["name"]
            if name not in states:
                order.append(name)
                states[name] = {"name": name, "type": t[: -len("StateEntered")], "attempts": 0, "errors": []}
        elif t in ("LambdaFunctionScheduled", "TaskScheduled"):
            name = entered_state(e)
            if name in states:
                states[name]["attempts"] += 1
        elif t in ("LambdaFunctionFailed", "LambdaFunctionTimedOut", "TaskFailed"):
            name = entered_state(e)
            details = next((v for k, v in e.items() if k.endswith("EventDetails")), {})
            if name in states:
                states[name]["errors"].append({"error": details.get("error"), "cause": details.get("cause")})
        elif t.endswith("StateExited"):
            d = e["stateExitedEventDetails"]
            name = d["name"]
            output = d.get("output")
            try:
                states[name]["output"] = json.loads(output) if output else None
            except ValueError:
                states[name]["output"] = output
    return [states[n] for n in order]


def wait_for(sfn, execution_arn: str, timeout_s: float) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        d = sfn.describe_execution(executionArn=execution_arn)
        if d["status"] != "RUNNING":
            return d
        if time.monotonic() > deadline:
            raise HarnessError(f"the execution did not finish within {timeout_s:.0f} s")
        time.sleep(0.2)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- the run


@contextlib.contextmanager
def local_stack(
    bin_dir: Path,
    log_dir: Path,
    member_account: str | None = None,
    parameters: dict[str, str] | None = None,
    functions_endpoint=None,
    copies: int = 1,
    notify_fails: bool = False,
):
    """The emulator with the stack's resources, the functions served, and a simulated instance.

    Yields a namespace with the boto3 clients, the Lambda service, the topic and subscriber
    queue, the state machine and the simulated instance; stops everything on the way out.
    `functions_endpoint(emulator_url)` gives the address the functions call instead (a recording
    or rate-limiting proxy, for the benchmarks); `copies` is how many processes serve each function.
    `notify_fails` points the notify function at a topic that does not exist, so it fails for good
    and the state machines' own fallback message is what reaches the subscriber queue.
    """
    import boto3
    from moto import mock_aws
    from moto.server import ThreadedMotoServer

    for binary in FUNCTIONS:
        if not (bin_dir / binary).is_file():
            raise HarnessError(f"{bin_dir / binary} is missing: build the functions first (cargo test --no-run)")
    log_dir.mkdir(parents=True, exist_ok=True)
    # This process only ever talks to the in-process emulator.
    for var in [v for v in os.environ if v.startswith("AWS_ENDPOINT_URL") or v in ("AWS_PROFILE", "AWS_SESSION_TOKEN")]:
        del os.environ[var]
    os.environ.update(
        {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": REGION, "AWS_REGION": REGION,
         "AWS_EC2_METADATA_DISABLED": "true"}
    )
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    with mock_aws(config={"stepfunctions": {"execute_state_machine": True}}):
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
        server.start()
        emulator = f"http://127.0.0.1:{server._server.server_port}"
        service = LambdaService(REGION, ACCOUNT)
        try:
            os.environ["AWS_ENDPOINT_URL_LAMBDA"] = service.endpoint
            st = types.SimpleNamespace(service=service, emulator=emulator)
            st.ec2, st.iam, st.sns, st.sqs, st.sfn = (boto3.client(s, region_name=REGION) for s in ("ec2", "iam", "sns", "sqs", "stepfunctions"))
            # The stack's resources, as the template creates them.
            st.case_table = boto3.resource("dynamodb", region_name=REGION).Table(
                create_case_table(boto3.client("dynamodb", region_name=REGION), load_template())
            )
            st.topic = st.sns.create_topic(Name="ec2-quarantine-alerts")["TopicArn"]
            st.queue_url = st.sqs.create_queue(QueueName="security-team-inbox")["QueueUrl"]
            queue_arn = st.sqs.get_queue_attributes(QueueUrl=st.queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
            st.sns.subscribe(TopicArn=st.topic, Protocol="sqs", Endpoint=queue_arn)
            settings = {
                **function_settings(load_template(), parameters or {}, ACCOUNT),
                "ALERT_TOPIC_ARN": MISSING_TOPIC if notify_fails else st.topic,
            }
            if member_account:
                settings.update({"MEMBER_ROLE_NAME": MEMBER_ROLE, "MEMBER_ROLE_EXTERNAL_ID": MEMBER_EXTERNAL_ID})
            env = function_env(functions_endpoint(emulator) if functions_endpoint else emulator, REGION, settings)
            for binary in FUNCTIONS:
                service.add(binary, bin_dir / binary, env, log_dir / f"{binary}.log", copies)
            sm_role = st.iam.create_role(
                RoleName="ec2-quarantine-state-machine",
                AssumeRolePolicyDocument=json.dumps(
                    {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": {"Service": "states.amazonaws.com"}, "Action": "sts:AssumeRole"}]}
                ),
            )["Role"]["Arn"]
            arns = {b: service.arn(b) for b in FUNCTIONS}
            st.machine = st.sfn.create_state_machine(
                name="ec2-quarantine-containment", definition=state_machine_definition(arns, STATE_MACHINE, st.topic), roleArn=sm_role,
            )["stateMachineArn"]
            st.release_machine = st.sfn.create_state_machine(
                name="ec2-quarantine-release", definition=state_machine_definition(arns, RELEASE_MACHINE, st.topic), roleArn=sm_role,
            )["stateMachineArn"]
            st.target_ec2, st.target_iam = st.ec2, st.iam
            if member_account:
                st.target_ec2, st.target_iam = member_clients(member_account)
            st.sim = simulate_compromised_instance(st.target_ec2, st.target_iam)
            st.sim["account"] = member_account or ACCOUNT
            st.service_clients = (None, None, None)
            if not member_account:
                st.service_clients = tuple(boto3.client(s, region_name=REGION) for s in ("autoscaling", "elbv2", "elb"))
                put_in_service(st.sim, *st.service_clients)
            yield st
        finally:
            service.stop()
            server.stop()
            os.environ.pop("AWS_ENDPOINT_URL_LAMBDA", None)


def member_clients(account: str):
    """Clients acting in a member account, whose member role comes from the member template."""
    import boto3

    sts = boto3.client("sts", region_name=REGION)
    c = sts.assume_role(RoleArn=f"arn:aws:iam::{account}:role/OrganizationAccountAccessRole", RoleSessionName="setup")["Credentials"]
    session = boto3.Session(
        aws_access_key_id=c["AccessKeyId"], aws_secret_access_key=c["SecretAccessKey"], aws_session_token=c["SessionToken"], region_name=REGION
    )
    cfn = session.client("cloudformation")
    cfn.create_stack(
        StackName="ec2-quarantine-member",
        TemplateBody=MEMBER_TEMPLATE.read_text(),
        Parameters=[
            {"ParameterKey": "ResponderAccountId", "ParameterValue": ACCOUNT},
            {"ParameterKey": "ExternalId", "ParameterValue": MEMBER_EXTERNAL_ID},
        ],
        Capabilities=["CAPABILITY_NAMED_IAM"],
    )
    status = cfn.describe_stacks(StackName="ec2-quarantine-member")["Stacks"][0]["StackStatus"]
    if status != "CREATE_COMPLETE":
        raise HarnessError(f"the member template did not deploy on the emulator: {status}")
    return session.client("ec2"), session.client("iam")


def received_notification(st) -> dict | None:
    messages = st.sqs.receive_message(QueueUrl=st.queue_url, MaxNumberOfMessages=10).get("Messages", [])
    if not messages:
        return None
    envelope = json.loads(messages[0]["Body"])
    st.sqs.delete_message_batch(
        QueueUrl=st.queue_url, Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)]
    )
    return {
        "subject": envelope.get("Subject"),
        "message": envelope.get("Message"),
        "attributes": {k: v.get("Value") for k, v in (envelope.get("MessageAttributes") or {}).items()},
        "count": len(messages),
    }


def run(
    event_path: Path,
    bin_dir: Path,
    missing_instance: bool = False,
    severity_threshold: str | None = None,
    log_dir: Path | None = None,
    member_account: bool = False,
    parameters: dict[str, str] | None = None,
    exempt: bool = False,
    repeat: bool = False,
    release: bool = False,
    notify_fails: bool = False,
) -> dict:
    """The whole workflow on one finding event, as EventBridge and Step Functions would run it.

    `exempt` tags the instance with the exemption tag first; `repeat` sends a second finding
    (another id) for the same instance after the first; `release` then runs the release state
    machine and compares the emulator's state with the state before containment. `notify_fails`
    points the notify function at a topic that does not exist (the fallback path)."""
    raw = json.loads(event_path.read_text())
    log_dir = log_dir or Path(tempfile.mkdtemp(prefix="ec2-quarantine-local-"))
    report: dict = {"event_file": _shown(event_path), "logs": str(log_dir)}
    overrides = dict(parameters or {})
    if severity_threshold is not None:
        overrides["SeverityThreshold"] = severity_threshold
    report["parameters"] = overrides
    if notify_fails:
        report["notify_fails"] = True
    pattern = rule_pattern(load_template(), overrides)

    started = time.monotonic()
    try:
        with local_stack(bin_dir, log_dir, MEMBER_ACCOUNT if member_account else None, overrides, notify_fails=notify_fails) as st:
            sim = st.sim
            target = MISSING_INSTANCE if missing_instance else sim["instance_id"]
            # A finding naming a group gets as many simulated instances as it names.
            named = sequence_instances(raw)
            sims = [sim] + more_instances(st.target_ec2, sim, len(named) - 1) if named else [sim]
            event = point_sequence_at(raw, sim, sims) if named else point_event_at(raw, sim, target)
            detail = event.get("detail") if isinstance(event.get("detail"), dict) else {}
            resource = detail.get("resource") if isinstance(detail.get("resource"), dict) else {}
            report["finding"] = {
                "type": detail.get("type"),
                "severity": detail.get("severity"),
                "resource_type": resource.get("resourceType"),
                "target_instance": target,
            }
            report["simulated"] = sim
            report["accounts"] = {"responder": ACCOUNT, "instance": sim["account"]}
            if exempt:
                key = function_settings(load_template(), overrides, ACCOUNT)["EXEMPTION_TAG_KEY"]
                st.target_ec2.create_tags(Resources=[sim["instance_id"]], Tags=[{"Key": key, "Value": "local run"}])
            state = lambda: emulator_state(st.target_ec2, st.target_iam, sim, *st.service_clients)  # noqa: E731
            before = state()
            others_before = [emulator_state(st.target_ec2, st.target_iam, s) for s in sims[1:]]

            matched = rule_matches(pattern, event)
            report["rule"] = {"matched": matched, "pattern": pattern}
            report["execution"], report["states"], report["notification"] = None, [], None
            if matched:
                report["execution"], report["states"], report["notification"] = execute(st, st.machine, event)
                report["invocations"] = {name: fn.invocations for name, fn in st.service.functions.items()}
            report["emulator"] = {"before": before, "after": state()}
            # Every instance the finding names, before and after (the first is the one above).
            report["instances"] = [{"instance_id": sim["instance_id"], **report["emulator"]}] + [
                {"instance_id": s["instance_id"], "before": b, "after": emulator_state(st.target_ec2, st.target_iam, s)}
                for s, b in zip(sims[1:], others_before)
            ]
            if matched and repeat:
                second = json.loads(json.dumps(event))
                second["detail"]["id"] = "f" * 32
                ex, states, note = execute(st, st.machine, second)
                report["second_finding"] = {"execution": ex, "states": states, "notification": note, "after": state()}
            if matched and release:
                request = {"instance_id": sim["instance_id"], "reason": "local run: investigation closed"}
                ex, states, note = execute(st, st.release_machine, request)
                after = state()
                # Kept by design: the evidence, and the tool's quarantine group (other instances may use it).
                kept = after.pop("snapshots")
                after.pop("quarantine_groups")
                # Kept by design too: the deny of sessions issued before containment (stolen
                # credentials stay dead; the release request's release_credentials lifts it).
                session_deny = "ec2-quarantine-revoke-older-sessions"
                kept_denies = [p for p in after["role"]["inline_policies"] if p == session_deny]
                after["role"]["inline_policies"] = [p for p in after["role"]["inline_policies"] if p != session_deny]
                expected = {k: v for k, v in before.items() if k not in ("snapshots", "quarantine_groups")}
                report["release"] = {
                    "execution": ex, "states": states, "notification": note, "after": after,
                    "snapshots_kept": len(kept), "credential_denies_kept": kept_denies,
                    "restored": after == expected,
                    "differences": {k: {"before": expected.get(k), "after": v} for k, v in after.items() if expected.get(k) != v},
                }
            if member_account:
                report["administrator_account"] = administrator_state(st.ec2, st.iam)
            # The case record, as `deploy.sh cases` and `deploy.sh case` show it on AWS.
            report["case_list"] = cases.list_cases(st.case_table)
            report["cases"] = [cases.read_case(st.case_table, c["case_id"]) for c in report["case_list"]]
    finally:
        report["wall_seconds"] = round(time.monotonic() - started, 2)
    return report


def execute(st, machine: str, payload: dict) -> tuple[dict, list[dict], dict | None]:
    """One execution of a state machine: its outcome, its states, and the notification it sent."""
    name = f"local-{time.time_ns()}"
    execution = st.sfn.start_execution(stateMachineArn=machine, name=name, input=json.dumps(payload))["executionArn"]
    done = wait_for(st.sfn, execution, 180)
    history = st.sfn.get_execution_history(executionArn=execution, maxResults=1000)["events"]
    return execution_outcome(done, history), states_from_history(history), received_notification(st)


def invoke(binary: str, event_path: Path, bin_dir: Path, log_dir: Path | None = None) -> dict:
    """One function alone with a sample event (what `sam local invoke` does, without Docker)."""
    if binary not in FUNCTIONS:
        raise HarnessError(f"no function {binary}: one of {', '.join(FUNCTIONS)}")
    raw = json.loads(event_path.read_text())
    log_dir = log_dir or Path(tempfile.mkdtemp(prefix="ec2-quarantine-invoke-"))
    with local_stack(bin_dir, log_dir) as st:
        raw = point_sample_at(raw, st.sim)
        result, error = st.service.invoke(binary, raw)
        return {
            "function": binary,
            "event_file": _shown(event_path),
            "function_error": "Unhandled" if error else None,
            "result": result,
            "notification": received_notification(st) if binary == "notify" else None,
            "logs": str(log_dir / f"{binary}.log"),
        }


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


# ---------------------------------------------------------------- the readable report


def render(report: dict) -> str:
    out: list[str] = []
    w = out.append
    f = report.get("finding", {})
    w(f"Event:    {report['event_file']}")
    w(f"Finding:  {f.get('type')} (severity {f.get('severity')}, resource {f.get('resource_type')})")
    sim = report.get("simulated", {})
    w(f"Simulated instance {sim.get('instance_id')} (role {sim.get('role_name')}, "
      f"{len(sim.get('interfaces', []))} interfaces, {len(sim.get('volumes', []))} volumes)")
    if len(report.get("instances") or []) > 1:
        w(f"The finding names {len(report['instances'])} instances: each is simulated alike ({', '.join(i['instance_id'] for i in report['instances'])})")
    accounts = report.get("accounts", {})
    if accounts and accounts.get("responder") != accounts.get("instance"):
        w(f"The instance is in member account {accounts['instance']}; the responder runs in {accounts['responder']}.")
    if f.get("target_instance") != sim.get("instance_id"):
        w(f"The event names {f.get('target_instance')}, which does not exist.")
    w("")
    rule = report["rule"]
    w(f"EventBridge rule (from template.yaml): {'MATCHED' if rule['matched'] else 'did not match'}")
    if not rule["matched"]:
        w("  Nothing runs for this finding on AWS either: the rule filters it out.")
        return "\n".join(out)
    if report.get("parameters"):
        w("Template parameters: " + ", ".join(f"{k}={v}" for k, v in sorted(report["parameters"].items())))
    if report.get("notify_fails"):
        w(f"The notify function publishes to {MISSING_TOPIC}, which does not exist: it fails, and the fallback runs.")
    ex = report["execution"]
    w(f"State machine execution: {ex['status']}" + (f" ({ex['error']}: {ex['cause']})" if ex.get("error") else ""))
    w("")
    _render_states(w, report["states"])
    emu = report["emulator"]
    w("")
    _render_state(w, emu["before"], emu["after"], report)
    others = (report.get("instances") or [])[1:]
    if others:
        w(f"The other {len(others)} instances the finding names (interfaces: groups before -> after):")
        for other in others:
            for eni, groups in other["after"]["interface_groups"].items():
                w(f"  {other['instance_id']} {eni}: {', '.join(other['before']['interface_groups'][eni])} -> {', '.join(groups)}")
    w("")
    _render_notification(w, report.get("notification"))
    second = report.get("second_finding")
    if second:
        w("")
        w(f"A second finding (id {'f' * 32}) for the same instance: execution {second['execution']['status']}")
        _render_states(w, second["states"])
        unchanged = second["after"] == emu["after"]
        w(f"  The emulator's state after it: {'UNCHANGED (nothing created twice)' if unchanged else 'CHANGED'}")
        _render_notification(w, second.get("notification"))
    rel = report.get("release")
    if rel:
        w("")
        w(f"Release (statemachine/release.asl.json): execution {rel['execution']['status']}")
        _render_states(w, rel["states"])
        w(f"  State after release equals the state before containment: {'YES' if rel['restored'] else 'NO'}"
          f" (forensic snapshots kept: {rel['snapshots_kept']}; kept too, so that stolen credentials stay dead: "
          f"{', '.join(rel.get('credential_denies_kept') or []) or 'no deny'})")
        for k, d in rel["differences"].items():
            w(f"    differs: {k}: before {d['before']} after {d['after']}")
        _render_notification(w, rel.get("notification"))
    if report.get("case_list"):
        w("")
        w("The case table (deploy.sh cases on AWS):")
        for line in cases.render_cases(report["case_list"]).splitlines():
            w(f"  {line}")
    for case in report.get("cases") or []:
        w("")
        w("The case record (deploy.sh case on AWS):")
        for line in cases.render_case(case).splitlines():
            w(f"  {line}")
    w("")
    w(f"Wall time {report['wall_seconds']} s; function logs in {report['logs']}")
    return "\n".join(out)


def _render_states(w, states: list[dict]) -> None:
    w("States:")
    for s in states:
        if s["type"] in ("Pass",) and not s["name"].endswith("Failed") and s["name"] != "NotContained":
            continue
        line = f"  {s['name']:<18} {s['type']:<8}"
        output = s.get("output")
        if s["type"] == "Task":
            status = output.get("status") if isinstance(output, dict) else None
            if s["errors"]:
                last = s["errors"][-1]
                line += f" attempts {s['attempts']}, error {last['error']}"
            if s["name"] in ("Triage", "Release") and isinstance(output, dict):
                result = output.get(s["name"].lower()) or {}
                label = result.get("decision") or result.get("status") or result.get("Error")
                reason = result.get("reason") or _cause_message(result.get("Cause")) if isinstance(result, dict) else ""
                line += f" {label}" + (f" ({reason})" if reason else "")
            elif s["name"] == "Notify" and isinstance(output, dict) and "notify_error" in output:
                line += "; Step Functions publishes the fallback message"
            elif s["name"] == "Notify" and isinstance(output, dict):
                verdict = (output.get("notification") or {}).get("verdict")
                line += f" verdict {verdict}"
            elif s["name"] == "NotifyFallback" and not s["errors"]:
                line += " published the short fallback message (Step Functions' own sns:Publish)"
            elif status:
                line += f" {status}" + (f" ({output.get('reason')})" if output.get("reason") else "")
        elif s["name"].endswith("Failed") and isinstance(output, dict):
            line += f" caught {output.get('Error')}: {_cause_message(output.get('Cause'))}"
        w(line)


def _render_state(w, before: dict, after: dict, report: dict) -> None:
    w("Network interfaces (groups before -> after):")
    for eni, groups in after["interface_groups"].items():
        w(f"  {eni}: {', '.join(before['interface_groups'][eni])} -> {', '.join(groups)}")
    for g in after["quarantine_groups"]:
        w(f"  quarantine group {g['id']}: {g['ingress_rules']} ingress rules, {g['egress_rules']} egress rules")
    inst = after["instance"]
    w(f"  termination protection: {inst['termination_protection']}, shutdown behaviour: {inst['shutdown_behavior']}, "
      f"volumes deleted with the instance: {', '.join(inst['deleted_on_termination']) or 'none'}")
    if "auto_scaling" in after:
        for b, a in zip(before["auto_scaling"], after["auto_scaling"]):
            w(f"Auto Scaling group {a['group']}: {b['instances']} desired {b['desired']} -> {a['instances']} desired {a['desired']}")
        w(f"Target group targets: {before['targets']} -> {after['targets']}")
        w(f"Classic Load Balancer instances: {before['classic']} -> {after['classic']}")
    w("Snapshots:")
    for s in after["snapshots"]:
        w(f"  {s['id']} of {s['volume_id']} ({s['tags'].get('ec2-quarantine:device', '?')})")
    if not after["snapshots"]:
        w("  none")
    role = after["role"]
    w(f"Instance profile: {inst.get('instance_profile') or 'none'}")
    w(f"Role {role['name']}:")
    w(f"  attached: {', '.join(role['attached_policies']) or 'none'}")
    w(f"  inline:   {', '.join(role['inline_policies']) or 'none'}")
    w(f"  tags:     {', '.join(role.get('tags', [])) or 'none'}")
    recorded = {k: v for k, v in after["instance_tags"].items() if k.startswith("ec2-quarantine:")}
    w("Marker tags on the instance (never read; the record is the case):")
    for k, v in sorted(recorded.items()):
        w(f"  {k} = {v}")
    if not recorded:
        w("  nothing")
    admin = report.get("administrator_account")
    if admin is not None:
        accounts = report.get("accounts", {})
        w(f"Responder's own account {accounts.get('responder')}: {admin['quarantine_groups']} quarantine groups, "
          f"{admin['forensic_snapshots']} forensic snapshots, {admin['deny_all_policies']} DenyAll policies (untouched)")


def _render_notification(w, n: dict | None) -> None:
    if n:
        w("Notification as the subscriber received it:")
        w(f"  Subject: {n['subject']}")
        w(f"  Attributes: {json.dumps(n['attributes'], sort_keys=True)}")
        for line in (n["message"] or "").splitlines():
            w(f"  | {line}")
    else:
        w("No notification was received.")


def _cause_message(cause: str | None) -> str:
    try:
        return json.loads(cause or "").get("errorMessage", cause)
    except (ValueError, AttributeError):
        return cause or ""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Run the containment workflow, or one function, offline on a simulated compromised instance.")
    p.add_argument("event", nargs="?", default=str(DEFAULT_EVENT), help="a GuardDuty finding event (default: the credential-exfiltration sample)")
    p.add_argument("--invoke", metavar="FUNCTION", default=None, help="invoke only this function with the event (isolate, snapshot, deny-role, notify)")
    p.add_argument("--json", action="store_true", help="print the report as one JSON document")
    p.add_argument("--bin-dir", default=None, help="where the built function binaries are")
    p.add_argument("--missing-instance", action="store_true", help="point the event at an instance that does not exist (a failing step, caught and notified)")
    p.add_argument("--severity-threshold", default=None, help="the template's SeverityThreshold parameter (default: its default)")
    p.add_argument("--member-account", action="store_true", help="put the instance in a member account; the responder acts there through the member role")
    p.add_argument("--log-dir", default=None, help="where the functions' logs go (default: a new temporary folder)")
    p.add_argument("--parameter", action="append", default=[], metavar="KEY=VALUE",
                   help="a template parameter, as sam deploy --parameter-overrides takes it (repeatable)")
    p.add_argument("--dry-run", action="store_true", help="the same as --parameter DryRun=true")
    p.add_argument("--exempt", action="store_true", help="tag the instance with the exemption tag first")
    p.add_argument("--repeat", action="store_true", help="then send a second finding (another id) for the same instance")
    p.add_argument("--release", action="store_true", help="then run the release state machine and compare with the state before")
    args = p.parse_args(argv)

    def on_term(_sig, _frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    bin_dir = Path(args.bin_dir or Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "debug")
    log_dir = Path(args.log_dir) if args.log_dir else None
    parameters = {}
    for item in args.parameter:
        key, sep, value = item.partition("=")
        if not sep:
            p.error(f"--parameter {item!r}: expected KEY=VALUE")
        parameters[key] = value
    if args.dry_run:
        parameters["DryRun"] = "true"
    # The event file, checked before anything starts: one line naming it and the problem, exit
    # status 2 (deploy.sh checks the same, and more, first; this is for a direct call).
    event_path, problem = Path(args.event), None
    if event_path.is_dir():
        problem = "a directory, not a file"
    elif event_path.exists() and not event_path.is_file():
        problem = "not a regular file (a pipe, socket or device)"
    else:
        try:
            if not isinstance(json.loads(event_path.read_text(encoding="utf-8")), dict):
                problem = "not a JSON object"
        except OSError as e:
            problem = f"cannot be read ({(e.strerror or str(e)).lower()})"
        except UnicodeDecodeError as e:
            problem = f"not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start})"
        except json.JSONDecodeError as e:
            problem = f"not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})"
        except (ValueError, RecursionError) as e:
            problem = f"not valid JSON ({e})"
    if problem:
        print(f"error: {args.event}: {problem}", file=sys.stderr)
        return 2
    try:
        if args.invoke:
            result = invoke(args.invoke, Path(args.event).resolve(), bin_dir, log_dir)
            print(json.dumps(result, indent=2))
            return 3 if result["function_error"] else 0
        report = run(
            Path(args.event).resolve(),
            bin_dir,
            missing_instance=args.missing_instance,
            severity_threshold=args.severity_threshold,
            log_dir=log_dir,
            member_account=args.member_account,
            parameters=parameters,
            exempt=args.exempt,
            repeat=args.repeat,
            release=args.release,
        )
    except HarnessError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; everything started was stopped", file=sys.stderr)
        return 130
    print(json.dumps(report, indent=2, sort_keys=True) if args.json else render(report))
    executions = [report.get("execution")] + [(report.get(k) or {}).get("execution") for k in ("second_finding", "release")]
    return 3 if any(e and e["status"] != "SUCCEEDED" for e in executions) else 0


if __name__ == "__main__":
    sys.exit(main())
