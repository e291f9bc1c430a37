"""Baseline deny-role: the instance's role gets a DenyAll managed policy and a hold tag."""

import json

import boto3
from common import PREFIX, instance_id

ec2 = boto3.client("ec2")
iam = boto3.client("iam")
sts = boto3.client("sts")

DENY_ALL = json.dumps({"Version": "2012-10-17", "Statement": [{"Effect": "Deny", "Action": "*", "Resource": "*"}]})


def deny_all_policy():
    account = sts.get_caller_identity()["Account"]
    arn = f"arn:aws:iam::{account}:policy/ec2-quarantine/ec2-quarantine-deny-all"
    try:
        iam.get_policy(PolicyArn=arn)
    except iam.exceptions.NoSuchEntityException:
        iam.create_policy(PolicyName="ec2-quarantine-deny-all", Path="/ec2-quarantine/", PolicyDocument=DENY_ALL)
    return arn


def handler(event, context):
    iid = instance_id(event)
    associations = ec2.describe_iam_instance_profile_associations(
        Filters=[{"Name": "instance-id", "Values": [iid]}, {"Name": "state", "Values": ["associated"]}]
    )["IamInstanceProfileAssociations"]
    if not associations:
        return {"status": "skipped", "reason": "the instance has no instance profile"}
    profile = associations[0]["IamInstanceProfile"]["Arn"].split("/")[-1]
    roles = [r["RoleName"] for r in iam.get_instance_profile(InstanceProfileName=profile)["InstanceProfile"]["Roles"]]
    policy = deny_all_policy()
    for role in roles:
        attached = iam.list_attached_role_policies(RoleName=role)["AttachedPolicies"]
        if not any(p["PolicyArn"] == policy for p in attached):
            iam.attach_role_policy(RoleName=role, PolicyArn=policy)
        iam.tag_role(RoleName=role, Tags=[{"Key": PREFIX + "held-by:" + iid, "Value": "deny-all"}])
    return {"status": "done", "roles": roles, "policy": policy}
