"""The local run's scenarios and its command line (`python -m local.run`, as deploy.sh runs it)."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import signal
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import aws_ops
import cases

from local import HarnessError, securityhub
from local.deployed import deployed_stack, finding_id_of, started_executions
from local.metrics import emitted
from local.report import render, shown
from local.stack import (
    MEMBER_ACCOUNT,
    evidence_copies,
    execute,
    follow,
    local_stack,
    next_message,
    received_chat,
    received_messages,
    received_notification,
    wait_for,
)
from local.template import ACCOUNT, DEFAULT_EVENT, FUNCTIONS, ROOT, function_settings, load_template, rule_matches, rule_pattern
from local.world import (
    MISSING_INSTANCE,
    administrator_state,
    emulator_state,
    more_instances,
    point_event_at,
    point_sample_at,
    point_sequence_at,
    sequence_instances,
)


@dataclass(frozen=True)
class Scenario:
    """What a run does around the finding, each part one function below.

    `missing_instance` points the event at an instance that does not exist; `member_account`
    puts the instance in a member account; `exempt` tags the instance with the exemption tag
    first ([`exempt_instance`]); `repeat` sends a second finding (another id) for the same
    instance after the first ([`send_again`]); `release` then runs the release state machine and
    compares the emulator's state with the state before containment ([`release_and_compare`]);
    `notify_fails` points the notify function at a topic that does not exist (the fallback
    path). `paused` pauses the responder first, as `deploy.sh pause` does ([`pause_responder`]).
    `security_hub` enables Security Hub in the instance's account and region and puts the finding
    there as GuardDuty does ([`in_security_hub`]); the report then holds the finding's workflow
    status and note before and after.
    `approval` turns approvals on for the finding's type and answers the request as a person
    would: `approve` or `reject` with `deploy.sh approve|reject`'s call, or `timeout`, nobody,
    with the shortest wait the template takes ([`answer_request`]). On the local path, with
    `--parameter VolatileEvidenceDocument=Collect`, the person first waits for the volatile
    evidence the workflow collects meanwhile ([`collected_meanwhile`]): the simulated agent runs
    the tool's document on the simulated instance. `burst` N (the deployed path) sets the rate cap to N and sends N+1
    findings at once, each for an instance of its own: N are contained, the last waits for
    approval, answered as `approval` says or left to time out ([`capped_burst`]).
    `forensic_account` (the local path) deploys helper_scripts/forensic-account.yaml in a
    second account and configures the responder to copy the evidence there; the report then
    lists the copies as that account holds them ([`forensic_copies`]).
    `parameters` are the template's, as `sam deploy --parameter-overrides` takes them."""

    missing_instance: bool = False
    member_account: bool = False
    exempt: bool = False
    repeat: bool = False
    release: bool = False
    notify_fails: bool = False
    paused: bool = False
    security_hub: bool = False
    approval: str | None = None
    burst: int = 0
    parameters: dict[str, str] = field(default_factory=dict)
    severity_threshold: str | None = None
    forensic_account: bool = False

    def overrides(self, finding_type: str | None = None) -> dict[str, str]:
        out = dict(self.parameters)
        if self.severity_threshold is not None:
            out["SeverityThreshold"] = self.severity_threshold
        if self.approval or self.burst:
            out["Approvals"] = "true"
        if self.approval and not self.burst:
            # The finding's own family (`Backdoor:EC2/`, say) is what the approval rule gates.
            family = (finding_type or "").partition("/")
            if not family[1]:
                raise HarnessError(f"--approval needs a finding with a type such as Backdoor:EC2/..., not {finding_type!r}")
            out["ApprovalTypePrefixes"] = family[0] + "/"
        if self.approval == "timeout" or (self.burst and not self.approval):
            out["ApprovalTimeoutSeconds"] = str(SHORTEST_APPROVAL_WAIT_S)
        if self.burst:
            out["MaxContainmentsPerHour"] = str(self.burst)
        return out


# The shortest ApprovalTimeoutSeconds the template takes: how long `timeout` waits.
SHORTEST_APPROVAL_WAIT_S = 60

# How the request message names its id (src/steps/approval.rs, the request's text).
APPROVAL_ID = re.compile(r"deploy\.sh approve (apr-[0-9a-f]{16})")

# Who answers in the local run (deploy.sh passes the caller's identity, as STS gives it).
LOCAL_APPROVER = f"arn:aws:iam::{ACCOUNT}:user/local-run"


def run(
    event_path: Path, bin_dir: Path, scenario: Scenario | None = None, log_dir: Path | None = None, release_dir: Path | None = None
) -> dict:
    """The whole workflow on one finding event, as EventBridge and Step Functions would run it,
    in the given scenario. With `release_dir` (the release bootstraps), on the deployed path
    (deployed.py): template.yaml deployed with `sam deploy`, the finding through the deployed
    rule; otherwise on the in-process emulator with the state machine files and `bin_dir`."""
    scenario = scenario or Scenario()
    if release_dir and (scenario.member_account or scenario.notify_fails or scenario.forensic_account):
        raise HarnessError(
            "the deployed path runs the stack as deployed: no member account, no failing notify, no forensic account (use the default path)"
        )
    if not release_dir and scenario.burst:
        raise HarnessError("a burst publishes its findings to the deployed rule: add --deployed")
    if scenario.approval or scenario.burst:
        # Each of these sends no request, or runs a single finding the burst replaces.
        others = {
            "--paused": scenario.paused,
            "--exempt": scenario.exempt,
            "--missing-instance": scenario.missing_instance,
            "--security-hub": scenario.security_hub,
            "--repeat": scenario.repeat,
            "--release": scenario.release,
            "--dry-run": scenario.parameters.get("DryRun") == "true",
        }
        taken = {"Approvals", "ApprovalTypePrefixes", "ApprovalTimeoutSeconds", "MaxContainmentsPerHour"} & set(scenario.parameters)
        if any(others.values()) or taken:
            named = [k for k, v in others.items() if v] + [f"--parameter {k}" for k in sorted(taken)]
            raise HarnessError(
                f"--approval and --burst set the approval rules themselves and need a request to answer: not with {', '.join(named)}"
            )
    raw = json.loads(event_path.read_text())
    if scenario.burst and sequence_instances(raw):
        raise HarnessError("a burst sends one finding per instance: give a finding that names one instance, not a group")
    log_dir = log_dir or Path(tempfile.mkdtemp(prefix="ec2-quarantine-local-"))
    detail = raw.get("detail") if isinstance(raw.get("detail"), dict) else {}
    overrides = scenario.overrides(detail.get("type"))
    report: dict = {"event_file": shown(event_path), "logs": str(log_dir), "parameters": overrides}
    if scenario.notify_fails:
        report["notify_fails"] = True
    pattern = rule_pattern(load_template(), overrides)
    started = time.monotonic()
    member = MEMBER_ACCOUNT if scenario.member_account else None
    try:
        stack = (
            deployed_stack(release_dir, log_dir, overrides)
            if release_dir
            else local_stack(
                bin_dir, log_dir, member, overrides, notify_fails=scenario.notify_fails, forensic_account=scenario.forensic_account
            )
        )
        report["path"] = "deployed" if release_dir else "local"
        with stack as st:
            if release_dir:
                report["deployed"] = st.facts
            sim = st.sim
            target = MISSING_INSTANCE if scenario.missing_instance else sim["instance_id"]
            # A finding naming a group gets as many simulated instances as it names.
            named = sequence_instances(raw)
            sims = [sim] + more_instances(st.target_ec2, sim, len(named) - 1) if named else [sim]
            event = point_sequence_at(raw, sim, sims) if named else point_event_at(raw, sim, target)
            # GuardDuty sends the finding as it updates it: updatedAt is now, the start of the
            # time-to-isolation metric.
            if isinstance(event.get("detail"), dict):
                event["detail"]["updatedAt"] = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
            report["finding"] = finding_summary(event, target)
            report["simulated"] = sim
            report["accounts"] = {"responder": ACCOUNT, "instance": sim["account"]}
            if scenario.exempt:
                exempt_instance(st, sim, overrides)
            if scenario.paused:
                report["paused"] = pause_responder(st)
            if scenario.security_hub:
                report["security_hub"] = {"before": in_security_hub(st, event)}
            if scenario.burst:
                report["burst"] = capped_burst(st, raw, sim, scenario.burst, scenario.approval)
                report["case_list"] = cases.list_cases(st.case_table)
                report["cases"] = [cases.read_case(st.case_table, c["case_id"]) for c in report["case_list"]]
                return report
            before = state_of(st, sim)
            others_before = [emulator_state(st.target_ec2, st.target_iam, s) for s in sims[1:]]
            matched = contain(st, pattern, event, report, scenario.approval)
            if scenario.security_hub:
                report["security_hub"]["after"] = security_hub_state(st, event)
            report["emulator"] = {"before": before, "after": state_of(st, sim)}
            # Every instance the finding names, before and after (the first is the one above).
            report["instances"] = [{"instance_id": sim["instance_id"], **report["emulator"]}] + [
                {"instance_id": s["instance_id"], "before": b, "after": emulator_state(st.target_ec2, st.target_iam, s)}
                for s, b in zip(sims[1:], others_before, strict=True)
            ]
            if matched and scenario.repeat:
                report["second_finding"] = send_again(st, sim, event)
            if matched and scenario.release:
                report["release"] = release_and_compare(st, sim, before)
            if member:
                report["administrator_account"] = administrator_state(st.ec2, st.iam)
            # The case record, as `deploy.sh cases` and `deploy.sh case` show it on AWS.
            report["case_list"] = cases.list_cases(st.case_table)
            report["cases"] = [cases.read_case(st.case_table, c["case_id"]) for c in report["case_list"]]
            if getattr(st, "evidence_bucket", None):
                report["evidence_bucket"] = st.evidence_bucket
                report["evidence"] = evidence_objects(st.s3, st.evidence_bucket)
            if getattr(st, "forensic", None):
                # The copies run in their own workflow, after the report: waited for here.
                report["evidence_copy"] = evidence_copies(st)
                report["case_list"] = cases.list_cases(st.case_table)
                report["cases"] = [cases.read_case(st.case_table, c["case_id"]) for c in report["case_list"]]
                report["forensic"] = forensic_copies(st.forensic, st.target_ec2, report["cases"])
    finally:
        report["wall_seconds"] = round(time.monotonic() - started, 2)
        if not release_dir:
            # What CloudWatch would extract from the function logs (deployed: in MiniStack's).
            report["metrics"] = emitted(log_dir)
    return report


def evidence_objects(s3, bucket: str) -> list[dict]:
    """Every object version in the evidence bucket: its key, the SHA-256 of its bytes, the
    checksum S3 kept with it, its retention, and the manifest it holds."""
    out = []
    for v in s3.list_object_versions(Bucket=bucket).get("Versions", []):
        obj = s3.get_object(Bucket=bucket, Key=v["Key"], VersionId=v["VersionId"], ChecksumMode="ENABLED")
        body = obj["Body"].read()
        try:
            manifest = json.loads(body)
        except ValueError:
            manifest = None
        until = obj.get("ObjectLockRetainUntilDate")
        out.append(
            {
                "key": v["Key"],
                "version_id": v["VersionId"],
                "sha256": hashlib.sha256(body).hexdigest(),
                "checksum_sha256": obj.get("ChecksumSHA256"),
                "lock_mode": obj.get("ObjectLockMode"),
                "retain_until": until.isoformat() if hasattr(until, "isoformat") else until,
                "manifest": manifest,
            }
        )
    return out


def forensic_copies(forensic: dict, source_ec2, cases_read: list[dict]) -> dict:
    """The forensic account's copies as it holds them (each with its source, its encryption and
    key, its state), and who may create volumes from each source snapshot the cases record."""
    # By the tool's tag: moto lists AMI snapshots as the caller's own (tests/README).
    copies = forensic["ec2"].describe_snapshots(
        OwnerIds=["self"], Filters=[{"Name": "tag-key", "Values": ["ec2-quarantine:source-snapshot"]}]
    )["Snapshots"]
    sources = sorted(
        {
            created.split(" ")[0]
            for case in cases_read
            for step in case.get("steps", [])
            if step.get("step") == "snapshot"
            for created in step.get("created") or []
        }
    )
    import botocore.exceptions

    shared = {}
    for snapshot in sources:
        try:
            answer = source_ec2.describe_snapshot_attribute(SnapshotId=snapshot, Attribute="createVolumePermission")
            shared[snapshot] = sorted(p.get("UserId") or p.get("Group") for p in answer.get("CreateVolumePermissions", []))
        except botocore.exceptions.ClientError as e:  # a snapshot gone: say so
            shared[snapshot] = [f"unreadable: {e}"]
    return {
        "account": forensic["account"],
        "key_arn": forensic["key_arn"],
        "copies": [
            {
                "snapshot_id": c["SnapshotId"],
                "source": {t["Key"]: t["Value"] for t in c.get("Tags", [])}.get("ec2-quarantine:source-snapshot"),
                "state": c.get("State"),
                "encrypted": c.get("Encrypted"),
                "kms_key_id": c.get("KmsKeyId"),
            }
            for c in sorted(copies, key=lambda c: c["SnapshotId"])
        ],
        "shared_with": shared,
    }


def finding_summary(event: dict, target: str) -> dict:
    detail = event.get("detail") if isinstance(event.get("detail"), dict) else {}
    resource = detail.get("resource") if isinstance(detail.get("resource"), dict) else {}
    return {
        "type": detail.get("type"),
        "severity": detail.get("severity"),
        "resource_type": resource.get("resourceType"),
        "target_instance": target,
    }


def state_of(st, sim: dict) -> dict:
    """The simulated instance's state in the emulator (its groups, role, service, snapshots)."""
    return emulator_state(st.target_ec2, st.target_iam, sim, *st.service_clients)


def exempt_instance(st, sim: dict, overrides: dict[str, str]) -> None:
    """Tags the instance with the exemption tag the functions are configured with."""
    key = function_settings(load_template(), overrides, ACCOUNT)["EXEMPTION_TAG_KEY"]
    st.target_ec2.create_tags(Resources=[sim["instance_id"]], Tags=[{"Key": key, "Value": "local run"}])


def pause_responder(st) -> dict:
    """Pauses the responder as `deploy.sh pause` does (aws_ops.pause), and reads the switch back."""
    aws_ops.pause(st.ssm, st.pause_parameter, "local run: a scanner mistaken for an attacker")
    return aws_ops.pause_state(st.ssm, st.pause_parameter)


def in_security_hub(st, event: dict) -> dict:
    """Security Hub enabled where the finding is, holding it as GuardDuty sends it."""
    st.securityhub.enable_security_hub(EnableDefaultStandards=False)
    answer = st.securityhub.batch_import_findings(Findings=[securityhub.guardduty_finding(event)])
    if answer.get("FailedCount"):
        raise HarnessError(f"the finding was not imported into Security Hub: {answer}")
    return security_hub_state(st, event)


def security_hub_state(st, event: dict) -> dict:
    """The finding's workflow status and note, as Security Hub holds them."""
    product = f"arn:aws:securityhub:{event['detail']['region']}::product/aws/guardduty"
    found = st.securityhub.get_findings(
        Filters={
            "Id": [{"Value": event["detail"]["arn"], "Comparison": "EQUALS"}],
            "ProductArn": [{"Value": product, "Comparison": "EQUALS"}],
        }
    )["Findings"]
    if len(found) != 1:
        raise HarnessError(f"Security Hub holds {len(found)} findings for {event['detail']['arn']}")
    return {"workflow_status": found[0].get("Workflow", {}).get("Status"), "note": found[0].get("Note")}


def contain(st, pattern: dict, event: dict, report: dict, answer: str | None = None) -> bool:
    """The finding through the rule and, when it matches, the containment state machine; with
    `answer`, its approval request answered so ([`answer_request`]).

    On the deployed path the finding goes to the deployed rule, which starts the deployed state
    machine or not; the template's pattern is still checked beside it, and both answers are
    reported (`template_pattern_matched`, `deployed_rule_matched`)."""
    matched = rule_matches(pattern, event)
    report["rule"] = {"matched": matched, "pattern": pattern}
    report["execution"], report["states"], report["notification"] = None, [], None
    if getattr(st, "deployed", False):
        execution = through_deployed_rule(st, event)
        report["rule"].update(template_pattern_matched=matched, deployed_rule_matched=execution is not None)
        matched = execution is not None
        report["rule"]["matched"] = matched
        if execution and answer:
            report["approval"] = answer_request(st, execution, answer)
        if execution:
            report["execution"], report["states"], report["notification"] = follow(st, execution)
        return matched
    if matched and answer:
        execution = st.sfn.start_execution(stateMachineArn=st.machine, name=f"local-{time.time_ns()}", input=json.dumps(event))[
            "executionArn"
        ]
        request, collection = collected_meanwhile(st, execution)
        if collection is not None:
            report["collection"] = collection
        report["approval"] = answer_request(st, execution, answer, request)
        report["execution"], report["states"], report["notification"] = follow(st, execution)
    elif matched:
        report["execution"], report["states"], report["notification"] = execute(st, st.machine, event)
    if matched:
        report["invocations"] = {name: fn.invocations for name, fn in st.service.functions.items()}
        if getattr(st, "chat_queue_url", None):
            report["chat"] = received_chat(st)
    return matched


def through_deployed_rule(st, event: dict) -> str | None:
    """The finding published as GuardDuty publishes it: the execution the deployed rule started,
    or None. The emulator's EventBridge starts it before PutEvents answers; one more second is
    given to a late start, and two executions for one event would be a fault."""
    before = {e["executionArn"] for e in st.sfn.list_executions(stateMachineArn=st.machine)["executions"]}
    answer = st.publish(event)
    if answer.get("FailedEntryCount"):
        raise HarnessError(f"the finding event was not published: {answer}")
    started = started_executions(st.sfn, st.machine, before, wait_s=1.0)
    if len(started) > 1 or any(finding_id_of(st.sfn, e) != event["detail"].get("id") for e in started):
        raise HarnessError(f"one finding started {len(started)} executions, not one of its own: {started}")
    return started[0] if started else None


def is_request(message: dict) -> bool:
    return "APPROVAL NEEDED" in message["subject"]


# The subject of the collection workflow's report (statemachine/collection.asl.json).
COLLECTION_REPORT_SUBJECT = "[VOLATILE EVIDENCE]"


def collected_meanwhile(st, execution: str, timeout_s: float = 180) -> tuple[dict, dict | None]:
    """The execution's approval request as the team receives it and, when the stack collects
    volatile evidence (a simulated agent runs), the collection the workflow started before it:
    its execution followed to its end, the report the team received, and the record."""
    collecting = getattr(st, "agent", None) is not None
    request, report = None, None
    deadline = time.monotonic() + timeout_s
    while (request is None or (collecting and report is None)) and time.monotonic() < deadline:
        if request is None and st.sfn.describe_execution(executionArn=execution)["status"] != "RUNNING":
            break  # ended without asking (the finding did not need an approval)
        for m in received_messages(st):
            if is_request(m):
                request = request or m
            elif m["subject"].startswith(COLLECTION_REPORT_SUBJECT):
                # The collection's report, or the containment workflow's word that it did not start.
                report = report or m
    if request is None:
        raise HarnessError(f"no approval request within {timeout_s:.0f} s")
    if not collecting:
        return request, None
    name = execution.rsplit(":", 1)[1]
    started = [e for e in st.sfn.list_executions(stateMachineArn=st.collection_machine)["executions"] if e["name"] == name]
    ended = [wait_for(st.sfn, e["executionArn"], timeout_s) for e in started]
    return request, {
        "executions": [{"name": e.get("name"), "status": e["status"]} for e in ended],
        "team_report": team_report(report),
        "records": cases.collections(st.case_table, st.sim["instance_id"]),
    }


def team_report(message: dict | None) -> dict | None:
    """The collection's report to the team (its entries), or the notice that it did not start."""
    if message is None:
        return None
    try:
        return {"subject": message["subject"], "entries": json.loads(message["message"])}
    except ValueError:
        return {"subject": message["subject"], "text": message["message"]}


def current_state(sfn, execution: str) -> dict:
    """The execution's status and the state it entered last."""
    status = sfn.describe_execution(executionArn=execution)["status"]
    events = sfn.get_execution_history(executionArn=execution, maxResults=1000)["events"]
    entered = [e["stateEnteredEventDetails"]["name"] for e in events if "stateEnteredEventDetails" in e]
    return {"status": status, "state": entered[-1] if entered else None}


# What the local run's person says with a decision.
ANSWER_REASONS = {"approve": "local run: the owner confirmed the compromise", "reject": "local run: our own scanner, not an attacker"}


def answer_request(st, execution: str, answer: str, request: dict | None = None) -> dict:
    """The execution's approval request, read from the team's inbox as a person reads it (or
    `request`, read already), then answered: `approve` or `reject` with the call `deploy.sh
    approve|reject` makes (aws_ops.answer_approval, by LOCAL_APPROVER), or `timeout`: nobody
    answers, and the wait ends after ApprovalTimeoutSeconds."""
    request = request or next_message(st, is_request)
    found = APPROVAL_ID.search(request["message"])
    if not found:
        raise HarnessError(f"the approval request names no approval id: {request['subject']}")
    out = {"approval_id": found.group(1), "request": request, "while_waiting": current_state(st.sfn, execution), "answer": answer}
    if answer in ANSWER_REASONS:
        function = st.stack_outputs["ApprovalFunctionName"]
        out["decision"] = aws_ops.answer_approval(
            st.lambda_client, function, out["approval_id"], answer == "approve", LOCAL_APPROVER, ANSWER_REASONS[answer]
        )
    return out


def approval_id_of(execution: str) -> str:
    """The id the approval function gives an execution's request (src/approval.rs, approval_id)."""
    return "apr-" + hashlib.sha256(execution.encode()).hexdigest()[:16]


def capped_burst(st, raw: dict, sim: dict, cap: int, answer: str | None) -> dict:
    """cap+1 findings published at once, each for an instance of its own, with the rate cap at
    `cap` and approvals on: `cap` instances are contained, the others wait for a person. Once
    every execution has ended or sent its request, the rails are read as `deploy.sh rails` reads
    them; then each request is answered with `answer`, or left to time out; every execution is
    followed to its end, and each instance's report and interfaces are read."""
    sims = [sim] + more_instances(st.target_ec2, sim, cap)
    events = []
    for k, s in enumerate(sims):
        event = point_event_at(raw, s, s["instance_id"])
        event["detail"]["id"] = f"b{k:031x}"
        events.append(event)
    before = {s["instance_id"]: state_of(st, s) for s in sims}
    known = {e["executionArn"] for e in st.sfn.list_executions(stateMachineArn=st.machine)["executions"]}
    with ThreadPoolExecutor(len(events)) as pool:
        published = list(pool.map(st.publish, events))
    if any(a.get("FailedEntryCount") for a in published):
        raise HarnessError(f"a finding event was not published: {published}")
    started: list[str] = []
    deadline = time.monotonic() + 10
    while len(started) < len(events) and time.monotonic() < deadline:
        started = started_executions(st.sfn, st.machine, known, wait_s=1.0)
    if len(started) != len(events):
        raise HarnessError(f"{len(events)} findings started {len(started)} executions")
    instance_of = {e["detail"]["id"]: s["instance_id"] for e, s in zip(events, sims, strict=True)}
    execution_of = {instance_of[finding_id_of(st.sfn, arn)]: arn for arn in started}
    instance_asking = {approval_id_of(arn): i for i, arn in execution_of.items()}
    # The burst settles: every execution has ended, or is waiting with its request sent.
    messages: list[dict] = []
    deadline = time.monotonic() + 180
    while True:
        messages += received_messages(st)
        waiting = {}
        for m in filter(is_request, messages):
            asked = APPROVAL_ID.search(m["message"])
            if asked and asked.group(1) in instance_asking:
                waiting[instance_asking[asked.group(1)]] = m
        now = {i: current_state(st.sfn, arn) for i, arn in execution_of.items()}
        if all(i in waiting or now[i]["status"] != "RUNNING" for i in execution_of):
            break
        if time.monotonic() > deadline:
            raise HarnessError(f"the burst did not settle within 180 s: {now}, {len(waiting)} approval requests")
    rails = cases.rails_state(st.case_table, time.time())
    rails["max_containments_per_hour"], rails["approvals"] = str(cap), "true"
    answered = {i: answer_request(st, execution_of[i], answer or "timeout", m) for i, m in waiting.items()}
    ended = {i: wait_for(st.sfn, arn, SHORTEST_APPROVAL_WAIT_S + 180) for i, arn in execution_of.items()}
    reports: dict[str, dict] = {}
    deadline = time.monotonic() + 60
    while len(reports) < len(events) and time.monotonic() < deadline:
        messages += received_messages(st)
        reports = {m["attributes"].get("instance_id"): m for m in messages if not is_request(m)}
    return {
        "cap": cap,
        "answer": answer or "timeout",
        "rails_while_settled": rails,
        "instances": [
            {
                "instance_id": i,
                "finding_id": finding_id,
                "while_burst_settled": now[i],
                "approval": answered.get(i),
                "status": ended[i]["status"],
                "verdict": (reports.get(i) or {}).get("attributes", {}).get("verdict"),
                "rails": [line.strip() for line in (reports.get(i) or {}).get("message", "").splitlines() if "Safety rail:" in line],
                "before": before[i],
                "after": state_of(st, s),
            }
            for (finding_id, i), s in zip(instance_of.items(), sims, strict=True)
        ],
    }


def send_again(st, sim: dict, event: dict) -> dict:
    """A second finding (another id) for the same instance: nothing may change."""
    second = json.loads(json.dumps(event))
    second["detail"]["id"] = "f" * 32
    if getattr(st, "deployed", False):
        execution = through_deployed_rule(st, second)
        if execution is None:
            raise HarnessError("the deployed rule did not match the second finding, which it matched the first time")
        ex, states, note = follow(st, execution)
    else:
        ex, states, note = execute(st, st.machine, second)
    return {"execution": ex, "states": states, "notification": note, "after": state_of(st, sim)}


def release_and_compare(st, sim: dict, before: dict) -> dict:
    """The release state machine, then the state compared with the state before containment."""
    request = {"instance_id": sim["instance_id"], "reason": "local run: investigation closed"}
    ex, states, note = execute(st, st.release_machine, request)
    after = state_of(st, sim)
    # Kept by design: the evidence, and the tool's quarantine group (other instances may use it).
    kept = after.pop("snapshots")
    after.pop("quarantine_groups")
    # Kept by design too: the deny of sessions issued before containment (stolen
    # credentials stay dead; the release request's release_credentials lifts it).
    session_deny = "ec2-quarantine-revoke-older-sessions"
    kept_denies = [p for p in after["role"]["inline_policies"] if p == session_deny]
    after["role"]["inline_policies"] = [p for p in after["role"]["inline_policies"] if p != session_deny]
    expected = {k: v for k, v in before.items() if k not in ("snapshots", "quarantine_groups")}
    return {
        "execution": ex,
        "states": states,
        "notification": note,
        "after": after,
        "snapshots_kept": len(kept),
        "credential_denies_kept": kept_denies,
        "restored": after == expected,
        "differences": {k: {"before": expected.get(k), "after": v} for k, v in after.items() if expected.get(k) != v},
    }


def invoke(binary: str, event_path: Path, bin_dir: Path, log_dir: Path | None = None) -> dict:
    """One function alone with a sample event (what `sam local invoke` does, without Docker)."""
    if binary not in FUNCTIONS:
        raise HarnessError(f"no function {binary}: one of {', '.join(FUNCTIONS)}")
    raw = json.loads(event_path.read_text())
    log_dir = log_dir or Path(tempfile.mkdtemp(prefix="ec2-quarantine-invoke-"))
    with local_stack(bin_dir, log_dir) as st:
        raw = point_sample_at(raw, st.sim)
        result, error = st.service.invoke(binary, raw)
        return {
            "function": binary,
            "event_file": shown(event_path),
            "function_error": "Unhandled" if error else None,
            "result": result,
            "notification": received_notification(st) if binary == "notify" else None,
            "logs": str(log_dir / f"{binary}.log"),
        }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Run the containment workflow, or one function, offline on a simulated compromised instance.")
    p.add_argument(
        "event", nargs="?", default=str(DEFAULT_EVENT), help="a GuardDuty finding event (default: the credential-exfiltration sample)"
    )
    p.add_argument(
        "--invoke", metavar="FUNCTION", default=None, help="invoke only this function with the event (isolate, snapshot, deny-role, notify)"
    )
    p.add_argument("--json", action="store_true", help="print the report as one JSON document")
    p.add_argument("--bin-dir", default=None, help="where the built function binaries are")
    p.add_argument(
        "--missing-instance",
        action="store_true",
        help="point the event at an instance that does not exist (a failing step, caught and notified)",
    )
    p.add_argument("--severity-threshold", default=None, help="the template's SeverityThreshold parameter (default: its default)")
    p.add_argument(
        "--member-account",
        action="store_true",
        help="put the instance in a member account; the responder acts there through the member role",
    )
    p.add_argument("--log-dir", default=None, help="where the functions' logs go (default: a new temporary folder)")
    p.add_argument(
        "--parameter",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a template parameter, as sam deploy --parameter-overrides takes it (repeatable)",
    )
    p.add_argument("--dry-run", action="store_true", help="the same as --parameter DryRun=true")
    p.add_argument("--exempt", action="store_true", help="tag the instance with the exemption tag first")
    p.add_argument("--paused", action="store_true", help="pause the responder first, as deploy.sh pause does")
    p.add_argument("--security-hub", action="store_true", help="enable Security Hub where the finding is, and put the finding there first")
    p.add_argument(
        "--approval",
        choices=("approve", "reject", "timeout"),
        default=None,
        help="approvals on for the finding's type, the request answered so (timeout: nobody answers, 60 s)",
    )
    p.add_argument(
        "--collect",
        action="store_true",
        help="with --approval, on the default path: collect volatile evidence, then a memory image, while the approval is "
        "awaited (VolatileEvidenceDocument=Collect, MemoryImages=Collect; a simulated SSM agent runs the tool's documents on "
        "the simulated instance, with a stand-in for AVML)",
    )
    p.add_argument(
        "--burst",
        type=int,
        default=None,
        metavar="N",
        help="with --deployed: N+1 findings at once, one instance each, the rate cap at N: N contained, the rest wait for approval",
    )
    p.add_argument("--repeat", action="store_true", help="then send a second finding (another id) for the same instance")
    p.add_argument("--release", action="store_true", help="then run the release state machine and compare with the state before")
    p.add_argument(
        "--deployed",
        action="store_true",
        help="deploy template.yaml with sam deploy into the local control plane and send the finding to the deployed rule",
    )
    p.add_argument("--release-dir", default=None, help="with --deployed: where the release bootstraps are (cargo build --release)")
    p.add_argument(
        "--no-forensic-account",
        action="store_true",
        help="no simulated forensic account: the evidence is not copied (the template's default, ForensicAccountId empty)",
    )
    args = p.parse_args(argv)
    if args.deployed and (args.invoke or args.member_account):
        p.error("--deployed runs the whole deployed stack: not with --invoke or --member-account")
    if args.burst is not None and not args.deployed:
        p.error("--burst publishes its findings to the deployed rule: add --deployed")
    if args.collect and (args.deployed or args.burst is not None or not args.approval):
        p.error("--collect collects while an approval is awaited, on the default path: with --approval, not with --deployed or --burst")
    if args.burst is not None and not 1 <= args.burst <= 9:
        p.error("--burst takes 1 to 9 (the rate cap; one more finding than that is sent)")

    def on_term(_sig, _frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    target_dir = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    bin_dir = Path(args.bin_dir or target_dir / "debug")
    release_dir = Path(args.release_dir or target_dir / "release") if args.deployed else None
    log_dir = Path(args.log_dir) if args.log_dir else None
    parameters = {}
    for item in args.parameter:
        key, sep, value = item.partition("=")
        if not sep:
            p.error(f"--parameter {item!r}: expected KEY=VALUE")
        parameters[key] = value
    if args.dry_run:
        parameters["DryRun"] = "true"
    if args.collect:
        parameters["VolatileEvidenceDocument"] = "Collect"
        parameters["MemoryImages"] = "Collect"
    # The event file, checked before anything starts: one line naming it and the problem, exit
    # status 2 (deploy.sh checks the same, and more, first; this is for a direct call).
    event_path, problem = Path(args.event), None
    if event_path.is_dir():
        problem = "a directory, not a file"
    elif event_path.exists() and not event_path.is_file():
        problem = "not a regular file (a pipe, socket or device)"
    else:
        try:
            if not isinstance(json.loads(event_path.read_text(encoding="utf-8")), dict):
                problem = "not a JSON object"
        except OSError as e:
            problem = f"cannot be read ({(e.strerror or str(e)).lower()})"
        except UnicodeDecodeError as e:
            problem = f"not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start})"
        except json.JSONDecodeError as e:
            problem = f"not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})"
        except (ValueError, RecursionError) as e:
            problem = f"not valid JSON ({e})"
    if problem:
        print(f"error: {args.event}: {problem}", file=sys.stderr)
        return 2
    try:
        if args.invoke:
            result = invoke(args.invoke, Path(args.event).resolve(), bin_dir, log_dir)
            print(json.dumps(result, indent=2))
            return 3 if result["function_error"] else 0
        scenario = Scenario(
            missing_instance=args.missing_instance,
            member_account=args.member_account,
            exempt=args.exempt,
            paused=args.paused,
            security_hub=args.security_hub,
            approval=args.approval,
            burst=args.burst or 0,
            repeat=args.repeat,
            release=args.release,
            parameters=parameters,
            severity_threshold=args.severity_threshold,
            # The local run copies the evidence to a simulated forensic account unless told not
            # to; the deployed path deploys the template's defaults (no forensic account).
            forensic_account=not (args.no_forensic_account or args.deployed),
        )
        report = run(Path(args.event).resolve(), bin_dir, scenario, log_dir, release_dir)
    except HarnessError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; everything started was stopped", file=sys.stderr)
        return 130
    print(json.dumps(report, indent=2, sort_keys=True) if args.json else render(report))
    executions = [report.get("execution")] + [(report.get(k) or {}).get("execution") for k in ("second_finding", "release")]
    executions += [{"status": i["status"]} for i in (report.get("burst") or {}).get("instances", [])]
    return 3 if any(e and e["status"] != "SUCCEEDED" for e in executions) else 0


if __name__ == "__main__":
    sys.exit(main())
