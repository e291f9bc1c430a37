"""Least privilege as a test: the IAM actions each function's code makes, the table below, and
the policies in template.yaml (and the member role) must agree in both directions. (Resources
and conditions are checked by IAM's own evaluation logic: tests/tools/iam_check.py, and
test_iam_evaluation.py.)

The code's actions are read from the source: every AWS call goes through
`Error::from_sdk("<service>:<Action>", ...)` (or the case table's `written("<service>:<Action>", ...)`), whose label is the IAM action the call needs (a
check below makes sure no call escapes a label).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from local.template import CfnLoader, load_template

ROOT = Path(__file__).resolve().parents[2]

# The functions that read the instance (triage, the containment steps, release).
INSTANCE_READERS = {"TriageFunction", "IsolateFunction", "DeregisterFunction", "SnapshotFunction", "DenyRoleFunction", "ReleaseFunction"}
CASE_USERS = INSTANCE_READERS | {"EvidenceCopyFunction"}

# The one table: IAM action -> the functions that call it.
ACTIONS: dict[str, set[str]] = {
    "ec2:DescribeInstances": INSTANCE_READERS | {"CollectFunction"},
    "ec2:DescribeSecurityGroups": {"TriageFunction", "IsolateFunction"},
    "ec2:DescribeNetworkInterfaces": {"IsolateFunction"},
    "ec2:DescribeInstanceAttribute": {"IsolateFunction"},
    "ec2:CreateSecurityGroup": {"IsolateFunction"},
    "ec2:RevokeSecurityGroupEgress": {"IsolateFunction"},
    "ec2:RevokeSecurityGroupIngress": {"IsolateFunction"},
    "ec2:AuthorizeSecurityGroupIngress": {"IsolateFunction"},
    "ec2:AuthorizeSecurityGroupEgress": {"IsolateFunction"},
    "ec2:ModifyNetworkInterfaceAttribute": {"IsolateFunction", "ReleaseFunction"},
    "ec2:ModifyInstanceAttribute": {"IsolateFunction", "ReleaseFunction"},
    "ec2:CreateTags": {"IsolateFunction", "SnapshotFunction", "CollectFunction"},
    "ec2:DeleteTags": {"ReleaseFunction"},
    "ec2:ReplaceIamInstanceProfileAssociation": {"DenyRoleFunction", "ReleaseFunction"},
    "ec2:DisassociateIamInstanceProfile": {"DenyRoleFunction"},
    "ec2:AssociateIamInstanceProfile": {"DenyRoleFunction"},
    "iam:CreateInstanceProfile": {"DenyRoleFunction"},
    "ec2:DescribeSnapshots": {"SnapshotFunction", "EvidenceCopyFunction", "CollectFunction"},
    # The tool's snapshots shared with the forensic account, for their copies there.
    "ec2:ModifySnapshotAttribute": {"EvidenceCopyFunction"},
    "ec2:CreateSnapshots": {"SnapshotFunction"},
    "ec2:DescribeLockedSnapshots": {"SnapshotFunction", "CollectFunction"},
    "ec2:LockSnapshot": {"SnapshotFunction", "CollectFunction"},
    # The memory image: a volume made for it, attached, detached, snapshotted (and locked).
    "ec2:DescribeInstanceTypes": {"CollectFunction"},
    "ec2:DescribeVolumes": {"CollectFunction"},
    "ec2:CreateVolume": {"CollectFunction"},
    "ec2:AttachVolume": {"CollectFunction"},
    "ec2:DetachVolume": {"CollectFunction"},
    "ec2:CreateSnapshot": {"CollectFunction"},
    "s3:PutObject": {"SnapshotFunction", "CollectFunction"},
    "s3:GetObject": {"SnapshotFunction", "CollectFunction"},
    # The volatile-data collector, sent to an instance that waits for approval, and followed.
    "ssm:SendCommand": {"CollectFunction"},
    # No call names it: S3 needs it to answer 404, not 403, for an archive never uploaded.
    "s3:ListBucket": {"CollectFunction"},
    "ssm:GetCommandInvocation": {"CollectFunction"},
    "ssm:ListCommands": {"CollectFunction"},
    "ec2:DescribeIamInstanceProfileAssociations": {"DenyRoleFunction", "ReleaseFunction"},
    "iam:GetInstanceProfile": {"DenyRoleFunction"},
    "iam:GetRole": {"DenyRoleFunction"},
    "iam:GetRolePolicy": {"DenyRoleFunction", "ReleaseFunction"},
    "iam:PutRolePolicy": {"DenyRoleFunction", "ReleaseFunction"},
    "iam:ListAttachedRolePolicies": {"DenyRoleFunction"},
    "iam:ListInstanceProfilesForRole": {"DenyRoleFunction"},
    "iam:GetPolicy": {"DenyRoleFunction"},
    "iam:GetPolicyVersion": {"DenyRoleFunction"},
    "iam:CreatePolicy": {"DenyRoleFunction"},
    "iam:AttachRolePolicy": {"DenyRoleFunction", "ReleaseFunction"},
    "iam:DetachRolePolicy": {"ReleaseFunction"},
    "iam:DeleteRolePolicy": {"ReleaseFunction"},
    "iam:PassRole": {"ReleaseFunction"},
    "autoscaling:DescribeAutoScalingInstances": {"DeregisterFunction", "ReleaseFunction"},
    "autoscaling:EnterStandby": {"DeregisterFunction"},
    "autoscaling:DetachInstances": {"DeregisterFunction"},
    "autoscaling:ExitStandby": {"ReleaseFunction"},
    "autoscaling:AttachInstances": {"ReleaseFunction"},
    "elasticloadbalancing:DescribeTargetGroups": {"DeregisterFunction"},
    "elasticloadbalancing:DescribeTargetHealth": {"DeregisterFunction"},
    "elasticloadbalancing:DescribeLoadBalancers": {"DeregisterFunction"},
    "elasticloadbalancing:DeregisterTargets": {"DeregisterFunction"},
    "elasticloadbalancing:DeregisterInstancesFromLoadBalancer": {"DeregisterFunction"},
    "elasticloadbalancing:RegisterTargets": {"ReleaseFunction"},
    "elasticloadbalancing:RegisterInstancesWithLoadBalancer": {"ReleaseFunction"},
    "sts:AssumeRole": INSTANCE_READERS | {"SecurityHubFunction", "EvidenceCopyFunction"},
    "sns:Publish": {"NotifyFunction", "ApprovalFunction"},
    # The decision handed to the execution waiting on the approval.
    "states:SendTaskSuccess": {"ApprovalFunction", "ApprovalLinkFunction"},
    # The finding in Security Hub CSPM, in the finding's account: read, and note.
    "securityhub:GetFindings": {"SecurityHubFunction"},
    "securityhub:BatchUpdateFindings": {"SecurityHubFunction"},
    # The case table, in the responder's own account (src/case.rs serves every containment
    # function and release; release alone deletes an item, a role hold).
    "dynamodb:GetItem": CASE_USERS | {"ApprovalFunction", "ApprovalLinkFunction", "CollectFunction"},
    "dynamodb:PutItem": CASE_USERS | {"ApprovalFunction", "CollectFunction"},
    "dynamodb:UpdateItem": CASE_USERS | {"ApprovalFunction", "ApprovalLinkFunction", "CollectFunction"},
    "dynamodb:Query": CASE_USERS,
    # The pause switch, in the responder's own account: triage reads it and its record.
    "ssm:GetParameter": {"TriageFunction"},
    "ssm:GetParameterHistory": {"TriageFunction"},
    "dynamodb:DeleteItem": {"ReleaseFunction"},
}

# Actions IAM checks that no call names: giving an instance back a profile that holds a role
# passes that role to EC2.
IMPLIED = {
    ("ReleaseFunction", "ec2:ReplaceIamInstanceProfileAssociation"): "iam:PassRole",
    ("CollectFunction", "s3:GetObject"): "s3:ListBucket",
    # Tags given in the call that creates the volume (and the snapshot) are authorized as
    # ec2:CreateTags with ec2:CreateAction.
    ("CollectFunction", "ec2:CreateVolume"): "ec2:CreateTags",
}

# Which source files (under src/; a folder is every file in it) run in which function: each
# step's module, plus the shared ones it uses.
MODULES = {
    "TriageFunction": ["steps/triage.rs", "aws/instance.rs", "aws/context.rs", "aws/pause.rs", "case.rs", "approval.rs"],
    "IsolateFunction": ["steps/isolate.rs", "aws/instance.rs", "aws/context.rs", "aws/tags.rs", "case.rs"],
    "DeregisterFunction": ["steps/deregister.rs", "aws/instance.rs", "aws/context.rs", "case.rs"],
    "SnapshotFunction": ["steps/snapshot.rs", "steps/manifest.rs", "aws/evidence.rs", "aws/instance.rs", "aws/context.rs", "case.rs"],
    "DenyRoleFunction": ["steps/role.rs", "aws/role_policy.rs", "aws/instance.rs", "aws/context.rs", "aws/profile.rs", "case.rs"],
    "ReleaseFunction": ["steps/release.rs", "aws/role_policy.rs", "aws/instance.rs", "aws/context.rs", "aws/profile.rs", "case.rs"],
    "NotifyFunction": ["steps/notify"],
    "SecurityHubFunction": ["steps/security_hub.rs", "aws/context.rs"],
    # Its own account only (no member role): the context's clients, none of its calls.
    "ApprovalFunction": ["steps/approval.rs", "approval.rs"],
    # Its calls are the approval record's and the hand-over's (THROUGH below).
    "ApprovalLinkFunction": ["steps/approval_link.rs"],
    "EvidenceCopyFunction": ["steps/evidence_copy.rs", "aws/context.rs", "case.rs"],
    # Its own account and region only (no member role): the collection's record is its own
    # (approval#<id>, collection#<instance>), and the evidence bucket's calls.
    # The memory image's steps too, with the instance read and the snapshot lock of the
    # snapshot step (THROUGH below); its clients are its own account's (no member role).
    "CollectFunction": ["steps/collect.rs", "steps/memory.rs", "aws/evidence.rs", "aws/instance.rs"],
}

# Calls a function makes only through the forensic account's copier role
# (helper_scripts/forensic-account.yaml), never with its own: its policy does not hold them.
FORENSIC = {"EvidenceCopyFunction": {"ec2:CopySnapshot"}}

# A function that calls into shared code whose other calls it never makes: the actions of the
# calls it makes there, named here (the link's page reads a request, records a decision and hands
# it over: src/approval.rs `approval` and `decide_approval_by_link`, src/steps/approval.rs
# `deliver`; never a request's PutItem nor its message).
THROUGH = {
    "ApprovalLinkFunction": {"dynamodb:GetItem", "dynamodb:UpdateItem", "states:SendTaskSuccess"},
    # The memory image's snapshot locked as the disks' are (src/steps/snapshot.rs `lock_set`).
    "CollectFunction": {"ec2:DescribeLockedSnapshots", "ec2:LockSnapshot"},
}

# Writes that IAM can scope: each must name resources (and the IAM ones a policy or condition).
WRITES = {
    "ec2:CreateSecurityGroup",
    "ec2:RevokeSecurityGroupEgress",
    "ec2:RevokeSecurityGroupIngress",
    "ec2:AuthorizeSecurityGroupIngress",
    "ec2:AuthorizeSecurityGroupEgress",
    "ec2:ModifyNetworkInterfaceAttribute",
    "ec2:ModifyInstanceAttribute",
    "ec2:CreateTags",
    "ec2:CreateSnapshots",
    "ec2:ModifySnapshotAttribute",
    "s3:PutObject",
    "iam:PutRolePolicy",
    "iam:CreatePolicy",
    "iam:AttachRolePolicy",
    "ec2:ReplaceIamInstanceProfileAssociation",
    "iam:CreateInstanceProfile",
    "ec2:DisassociateIamInstanceProfile",
    "ec2:AssociateIamInstanceProfile",
    "sts:AssumeRole",
    "sns:Publish",
    "securityhub:BatchUpdateFindings",
    "ec2:DeleteTags",
    "iam:DetachRolePolicy",
    "iam:DeleteRolePolicy",
    "iam:PassRole",
    "autoscaling:EnterStandby",
    "autoscaling:DetachInstances",
    "autoscaling:ExitStandby",
    "autoscaling:AttachInstances",
    "elasticloadbalancing:DeregisterTargets",
    "elasticloadbalancing:RegisterTargets",
    "elasticloadbalancing:DeregisterInstancesFromLoadBalancer",
    "elasticloadbalancing:RegisterInstancesWithLoadBalancer",
    "ssm:SendCommand",
    "ec2:CreateVolume",
    "ec2:AttachVolume",
    "ec2:DetachVolume",
    "ec2:CreateSnapshot",
    "ec2:LockSnapshot",
}
# Describe calls have no resource-level permissions in EC2: "*" is the only resource they take.
UNSCOPABLE = {
    "ec2:DescribeInstances",
    "ec2:DescribeSecurityGroups",
    "ec2:DescribeSnapshots",
    "ec2:DescribeLockedSnapshots",
    "ec2:DescribeInstanceTypes",
    "ec2:DescribeVolumes",
    "ec2:DescribeIamInstanceProfileAssociations",
    "ec2:DescribeNetworkInterfaces",
    "ec2:DescribeInstanceAttribute",
    "autoscaling:DescribeAutoScalingInstances",
    "elasticloadbalancing:DescribeTargetGroups",
    "elasticloadbalancing:DescribeTargetHealth",
    "elasticloadbalancing:DescribeLoadBalancers",
    # No resource type: IAM cannot tell a task token's state machine (template.yaml says more).
    "states:SendTaskSuccess",
    # No resource type either (the service authorization reference for Systems Manager).
    "ssm:GetCommandInvocation",
    "ssm:ListCommands",
}

LABEL = re.compile(r'(?:from_sdk|group_error|written)\(\s*"([a-z0-9]+:[A-Za-z]+)"')


def sources(function: str) -> list[Path]:
    out = []
    for name in MODULES[function]:
        path = ROOT / "src" / name
        out.extend(sorted(path.rglob("*.rs")) if path.is_dir() else [path])
    return out


def code_actions(function: str) -> set[str]:
    found = set()
    for path in sources(function):
        found |= set(LABEL.findall(path.read_text()))
    found |= THROUGH.get(function, set())
    found -= FORENSIC.get(function, set())
    return found | {implied for (f, action), implied in IMPLIED.items() if f == function and action in found}


def statements(policies: list) -> list[dict]:
    out = []
    for p in policies:
        if isinstance(p, dict) and "Fn::If" in p:
            p = p["Fn::If"][1]  # the policy when the condition holds
        if isinstance(p, dict) and "Statement" in p:
            for st in p["Statement"]:
                if isinstance(st, dict) and "Fn::If" in st:
                    st = st["Fn::If"][1]  # the statement when the condition holds
                if isinstance(st, dict) and st.get("Effect"):
                    out.append(st)
        elif isinstance(p, dict) and "SNSPublishMessagePolicy" in p:
            topic = p["SNSPublishMessagePolicy"]["TopicName"]["Fn::GetAtt"][0]
            out.append({"Effect": "Allow", "Action": ["sns:Publish"], "Resource": {"Ref": topic}})
        else:
            raise AssertionError(f"a policy this test cannot read: {p}")
    return out


def as_list(v) -> list:
    return v if isinstance(v, list) else [v]


def allowed(function: str) -> dict[str, list[dict]]:
    props = load_template()["Resources"][function]["Properties"]
    by_action: dict[str, list[dict]] = {}
    for st in statements(props.get("Policies", [])):
        if st["Effect"] != "Allow":
            continue
        for action in as_list(st["Action"]):
            by_action.setdefault(action, []).append(st)
    return by_action


def test_every_aws_call_in_the_code_is_labelled_with_its_action():
    for path in (ROOT / "src").rglob("*.rs"):
        text = path.read_text()
        assert text.count(".send()") == len(LABEL.findall(text)), f"{path.name}: an AWS call without its IAM action label"


def test_the_table_lists_exactly_what_the_code_calls():
    for function in MODULES:
        table = {a for a, fs in ACTIONS.items() if function in fs}
        assert code_actions(function) == table, function


@pytest.mark.parametrize("function", sorted(MODULES))
def test_each_function_is_allowed_exactly_what_it_calls(function):
    table = {a for a, fs in ACTIONS.items() if function in fs}
    assert set(allowed(function)) == table


@pytest.mark.parametrize("function", sorted(MODULES))
def test_no_wildcard_actions_and_writes_are_scoped(function):
    for action, sts in allowed(function).items():
        assert "*" not in action, f"{function}: wildcard action {action}"
        for st in sts:
            resources = as_list(st["Resource"])
            if action in UNSCOPABLE:
                continue
            assert resources and all(r != "*" for r in resources), f"{function}: {action} on {resources}"
            if action == "iam:AttachRolePolicy":
                assert st["Condition"]["ArnEquals"]["iam:PolicyARN"], "attach only the DenyAll policy"
            if action in ("iam:CreatePolicy", "iam:GetPolicyVersion"):
                assert all("ec2-quarantine-DenyAll" in str(r) for r in resources)
            if action == "iam:CreateInstanceProfile":
                assert all("ec2-quarantine-quarantined" in str(r) for r in resources)
            if action in ("iam:AttachRolePolicy", "iam:DetachRolePolicy"):
                assert "ec2-quarantine-DenyAll" in str(st["Condition"]["ArnEquals"]["iam:PolicyARN"])
            if action == "iam:PassRole":
                assert st["Condition"]["StringEquals"]["iam:PassedToService"] == "ec2.amazonaws.com"
            if action in ("ec2:CreateTags", "ec2:DeleteTags"):
                # The tool's keys, or tags in the call that creates the resource (its own).
                assert "aws:TagKeys" in str(st.get("Condition")) or "ec2:CreateAction" in str(st.get("Condition")), (
                    f"{function}: CreateTags limited to the tool's keys or to creation"
                )
            if action == "ec2:CreateTags" and "security-group" in str(resources):
                assert st["Condition"]["StringEquals"]["ec2:CreateAction"] == "CreateSecurityGroup", "groups are tagged at creation only"
            if action == "ec2:ModifyInstanceAttribute":
                assert "ec2:Attribute" in str(st["Condition"]), f"{function}: only the attributes the tool changes"
            if action == "securityhub:BatchUpdateFindings":
                # The note and the status NOTIFIED only: no other field of the finding.
                assert st["Condition"]["StringEqualsIfExists"] == {"securityhub:ASFFSyntaxPath/Workflow.Status": "NOTIFIED"}
                assert {"securityhub:ASFFSyntaxPath/Severity.Label", "securityhub:ASFFSyntaxPath/Types"} <= set(st["Condition"]["Null"])
                assert set(st["Condition"]["Null"].values()) == {"true"}
            if action.startswith("dynamodb:"):
                assert resources == [{"Fn::GetAtt": ["CaseTable", "Arn"]}], f"{function}: {action} on the case table only"
            if action == "dynamodb:DeleteItem":
                assert st["Condition"]["ForAllValues:StringLike"]["dynamodb:LeadingKeys"] == ["role#*"], "only role holds are deleted"
            if action in ("ec2:RevokeSecurityGroupEgress", "ec2:RevokeSecurityGroupIngress"):
                assert "aws:ResourceTag/ec2-quarantine:isolation-group" in str(st["Condition"]), "only the quarantine group"
            if action in ("ec2:AuthorizeSecurityGroupEgress", "ec2:AuthorizeSecurityGroupIngress"):
                assert "aws:ResourceTag/ec2-quarantine:untrack-group" in str(st["Condition"]), "only the transit group"
            if action == "ec2:LockSnapshot":
                assert "aws:ResourceTag/ec2-quarantine:instance-id" in str(st["Condition"]) or (
                    "aws:ResourceTag/ec2-quarantine:memory-snapshot" in str(st["Condition"])
                ), "only the tool's snapshots"
            if action in ("ec2:CreateVolume", "ec2:AttachVolume", "ec2:DetachVolume", "ec2:CreateSnapshot") and "volume/" in str(resources):
                assert "ec2-quarantine:memory-image" in str(st["Condition"]), f"{function}: {action} on the memory images' volumes only"
            if action == "s3:PutObject":
                assert st["Condition"] == {"StringEquals": {"s3:if-none-match": "*"}}, "never over an object"
            if action == "ec2:ModifySnapshotAttribute":
                # With the forensic account only, on the tool's snapshots, never public or a removal.
                assert st["Condition"]["StringEquals"] == {"ec2:Add/userId": {"Ref": "ForensicAccountId"}}
                assert st["Condition"]["Null"] == {
                    "aws:ResourceTag/ec2-quarantine:instance-id": "false",
                    "ec2:Add/group": "true",
                    "ec2:Remove/userId": "true",
                    "ec2:Remove/group": "true",
                }


def test_the_member_role_allows_the_union_of_the_containment_functions():
    member = yaml.load((ROOT / "helper_scripts" / "member-account-role.yaml").read_text(), Loader=CfnLoader)
    policy = member["Resources"]["MemberRole"]["Properties"]["Policies"][0]["PolicyDocument"]
    allowed_there = {a for st in policy["Statement"] if st["Effect"] == "Allow" for a in as_list(st["Action"])}
    # The case table, the pause switch and the evidence bucket stay in the responder's account:
    # the member role has no DynamoDB, SSM or S3 action.
    containment = {
        a
        for a, fs in ACTIONS.items()
        if fs - {"NotifyFunction", "ApprovalFunction", "ApprovalLinkFunction", "CollectFunction"}
        and not a.startswith(("dynamodb:", "ssm:", "s3:"))
    }
    assert allowed_there == containment - {"sts:AssumeRole"}
    denied_there = {a for st in policy["Statement"] if st["Effect"] == "Deny" for a in as_list(st["Action"])}
    assert {"iam:PutRolePolicy", "iam:AttachRolePolicy"} <= denied_there, "the member role cannot change itself"


def test_the_forensic_role_copies_into_its_account_and_can_neither_delete_nor_share():
    forensic = yaml.load((ROOT / "helper_scripts" / "forensic-account.yaml").read_text(), Loader=CfnLoader)
    role = forensic["Resources"]["CopierRole"]["Properties"]
    policy = role["Policies"][0]["PolicyDocument"]
    allowed_there = {a for st in policy["Statement"] if st["Effect"] == "Allow" for a in as_list(st["Action"])}
    ec2_there = {a for a in allowed_there if a.startswith("ec2:")}
    # What the function calls there (FORENSIC), the read that finds the copies, the tags of the copy.
    assert ec2_there == FORENSIC["EvidenceCopyFunction"] | {"ec2:DescribeSnapshots", "ec2:CreateTags"}
    tags = next(st for st in policy["Statement"] if "ec2:CreateTags" in as_list(st["Action"]))
    assert tags["Condition"] == {"StringEquals": {"ec2:CreateAction": "CopySnapshot"}}, "tags at creation only"
    denied = {a for st in policy["Statement"] if st["Effect"] == "Deny" for a in as_list(st["Action"])}
    assert {"ec2:DeleteSnapshot", "ec2:ModifySnapshotAttribute", "ec2:UnlockSnapshot"} <= denied
    # Trusted by the copy function's role only.
    trust = role["AssumeRolePolicyDocument"]["Statement"]
    assert len(trust) == 1 and "EvidenceCopyFunctionRole-*" in str(trust[0]["Condition"]["ArnLike"]["aws:PrincipalArn"])
    # The key: kept with the stack deleted, and used by the role only through EC2.
    key = forensic["Resources"]["EvidenceKey"]
    assert key["DeletionPolicy"] == "Retain"
    for use in key["Properties"]["KeyPolicy"]["Statement"][1:]:
        assert use["Principal"] == {"AWS": {"Fn::GetAtt": ["CopierRole", "Arn"]}} and "kms:ViaService" in use["Condition"]["StringEquals"]
        if use["Action"] == "kms:CreateGrant":
            assert use["Condition"]["Bool"] == {"kms:GrantIsForAWSResource": "true"}


# What each state machine's role may do, from its definition: invoke its own functions (one
# LambdaInvokePolicy per function substitution) and, for the fallback message when notify fails,
# publish to the alert topic only (the policy Step Functions documents for a static TopicArn:
# https://docs.aws.amazon.com/step-functions/latest/dg/sns-iam.html).
STATE_MACHINES = {
    "ContainmentStateMachine": "containment.asl.json",
    "ReleaseStateMachine": "release.asl.json",
    "EvidenceCopyStateMachine": "evidence-copy.asl.json",
    "CollectionStateMachine": "collection.asl.json",
}


def asl_resources(states: dict) -> list[tuple[str, dict]]:
    out = []
    for s in states.values():
        if s["Type"] == "Task":
            out.append((s["Resource"], s.get("Parameters") or {}))
        for branch in s.get("Branches", []):
            out.extend(asl_resources(branch["States"]))
        # A Map's states (ItemProcessor, or the older Iterator).
        for processor in (s.get("ItemProcessor"), s.get("Iterator")):
            if processor:
                out.extend(asl_resources(processor["States"]))
    return out


@pytest.mark.parametrize("machine", sorted(STATE_MACHINES))
def test_each_state_machine_may_invoke_its_functions_and_publish_to_the_alert_topic_only(machine):
    import json

    props = load_template()["Resources"][machine]["Properties"]
    subs = props["DefinitionSubstitutions"]
    definition = json.loads((ROOT / "statemachine" / STATE_MACHINES[machine]).read_text())
    used = asl_resources(definition["States"])
    functions, topics, started = set(), set(), set()
    for resource, params in used:
        if resource == "arn:aws:states:::states:startExecution":
            # Another of the stack's state machines, named by a substitution, never a path.
            ref = params["StateMachineArn"]
            assert ref.startswith("${") and ref.endswith("}") and "StateMachineArn.$" not in params
            started.add(subs[ref[2:-1]]["Ref"])
        elif resource == "arn:aws:states:::sns:publish":
            ref = params["TopicArn"]
            assert ref.startswith("${") and ref.endswith("}"), "a static topic, never a path (that needs sns:Publish on *)"
            topics.add(subs[ref[2:-1]]["Ref"])
            assert not {"TargetArn", "PhoneNumber", "TargetArn.$", "PhoneNumber.$", "TopicArn.$"} & set(params)
        else:
            # The Lambda integration (the approval's `.waitForTaskToken`) names the function in
            # its parameters; lambda:InvokeFunction on it all the same.
            if resource.startswith("arn:aws:states:::lambda:invoke"):
                resource = params["FunctionName"]
            name = resource[2:-1]
            assert resource == "${" + name + "}" and subs[name]["Fn::GetAtt"][1] == "Arn", resource
            functions.add(subs[name]["Fn::GetAtt"][0])
    assert topics == {"AlertTopic"}, "the fallback message goes to the alert topic"

    invoke, publish, start, own = set(), set(), set(), []
    for policy in props["Policies"]:
        if "Statement" in policy:
            own.append(policy)
            continue
        [(template, args)] = policy.items()
        if template == "LambdaInvokePolicy":
            invoke.add(args["FunctionName"]["Ref"])
        elif template == "StepFunctionsExecutionPolicy":
            assert args["StateMachineName"]["Fn::GetAtt"][1] == "Name"
            start.add(args["StateMachineName"]["Fn::GetAtt"][0])
        elif template == "SNSPublishMessagePolicy":
            publish.add(args["TopicName"]["Fn::GetAtt"][0])
            assert args["TopicName"]["Fn::GetAtt"][1] == "TopicName"
        else:
            raise AssertionError(f"{machine}: a policy this test cannot read: {policy}")
    assert invoke == functions, "invoke exactly the functions the definition calls"
    assert publish == topics, "sns:Publish on exactly the topics the definition publishes to"
    assert start == started, "states:StartExecution on exactly the state machines the definition starts"
    # Besides: writing its log (the log delivery actions Step Functions' logging needs, which have
    # no resource types) and, with Tracing=Active only, its traces.
    [logs_and_traces] = own
    deliver, trace = logs_and_traces["Statement"]
    assert deliver["Effect"] == "Allow" and deliver["Resource"] == "*"
    assert set(deliver["Action"]) == {
        f"logs:{a}"
        for a in (
            "CreateLogDelivery",
            "GetLogDelivery",
            "UpdateLogDelivery",
            "DeleteLogDelivery",
            "ListLogDeliveries",
            "PutResourcePolicy",
            "DescribeResourcePolicies",
            "DescribeLogGroups",
        )
    }
    condition, xray, otherwise = trace["Fn::If"]
    assert condition == "HasTracing" and otherwise == {"Ref": "AWS::NoValue"}
    assert set(xray["Action"]) == {"xray:PutTraceSegments", "xray:PutTelemetryRecords", "xray:GetSamplingRules", "xray:GetSamplingTargets"}
    assert props["Logging"] == {
        "Level": "ALL",
        "IncludeExecutionData": False,
        "Destinations": [{"CloudWatchLogsLogGroup": {"LogGroupArn": {"Fn::GetAtt": [f"{machine}LogGroup", "Arn"]}}}],
    }, "every event, and never the finding or the reports in it"


def test_nothing_destructive_is_allowed_anywhere():
    destructive = {
        "ec2:TerminateInstances",
        "ec2:StopInstances",
        "ec2:DeleteVolume",
        "ec2:DeleteSnapshot",
        "ec2:DetachVolume",
        "ec2:UnlockSnapshot",
    }
    for function in MODULES:
        actions = set(allowed(function))
        if function == "CollectFunction":
            # Detaching only the volume it made for a memory image (tagged at its creation):
            # never a disk of the instance.
            volumes = [st for st in allowed(function)["ec2:DetachVolume"] if "volume/" in str(st["Resource"])]
            assert volumes and all("aws:ResourceTag/ec2-quarantine:memory-image" in str(st["Condition"]) for st in volumes)
            actions.discard("ec2:DetachVolume")
        assert not destructive & actions, function


def test_the_case_table_is_kept_protected_and_written_only_by_the_functions():
    template = load_template()
    table = template["Resources"]["CaseTable"]
    assert table["DeletionPolicy"] == "Retain" and table["UpdateReplacePolicy"] == "Retain"
    props = table["Properties"]
    assert props["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] is True
    assert props["SSESpecification"]["SSEEnabled"] is True
    assert props["DeletionProtectionEnabled"] is True
    # The keys src/case.rs and the tests' fixture (tests/common/mod.rs) use.
    assert props["KeySchema"] == [{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}]
    [deny] = props["ResourcePolicy"]["PolicyDocument"]["Statement"]
    assert deny["Effect"] == "Deny" and deny["Principal"] == "*"
    assert {"dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem", "dynamodb:BatchWriteItem"} <= set(deny["Action"])
    [(key, value)] = deny["Condition"]["StringNotEquals"].items()
    tag = key.removeprefix("aws:PrincipalTag/")
    assert template["Globals"]["Function"]["Tags"][tag] == value, "the functions' roles carry the writer tag (SAM tags the roles it makes)"
    assert template["Globals"]["Function"]["Environment"]["Variables"]["CASE_TABLE"] == {"Ref": "CaseTable"}


def test_release_has_no_code_path_that_reads_a_tag():
    """Release decides only from its case and AWS's state: no tag is read in the modules it runs
    (anyone allowed ec2:CreateTags or iam:TagRole could write one). It deletes its two marker
    tags by key, which reads none."""
    reads = re.compile(r"tags::find|\.tags\(\)|describe_tags|list_role_tags|ListRoleTags|DescribeTags|tag_filter|\"tag:")
    for path in sources("ReleaseFunction"):
        text = path.read_text()
        code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("//"))
        assert not reads.search(code), f"{path.name}: {reads.search(code).group(0)}"


def parameter_store_change(name: str, operation: str = "Update", description: str = "scanner mistaken for an attacker") -> dict:
    """The event SSM sends EventBridge for a parameter change, as its user guide shows it
    (https://docs.aws.amazon.com/systems-manager/latest/userguide/sysman-paramstore-cwe.html)."""
    return {
        "version": "0",
        "id": "9547ef2d-3b7e-4057-b6cb-5fdf09ee7c8f",
        "detail-type": "Parameter Store Change",
        "source": "aws.ssm",
        "account": "123456789012",
        "time": "2026-12-02T08:00:00Z",
        "region": "us-east-1",
        "resources": [f"arn:aws:ssm:us-east-1:123456789012:parameter{name}"],
        "detail": {"operation": operation, "name": name, "type": "String", "description": description},
    }


def test_a_change_of_the_pause_switch_and_only_of_it_reaches_the_alert_topic():
    from local.template import rule_matches

    template = load_template()
    rule = template["Resources"]["PauseSwitchChangedRule"]["Properties"]
    switch = "/ec2-quarantine/ec2-quarantine/paused"
    pattern = json.loads(json.dumps(rule["EventPattern"]).replace('{"Ref": "PauseSwitch"}', json.dumps(switch)))
    assert rule_matches(pattern, parameter_store_change(switch))
    assert rule_matches(pattern, parameter_store_change(switch, "Delete"))
    assert not rule_matches(pattern, parameter_store_change("/prod/db-password"))
    assert not rule_matches(pattern, parameter_store_change(switch, "LabelParameterVersion")), "a label changes no value"
    [target] = rule["Targets"]
    assert target["Arn"] == {"Ref": "AlertTopic"}
    paths = target["InputTransformer"]["InputPathsMap"]
    assert paths["description"] == "$.detail.description" and paths["name"] == "$.detail.name"
    for placeholder in paths:
        assert f"<{placeholder}>" in target["InputTransformer"]["InputTemplate"], placeholder


def test_the_alert_topic_takes_the_alarms_of_its_account_and_the_pause_rule_only():
    template = load_template()
    policy = template["Resources"]["AlertTopicPolicy"]["Properties"]
    assert policy["Topics"] == [{"Ref": "AlertTopic"}]
    statements = {st["Sid"]: st for st in policy["PolicyDocument"]["Statement"]}
    assert {st["Effect"] for st in statements.values()} == {"Allow"}
    assert {st["Action"] for st in statements.values()} == {"sns:Publish"}
    alarms, rule = statements["AlarmsOfThisAccount"], statements["ThePauseRule"]
    # Service principals, each held to its source (the confused-deputy conditions SNS documents).
    assert alarms["Principal"] == {"Service": "cloudwatch.amazonaws.com"}
    assert alarms["Condition"] == {"StringEquals": {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}}
    assert rule["Principal"] == {"Service": "events.amazonaws.com"}
    assert rule["Condition"] == {"ArnEquals": {"aws:SourceArn": {"Fn::GetAtt": ["PauseSwitchChangedRule", "Arn"]}}}
    # A pause alert EventBridge could not deliver is alarmed on.
    failed = template["Resources"]["PauseAlertFailedAlarm"]["Properties"]
    assert (failed["Namespace"], failed["MetricName"]) == ("AWS/Events", "FailedInvocations")
    assert failed["Dimensions"] == [{"Name": "RuleName", "Value": {"Ref": "PauseSwitchChangedRule"}}]
    # Every alarm notifies that topic.
    alarms_in_template = [r for r in template["Resources"].values() if r["Type"] == "AWS::CloudWatch::Alarm"]
    assert alarms_in_template and all(r["Properties"]["AlarmActions"] == [{"Ref": "AlertTopic"}] for r in alarms_in_template)


def test_a_pause_reason_cannot_break_the_alerts_json():
    """EventBridge puts the description into the alert's JSON string without escaping it."""
    import aws_ops

    class Ssm:
        def put_parameter(self, **kwargs):
            self.kwargs = kwargs

    ssm = Ssm()
    aws_ops.pause(ssm, "/ec2-quarantine/ec2-quarantine/paused", 'scanner "10.0.3.7"\\n\tINC-1234 \\ ok')
    description = ssm.kwargs["Description"]
    assert '"' not in description and "\\" not in description and "\n" not in description and "\t" not in description
    assert json.loads(f'"{description}"') == description == "scanner '10.0.3.7'/n INC-1234 / ok"
