"""A fault-injecting, recording HTTP proxy between the functions under test and the AWS emulator.

Every request is forwarded to the emulator and recorded (service, action, access key, fault).
Tests add rules at POST /__proxy__/faults; a request that matches a rule gets the rule's fault
instead of (or, for a delay, before) the emulator's answer:

    {"action": "ec2:CreateSnapshots", "fault": "throttle" | "unavailable" | "denied" | "delay" | "error",
     "code": "InvalidGroup.NotFound", "status": 400 (for "error"),
     "access_key": "<the test's key id>" (optional), "times": 1 (optional; default every time),
     "probability": 0.3 (optional; drawn from the proxy's seeded generator), "seconds": 2 (delay)}

Faults answer as the service does: EC2's XML error shape, or the Query services' (IAM, STS,
SNS). Rules are keyed by access key so that parallel tests (one emulated account each) do not
see each other's faults. GET /__proxy__/log returns the calls; GET /__proxy__/summary counts;
POST /__proxy__/outcome {"kind": ...} lets a test record what it concluded.
Deterministic: one seed (--seed) drives every probabilistic rule.

Each log entry also has the request's start and end (seconds on the proxy's monotonic clock) and
the caller's app id from the User-Agent (`app/<id>`, the SDK's AWS_SDK_UA_APP_ID), so the
benchmarks can find chains of dependent calls per function.

With --ec2-token-buckets the proxy also enforces EC2's request rate limits as AWS publishes them
(token buckets: capacity, refill per second; see EC2_BUCKETS): a request finding its bucket empty
gets EC2's RequestLimitExceeded (HTTP 503) and is logged with the fault "rate_limited".

More rule options and faults:

    "after": 2                  the first 2 matching requests pass untouched, later ones get the fault
    "params": {"SecurityGroupId.1": "sg-..."}
                                match only requests whose form parameters hold these pairs
    "fault": "slow_answer", "seconds": 6
                                forward the request to the emulator first (the change is applied, as
                                when AWS is slow to answer), then wait before answering: a client with
                                a shorter timeout gives up on a call that did happen

The strict layer (on by default, off with --lenient) answers as AWS does where moto accepts: before
forwarding a request it may ask the emulator for the state it needs (moto does not check SigV4
signatures, so a request the proxy builds with the caller's Authorization header reads the caller's
emulated account), and it refuses what AWS refuses with AWS's error code and HTTP status. Each rule
cites the AWS page that states it (STRICT_RULES, and tests/README.md); a refusal is logged with the
fault "strict:<rule>" and counted in the summary's strict_refusals. Injected faults win over the
strict layer; DryRun=true requests are left to the emulator. Lookups are not logged as calls; the
time they took is the entry's "strict_seconds".

With --authorization, for IAM's evaluation (tests/tools/iam_check.py), a call a function makes (one with an app id)
that writes also gets "auth": what IAM reads from AWS's state when it authorizes the request,
read at that moment (the resources' tags with their values, an instance's volumes, the instance
of a profile association, the ARN and roles of an instance profile, a role's ARN and tags); a JSON-protocol
call (DynamoDB) gets "json": its table and item key. STS AssumeRole answers are remembered:
GET /__proxy__/principals maps each access key the emulator issued to the role it belongs to.

A call is logged once. When the client had gone before the answer could be written (a "delay" or
"slow_answer" past its timeout), the entry keeps the emulator's status and has "client_gone": true.
A "delay" models a request held up on its way to AWS: when its client has gone by the end of the
wait, the request is dropped (never forwarded, logged with "dropped": true), as a request that
never reached AWS; a "slow_answer" models AWS applying a call and answering late.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import json
import random
import re
import select
import socket
import sys
import threading
import time
import urllib.parse
import xml.etree.ElementTree as ET
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from xml.sax.saxutils import escape

DESTRUCTIVE = {"ec2:TerminateInstances", "ec2:DeleteVolume", "ec2:DeleteSnapshot", "ec2:DetachVolume", "ec2:StopInstances"}
# The one volume the tool detaches: the one it made for a memory image (tagged so at its creation,
# src/steps/memory.rs), never a disk of the instance.
MEMORY_IMAGE_TAG = "ec2-quarantine:memory-image"


def is_destructive(entry: dict) -> bool:
    """A call that destroys or takes away something of the customer's: the DESTRUCTIVE actions,
    except the detach of a memory image's own volume (its tags as AWS's state held them then)."""
    if entry["action"] not in DESTRUCTIVE:
        return False
    if entry["action"] == "ec2:DetachVolume":
        volume = (entry.get("params") or {}).get("VolumeId")
        tags = ((entry.get("auth") or {}).get("tags") or {}).get(volume) or {}
        return MEMORY_IMAGE_TAG not in tags
    return True


CREDENTIAL = re.compile(r"Credential=([^/]+)/[^/]+/[^/]+/([^/]+)/aws4_request")
APP_ID = re.compile(r"(?:^| )app/([^ ]+)")
SCOPE_REGION = re.compile(r"Credential=[^/]+/[^/]+/([^/]+)/")

# EC2's published request token buckets (capacity, refill per second), per account and region.
# Actions with a bucket of their own are named; the rest share their category's bucket.
EC2_BUCKETS = {
    "ModifyNetworkInterfaceAttribute": (100, 5),
    "CreateSnapshots": (100, 5),
    "CreateTags": (100, 10),
    "describe": (100, 20),
    "mutating": (50, 5),
}


class TokenBucket:
    def __init__(self, capacity: float, rate: float):
        self.capacity, self.rate = capacity, rate
        self.tokens, self.at = float(capacity), time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


def ec2_bucket(name: str) -> str:
    if name in EC2_BUCKETS:
        return name
    return "describe" if name.startswith(("Describe", "Get", "List")) else "mutating"


class State:
    def __init__(self, upstream: str, seed: int, token_buckets: bool = False, strict: bool = True, authorization: bool = False):
        self.authorization = authorization
        self.buckets = {k: TokenBucket(*v) for k, v in EC2_BUCKETS.items()} if token_buckets else None
        u = urllib.parse.urlparse(upstream)
        self.host, self.port = u.hostname, u.port
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        # DynamoDB checks and applies a conditional write as one step per item
        # (https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/Expressions.ConditionExpressions.html);
        # moto's threaded server evaluates the condition and writes without a lock, so two
        # writes at once can both pass a condition only one may pass. Writes of one item go to
        # it one at a time (tests/README, "Where moto differs from AWS"): a lock per item.
        self.item_locks: dict[str, threading.Lock] = {}
        self.rules: list[dict] = []
        self.log: list[dict] = []
        self.outcomes: dict[str, int] = {}
        self.strict = strict
        # InstanceMetadataTags as ModifyInstanceMetadataOptions last set it, by instance id: moto
        # forgets it when a later call leaves the parameter out (AWS keeps it).
        self.metadata_tags: dict[str, str] = {}
        # Access key id -> the role ARN whose session it is (from AssumeRole answers).
        self.principals: dict[str, str] = {}

    def match(self, action: str, access_key: str | None, params: dict[str, str] | None = None) -> dict | None:
        with self.lock:
            for rule in self.rules:
                if rule["action"] != action or rule.get("access_key") not in (None, access_key):
                    continue
                wanted = rule.get("params") or {}
                if any((params or {}).get(k) != str(v) for k, v in wanted.items()):
                    continue
                if rule.get("times") == 0:
                    continue
                if rule.get("after"):
                    seen = rule.get("_seen", 0)
                    if seen < int(rule["after"]):
                        rule["_seen"] = seen + 1
                        continue
                if "probability" in rule and self.rng.random() >= rule["probability"]:
                    continue
                if rule.get("times") is not None:
                    rule["times"] -= 1
                return dict(rule)
        return None

    def rate_limited(self, service: str, name: str) -> bool:
        if self.buckets is None or service != "ec2":
            return False
        with self.lock:
            return not self.buckets[ec2_bucket(name)].take()


def error_body(service: str, code: str, message: str, json_protocol: bool = False) -> tuple[str, bytes]:
    if json_protocol:
        # The JSON protocols (DynamoDB): https://smithy.io/2.0/aws/protocols/aws-json-1_0-protocol.html
        return "application/x-amz-json-1.0", json.dumps({"__type": code, "message": message}).encode()
    if service == "ec2":
        body = f"<Response><Errors><Error><Code>{code}</Code><Message>{message}</Message></Error></Errors><RequestID>fault-proxy</RequestID></Response>"
    elif service == "s3":
        # S3's REST-XML errors: https://docs.aws.amazon.com/AmazonS3/latest/API/ErrorResponses.html
        body = f"<Error><Code>{code}</Code><Message>{message}</Message><RequestId>fault-proxy</RequestId></Error>"
    else:
        body = f"<ErrorResponse><Error><Type>Sender</Type><Code>{code}</Code><Message>{message}</Message></Error><RequestId>fault-proxy</RequestId></ErrorResponse>"
    return "text/xml", body.encode()


FAULTS = {
    # fault: (status, ec2 code, other services' code, message)
    "throttle": (503, "RequestLimitExceeded", "Throttling", "Rate exceeded (injected)"),
    "unavailable": (500, "InternalError", "InternalFailure", "An internal error occurred (injected)"),
    "denied": (403, "UnauthorizedOperation", "AccessDenied", "You are not authorized to perform this operation (injected)"),
    "rate_limited": (503, "RequestLimitExceeded", "Throttling", "Request limit exceeded."),
}


# ---------------------------------------------------------------------------------------------
# The strict layer: what AWS refuses and moto accepts. Each rule names the AWS page that states it.
# A check returns None (let the emulator answer) or (status, code, message).

STRICT_RULES = {
    # https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_CreateTags.html ("Each resource
    # can have a maximum of 50 tags"; overwriting an existing key adds none) and
    # https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/Using_Tags.html#tag-restrictions (keys
    # starting with aws: do not count). Code from the EC2 error list,
    # https://docs.aws.amazon.com/AWSEC2/latest/APIReference/errors-overview.html (TagLimitExceeded,
    # HTTP 400): not confirmed from the stored page text; it is also what moto answers. That a tag
    # specification of more than 50 tags at creation gets the same code is an assumption.
    "ec2_tag_limit": (400, "TagLimitExceeded"),
    # https://docs.aws.amazon.com/IAM/latest/UserGuide/reference_iam-quotas.html (50 tags per role)
    # and https://docs.aws.amazon.com/IAM/latest/APIReference/API_TagRole.html (LimitExceeded; HTTP
    # 409 is the status of LimitExceededException in AWS's published IAM service model). More than
    # 50 tags in one CreateRole/TagRole request breaks the request's own constraint (Tags: at most
    # 50 members): ValidationError, HTTP 400, as AWS answers model constraint violations (what
    # moto answers too; the exact wording is not confirmed). Not confirmed either: LimitExceeded's
    # message (modelled on IAM's other quota messages) and that role tag keys compare without case
    # (https://docs.aws.amazon.com/IAM/latest/UserGuide/id_tags.html#case-sensitivity).
    "iam_tag_limit": (409, "LimitExceeded"),
    # https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/work-with-tags-in-IMDS.html: with tags
    # allowed in instance metadata, tag keys may only hold a-z A-Z 0-9 + - = . , _ : @, no spaces
    # or /, and may not be . .. or _index; "non-compliance will result in failed launches for new
    # instances or an error for existing instances". The code and message are AWS's as reported in
    # https://github.com/seek-oss/aec/pull/411 (RunInstances) and
    # https://github.com/aws/aws-cli/issues/8825 (ModifyInstanceMetadataOptions); the page does not
    # name them.
    "metadata_tag_key": (400, "InvalidParameterValue"),
    # https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/Using_ChangingDisableAPITermination.html:
    # "You can't enable termination protection for Spot Instances." The page names no error code;
    # AWS's answer, UnsupportedOperation "Modifying 'disableApiTermination' is not supported for
    # spot instances.", is reported in https://github.com/cloud-custodian/cloud-custodian/issues/2083
    # for a call that set the attribute to false: any change of the attribute is refused.
    "spot_termination_protection": (400, "UnsupportedOperation"),
    # https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_ReplaceIamInstanceProfileAssociation.html
    # ("Replaces an IAM instance profile for the specified running instance"). On a stopped
    # instance AWS answers IncorrectState "The association ... is not the active association"
    # (https://github.com/aws/aws-cli/issues/5251); the page names no code.
    "replace_profile_not_running": (400, "IncorrectState"),
    # https://docs.aws.amazon.com/sns/latest/api/API_Publish.html (at most 262,144 bytes, not
    # characters), https://docs.aws.amazon.com/sns/latest/api/API_MessageAttributeValue.html (every
    # part of each attribute, name, type and value, counts) and
    # https://docs.aws.amazon.com/sns/latest/dg/large-message-payloads.html (body plus attributes
    # against the topic's MaximumMessageSize, 262,144 by default: InvalidParameter). Message as in
    # https://github.com/wellcomecollection/platform/issues/1776 (HTTP 400).
    "sns_message_size": (400, "InvalidParameter"),
}

EC2_TAG_LIMIT = 50
IAM_TAG_LIMIT = 50
SNS_MAX_MESSAGE_BYTES = 262_144
IMDS_TAG_KEY = re.compile(r"[0-9a-zA-Z\-_+=,.@:]{1,255}")
IMDS_RESERVED_KEYS = {".", "..", "_index"}


def imds_key_valid(key: str) -> bool:
    return bool(IMDS_TAG_KEY.fullmatch(key)) and key not in IMDS_RESERVED_KEYS


def user_tag(key: str) -> bool:
    """Tags whose key starts with aws: (any case) are AWS's own and do not count."""
    return not key.lower().startswith("aws:")


def indexed(form: dict[str, str], pattern: str) -> list[str]:
    """The values of the form parameters matching `pattern` (one group: the index), in index order."""
    rx = re.compile(pattern)
    found = sorted((int(m.group(1)), v) for k, v in form.items() if (m := rx.fullmatch(k)))
    return [v for _, v in found]


def tag_specifications(form: dict[str, str]) -> list[tuple[str, list[str]]]:
    """EC2 TagSpecification.N: (resource type, tag keys) per specification."""
    specs: dict[int, tuple[str, list[str]]] = {}
    for n in sorted({int(m.group(1)) for k in form if (m := re.match(r"TagSpecification\.(\d+)\.", k))}):
        keys = indexed(form, rf"TagSpecification\.{n}\.Tag\.(\d+)\.Key")
        specs[n] = (form.get(f"TagSpecification.{n}.ResourceType", ""), keys)
    return list(specs.values())


def local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def child(elem: ET.Element | None, *path: str) -> ET.Element | None:
    for name in path:
        if elem is None:
            return None
        elem = next((c for c in elem if local(c.tag) == name), None)
    return elem


def text(elem: ET.Element | None, *path: str) -> str | None:
    found = child(elem, *path)
    return found.text if found is not None else None


def descendants(elem: ET.Element, name: str) -> list[ET.Element]:
    return [e for e in elem.iter() if local(e.tag) == name]


class Lookup:
    """Reads the caller's emulated account: requests signed with the caller's own headers."""

    def __init__(self, state: State, headers: dict[str, str]):
        self.state = state
        keep = ("authorization", "x-amz-security-token", "x-amz-date")
        self.headers = {k: v for k, v in headers.items() if k.lower() in keep}
        self.headers["Content-Type"] = "application/x-www-form-urlencoded; charset=utf-8"

    def query(self, params: dict[str, str]) -> ET.Element | None:
        conn = http.client.HTTPConnection(self.state.host, self.state.port, timeout=30)
        try:
            conn.request("POST", "/", body=urllib.parse.urlencode(params).encode(), headers=self.headers)
            resp = conn.getresponse()
            data = resp.read()
        except OSError:
            return None
        finally:
            conn.close()
        if resp.status != 200:
            return None
        try:
            return ET.fromstring(data)
        except ET.ParseError:
            return None

    def ec2_instances(self, instance_ids: list[str]) -> dict[str, dict]:
        """instance id -> {"state", "lifecycle", "metadata_tags", "tags"} as DescribeInstances reads."""
        params = {"Action": "DescribeInstances", "Version": "2016-11-15"}
        params.update({f"InstanceId.{i}": r for i, r in enumerate(instance_ids, 1)})
        root = self.query(params)
        found: dict[str, dict] = {}
        if root is None:
            return found
        for instances in descendants(root, "instancesSet"):
            for item in instances:
                iid = text(item, "instanceId")
                if not iid:
                    continue
                tag_set = child(item, "tagSet")
                found[iid] = {
                    "state": text(item, "instanceState", "name"),
                    "lifecycle": text(item, "instanceLifecycle"),
                    "metadata_tags": text(item, "metadataOptions", "instanceMetadataTags") or self.state.metadata_tags.get(iid),
                    "tags": [text(t, "key") or "" for t in tag_set] if tag_set is not None else [],
                }
        return found

    def ec2_tag_values(self, resource_ids: list[str]) -> dict[str, dict[str, str]]:
        """resource id -> its tags (key -> value), every id present (empty when it has none)."""
        params = {"Action": "DescribeTags", "Version": "2016-11-15", "Filter.1.Name": "resource-id", "MaxResults": "1000"}
        params.update({f"Filter.1.Value.{i}": r for i, r in enumerate(resource_ids, 1)})
        tags: dict[str, dict[str, str]] = {r: {} for r in resource_ids}
        while True:
            root = self.query(params)
            if root is None:
                return tags
            for item in descendants(root, "item"):
                rid, key = text(item, "resourceId"), text(item, "key")
                if rid is not None and key is not None:
                    tags.setdefault(rid, {})[key] = text(item, "value") or ""
            token = text(root, "nextToken")
            if not token:
                return tags
            params["NextToken"] = token

    def instance_volumes(self, instance_id: str) -> list[str]:
        return sorted(set(self.instance_devices(instance_id).values()))

    def instance_devices(self, instance_id: str) -> dict[str, str]:
        """device name -> EBS volume id, as the instance's block device mapping reads."""
        root = self.query({"Action": "DescribeInstances", "Version": "2016-11-15", "InstanceId.1": instance_id})
        devices: dict[str, str] = {}
        for mapping in [] if root is None else descendants(root, "blockDeviceMapping"):
            for item in mapping:
                name, volume = text(item, "deviceName"), text(item, "ebs", "volumeId")
                if name and volume:
                    devices[name] = volume
        return devices

    def iam(self) -> Lookup:
        """The same caller, asking IAM (the credential scope names the service)."""
        other = Lookup(self.state, {})
        other.headers = {
            k: re.sub(r"/[a-z0-9-]+/aws4_request", "/iam/aws4_request", v) if k.lower() == "authorization" else v
            for k, v in self.headers.items()
        }
        return other

    def instance_profile(self, name: str) -> dict | None:
        root = self.query({"Action": "GetInstanceProfile", "Version": "2010-05-08", "InstanceProfileName": name})
        if root is None:
            return None
        profile = next(iter(descendants(root, "InstanceProfile")), None)
        roles = [text(m, "Arn") for r in descendants(root, "Roles") for m in r if local(m.tag) == "member"]
        return {"arn": text(profile, "Arn"), "roles": [r for r in roles if r]}

    def role_tags(self, name: str) -> dict[str, str]:
        root = self.query({"Action": "ListRoleTags", "Version": "2010-05-08", "RoleName": name, "MaxItems": "1000"})
        tags: dict[str, str] = {}
        for found in [] if root is None else descendants(root, "Tags"):
            for member in found:
                if local(member.tag) == "member" and text(member, "Key") is not None:
                    tags[text(member, "Key")] = text(member, "Value") or ""
        return tags

    def role_arn(self, name: str) -> str | None:
        root = self.query({"Action": "GetRole", "Version": "2010-05-08", "RoleName": name})
        return None if root is None else next((e.text for e in descendants(root, "Arn")), None)

    def profile_association_instance(self, association_id: str) -> str | None:
        root = self.query({"Action": "DescribeIamInstanceProfileAssociations", "Version": "2016-11-15", "AssociationId.1": association_id})
        return None if root is None else next((i.text for i in descendants(root, "instanceId")), None)

    def iam_role_tag_keys(self, role: str) -> list[str] | None:
        params = {"Action": "ListRoleTags", "Version": "2010-05-08", "RoleName": role, "MaxItems": "1000"}
        keys: list[str] = []
        while True:
            root = self.query(params)
            if root is None:
                return None
            for tags in descendants(root, "Tags"):
                keys += [text(m, "Key") or "" for m in tags if local(m.tag) == "member"]
            marker = next((e.text for e in descendants(root, "Marker")), None)
            if (next((e.text for e in descendants(root, "IsTruncated")), "false") or "").lower() != "true" or not marker:
                return keys
            params["Marker"] = marker


Refusal = tuple[str, str]  # (rule, message)


def check_ec2(look: Lookup, name: str, form: dict[str, str]) -> Refusal | None:
    if form.get("DryRun", "").lower() == "true":
        return None
    # Tags given at creation: at most 50 user tags in one specification.
    for _resource_type, keys in tag_specifications(form):
        if len({k for k in keys if user_tag(k)}) > EC2_TAG_LIMIT:
            return "ec2_tag_limit", "The maximum number of Tags for a resource has been reached."
    if name == "RunInstances" and form.get("MetadataOptions.InstanceMetadataTags") == "enabled":
        for resource_type, keys in tag_specifications(form):
            bad = next((k for k in keys if not imds_key_valid(k)), None) if resource_type == "instance" else None
            if bad is not None:
                return "metadata_tag_key", imds_key_message(bad)
    if name == "CreateTags":
        resources = indexed(form, r"ResourceId\.(\d+)")
        keys = indexed(form, r"Tag\.(\d+)\.Key")
        new = {k for k in keys if user_tag(k)}
        if resources and new:
            existing = look.ec2_tag_values(resources)
            for rid in resources:
                have = {k for k in existing.get(rid, ()) if user_tag(k)}
                if len(have | new) > EC2_TAG_LIMIT:
                    return "ec2_tag_limit", "The maximum number of Tags for a resource has been reached."
        bad = next((k for k in keys if not imds_key_valid(k)), None)
        instances = [r for r in resources if r.startswith("i-")]
        if bad is not None and instances:
            described = look.ec2_instances(instances)
            if any(i.get("metadata_tags") == "enabled" for i in described.values()):
                return "metadata_tag_key", imds_key_message(bad)
    if name == "ModifyInstanceMetadataOptions" and form.get("InstanceMetadataTags") == "enabled":
        iid = form.get("InstanceId", "")
        described = look.ec2_instances([iid]).get(iid, {})
        bad = next((k for k in described.get("tags", []) if not imds_key_valid(k)), None)
        if bad is not None:
            return "metadata_tag_key", imds_key_message(bad)
    if name == "ModifyInstanceAttribute" and ("DisableApiTermination.Value" in form or form.get("Attribute") == "disableApiTermination"):
        iid = form.get("InstanceId", "")
        if look.ec2_instances([iid]).get(iid, {}).get("lifecycle") == "spot":
            return "spot_termination_protection", "Modifying 'disableApiTermination' is not supported for spot instances."
    if name == "ReplaceIamInstanceProfileAssociation":
        association = form.get("AssociationId", "")
        iid = look.profile_association_instance(association)
        if iid:
            state = look.ec2_instances([iid]).get(iid, {}).get("state")
            if state is not None and state != "running":
                return "replace_profile_not_running", f"The association {association} is not the active association"
    return None


def imds_key_message(key: str) -> str:
    return (
        f"'{key}' is not a valid tag key. Tag keys must match pattern ([0-9a-zA-Z\\-_+=,.@:]{{1,255}}), "
        "and must not be a reserved name ('.', '..', '_index')"
    )


def check_iam(look: Lookup, name: str, form: dict[str, str]) -> tuple[str, int, str, str] | None:
    if name not in ("TagRole", "CreateRole"):
        return None
    keys = indexed(form, r"Tags\.member\.(\d+)\.Key")
    if len(keys) > IAM_TAG_LIMIT:
        return (
            "iam_tag_limit",
            400,
            "ValidationError",
            ("1 validation error detected: Value at 'tags' failed to satisfy constraint: Member must have length less than or equal to 50"),
        )
    if name == "TagRole" and keys:
        existing = look.iam_role_tag_keys(form.get("RoleName", ""))
        if existing is None:
            return None  # no such role: the emulator answers NoSuchEntity
        # Role tag keys are compared without case (IAM keeps one of CostCenter and costcenter).
        have = {k.lower() for k in existing if user_tag(k)}
        if len(have | {k.lower() for k in keys if user_tag(k)}) > IAM_TAG_LIMIT:
            status, code = STRICT_RULES["iam_tag_limit"]
            return ("iam_tag_limit", status, code, "Cannot exceed quota for TagsPerRole: 50")
    return None


def sns_message_bytes(form: dict[str, str]) -> int:
    size = len(form.get("Message", "").encode())
    for n in sorted({int(m.group(1)) for k in form if (m := re.match(r"MessageAttributes\.entry\.(\d+)\.", k))}):
        prefix = f"MessageAttributes.entry.{n}."
        size += len(form.get(prefix + "Name", "").encode())
        size += len(form.get(prefix + "Value.DataType", "").encode())
        size += len(form.get(prefix + "Value.StringValue", "").encode())
        binary = form.get(prefix + "Value.BinaryValue")
        if binary:
            try:
                size += len(base64.b64decode(binary))
            except ValueError:
                size += len(binary)
    return size


def strict_check(state: State, service: str, name: str, form: dict[str, str], headers: dict[str, str]) -> tuple[str, int, str, str] | None:
    """(rule, status, code, message) when AWS would refuse the request, None otherwise."""
    look = Lookup(state, headers)
    if service == "ec2":
        refusal = check_ec2(look, name, form)
        if refusal:
            rule, message = refusal
            status, code = STRICT_RULES[rule]
            return rule, status, code, message
    elif service == "iam":
        return check_iam(look, name, form)
    elif service == "sns" and name == "Publish" and sns_message_bytes(form) > SNS_MAX_MESSAGE_BYTES:
        status, code = STRICT_RULES["sns_message_size"]
        return "sns_message_size", status, code, "Invalid parameter: Message too long"
    return None


EC2_RESOURCE_PARAM = re.compile(
    r"(InstanceId|NetworkInterfaceId|GroupId|SecurityGroupId\.\d+|ResourceId\.\d+|VolumeId"
    r"|SnapshotId|InstanceSpecification\.InstanceId)"
)
READS = ("Describe", "Get", "List")


def authorization_state(state: State, service: str, name: str, form: dict[str, str], headers: dict[str, str]) -> dict:
    """What IAM reads from AWS's state to authorize this write, read now (see the module doc)."""
    look = Lookup(state, headers)
    auth: dict = {}
    if service == "ec2":
        ids = sorted({v for k, v in form.items() if EC2_RESOURCE_PARAM.fullmatch(k)})
        association = form.get("AssociationId")
        if association:
            instance = look.profile_association_instance(association)
            auth["association_instance"] = instance
            if instance:
                ids.append(instance)
        if ids:
            auth["tags"] = look.ec2_tag_values(ids)
        if name == "CreateSnapshots" and form.get("InstanceSpecification.InstanceId"):
            auth["volumes"] = look.instance_volumes(form["InstanceSpecification.InstanceId"])
        if name == "ModifyInstanceAttribute" and form.get("InstanceId") and any(k.startswith("BlockDeviceMapping.") for k in form):
            auth["devices"] = look.instance_devices(form["InstanceId"])
        profile = form.get("IamInstanceProfile.Name") or (form.get("IamInstanceProfile.Arn") or "").rsplit("/", 1)[-1]
        if profile:
            iam = look.iam()
            auth["profile"] = iam.instance_profile(profile)
            if auth["profile"]:
                auth["profile"]["role_tags"] = {r: iam.role_tags(r.rsplit("/", 1)[-1]) for r in auth["profile"]["roles"]}
    elif service == "iam":
        if form.get("RoleName"):
            auth["role_arn"] = look.role_arn(form["RoleName"])
            auth["role_tags"] = look.role_tags(form["RoleName"])
        if form.get("InstanceProfileName") and name != "CreateInstanceProfile":
            auth["profile"] = look.instance_profile(form["InstanceProfileName"])
    return auth


def remember_principal(state: State, form: dict[str, str], data: bytes) -> None:
    """An AssumeRole answer: its access key belongs to the role the request named."""
    found = re.search(rb"<AccessKeyId>([^<]+)</AccessKeyId>", data)
    if found and form.get("RoleArn"):
        with state.lock:
            state.principals[found.group(1).decode()] = form["RoleArn"]


def remember(state: State, service: str, name: str, form: dict[str, str], status: int | None) -> None:
    """What the strict layer must remember of a request the emulator accepted."""
    if service == "ec2" and name == "ModifyInstanceMetadataOptions" and status == 200:
        value = form.get("InstanceMetadataTags")
        if value and form.get("InstanceId"):
            with state.lock:
                state.metadata_tags[form["InstanceId"]] = value


def client_gone(sock) -> bool:
    """Whether the client closed its connection (readable with nothing to read)."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        return bool(readable) and sock.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


def handler(state: State):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # The answer's headers and body go out as two writes: with Nagle's algorithm on, the
        # body waits for the client's delayed ACK of the headers (about 40 ms per call, measured:
        # 60 ms through the proxy against 17 ms to moto directly), which slowed every test and
        # pushed the case table's calls past the functions' 2 s attempt timeout under load.
        disable_nagle_algorithm = True

        def log_message(self, *_args):
            pass

        def _send(self, status: int, body: bytes, headers: dict[str, str]):
            self.send_response(status)
            for k, v in headers.items():
                if k.lower() not in ("content-length", "transfer-encoding", "connection"):
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _control(self, body: bytes):
            path = self.path[len("/__proxy__/") :]
            if self.command == "POST" and path == "faults":
                rule = json.loads(body)
                with state.lock:
                    state.rules.append(rule)
                return self._send(200, b"{}", {"Content-Type": "application/json"})
            if self.command == "POST" and path == "outcome":
                kind = json.loads(body)["kind"]
                with state.lock:
                    state.outcomes[kind] = state.outcomes.get(kind, 0) + 1
                return self._send(200, b"{}", {"Content-Type": "application/json"})
            if self.command == "GET" and path == "log":
                with state.lock:
                    data = json.dumps(state.log).encode()
                return self._send(200, data, {"Content-Type": "application/json"})
            if self.command == "GET" and path == "principals":
                with state.lock:
                    data = json.dumps(state.principals).encode()
                return self._send(200, data, {"Content-Type": "application/json"})
            if self.command == "GET" and path == "summary":
                with state.lock:
                    data = json.dumps(summary(state)).encode()
                return self._send(200, data, {"Content-Type": "application/json"})
            return self._send(404, b"{}", {"Content-Type": "application/json"})

        def _handle(self):
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.path.startswith("/__proxy__/"):
                return self._control(body)
            m = CREDENTIAL.search(self.headers.get("Authorization", ""))
            access_key, service = (m.group(1), m.group(2)) if m else (None, "unknown")
            target = self.headers.get("X-Amz-Target")
            hub_json = None
            s3_json = None
            if target:
                name = target.split(".")[-1]
            elif service == "securityhub":
                # A REST-JSON API: the operation is the method and path (the service model's
                # requestUri), the parameters a JSON body.
                path = urllib.parse.urlparse(self.path).path.rstrip("/")
                name = SECURITY_HUB_OPERATIONS.get((self.command, path), "unknown")
                try:
                    hub_json = json.loads(body) if body else {}
                except ValueError:
                    hub_json = {}
            elif service == "s3":
                # A REST-XML API: the operation is the method, the path (path-style: /bucket/key)
                # and the query's subresource; the body is the object, never parameters.
                name, s3_json = s3_operation(self.command, self.path, dict(self.headers.items()))
            else:
                form = urllib.parse.parse_qs(body.decode(errors="replace")) if body else {}
                query = urllib.parse.parse_qs(urllib.parse.urlparse(self.path).query)
                name = (form.get("Action") or query.get("Action") or ["unknown"])[0]
            action = f"{service}:{name}"
            # Every form parameter, empty values kept (a tag's value may be empty).
            flat = (
                {k: v[0] for k, v in urllib.parse.parse_qs(body.decode(errors="replace"), keep_blank_values=True).items()}
                if body and not target and hub_json is None and s3_json is None
                else {}
            )
            rule = state.match(action, access_key, flat)
            if rule is None and state.rate_limited(service, name):
                rule = {"fault": "rate_limited"}
            app = APP_ID.search(self.headers.get("User-Agent", "") + " " + self.headers.get("X-Amz-User-Agent", ""))
            entry = {
                "action": action,
                "access_key": access_key,
                "fault": rule["fault"] if rule else None,
                "app": app.group(1) if app else None,
                "start": time.monotonic(),
            }
            scope = SCOPE_REGION.search(self.headers.get("Authorization", ""))
            if scope:
                entry["region"] = scope.group(1)
            if s3_json is not None:
                entry["json"] = s3_json
            if not target and body and hub_json is None and s3_json is None:
                entry["params"] = {k: v[0] for k, v in form.items() if len(v[0]) <= 200}
            if state.authorization and entry["app"] and hub_json is not None:
                # What BatchUpdateFindings' condition keys name: each field the request writes.
                entry["json"] = {"asff": asff_paths(hub_json)} if name == "BatchUpdateFindings" else {}
            if state.authorization and entry["app"] and not target and not name.startswith(READS) and service in ("ec2", "iam"):
                looked = time.monotonic()
                entry["auth"] = authorization_state(state, service, name, flat, dict(self.headers.items()))
                entry["auth_seconds"] = round(time.monotonic() - looked, 6)
            if state.authorization and entry["app"] and target and body:
                try:
                    request = json.loads(body)
                    entry["json"] = {
                        "TableName": request.get("TableName"),
                        "pk": ((request.get("Key") or {}).get("pk") or {}).get("S"),
                        # An SSM parameter's name (the pause switch).
                        "Name": request.get("Name") if isinstance(request.get("Name"), str) else None,
                    }
                except (ValueError, AttributeError):
                    entry["json"] = {}
            if rule and rule["fault"] in FAULTS:
                status, ec2_code, code, message = FAULTS[rule["fault"]]
                if target and code == "Throttling":
                    code = "ThrottlingException"
                if target and code == "AccessDenied":
                    code = "AccessDeniedException"
                ctype, payload = error_body(service, ec2_code if service == "ec2" else code, message, bool(target))
                entry["status"], entry["end"] = status, time.monotonic()
                with state.lock:
                    state.log.append(entry)
                return self._send(status, payload, {"Content-Type": ctype})
            if rule and rule["fault"] == "error":
                status = int(rule.get("status", 400))
                ctype, payload = error_body(service, rule["code"], rule.get("message", "injected"), bool(target))
                entry["status"], entry["end"] = status, time.monotonic()
                with state.lock:
                    state.log.append(entry)
                return self._send(status, payload, {"Content-Type": ctype})
            if rule and rule["fault"] == "delay":
                time.sleep(float(rule.get("seconds", 2)))
                # A request held up on its way: if the client gave up meanwhile, it never
                # reaches AWS (a "slow_answer" is the other case: applied, answered late).
                if client_gone(self.connection):
                    entry["status"], entry["end"], entry["client_gone"] = None, time.monotonic(), True
                    entry["dropped"] = True
                    with state.lock:
                        state.log.append(entry)
                    return None
            if state.strict and not target:
                looked = time.monotonic()
                refusal = strict_check(state, service, name, flat, dict(self.headers.items()))
                entry["strict_seconds"] = round(time.monotonic() - looked, 6)
                if refusal:
                    rule_name, status, code, message = refusal
                    if rule and rule["fault"] == "slow_answer":
                        time.sleep(float(rule.get("seconds", 2)))
                    ctype, payload = error_body(service, code, escape(message))
                    entry["fault"], entry["status"], entry["end"] = f"strict:{rule_name}", status, time.monotonic()
                    with state.lock:
                        state.log.append(entry)
                    try:
                        return self._send(status, payload, {"Content-Type": ctype})
                    except OSError:
                        entry["client_gone"] = True
                        return None
            conn = http.client.HTTPConnection(state.host, state.port, timeout=60)
            logged = False
            try:
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "keep-alive")}
                with item_lock(state, service, name, body):
                    conn.request(self.command, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                if state.strict:
                    remember(state, service, name, flat, resp.status)
                if service == "sts" and name == "AssumeRole" and resp.status == 200:
                    remember_principal(state, flat, data)
                if rule and rule["fault"] == "slow_answer":
                    # The emulator has applied the call; the answer comes late.
                    time.sleep(float(rule.get("seconds", 2)))
                entry["status"], entry["end"] = resp.status, time.monotonic()
                with state.lock:
                    state.log.append(entry)
                logged = True
                self._send(resp.status, data, dict(resp.getheaders()))
            except OSError:
                # The client gave up (a delay past its timeout): nothing to answer.
                if logged:
                    entry["client_gone"] = True
                else:
                    entry["status"], entry["end"] = None, time.monotonic()
                    with state.lock:
                        state.log.append(entry)
            finally:
                conn.close()

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _handle

    return Handler


# DynamoDB's writes of one item, which moto must apply one at a time (State.item_locks).
DYNAMODB_ITEM_WRITES = {"PutItem", "UpdateItem", "DeleteItem"}


def item_lock(state: State, service: str, name: str, body: bytes):
    """The lock of the item a DynamoDB write names (its table and key), or none."""
    if service != "dynamodb" or name not in DYNAMODB_ITEM_WRITES:
        return contextlib.nullcontext()
    try:
        request = json.loads(body or b"{}")
        key = request.get("Key") or request.get("Item") or {}
        item = json.dumps([request.get("TableName"), key.get("pk"), key.get("sk")], sort_keys=True)
    except (ValueError, AttributeError):
        return contextlib.nullcontext()
    with state.lock:
        return state.item_locks.setdefault(item, threading.Lock())


def summary(state: State) -> dict:
    faults = [e for e in state.log if e["fault"] and not e["fault"].startswith("strict:")]
    destructive = sorted({e["action"] for e in state.log if is_destructive(e)})
    refusals: dict[str, int] = {}
    for e in state.log:
        if (e["fault"] or "").startswith("strict:"):
            rule = e["fault"][len("strict:") :]
            refusals[rule] = refusals.get(rule, 0) + 1
    return {
        "calls": len(state.log),
        "faults_injected": len(faults),
        "destructive_calls": destructive,
        "outcomes": dict(state.outcomes),
        "strict": state.strict,
        "strict_refusals": refusals,
    }


def s3_operation(method: str, path: str, headers: dict) -> tuple[str, dict]:
    """An S3 request's operation (the service model's method, path and subresource) and what the
    IAM check needs of it: the bucket, the key, and the conditional-write header."""
    url = urllib.parse.urlparse(path)
    bucket, _, key = urllib.parse.unquote(url.path).lstrip("/").partition("/")
    query = urllib.parse.parse_qs(url.query, keep_blank_values=True)
    if key:
        name = {"PUT": "PutObject", "GET": "GetObject", "HEAD": "HeadObject", "DELETE": "DeleteObject"}.get(method, "unknown")
        if "retention" in query:
            name = {"PUT": "PutObjectRetention", "GET": "GetObjectRetention"}.get(method, "unknown")
    elif "versions" in query:
        name = "ListObjectVersions"
    elif "object-lock" in query:
        name = {"PUT": "PutObjectLockConfiguration", "GET": "GetObjectLockConfiguration"}.get(method, "unknown")
    elif method == "GET":
        name = "ListObjects"
    else:
        name = {"PUT": "CreateBucket", "DELETE": "DeleteBucket", "HEAD": "HeadBucket"}.get(method, "unknown")
    lowered = {k.lower(): v for k, v in headers.items()}
    return name, {"bucket": bucket, "key": key, "if-none-match": lowered.get("if-none-match")}


# Security Hub's operations the tool and its tests call: (method, path) -> name, from the service
# model (botocore's securityhub/2018-10-26/service-2.json, each operation's http requestUri).
SECURITY_HUB_OPERATIONS = {
    ("POST", "/findings"): "GetFindings",
    ("PATCH", "/findings/batchupdate"): "BatchUpdateFindings",
    ("POST", "/findings/import"): "BatchImportFindings",
    ("POST", "/accounts"): "EnableSecurityHub",
    ("GET", "/accounts"): "DescribeHub",
}


def asff_paths(request: dict) -> dict:
    """The ASFF syntax paths a BatchUpdateFindings request writes, with their values: what IAM puts
    in `securityhub:ASFFSyntaxPath/<path>`
    (https://docs.aws.amazon.com/securityhub/latest/userguide/finding-update-batchupdatefindings.html)."""
    out = {}
    for field, value in request.items():
        if field == "FindingIdentifiers":
            continue
        if isinstance(value, dict):
            for sub, v in value.items():
                out[f"{field}.{sub}"] = v
        else:
            out[field] = value
    return out


class _Server(ThreadingHTTPServer):
    # A burst of functions connects at once: a listen backlog beyond the standard library's 5, so
    # that the harness drops no connection (AWS's endpoints throttle a burst, they do not drop it).
    daemon_threads = True
    request_queue_size = 256


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="fault-injecting proxy in front of the AWS emulator")
    p.add_argument("--upstream", required=True)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--ec2-token-buckets", action="store_true", help="enforce EC2's request rate limits")
    p.add_argument("--lenient", action="store_true", help="turn the strict layer off: the emulator's answer, whatever AWS would answer")
    p.add_argument(
        "--authorization",
        action="store_true",
        help="record what IAM reads to authorize each function's write (for tests/tools/iam_check.py)",
    )
    args = p.parse_args(argv)
    state = State(args.upstream, args.seed, args.ec2_token_buckets, strict=not args.lenient, authorization=args.authorization)
    server = _Server(("127.0.0.1", args.port), handler(state))
    print(server.server_address[1], flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
