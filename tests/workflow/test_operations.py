"""`deploy.sh status` and `deploy.sh logs` (helper_scripts/aws_ops.py) for the on-call engineer,
against moto's CloudWatch, CloudWatch Logs, Step Functions and SSM in process. The stack's
resources are given as CloudFormation lists them (logical id, physical id, type), since moto's
CloudFormation does not take the SAM template."""

from __future__ import annotations

import argparse
import json
import re
import time

import aws_ops
import pytest

REGION = "us-east-1"
STACK = "ec2-quarantine"


@pytest.fixture()
def aws(monkeypatch):
    import boto3
    from moto import mock_aws

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with mock_aws():
        resources: dict[str, tuple[str, str]] = {}
        monkeypatch.setattr(aws_ops, "stack_resources", lambda session, stack: resources)
        monkeypatch.setattr(aws_ops, "pause_switch", lambda session, stack: "/ec2-quarantine/ec2-quarantine/paused")
        session = boto3.Session(region_name=REGION)
        session.client("ssm").put_parameter(Name="/ec2-quarantine/ec2-quarantine/paused", Value="false", Type="String")
        yield session, resources


def log(session, resources, logical: str, lines: list[tuple[int, str]]) -> None:
    logs = session.client("logs")
    group = f"{STACK}-{logical}-ABC123"
    logs.create_log_group(logGroupName=group)
    logs.create_log_stream(logGroupName=group, logStreamName="2026/12/04/[$LATEST]0")
    logs.put_log_events(
        logGroupName=group,
        logStreamName="2026/12/04/[$LATEST]0",
        logEvents=[{"timestamp": t, "message": m} for t, m in sorted(lines)],
    )
    resources[logical] = (group, "AWS::Logs::LogGroup")


def args(**kw) -> argparse.Namespace:
    return argparse.Namespace(**{"region": REGION, "stack_name": STACK, "json": False, "function": None, "since": "1h", **kw})


def test_logs_interleave_every_group_oldest_first_and_leave_out_the_older_lines(aws, capsys):
    session, resources = aws
    now = int(time.time() * 1000)
    log(session, resources, "IsolateLogGroup", [(now - 5000, "isolated eni-1"), (now - 3 * 3600 * 1000, "yesterday's line")])
    log(session, resources, "TriageLogGroup", [(now - 9000, "decided contain"), (now - 1000, "done")])
    log(session, resources, "ContainmentStateMachineLogGroup", [(now - 7000, '{"type":"TaskStateEntered"}')])
    assert aws_ops.show_logs(args()) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(None, 2)[1:] for line in lines] == [
        ["triage", "decided contain"],
        ["containment", '{"type":"TaskStateEntered"}'],
        ["isolate", "isolated eni-1"],
        ["triage", "done"],
    ]
    assert aws_ops.show_logs(args(function="isolate", since="4h")) == 0
    assert [line.split(None, 2)[2] for line in capsys.readouterr().out.splitlines()] == ["yesterday's line", "isolated eni-1"]


def test_logs_say_when_a_group_has_more_lines_than_shown(aws, capsys, monkeypatch):
    session, resources = aws
    now = int(time.time() * 1000)
    log(session, resources, "NotifyLogGroup", [(now - 1000 * i, f"line {i}") for i in range(5, 0, -1)])
    monkeypatch.setattr(aws_ops, "MAX_LOG_LINES", 3)
    assert aws_ops.show_logs(args(function="notify")) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 4 and out[-1].startswith("(more than 3 lines from notify"), out


def test_logs_of_a_function_not_deployed_or_not_known_are_refused(aws):
    with pytest.raises(aws_ops.OpsError, match="has no ApprovalLinkLogGroup"):
        aws_ops.show_logs(args(function="approval-link"))
    with pytest.raises(aws_ops.UsageError, match="--function takes one of triage, isolate"):
        aws_ops.show_logs(args(function="isolation"))


def test_status_shows_the_alarms_in_alarm_first_the_last_executions_and_the_dashboard(aws, capsys):
    session, resources = aws
    cw = session.client("cloudwatch")
    for logical in ("FindingLostAlarm", "ContainmentExecutionsFailedAlarm"):
        name = f"{STACK}-{logical}-XYZ"
        cw.put_metric_alarm(
            AlarmName=name,
            Namespace="AWS/States",
            MetricName="ExecutionsFailed",
            Statistic="Sum",
            Period=60,
            EvaluationPeriods=1,
            Threshold=0,
            ComparisonOperator="GreaterThanThreshold",
        )
        resources[logical] = (name, "AWS::CloudWatch::Alarm")
    cw.set_alarm_state(AlarmName=f"{STACK}-ContainmentExecutionsFailedAlarm-XYZ", StateValue="ALARM", StateReason="1 failed execution")
    sfn = session.client("stepfunctions")
    machine = sfn.create_state_machine(
        name="containment",
        definition=json.dumps({"StartAt": "Done", "States": {"Done": {"Type": "Succeed"}}}),
        roleArn="arn:aws:iam::123456789012:role/sm",
    )["stateMachineArn"]
    sfn.start_execution(stateMachineArn=machine, name="finding-1", input="{}")
    resources["ContainmentStateMachine"] = (machine, "AWS::StepFunctions::StateMachine")
    resources["Dashboard"] = (f"{STACK}-{REGION}", "AWS::CloudWatch::Dashboard")

    assert aws_ops.show_status(args()) == 3, "an alarm in ALARM"
    out = capsys.readouterr().out
    assert "Pause switch: not paused" in out
    assert "Alarms: 1 in ALARM of 2" in out
    alarm_lines = [line for line in out.splitlines() if line.startswith(("  ALARM", "  INSUFFICIENT_DATA"))]
    assert alarm_lines[0].split()[:2] == ["ALARM", "ContainmentExecutionsFailedAlarm"], alarm_lines
    assert "1 failed execution" in alarm_lines[0]
    assert "Last containment executions:" in out and "finding-1" in out
    assert f"#dashboards/dashboard/{STACK}-{REGION}" in out

    assert aws_ops.show_status(args(json=True)) == 3
    state = json.loads(capsys.readouterr().out)
    assert state["alarms"][0]["alarm"] == "ContainmentExecutionsFailedAlarm"
    assert [e["name"] for e in state["executions"]["containment"]] == ["finding-1"]
    assert "release" not in state["executions"], "not in the stack's resources"


def test_status_is_zero_when_nothing_is_in_alarm_and_three_when_paused(aws, capsys):
    session, _ = aws
    assert aws_ops.show_status(args()) == 0
    assert "Alarms: 0 in ALARM of 0" in capsys.readouterr().out
    aws_ops.pause(session.client("ssm"), "/ec2-quarantine/ec2-quarantine/paused", "scanner")
    assert aws_ops.show_status(args()) == 3
    assert "PAUSED since" in capsys.readouterr().out


def test_since_reads_minutes_hours_and_days():
    assert aws_ops.since_ms("30m", 10_000.0) == (10_000 - 1800) * 1000
    assert aws_ops.since_ms("2d", 1_000_000.0) == (1_000_000 - 172_800) * 1000
    with pytest.raises(aws_ops.UsageError):
        aws_ops.since_ms("1w", 0.0)


# The metrics' contract (src/telemetry/mod.rs), as the dashboard must read it: each name and its
# dimensions (a metric is its name and its whole set of dimensions).
CONTRACT = {
    "Findings": {"Step", "FindingType", "Verdict"},
    "TimeToIsolation": {"Step"},
    "StepOutcome": {"Step", "Outcome"},
    "StepDuration": {"Step"},
    "Retries": {"Step"},
    "Throttles": {"Step"},
    "RailApplied": {"Step", "Rail"},
}


def dashboard() -> tuple[dict, dict]:
    from local.template import load_template

    template = load_template()
    body = template["Resources"]["Dashboard"]["Properties"]["DashboardBody"]["Fn::Sub"]
    # What CloudFormation substitutes: the stack's name, region, each resource's name or ARN.
    text = re.sub(r"\$\{([A-Za-z0-9:]+)(\.Arn)?\}", lambda m: f"<{m[1]}{m[2] or ''}>", body)
    return json.loads(text), template


def test_the_dashboard_reads_every_metric_as_the_functions_write_it_and_shows_every_alarm():
    board, template = dashboard()
    namespace = "ec2-quarantine/<AWS::StackName>"
    seen: dict[str, set[str]] = {}
    for widget in board["widgets"]:
        for metric in widget["properties"].get("metrics", []):
            for item in metric:
                if isinstance(item, dict) and "expression" in item:
                    # SEARCH('{"namespace",Dim1,Dim2} MetricName="Name"', ...): the namespace quoted,
                    # since it holds '-' and '/'.
                    m = re.fullmatch(r"SEARCH\('\{\"([^\"]+)\",([A-Za-z,]+)\} MetricName=\"(\w+)\"', '\w+', 300\)", item["expression"])
                    assert m, item["expression"]
                    assert m[1] == namespace
                    seen.setdefault(m[3], set()).update(m[2].split(","))
            if metric and metric[0] == namespace:
                dims = metric[2:-1] if isinstance(metric[-1], dict) else metric[2:]
                seen.setdefault(metric[1], set()).update(dims[0::2])
    assert seen == CONTRACT
    alarms = {k for k, r in template["Resources"].items() if r["Type"] == "AWS::CloudWatch::Alarm"}
    [alarm_widget] = [w for w in board["widgets"] if w["type"] == "alarm"]
    assert set(alarm_widget["properties"]["alarms"]) == {f"<{a}.Arn>" for a in alarms}
    # Every function's Lambda errors and throttles (a timeout or a crash writes no StepOutcome),
    # but the approval page's, which exists only with ApprovalLinks=true.
    functions = {k for k, r in template["Resources"].items() if r["Type"] == "AWS::Serverless::Function"} - {"ApprovalLinkFunction"}
    lambda_metrics = {(m[1], m[3]) for w in board["widgets"] for m in w["properties"].get("metrics", []) if m and m[0] == "AWS/Lambda"}
    assert lambda_metrics == {(kind, f"<{f}>") for f in functions for kind in ("Errors", "Throttles")}
