"""The IAM evaluation check (tests/tools/iam_check.py) itself: its abuse list is denied by the
policies of template.yaml and the member role, and it can fail: a weakened policy, a call the
policy does not allow, and a condition key it cannot derive are each reported. The whole
suite's recorded calls are evaluated by helper_scripts/test.sh after the Rust tests."""

from __future__ import annotations

import copy
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
import iam_check

ACCOUNT = "111111111111"
KEY = "ASIATESTKEY"
PRINCIPALS = {KEY: f"arn:aws:iam::{ACCOUNT}:role/test-runner"}


def call(app: str, action: str, params: dict, auth: dict | None = None) -> dict:
    return {
        "app": app,
        "action": action,
        "access_key": KEY,
        "region": "us-east-1",
        "status": 200,
        "fault": None,
        "params": {"Action": action.split(":")[1], **params},
        "auth": auth or {},
    }


def test_every_abuse_is_denied_but_the_listed_residuals():
    _counted, _failures, denied, abuse_failures, residual = iam_check.check([], {})
    assert abuse_failures == []
    assert set(residual) <= iam_check.RESIDUAL
    assert denied >= 20, "at least 20 abuses are evaluated and denied"


def test_a_weakened_policy_lets_an_abuse_through():
    policies = copy.deepcopy(iam_check.stack("single", ACCOUNT, "us-east-1", "alerts")[0]["IsolateFunction"])
    for doc in policies:
        for st in doc["Statement"]:
            if st.get("Sid") == "KeepEvidence":
                del st["Condition"]
    request = {
        "principal": iam_check.role_arn(ACCOUNT, "IsolateFunction"),
        "action": "ec2:ModifyInstanceAttribute",
        "resource": f"arn:aws:ec2:us-east-1:{ACCOUNT}:instance/i-0other",
        "resourceAccount": ACCOUNT,
        "context": {"ec2:Attribute": "UserData"},
        "identityPolicies": policies,
        "resourcePolicy": None,
    }
    weak, strong = iam_check.evaluate(
        [request, {**request, "identityPolicies": iam_check.stack("single", ACCOUNT, "us-east-1", "alerts")[0]["IsolateFunction"]}]
    )
    assert weak["result"] == "Allowed"
    assert strong["result"] != "Allowed"


def test_recorded_calls_become_the_requests_iam_makes():
    group = call(
        "isolate",
        "ec2:CreateSecurityGroup",
        {
            "GroupName": "ec2-quarantine-isolation",
            "VpcId": "vpc-0abc",
            "TagSpecification.1.ResourceType": "security-group",
            "TagSpecification.1.Tag.1.Key": "ec2-quarantine:isolation-group",
            "TagSpecification.1.Tag.1.Value": "true",
        },
    )
    built = iam_check.requests_for(group, ACCOUNT)
    assert ("ec2:CreateTags", f"arn:aws:ec2:us-east-1:{ACCOUNT}:security-group/sg-created") in [(a, r) for a, r, _ in built]
    assert [c["ec2:CreateAction"] for a, _, c in built if a == "ec2:CreateTags"] == ["CreateSecurityGroup"]
    replace = call(
        "release",
        "ec2:ReplaceIamInstanceProfileAssociation",
        {"AssociationId": "iip-assoc-1", "IamInstanceProfile.Name": "web"},
        {
            "association_instance": "i-0abc",
            "tags": {"i-0abc": {}},
            "profile": {
                "arn": f"arn:aws:iam::{ACCOUNT}:instance-profile/web",
                "roles": [f"arn:aws:iam::{ACCOUNT}:role/web"],
                "role_tags": {f"arn:aws:iam::{ACCOUNT}:role/web": {"team": "web"}},
            },
        },
    )
    passed = [(a, r, c) for a, r, c in iam_check.requests_for(replace, ACCOUNT) if a == "iam:PassRole"]
    assert passed == [
        (
            "iam:PassRole",
            f"arn:aws:iam::{ACCOUNT}:role/web",
            {
                "iam:PassedToService": "ec2.amazonaws.com",
                "iam:AssociatedResourceARN": f"arn:aws:ec2:us-east-1:{ACCOUNT}:instance/i-0abc",
                "aws:ResourceTag/team": "web",
                "iam:ResourceTag/team": "web",
            },
        )
    ]
    counted, failures, *_ = iam_check.check([group, replace], PRINCIPALS)
    assert failures == [] and counted == 2
    # The same profile holding one of the tool's own roles (tagged as a case writer): denied.
    own = copy.deepcopy(replace)
    own["auth"]["profile"]["role_tags"] = {f"arn:aws:iam::{ACCOUNT}:role/web": {"ec2-quarantine-case-writer": "ec2-quarantine"}}
    counted, failures, *_ = iam_check.check([own], PRINCIPALS)
    assert counted == 0 and "iam:PassRole" in failures[0] and "Denied" in failures[0]


def test_a_call_the_policy_does_not_allow_fails_the_check():
    # Isolate tagging a customer's existing group as the tool's transit group.
    tag = call(
        "isolate",
        "ec2:CreateTags",
        {"ResourceId.1": "sg-0customer", "Tag.1.Key": "ec2-quarantine:untrack-group", "Tag.1.Value": "true"},
        {"tags": {"sg-0customer": {"Name": "web"}}},
    )
    counted, failures, *_ = iam_check.check([tag], PRINCIPALS)
    assert counted == 0
    assert len(failures) == 1 and "ec2:CreateTags" in failures[0] and "Denied" in failures[0]


def test_a_request_the_recorder_cannot_build_fails_with_its_name():
    odd = call(
        "isolate", "ec2:ModifyInstanceAttribute", {"InstanceId": "i-0abc", "DisableApiTermination.Value": "true", "UserData.Value": "x"}
    )
    counted, failures, *_ = iam_check.check([odd], PRINCIPALS)
    assert counted == 0 and "cannot derive" in failures[0] and "ModifyInstanceAttribute" in failures[0]
    assert not iam_check.derivable("ec2:InstanceType")
    assert iam_check.derivable("aws:ResourceTag/ec2-quarantine:isolation-group")


def test_a_policy_key_the_action_does_not_carry_is_reported():
    # A condition on a key IAM never sets for ec2:ModifyInstanceAttribute (iam:PolicyARN): the
    # evaluator drops it from the request, and the check says so instead of trusting the answer.
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": "ec2:ModifyInstanceAttribute",
                "Resource": "*",
                "Condition": {"StringEquals": {"iam:PolicyARN": "x"}},
            }
        ],
    }
    request = {
        "principal": iam_check.role_arn(ACCOUNT, "IsolateFunction"),
        "action": "ec2:ModifyInstanceAttribute",
        "resource": f"arn:aws:ec2:us-east-1:{ACCOUNT}:instance/i-0abc",
        "resourceAccount": ACCOUNT,
        "context": {"iam:PolicyARN": "x"},
        "identityPolicies": [policy],
        "resourcePolicy": None,
    }
    [result] = iam_check.evaluate([request])
    assert iam_check.ignored_policy_keys(request, result) == {"iam:PolicyARN"}


def test_a_delete_on_termination_change_is_authorized_on_its_volume_too():
    change = call(
        "isolate",
        "ec2:ModifyInstanceAttribute",
        {"InstanceId": "i-0abc", "BlockDeviceMapping.1.DeviceName": "/dev/xvda", "BlockDeviceMapping.1.Ebs.DeleteOnTermination": "false"},
        {"tags": {"i-0abc": {}}, "devices": {"/dev/xvda": "vol-0abc"}},
    )
    built = iam_check.requests_for(change, ACCOUNT)
    assert [r for _, r, _ in built] == [
        f"arn:aws:ec2:us-east-1:{ACCOUNT}:instance/i-0abc",
        f"arn:aws:ec2:us-east-1:{ACCOUNT}:volume/vol-0abc",
    ]
    counted, failures, *_ = iam_check.check([change], PRINCIPALS)
    assert failures == [] and counted == 1
