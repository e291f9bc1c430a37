"""The local stack: the emulator in this process with the stack's resources (case table, topic,
subscriber queue, state machines), the functions served, and one execution run to its end."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import time
import types
from pathlib import Path

from local import HarnessError, securityhub, sfn_integration, snapshot_copy, snapshot_lock, ssm_agent
from local.lambda_service import LambdaService, function_env
from local.report import execution_outcome, states_from_history
from local.template import (
    ACCOUNT,
    COLLECTION_MACHINE,
    EVIDENCE_COPY_MACHINE,
    FUNCTIONS,
    LOCAL_NAMES,
    MISSING_TOPIC,
    REGION,
    RELEASE_MACHINE,
    ROOT,
    STATE_MACHINE,
    function_settings,
    load_template,
    state_machine_definition,
)
from local.tls_front import TlsFront
from local.world import put_in_service, simulate_compromised_instance

MEMBER_ACCOUNT = "210987654321"


MEMBER_ROLE = "ec2-quarantine-member"


MEMBER_EXTERNAL_ID = "local-run-external-id"


MEMBER_TEMPLATE = ROOT / "helper_scripts" / "member-account-role.yaml"


# The simulated forensic account: helper_scripts/forensic-account.yaml deployed there, its key
# encrypting the copies.
FORENSIC_ACCOUNT = "999988887777"


FORENSIC_TEMPLATE = ROOT / "helper_scripts" / "forensic-account.yaml"


# How long the workflow waits between two passes of the copy step in the local run (moto's
# copies complete at once; on AWS, FORENSIC_COPY_WAIT_SECONDS' default, 300).
LOCAL_COPY_WAIT_SECONDS = "1"


def create_case_table(dynamodb, template: dict) -> str:
    """The case table as the template declares it (keys, billing), under its local name."""
    props = template["Resources"]["CaseTable"]["Properties"]
    name = LOCAL_NAMES["CaseTable"]
    dynamodb.create_table(
        TableName=name,
        KeySchema=props["KeySchema"],
        AttributeDefinitions=props["AttributeDefinitions"],
        BillingMode=props["BillingMode"],
    )
    return name


def create_pause_switch(ssm, template: dict) -> str:
    """The pause switch as the template declares it (value, pattern, description), under its
    local name."""
    props = template["Resources"]["PauseSwitch"]["Properties"]
    name = LOCAL_NAMES["PauseSwitch"]
    ssm.put_parameter(
        Name=name, Type=props["Type"], Value=props["Value"], AllowedPattern=props["AllowedPattern"], Description=props["Description"]
    )
    return name


def create_collector_document(ssm, template: dict, resource: str = "VolatileEvidenceCollector") -> str:
    """One of the template's SSM documents (the volatile-data collector, or the memory imager) as
    the template declares it (its content, type and target type), under its local name."""
    props = template["Resources"][resource]["Properties"]
    name = LOCAL_NAMES[resource]
    ssm.create_document(
        Name=name,
        Content=json.dumps(props["Content"]),
        DocumentType=props["DocumentType"],
        DocumentFormat="JSON",
        TargetType=props["TargetType"],
    )
    return name


# Stands in for AVML in the local run: the real binary would image this machine's whole memory
# (and the run has no musl build of it). Called only as the document calls AVML, it writes a
# header and the simulated instance's /proc/meminfo and a MiB of random bytes to its output.
AVML_STANDIN = """#!/bin/sh
[ "$*" = --version ] && { echo "avml 0.21.0 (a stand-in)"; exit 0; }
[ "$#" = 3 ] && [ "$1" = acquire ] && [ "$2" = --compress ] && [ "$3" = /dev/stdout ] || { echo "unexpected arguments: $*" >&2; exit 64; }
echo "ec2-quarantine local run: a stand-in for AVML 0.21.0 (not a memory image)"
cat /proc/meminfo
head -c 1048576 /dev/urandom
"""


def upload_avml_standin(s3, bucket: str) -> str:
    """The stand-in for AVML where deploy.sh puts the x86_64 binary (the simulated instance's
    architecture), and its SHA-256 (the template's AvmlSha256X8664)."""
    body = AVML_STANDIN.encode()
    sha = hashlib.sha256(body).hexdigest()
    # Written once, with an integrity header (the bucket's policy and default Object Lock retention).
    s3.put_object(
        Bucket=bucket,
        Key=f"tools/avml-0.21.0-x86_64-unknown-linux-musl-{sha}",
        Body=body,
        ChecksumAlgorithm="SHA256",
        IfNoneMatch="*",
    )
    return sha


def create_evidence_bucket(s3, template: dict, parameters: dict[str, str]) -> str:
    """The evidence bucket as the template declares it: Object Lock on, versioned, its default
    retention in the mode and for the days the stack's parameters give (the template's
    CompliantEvidence condition), under its local name."""
    props = template["Resources"]["EvidenceBucket"]["Properties"]
    params = template["Parameters"]
    lock_mode = parameters.get("SnapshotLockMode", params["SnapshotLockMode"]["Default"])
    days = int(parameters.get("SnapshotLockDays", params["SnapshotLockDays"]["Default"]))
    rule = props["ObjectLockConfiguration"]["Rule"]["DefaultRetention"]
    if rule["Mode"] != {"Fn::If": ["CompliantEvidence", "COMPLIANCE", "GOVERNANCE"]} or rule["Days"] != {"Ref": "SnapshotLockDays"}:
        raise HarnessError("the template's EvidenceBucket retention changed: update create_evidence_bucket")
    name = LOCAL_NAMES["EvidenceBucket"]
    s3.create_bucket(Bucket=name, ObjectLockEnabledForBucket=props["ObjectLockEnabled"])
    s3.put_object_lock_configuration(
        Bucket=name,
        ObjectLockConfiguration={
            "ObjectLockEnabled": "Enabled",
            "Rule": {"DefaultRetention": {"Mode": "COMPLIANCE" if lock_mode == "compliance" else "GOVERNANCE", "Days": days}},
        },
    )
    return name


def wait_for(sfn, execution_arn: str, timeout_s: float) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        d = sfn.describe_execution(executionArn=execution_arn)
        if d["status"] != "RUNNING":
            return d
        if time.monotonic() > deadline:
            raise HarnessError(f"the execution did not finish within {timeout_s:.0f} s")
        time.sleep(0.2)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def local_stack(
    bin_dir: Path,
    log_dir: Path,
    member_account: str | None = None,
    parameters: dict[str, str] | None = None,
    functions_endpoint=None,
    copies: int = 1,
    notify_fails: bool = False,
    forensic_account: bool = False,
):
    """The emulator with the stack's resources, the functions served, and a simulated instance.

    Yields a namespace with the boto3 clients, the Lambda service, the topic and subscriber
    queue, the state machine and the simulated instance; stops everything on the way out.
    `functions_endpoint(emulator_url)` gives the address the functions call instead (a recording
    or rate-limiting proxy, for the benchmarks); `copies` is how many processes serve each function.
    `notify_fails` points the notify function at a topic that does not exist, so it fails for good
    and the state machines' own fallback message is what reaches the subscriber queue.
    `forensic_account` deploys helper_scripts/forensic-account.yaml in a second account and
    configures the responder to copy the evidence there (as ForensicAccountId and
    ForensicKmsKeyArn would).
    """
    import boto3
    from moto import mock_aws
    from moto.server import ThreadedMotoServer

    for binary in FUNCTIONS:
        if not (bin_dir / binary).is_file():
            raise HarnessError(f"{bin_dir / binary} is missing: build the functions first (cargo test --no-run)")
    log_dir.mkdir(parents=True, exist_ok=True)
    # This process only ever talks to the in-process emulator.
    for var in [v for v in os.environ if v.startswith("AWS_ENDPOINT_URL") or v in ("AWS_PROFILE", "AWS_SESSION_TOKEN")]:
        del os.environ[var]
    os.environ.update(
        {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": REGION,
            "AWS_REGION": REGION,
            "AWS_EC2_METADATA_DISABLED": "true",
        }
    )
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    securityhub.patch()
    snapshot_lock.patch()
    snapshot_copy.patch()
    sfn_integration.patch()
    collection = (parameters or {}).get("VolatileEvidenceDocument") == "Collect"
    with mock_aws(config={"stepfunctions": {"execute_state_machine": True}}), contextlib.ExitStack() as helpers:
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
        server.start()
        emulator = f"http://127.0.0.1:{server._server.server_port}"
        service = LambdaService(REGION, ACCOUNT)
        try:
            os.environ["AWS_ENDPOINT_URL_LAMBDA"] = service.endpoint
            st = types.SimpleNamespace(service=service, emulator=emulator, agent=None)
            st.lambda_client = boto3.client("lambda", region_name=REGION)
            st.stack_outputs = {"ApprovalFunctionName": service.arn("approval")}
            st.ec2, st.iam, st.sns, st.sqs, st.sfn, st.ssm, st.securityhub = (
                boto3.client(s, region_name=REGION) for s in ("ec2", "iam", "sns", "sqs", "stepfunctions", "ssm", "securityhub")
            )
            # The stack's resources, as the template creates them.
            st.case_table = boto3.resource("dynamodb", region_name=REGION).Table(
                create_case_table(boto3.client("dynamodb", region_name=REGION), load_template())
            )
            st.pause_parameter = create_pause_switch(st.ssm, load_template())
            st.s3 = boto3.client("s3", region_name=REGION)
            st.evidence_bucket = create_evidence_bucket(st.s3, load_template(), parameters or {})
            st.topic = st.sns.create_topic(Name="ec2-quarantine-alerts")["TopicArn"]
            st.queue_url = st.sqs.create_queue(QueueName="security-team-inbox")["QueueUrl"]
            queue_arn = st.sqs.get_queue_attributes(QueueUrl=st.queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
            st.sns.subscribe(TopicArn=st.topic, Protocol="sqs", Endpoint=queue_arn)
            settings = {
                **function_settings(load_template(), parameters or {}, ACCOUNT),
                "ALERT_TOPIC_ARN": MISSING_TOPIC if notify_fails else st.topic,
                "CHAT_TOPIC_ARN": "",
                "EVIDENCE_BUCKET": st.evidence_bucket,
            }
            # The template's ChatTopic (condition HasChatTopic), with a queue standing in for the
            # chat channel.
            st.chat_queue_url = None
            if (parameters or {}).get("ChatNotifications") == "Enabled":
                settings["CHAT_TOPIC_ARN"] = st.sns.create_topic(Name="ec2-quarantine-chat")["TopicArn"]
                st.chat_queue_url = st.sqs.create_queue(QueueName="security-team-chat")["QueueUrl"]
                chat_queue = st.sqs.get_queue_attributes(QueueUrl=st.chat_queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
                st.sns.subscribe(TopicArn=settings["CHAT_TOPIC_ARN"], Protocol="sqs", Endpoint=chat_queue)
            if member_account:
                settings.update({"MEMBER_ROLE_NAME": MEMBER_ROLE, "MEMBER_ROLE_EXTERNAL_ID": MEMBER_EXTERNAL_ID})
            st.forensic = None
            if forensic_account:
                st.forensic = forensic_setup(FORENSIC_ACCOUNT)
                settings.update(
                    {
                        "FORENSIC_ACCOUNT_ID": FORENSIC_ACCOUNT,
                        "FORENSIC_KMS_KEY_ARN": st.forensic["key_arn"],
                        "FORENSIC_ROLE_NAME": st.forensic["role_name"],
                        "FORENSIC_COPY_WAIT_SECONDS": LOCAL_COPY_WAIT_SECONDS,
                    }
                )
            # The collector document (VolatileEvidenceDocument=Collect), which the collect
            # function sends, and a simulated agent on the simulated instance to run it
            # (local.ssm_agent): its archive goes to the bucket through an HTTPS front, as
            # presigned URLs are https:// on AWS (local.tls_front); every function reaches S3
            # there, trusting the run's CA only.
            if collection:
                document = create_collector_document(st.ssm, load_template())
                settings["VOLATILE_EVIDENCE_DOCUMENT"] = document
                settings["COLLECT_WAIT_SECONDS"] = LOCAL_COPY_WAIT_SECONDS
                front = TlsFront(server._server.server_port, log_dir / "tls")
                helpers.callback(front.stop)
                settings.update(AWS_ENDPOINT_URL_S3=front.endpoint, SSL_CERT_FILE=str(front.ca))
                trusted = {document: load_template()["Resources"]["VolatileEvidenceCollector"]["Properties"]["Content"]}
                # The memory imager (MemoryImages=Collect) after it, with a stand-in for AVML in
                # the bucket (local.ssm_agent gives the instance the volume it is sent to).
                if (parameters or {}).get("MemoryImages") == "Collect":
                    memory = create_collector_document(st.ssm, load_template(), "MemoryImageCollector")
                    settings["MEMORY_IMAGE_DOCUMENT"] = memory
                    settings["AVML_SHA256_X86_64"] = upload_avml_standin(st.s3, st.evidence_bucket)
                    trusted[memory] = load_template()["Resources"]["MemoryImageCollector"]["Properties"]["Content"]
                st.agent = helpers.enter_context(ssm_agent.running(log_dir / "agent", front.ca, trusted))
            env = function_env(functions_endpoint(emulator) if functions_endpoint else emulator, REGION, settings)
            for binary in FUNCTIONS:
                service.add(binary, bin_dir / binary, env, log_dir / f"{binary}.log", copies)
            sm_role = st.iam.create_role(
                RoleName="ec2-quarantine-state-machine",
                AssumeRolePolicyDocument=json.dumps(
                    {
                        "Version": "2012-10-17",
                        "Statement": [{"Effect": "Allow", "Principal": {"Service": "states.amazonaws.com"}, "Action": "sts:AssumeRole"}],
                    }
                ),
            )["Role"]["Arn"]
            arns = {b: service.arn(b) for b in FUNCTIONS}
            # The evidence copies' machine, which the containment machine starts (with a forensic account).
            st.copy_machine = st.sfn.create_state_machine(
                name="ec2-quarantine-evidence-copy",
                definition=state_machine_definition(arns, EVIDENCE_COPY_MACHINE, st.topic),
                roleArn=sm_role,
            )["stateMachineArn"]
            # The volatile-evidence collections' machine, which the containment machine starts
            # before it asks for an approval (VolatileEvidenceDocument=Collect).
            st.collection_machine = st.sfn.create_state_machine(
                name="ec2-quarantine-collection",
                definition=state_machine_definition(arns, COLLECTION_MACHINE, st.topic),
                roleArn=sm_role,
            )["stateMachineArn"]
            st.machine = st.sfn.create_state_machine(
                name="ec2-quarantine-containment",
                definition=state_machine_definition(
                    arns,
                    STATE_MACHINE,
                    st.topic,
                    forensic_copy=forensic_account,
                    copy_machine_arn=st.copy_machine,
                    collection_machine_arn=st.collection_machine,
                    collection=collection,
                ),
                roleArn=sm_role,
            )["stateMachineArn"]
            st.release_machine = st.sfn.create_state_machine(
                name="ec2-quarantine-release",
                definition=state_machine_definition(arns, RELEASE_MACHINE, st.topic),
                roleArn=sm_role,
            )["stateMachineArn"]
            st.target_ec2, st.target_iam = st.ec2, st.iam
            if member_account:
                st.target_ec2, st.target_iam = member_clients(member_account)
            st.sim = simulate_compromised_instance(st.target_ec2, st.target_iam)
            st.sim["account"] = member_account or ACCOUNT
            if st.agent:
                st.agent.manage(st.sim["instance_id"])
            st.service_clients = (None, None, None)
            if not member_account:
                st.service_clients = tuple(boto3.client(s, region_name=REGION) for s in ("autoscaling", "elbv2", "elb"))
                put_in_service(st.sim, *st.service_clients)
            yield st
        finally:
            service.stop()
            server.stop()
            os.environ.pop("AWS_ENDPOINT_URL_LAMBDA", None)


def _account_session(account: str):
    """A boto3 session acting in `account` of the emulator (moto keeps each account apart)."""
    import boto3

    sts = boto3.client("sts", region_name=REGION)
    c = sts.assume_role(RoleArn=f"arn:aws:iam::{account}:role/OrganizationAccountAccessRole", RoleSessionName="setup")["Credentials"]
    return boto3.Session(
        aws_access_key_id=c["AccessKeyId"],
        aws_secret_access_key=c["SecretAccessKey"],
        aws_session_token=c["SessionToken"],
        region_name=REGION,
    )


def forensic_setup(account: str) -> dict:
    """helper_scripts/forensic-account.yaml deployed in `account`, as a security team deploys
    it: its key's ARN, its role's name, and an EC2 client there (to read the copies)."""
    session = _account_session(account)
    cfn = session.client("cloudformation")
    cfn.create_stack(
        StackName="ec2-quarantine-forensic",
        TemplateBody=FORENSIC_TEMPLATE.read_text(),
        Parameters=[{"ParameterKey": "ResponderAccountId", "ParameterValue": ACCOUNT}],
        Capabilities=["CAPABILITY_NAMED_IAM"],
    )
    stack = cfn.describe_stacks(StackName="ec2-quarantine-forensic")["Stacks"][0]
    if stack["StackStatus"] != "CREATE_COMPLETE":
        raise HarnessError(f"the forensic template did not deploy on the emulator: {stack['StackStatus']}")
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
    return {
        "account": account,
        "key_arn": outputs["ForensicKmsKeyArn"],
        "role_name": outputs["CopierRoleName"],
        "ec2": session.client("ec2"),
    }


def member_clients(account: str):
    """Clients acting in a member account, whose member role comes from the member template."""
    import boto3

    sts = boto3.client("sts", region_name=REGION)
    c = sts.assume_role(RoleArn=f"arn:aws:iam::{account}:role/OrganizationAccountAccessRole", RoleSessionName="setup")["Credentials"]
    session = boto3.Session(
        aws_access_key_id=c["AccessKeyId"],
        aws_secret_access_key=c["SecretAccessKey"],
        aws_session_token=c["SessionToken"],
        region_name=REGION,
    )
    cfn = session.client("cloudformation")
    cfn.create_stack(
        StackName="ec2-quarantine-member",
        TemplateBody=MEMBER_TEMPLATE.read_text(),
        Parameters=[
            {"ParameterKey": "ResponderAccountId", "ParameterValue": ACCOUNT},
            {"ParameterKey": "ExternalId", "ParameterValue": MEMBER_EXTERNAL_ID},
        ],
        Capabilities=["CAPABILITY_NAMED_IAM"],
    )
    status = cfn.describe_stacks(StackName="ec2-quarantine-member")["Stacks"][0]["StackStatus"]
    if status != "CREATE_COMPLETE":
        raise HarnessError(f"the member template did not deploy on the emulator: {status}")
    return session.client("ec2"), session.client("iam")


def received_chat(st) -> list[dict]:
    """The chat notifications received (each the custom notification's JSON), oldest first."""
    out = []
    while st.chat_queue_url:
        messages = st.sqs.receive_message(QueueUrl=st.chat_queue_url, MaxNumberOfMessages=10).get("Messages", [])
        if not messages:
            break
        out += [json.loads(json.loads(m["Body"])["Message"]) for m in messages]
        st.sqs.delete_message_batch(
            QueueUrl=st.chat_queue_url, Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)]
        )
    return out


# The subject of the evidence-copy workflow's report (statemachine/evidence-copy.asl.json).
COPY_REPORT_SUBJECT = "[EVIDENCE COPIES]"


def received_notification(st) -> dict | None:
    """The containment's (or release's) notification; the evidence copies' reports, which come
    on their own time, are kept aside in `st.copy_reports`."""
    messages = st.sqs.receive_message(QueueUrl=st.queue_url, MaxNumberOfMessages=10).get("Messages", [])
    if not messages:
        return None
    st.sqs.delete_message_batch(
        QueueUrl=st.queue_url, Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)]
    )
    envelopes = [json.loads(m["Body"]) for m in messages]
    reports = [e for e in envelopes if (e.get("Subject") or "").startswith(COPY_REPORT_SUBJECT)]
    if reports:
        if not hasattr(st, "copy_reports"):
            st.copy_reports = []
        st.copy_reports += [{"subject": e.get("Subject"), "message": e.get("Message")} for e in reports]
    messages = [e for e in envelopes if e not in reports]
    if not messages:
        return None
    envelope = messages[0]
    return {
        "subject": envelope.get("Subject"),
        "message": envelope.get("Message"),
        "attributes": {k: v.get("Value") for k, v in (envelope.get("MessageAttributes") or {}).items()},
        "count": len(messages),
    }


def evidence_copies(st, timeout_s: float = 120) -> dict:
    """The evidence-copy executions the containments started, each waited for to its end, and
    the reports they sent to the team's inbox."""
    executions = st.sfn.list_executions(stateMachineArn=st.copy_machine)["executions"]
    ended = [wait_for(st.sfn, e["executionArn"], timeout_s) for e in executions]
    if not hasattr(st, "copy_reports"):
        st.copy_reports = []
    deadline = time.monotonic() + 10
    while len(st.copy_reports) < len(ended) and time.monotonic() < deadline:
        st.copy_reports += [m for m in received_messages(st) if m["subject"].startswith(COPY_REPORT_SUBJECT)]
    return {
        "executions": [{"name": e.get("name"), "status": e["status"]} for e in ended],
        "reports": [{"subject": r["subject"], "copies": json.loads(r["message"])} for r in st.copy_reports],
    }


def received_messages(st, wait_s: int = 1) -> list[dict]:
    """What the stack's topic delivered to the team's inbox since the last read (taken from it)."""
    out = []
    for m in st.sqs.receive_message(QueueUrl=st.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=wait_s).get("Messages", []):
        st.sqs.delete_message(QueueUrl=st.queue_url, ReceiptHandle=m["ReceiptHandle"])
        envelope = json.loads(m["Body"])
        out.append(
            {
                "subject": envelope.get("Subject") or "",
                "message": envelope.get("Message") or "",
                "attributes": {k: v.get("Value") for k, v in (envelope.get("MessageAttributes") or {}).items()},
            }
        )
    return out


def next_message(st, wanted, timeout_s: float = 60) -> dict:
    """The next message of the stack's topic that `wanted` accepts (the others are dropped)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for message in received_messages(st):
            if wanted(message):
                return message
    raise HarnessError(f"no such message within {timeout_s:.0f} s")


def execute(st, machine: str, payload: dict) -> tuple[dict, list[dict], dict | None]:
    """One execution of a state machine: its outcome, its states, and the notification it sent."""
    name = f"local-{time.time_ns()}"
    execution = st.sfn.start_execution(stateMachineArn=machine, name=name, input=json.dumps(payload))["executionArn"]
    return follow(st, execution)


def follow(st, execution: str) -> tuple[dict, list[dict], dict | None]:
    """A started execution to its end: its outcome, its states, and the notification it sent."""
    done = wait_for(st.sfn, execution, 180)
    history = st.sfn.get_execution_history(executionArn=execution, maxResults=1000)["events"]
    return execution_outcome(done, history), states_from_history(history), received_notification(st)
