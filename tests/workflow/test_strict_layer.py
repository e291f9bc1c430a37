"""The fault proxy's strict layer (tests/tools/fault_proxy.py): for each rule, the emulator alone
(through a --lenient proxy, or directly) against the strict proxy, which answers with AWS's error
code and HTTP status; the allowed neighbour case passes. Then the rule options `after` and `params`,
the `slow_answer` fault, and the summary.

Starts its own moto server and two proxies in front of it on free loopback ports; every test works
in an emulated account of its own (sts:AssumeRole into a fresh 12-digit account id).
"""

from __future__ import annotations

import json
import random
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, ReadTimeoutError

ROOT = Path(__file__).resolve().parents[2]
PROXY = ROOT / "tests" / "tools" / "fault_proxy.py"
MOTO_SERVER = Path(sys.executable).parent / "moto_server"
REGION = "us-east-1"
NO_RETRY = Config(retries={"total_max_attempts": 1, "mode": "standard"})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_proxy(upstream: str, *flags: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, str(PROXY), "--upstream", upstream, *flags], stdout=subprocess.PIPE, text=True)
    return proc, f"http://127.0.0.1:{int(proc.stdout.readline())}"


@pytest.fixture(scope="module")
def endpoints():
    if not MOTO_SERVER.exists():
        pytest.skip(f"{MOTO_SERVER} missing: run helper_scripts/test.sh once to install the tools")
    port = free_port()
    moto = subprocess.Popen([str(MOTO_SERVER), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs = [moto]
    try:
        direct = f"http://127.0.0.1:{port}"
        for _ in range(100):
            try:
                urllib.request.urlopen(direct + "/moto-api/", timeout=1).close()
                break
            except OSError:
                assert moto.poll() is None, "moto_server exited"
                time.sleep(0.1)
        strict_proc, strict = start_proxy(direct)
        procs.append(strict_proc)
        lenient_proc, lenient = start_proxy(direct, "--lenient")
        procs.append(lenient_proc)
        yield {"direct": direct, "strict": strict, "lenient": lenient}
    finally:
        for proc in reversed(procs):
            proc.terminate()
            proc.wait(timeout=10)


class Account:
    """A fresh emulated account; clients through the strict proxy, the lenient one, or directly."""

    def __init__(self, endpoints: dict[str, str]):
        self.endpoints = endpoints
        account_id = str(random.randint(10**11, 10**12 - 1))
        sts = boto3.client(
            "sts", endpoint_url=endpoints["direct"], region_name=REGION, aws_access_key_id="testing", aws_secret_access_key="testing"
        )
        creds = sts.assume_role(RoleArn=f"arn:aws:iam::{account_id}:role/x", RoleSessionName="strict-layer")["Credentials"]
        self.access_key = creds["AccessKeyId"]
        self.session = boto3.Session(
            aws_access_key_id=creds["AccessKeyId"],
            aws_secret_access_key=creds["SecretAccessKey"],
            aws_session_token=creds["SessionToken"],
            region_name=REGION,
        )

    def client(self, service: str, via: str = "strict", config: Config = NO_RETRY):
        return self.session.client(service, endpoint_url=self.endpoints[via], config=config)


@pytest.fixture
def account(endpoints) -> Account:
    return Account(endpoints)


def refused(call, code: str, status: int) -> str:
    with pytest.raises(ClientError) as err:
        call()
    got = err.value.response
    assert (got["Error"]["Code"], got["ResponseMetadata"]["HTTPStatusCode"]) == (code, status), got
    return got["Error"]["Message"]


def tags(n: int, prefix: str = "k") -> list[dict[str, str]]:
    return [{"Key": f"{prefix}{i}", "Value": "v"} for i in range(n)]


AMI: list[str] = []  # moto's built-in images are the same in every account: read them once


def run_instance(ec2, **kwargs) -> str:
    if not AMI:
        AMI.append(ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"])
    return ec2.run_instances(ImageId=AMI[0], MinCount=1, MaxCount=1, **kwargs)["Instances"][0]["InstanceId"]


def proxy(endpoint: str, path: str, body: dict | None = None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(endpoint + "/__proxy__/" + path, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req) as r:
        return json.load(r)


def log_of(endpoint: str, key: str) -> list[dict]:
    return [e for e in proxy(endpoint, "log") if e["access_key"] == key]


# --- 1. at most 50 user tags per resource --------------------------------------------------------


def test_ec2_create_tags_50th_passes_51st_is_refused(account):
    ec2, moto = account.client("ec2"), account.client("ec2", "lenient")
    instance = run_instance(ec2)
    group = ec2.create_security_group(GroupName="g", Description="d")["GroupId"]
    for resource in (instance, group):
        ec2.create_tags(Resources=[resource], Tags=tags(49))
        ec2.create_tags(Resources=[resource], Tags=[{"Key": "k49", "Value": "v"}])  # the 50th
        ec2.create_tags(Resources=[resource], Tags=[{"Key": "k0", "Value": "new"}])  # overwriting adds none
        refused(
            lambda resource=resource: ec2.create_tags(Resources=[resource], Tags=[{"Key": "k50", "Value": "v"}]), "TagLimitExceeded", 400
        )
    # moto 5.2.5 enforces this one itself, with the same code.
    refused(lambda: moto.create_tags(Resources=[instance], Tags=[{"Key": "k50", "Value": "v"}]), "TagLimitExceeded", 400)


def test_ec2_tags_at_creation_more_than_50_refused_without_leftovers(account):
    ec2, moto = account.client("ec2"), account.client("ec2", "lenient")
    spec = lambda kind, n: [{"ResourceType": kind, "Tags": tags(n)}]
    refused(lambda: run_instance(ec2, TagSpecifications=spec("instance", 51)), "TagLimitExceeded", 400)
    assert not ec2.describe_instances()["Reservations"], "refused before the emulator made anything"
    refused(
        lambda: ec2.create_security_group(GroupName="g51", Description="d", TagSpecifications=spec("security-group", 51)),
        "TagLimitExceeded",
        400,
    )
    instance = run_instance(ec2, TagSpecifications=spec("instance", 50))
    volume = ec2.describe_instances(InstanceIds=[instance])["Reservations"][0]["Instances"][0]["BlockDeviceMappings"][0]["Ebs"]["VolumeId"]
    refused(
        lambda: ec2.create_snapshots(InstanceSpecification={"InstanceId": instance}, TagSpecifications=spec("snapshot", 51)),
        "TagLimitExceeded",
        400,
    )
    ec2.create_snapshots(InstanceSpecification={"InstanceId": instance}, TagSpecifications=spec("snapshot", 50))
    assert volume
    # moto refuses too, but only after it has made the instance: a half-made resource is left.
    refused(lambda: run_instance(moto, TagSpecifications=spec("instance", 51)), "TagLimitExceeded", 400)
    assert len(moto.describe_instances()["Reservations"]) == 2, "moto 5.2.5 leaves the refused instance behind"


def test_iam_tag_role_past_50_is_limit_exceeded(account):
    iam, moto = account.client("iam"), account.client("iam", "lenient")
    iam.create_role(RoleName="r", AssumeRolePolicyDocument="{}", Tags=tags(40))
    iam.tag_role(RoleName="r", Tags=tags(10, "n"))  # 50 in all
    iam.tag_role(RoleName="r", Tags=[{"Key": "k0", "Value": "overwritten: adds none"}])
    message = refused(lambda: iam.tag_role(RoleName="r", Tags=[{"Key": "one-more", "Value": "v"}]), "LimitExceeded", 409)
    assert "50" in message
    moto.tag_role(RoleName="r", Tags=[{"Key": "one-more", "Value": "v"}])  # moto counts only the request
    assert len(moto.list_role_tags(RoleName="r")["Tags"]) == 51
    refused(lambda: iam.create_role(RoleName="r51", AssumeRolePolicyDocument="{}", Tags=tags(51)), "ValidationError", 400)
    iam.create_role(RoleName="r50", AssumeRolePolicyDocument="{}", Tags=tags(50))


# --- 2. tag keys on an instance that shows its tags in instance metadata ----------------------


def test_metadata_tags_instance_refuses_keys_metadata_cannot_carry(account):
    ec2, moto = account.client("ec2"), account.client("ec2", "lenient")
    instance = run_instance(ec2, MetadataOptions={"InstanceMetadataTags": "enabled"})
    for key in ["a/b", "a b", ".", "..", "_index", "é"]:
        message = refused(
            lambda key=key: ec2.create_tags(Resources=[instance], Tags=[{"Key": key, "Value": "v"}]), "InvalidParameterValue", 400
        )
        assert f"'{key}' is not a valid tag key" in message
        moto.create_tags(Resources=[instance], Tags=[{"Key": key, "Value": "v"}])  # moto takes it


def test_metadata_tags_neighbours_pass(account):
    ec2 = account.client("ec2")
    instance = run_instance(ec2, MetadataOptions={"InstanceMetadataTags": "enabled"})
    ec2.create_tags(
        Resources=[instance],
        Tags=[{"Key": "ec2-quarantine:previous-groups:eni-1", "Value": "sg-1,sg-2"}, {"Key": "a+b=c,d.e_f@g-h", "Value": ""}],
    )
    plain = run_instance(ec2)
    ec2.create_tags(Resources=[plain], Tags=[{"Key": "a/b c", "Value": "v"}])  # tags not in metadata: any key


def test_metadata_tags_at_launch_and_when_enabled(account):
    ec2, moto = account.client("ec2"), account.client("ec2", "lenient")
    bad = [{"ResourceType": "instance", "Tags": [{"Key": "Patch Group", "Value": "v"}]}]
    refused(
        lambda: run_instance(ec2, MetadataOptions={"InstanceMetadataTags": "enabled"}, TagSpecifications=bad), "InvalidParameterValue", 400
    )
    run_instance(moto, MetadataOptions={"InstanceMetadataTags": "enabled"}, TagSpecifications=bad)
    instance = run_instance(ec2, TagSpecifications=bad)  # not enabled: fine
    refused(lambda: ec2.modify_instance_metadata_options(InstanceId=instance, InstanceMetadataTags="enabled"), "InvalidParameterValue", 400)
    # moto forgets InstanceMetadataTags when a later call leaves it out; AWS (and the proxy) keep it.
    clean = run_instance(ec2)
    ec2.modify_instance_metadata_options(InstanceId=clean, InstanceMetadataTags="enabled")
    ec2.modify_instance_metadata_options(InstanceId=clean, HttpTokens="required")
    described = moto.describe_instances(InstanceIds=[clean])["Reservations"][0]["Instances"][0]["MetadataOptions"]
    assert "InstanceMetadataTags" not in described, described
    refused(lambda: ec2.create_tags(Resources=[clean], Tags=[{"Key": "a/b", "Value": "v"}]), "InvalidParameterValue", 400)


# --- 3. no termination protection on Spot instances --------------------------------------------


def test_spot_instance_termination_protection_refused(account):
    ec2, moto = account.client("ec2"), account.client("ec2", "lenient")
    spot = run_instance(ec2, InstanceMarketOptions={"MarketType": "spot"})
    for value in (True, False):
        refused(
            lambda value=value: ec2.modify_instance_attribute(InstanceId=spot, DisableApiTermination={"Value": value}),
            "UnsupportedOperation",
            400,
        )
    ec2.modify_instance_attribute(InstanceId=spot, InstanceInitiatedShutdownBehavior={"Value": "stop"})
    moto.modify_instance_attribute(InstanceId=spot, DisableApiTermination={"Value": True})
    assert moto.describe_instance_attribute(InstanceId=spot, Attribute="disableApiTermination")["DisableApiTermination"]["Value"]
    on_demand = run_instance(ec2)
    ec2.modify_instance_attribute(InstanceId=on_demand, DisableApiTermination={"Value": True})
    ec2.modify_instance_attribute(InstanceId=on_demand, DisableApiTermination={"Value": False})


# --- 4. instance profile replaced only on a running instance ----------------------------------


def test_replace_profile_association_on_stopped_instance_refused(account):
    ec2, iam = account.client("ec2"), account.client("iam")
    moto, direct = account.client("ec2", "lenient"), account.client("ec2", "direct")
    for name in ("p1", "p2", "p3"):
        iam.create_instance_profile(InstanceProfileName=name)
    running = run_instance(ec2, IamInstanceProfile={"Name": "p1"})
    stopped = run_instance(ec2, IamInstanceProfile={"Name": "p1"})
    direct.stop_instances(InstanceIds=[stopped])  # set-up, past the proxies
    association = {
        a["InstanceId"]: a["AssociationId"] for a in ec2.describe_iam_instance_profile_associations()["IamInstanceProfileAssociations"]
    }
    message = refused(
        lambda: ec2.replace_iam_instance_profile_association(AssociationId=association[stopped], IamInstanceProfile={"Name": "p2"}),
        "IncorrectState",
        400,
    )
    assert association[stopped] in message
    ec2.replace_iam_instance_profile_association(AssociationId=association[running], IamInstanceProfile={"Name": "p2"})
    moto.replace_iam_instance_profile_association(AssociationId=association[stopped], IamInstanceProfile={"Name": "p3"})


# --- 5. SNS messages up to 262,144 bytes, attributes included -----------------------------------


def test_sns_publish_size_counts_bytes_and_attributes(account):
    sns, moto = account.client("sns"), account.client("sns", "lenient")
    topic = sns.create_topic(Name="t")["TopicArn"]
    sns.publish(TopicArn=topic, Message="a" * 262_144)
    attribute = {"k": {"DataType": "String", "StringValue": "v" * 94}}  # 1 + 6 + 94 bytes
    sns.publish(TopicArn=topic, Message="a" * (262_144 - 101), MessageAttributes=attribute)
    too_long = [
        {"Message": "a" * 262_145},
        {"Message": "é" * 131_073},  # 131,073 characters, 262,146 bytes
        {"Message": "a" * (262_144 - 100), "MessageAttributes": attribute},
    ]
    for kwargs in too_long:
        message = refused(lambda kwargs=kwargs: sns.publish(TopicArn=topic, **kwargs), "InvalidParameter", 400)
        assert message == "Invalid parameter: Message too long"
    moto.publish(TopicArn=topic, **too_long[1])  # moto counts characters
    moto.publish(TopicArn=topic, **too_long[2])  # and leaves the attributes out


# --- 6. rule options and the slow answer -------------------------------------------------------


def test_after_faults_only_later_matching_calls(account, endpoints):
    ec2 = account.client("ec2")
    proxy(
        endpoints["strict"],
        "faults",
        {
            "action": "ec2:DescribeVpcs",
            "access_key": account.access_key,
            "fault": "error",
            "code": "InjectedAfterOne",
            "after": 1,
            "times": 1,
        },
    )
    ec2.describe_vpcs()
    refused(ec2.describe_vpcs, "InjectedAfterOne", 400)
    ec2.describe_vpcs()
    faults = [e["fault"] for e in log_of(endpoints["strict"], account.access_key) if e["action"] == "ec2:DescribeVpcs"]
    assert faults == [None, "error", None]


def test_params_matches_only_requests_holding_them(account, endpoints):
    ec2 = account.client("ec2")
    proxy(
        endpoints["strict"],
        "faults",
        {"action": "ec2:CreateSecurityGroup", "access_key": account.access_key, "fault": "denied", "params": {"GroupName": "second"}},
    )
    ec2.create_security_group(GroupName="first", Description="d")
    refused(lambda: ec2.create_security_group(GroupName="second", Description="d"), "UnauthorizedOperation", 403)
    names = {g["GroupName"] for g in ec2.describe_security_groups()["SecurityGroups"]}
    assert "first" in names and "second" not in names


def test_slow_answer_applies_the_call_then_answers_late(account, endpoints):
    proxy(
        endpoints["strict"],
        "faults",
        {"action": "ec2:CreateSecurityGroup", "access_key": account.access_key, "fault": "slow_answer", "seconds": 1.5, "times": 1},
    )
    account.client("ec2").describe_vpcs()  # the account's first EC2 call is slow: not this one
    impatient = account.client("ec2", config=Config(read_timeout=0.4, retries={"total_max_attempts": 1, "mode": "standard"}))
    with pytest.raises(ReadTimeoutError):
        impatient.create_security_group(GroupName="slow", Description="d")
    names = {g["GroupName"] for g in account.client("ec2").describe_security_groups()["SecurityGroups"]}
    assert "slow" in names, "the emulator applied the call the client gave up on"
    time.sleep(1.6)  # the proxy logs the call once it has answered
    entry = next(e for e in log_of(endpoints["strict"], account.access_key) if e["action"] == "ec2:CreateSecurityGroup")
    assert entry["fault"] == "slow_answer" and entry["status"] == 200


# --- 7. refusals in the log and the summary ---------------------------------------------------


def test_refusals_logged_and_counted_apart_from_faults(account, endpoints):
    sns = account.client("sns")
    topic = sns.create_topic(Name="t")["TopicArn"]
    before = proxy(endpoints["strict"], "summary")
    refused(lambda: sns.publish(TopicArn=topic, Message="a" * 262_145), "InvalidParameter", 400)
    proxy(endpoints["strict"], "outcome", {"kind": "fail_open"})
    after = proxy(endpoints["strict"], "summary")
    assert after["strict"] is True and proxy(endpoints["lenient"], "summary")["strict"] is False
    assert after["strict_refusals"].get("sns_message_size", 0) == before["strict_refusals"].get("sns_message_size", 0) + 1
    assert after["faults_injected"] == before["faults_injected"], "a refusal is not an injected fault"
    assert after["outcomes"].get("fail_open", 0) == before["outcomes"].get("fail_open", 0) + 1
    assert after["destructive_calls"] == [] and after["calls"] == before["calls"] + 1
    publish = [e for e in log_of(endpoints["strict"], account.access_key) if e["action"] == "sns:Publish"]
    assert [(e["fault"], e["status"]) for e in publish] == [("strict:sns_message_size", 400)]


def test_only_a_memory_images_own_volume_may_be_detached():
    """The suite's summary counts a DetachVolume as destructive unless the volume carried the
    memory-image tag when it was detached (AWS's state, as the proxy read it for IAM)."""
    sys.path.insert(0, str(PROXY.parent))
    from fault_proxy import is_destructive

    def detach(tags: dict) -> dict:
        return {"action": "ec2:DetachVolume", "params": {"VolumeId": "vol-0a"}, "auth": {"tags": {"vol-0a": tags}}}

    assert not is_destructive(detach({"ec2-quarantine:memory-image": "apr-0123456789abcdef"}))
    assert is_destructive(detach({"Name": "data"}))
    assert is_destructive({"action": "ec2:DetachVolume", "params": {"VolumeId": "vol-0a"}})
    assert is_destructive({"action": "ec2:DeleteSnapshot", "params": {}})
    assert not is_destructive({"action": "ec2:CreateSnapshot", "params": {}})
