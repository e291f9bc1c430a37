"""The simulated world: the compromised instance (and the instances of a group) in the emulator,
sample events pointed at them, and the emulator's state read back for comparison."""

from __future__ import annotations

import json
import re

from local.template import REGION

IMAGE_ID = "ami-1e749f67"


MISSING_INSTANCE = "i-0fffffffffffffff0"


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
            {
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}],
            }
        ),
    )
    read_only = iam.create_policy(
        PolicyName="s3-ssm-read-only",
        PolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": ["s3:Get*", "s3:List*", "ssm:GetParameter*"], "Resource": "*"}],
            }
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
        out.append(
            {
                **sim,
                "instance_id": instance["InstanceId"],
                "interfaces": [n["NetworkInterfaceId"] for n in instance["NetworkInterfaces"]],
                "volumes": [m["Ebs"]["VolumeId"] for m in instance["BlockDeviceMappings"]],
            }
        )
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
        AutoScalingGroupName=SIM_GROUP,
        LaunchConfigurationName="web-lc",
        MinSize=0,
        MaxSize=3,
        DesiredCapacity=0,
        VPCZoneIdentifier=sim["subnet_id"],
    )
    asg.attach_instances(AutoScalingGroupName=SIM_GROUP, InstanceIds=[sim["instance_id"]])
    tg = elbv2.create_target_group(Name="web-tg", Protocol="HTTP", Port=80, VpcId=sim["vpc_id"], TargetType="instance")
    sim["target_group_arn"] = tg["TargetGroups"][0]["TargetGroupArn"]
    elbv2.register_targets(TargetGroupArn=sim["target_group_arn"], Targets=[{"Id": sim["instance_id"], "Port": 80}])
    elb.create_load_balancer(
        LoadBalancerName=SIM_CLASSIC,
        Listeners=[{"Protocol": "HTTP", "LoadBalancerPort": 80, "InstancePort": 80}],
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
    notify input (its finding), or a finding event. An approval's decision names no instance,
    account or region (only its request), so it is sent as it is."""
    if "approval_id" in raw:
        return raw
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
        "forensic_snapshots": len(ec2.describe_snapshots(Filters=[{"Name": "tag-key", "Values": ["ec2-quarantine:case"]}])["Snapshots"]),
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
            {
                "group": g["AutoScalingGroupName"],
                "desired": g["DesiredCapacity"],
                "instances": sorted([i["InstanceId"], i["LifecycleState"]] for i in g["Instances"]),
            }
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
            {"id": g["GroupId"], "ingress_rules": len(g["IpPermissions"]), "egress_rules": len(g["IpPermissionsEgress"])}
            for g in quarantine
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
