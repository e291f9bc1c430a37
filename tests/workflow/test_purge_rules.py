"""What `deploy.sh nuke --purge-artifacts` keeps for open cases, rule by rule, on the decisions
themselves (helper_scripts/aws_ops.py); test_aws_path.py runs the purge end to end."""

from __future__ import annotations

import aws_ops
from botocore.exceptions import ClientError

CASE = "i-0aaaaaaaaaaaaaaa1-20261203T081401123Z"


def found(**extra) -> dict:
    return {
        "snapshots": ["snap-0aaaaaaaaaaaaaaa1", "snap-0aaaaaaaaaaaaaaa2", "snap-0aaaaaaaaaaaaaaa3"],
        "snapshot_cases": {"snap-0aaaaaaaaaaaaaaa2": CASE, "snap-0aaaaaaaaaaaaaaa3": "i-0aaaaaaaaaaaaaaa1-20200101T000000000Z"},
        "deny_all_roles": ["web", "batch"],
        "inline_roles": ["web"],
        **extra,
    }


def held(**extra) -> dict:
    return {
        "cases": {CASE: ("us-east-1", "ec2-quarantine-CaseTable-X")},
        "snapshots": {"snap-0aaaaaaaaaaaaaaa1": CASE},
        "roles": {"web": "i-0aaaaaaaaaaaaaaa1"},
        "every_role": False,
        **extra,
    }


def test_what_the_record_says_an_open_case_holds_stays():
    f = found()
    kept = aws_ops.keep_for_open_cases(f, held())
    # Recorded in the case, or tagged with the open case: kept. Tagged with a closed case: goes.
    assert f["snapshots"] == ["snap-0aaaaaaaaaaaaaaa3"]
    assert [k.split()[0] for k in kept["snapshots"]] == ["snap-0aaaaaaaaaaaaaaa1", "snap-0aaaaaaaaaaaaaaa2"]
    assert f["deny_all_roles"] == ["batch"] and f["inline_roles"] == []
    assert kept["roles"] == ["web (instance i-0aaaaaaaaaaaaaaa1's case is open)"]


def test_a_record_that_cannot_be_read_keeps_everything():
    f = found()
    kept = aws_ops.keep_for_open_cases(f, None)
    assert f["snapshots"] == [] and f["deny_all_roles"] == [] and f["inline_roles"] == []
    assert len(kept["snapshots"]) == 3 and [k.split()[0] for k in kept["roles"]] == ["batch", "web"]
    assert aws_ops.held_open(None)


def test_a_role_step_that_did_not_settle_keeps_every_roles_denies():
    f = found()
    kept = aws_ops.keep_for_open_cases(f, held(every_role=True))
    assert f["deny_all_roles"] == [] and f["inline_roles"] == []
    assert all("role step did not settle" in k for k in kept["roles"])
    assert f["snapshots"] == ["snap-0aaaaaaaaaaaaaaa3"], "the snapshots follow the record as usual"


def test_a_case_opened_after_the_question_counts_and_an_unreadable_second_look_keeps_all():
    later = held(cases={"i-0bbbbbbbbbbbbbbb1-20261203T090000000Z": ("eu-west-1", "t")}, roles={"batch": "i-0bbbbbbbbbbbbbbb1"})
    both = aws_ops.merged(held(), later)
    assert set(both["cases"]) == {CASE, "i-0bbbbbbbbbbbbbbb1-20261203T090000000Z"} and set(both["roles"]) == {"web", "batch"}
    assert aws_ops.merged(held(), None) is None and aws_ops.merged(None, held()) is None
    assert not aws_ops.held_open(held(cases={})) and aws_ops.held_open(held())


class Cfn:
    def __init__(self, stack_id: str, resources: list[dict]):
        self.stack_id, self.resources = stack_id, resources

    def describe_stacks(self, StackName):
        return {"Stacks": [{"StackId": self.stack_id, "Outputs": [{"OutputKey": "InstanceId", "OutputValue": "i-0victim"}]}]}

    def describe_stack_resources(self, StackName):
        return {"StackResources": self.resources}


class Ec2:
    def __init__(self, tags: dict[str, str]):
        self.tags = tags

    def describe_instances(self, InstanceIds):
        return {
            "Reservations": [
                {"Instances": [{"InstanceId": InstanceIds[0], "Tags": [{"Key": k, "Value": v} for k, v in self.tags.items()]}]}
            ]
        }


STACK_ID = "arn:aws:cloudformation:us-east-1:123456789012:stack/ec2-quarantine-test-instance/1"
RESOURCES = [
    {"LogicalResourceId": "Instance", "ResourceType": "AWS::EC2::Instance", "PhysicalResourceId": "i-0ccccccccccccccc1"},
    {"LogicalResourceId": "InstanceRole", "ResourceType": "AWS::IAM::Role", "PhysicalResourceId": "test-role"},
]


def test_the_test_stacks_instance_is_its_own_resource_never_its_output():
    members = aws_ops.test_stack_members(Ec2({"aws:cloudformation:stack-id": STACK_ID}), Cfn(STACK_ID, RESOURCES))
    assert members == {"instance": "i-0ccccccccccccccc1", "role": "test-role"}, "the output's i-0victim is never read"


def test_an_instance_the_stack_did_not_create_is_not_exempt():
    # An instance imported into a stack of that name (or any without the stack's id in the tag
    # no user can write) keeps its case's holds.
    for tags in ({}, {"aws:cloudformation:stack-id": STACK_ID.replace("/1", "/2")}):
        assert "instance" not in aws_ops.test_stack_members(Ec2(tags), Cfn(STACK_ID, RESOURCES))
    wrong_type = [{**RESOURCES[0], "ResourceType": "AWS::CloudFormation::WaitConditionHandle"}]
    assert aws_ops.test_stack_members(Ec2({"aws:cloudformation:stack-id": STACK_ID}), Cfn(STACK_ID, wrong_type)) == {}


def test_no_test_stack_exempts_nothing():
    class Gone(Cfn):
        def describe_stacks(self, StackName):
            raise ClientError({"Error": {"Code": "ValidationError", "Message": "does not exist"}}, "DescribeStacks")

    assert aws_ops.test_stack_members(Ec2({}), Gone(STACK_ID, RESOURCES)) == {}
