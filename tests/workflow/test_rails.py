"""`deploy.sh rails`: the rate cap's use and the approval requests, read from a case table laid
out as src/case.rs and src/approval.rs write it (moto's DynamoDB, in process)."""

from __future__ import annotations

import json

import cases
import pytest

NOW = 1_800_000_000
ACCOUNT, OTHER = "123456789012", "210987654321"


@pytest.fixture()
def table():
    import boto3
    from moto import mock_aws

    with mock_aws():
        db = boto3.resource("dynamodb", region_name="us-east-1")
        t = db.create_table(
            TableName="cases",
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
            AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}, {"AttributeName": "sk", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
        yield t


def slot(t, account: str, n: int, taken_at: int, instance: str) -> None:
    item = {"pk": f"rate#{account}", "sk": f"slot#{n:04}", "taken_at": taken_at, "instance": instance, "finding": "f" * 32}
    t.put_item(Item=item)


def request(t, approval_id: str, status: str, expires_at: int, published: bool, ask: str | None) -> None:
    item = {
        "pk": f"approval#{approval_id}",
        "sk": "request",
        "approval_id": approval_id,
        "task_token": "a-secret-token",
        "requested_at": "2027-01-15T07:00:00Z",
        "expires_at": expires_at,
        "status": status,
        "published": published,
    }
    if ask is not None:
        item["ask"] = ask
    t.put_item(Item=item)


ASK = json.dumps(
    {
        "account_id": ACCOUNT,
        "region": "us-east-1",
        "finding_id": "c3" * 16,
        "finding_type": "Backdoor:EC2/C&CActivity.B",
        "severity": 8.0,
        "instances": ["i-0123456789abcdef0 (ApprovalTypePrefixes: Backdoor:EC2/)"],
        "on_timeout": "notify-only",
        "wait_seconds": 3600,
    }
)


def test_slots_of_the_last_hour_count_and_one_taken_an_hour_ago_is_free(table):
    slot(table, ACCOUNT, 0, NOW - 3600, "i-00000000000000000")  # free again: taken_at <= now - window
    slot(table, ACCOUNT, 1, NOW - 3599, "i-11111111111111111")
    slot(table, ACCOUNT, 2, NOW - 10, "i-22222222222222222")
    slot(table, OTHER, 0, NOW - 5, "i-33333333333333333")
    state = cases.rails_state(table, NOW)
    (mine, other) = state["rate_cap"]
    assert mine["account"] == ACCOUNT and mine["containments_last_hour"] == 2, mine
    assert [s["instance"] for s in mine["slots"]] == ["i-11111111111111111", "i-22222222222222222"]
    assert mine["first_slot_frees_at"] == cases._iso(NOW + 1), mine
    assert other["containments_last_hour"] == 1
    shown = cases.render_rails({**state, "max_containments_per_hour": "2"})
    assert f"account {ACCOUNT}: 2 of 2 automatic containments in the last hour; FULL: the next may start at" in shown, shown
    assert f"account {OTHER}: 1 of 2 automatic containments in the last hour; 1 more may start now" in shown, shown


def test_pending_requests_are_listed_with_their_deadline_and_the_others_are_not(table):
    request(table, "apr-00000000000000a1", "pending", NOW + 600, True, ASK)
    request(table, "apr-00000000000000a2", "pending", NOW - 1, False, ASK)  # past its deadline, not settled yet
    request(table, "apr-00000000000000a3", "approved", NOW + 600, True, ASK)
    request(table, "apr-00000000000000a4", "pending", NOW + 600, True, "not json")
    state = cases.rails_state(table, NOW)
    pending = {p["approval_id"]: p for p in state["pending_approvals"]}
    assert set(pending) == {"apr-00000000000000a1", "apr-00000000000000a2", "apr-00000000000000a4"}, pending
    assert pending["apr-00000000000000a1"]["past_deadline"] is False and pending["apr-00000000000000a1"]["message_sent"] is True
    assert pending["apr-00000000000000a1"]["on_timeout"] == "notify-only"
    assert pending["apr-00000000000000a2"]["past_deadline"] is True and pending["apr-00000000000000a2"]["message_sent"] is False
    assert pending["apr-00000000000000a4"]["instances"] == [] and pending["apr-00000000000000a4"]["finding"] is None
    # The task token is never read.
    assert "a-secret-token" not in json.dumps(state)
    shown = cases.render_rails(state, "--region us-east-1")
    assert "deploy.sh approve apr-00000000000000a1 --region us-east-1" in shown, shown
    assert "apr-00000000000000a2" in shown and "past its deadline" in shown and "deploy.sh approve apr-00000000000000a2" not in shown
    assert "its request message was not sent" in shown
    assert "none in the last hour" in shown


def test_an_empty_table_says_nothing_waits(table):
    state = cases.rails_state(table, NOW)
    assert state == {"rate_cap": [], "pending_approvals": []}
    shown = cases.render_rails({**state, "pause": {"parameter": "/x/paused", "missing": True, "paused": False}, "approvals": "false"})
    assert "does not exist: triage reads that as not paused" in shown and "Approvals: off" in shown
    assert "No approval request is waiting." in shown
