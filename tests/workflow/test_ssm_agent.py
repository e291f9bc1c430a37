"""The simulated SSM agent (helper_scripts/local/ssm_agent.py) answers as Systems Manager does,
on moto in this process: what SendCommand refuses, the invocation's phases
(InvocationDoesNotExist, Pending, InProgress with ResponseCode -1 and no output, then the end),
the output cut at 24,000 and 8,000 characters, a script past its step's timeout, and only the
documents the harness trusts, as it trusts them
(https://docs.aws.amazon.com/systems-manager/latest/APIReference/API_GetCommandInvocation.html)."""

from __future__ import annotations

import json
import shutil
import time

import boto3
import pytest
from botocore.exceptions import ClientError
from local import ssm_agent
from moto import mock_aws

REGION = "us-east-1"
LOUD = "sleep 1; yes a | head -c 30000; yes b | head -c 10000 >&2; exit {{ Code }}"


def document(script: str, timeout_s: str = "60") -> dict:
    return {
        "schemaVersion": "2.2",
        "description": "test",
        "parameters": {"Code": {"type": "String", "default": "0", "allowedPattern": "^[0-9]$"}},
        "mainSteps": [{"action": "aws:runShellScript", "name": "run", "inputs": {"timeoutSeconds": timeout_s, "runCommand": [script]}}],
    }


def phases(ssm, command_id: str, instance_id: str, timeout_s: float = 60) -> list[dict]:
    """Every distinct answer of GetCommandInvocation until the end (errors as {"error": code})."""
    seen: list[dict] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            answer = ssm.get_command_invocation(CommandId=command_id, InstanceId=instance_id)
            phase = {k: answer[k] for k in ("Status", "StatusDetails", "ResponseCode")}
            phase["stdout"], phase["stderr"] = len(answer["StandardOutputContent"]), len(answer["StandardErrorContent"])
        except ClientError as e:
            phase = {"error": e.response["Error"]["Code"]}
        if not seen or seen[-1] != phase:
            seen.append(phase)
        if phase.get("Status") in ("Success", "Failed", "TimedOut"):
            return seen
        time.sleep(0.1)
    raise AssertionError(f"no end within {timeout_s} s: {seen}")


@pytest.fixture
def agent(tmp_path):
    if not shutil.which("unshare"):
        pytest.skip("unshare (util-linux) makes the simulated instance")
    with mock_aws():
        ssm = boto3.client("ssm", region_name=REGION)
        docs = {"loud": document(LOUD), "slow": document("sleep 30", timeout_s="2")}
        for name, content in docs.items():
            ssm.create_document(Name=name, Content=json.dumps(content), DocumentType="Command", DocumentFormat="JSON")
        ssm.create_document(Name="stranger", Content=json.dumps(document("id")), DocumentType="Command", DocumentFormat="JSON")
        with ssm_agent.running(tmp_path, None, docs) as a:
            a.manage("i-0123456789abcdef0")
            yield ssm


def test_an_invocation_goes_through_the_phases_aws_shows_and_its_output_is_cut(agent):
    command = agent.send_command(DocumentName="loud", InstanceIds=["i-0123456789abcdef0"], Parameters={"Code": ["3"]})["Command"]
    assert command["Status"] == "Pending"
    seen = phases(agent, command["CommandId"], "i-0123456789abcdef0")
    assert seen[0] == {"error": "InvocationDoesNotExist"}, seen
    assert [p.get("Status") for p in seen[1:]] == ["Pending", "InProgress", "Failed"], seen
    assert seen[2] == {"Status": "InProgress", "StatusDetails": "In Progress", "ResponseCode": -1, "stdout": 0, "stderr": 0}
    assert seen[-1] == {"Status": "Failed", "StatusDetails": "Failed", "ResponseCode": 3, "stdout": 24_000, "stderr": 8_000}
    [listed] = agent.list_commands(CommandId=command["CommandId"])["Commands"]
    assert listed["Status"] == "Failed" and listed["CompletedCount"] == 1 and listed["ErrorCount"] == 1


def test_a_script_past_its_steps_timeout_is_timed_out(agent):
    command = agent.send_command(DocumentName="slow", InstanceIds=["i-0123456789abcdef0"])["Command"]
    end = phases(agent, command["CommandId"], "i-0123456789abcdef0")[-1]
    assert (end["Status"], end["StatusDetails"]) == ("TimedOut", "Execution Timed Out"), end


@pytest.mark.parametrize(
    "ask,code",
    [
        ({"DocumentName": "loud", "InstanceIds": ["i-0123456789abcdef0"], "Parameters": {"Code": ["12"]}}, "InvalidParameters"),
        ({"DocumentName": "loud", "InstanceIds": ["i-0123456789abcdef0"], "Parameters": {"Code": ["1\n"]}}, "InvalidParameters"),
        ({"DocumentName": "loud", "InstanceIds": ["i-0123456789abcdef0"], "Parameters": {"Other": ["1"]}}, "InvalidParameters"),
        ({"DocumentName": "loud", "InstanceIds": ["i-0fffffffffffffff0"]}, "InvalidInstanceId"),
        ({"DocumentName": "missing", "InstanceIds": ["i-0123456789abcdef0"]}, "InvalidDocument"),
        ({"DocumentName": "stranger", "InstanceIds": ["i-0123456789abcdef0"]}, "InvalidDocument"),
    ],
    ids=["pattern", "newline", "undeclared", "unmanaged", "missing", "untrusted"],
)
def test_what_ssm_refuses_creates_nothing(agent, ask, code):
    with pytest.raises(ClientError) as refused:
        agent.send_command(**ask)
    assert refused.value.response["Error"]["Code"] == code
    assert agent.list_commands()["Commands"] == []


def test_a_trusted_name_with_other_content_is_not_run(agent):
    """Another local process can change a document in the emulator: the agent runs only the
    content it was given."""
    agent.update_document(Name="loud", Content=json.dumps(document("touch /tmp/owned")), DocumentVersion="$LATEST", DocumentFormat="JSON")
    agent.update_document_default_version(Name="loud", DocumentVersion="2")
    with pytest.raises(ClientError) as refused:
        agent.send_command(DocumentName="loud", InstanceIds=["i-0123456789abcdef0"])
    assert refused.value.response["Error"]["Code"] == "InvalidDocument"
