"""Baseline isolate: the steps of the Rust isolate function, written as a boto3 Lambda.

Per VPC a quarantine group (no rules) and a transit group (all traffic, so tracked connections
become untracked); the previous groups recorded on the instance; each interface moved to the
transit group, then to the quarantine group; termination protection on.
"""

import boto3
from common import PREFIX, finding_id, instance_id

ec2 = boto3.client("ec2")


def group(vpc_id, name, tag, open_all):
    found = ec2.describe_security_groups(Filters=[{"Name": "vpc-id", "Values": [vpc_id]}, {"Name": "group-name", "Values": [name]}])[
        "SecurityGroups"
    ]
    if found:
        return found[0]["GroupId"]
    group_id = ec2.create_security_group(
        GroupName=name,
        Description=name,
        VpcId=vpc_id,
        TagSpecifications=[{"ResourceType": "security-group", "Tags": [{"Key": tag, "Value": "true"}]}],
    )["GroupId"]
    everything = [{"IpProtocol": "-1", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}]
    if open_all:
        ec2.authorize_security_group_ingress(GroupId=group_id, IpPermissions=everything)
    else:
        ec2.revoke_security_group_egress(GroupId=group_id, IpPermissions=everything)
    return group_id


def handler(event, context):
    iid = instance_id(event)
    instance = ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]
    vpc = instance["VpcId"]
    quarantine = group(vpc, "ec2-quarantine-isolation", PREFIX + "isolation-group", False)
    transit = group(vpc, "ec2-quarantine-untrack", PREFIX + "untrack-group", True)
    interfaces = instance["NetworkInterfaces"]
    ec2.create_tags(
        Resources=[iid],
        Tags=[{"Key": PREFIX + "finding-id", "Value": finding_id(event)}]
        + [
            {"Key": PREFIX + "previous-groups:" + n["NetworkInterfaceId"], "Value": ",".join(g["GroupId"] for g in n["Groups"])}
            for n in interfaces
        ],
    )
    moved = []
    for n in interfaces:
        if [g["GroupId"] for g in n["Groups"]] == [quarantine]:
            continue
        ec2.modify_network_interface_attribute(NetworkInterfaceId=n["NetworkInterfaceId"], Groups=[transit])
        ec2.modify_network_interface_attribute(NetworkInterfaceId=n["NetworkInterfaceId"], Groups=[quarantine])
        moved.append(n["NetworkInterfaceId"])
    ec2.modify_instance_attribute(InstanceId=iid, DisableApiTermination={"Value": True})
    return {"status": "done", "instance_id": iid, "quarantine_group": quarantine, "interfaces": moved}
