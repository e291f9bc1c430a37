"""Security Hub CSPM in moto, answering as AWS does for what the responder calls.

moto 5.2.5 implements GetFindings without its filters, answers it in an account that never
enabled Security Hub, and has no BatchUpdateFindings. `patch()` makes moto's backend answer as
AWS's API reference says, for the local runs (in-process) and the deployed path's data plane
(`python -m local.moto_server`):

- GetFindings and BatchUpdateFindings in an account and region without Security Hub:
  `InvalidAccessException` ("Account ... is not subscribed to AWS Security Hub"), HTTP 401
  (https://docs.aws.amazon.com/securityhub/1.0/APIReference/CommonErrors.html).
- GetFindings' string filters `Id` and `ProductArn` with the EQUALS comparison
  (https://docs.aws.amazon.com/securityhub/1.0/APIReference/API_GetFindings.html); any other
  filter is refused here, so that a test can never pass on a filter the double ignores.
- BatchUpdateFindings (`PATCH /findings/batchupdate`): `Workflow.Status` and `Note` (its
  `UpdatedAt` set), other fields refused here; a finding it does not hold is listed in
  `UnprocessedFindings` with `FindingNotFound`
  (https://docs.aws.amazon.com/securityhub/1.0/APIReference/API_BatchUpdateFindings.html).
"""

from __future__ import annotations

import datetime
import json

NOT_SUBSCRIBED = "Account {account} is not subscribed to AWS Security Hub"
UPDATABLE = {"FindingIdentifiers", "Workflow", "Note"}
STATUSES = {"NEW", "NOTIFIED", "RESOLVED", "SUPPRESSED"}


def patch() -> None:
    from moto.securityhub import models, responses, urls
    from moto.securityhub.exceptions import SecurityHubClientError

    if getattr(models.SecurityHubBackend, "_ec2_quarantine_patched", False):
        return

    class InvalidAccess(SecurityHubClientError):
        # The HTTP status (401) comes from the service model's error shape.
        def __init__(self, account: str):
            super().__init__("InvalidAccessException", NOT_SUBSCRIBED.format(account=account))

    class InvalidInput(SecurityHubClientError):
        def __init__(self, message: str):
            super().__init__("InvalidInputException", message)

    def subscribed(backend) -> None:
        if not backend.enabled:
            raise InvalidAccess(backend.account_id)

    def get_findings(self, filters=None, sort_criteria=None, max_results=None, next_token=None):
        subscribed(self)
        # A filter's values are alternatives; different filters must all hold (GetFindings).
        wanted: dict[str, set] = {}
        for name, values in (filters or {}).items():
            if name not in ("Id", "ProductArn"):
                raise InvalidInput(f"the local Security Hub double filters on Id and ProductArn only, not {name}")
            for v in values:
                if v.get("Comparison") != "EQUALS":
                    raise InvalidInput(f"the local Security Hub double compares with EQUALS only, not {v.get('Comparison')}")
                wanted.setdefault(name, set()).add(v.get("Value"))
        # Every finding the account holds is looked at (not one page of them); one page answered.
        found = [f.as_dict() for f in self.findings if all(f.data.get(k) in vs for k, vs in wanted.items())]
        return found[: int(max_results or 100)], None

    def batch_update_findings(self, body: dict) -> dict:
        subscribed(self)
        unknown = set(body) - UPDATABLE
        if unknown:
            raise InvalidInput(f"the local Security Hub double updates Workflow and Note only, not {sorted(unknown)}")
        identifiers = body.get("FindingIdentifiers") or []
        if not 1 <= len(identifiers) <= 100:
            raise InvalidInput("FindingIdentifiers must list 1 to 100 findings")
        status = (body.get("Workflow") or {}).get("Status")
        if status is not None and status not in STATUSES:
            raise InvalidInput(f"Workflow.Status {status!r} is not one of {sorted(STATUSES)}")
        note = body.get("Note")
        if note is not None:
            text, by = note.get("Text"), note.get("UpdatedBy")
            if not text or not by or len(text) > 512 or len(by) > 512:
                raise InvalidInput("Note.Text and Note.UpdatedBy are 1 to 512 characters")
        processed, unprocessed = [], []
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        for ident in identifiers:
            finding = next(
                (f for f in self.findings if f.id == ident.get("Id") and f.data.get("ProductArn") == ident.get("ProductArn")),
                None,
            )
            if finding is None:
                unprocessed.append({"FindingIdentifier": ident, "ErrorCode": "FindingNotFound", "ErrorMessage": "Finding Not Found"})
                continue
            if status is not None:
                finding.data["Workflow"] = {"Status": status}
                finding.data["WorkflowState"] = status
            if note is not None:
                finding.data["Note"] = {"Text": note["Text"], "UpdatedBy": note["UpdatedBy"], "UpdatedAt": now}
            processed.append(ident)
        return {"ProcessedFindings": processed, "UnprocessedFindings": unprocessed}

    def batch_update_findings_response(self) -> str:
        raw = self.body.decode() if isinstance(self.body, bytes) else self.body
        return json.dumps(self.securityhub_backend.batch_update_findings(json.loads(raw or "{}")))

    models.SecurityHubBackend.get_findings = get_findings
    models.SecurityHubBackend.batch_update_findings = batch_update_findings
    responses.SecurityHubResponse.batch_update_findings = batch_update_findings_response
    urls.url_paths["{0}/findings/batchupdate$"] = responses.SecurityHubResponse.dispatch
    models.SecurityHubBackend._ec2_quarantine_patched = True


def instance_of(detail: dict) -> str:
    return ((detail.get("resource") or {}).get("instanceDetails") or {}).get("instanceId") or "i-00000000"


def guardduty_finding(event: dict) -> dict:
    """The finding of a GuardDuty event as Security Hub imports it (its identifying fields, as
    in GuardDuty's documented example:
    https://docs.aws.amazon.com/guardduty/latest/ug/securityhub-integration.html)."""
    d = event["detail"]
    region, account = d["region"], d["accountId"]
    detector = d["arn"].split(":detector/")[1].split("/")[0]
    created = d.get("createdAt", "2026-01-01T00:00:00.000Z")
    return {
        "SchemaVersion": "2018-10-08",
        "Id": d["arn"],
        "ProductArn": f"arn:aws:securityhub:{region}::product/aws/guardduty",
        "GeneratorId": f"arn:aws:guardduty:{region}:{account}:detector/{detector}",
        "AwsAccountId": account,
        # GuardDuty maps its type to an ASFF type of its own (e.g. "TTPs/Command and Control/
        # Backdoor:EC2-C&CActivity.B"); only the identifying fields above are its exactly.
        "Types": [f"TTPs/{d['type'].replace('/', '-')}"],
        "CreatedAt": created,
        "UpdatedAt": d.get("updatedAt", created),
        "Severity": {"Label": "HIGH", "Normalized": 70, "Product": d.get("severity", 8)},
        "Title": d.get("title", "GuardDuty finding"),
        "Description": d.get("description", "GuardDuty finding"),
        "Resources": [{"Type": "AwsEc2Instance", "Id": f"arn:aws:ec2:{region}:{account}:instance/{instance_of(d)}"}],
        "Workflow": {"Status": "NEW"},
        "RecordState": "ACTIVE",
    }
