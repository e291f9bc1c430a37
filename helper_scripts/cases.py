"""The case table, read for the on-call engineer: `deploy.sh cases` lists the cases, `deploy.sh
case ID_OR_INSTANCE` shows one case's timeline. The same reader prints the local run's case.

The table's layout is the one `src/case.rs` writes (pk, sk): a header item per case (`case`),
one item per finding, per step, per recorded previous state and per release attempt. The
volatile evidence collected while an approval was awaited is the approval's
(`approval#<id>`/`collection#<instance>`, src/steps/collect.rs): a case shows its instance's.
"""

from __future__ import annotations

import json
import re

INSTANCE_ID = re.compile(r"^i-([0-9a-f]{8}|[0-9a-f]{17})$")
CASE_ID = re.compile(r"^i-[0-9a-f]{8,17}-[0-9]{8}T[0-9]{9}Z$")


class CaseError(Exception):
    pass


def _plain(value):
    """An item's attribute as plain JSON (the resource API gives Decimals and sets)."""
    from decimal import Decimal

    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted(_plain(v) for v in value)
    if isinstance(value, Decimal):
        return int(value) if value == int(value) else float(value)
    return value


def _scan(table, **kwargs) -> list[dict]:
    items, start = [], None
    while True:
        page = table.scan(**kwargs, **({"ExclusiveStartKey": start} if start else {}))
        items.extend(page.get("Items", []))
        start = page.get("LastEvaluatedKey")
        if not start:
            return [_plain(i) for i in items]


def _query(table, pk: str) -> list[dict]:
    from boto3.dynamodb.conditions import Key

    items, start = [], None
    while True:
        page = table.query(KeyConditionExpression=Key("pk").eq(pk), ConsistentRead=True, **({"ExclusiveStartKey": start} if start else {}))
        items.extend(page.get("Items", []))
        start = page.get("LastEvaluatedKey")
        if not start:
            return [_plain(i) for i in items]


def list_cases(table, open_only: bool = False, consistent: bool = False) -> list[dict]:
    """Every case's header, newest first (`consistent`: a strongly consistent scan)."""
    from boto3.dynamodb.conditions import Attr

    headers = _scan(table, FilterExpression=Attr("sk").eq("case"), **({"ConsistentRead": True} if consistent else {}))
    rows = [
        {
            "case_id": h.get("case_id"),
            "instance_id": h.get("instance_id"),
            "account_id": h.get("account_id"),
            "region": h.get("region"),
            "status": h.get("status"),
            "opened_at": h.get("opened_at"),
            "released_at": h.get("released_at"),
        }
        for h in headers
    ]
    if open_only:
        rows = [r for r in rows if r["status"] == "open"]
    return sorted(rows, key=lambda r: r["opened_at"] or "", reverse=True)


def find_case(table, id_or_instance: str) -> str:
    """The case an argument names: a case id, or an instance id (its open case, else its latest)."""
    if CASE_ID.match(id_or_instance):
        return id_or_instance
    if not INSTANCE_ID.match(id_or_instance):
        raise CaseError(f"{id_or_instance!r} is neither a case id (i-...-YYYYMMDDTHHMMSSmmmZ) nor an instance id")
    cases = [c for c in list_cases(table) if c["instance_id"] == id_or_instance]
    if not cases:
        raise CaseError(f"no case for instance {id_or_instance}")
    open_cases = [c for c in cases if c["status"] == "open"]
    return (open_cases or cases)[0]["case_id"]


def read_case(table, case_id: str) -> dict:
    """One case: its header, findings, steps, recorded previous states and releases."""
    items = _query(table, f"case#{case_id}")
    header = next((i for i in items if i["sk"] == "case"), None)
    if header is None:
        raise CaseError(f"no case {case_id}")

    def kind(prefix):
        return [i for i in items if i["sk"].startswith(prefix)]

    return {
        "case_id": case_id,
        "instance_id": header.get("instance_id"),
        "account_id": header.get("account_id"),
        "region": header.get("region"),
        "status": header.get("status"),
        "opened_at": header.get("opened_at"),
        "released_at": header.get("released_at"),
        "findings": [
            {
                k: f.get(k)
                for k in ("finding_id", "finding_type", "severity", "updated_at", "first_seen", "last_seen", "seen", "decision", "evidence")
            }
            for f in kind("finding#")
        ],
        "steps": [
            {"step": s["sk"].split("#", 1)[1], **{k: s.get(k) for k in ("started", "ended", "outcome", "attempts", "created", "report")}}
            for s in kind("step#")
        ],
        "previous": [{**p.get("state", {}), "recorded_at": p.get("recorded_at")} for p in kind("previous#")],
        "releases": [{k: r.get(k) for k in ("at", "reason", "outcome", "restored", "failed")} for r in kind("release#")],
        "collections": collections(table, header.get("instance_id") or "", {f.get("finding_id") for f in kind("finding#")}),
    }


def collections(table, instance_id: str, findings: set[str] | None = None) -> list[dict]:
    """The volatile-evidence collections of an instance, oldest first: each approval's command,
    its status (`running` until the collect step has written its report) and that report. With
    `findings`, only those made while a request about one of them waited (the request's record,
    `approval#<id>`/`request`, names its finding): a case shows its own, not the instance's others."""
    from boto3.dynamodb.conditions import Attr

    if not INSTANCE_ID.match(instance_id):
        return []
    items = _scan(
        table, FilterExpression=Attr("pk").begins_with("approval#") & Attr("sk").eq(f"collection#{instance_id}"), ConsistentRead=True
    )
    if findings is not None:
        items = [i for i in items if _asked_about(table, i["pk"]) in findings]
    out = []
    for item in items:
        try:
            report = json.loads(item.get("report") or "null")
        except ValueError:
            report = {"status": "unreadable", "reason": str(item.get("report"))[:300]}
        report = report if isinstance(report, dict) else None
        out.append(
            {
                "approval_id": item["pk"].split("#", 1)[1],
                "memory": _memory(table, item["pk"], instance_id),
                "command_id": item.get("command_id"),
                # A claim given back (nothing sent) holds 0 until the next pass takes it.
                "started": _iso(item.get("claimed_at") or None),
                "ended": item.get("ended_at"),
                "status": (report or {}).get("status") or "running",
                "report": report,
            }
        )
    return sorted(out, key=lambda c: c["started"] or "")


def _memory(table, pk: str, instance_id: str) -> dict | None:
    """The memory image of the instance under the approval (`memory#<instance>`): its report once
    over, else how far it got (`running`); none when none was started."""
    item = table.get_item(Key={"pk": pk, "sk": f"memory#{instance_id}"}, ConsistentRead=True).get("Item")
    if not item:
        return None
    try:
        over = json.loads(item.get("report") or "null")
        progress = json.loads(item.get("progress") or "null")
    except ValueError:
        return {"status": "unreadable"}
    if isinstance(over, dict):
        return {**over, "ended": item.get("ended_at")}
    return {"status": "running", **(progress if isinstance(progress, dict) else {})}


def render_cases(rows: list[dict]) -> str:
    if not rows:
        return "No cases."
    out = [f"{'CASE':40} {'INSTANCE':20} {'ACCOUNT':12} {'REGION':14} {'STATUS':8} {'OPENED':20} RELEASED"]
    for r in rows:
        out.append(
            f"{r['case_id'] or '?':40} {r['instance_id'] or '?':20} {r['account_id'] or '?':12} {r['region'] or '?':14} "
            f"{r['status'] or '?':8} {r['opened_at'] or '?':20} {r['released_at'] or '-'}"
        )
    return "\n".join(out)


def _summary(report: str | None) -> str:
    """A step's report in a few words: its status and reason, or the error."""
    if not report:
        return ""
    try:
        value = json.loads(report)
    except ValueError:
        return report[:300]
    if isinstance(value, dict):
        if value.get("reason"):
            return value["reason"][:300]
        warnings = value.get("warnings") or []
        return "; ".join(str(w) for w in warnings)[:300]
    return ""


def _snapshot_report(report: str | None) -> dict:
    """A snapshot step's report as the case records it (src/steps/snapshot.rs), or {}."""
    try:
        value = json.loads(report or "")
    except ValueError:
        return {}
    body = value.get("report") if isinstance(value, dict) and isinstance(value.get("report"), dict) else value
    return body if isinstance(body, dict) else {}


def _locks(report: str | None) -> list[dict]:
    """The locked snapshots a snapshot step's report lists."""
    snapshots = _snapshot_report(report).get("snapshots")
    return [s for s in snapshots or [] if isinstance(s, dict) and isinstance(s.get("lock"), dict)]


def _manifest(report: str | None) -> dict | None:
    """The evidence manifest a snapshot step's report names (bucket, key, sha256)."""
    manifest = _snapshot_report(report).get("manifest")
    return manifest if isinstance(manifest, dict) and manifest.get("key") else None


def _copies(report: str | None) -> list[dict]:
    """The forensic account's copies an evidence-copy step's report lists (src/steps/evidence_copy.rs)."""
    copies = _snapshot_report(report).get("copies")
    return [c for c in copies or [] if isinstance(c, dict) and c.get("source_snapshot_id")]


def render_case(case: dict) -> str:
    out = [
        f"Case {case['case_id']}: instance {case['instance_id']} in {case['account_id']} {case['region']}, {case['status']}",
        f"  opened {case['opened_at']}" + (f", released {case['released_at']}" if case.get("released_at") else ""),
        "Findings:",
    ]
    for f in sorted(case["findings"], key=lambda f: f.get("first_seen") or ""):
        out.append(
            f"  {f['finding_id']} {f['finding_type']} (severity {f['severity']}), first {f['first_seen']}, last {f['last_seen']}, seen {f['seen']}x"
        )
        if f.get("decision"):
            out.append(f"      triage: {f['decision']}" + (f", because {f['evidence']}" if f.get("evidence") else ""))
    out.append("Steps:")
    for s in sorted(case["steps"], key=lambda s: s.get("started") or ""):
        line = f"  {s['step']:10} {s.get('outcome') or 'running'}, {s.get('started')} .. {s.get('ended') or '?'}, attempts {s.get('attempts') or 0}"
        note = _summary(s.get("report"))
        out.append(line + (f": {note}" if note else ""))
        for c in s.get("created") or []:
            out.append(f"      created {c}")
        for snapshot in _locks(s.get("report")):
            lock = snapshot["lock"]
            term = f"until {lock['expires_on']}" if lock.get("expires_on") else f"{lock.get('days') or '?'} days from its completion"
            out.append(f"      locked {snapshot['snapshot_id']}: {lock.get('state')}, {term}")
        manifest = _manifest(s.get("report"))
        if manifest:
            version = f" version {manifest['version_id']}" if manifest.get("version_id") else ""
            out.append(f"      manifest s3://{manifest.get('bucket')}/{manifest['key']}{version}, SHA-256 {manifest.get('sha256')}")
        body = _snapshot_report(s.get("report"))
        for c in _copies(s.get("report")):
            detail = f" ({c['detail']})" if c.get("detail") else ""
            copy = c.get("copy_snapshot_id") or "no copy"
            out.append(
                f"      copy of {c['source_snapshot_id']} in {body.get('forensic_account')} {body.get('region')}: {copy}, {c.get('state')}{detail}"
            )
    out.append("Previous state (what release restores):")
    for p in case["previous"]:
        fields = ", ".join(f"{k}={v}" for k, v in p.items() if k not in ("kind", "recorded_at"))
        out.append(f"  {p.get('kind')}: {fields}")
    if not case["previous"]:
        out.append("  none recorded")
    out.append("Releases:")
    for r in sorted(case["releases"], key=lambda r: r.get("at") or ""):
        out.append(f"  {r['at']} {r['outcome']}" + (f" ({r['reason']})" if r.get("reason") else ""))
        out.extend(f"      failed: {f}" for f in r.get("failed") or [])
    if not case["releases"]:
        out.append("  none")
    out.extend(_render_collections(case.get("collections") or []))
    return "\n".join(out)


def _asked_about(table, approval_pk: str) -> str | None:
    """The finding an approval request was about (its record's `ask`, src/approval.rs)."""
    request = table.get_item(Key={"pk": approval_pk, "sk": "request"}, ConsistentRead=True).get("Item") or {}
    try:
        ask = json.loads(request.get("ask") or "{}")
    except ValueError:
        return None
    return ask.get("finding_id") if isinstance(ask, dict) else None


def _render_collections(found: list[dict]) -> list[str]:
    """The instance's volatile evidence: each command, its archive and its files' hashes."""
    out = ["Volatile evidence (collected while an approval was awaited):"]
    if not found:
        return [*out, "  none"]
    for c in found:
        report = c.get("report") or {}
        status = c["status"] + (f" ({report['command_status']})" if report.get("command_status") else "")
        out.append(
            f"  {c['approval_id']} command {c.get('command_id') or 'not sent'}: {status}, {c.get('started')} .. {c.get('ended') or '?'}"
        )
        if report.get("reason"):
            out.append(f"      {str(report['reason'])[:300]}")
        archive = report.get("archive") if isinstance(report.get("archive"), dict) else None
        if archive:
            version = f" version {archive['version_id']}" if archive.get("version_id") else ""
            verdict = (
                "verified: the stored object's SHA-256 is the one the instance printed"
                if archive.get("verified")
                else f"NOT verified: printed {archive.get('printed_sha256') or 'nothing'}, stored {archive.get('stored_sha256') or 'nothing'}"
            )
            out.append(f"      archive s3://{archive.get('bucket')}/{archive.get('key')}{version}")
            out.append(f"        SHA-256 {archive.get('stored_sha256') or '?'} ({archive.get('stored_bytes') or '?'} bytes), {verdict}")
        for f in report.get("files") or []:
            out.append(f"      file {f.get('name')}: SHA-256 {f.get('sha256')}")
        out.extend(f"      warning: {w}" for w in report.get("warnings") or [])
        out.extend(_render_memory(c.get("memory")))
    return out


def _render_memory(m: dict | None) -> list[str]:
    """A memory image: its volume, the command, the image as printed, the locked snapshot."""
    if not m:
        return []
    out = [f"    memory image: {m.get('status')}" + (f" ({m['command_status']})" if m.get("command_status") else "")]
    if m.get("reason"):
        out.append(f"      {str(m['reason'])[:300]}")
    if m.get("volume_id"):
        out.append(f"      volume {m['volume_id']} ({m.get('volume_size_gib') or '?'} GiB, kept) at {m.get('device') or '?'}")
    if m.get("command_id"):
        out.append(f"      command {m['command_id']}")
    image = m.get("image") if isinstance(m.get("image"), dict) else None
    if image:
        out.append(f"      image: {image.get('bytes')} bytes, SHA-256 {image.get('sha256')} (as the instance printed)")
    if m.get("snapshot_id"):
        lock = m.get("lock") if isinstance(m.get("lock"), dict) else None
        held = (
            f"locked ({lock.get('state')}, until {lock.get('expires_on') or 'its completion plus the duration'})" if lock else "NOT locked"
        )
        out.append(f"      snapshot {m['snapshot_id']}: {held}")
    out.extend(f"      warning: {w}" for w in m.get("warnings") or [])
    return out


# The rate cap's window (src/case.rs, RATE_WINDOW_SECS): a slot taken at or before
# now - window is free again.
RATE_WINDOW_S = 3600


def _iso(epoch) -> str | None:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(int(epoch), UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if isinstance(epoch, (int, float)) else None


def _only(*names: str) -> dict:
    """A scan's projection of these attributes, each through an expression attribute name (any
    may be a DynamoDB reserved word; boto3 adds the filter's own names beside them)."""
    return {
        "ProjectionExpression": ", ".join(f"#p{i}" for i in range(len(names))),
        "ExpressionAttributeNames": {f"#p{i}": n for i, n in enumerate(names)},
    }


def rails_state(table, now: float) -> dict:
    """What the rate cap and the approvals hold at `now` (epoch seconds), as the case table
    records them (src/case.rs's slots `rate#<account>`/`slot#<n>`, src/approval.rs's requests
    `approval#<id>`/`request`): each account's automatic containments of the last hour and when
    the first of their slots frees, and every approval request still pending (within its
    deadline, or past it with the default not applied yet). Task tokens are not read."""
    from boto3.dynamodb.conditions import Attr

    taken: dict[str, list[dict]] = {}
    slots = _scan(
        table,
        FilterExpression=Attr("pk").begins_with("rate#") & Attr("sk").begins_with("slot#"),
        ConsistentRead=True,
        **_only("pk", "sk", "taken_at", "instance", "finding"),
    )
    for s in slots:
        at = s.get("taken_at")
        # Free again once taken at or before now - window (src/case.rs, the claim's condition).
        if isinstance(at, (int, float)) and at > now - RATE_WINDOW_S:
            taken.setdefault(s["pk"].removeprefix("rate#"), []).append(
                {"at": at, "instance": s.get("instance"), "finding": s.get("finding")}
            )
    rate = [
        {
            "account": account,
            "containments_last_hour": len(slots),
            "first_slot_frees_at": _iso(min(s["at"] for s in slots) + RATE_WINDOW_S),
            "slots": [{**s, "at": _iso(s["at"])} for s in sorted(slots, key=lambda s: s["at"])],
        }
        for account, slots in sorted(taken.items())
    ]
    pending = []
    requests = _scan(
        table,
        FilterExpression=Attr("pk").begins_with("approval#") & Attr("sk").eq("request") & Attr("status").eq("pending"),
        ConsistentRead=True,
        **_only("approval_id", "ask", "requested_at", "expires_at", "published"),
    )
    for r in requests:
        expires = r.get("expires_at")
        try:
            ask = json.loads(r.get("ask") or "{}")
        except ValueError:
            ask = {}
        ask = ask if isinstance(ask, dict) else {}
        pending.append(
            {
                "approval_id": r.get("approval_id"),
                "requested_at": r.get("requested_at"),
                "deadline": _iso(expires),
                "past_deadline": not isinstance(expires, (int, float)) or expires <= now,
                "message_sent": r.get("published") is True,
                "account": ask.get("account_id"),
                "region": ask.get("region"),
                "finding": ask.get("finding_id"),
                "finding_type": ask.get("finding_type"),
                "instances": ask.get("instances") or [],
                "on_timeout": ask.get("on_timeout"),
            }
        )
    return {"rate_cap": rate, "pending_approvals": sorted(pending, key=lambda w: w["requested_at"] or "")}


def render_rails(state: dict, answer_options: str = "") -> str:
    """The rails' state for the on-call engineer (`deploy.sh rails`); `answer_options` are the
    options (`--region ...`) the printed answer commands repeat."""
    out = []
    pause = state.get("pause") or {}
    if pause.get("missing"):
        out.append(f"Pause switch: {pause['parameter']} does not exist: triage reads that as not paused (and says so)")
    elif pause.get("paused"):
        out.append(f"Pause switch: PAUSED since {pause['since']} by {pause['by']} ({pause['reason']}): nothing is contained automatically")
    elif pause:
        out.append(f"Pause switch: not paused ({pause['parameter']} = {pause['value']}, since {pause['since']})")
    cap = state.get("max_containments_per_hour")
    limit = int(cap) if isinstance(cap, str) and cap.isdigit() else None
    if not state["rate_cap"]:
        out.append(f"Rate cap: {cap or '?'} automatic containments per account per hour; none in the last hour")
    for r in state["rate_cap"]:
        n = r["containments_last_hour"]
        if limit is not None and n >= limit:
            room = f"FULL: the next may start at {r['first_slot_frees_at']}"
        else:
            room = f"{limit - n} more may start now" if limit is not None else f"the first slot frees at {r['first_slot_frees_at']}"
        out.append(f"Rate cap: account {r['account']}: {n} of {cap or '?'} automatic containments in the last hour; {room}")
        for s in r["slots"]:
            out.append(f"  {s['at']}  {s['instance']}  finding {s['finding']}")
    if state.get("approvals") is not None:
        out.append(f"Approvals: {'on' if state['approvals'] == 'true' else 'off'}")
    if not state["pending_approvals"]:
        out.append("No approval request is waiting.")
    options = f" {answer_options}" if answer_options else ""
    for w in state["pending_approvals"]:
        if w["past_deadline"]:
            when = f"past its deadline {w['deadline']}: {w['on_timeout']} is being applied, an answer is refused"
        else:
            when = f"deadline {w['deadline']} (then {w['on_timeout']})"
        out.append(
            f"WAITING {w['approval_id']} since {w['requested_at']}, {when}: "
            f"{w['finding_type']} in {w['account']} {w['region']}, finding {w['finding']}"
        )
        if not w["message_sent"]:
            out.append("  its request message was not sent (or not yet): the team may not know of it")
        for i in w["instances"]:
            out.append(f"  {i}")
        if not w["past_deadline"]:
            out.append(
                f"  answer: deploy.sh approve {w['approval_id']}{options}  |  deploy.sh reject {w['approval_id']} --reason TEXT{options}"
            )
    return "\n".join(out)
