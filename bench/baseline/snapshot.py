"""Baseline snapshot: one crash-consistent set of snapshots per finding, tagged, never twice."""

import boto3
from common import PREFIX, finding_id, instance_id

ec2 = boto3.client("ec2")


def handler(event, context):
    iid = instance_id(event)
    fid = finding_id(event)
    existing = ec2.describe_snapshots(
        OwnerIds=["self"],
        Filters=[{"Name": "tag:" + PREFIX + "finding-id", "Values": [fid]}, {"Name": "tag:" + PREFIX + "instance-id", "Values": [iid]}],
    )["Snapshots"]
    if existing:
        return {"status": "already_done", "snapshots": [s["SnapshotId"] for s in existing]}
    created = ec2.create_snapshots(
        InstanceSpecification={"InstanceId": iid, "ExcludeBootVolume": False},
        Description=f"Forensic copy of {iid} for GuardDuty finding {fid}",
        CopyTagsFromSource="volume",
        TagSpecifications=[
            {
                "ResourceType": "snapshot",
                "Tags": [{"Key": PREFIX + "finding-id", "Value": fid}, {"Key": PREFIX + "instance-id", "Value": iid}],
            }
        ],
    )["Snapshots"]
    return {"status": "done", "snapshots": [s["SnapshotId"] for s in created]}
