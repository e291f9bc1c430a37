"""Nobody is left uninformed, and sizes stay bounded.

- When the notify function fails for good, Step Functions publishes a short fallback message to
  the alert topic itself and the execution ends Failed (both state machines).
- Every Lambda task retries a function timeout or crash (Lambda.Unknown) beside the Lambda service
  errors.
- The template alarms on executions that end Failed, TimedOut or Aborted, and on findings
  EventBridge could not deliver (retry policy, dead-letter queue scoped to the rule).
- The local run treats a payload over Step Functions' 256 KiB limit as States.DataLimitExceeded.

The tests that run the workflow need the built functions (FUNCTIONS_BIN_DIR); the others do not.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from local import run as local_run
from local.report import PAYLOAD_LIMIT_BYTES, execution_outcome, oversized_payloads, render, states_from_history
from local.stack import wait_for
from local.template import (
    ACCOUNT,
    EVIDENCE_COPY_MACHINE,
    FUNCTIONS,
    REGION,
    RELEASE_MACHINE,
    STATE_MACHINE,
    TOPIC_SUBSTITUTION,
    load_template,
    state_machine_definition,
)

ROOT = Path(__file__).resolve().parents[2]

BIN_DIR = Path(os.environ.get("FUNCTIONS_BIN_DIR") or Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "debug")
EVENTS = ROOT / "events"
MACHINES = {"ContainmentStateMachine": STATE_MACHINE, "ReleaseStateMachine": RELEASE_MACHINE}
# Every state machine: the two above, and the evidence copies' (which notifies by its own report).
ALL_MACHINES = MACHINES | {"EvidenceCopyStateMachine": EVIDENCE_COPY_MACHINE}
# What Step Functions reports for Lambda: the service errors, and an unhandled function error
# (a timeout, a crash) as Lambda.Unknown
# (https://docs.aws.amazon.com/step-functions/latest/dg/bp-lambda-serviceexception.html).
LAMBDA_RETRIED = {
    "Lambda.ServiceException",
    "Lambda.AWSLambdaException",
    "Lambda.SdkClientException",
    "Lambda.TooManyRequestsException",
    "Lambda.ClientExecutionTimeoutException",
    "Lambda.Unknown",
}
# SNS rejects a subject of 100 characters or more.
MAX_SUBJECT = 99
# The fallback message is small: a few ids and names, never a step's output.
MAX_FALLBACK_MESSAGE = 2048


def asl(path: Path) -> dict:
    return json.loads(path.read_text())


def all_states(states: dict) -> dict:
    """Every state, those inside Parallel branches and Map processors included."""
    out = {}
    for name, s in states.items():
        out[name] = s
        for branch in s.get("Branches", []):
            out.update(all_states(branch["States"]))
        for processor in (s.get("ItemProcessor"), s.get("Iterator")):
            if processor:
                out.update(all_states(processor["States"]))
    return out


def successors(s: dict) -> set[str]:
    nxt = {s["Next"]} if "Next" in s else set()
    nxt |= {c["Next"] for c in s.get("Choices", [])}
    nxt |= {s["Default"]} if "Default" in s else set()
    nxt |= {c["Next"] for c in s.get("Catch", [])}
    return nxt


def reachable(states: dict, start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(successors(states[name]))
    return seen


def lambda_tasks(states: dict) -> dict:
    return {
        n: s for n, s in all_states(states).items() if s["Type"] == "Task" and re.fullmatch(r"\$\{[A-Za-z]+FunctionArn\}", s["Resource"])
    }


# ---------------------------------------------------------------- the state machines (static)


@pytest.mark.parametrize("machine", sorted(ALL_MACHINES))
def test_every_lambda_task_retries_a_timeout_or_crash_and_the_service_errors(machine):
    tasks = lambda_tasks(asl(ALL_MACHINES[machine])["States"])
    assert tasks, machine
    if machine == "ContainmentStateMachine":
        # The steps inside the Map are found too.
        assert {"Triage", "Isolate", "Deregister", "Snapshot", "DenyRole", "Notify"} <= set(tasks), set(tasks)
    for name, task in tasks.items():
        retried = {e for r in task["Retry"] for e in r["ErrorEquals"]}
        assert LAMBDA_RETRIED <= retried, f"{machine}.{name}: {LAMBDA_RETRIED - retried}"
        assert "States.ALL" not in retried, f"{machine}.{name}: a final error is not retried"
        first = task["Retry"][0]
        assert {"Lambda.Unknown", "Lambda.ServiceException"} <= set(first["ErrorEquals"]), "one Lambda-service retrier"
        assert first["MaxAttempts"] <= 3 and first.get("JitterStrategy") == "FULL"


@pytest.mark.parametrize("machine", sorted(MACHINES))
def test_notify_has_a_catch_that_publishes_a_fallback_and_ends_failed(machine):
    states = asl(MACHINES[machine])["States"]
    notify = states["Notify"]
    [catch] = notify["Catch"]
    assert catch["ErrorEquals"] == ["States.ALL"]
    assert catch["ResultPath"] == "$.notify_error", "the state keeps the event, adds the error"
    after = reachable(states, catch["Next"])
    assert "NotifyFallback" in after
    assert not any(states[n]["Type"] == "Succeed" for n in after), "never Succeeded after notify failed"
    ends = {n for n in after if not successors(states[n])}
    assert ends and all(states[n]["Type"] == "Fail" for n in ends), ends
    fallback = states["NotifyFallback"]
    assert fallback["Resource"] == "arn:aws:states:::sns:publish"
    assert fallback["Parameters"]["TopicArn"] == "${" + TOPIC_SUBSTITUTION + "}"
    assert fallback["Next"] == "NotifyFailed" and states["NotifyFailed"]["Type"] == "Fail"
    assert [c["Next"] for c in fallback["Catch"]] == ["NobodyNotified"], "a failed fallback still ends Failed"
    assert fallback["ResultPath"] is None
    assert fallback["TimeoutSeconds"] <= 300
    # The notify task's comment says a retry may send the message twice.
    assert "twice" in notify["Comment"]


def test_a_workflow_that_cannot_be_started_is_told_to_the_team_and_the_containment_goes_on():
    """Each start of another workflow (the collection, the evidence copies) is caught into a
    publish of Step Functions' own to the alert topic, which goes on where the start would have,
    whether it is sent or not: nothing the team must hear of fails silently, and nothing holds
    the request or the verdict back."""
    states = asl(STATE_MACHINE)["States"]
    starts = {n: s for n, s in states.items() if s.get("Resource") == "arn:aws:states:::states:startExecution"}
    assert set(starts) == {"StartCollection", "StartEvidenceCopy"}
    for name, start in starts.items():
        [catch] = start["Catch"]
        assert catch["ErrorEquals"] == ["States.ALL"]
        notice = states[catch["Next"]]
        assert notice["Resource"] == "arn:aws:states:::sns:publish", name
        assert notice["Parameters"]["TopicArn"] == "${" + TOPIC_SUBSTITUTION + "}"
        assert notice["Next"] == start["Next"] and [c["Next"] for c in notice["Catch"]] == [start["Next"]], name
        assert notice["ResultPath"] is None and notice["TimeoutSeconds"] <= 300
        # Small fields only: the plan's finding id, the execution, the error's name (never a cause).
        message, fields = format_parts(notice["Parameters"]["Message.$"])
        assert fields == ["$.triage.targets[0].target.finding_id", "$$.Execution.Id", catch["ResultPath"] + ".Error"], fields
        subject, subject_fields = format_parts(notice["Parameters"]["Subject.$"])
        for text, args in ((message, fields), (subject, subject_fields)):
            assert text.count("{}") == len(args) and "\n" not in text, text
        # SNS subjects: fewer than 100 characters; a finding id is at most 64 (src/domain/finding.rs).
        assert len(subject.replace("{}", "")) + 64 <= MAX_SUBJECT, subject
        # A missing path is States.Runtime, which no Catch catches: the choice that leads to the
        # start checks that the plan's finding id is there.
        [guard] = [s for s in states.values() if s["Type"] == "Choice" and any(c.get("Next") == name for c in s["Choices"])]
        [rule] = [c for c in guard["Choices"] if c.get("Next") == name]
        checked = {c["Variable"] for c in rule.get("And", [rule]) if c.get("IsPresent") is True}
        assert "$.triage.targets[0].target.finding_id" in checked, rule


FORMAT = re.compile(r"^States\.Format\('((?:[^'\\]|\\.)*)'((?:,\s*[^,]+)*)\)$")


def format_parts(expression: str) -> tuple[str, list[str]]:
    m = FORMAT.match(expression)
    assert m, expression
    return m.group(1), [a.strip() for a in m.group(2).split(",") if a.strip()]


@pytest.mark.parametrize("machine", sorted(MACHINES))
def test_the_fallback_message_is_built_from_small_fields_only(machine):
    states = asl(MACHINES[machine])["States"]
    fallback = states["NotifyFallback"]
    feeders = [n for n, s in states.items() if s.get("Next") == "NotifyFallback"]
    assert feeders and all(states[n]["Type"] == "Pass" for n in feeders)
    fields: dict[str, set[str]] = {}
    for n in feeders:
        params = states[n]["Parameters"]
        assert "ResultPath" not in states[n], "the Pass state's output is only its few fields"
        for key, value in params.items():
            field = key.removesuffix(".$")
            fields.setdefault(field, set())
            if key.endswith(".$"):
                # One scalar each: a named field, or a Format of one.
                path = format_parts(value)[1][0] if value.startswith("States.") else value
                assert re.fullmatch(r"\$\.[a-z_]+\.[A-Za-z_]+", path), f"{n}.{key}: {value}"
                assert not path.startswith(("$.steps", "$.notification")), "never a step's output"
            else:
                assert isinstance(value, str) and len(value) < 40
                fields[field].add(value)
    names = {frozenset(k.removesuffix(".$") for k in states[n]["Parameters"]) for n in feeders}
    assert len(names) == 1, f"every path gives the publish step the same fields: {names}"
    # Every Parameters path is checked by the Choice before it (a missing path is States.Runtime).
    [choice] = [s for s in states.values() if s["Type"] == "Choice" and set(feeders) <= {c["Next"] for c in s["Choices"]} | {s["Default"]}]
    for rule in choice["Choices"]:
        checked = {c["Variable"] for c in rule["And"] if c.get("IsPresent") is True}
        typed = {c["Variable"] for c in rule["And"] if c.get("IsString") is True}
        used = {
            (format_parts(v)[1][0] if v.startswith("States.") else v)
            for k, v in states[rule["Next"]]["Parameters"].items()
            if k.endswith(".$")
        } - {"$.notify_error.Error"}
        assert used <= checked and used <= typed, f"{rule['Next']}: {used - checked}"
    subject, subject_args = format_parts(fallback["Parameters"]["Subject.$"])
    assert subject.startswith("[NOTIFY FAILED] ec2-quarantine: ")
    assert subject_args == ["$.instance"]
    # The instance label is an instance id (at most 19 characters) or a short fixed phrase.
    longest = max([19] + [len(v) for v in fields["instance"]])
    assert len(subject.replace("{}", "")) + longest <= MAX_SUBJECT
    message, message_args = format_parts(fallback["Parameters"]["Message.$"])
    assert message.count("{}") == len(message_args)
    assert message_args[0] == "$$.Execution.Id"
    assert {a.removeprefix("$.") for a in message_args[1:]} <= set(fields)
    assert "\n" not in message and len(message) < 600


# ---------------------------------------------------------------- the template (static)


def resources(kind: str) -> dict:
    return {k: r for k, r in load_template()["Resources"].items() if r["Type"] == kind}


def alarms() -> dict:
    return resources("AWS::CloudWatch::Alarm")


def notifies_the_team(alarm: dict) -> bool:
    return {"Ref": "AlertTopic"} in alarm["Properties"]["AlarmActions"]


def fires_on_any(p: dict) -> bool:
    return p["ComparisonOperator"] == "GreaterThanThreshold" and p["Threshold"] == 0 and p.get("TreatMissingData") == "notBreaching"


@pytest.mark.parametrize("machine", sorted(ALL_MACHINES))
def test_executions_that_end_failed_timed_out_or_aborted_alarm_the_team(machine):
    covered = set()
    for name, alarm in alarms().items():
        p = alarm["Properties"]
        if p.get("Namespace") != "AWS/States" or p.get("Dimensions") != [{"Name": "StateMachineArn", "Value": {"Ref": machine}}]:
            continue
        assert notifies_the_team(alarm) and fires_on_any(p) and p["Statistic"] == "Sum", name
        covered.add(p["MetricName"])
    assert covered == {"ExecutionsFailed", "ExecutionsTimedOut", "ExecutionsAborted"}


def test_the_rule_target_retries_then_keeps_the_finding_in_a_dead_letter_queue():
    rule_id = "GuardDutyFindingRule"
    rule = resources("AWS::Events::Rule")[rule_id]
    [target] = rule["Properties"]["Targets"]
    retry = target["RetryPolicy"]
    assert 0 < retry["MaximumRetryAttempts"] <= 185
    assert 60 <= retry["MaximumEventAgeInSeconds"] <= 86400
    queue_id = target["DeadLetterConfig"]["Arn"]["Fn::GetAtt"][0]
    queue = load_template()["Resources"][queue_id]
    assert queue["Type"] == "AWS::SQS::Queue"
    q = queue["Properties"]
    assert q.get("SqsManagedSseEnabled") is True or "KmsMasterKeyId" in q, "encrypted at rest"
    assert q["MessageRetentionPeriod"] == 14 * 24 * 3600

    # Only this rule may write to it.
    [policy] = [p for p in resources("AWS::SQS::QueuePolicy").values() if {"Ref": queue_id} in p["Properties"]["Queues"]]
    [statement] = policy["Properties"]["PolicyDocument"]["Statement"]
    assert statement["Effect"] == "Allow"
    assert statement["Principal"] == {"Service": "events.amazonaws.com"}
    assert statement["Action"] == "sqs:SendMessage"
    assert statement["Resource"] == {"Fn::GetAtt": [queue_id, "Arn"]}
    assert statement["Condition"] == {"ArnEquals": {"aws:SourceArn": {"Fn::GetAtt": [rule_id, "Arn"]}}}

    # A message in the queue alarms the team.
    depth = [
        a
        for a in alarms().values()
        if a["Properties"].get("Namespace") == "AWS/SQS"
        and a["Properties"]["MetricName"] == "ApproximateNumberOfMessagesVisible"
        and a["Properties"]["Dimensions"] == [{"Name": "QueueName", "Value": {"Fn::GetAtt": [queue_id, "QueueName"]}}]
    ]
    assert len(depth) == 1 and notifies_the_team(depth[0]) and fires_on_any(depth[0]["Properties"])
    # And every finding sent there, not only the first (the depth alarm stays in ALARM while
    # messages wait).
    sent = [
        a
        for a in alarms().values()
        if a["Properties"].get("Namespace") == "AWS/Events"
        and a["Properties"]["MetricName"] == "InvocationsSentToDlq"
        and a["Properties"]["Dimensions"] == [{"Name": "RuleName", "Value": {"Ref": rule_id}}]
    ]
    assert len(sent) == 1 and notifies_the_team(sent[0]) and fires_on_any(sent[0]["Properties"])
    assert sent[0]["Properties"]["Statistic"] == "Sum"


def test_cloudwatch_may_publish_to_the_alert_topic():
    topic = load_template()["Resources"]["AlertTopic"]["Properties"]
    # A KMS-encrypted topic needs a key policy for cloudwatch.amazonaws.com, which a test here
    # cannot see: keep it unencrypted or extend this test with the key.
    assert "KmsMasterKeyId" not in topic
    for policy in resources("AWS::SNS::TopicPolicy").values():
        if {"Ref": "AlertTopic"} not in policy["Properties"]["Topics"]:
            continue
        allowed = [
            s
            for s in policy["Properties"]["PolicyDocument"]["Statement"]
            if s["Effect"] == "Allow"
            and "cloudwatch.amazonaws.com" in json.dumps(s.get("Principal"))
            and "sns:Publish" in json.dumps(s["Action"])
        ]
        assert allowed, "a topic policy must let CloudWatch alarms publish"


# ---------------------------------------------------------------- the 256 KiB limit (local run)


def history(*events: dict) -> list[dict]:
    out = []
    for i, (etype, details) in enumerate(events, start=1):
        key = etype[0].lower() + etype[1:] + "EventDetails"
        if etype.endswith("StateEntered"):
            key = "stateEnteredEventDetails"
        elif etype.endswith("StateExited"):
            key = "stateExitedEventDetails"
        out.append({"id": i, "previousEventId": i - 1, "type": etype, key: details})
    return out


def test_a_payload_over_256_kib_is_found_with_its_state():
    big = json.dumps({"x": "é" * 131_072}, ensure_ascii=False)  # 131,081 characters, 262,153 bytes of UTF-8
    assert len(big) < PAYLOAD_LIMIT_BYTES < len(big.encode("utf-8"))
    events = history(
        ("ExecutionStarted", {"input": "{}"}),
        ("TaskStateEntered", {"name": "Triage", "input": "{}"}),
        ("LambdaFunctionScheduled", {"input": "{}"}),
        ("LambdaFunctionSucceeded", {"output": big}),
        ("TaskStateExited", {"name": "Triage", "output": big}),
    )
    found = oversized_payloads(events)
    assert [(f["state"], f["event"], f["field"]) for f in found] == [
        ("Triage", "LambdaFunctionSucceeded", "output"),
        ("Triage", "TaskStateExited", "output"),
    ]
    assert found[0]["bytes"] == len(big.encode("utf-8"))
    # Exactly at the limit is allowed.
    at_limit = "a" * PAYLOAD_LIMIT_BYTES
    assert oversized_payloads(history(("TaskStateEntered", {"name": "Notify", "input": at_limit}))) == []
    over = history(("TaskStateEntered", {"name": "Notify", "input": at_limit + "a"}))
    assert oversized_payloads(over)[0]["field"] == "input"
    task = history(("TaskStateEntered", {"name": "NotifyFallback", "input": "{}"}), ("TaskScheduled", {"parameters": at_limit + "a"}))
    assert oversized_payloads(task)[0] == {
        "state": "NotifyFallback",
        "event": "TaskScheduled",
        "field": "parameters",
        "bytes": PAYLOAD_LIMIT_BYTES + 1,
    }


def test_an_execution_with_an_oversized_payload_is_reported_failed_with_data_limit_exceeded():
    done = {"status": "SUCCEEDED", "output": "{}"}
    ok = history(("TaskStateEntered", {"name": "Notify", "input": "{}"}), ("TaskStateExited", {"name": "Notify", "output": "{}"}))
    assert execution_outcome(done, ok) == {"status": "SUCCEEDED", "error": None, "cause": None, "output": {}}
    oversized = history(("TaskStateEntered", {"name": "Notify", "input": "a" * (PAYLOAD_LIMIT_BYTES + 1)}))
    outcome = execution_outcome(done, oversized)
    assert outcome["status"] == "FAILED" and outcome["error"] == "States.DataLimitExceeded"
    assert outcome["emulator_status"] == "SUCCEEDED" and outcome["output"] is None
    assert "Notify" in outcome["cause"] and "262144" in outcome["cause"]
    assert [o["state"] for o in outcome["oversized"]] == ["Notify"]
    # A failed execution stays failed, with the error AWS would have given first.
    failed = execution_outcome({"status": "FAILED", "error": "ContainmentFailed", "cause": "x"}, oversized)
    assert (failed["status"], failed["error"], failed["emulator_status"]) == ("FAILED", "States.DataLimitExceeded", "FAILED")


# ---------------------------------------------------------------- the fallback on the emulator


def test_the_fallback_names_what_it_can_when_the_input_is_not_a_finding():
    """Without the functions (their ARNs name nothing): every Lambda task fails, notify too, and the
    fallback still publishes, through each branch that does not need triage's instance."""
    import boto3
    from moto import mock_aws

    with mock_aws(config={"stepfunctions": {"execute_state_machine": True}}):
        sns, sqs, sfn = (boto3.client(s, region_name=REGION) for s in ("sns", "sqs", "stepfunctions"))
        topic = sns.create_topic(Name="alerts")["TopicArn"]
        queue = sqs.create_queue(QueueName="inbox")["QueueUrl"]
        queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=queue_arn)
        arns = {b: f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:absent-{b}" for b in FUNCTIONS}
        finding = json.loads((EVENTS / "credential-exfiltration.json").read_text())
        cases = [
            (STATE_MACHINE, finding, "FallbackNamesFinding", "containment of an unnamed instance", finding["detail"]["id"]),
            (STATE_MACHINE, {"hello": "world"}, "FallbackNamesNothing", "containment of an unnamed instance", "unreadable"),
            (
                RELEASE_MACHINE,
                {"instance_id": "i-0123456789abcdef0"},
                "FallbackNamesError",
                "release of the requested instance",
                "failed with",
            ),
        ]
        for i, (path, payload, branch, subject, said) in enumerate(cases):
            machine = sfn.create_state_machine(
                name=f"fallback-{i}",
                definition=state_machine_definition(arns, path, topic),
                roleArn=f"arn:aws:iam::{ACCOUNT}:role/sfn",
            )["stateMachineArn"]
            execution = sfn.start_execution(stateMachineArn=machine, name=f"case-{i}", input=json.dumps(payload))["executionArn"]
            done = wait_for(sfn, execution, 60)
            assert (done["status"], done.get("error")) == ("FAILED", "NotifyFailed"), done
            events = sfn.get_execution_history(executionArn=execution, maxResults=1000)["events"]
            assert branch in [s["name"] for s in states_from_history(events)]
            [m] = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10, WaitTimeSeconds=1)["Messages"]
            sqs.delete_message(QueueUrl=queue, ReceiptHandle=m["ReceiptHandle"])
            body = json.loads(m["Body"])
            assert body["Subject"] == f"[NOTIFY FAILED] ec2-quarantine: {subject}"
            assert execution in body["Message"] and said in body["Message"]
            assert len(body["Message"].encode()) < MAX_FALLBACK_MESSAGE


@pytest.fixture(scope="module")
def notify_fails_report():
    if not (BIN_DIR / "notify").is_file():
        pytest.skip(f"{BIN_DIR} has no built functions")
    return local_run.run(EVENTS / "credential-exfiltration.json", BIN_DIR, local_run.Scenario(notify_fails=True, release=True))


def test_when_notify_fails_for_good_the_fallback_reaches_the_team_and_the_execution_fails(notify_fails_report):
    report = notify_fails_report
    ex = report["execution"]
    assert (ex["status"], ex["error"]) == ("FAILED", "NotifyFailed"), ex
    states = {s["name"]: s for s in report["states"]}
    notify = states["Notify"]
    assert notify["errors"] and notify["errors"][-1]["error"] == "AwsRequestFailed", notify
    assert notify["attempts"] == 1, "a final error is not retried"
    assert states["FallbackNamesAll"], "triage named the instance"
    assert states["NotifyFallback"]["attempts"] == 1 and not states["NotifyFallback"]["errors"]
    # The containment itself was done.
    assert states["Isolate"]["output"]["status"] == "done"

    sim = report["simulated"]
    n = report["notification"]
    assert n is not None and n["count"] == 1, "the fallback message reached the subscribed queue, once"
    assert n["subject"] == f"[NOTIFY FAILED] ec2-quarantine: containment of {sim['instance_id']}"
    finding = json.loads((EVENTS / "credential-exfiltration.json").read_text())["detail"]
    for part in (finding["id"], finding["type"], sim["account"], REGION, "AwsRequestFailed", "execution:ec2-quarantine-containment:local-"):
        assert part in n["message"], part
    assert len(n["message"].encode()) < MAX_FALLBACK_MESSAGE
    assert not any(eni in n["message"] for eni in sim["interfaces"]), "no step output is copied"
    assert "published the short fallback message" in render(report)


def test_when_notify_fails_the_release_falls_back_too(notify_fails_report):
    rel = notify_fails_report["release"]
    assert (rel["execution"]["status"], rel["execution"]["error"]) == ("FAILED", "NotifyFailed"), rel["execution"]
    assert rel["restored"], rel["differences"]
    n = rel["notification"]
    sim = notify_fails_report["simulated"]
    assert n["subject"] == f"[NOTIFY FAILED] ec2-quarantine: release of {sim['instance_id']}"
    assert "Release step: done" in n["message"] and "AwsRequestFailed" in n["message"]
