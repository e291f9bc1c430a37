"""What a run reports: each execution's outcome and states from its history, payloads over Step
Functions' limit, and the text the CLI prints."""

from __future__ import annotations

import json
from pathlib import Path

import cases

from local.metrics import summary
from local.template import MISSING_TOPIC, ROOT

# Step Functions refuses a state input or output (and a task's parameters or result) over 256 KiB,
# 262,144 bytes of UTF-8, with States.DataLimitExceeded, which no Catch catches: States.ALL does
# not match it (https://docs.aws.amazon.com/step-functions/latest/dg/concepts-error-handling.html,
# https://docs.aws.amazon.com/step-functions/latest/dg/service-quotas.html; the history's input and
# output fields have the same maximum, https://docs.aws.amazon.com/step-functions/latest/apireference/API_StateEnteredEventDetails.html).
# moto's interpreter does not enforce it, so the run checks the history (oversized_payloads).
PAYLOAD_LIMIT_BYTES = 262_144


def _entered_state(event: dict, by_id: dict) -> str | None:
    """The state an event belongs to: the nearest StateEntered event before it."""
    e = event
    while e is not None:
        details = e.get("stateEnteredEventDetails")
        if details:
            return details["name"]
        e = by_id.get(e.get("previousEventId"))
    return None


def oversized_payloads(events: list[dict], limit: int = PAYLOAD_LIMIT_BYTES) -> list[dict]:
    """Each payload in the history over Step Functions' limit: a state's input or output, a task's
    parameters (its input after Parameters) or its result, in UTF-8 bytes, in history order."""
    by_id = {e["id"]: e for e in events}
    found = []
    for e in events:
        for key, details in e.items():
            if not (key.endswith("EventDetails") and isinstance(details, dict)):
                continue
            for field in ("input", "output", "parameters"):
                value = details.get(field)
                size = len(value.encode("utf-8")) if isinstance(value, str) else 0
                if size > limit:
                    found.append({"state": _entered_state(e, by_id), "event": e["type"], "field": field, "bytes": size})
    return found


def execution_outcome(done: dict, history: list[dict]) -> dict:
    """The execution's outcome as AWS would report it: the emulator's, unless a payload in its
    history is over the limit, which fails the execution on AWS with States.DataLimitExceeded."""
    outcome = {
        "status": done["status"],
        "error": done.get("error"),
        "cause": done.get("cause"),
        "output": json.loads(done["output"]) if done.get("output") else None,
    }
    oversized = oversized_payloads(history)
    if oversized:
        first = oversized[0]
        outcome.update(
            status="FAILED",
            error="States.DataLimitExceeded",
            cause=(
                f"the {first['field']} of state {first['state']} ({first['event']}) is {first['bytes']} bytes, over the "
                f"{PAYLOAD_LIMIT_BYTES}-byte limit: on AWS the execution fails there, and no Catch catches it "
                f"(the emulator does not enforce the limit; it ended {done['status']})"
            ),
            output=None,
            emulator_status=done["status"],
            oversized=oversized,
        )
    return outcome


def states_from_history(events: list[dict]) -> list[dict]:
    """Each state that ran: its result or error, and how many times its function was invoked."""
    by_id = {e["id"]: e for e in events}
    states: dict[str, dict] = {}
    order: list[str] = []

    def entered_state(event: dict) -> str | None:
        return _entered_state(event, by_id)

    for e in events:
        t = e["type"]
        if t.endswith("StateEntered"):
            name = e["stateEnteredEventDetails"]["name"]
            if name not in states:
                order.append(name)
                states[name] = {"name": name, "type": t[: -len("StateEntered")], "attempts": 0, "errors": []}
        elif t in ("LambdaFunctionScheduled", "TaskScheduled"):
            name = entered_state(e)
            if name in states:
                states[name]["attempts"] += 1
        elif t in ("LambdaFunctionFailed", "LambdaFunctionTimedOut", "TaskFailed"):
            name = entered_state(e)
            details = next((v for k, v in e.items() if k.endswith("EventDetails")), {})
            if name in states:
                states[name]["errors"].append({"error": details.get("error"), "cause": details.get("cause")})
        elif t.endswith("StateExited"):
            d = e["stateExitedEventDetails"]
            name = d["name"]
            output = d.get("output")
            try:
                states[name]["output"] = json.loads(output) if output else None
            except ValueError:
                states[name]["output"] = output
    return [states[n] for n in order]


def shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def render(report: dict) -> str:
    out: list[str] = []
    w = out.append
    f = report.get("finding", {})
    w(f"Event:    {report['event_file']}")
    w(f"Finding:  {f.get('type')} (severity {f.get('severity')}, resource {f.get('resource_type')})")
    sim = report.get("simulated", {})
    w(
        f"Simulated instance {sim.get('instance_id')} (role {sim.get('role_name')}, "
        f"{len(sim.get('interfaces', []))} interfaces, {len(sim.get('volumes', []))} volumes)"
    )
    if len(report.get("instances") or []) > 1:
        w(
            f"The finding names {len(report['instances'])} instances: each is simulated alike ({', '.join(i['instance_id'] for i in report['instances'])})"
        )
    accounts = report.get("accounts", {})
    if accounts and accounts.get("responder") != accounts.get("instance"):
        w(f"The instance is in member account {accounts['instance']}; the responder runs in {accounts['responder']}.")
    if f.get("target_instance") != sim.get("instance_id"):
        w(f"The event names {f.get('target_instance')}, which does not exist.")
    w("")
    if report.get("burst"):
        _render_burst(w, report)
        _render_cases(w, report)
        w("")
        w(f"Wall time {report['wall_seconds']} s; function logs in {report['logs']}")
        return "\n".join(out)
    rule = report["rule"]
    if report.get("path") == "deployed":
        w("Deployed with sam deploy into the local control plane; the finding was published to the deployed rule.")
        w(f"EventBridge rule (deployed): {'MATCHED' if rule['matched'] else 'did not match'}")
        if rule.get("template_pattern_matched") != rule["matched"]:
            w(
                f"  The template's pattern, checked beside it, says {'MATCHED' if rule.get('template_pattern_matched') else 'did not match'}."
            )
    else:
        w(f"EventBridge rule (from template.yaml): {'MATCHED' if rule['matched'] else 'did not match'}")
    if not rule["matched"]:
        w("  Nothing runs for this finding on AWS either: the rule filters it out.")
        return "\n".join(out)
    if report.get("parameters"):
        w("Template parameters: " + ", ".join(f"{k}={v}" for k, v in sorted(report["parameters"].items())))
    if report.get("paused"):
        p = report["paused"]
        w(f"Paused first, as deploy.sh pause does: {p['parameter']} = {p['value']} since {p['since']} (reason: {p['reason']})")
    if report.get("notify_fails"):
        w(f"The notify function publishes to {MISSING_TOPIC}, which does not exist: it fails, and the fallback runs.")
    if report.get("collection"):
        w("")
        _render_collection(w, report["collection"])
    if report.get("approval"):
        w("")
        _render_approval(w, report["approval"])
        w("")
    ex = report["execution"]
    w(f"State machine execution: {ex['status']}" + (f" ({ex['error']}: {ex['cause']})" if ex.get("error") else ""))
    w("")
    _render_states(w, report["states"])
    emu = report["emulator"]
    w("")
    _render_state(w, emu["before"], emu["after"], report)
    others = (report.get("instances") or [])[1:]
    if others:
        w(f"The other {len(others)} instances the finding names (interfaces: groups before -> after):")
        for other in others:
            for eni, groups in other["after"]["interface_groups"].items():
                w(f"  {other['instance_id']} {eni}: {', '.join(other['before']['interface_groups'][eni])} -> {', '.join(groups)}")
    w("")
    _render_notification(w, report.get("notification"))
    for card in report.get("chat") or []:
        w("")
        w("Chat notification (AWS Chatbot custom notification, on the chat topic):")
        w(f"  {card['content']['title']}")
        for line in card["content"]["description"].splitlines():
            w(f"    {line}")
        for step in card["content"].get("nextSteps") or []:
            w(f"  next: {step}")
    hub = report.get("security_hub")
    if hub:
        w("")
        w("The finding in Security Hub (workflow status, note):")
        for when in ("before", "after"):
            seen = hub.get(when) or {}
            w(f"  {when}: {seen.get('workflow_status')}, {(seen.get('note') or {}).get('Text') or 'no note'}")
    second = report.get("second_finding")
    if second:
        w("")
        w(f"A second finding (id {'f' * 32}) for the same instance: execution {second['execution']['status']}")
        _render_states(w, second["states"])
        unchanged = second["after"] == emu["after"]
        w(f"  The emulator's state after it: {'UNCHANGED (nothing created twice)' if unchanged else 'CHANGED'}")
        _render_notification(w, second.get("notification"))
    rel = report.get("release")
    if rel:
        w("")
        w(f"Release (statemachine/release.asl.json): execution {rel['execution']['status']}")
        _render_states(w, rel["states"])
        w(
            f"  State after release equals the state before containment: {'YES' if rel['restored'] else 'NO'}"
            f" (forensic snapshots kept: {rel['snapshots_kept']}; kept too, so that stolen credentials stay dead: "
            f"{', '.join(rel.get('credential_denies_kept') or []) or 'no deny'})"
        )
        for k, d in rel["differences"].items():
            w(f"    differs: {k}: before {d['before']} after {d['after']}")
        _render_notification(w, rel.get("notification"))
    _render_cases(w, report)
    _render_metrics(w, report)
    w("")
    w(f"Wall time {report['wall_seconds']} s; function logs in {report['logs']}")
    return "\n".join(out)


def _render_metrics(w, report: dict) -> None:
    """The metrics the functions wrote as EMF lines: what CloudWatch would hold on AWS."""
    metrics = report.get("metrics")
    if not metrics:
        return
    namespaces = sorted({m["namespace"] for m in metrics if m.get("namespace")})
    w("")
    w(
        f"Metrics the functions emitted (embedded metric format in their logs; CloudWatch extracts them on AWS), namespace {', '.join(namespaces)}:"
    )
    for line in summary(metrics):
        w(f"  {line}")


def _render_evidence(w, report: dict) -> None:
    """The evidence bucket's objects, as S3 holds them: the manifest, its hash, its retention."""
    if report.get("evidence") is None:
        return
    w("")
    w(f"The evidence bucket {report.get('evidence_bucket')} (S3 Object Lock):")
    for o in report["evidence"]:
        w(f"  {o['key']}: SHA-256 {o['sha256']}, {o['lock_mode'] or 'NOT LOCKED'} until {o['retain_until']}")
        if isinstance(o.get("manifest"), dict):
            listed = o["manifest"].get("snapshots") or []
            w(f"      lists {len(listed)} snapshot(s): " + ", ".join(f"{s.get('snapshot_id')} of {s.get('volume_id')}" for s in listed))
    if not report["evidence"]:
        w("  empty")
    forensic = report.get("forensic")
    if forensic:
        w("")
        w(f"The forensic account {forensic['account']} (copies encrypted with {forensic['key_arn']}):")
        for c in forensic["copies"]:
            key = "its key" if c["kms_key_id"] == forensic["key_arn"] else f"ANOTHER KEY {c['kms_key_id']}"
            w(
                f"  {c['snapshot_id']}: copy of {c['source']}, {c['state']}, {'encrypted with ' + key if c['encrypted'] else 'NOT ENCRYPTED'}"
            )
        if not forensic["copies"]:
            w("  no copy")
        for snapshot, who in forensic["shared_with"].items():
            w(f"  {snapshot} may be used by: {', '.join(who) or 'its own account only'}")
    copies = report.get("evidence_copy")
    if copies:
        statuses = ", ".join(e["status"] for e in copies["executions"]) or "none started"
        w(
            f"  the evidence-copy workflow: {statuses}; its report to the team: "
            + ("; ".join(r["subject"] for r in copies["reports"]) or "none")
        )


def _render_cases(w, report: dict) -> None:
    _render_evidence(w, report)
    if report.get("case_list"):
        w("")
        w("The case table (deploy.sh cases on AWS):")
        for line in cases.render_cases(report["case_list"]).splitlines():
            w(f"  {line}")
    for case in report.get("cases") or []:
        w("")
        w("The case record (deploy.sh case on AWS):")
        for line in cases.render_case(case).splitlines():
            w(f"  {line}")


def _render_collection(w, c: dict) -> None:
    """The volatile evidence the workflow collected while the approval was awaited."""
    w("While the approval was awaited, the workflow collected the instance's volatile evidence")
    w("(the simulated SSM agent ran the tool's document; the person answered once it had ended):")
    for e in c["executions"]:
        w(f"  collection execution {e['name']}: {e['status']}")
    if c.get("team_report"):
        w(f"  the team received: {c['team_report']['subject']}")
    for r in c["records"]:
        archive = (r.get("report") or {}).get("archive") or {}
        verdict = "verified against the hash the instance printed" if archive.get("verified") else "NOT verified"
        w(f"  {r['approval_id']} command {r.get('command_id')}: {r['status']}")
        if archive:
            w(f"    s3://{archive.get('bucket')}/{archive.get('key')}: SHA-256 {archive.get('stored_sha256')}, {verdict}")
        memory = r.get("memory") or {}
        if memory:
            image = memory.get("image") or {}
            w(
                f"    memory image: {memory.get('status')}, volume {memory.get('volume_id')}, snapshot {memory.get('snapshot_id')} "
                f"({(memory.get('lock') or {}).get('state') or 'not locked'}), image {image.get('bytes')} bytes "
                f"SHA-256 {image.get('sha256')} (a stand-in for AVML wrote it)"
            )
    if not c["records"]:
        w("  no collection was recorded")


def _render_approval(w, a: dict, indent: str = "") -> None:
    """An approval request as the team received it, and how it was answered."""
    waited = a["while_waiting"]
    w(f"{indent}Approval {a['approval_id']} requested: {a['request']['subject']}")
    w(f"{indent}  While it waited, the execution was {waited['status']} in state {waited['state']}.")
    decision = a.get("decision")
    if decision:
        w(f"{indent}  Answered with deploy.sh {a['answer']}: {decision.get('status', '?').upper()}: {decision.get('message', '')}")
    else:
        w(f"{indent}  Nobody answered: the wait ends after ApprovalTimeoutSeconds and the default applies.")


def _render_burst(w, report: dict) -> None:
    burst = report["burst"]
    instances = burst["instances"]
    w(
        f"A burst: {len(instances)} findings published at once to the deployed rule, one instance each, "
        f"with MaxContainmentsPerHour={burst['cap']} and Approvals=true."
    )
    if report.get("parameters"):
        w("Template parameters: " + ", ".join(f"{k}={v}" for k, v in sorted(report["parameters"].items())))
    w("")
    w("When the burst had settled (every execution ended or asking for approval):")
    for i in instances:
        seen = i["while_burst_settled"]
        w(f"  {i['instance_id']}: {seen['status']}" + (f", waiting in {seen['state']}" if seen["status"] == "RUNNING" else ""))
    w("")
    w("What deploy.sh rails showed then:")
    for line in cases.render_rails(burst["rails_while_settled"]).splitlines():
        w(f"  {line}")
    for i in instances:
        if i.get("approval"):
            w("")
            _render_approval(w, i["approval"])
    w("")
    w("At the end (interfaces: groups before -> after):")
    for i in instances:
        w(f"  {i['instance_id']}: execution {i['status']}, verdict {i['verdict']}")
        for eni, groups in i["after"]["interface_groups"].items():
            w(f"    {eni}: {', '.join(i['before']['interface_groups'][eni])} -> {', '.join(groups)}")
        for rail in i["rails"]:
            w(f"    {rail}")


def _render_states(w, states: list[dict]) -> None:
    w("States:")
    for s in states:
        if s["type"] in ("Pass",) and not s["name"].endswith("Failed") and s["name"] != "NotContained":
            continue
        line = f"  {s['name']:<18} {s['type']:<8}"
        output = s.get("output")
        if s["type"] == "Task":
            status = output.get("status") if isinstance(output, dict) else None
            if s["errors"]:
                last = s["errors"][-1]
                line += f" attempts {s['attempts']}, error {last['error']}"
            if s["name"] in ("Triage", "Release") and isinstance(output, dict):
                result = output.get(s["name"].lower()) or {}
                label = result.get("decision") or result.get("status") or result.get("Error")
                reason = result.get("reason") or _cause_message(result.get("Cause")) if isinstance(result, dict) else ""
                line += f" {label}" + (f" ({reason})" if reason else "")
            elif s["name"] == "Notify" and isinstance(output, dict) and "notify_error" in output:
                line += "; Step Functions publishes the fallback message"
            elif s["name"] == "Notify" and isinstance(output, dict):
                verdict = (output.get("notification") or {}).get("verdict")
                line += f" verdict {verdict}"
            elif s["name"] == "NotifyFallback" and not s["errors"]:
                line += " published the short fallback message (Step Functions' own sns:Publish)"
            elif status:
                line += f" {status}" + (f" ({output.get('reason')})" if output.get("reason") else "")
        elif s["name"].endswith("Failed") and isinstance(output, dict):
            line += f" caught {output.get('Error')}: {_cause_message(output.get('Cause'))}"
        w(line)


def _render_state(w, before: dict, after: dict, report: dict) -> None:
    w("Network interfaces (groups before -> after):")
    for eni, groups in after["interface_groups"].items():
        w(f"  {eni}: {', '.join(before['interface_groups'][eni])} -> {', '.join(groups)}")
    for g in after["quarantine_groups"]:
        w(f"  quarantine group {g['id']}: {g['ingress_rules']} ingress rules, {g['egress_rules']} egress rules")
    inst = after["instance"]
    w(
        f"  termination protection: {inst['termination_protection']}, shutdown behaviour: {inst['shutdown_behavior']}, "
        f"volumes deleted with the instance: {', '.join(inst['deleted_on_termination']) or 'none'}"
    )
    if "auto_scaling" in after:
        for b, a in zip(before["auto_scaling"], after["auto_scaling"]):
            w(f"Auto Scaling group {a['group']}: {b['instances']} desired {b['desired']} -> {a['instances']} desired {a['desired']}")
        w(f"Target group targets: {before['targets']} -> {after['targets']}")
        w(f"Classic Load Balancer instances: {before['classic']} -> {after['classic']}")
    w("Snapshots:")
    for s in after["snapshots"]:
        w(f"  {s['id']} of {s['volume_id']} ({s['tags'].get('ec2-quarantine:device', '?')})")
    if not after["snapshots"]:
        w("  none")
    role = after["role"]
    w(f"Instance profile: {inst.get('instance_profile') or 'none'}")
    w(f"Role {role['name']}:")
    w(f"  attached: {', '.join(role['attached_policies']) or 'none'}")
    w(f"  inline:   {', '.join(role['inline_policies']) or 'none'}")
    w(f"  tags:     {', '.join(role.get('tags', [])) or 'none'}")
    recorded = {k: v for k, v in after["instance_tags"].items() if k.startswith("ec2-quarantine:")}
    w("Marker tags on the instance (never read; the record is the case):")
    for k, v in sorted(recorded.items()):
        w(f"  {k} = {v}")
    if not recorded:
        w("  nothing")
    admin = report.get("administrator_account")
    if admin is not None:
        accounts = report.get("accounts", {})
        w(
            f"Responder's own account {accounts.get('responder')}: {admin['quarantine_groups']} quarantine groups, "
            f"{admin['forensic_snapshots']} forensic snapshots, {admin['deny_all_policies']} DenyAll policies (untouched)"
        )


def _render_notification(w, n: dict | None) -> None:
    if n:
        w("Notification as the subscriber received it:")
        w(f"  Subject: {n['subject']}")
        w(f"  Attributes: {json.dumps(n['attributes'], sort_keys=True)}")
        for line in (n["message"] or "").splitlines():
            w(f"  | {line}")
    else:
        w("No notification was received.")


def _cause_message(cause: str | None) -> str:
    try:
        return json.loads(cause or "").get("errorMessage", cause)
    except (ValueError, AttributeError):
        return cause or ""
