"""The whole workflow, offline: every event in events/ through the EventBridge rule of
template.yaml, the state machine of statemachine/, and the Rust functions, on the emulator.

Run by helper_scripts/test.sh after the Rust build; FUNCTIONS_BIN_DIR names the built binaries.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
from pathlib import Path

import cases
import pytest
from local import run as local_run
from local.report import render
from local.stack import MEMBER_ACCOUNT
from local.template import (
    ACCOUNT,
    COLLECTION_MACHINE_SUBSTITUTION,
    COLLECTION_SUBSTITUTION,
    COPY_MACHINE_SUBSTITUTION,
    FORENSIC_SUBSTITUTION,
    FUNCTIONS,
    TOPIC_SUBSTITUTION,
    load_template,
)
from local.world import SIM_GROUP

ROOT = Path(__file__).resolve().parents[2]

BIN_DIR = Path(os.environ.get("FUNCTIONS_BIN_DIR") or Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "debug")
EVENTS = ROOT / "events"

# What each finding event must lead to. Every event file is listed (a test checks it), so a new
# sample cannot go untested.
CONTAINED = {"matched": True, "status": "SUCCEEDED", "verdict": "contained"}
EXPECTED = {
    "credential-exfiltration.json": CONTAINED,
    "instance-backdoor.json": CONTAINED,
    # Labelled TARGET by GuardDuty, as real findings of this type are: the instance is acting.
    "cryptomining-dns.json": CONTAINED,
    "low-severity-ssh-probe.json": {"matched": False},
    "eks-runtime-cryptomining.json": {"matched": True, "status": "SUCCEEDED", "verdict": "skipped"},
    "port-probe-target.json": {"matched": True, "status": "SUCCEEDED", "verdict": "notify_only"},
    # Runtime Monitoring on an EC2 instance, and Malware Protection for EC2.
    "runtime-reverse-shell.json": CONTAINED,
    "runtime-crypto-miner.json": CONTAINED,
    "malware-on-volume.json": CONTAINED,
    # Medium: under the default threshold; notify only by default when the threshold lets it in.
    "behavior-unusual-port.json": {"matched": False},
    # Extended Threat Detection: a group of two, and one over the blast-radius cap.
    "attack-sequence-instance-group.json": {**CONTAINED, "instances": 2},
    "attack-sequence-above-cap.json": {"matched": True, "status": "SUCCEEDED", "verdict": "notify_only"},
}
# Inputs of one function, not finding events.
FUNCTION_INPUTS = {
    "notify-input.json": "notify",
    "release-request.json": "release",
    "security-hub-input.json": "security-hub",
    "approval-decide.json": "approval",
    "collect-input.json": "collect",
}


def run(name: str, **kwargs) -> dict:
    return local_run.run(EVENTS / name, BIN_DIR, local_run.Scenario(**kwargs))


def state(report: dict, name: str) -> dict:
    return next(s for s in report["states"] if s["name"] == name)


# The metrics' contract (src/telemetry.rs): each name's unit and dimensions. The dashboard and any
# alarm on them match these exactly (a metric is its name and its whole set of dimensions).
METRICS = {
    "StepOutcome": ("Count", {"Step", "Outcome"}),
    "StepDuration": ("Milliseconds", {"Step"}),
    "Findings": ("Count", {"Step", "FindingType", "Verdict"}),
    "TimeToIsolation": ("Milliseconds", {"Step"}),
    "RailApplied": ("Count", {"Step", "Rail"}),
    "Retries": ("Count", {"Step"}),
    "Throttles": ("Count", {"Step"}),
}
NAMESPACE = "ec2-quarantine/ec2-quarantine"


def metrics(report: dict, name: str, **dimensions) -> list[dict]:
    """The metrics of that name the run emitted whose dimensions include those given; each
    checked against the contract first."""
    for m in report["metrics"]:
        unit, names = METRICS[m["metric"]]
        assert (m["unit"], set(m["dimensions"]), m["namespace"]) == (unit, names, NAMESPACE), m
        # Bounded dimensions: never an instance, account, finding or volume id.
        assert not any(re.search(r"\b(i|vol|snap|eni)-[0-9a-f]{8}|[0-9]{12}|[0-9a-f]{32}", str(v)) for v in m["dimensions"].values()), m
    return [m for m in report["metrics"] if m["metric"] == name and all(m["dimensions"].get(k) == v for k, v in dimensions.items())]


def values(found: list[dict]) -> list[float]:
    return [v for m in found for v in m["values"]]


def test_every_event_file_has_an_expected_outcome():
    files = {p.name for p in EVENTS.glob("*.json")}
    assert files == set(EXPECTED) | set(FUNCTION_INPUTS)


def test_the_state_machine_is_the_deployed_one():
    template = load_template()
    sm = template["Resources"]["ContainmentStateMachine"]["Properties"]
    assert sm["DefinitionUri"] == "statemachine/containment.asl.json"
    release = template["Resources"]["ReleaseStateMachine"]["Properties"]
    assert release["DefinitionUri"] == "statemachine/release.asl.json"
    substitutions = set(sm["DefinitionSubstitutions"]) | set(release["DefinitionSubstitutions"])
    copies = template["Resources"]["EvidenceCopyStateMachine"]["Properties"]
    assert copies["DefinitionUri"] == "statemachine/evidence-copy.asl.json"
    substitutions |= set(copies["DefinitionSubstitutions"])
    collections = template["Resources"]["CollectionStateMachine"]["Properties"]
    assert collections["DefinitionUri"] == "statemachine/collection.asl.json"
    substitutions |= set(collections["DefinitionSubstitutions"])
    assert substitutions == set(FUNCTIONS.values()) | {
        TOPIC_SUBSTITUTION,
        FORENSIC_SUBSTITUTION,
        COPY_MACHINE_SUBSTITUTION,
        COLLECTION_MACHINE_SUBSTITUTION,
        COLLECTION_SUBSTITUTION,
    }
    # The collection starts only with VolatileEvidenceDocument=Collect, as the local stack sets it.
    assert sm["DefinitionSubstitutions"][COLLECTION_SUBSTITUTION] == {"Fn::If": ["HasVolatileCollection", "on", "off"]}
    assert sm["DefinitionSubstitutions"][COLLECTION_MACHINE_SUBSTITUTION] == {"Ref": "CollectionStateMachine"}
    # The evidence copies start where a forensic account is configured, as the local run sets them.
    assert sm["DefinitionSubstitutions"][FORENSIC_SUBSTITUTION] == {"Fn::If": ["HasForensicAccount", "on", "off"]}
    assert sm["DefinitionSubstitutions"][COPY_MACHINE_SUBSTITUTION] == {"Ref": "EvidenceCopyStateMachine"}
    # The fallback message goes to the alert topic, the one the notify function publishes to.
    for machine in (sm, release, copies, collections):
        assert machine["DefinitionSubstitutions"][TOPIC_SUBSTITUTION] == {"Ref": "AlertTopic"}
    notify_env = template["Resources"]["NotifyFunction"]["Properties"]["Environment"]["Variables"]
    assert notify_env["ALERT_TOPIC_ARN"] == {"Ref": "AlertTopic"}
    binaries = {
        r["Metadata"]["BuildProperties"]["Binary"] for r in template["Resources"].values() if r["Type"] == "AWS::Serverless::Function"
    }
    # Every function but the approval link's page, which a function URL invokes, never a state
    # machine.
    assert binaries == set(FUNCTIONS) | {"approval-link"}


@pytest.mark.parametrize("name", sorted(n for n, e in EXPECTED.items() if e == CONTAINED))
def test_a_compromised_instance_is_contained(name):
    report = run(name)
    assert report["rule"]["matched"]
    assert report["execution"]["status"] == "SUCCEEDED", report["execution"]
    sim = report["simulated"]
    for step in ("Triage", "Isolate", "Deregister", "Snapshot", "DenyRole"):
        s = state(report, step)
        assert (s["output"]["triage"] if step == "Triage" else s["output"])["status"] == "done", s
        assert s["attempts"] == 1 and not s["errors"], s

    after = report["emulator"]["after"]
    [group] = after["quarantine_groups"]
    assert group["ingress_rules"] == 0 and group["egress_rules"] == 0
    assert after["interface_groups"] == {eni: [group["id"]] for eni in sim["interfaces"]}
    assert after["instance"]["termination_protection"] is True
    assert after["instance"]["shutdown_behavior"] == "stop"
    assert report["emulator"]["before"]["instance"]["deleted_on_termination"], "the simulated volumes start deletable"
    assert after["instance"]["deleted_on_termination"] == [], "no volume goes with the instance"
    assert sorted(s["volume_id"] for s in after["snapshots"]) == sorted(sim["volumes"])
    assert all(s["tags"]["ec2-quarantine:instance-id"] == sim["instance_id"] for s in after["snapshots"])
    assert "arn:aws:iam::123456789012:policy/ec2-quarantine/ec2-quarantine-DenyAll" in after["role"]["attached_policies"]
    assert after["role"]["inline_policies"] == ["ec2-quarantine-revoke-older-sessions"]
    assert after["instance"]["instance_profile"].endswith("/ec2-quarantine/ec2-quarantine-quarantined")
    # Out of service: Standby without a replacement, out of the target group and the Classic LB.
    assert after["auto_scaling"] == [{"group": SIM_GROUP, "desired": 0, "instances": [[sim["instance_id"], "Standby"]]}]
    assert report["emulator"]["before"]["targets"] and after["targets"] == []
    assert report["emulator"]["before"]["classic"] and after["classic"] == []

    n = report["notification"]
    assert n["count"] == 1
    assert n["attributes"]["verdict"] == "contained"
    assert n["subject"].startswith("[CONTAINED] " + sim["instance_id"])
    for eni in sim["interfaces"]:
        assert f"{eni} isolated" in n["message"]
    assert report["execution"]["output"]["notification"]["verdict"] == "contained"
    # The set's manifest, once, in the object-locked evidence bucket: named by the SHA-256 of its
    # bytes (which S3 kept as the object's checksum), listing the snapshots taken, and shown in
    # the case record and the notification.
    [manifest] = report["evidence"]
    assert manifest["key"] == f"cases/{report['cases'][0]['case_id']}/manifest-{manifest['sha256']}.json"
    assert base64.b64decode(manifest["checksum_sha256"]).hex() == manifest["sha256"]
    assert manifest["lock_mode"] == "GOVERNANCE" and manifest["retain_until"]
    assert sorted(s["snapshot_id"] for s in manifest["manifest"]["snapshots"]) == sorted(s["id"] for s in after["snapshots"])
    assert manifest["manifest"]["instance_id"] == sim["instance_id"]
    assert f"SHA-256 {manifest['sha256']}" in n["message"]
    shown = f"manifest s3://{report['evidence_bucket']}/{manifest['key']} version {manifest['version_id']}, SHA-256 {manifest['sha256']}"
    assert shown in cases.render_case(report["cases"][0])

    # What CloudWatch would extract from the functions' logs: the verdict by finding type, the
    # time from the finding's updatedAt (the local run sends it as GuardDuty does, now) to every
    # interface quarantined, and each step's outcome and duration.
    finding_type = report["finding"]["type"]
    assert values(metrics(report, "Findings", Step="triage", FindingType=finding_type, Verdict="contain")) == [1]
    [isolated] = values(metrics(report, "TimeToIsolation", Step="isolate"))
    assert 0 < isolated < report["wall_seconds"] * 1000, isolated
    for step in ("triage", "isolate", "deregister", "snapshot", "deny-role", "notify"):
        # Notify's answer has no status: the function answered.
        outcome = "answered" if step == "notify" else "done"
        assert values(metrics(report, "StepOutcome", Step=step, Outcome=outcome)) == [1], step
        [took] = values(metrics(report, "StepDuration", Step=step))
        assert 0 < took < report["wall_seconds"] * 1000, (step, took)
    assert not metrics(report, "RailApplied")
    assert "TimeToIsolation{Step=isolate} " in render(report)


def test_the_evidence_is_copied_to_the_forensic_account_after_the_report():
    report = run("instance-backdoor.json", forensic_account=True)
    assert report["execution"]["status"] == "SUCCEEDED", report["execution"]
    after = report["emulator"]["after"]
    sources = sorted(s["id"] for s in after["snapshots"])
    forensic = report["forensic"]
    # One copy per snapshot, in the forensic account, encrypted with its key, naming its source.
    assert sorted(c["source"] for c in forensic["copies"]) == sources, forensic
    assert all(c["state"] == "completed" and c["encrypted"] and c["kms_key_id"] == forensic["key_arn"] for c in forensic["copies"])
    # Each source may be used by the forensic account alone.
    assert forensic["shared_with"] == {s: [forensic["account"]] for s in sources}
    # Started after the notification, in a workflow of its own that the containment does not
    # wait for: two passes (the copies requested, a wait, the copies completed), then its report
    # to the team's inbox.
    names = [s["name"] for s in report["states"]]
    assert names.index("Notify") < names.index("StartEvidenceCopy") < names.index("Done"), names
    copies = report["evidence_copy"]
    assert [e["status"] for e in copies["executions"]] == ["SUCCEEDED"], copies
    [sent] = copies["reports"]
    assert sent["subject"] == f"[EVIDENCE COPIES] finding {report['cases'][0]['findings'][0]['finding_id']}", sent
    [last] = sent["copies"]
    assert (last["status"], last["finished"], last["pass"]) == ("already_done", True, 1), last
    assert sorted(c["source_snapshot_id"] for c in last["copies"]) == sources
    assert {c["state"] for c in last["copies"]} == {"completed"}
    # The case lists each copy beside its source, and the last pass's report.
    [case] = report["cases"]
    [step] = [s for s in case["steps"] if s["step"] == "evidence-copy"]
    assert sorted(c.split(" ")[0] for c in step["created"]) == sources
    shown = cases.render_case(case)
    for c in forensic["copies"]:
        assert f"copy of {c['source']} in {forensic['account']} us-east-1: {c['snapshot_id']}, completed" in shown, shown


def test_while_an_approval_is_awaited_the_volatile_evidence_is_collected_and_its_hashes_kept():
    """deploy.sh local --approval approve --collect: the containment workflow starts the
    collection before it asks; the simulated agent runs the tool's document on the instance; the
    archive lands in the Object Lock bucket; the person answers once it has ended; the instance
    is then contained, and its case lists the collection with the archive's and files' hashes."""
    report = run("instance-backdoor.json", approval="approve", parameters={"VolatileEvidenceDocument": "Collect"})
    assert report["execution"]["status"] == "SUCCEEDED", report["execution"]
    names = [s["name"] for s in report["states"]]
    assert names.index("StartCollection") < names.index("AskApproval"), names
    # The finding counted once, as it was first triaged; no time to isolation measuring the
    # person's wait, though the instance was isolated after the answer.
    assert [(m["dimensions"]["Verdict"], m["values"]) for m in metrics(report, "Findings")] == [("await_approval", [1])]
    assert values(metrics(report, "StepOutcome", Step="isolate", Outcome="done")) == [1]
    assert not metrics(report, "TimeToIsolation")
    collection = report["collection"]
    assert [e["status"] for e in collection["executions"]] == ["SUCCEEDED"], collection
    assert collection["team_report"]["subject"].startswith("[VOLATILE EVIDENCE]")
    [record] = collection["records"]
    assert record["approval_id"] == report["approval"]["approval_id"] and record["status"] == "done", record
    archive = record["report"]["archive"]
    # The hash the instance printed is the object's the bucket holds, read back by the harness.
    [stored] = [o for o in report["evidence"] if o["key"] == archive["key"]]
    assert archive["verified"] and archive["printed_sha256"] == archive["stored_sha256"] == stored["sha256"], (archive, stored)
    assert stored["lock_mode"] == "GOVERNANCE", "the archive is kept under the bucket's default retention"
    assert {f["name"] for f in record["report"]["files"]} >= {"processes.tsv", "binaries.tsv", "sockets.txt", "auth-log.txt"}
    # Contained after the answer, and the case shows the collection an investigator looks for.
    after = report["emulator"]["after"]
    [group] = after["quarantine_groups"]
    assert after["interface_groups"] == {eni: [group["id"]] for eni in report["simulated"]["interfaces"]}
    [case] = report["cases"]
    assert [c["command_id"] for c in case["collections"]] == [record["command_id"]]
    shown = cases.render_case(case)
    assert f"SHA-256 {archive['stored_sha256']} ({archive['stored_bytes']} bytes), verified" in shown, shown
    assert all(f"file {f['name']}: SHA-256 {f['sha256']}" in shown for f in record["report"]["files"])


def test_after_the_volatile_evidence_a_memory_image_lands_on_its_own_volume_then_a_locked_snapshot():
    """deploy.sh local --approval approve --collect (MemoryImages=Collect too): after the volatile
    evidence, the collect function creates a volume for the image, attaches it, sends the memory
    document (the simulated agent gives the instance the volume as a loop device, and a stand-in
    for AVML writes the image), detaches it, snapshots and locks the snapshot; the image on the
    volume is the one whose length and hash the command printed, and the case shows it all."""
    report = run(
        "instance-backdoor.json", approval="approve", parameters={"VolatileEvidenceDocument": "Collect", "MemoryImages": "Collect"}
    )
    assert report["execution"]["status"] == "SUCCEEDED", report["execution"]
    [record] = report["collection"]["records"]
    memory = record["memory"]
    assert memory["status"] == "done", memory
    assert memory["command_status"] == "Success" and memory["memory_mib"] == 1024 and memory["volume_size_gib"] == 3
    image = memory["image"]
    assert image["avml_exit"] == 0 and image["device"] == memory["device"].replace("/dev/sd", "/dev/xvd")
    # What the stand-in wrote to the volume (the agent's loop device) is the image the record holds.
    [volume_file] = Path(report["logs"]).glob(f"agent/{memory['command_id']}-*/{memory['volume_id']}.img")
    with volume_file.open("rb") as f:
        written = f.read(image["bytes"])
    assert hashlib.sha256(written).hexdigest() == image["sha256"]
    assert written.startswith(b"ec2-quarantine local run: a stand-in for AVML 0.21.0")
    # The volume came off the instance and stays; its snapshot is locked.
    assert memory["lock"]["state"] == "governance", memory
    assert memory["snapshot_id"] and memory["volume_id"]
    [case] = report["cases"]
    shown = cases.render_case(case)
    assert f"image: {image['bytes']} bytes, SHA-256 {image['sha256']}" in shown, shown
    assert f"snapshot {memory['snapshot_id']}: locked (governance" in shown, shown


def test_an_attack_sequence_contains_every_instance_it_names_with_one_notification():
    report = run("attack-sequence-instance-group.json")
    assert report["rule"]["matched"]
    assert report["execution"]["status"] == "SUCCEEDED", report["execution"]
    instances = report["instances"]
    assert len(instances) == 2, "as many simulated instances as the finding names"
    groups = set()
    for i in instances:
        after = i["after"]
        [group] = after["quarantine_groups"]
        groups.add(group["id"])
        assert after["interface_groups"] == {eni: [group["id"]] for eni in i["before"]["interface_groups"]}, i["instance_id"]
        assert after["instance"]["termination_protection"] is True
        assert len(after["snapshots"]) == 2 and all(s["tags"]["ec2-quarantine:instance-id"] == i["instance_id"] for s in after["snapshots"])
        assert after["instance"]["instance_profile"].endswith("/ec2-quarantine/ec2-quarantine-quarantined")
    assert len(groups) == 1, "one quarantine group for the VPC"
    # One case per instance, one notification for the finding that names each.
    assert sorted(c["instance_id"] for c in report["case_list"]) == sorted(i["instance_id"] for i in instances)
    n = report["notification"]
    assert n["count"] == 1
    assert n["subject"].startswith("[CONTAINED] 2 instances - GuardDuty Critical AttackSequence:EC2/")
    assert n["attributes"]["instance_count"] == "2" and "instance_id" not in n["attributes"]
    for i in instances:
        assert f"Instance {i['instance_id']}: CONTAINED" in n["message"]
        for eni in i["after"]["interface_groups"]:
            assert f"{eni} isolated" in n["message"]
    assert "EC2_NETWORK_INTERFACE" in n["message"], "what was passed over is named"
    # The steps ran once per instance, each on its own target.
    assert report["invocations"]["isolate"] == 2 and report["invocations"]["triage"] == 1
    assert report["invocations"]["notify"] == 1


def test_an_attack_sequence_over_the_cap_contains_nothing_and_says_why():
    report = run("attack-sequence-above-cap.json")
    assert report["execution"]["status"] == "SUCCEEDED", report["execution"]
    assert len(report["instances"]) == 12
    for i in report["instances"]:
        assert i["before"] == i["after"], i["instance_id"]
    assert {k for k, v in report["invocations"].items() if v} == {"triage", "notify", "security-hub"}
    assert report["case_list"] == []
    n = report["notification"]
    assert n["attributes"]["verdict"] == "notify_only"
    assert "names 12 instances, more than MaxInstancesPerFinding (10)" in n["message"]
    assert "Nothing was changed on any instance." in n["message"]
    # Raised, the same finding contains all twelve.
    raised = run("attack-sequence-above-cap.json", parameters={"MaxInstancesPerFinding": "12"})
    assert raised["execution"]["status"] == "SUCCEEDED", raised["execution"]
    assert raised["notification"]["attributes"]["verdict"] == "contained"
    for i in raised["instances"]:
        [group] = i["after"]["quarantine_groups"]
        assert set(map(tuple, i["after"]["interface_groups"].values())) == {(group["id"],)}, i["instance_id"]


def test_an_anomaly_is_only_reported_by_default():
    report = run("behavior-unusual-port.json", severity_threshold="4")
    assert report["rule"]["matched"]
    assert report["notification"]["attributes"]["verdict"] == "notify_only"
    assert "notify-only prefix Behavior:EC2/" in report["notification"]["message"]
    assert report["emulator"]["before"] == report["emulator"]["after"]


def test_a_low_severity_finding_does_not_match_the_rule():
    report = run("low-severity-ssh-probe.json")
    assert report["rule"]["matched"] is False
    assert report["execution"] is None and report["notification"] is None
    assert report["emulator"]["before"] == report["emulator"]["after"]


def test_the_threshold_parameter_is_the_rules():
    report = run("low-severity-ssh-probe.json", severity_threshold="1")
    assert report["rule"]["matched"] is True


def test_a_finding_that_names_no_instance_is_notified_as_skipped():
    report = run("eks-runtime-cryptomining.json")
    assert report["rule"]["matched"], "a runtime finding type matches the rule"
    assert report["execution"]["status"] == "SUCCEEDED"
    names = [s["name"] for s in report["states"]]
    assert "NotContained" in names and "Isolate" not in names
    assert {k for k, v in report["invocations"].items() if v} == {"triage", "notify", "security-hub"}, "no containment step ran"
    n = report["notification"]
    assert n["attributes"]["verdict"] == "skipped"
    assert 'resource type "EKSCluster" names no EC2 instance' in n["message"]
    assert report["emulator"]["before"] == report["emulator"]["after"]


def test_a_failing_step_is_caught_and_the_rest_is_reported():
    report = run("credential-exfiltration.json", missing_instance=True)
    ex = report["execution"]
    assert ex["status"] == "FAILED" and ex["error"] == "ContainmentFailed", ex
    caught = state(report, "IsolateFailed")["output"]
    assert caught["Error"] == "InstanceNotFound", caught
    assert json.loads(caught["Cause"])["errorType"] == "InstanceNotFound"
    assert state(report, "Isolate")["attempts"] == 1, "a final error is not retried"
    assert state(report, "DenyRole")["output"]["status"] == "done", "the role is contained all the same"
    assert "not exist" in state(report, "Triage")["output"]["triage"]["reason"]
    n = report["notification"]
    assert n["attributes"]["verdict"] == "failed"
    assert "[FAILED] Network isolation: InstanceNotFound" in n["message"]
    assert "[done] IAM role containment" in n["message"]
    assert report["emulator"]["before"]["interface_groups"] == report["emulator"]["after"]["interface_groups"]


def test_notify_alone_with_its_sample_input():
    result = local_run.invoke("notify", EVENTS / "notify-input.json", BIN_DIR)
    assert result["function_error"] is None, result
    assert result["result"]["verdict"] == "partial"
    assert result["notification"]["attributes"]["verdict"] == "partial"
    assert "[FAILED] IAM role containment: AccessDenied" in result["notification"]["message"]


def test_security_hub_alone_with_its_sample_input():
    # The emulator's account has not enabled Security Hub: the step says so and changes nothing.
    result = local_run.invoke("security-hub", EVENTS / "security-hub-input.json", BIN_DIR)
    assert result["function_error"] is None, result
    assert result["result"]["status"] == "skipped"
    assert "Security Hub is not enabled in account 123456789012 region us-east-1" in result["result"]["reason"], result


def test_approval_alone_with_its_sample_decision():
    # The sample answers a request that does not exist: refused, and nothing changes.
    result = local_run.invoke("approval", EVENTS / "approval-decide.json", BIN_DIR)
    assert result["function_error"] is None, result
    assert result["result"]["status"] == "refused", result
    assert result["result"]["message"] == "there is no approval request apr-0123456789abcdef", result


def test_a_function_error_reaches_the_caller_as_a_lambda_function_error():
    result = local_run.invoke("isolate", EVENTS / "notify-input.json", BIN_DIR)
    assert result["function_error"] == "Unhandled"
    assert result["result"]["errorType"] == "InvalidEvent", result


def test_a_member_account_instance_is_contained_from_the_administrator_account():
    report = run("credential-exfiltration.json", member_account=True)
    assert report["accounts"] == {"responder": ACCOUNT, "instance": MEMBER_ACCOUNT}
    assert report["execution"]["status"] == "SUCCEEDED", report["execution"]
    after = report["emulator"]["after"]
    [group] = after["quarantine_groups"]
    assert after["interface_groups"] == {eni: [group["id"]] for eni in report["simulated"]["interfaces"]}
    assert f"arn:aws:iam::{MEMBER_ACCOUNT}:policy/ec2-quarantine/ec2-quarantine-DenyAll" in after["role"]["attached_policies"]
    assert report["administrator_account"] == {"quarantine_groups": 0, "forensic_snapshots": 0, "deny_all_policies": 0}
    n = report["notification"]
    assert n["attributes"]["verdict"] == "contained"
    assert n["attributes"]["account_id"] == MEMBER_ACCOUNT
    # The member role's credentials never reach a log.
    logs = "".join(p.read_text(errors="replace") for p in Path(report["logs"]).glob("*.log"))
    assert "SecretAccessKey" not in logs and "session_token" not in logs.lower()


def unchanged(before: dict, after: dict) -> bool:
    return before == after


def test_a_probed_target_is_only_reported():
    report = run("port-probe-target.json")
    assert report["execution"]["status"] == "SUCCEEDED", report["execution"]
    assert state(report, "Triage")["output"]["triage"]["decision"] == "notify_only"
    assert "Isolate" not in [s["name"] for s in report["states"]]
    assert report["emulator"]["before"] == report["emulator"]["after"]
    n = report["notification"]
    assert n["attributes"]["verdict"] == "notify_only"
    assert "target of the activity" in n["message"] and "probed" in n["message"]


def test_an_acting_instance_labelled_target_is_contained_and_the_evidence_named():
    report = run("cryptomining-dns.json")
    triage = state(report, "Triage")["output"]["triage"]
    assert triage["decision"] == "contain" and triage["side"] == "acting", triage
    assert "cryptocurrency" in triage["evidence"], triage["evidence"]
    assert "Contained because:" in report["notification"]["message"]


def test_an_exempt_instance_is_only_reported():
    report = run("instance-backdoor.json", exempt=True)
    assert state(report, "Triage")["output"]["triage"]["decision"] == "notify_only"
    assert report["emulator"]["before"] == report["emulator"]["after"]
    assert "ec2-quarantine-exempt" in report["notification"]["message"]


def test_a_paused_responder_reports_the_finding_and_changes_nothing():
    report = run("instance-backdoor.json", paused=True)
    assert report["paused"]["paused"] is True and report["paused"]["reason"] == "local run: a scanner mistaken for an attacker"
    assert report["execution"]["status"] == "SUCCEEDED", report["execution"]
    assert state(report, "Triage")["output"]["triage"]["decision"] == "notify_only"
    assert report["emulator"]["before"] == report["emulator"]["after"]
    assert report["case_list"] == [], "no case while paused"
    n = report["notification"]
    assert n["attributes"]["verdict"] == "notify_only"
    assert "the responder is paused" in n["message"]
    assert "Safety rail: paused since " in n["message"] and "(reason given: local run: a scanner mistaken for an attacker)" in n["message"]
    assert values(metrics(report, "RailApplied", Step="triage", Rail="pause")) == [1]
    assert values(metrics(report, "Findings", Step="triage", Verdict="notify_only")) == [1]
    assert not metrics(report, "TimeToIsolation")


def test_the_rate_cap_contains_as_many_instances_as_it_allows_and_reports_the_rest():
    # The sample sequence names two instances: with a cap of one, one is contained.
    report = run("attack-sequence-instance-group.json", parameters={"MaxContainmentsPerHour": "1"})
    assert report["execution"]["status"] == "SUCCEEDED", report["execution"]
    plan = state(report, "Triage")["output"]["triage"]["targets"]
    assert sorted(p["decision"] for p in plan) == ["contain", "notify_only"], plan
    assert len(report["case_list"]) == 1, "a case for the contained instance, none for the other"
    n = report["notification"]
    assert "Safety rail: rate cap reached: 1 automatic containment in account 123456789012" in n["message"], n["message"]
    assert "the rate cap is reached" in n["message"]


def test_the_chat_topic_gets_the_report_as_a_chatbot_custom_notification():
    report = run("attack-sequence-instance-group.json", parameters={"ChatNotifications": "Enabled"})
    assert report["execution"]["status"] == "SUCCEEDED", report["execution"]
    [card] = report["chat"]
    # The custom notification schema: https://docs.aws.amazon.com/chatbot/latest/adminguide/custom-notifs.html
    assert card["version"] == "1.0" and card["source"] == "custom"
    content, metadata = card["content"], card["metadata"]
    assert content["textType"] == "client-markdown"
    assert content["title"].startswith("CONTAINED: GuardDuty Critical 9.0 AttackSequence:EC2/")
    cases = sorted(c["case_id"] for c in report["case_list"])
    for i in report["instances"]:
        assert f"`{i['instance_id']}`: CONTAINED, case `" in content["description"]
    assert any(c in content["description"] for c in cases)
    assert len(content["description"]) <= 3000
    assert metadata["threadId"] == state(report, "Triage")["output"]["triage"]["targets"][0]["target"]["finding_id"]
    assert metadata["summary"] == report["notification"]["subject"]
    assert sorted(metadata["relatedResources"]) == sorted(i["instance_id"] for i in report["instances"])
    assert metadata["additionalContext"]["account"] == ACCOUNT
    assert any(step.startswith("Read the case: `helper_scripts/deploy.sh case i-") for step in content["nextSteps"])
    # The alert topic still has the whole text report, and nothing else.
    assert report["notification"]["count"] == 1 and not report["notification"]["message"].startswith("{")


def test_without_a_chat_topic_nothing_else_is_published():
    report = run("instance-backdoor.json")
    assert "chat" not in report
    assert "chat" not in report["execution"]["output"]["notification"]


def test_where_security_hub_holds_the_finding_it_gets_the_verdict_and_the_case():
    report = run("instance-backdoor.json", security_hub=True)
    assert report["execution"]["status"] == "SUCCEEDED", report["execution"]
    hub = report["security_hub"]
    assert hub["before"] == {"workflow_status": "NEW", "note": None}
    [case] = report["case_list"]
    assert hub["after"]["workflow_status"] == "NOTIFIED"
    assert hub["after"]["note"]["UpdatedBy"] == "ec2-quarantine"
    assert hub["after"]["note"]["Text"].startswith(f"ec2-quarantine: CONTAINED. Case {case['case_id']} ")
    output = state(report, "SecurityHub")["output"]["security_hub"]
    assert output["status"] == "done" and output["workflow_status"] == "NOTIFIED", output


def test_without_security_hub_the_step_is_skipped_and_the_verdict_stands():
    report = run("instance-backdoor.json")
    assert report["execution"]["status"] == "SUCCEEDED", report["execution"]
    output = state(report, "SecurityHub")["output"]["security_hub"]
    assert output["status"] == "skipped"
    assert output["reason"].startswith("Security Hub is not enabled in account 123456789012 region us-east-1"), output


def test_a_finding_not_contained_by_policy_gets_the_note_and_stays_new():
    report = run("port-probe-target.json", security_hub=True)
    assert report["execution"]["status"] == "SUCCEEDED", report["execution"]
    after = report["security_hub"]["after"]
    assert after["workflow_status"] == "NEW", "left for an analyst to triage"
    assert after["note"]["Text"].startswith("ec2-quarantine: NOT CONTAINED BY POLICY.")


def test_a_dry_run_reports_every_step_and_changes_nothing():
    report = run("instance-backdoor.json", parameters={"DryRun": "true"})
    assert report["execution"]["status"] == "SUCCEEDED", report["execution"]
    for step in ("Isolate", "Deregister", "Snapshot", "DenyRole"):
        assert state(report, step)["output"]["status"] == "dry_run", step
    assert report["emulator"]["before"] == report["emulator"]["after"], "the emulator's state is unchanged"
    n = report["notification"]
    assert n["attributes"]["verdict"] == "dry_run"
    for call in ("ec2:ModifyNetworkInterfaceAttribute", "autoscaling:EnterStandby", "ec2:CreateSnapshots", "iam:AttachRolePolicy"):
        assert f"would call {call}" in n["message"], call


def test_the_role_action_parameter_reaches_the_functions():
    report = run("credential-exfiltration.json", parameters={"RoleAction": "revoke-sessions"})
    role = report["emulator"]["after"]["role"]
    assert not any("DenyAll" in p for p in role["attached_policies"])
    assert role["inline_policies"] == ["ec2-quarantine-revoke-older-sessions"]
    assert "revoke-sessions" in report["notification"]["message"]


def test_a_second_finding_changes_nothing_and_release_restores_the_state_before():
    report = run("instance-backdoor.json", repeat=True, release=True)
    second = report["second_finding"]
    assert second["execution"]["status"] == "SUCCEEDED"
    assert second["after"] == report["emulator"]["after"], "nothing created twice"
    [case] = report["cases"]
    assert f"Case: {case['case_id']}" in report["notification"]["message"]
    assert f"Already contained (case {case['case_id']} at " in second["notification"]["message"]
    assert len(case["findings"]) == 2, "one case, which the second finding joined"
    assert case["status"] == "released" and case["releases"][0]["outcome"] == "released"
    # The run prints the case table and the case as deploy.sh cases / case show them on AWS.
    shown = render(report)
    assert "The case table (deploy.sh cases on AWS):" in shown
    row = next(line for line in shown.splitlines() if line.strip().startswith(case["case_id"]))
    assert "released" in row and case["instance_id"] in row, row
    assert f"Case {case['case_id']}: instance {case['instance_id']}" in shown
    rel = report["release"]
    assert rel["execution"]["status"] == "SUCCEEDED", rel["execution"]
    assert rel["restored"], rel["differences"]
    assert rel["snapshots_kept"] == 2
    assert rel["notification"]["attributes"]["verdict"] == "released"


def test_release_alone_with_its_sample_input():
    result = local_run.invoke("release", EVENTS / "release-request.json", BIN_DIR)
    assert result["function_error"] is None, result
    assert result["result"]["status"] == "skipped", "an instance never contained has nothing to release"
