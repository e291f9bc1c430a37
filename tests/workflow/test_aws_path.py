"""The user's test path (README "Test it on AWS"), every step against the emulator: deploy.sh
test-instance, fire, verify and nuke, run as a user runs them, with AWS_ENDPOINT_URL pointing the
SDK at the emulator. The state machine and the functions are the local run's (run.local_stack),
so `fire` really contains the test instance.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import boto3
import pytest

ROOT = Path(__file__).resolve().parents[2]
import yaml
from local.stack import local_stack
from local.template import ACCOUNT, LOCAL_NAMES, REGION, CfnLoader

BIN_DIR = Path(os.environ.get("FUNCTIONS_BIN_DIR") or Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "debug")


@pytest.fixture
def stack(tmp_path):
    with local_stack(BIN_DIR, tmp_path / "logs") as st:
        yield st


def deploy_sh(st, *args: str, home: Path) -> subprocess.CompletedProcess:
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "AWS_ENDPOINT_URL": st.emulator,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": REGION,
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
    }
    return subprocess.run(
        [str(ROOT / "helper_scripts" / "deploy.sh"), *args],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=300,
    )


def test_test_instance_fire_verify_and_nuke(stack, tmp_path):
    st = stack
    ec2, iam = boto3.client("ec2", region_name=REGION), boto3.client("iam", region_name=REGION)

    r = deploy_sh(st, "test-instance", home=tmp_path)
    assert r.returncode == 0, r.stderr + r.stdout
    instance_id = re.search(r"Test instance: (i-[0-9a-f]+)", r.stdout).group(1)
    role = re.search(r"Role: +(\S+)", r.stdout).group(1)
    inst = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
    assert {t["Key"]: t["Value"] for t in inst["Tags"]}["ec2-quarantine:test-resource"] == "true"
    # The emulator's CloudFormation launches AWS::EC2::Instance without its NetworkInterfaces (one
    # default interface) and ignores a role's ManagedPolicyArns; what the template gives AWS there
    # is checked on the template itself.
    template = yaml.load((ROOT / "helper_scripts" / "test-instance.yaml").read_text(), Loader=CfnLoader)
    nics = template["Resources"]["Instance"]["Properties"]["NetworkInterfaces"]
    assert [n["DeviceIndex"] for n in nics] == ["0", "1"]
    assert "UserData" not in template["Resources"]["Instance"]["Properties"], "nothing runs at boot, nothing is printed"
    managed = template["Resources"]["InstanceRole"]["Properties"]["ManagedPolicyArns"]
    assert [m["Fn::Sub"].rsplit("/", 1)[1] for m in managed] == ["AmazonS3ReadOnlyAccess", "AmazonSSMManagedInstanceCore"]
    volumes = ec2.describe_volumes(Filters=[{"Name": "attachment.instance-id", "Values": [instance_id]}])["Volumes"]
    assert any(a["Device"] == "/dev/sdf" for v in volumes for a in v["Attachments"]), "the second volume is attached"
    assert iam.get_role(RoleName=role)["Role"]["RoleName"] == role

    # Before: not contained.
    r = deploy_sh(st, "verify", "--state-machine-arn", st.machine, "--json", home=tmp_path)
    assert r.returncode == 3, r.stderr
    assert json.loads(r.stdout)["contained"] is False

    r = deploy_sh(st, "fire", "events/credential-exfiltration.json", "--state-machine-arn", st.machine, "--wait", home=tmp_path)
    assert r.returncode == 0, r.stderr + r.stdout
    assert "EventBridge cannot be sent aws.guardduty events by hand" in r.stdout
    assert "Execution SUCCEEDED" in r.stdout

    table = LOCAL_NAMES["CaseTable"]
    r = deploy_sh(st, "verify", "--state-machine-arn", st.machine, "--table", table, "--json", home=tmp_path)
    assert r.returncode == 0, r.stderr + r.stdout
    report = json.loads(r.stdout)
    assert report["contained"] is True
    assert report["executions"][0]["status"] == "SUCCEEDED"
    assert report["executions"][0]["verdict"] == "contained"
    assert report["interfaces"]
    assert all(len(g) == 1 and "ec2-quarantine-isolation" in g[0] for g in report["interfaces"].values())
    assert len(report["snapshots"]) == len(volumes)
    assert "ec2-quarantine-DenyAll" in report["role"]["attached"]
    assert report["instance_profile"].endswith("/ec2-quarantine-quarantined"), "the metadata service hands out nothing"
    case_id = report["quarantine_tags"]["ec2-quarantine:case"]
    assert case_id.startswith(f"{instance_id}-"), "the marker names the case"
    readable = deploy_sh(st, "verify", "--state-machine-arn", st.machine, "--table", table, home=tmp_path).stdout
    assert "CONTAINED" in readable and "Forensic snapshots:" in readable

    # The case, as the on-call engineer reads it: listed, then its timeline, by instance or id.
    r = deploy_sh(st, "cases", "--table", table, home=tmp_path)
    assert r.returncode == 0, r.stderr + r.stdout
    assert case_id in r.stdout and instance_id in r.stdout and " open " in r.stdout, r.stdout
    r = deploy_sh(st, "cases", "--table", table, "--open", "--json", home=tmp_path)
    rows = {c["case_id"]: c for c in json.loads(r.stdout)}
    assert rows[case_id]["status"] == "open" and rows[case_id]["account_id"] == ACCOUNT
    r = deploy_sh(st, "case", instance_id, "--table", table, home=tmp_path)
    assert r.returncode == 0, r.stderr + r.stdout
    for line in (
        f"Case {case_id}: instance {instance_id}",
        "a6c7d3f1e2b94c8d9e0f1a2b3c4d5e6f",
        "triage: contain, because",
        "isolate",
        "snapshot",
        "groups:",
    ):
        assert line in r.stdout, (line, r.stdout)
    r = deploy_sh(st, "case", case_id, "--table", table, "--json", home=tmp_path)
    case = json.loads(r.stdout)
    assert {s["step"] for s in case["steps"]} >= {"isolate", "snapshot", "role", "deregister"}
    assert any(p["kind"] == "groups" for p in case["previous"])
    r = deploy_sh(st, "case", "i-0123456789abcdef0", "--table", table, home=tmp_path)
    assert r.returncode == 1 and "no case for instance" in r.stderr

    # What is not the tool's must survive the clean-up: the local stack's own instance and topic.
    other = st.sim
    other_groups = ec2.describe_network_interfaces(NetworkInterfaceIds=other["interfaces"])["NetworkInterfaces"]
    r = deploy_sh(st, "nuke", "--purge-artifacts", home=tmp_path)
    assert r.returncode != 0 and "pass --yes" in r.stderr, "no terminal, no --yes: nothing removed"
    r = deploy_sh(st, "nuke", "--purge-artifacts", "--yes", home=tmp_path)
    assert r.returncode == 0, r.stderr + r.stdout

    cfn = boto3.client("cloudformation", region_name=REGION)
    assert all(
        s["StackName"] != "ec2-quarantine-test-instance" for s in cfn.describe_stacks()["Stacks"] if s["StackStatus"] != "DELETE_COMPLETE"
    )
    tagged = [{"Name": "tag-key", "Values": ["ec2-quarantine:isolation-group"]}]
    assert ec2.describe_security_groups(Filters=tagged)["SecurityGroups"] == []
    # The forensic snapshots are locked (SnapshotLockMode's default, governance): the purge
    # keeps them, and says so.
    kept = ec2.describe_snapshots(OwnerIds=["self"], Filters=[{"Name": "tag-key", "Values": ["ec2-quarantine:case"]}])["Snapshots"]
    assert len(kept) == len(volumes), r.stdout
    assert "kept, locked (evidence):" in r.stdout and "governance lock until" in r.stdout, r.stdout
    assert {s["SnapshotId"] for s in ec2.describe_locked_snapshots()["Snapshots"]} == {s["SnapshotId"] for s in kept}
    assert table not in boto3.client("dynamodb", region_name=REGION).list_tables()["TableNames"], "purged on request"
    assert iam.list_policies(Scope="Local", PathPrefix="/ec2-quarantine/")["Policies"] == []
    for r_ in iam.list_roles()["Roles"]:
        assert "ec2-quarantine-revoke-older-sessions" not in iam.list_role_policies(RoleName=r_["RoleName"])["PolicyNames"]
    assert ec2.describe_network_interfaces(NetworkInterfaceIds=other["interfaces"])["NetworkInterfaces"] == other_groups
    assert other["role_name"] in [r_["RoleName"] for r_ in iam.list_roles()["Roles"]]
    assert boto3.client("sns", region_name=REGION).list_topics()["Topics"], "the topic is not the tool's artifact"


def test_verify_and_fire_say_what_is_missing(stack, tmp_path):
    r = deploy_sh(stack, "verify", home=tmp_path)
    assert r.returncode == 1 and "no test instance stack" in r.stderr
    r = deploy_sh(stack, "fire", "events/credential-exfiltration.json", stack.sim["instance_id"], home=tmp_path)
    assert r.returncode == 1 and "no responder stack ec2-quarantine" in r.stderr


def test_a_purge_keeps_what_an_open_case_holds(tmp_path):
    """nuke --purge-artifacts with an instance still contained (not the test stack's): its
    snapshots (unlocked here, SnapshotLockMode=none), its role's DenyAll and the case table that
    records it stay; what no open case holds goes. The record decides, never a tag."""
    with local_stack(BIN_DIR, tmp_path / "logs", parameters={"SnapshotLockMode": "none"}) as st:
        ec2, iam = boto3.client("ec2", region_name=REGION), boto3.client("iam", region_name=REGION)
        instance = st.sim["instance_id"]
        r = deploy_sh(
            st, "fire", "events/credential-exfiltration.json", instance, "--state-machine-arn", st.machine, "--wait", home=tmp_path
        )
        assert r.returncode == 0 and "Execution SUCCEEDED" in r.stdout, r.stderr + r.stdout
        table = LOCAL_NAMES["CaseTable"]
        by_case = [{"Name": "tag-key", "Values": ["ec2-quarantine:case"]}]
        evidence = {s["SnapshotId"] for s in ec2.describe_snapshots(OwnerIds=["self"], Filters=by_case)["Snapshots"]}
        assert evidence and not ec2.describe_locked_snapshots(SnapshotIds=sorted(evidence)).get("Snapshots")
        # An orphan the tool made for a case long gone: no open case holds it, it goes. Its tag
        # names the open case's instance but not the case: tags never make a snapshot deletable.
        volume = ec2.describe_volumes(Filters=[{"Name": "attachment.instance-id", "Values": [instance]}])["Volumes"][0]["VolumeId"]
        orphan = ec2.create_snapshot(
            VolumeId=volume,
            TagSpecifications=[
                {"ResourceType": "snapshot", "Tags": [{"Key": "ec2-quarantine:case", "Value": f"{instance}-20250101T000000000Z"}]}
            ],
        )["SnapshotId"]
        role = st.sim["role_name"]
        assert any(p["PolicyName"] == "ec2-quarantine-DenyAll" for p in iam.list_attached_role_policies(RoleName=role)["AttachedPolicies"])

        r = deploy_sh(st, "nuke", "--purge-artifacts", "--yes", home=tmp_path)
        shown = r.stdout
        assert "kept, open cases' evidence:" in shown and all(s in shown for s in evidence), shown
        assert f"kept, denied for open cases: {role}" in shown and "(kept: it records open cases)" in shown, shown
        left = {s["SnapshotId"] for s in ec2.describe_snapshots(OwnerIds=["self"], Filters=by_case)["Snapshots"]}
        assert left == evidence, "the open case's snapshots stay, the orphan goes"
        assert orphan not in left
        assert any(p["PolicyName"] == "ec2-quarantine-DenyAll" for p in iam.list_attached_role_policies(RoleName=role)["AttachedPolicies"])
        assert table in boto3.client("dynamodb", region_name=REGION).list_tables()["TableNames"]
        assert "(kept: open cases' roles hold it)" in shown and "(kept: open cases' instances are isolated in them)" in shown, shown
        assert iam.list_policies(Scope="Local", PathPrefix="/ec2-quarantine/")["Policies"], "the DenyAll policy stays"
        groups = ec2.describe_network_interfaces(NetworkInterfaceIds=st.sim["interfaces"])["NetworkInterfaces"]
        assert ec2.describe_security_groups(GroupIds=sorted({g["GroupId"] for n in groups for g in n["Groups"]}))["SecurityGroups"]
        assert r.returncode == 0 and "Done." in shown, shown
