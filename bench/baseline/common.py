"""Shared by the baseline handlers: what a boto3 Lambda reads from a GuardDuty finding."""

import re

PREFIX = "ec2-quarantine:"


def instance_id(event):
    """The instance a finding names: instance details, or the instance in the role session."""
    resource = event.get("detail", {}).get("resource", {})
    details = resource.get("instanceDetails") or {}
    if details.get("instanceId"):
        return details["instanceId"]
    principal = (resource.get("accessKeyDetails") or {}).get("principalId", "")
    m = re.search(r":(i-[0-9a-f]+)$", principal)
    if not m:
        raise ValueError("the finding names no instance")
    return m.group(1)


def finding_id(event):
    return event["detail"]["id"]
