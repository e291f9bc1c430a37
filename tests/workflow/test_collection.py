"""The collection workflow (statemachine/collection.asl.json) with the collect function, on the
in-process emulator, as the containment workflow starts it before it asks for an approval: only
the instances that wait are collected, one command each, whatever the passes; the record is the
approval's; the report goes to the team.

moto runs no SSM agent (tests/README.md): the stack's simulated agent (helper_scripts/local/
ssm_agent.py) runs the document's script on a simulated instance (a PID and mount namespace with
an implant whose binary was deleted), and its archive reaches the bucket through the HTTPS front
(local/tls_front.py), as a presigned URL is used on AWS. The script's own findings are tested in
test_volatile_evidence.py; the step's answers to every SSM outcome in tests/collect.rs.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest
from local.stack import local_stack, received_messages, wait_for
from local.template import LOCAL_NAMES

ROOT = Path(__file__).resolve().parents[2]
BIN_DIR = Path(os.environ.get("FUNCTIONS_BIN_DIR") or Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "debug")
EXECUTION = "arn:aws:states:us-east-1:123456789012:execution:ec2-quarantine-containment:local-approval"


def approval_id(execution: str) -> str:
    """src/approval.rs `approval_id`: apr- and the first 8 bytes of the execution's SHA-256."""
    return "apr-" + hashlib.sha256(execution.encode()).hexdigest()[:16]


def plan_entry(sim: dict, decision: str) -> dict:
    return {
        "decision": decision,
        "reason": "",
        "named_as": "resource.instanceDetails.instanceId",
        "target": {
            "finding_id": "b2c4e6a8f0d24b6e8a0c2e4f6a8b0d2e",
            "finding_type": "Backdoor:EC2/C&CActivity.B!DNS",
            "severity": 8.0,
            "scope": {"partition": "aws", "account_id": sim["account"], "region": "us-east-1"},
            "instance_id": sim["instance_id"],
            "role_name": None,
            "instance_profile_arn": None,
            "vpc_ids": [],
        },
        "case": None,
        "already_contained_by": None,
        "contained_at": None,
    }


@pytest.fixture(scope="module")
def collected():
    if not (BIN_DIR / "collect").is_file():
        pytest.skip(f"{BIN_DIR} has no built functions")
    log_dir = Path(tempfile.mkdtemp(prefix="ec2-quarantine-collection-"))
    with local_stack(BIN_DIR, log_dir, parameters={"VolatileEvidenceDocument": "Collect"}) as st:
        waiting = plan_entry(st.sim, "await_approval")
        contained = plan_entry(st.sim, "contain")
        contained["target"]["instance_id"] = "i-0fffffffffffffff0"
        payload = {"finding_id": waiting["target"]["finding_id"], "execution": EXECUTION, "targets": [waiting, contained]}
        started = st.sfn.start_execution(stateMachineArn=st.collection_machine, name="local-approval", input=json.dumps(payload))
        ended = wait_for(st.sfn, started["executionArn"], 120)
        messages = received_messages(st, wait_s=2)
        record = st.case_table.get_item(
            Key={"pk": f"approval#{approval_id(EXECUTION)}", "sk": f"collection#{st.sim['instance_id']}"}, ConsistentRead=True
        ).get("Item")
        commands = st.ssm.list_commands()["Commands"]
        report = json.loads(record["report"]) if record else {}
        key = (report.get("archive") or {}).get("key")
        stored = st.s3.get_object(Bucket=st.evidence_bucket, Key=key)["Body"].read() if key else None
        seen = {"ended": ended, "messages": messages, "record": record, "commands": commands, "sim": st.sim, "stored": stored}
        # What SSM refuses, as AWS does (moto takes anything): a value outside its pattern, an
        # instance without the agent, a document that does not exist. Nothing is created.
        refused = {}
        asks = {
            "pattern": {"InstanceIds": [st.sim["instance_id"]], "Parameters": {"CaseId": ["apr-0123; reboot"]}},
            "newline": {"InstanceIds": [st.sim["instance_id"]], "Parameters": {"CaseId": [approval_id(EXECUTION) + "\n"]}},
            "undeclared": {"InstanceIds": [st.sim["instance_id"]], "Parameters": {"CaseId": [approval_id(EXECUTION)], "Extra": ["x"]}},
            "required": {"InstanceIds": [st.sim["instance_id"]], "Parameters": {}},
            "unmanaged": {"InstanceIds": ["i-0fffffffffffffff0"], "Parameters": {"CaseId": [approval_id(EXECUTION)]}},
        }
        for name, ask in asks.items():
            try:
                st.ssm.send_command(DocumentName=LOCAL_NAMES["VolatileEvidenceCollector"], **ask)
            except st.ssm.exceptions.ClientError as e:
                refused[name] = e.response["Error"]["Code"]
        try:
            st.ssm.send_command(DocumentName="not-a-document", InstanceIds=[st.sim["instance_id"]])
        except st.ssm.exceptions.ClientError as e:
            refused["document"] = e.response["Error"]["Code"]
        seen["refused"] = refused
        seen["commands_after"] = len(st.ssm.list_commands()["Commands"])
    return seen


def test_the_waiting_instance_gets_one_command_of_the_tools_document(collected):
    assert collected["ended"]["status"] == "SUCCEEDED", collected["ended"]
    [command] = collected["commands"]
    assert command["DocumentName"] == LOCAL_NAMES["VolatileEvidenceCollector"]
    assert command["InstanceIds"] == [collected["sim"]["instance_id"]], "the contained instance is not sent anything"
    assert command["Parameters"]["CaseId"] == [approval_id(EXECUTION)]
    [url] = command["Parameters"]["UploadUrl"]
    parsed = urlparse(url)
    assert parsed.path.endswith(f"/volatile/{approval_id(EXECUTION)}/{collected['sim']['instance_id']}.tar.gz")
    assert "X-Amz-Signature=" in parsed.query and "X-Amz-Expires=3600" in parsed.query


def test_the_record_is_the_approvals_and_the_team_hears_the_end(collected):
    record = collected["record"]
    assert record and record["command_id"] == collected["commands"][0]["CommandId"]
    report = json.loads(record["report"])
    assert report["status"] == "done" and report["command_status"] == "Success", report
    [message] = [m for m in collected["messages"] if m["subject"].startswith("[VOLATILE EVIDENCE]")]
    entries = json.loads(message["message"])
    assert [e["status"] for e in entries if e] == ["done"], entries
    assert entries[1] is None, "the contained instance has no entry"


def test_the_archive_in_the_bucket_is_the_one_the_instance_printed_and_holds_the_implant(collected):
    archive = json.loads(collected["record"]["report"])["archive"]
    stored = collected["stored"]
    digest = hashlib.sha256(stored).hexdigest()
    assert archive["verified"] is True
    assert archive["printed_sha256"] == archive["stored_sha256"] == digest and archive["stored_bytes"] == len(stored)
    assert archive["key"] == f"volatile/{approval_id(EXECUTION)}/{collected['sim']['instance_id']}.tar.gz"
    with tarfile.open(fileobj=io.BytesIO(stored), mode="r:gz") as tar:
        files = {Path(m.name).name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    # Each file's hash as the record holds it (printed by the script) is the file's in the archive.
    listed = {f["name"]: f["sha256"] for f in json.loads(collected["record"]["report"])["files"]}
    assert listed and all(hashlib.sha256(files[name]).hexdigest() == want for name, want in listed.items()), listed
    # The simulated instance's implant: its binary deleted from disk, found and hashed anyway.
    processes = files["processes.tsv"].decode()
    assert re.search(r"\timplant\t\S*/implant \(deleted\)\t", processes), processes
    # The simulated instance's own name and logs, not this machine's.
    assert "hostname: simulated-instance" in files["system.txt"].decode()
    auth = files["auth-log.txt"].decode()
    assert "sshd[4242]: Accepted publickey for attacker from 203.0.113.7" in auth
    assert auth.count("\n") <= 3, auth


def test_ssm_refuses_what_aws_refuses_and_creates_nothing(collected):
    assert collected["refused"] == {
        "pattern": "InvalidParameters",
        "newline": "InvalidParameters",
        "undeclared": "InvalidParameters",
        "required": "InvalidParameters",
        "unmanaged": "InvalidInstanceId",
        "document": "InvalidDocument",
    }
    assert collected["commands_after"] == len(collected["commands"]) == 1


def test_the_containment_workflow_starts_the_collection_before_it_asks():
    """The containment machine itself, with approvals on for the finding's type and
    VolatileEvidenceDocument=Collect: the collection starts (named after the execution, the
    instance waiting in its plan) before the request; nobody answers here, and the execution is
    stopped while it waits (test_local_run.py answers it)."""
    if not (BIN_DIR / "collect").is_file():
        pytest.skip(f"{BIN_DIR} has no built functions")
    from local.world import point_event_at

    log_dir = Path(tempfile.mkdtemp(prefix="ec2-quarantine-collection-"))
    parameters = {"VolatileEvidenceDocument": "Collect", "Approvals": "true", "ApprovalTypePrefixes": "Backdoor:EC2/"}
    with local_stack(BIN_DIR, log_dir, parameters=parameters) as st:
        event = point_event_at(json.loads((ROOT / "events" / "instance-backdoor.json").read_text()), st.sim, st.sim["instance_id"])
        containment = st.sfn.start_execution(stateMachineArn=st.machine, name="local-gated", input=json.dumps(event))["executionArn"]
        try:
            started = []
            deadline = time.monotonic() + 60
            while not started and time.monotonic() < deadline:
                started = st.sfn.list_executions(stateMachineArn=st.collection_machine)["executions"]
                time.sleep(0.5)
            [collection] = started
            assert collection["name"] == "local-gated"
            given = json.loads(st.sfn.describe_execution(executionArn=collection["executionArn"])["input"])
            assert given["execution"] == containment
            assert [t["decision"] for t in given["targets"]] == ["await_approval"]
            assert given["targets"][0]["target"]["instance_id"] == st.sim["instance_id"]
            ended = wait_for(st.sfn, collection["executionArn"], 120)
            assert ended["status"] == "SUCCEEDED", ended
        finally:
            st.sfn.stop_execution(executionArn=containment)


def test_a_collection_or_copy_that_cannot_start_is_told_to_the_team():
    """The containment machine with the collection's and the copies' machines missing (as after
    a failed deploy, or a role that may not start them): the request is sent all the same, the
    containment goes on once approved, and the team hears of each start that failed, from Step
    Functions itself, with the finding and the error's name."""
    if not (BIN_DIR / "collect").is_file():
        pytest.skip(f"{BIN_DIR} has no built functions")
    import aws_ops
    from local.run import APPROVAL_ID, LOCAL_APPROVER, is_request
    from local.template import ACCOUNT, FUNCTIONS, REGION, STATE_MACHINE, state_machine_definition
    from local.world import point_event_at

    log_dir = Path(tempfile.mkdtemp(prefix="ec2-quarantine-collection-"))
    parameters = {"VolatileEvidenceDocument": "Collect", "Approvals": "true", "ApprovalTypePrefixes": "Backdoor:EC2/"}
    with local_stack(BIN_DIR, log_dir, parameters=parameters, forensic_account=True) as st:
        missing = f"arn:aws:states:{REGION}:{ACCOUNT}:stateMachine:"
        definition = state_machine_definition(
            {b: st.service.arn(b) for b in FUNCTIONS},
            STATE_MACHINE,
            st.topic,
            forensic_copy=True,
            copy_machine_arn=missing + "copies-missing",
            collection_machine_arn=missing + "collection-missing",
            collection=True,
        )
        role = st.iam.get_role(RoleName="ec2-quarantine-state-machine")["Role"]["Arn"]
        machine = st.sfn.create_state_machine(name="ec2-quarantine-broken-starts", definition=definition, roleArn=role)["stateMachineArn"]
        event = point_event_at(json.loads((ROOT / "events" / "instance-backdoor.json").read_text()), st.sim, st.sim["instance_id"])
        execution = st.sfn.start_execution(stateMachineArn=machine, name="local-broken", input=json.dumps(event))["executionArn"]
        messages, deadline = [], time.monotonic() + 120
        while not any(is_request(m) for m in messages) and time.monotonic() < deadline:
            messages += received_messages(st)
        [request] = [m for m in messages if is_request(m)]
        approval = APPROVAL_ID.search(request["message"]).group(1)
        aws_ops.answer_approval(st.lambda_client, st.service.arn("approval"), approval, True, LOCAL_APPROVER, "test")
        ended = wait_for(st.sfn, execution, 180)
        messages += received_messages(st, wait_s=2)
    finding = event["detail"]["id"]
    assert ended["status"] == "SUCCEEDED", ended
    subjects = [m["subject"] for m in messages]
    assert f"[VOLATILE EVIDENCE] NOT STARTED {finding}" in subjects, subjects
    assert f"[EVIDENCE COPIES] NOT STARTED {finding}" in subjects, subjects
    assert subjects.index(f"[VOLATILE EVIDENCE] NOT STARTED {finding}") < subjects.index(request["subject"]), "told before it asks"
    for tag in ("[VOLATILE EVIDENCE]", "[EVIDENCE COPIES]"):
        [notice] = [m for m in messages if m["subject"] == f"{tag} NOT STARTED {finding}"]
        assert execution in notice["message"] and finding in notice["message"], notice
        assert "StateMachineDoesNotExist" in notice["message"], "the error's name"


def test_an_approval_answered_while_the_collection_runs_is_not_held_back_by_it():
    """The person approves at once: the containment goes on and ends while the collection is
    still under way (the simulated agent holds it), which then ends on its own."""
    if not (BIN_DIR / "collect").is_file():
        pytest.skip(f"{BIN_DIR} has no built functions")
    import aws_ops
    from local.run import APPROVAL_ID, LOCAL_APPROVER, is_request
    from local.world import point_event_at

    log_dir = Path(tempfile.mkdtemp(prefix="ec2-quarantine-collection-"))
    parameters = {"VolatileEvidenceDocument": "Collect", "Approvals": "true", "ApprovalTypePrefixes": "Backdoor:EC2/"}
    with local_stack(BIN_DIR, log_dir, parameters=parameters) as st:
        st.agent.released.clear()
        event = point_event_at(json.loads((ROOT / "events" / "instance-backdoor.json").read_text()), st.sim, st.sim["instance_id"])
        containment = st.sfn.start_execution(stateMachineArn=st.machine, name="local-early", input=json.dumps(event))["executionArn"]
        messages, deadline = [], time.monotonic() + 60
        while not any(is_request(m) for m in messages) and time.monotonic() < deadline:
            messages += received_messages(st)
        [request] = [m for m in messages if is_request(m)]
        aws_ops.answer_approval(
            st.lambda_client, st.service.arn("approval"), APPROVAL_ID.search(request["message"]).group(1), True, LOCAL_APPROVER, "test"
        )
        contained = wait_for(st.sfn, containment, 120)
        [collection] = st.sfn.list_executions(stateMachineArn=st.collection_machine)["executions"]
        while_contained = st.sfn.describe_execution(executionArn=collection["executionArn"])["status"]
        st.agent.released.set()
        collected = wait_for(st.sfn, collection["executionArn"], 120)
        record = st.case_table.get_item(
            Key={"pk": f"approval#{approval_id(containment)}", "sk": f"collection#{st.sim['instance_id']}"}, ConsistentRead=True
        ).get("Item")
    assert contained["status"] == "SUCCEEDED", contained
    assert while_contained == "RUNNING", "the containment did not wait for the collection"
    assert collected["status"] == "SUCCEEDED" and json.loads(record["report"])["status"] == "done", record
