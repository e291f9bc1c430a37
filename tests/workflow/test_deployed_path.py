"""The deployed path: template.yaml deployed with the real `sam deploy` into the local control
plane (MiniStack), a GuardDuty finding published to the deployed rule, the deployed state machine
running the deployed release bootstraps against the data plane (moto) where the simulated
instance lives (helper_scripts/local/deployed.py).

Run by helper_scripts/test.sh after `cargo build --release`; RELEASE_BIN_DIR names the release
bootstraps, FUNCTIONS_BIN_DIR the debug ones the local run (compared with) uses.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest
from local import run as local_run
from local.deployed import HOST_ARCHITECTURE, deployed_stack, finding_id_of, started_executions
from local.stack import next_message, received_notification, wait_for
from local.template import ACCOUNT, REGION, load_template
from local.world import point_event_at

ROOT = Path(__file__).resolve().parents[2]
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
RELEASE_DIR = Path(os.environ.get("RELEASE_BIN_DIR") or TARGET / "release")
BIN_DIR = Path(os.environ.get("FUNCTIONS_BIN_DIR") or TARGET / "debug")
EVENTS = ROOT / "events"

# An EC2 finding the rule passes (High, Backdoor:EC2/), and one it must not (Low).
CONTAINED_EVENT = EVENTS / "instance-backdoor.json"
FILTERED_EVENT = EVENTS / "low-severity-ssh-probe.json"


# What template.yaml deploys with its parameters' defaults (the SAM transform adds each
# function's and state machine's role), written out so that a resource dropped from the template
# fails the test. AlertEmailSubscription only with AlertEmail set.
FUNCTIONS = (
    "TriageFunction",
    "IsolateFunction",
    "DeregisterFunction",
    "SnapshotFunction",
    "DenyRoleFunction",
    "NotifyFunction",
    "ReleaseFunction",
    "SecurityHubFunction",
    "ApprovalFunction",
    "EvidenceCopyFunction",
    "CollectFunction",
)
RESOURCES = {
    **{f: "AWS::Lambda::Function" for f in FUNCTIONS},
    **{f"{f}Role": "AWS::IAM::Role" for f in FUNCTIONS},
    "ContainmentStateMachine": "AWS::StepFunctions::StateMachine",
    "ContainmentStateMachineRole": "AWS::IAM::Role",
    "ReleaseStateMachine": "AWS::StepFunctions::StateMachine",
    "ReleaseStateMachineRole": "AWS::IAM::Role",
    "EvidenceCopyStateMachine": "AWS::StepFunctions::StateMachine",
    "EvidenceCopyStateMachineRole": "AWS::IAM::Role",
    "CollectionStateMachine": "AWS::StepFunctions::StateMachine",
    "CollectionStateMachineRole": "AWS::IAM::Role",
    "CaseTable": "AWS::DynamoDB::Table",
    "PauseSwitch": "AWS::SSM::Parameter",
    "AlertTopic": "AWS::SNS::Topic",
    "GuardDutyFindingRule": "AWS::Events::Rule",
    "PauseSwitchChangedRule": "AWS::Events::Rule",
    "AlertTopicPolicy": "AWS::SNS::TopicPolicy",
    "GuardDutyFindingRuleRole": "AWS::IAM::Role",
    "FindingDeadLetterQueue": "AWS::SQS::Queue",
    "FindingDeadLetterQueuePolicy": "AWS::SQS::QueuePolicy",
    "EvidenceBucket": "AWS::S3::Bucket",
    "EvidenceBucketPolicy": "AWS::S3::BucketPolicy",
    **{
        alarm: "AWS::CloudWatch::Alarm"
        for alarm in ("FindingDeadLetterAlarm", "FindingSentToDeadLetterAlarm", "FindingLostAlarm", "PauseAlertFailedAlarm")
        + tuple(
            f"{m}Executions{e}Alarm"
            for m in ("Containment", "Release", "EvidenceCopy", "Collection")
            for e in ("Failed", "TimedOut", "Aborted")
        )
    },
    # Each function's and state machine's log group, with its retention, and the dashboard.
    **{f"{f.removesuffix('Function')}LogGroup": "AWS::Logs::LogGroup" for f in FUNCTIONS},
    **{f"{m}StateMachineLogGroup": "AWS::Logs::LogGroup" for m in ("Containment", "Release", "EvidenceCopy", "Collection")},
    "Dashboard": "AWS::CloudWatch::Dashboard",
}

# What ApprovalLinks=true adds (the function with its role, its URL and the two permissions a
# public function URL needs).
LINK_RESOURCES = {
    "ApprovalLinkFunction": "AWS::Lambda::Function",
    "ApprovalLinkFunctionRole": "AWS::IAM::Role",
    "ApprovalLinkFunctionUrl": "AWS::Lambda::Url",
    "ApprovalLinkFunctionUrlPublicPermissions": "AWS::Lambda::Permission",
    "ApprovalLinkFunctionURLInvokeAllowPublicAccess": "AWS::Lambda::Permission",
    "ApprovalLinkLogGroup": "AWS::Logs::LogGroup",
}

# Each function setting, the template parameter that gives it, and a value the stack of the
# filtered-finding test is deployed with: every text parameter a value of its own, other than
# its default, so that CloudFormation passing a variable the wrong parameter, or none, fails the
# test; two booleans cannot all differ, so the template's wiring itself is checked too (each
# variable `!Ref`s its parameter). SeverityThreshold 7.5 still passes the High-severity finding
# and filters the Low one; DryRun=true makes its execution change nothing.
PARAMETERS = {
    "DRY_RUN": ("DryRun", "true"),
    "ROLE_ACTION": ("RoleAction", "revoke-sessions"),
    "DENY_ALL_SHARED_ROLES": ("DenyAllSharedRoles", "true"),
    "AUTO_SCALING_ACTION": ("AutoScalingAction", "detach"),
    "SEVERITY_THRESHOLD": ("SeverityThreshold", "7.5"),
    "ACT_ON_TYPE_PREFIXES": ("ActOnTypePrefixes", "Backdoor:EC2/,CryptoCurrency:EC2/"),
    "NOTIFY_ONLY_TYPE_PREFIXES": ("NotifyOnlyTypePrefixes", "Recon:EC2/"),
    "CONTAIN_TARGETS": ("ContainTargets", "false"),
    "CONTAIN_CONTAINER_HOSTS": ("ContainContainerHosts", "true"),
    "EXEMPTION_TAG_KEY": ("ExemptionTagKey", "ops-exempt"),
    "MAX_INSTANCES_PER_FINDING": ("MaxInstancesPerFinding", "7"),
    "MAX_CONTAINMENTS_PER_HOUR": ("MaxContainmentsPerHour", "15"),
    "APPROVALS": ("Approvals", "false"),
    "APPROVAL_TYPE_PREFIXES": ("ApprovalTypePrefixes", "Recon:EC2/Portscan"),
    "APPROVAL_SEVERITY_BAND": ("ApprovalSeverityBand", "2-3.9"),
    "APPROVAL_TAG": ("ApprovalTag", "Environment=production"),
    "APPROVAL_TIMEOUT_SECONDS": ("ApprovalTimeoutSeconds", "900"),
    "APPROVAL_TIMEOUT_ACTION": ("ApprovalTimeoutAction", "contain"),
    "SNAPSHOT_LOCK_MODE": ("SnapshotLockMode", "compliance"),
    "SNAPSHOT_LOCK_DAYS": ("SnapshotLockDays", "7"),
    "SNAPSHOT_LOCK_COOL_OFF_HOURS": ("SnapshotLockCoolOffHours", "1"),
    "AWS_MAX_ATTEMPTS": ("SdkMaxAttempts", "5"),
    "MEMBER_ROLE_NAME": ("MemberRoleName", "ops-member-role"),
    "MEMBER_ROLE_EXTERNAL_ID": ("MemberRoleExternalId", "ops-external-id"),
    "MEMBER_ACCOUNTS_ALLOW": ("MemberAccountsAllow", "111111111111,222222222222"),
    "MEMBER_ACCOUNTS_DENY": ("MemberAccountsDeny", "333333333333"),
}
# The settings the AWS SDK reads itself (aws-config's environment provider), not the code.
SDK_SETTINGS = ("AWS_MAX_ATTEMPTS",)
# The settings no parameter gives: the stack's own resources and account.
STACK_SETTINGS = ("CASE_TABLE", "RESPONDER_ACCOUNT_ID", "PAUSE_PARAMETER", "METRICS_NAMESPACE")
# The setting only `sam local invoke` gives (deploy.sh emulator's env file): empty when deployed.
LOCAL_SETTINGS = ("SAM_LOCAL_ENDPOINT_URL",)
# The parameters of one function's own settings (and the resources they add), set too.
OVERRIDES = {parameter: value for parameter, value in PARAMETERS.values()} | {
    "AlertEmail": "soc@example.com",
    "ChatNotifications": "Enabled",
    "SecurityHubUpdates": "Disabled",
    "ApprovalLinks": "true",
    # Not function settings: the stack deploys with them all the same.
    "LogRetentionDays": "30",
    "Tracing": "Disabled",
}


@pytest.fixture(scope="module")
def deployed(tmp_path_factory) -> dict:
    """One run on the deployed path: the stack deployed, the finding through the deployed rule,
    a second finding for the same instance, then the release."""
    scenario = local_run.Scenario(repeat=True, release=True)
    return local_run.run(CONTAINED_EVENT, BIN_DIR, scenario, tmp_path_factory.mktemp("deployed"), release_dir=RELEASE_DIR)


@pytest.fixture(scope="module")
def local(tmp_path_factory) -> dict:
    """The same finding, second finding and release on today's local path (the state machine
    files in moto's interpreter)."""
    scenario = local_run.Scenario(repeat=True, release=True)
    return local_run.run(CONTAINED_EVENT, BIN_DIR, scenario, tmp_path_factory.mktemp("local"))


@pytest.fixture(scope="module")
def configured(tmp_path_factory) -> dict:
    """A stack deployed with every parameter set to a value other than its default; the
    filtered finding, then the contained one, published to its rule."""
    log_dir = tmp_path_factory.mktemp("configured")
    with deployed_stack(RELEASE_DIR, log_dir, OVERRIDES) as st:
        machine = st.machine
        events = {}
        for name, path in (("filtered", FILTERED_EVENT), ("passed", CONTAINED_EVENT)):
            event = point_event_at(json.loads(path.read_text()), st.sim, st.sim["instance_id"])
            before = {e["executionArn"] for e in st.sfn.list_executions(stateMachineArn=machine)["executions"]}
            answer = st.publish(event)
            started = started_executions(st.sfn, machine, before, wait_s=3.0)
            events[name] = {"answer": answer, "finding_id": event["detail"]["id"], "started": started}
            events[name]["ids"] = [finding_id_of(st.sfn, e) for e in started]
            events[name]["ended"] = [wait_for(st.sfn, e, 120)["status"] for e in started]
        # The pause switch, set and cleared with deploy.sh as the on-call engineer does; the
        # same finding (a new id each time) published while paused and after the resume.
        rails = {}
        for step, args in (("paused", ["pause", "--reason", "scanner mistaken for an attacker"]), ("resumed", ["resume"])):
            done = deploy_sh(st.control_plane, log_dir, *args)
            # A warm triage reuses its last read of the switch for 5 s (src/aws/pause.rs, CACHE_FOR).
            time.sleep(5.5)
            event = point_event_at(json.loads(CONTAINED_EVENT.read_text()), st.sim, st.sim["instance_id"])
            event["detail"]["id"] = {"paused": "a1" * 16, "resumed": "b2" * 16}[step]
            before = {e["executionArn"] for e in st.sfn.list_executions(stateMachineArn=machine)["executions"]}
            received_notification(st)  # the inbox emptied of the earlier findings' messages
            st.publish(event)
            (execution,) = started_executions(st.sfn, machine, before, wait_s=3.0)
            wait_for(st.sfn, execution, 120)
            rails[step] = {"deploy_sh": done, "notification": received_notification(st)}
        return {"facts": st.facts, "events": events, "rails": rails}


# Approvals on: every Backdoor finding waits; a person's answer, or the shortest timeout the
# template takes.
APPROVAL_OVERRIDES = {"Approvals": "true", "ApprovalTypePrefixes": "Backdoor:EC2/", "ApprovalTimeoutSeconds": "60", "ApprovalLinks": "true"}
APPROVAL_LINK = re.compile(r"https://([a-z0-9]+)\.lambda-url\.[a-z0-9-]+\.on\.aws/\?(a=apr-[0-9a-f]{16}&t=[0-9a-f]{64})")


def open_link(control_plane: str, url_id: str, query: str, form: dict | None = None) -> tuple[int, str]:
    """The approval link as a browser opens it (GET) or confirms it (POST), through MiniStack's
    path-based function URL address (`/_aws/lambda-url/<id>/`)."""
    import urllib.error
    import urllib.parse
    import urllib.request

    data = urllib.parse.urlencode(form).encode() if form is not None else None
    request = urllib.request.Request(f"{control_plane}/_aws/lambda-url/{url_id}/?{query}", data=data)
    if data is not None:
        request.add_header("Content-Type", "application/x-www-form-urlencoded")
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


@pytest.fixture(scope="module")
def approvals(tmp_path_factory) -> dict:
    """A stack deployed with approvals and links on. One finding nobody answers (it times out
    after 60 s, and a reject after that is refused); one a person rejects through the link (and
    a replay of the link is refused); then one a person approves with deploy.sh, which the
    waiting execution takes on at once."""
    log_dir = tmp_path_factory.mktemp("approvals")
    out = {}
    with deployed_stack(RELEASE_DIR, log_dir, APPROVAL_OVERRIDES) as st:
        machine = st.machine
        for case, finding_id in (("timed_out", "c3" * 16), ("linked", "e5" * 16), ("approved", "d4" * 16)):
            event = point_event_at(json.loads(CONTAINED_EVENT.read_text()), st.sim, st.sim["instance_id"])
            event["detail"]["id"] = finding_id
            before = {e["executionArn"] for e in st.sfn.list_executions(stateMachineArn=machine)["executions"]}
            st.publish(event)
            (execution,) = started_executions(st.sfn, machine, before, wait_s=3.0)
            request = next_message(st, lambda m: "APPROVAL NEEDED" in m["subject"])
            approval_id = local_run.APPROVAL_ID.search(request["message"]).group(1)
            if case == "timed_out":
                # The on-call engineer's view while it waits.
                out["rails_waiting"] = deploy_sh(st.control_plane, log_dir, "rails", "--json")
            answered = link = None
            if case == "approved":
                answered = deploy_sh(st.control_plane, log_dir, "approve", approval_id)
            if case == "linked":
                url_id, query = APPROVAL_LINK.search(request["message"]).groups()
                fields = dict(pair.split("=") for pair in query.split("&"))
                confirm = {**fields, "decision": "reject", "reason": "our scanner", "confirm": "reject"}
                link = {
                    "opened": open_link(st.control_plane, url_id, query),
                    "confirmed": open_link(st.control_plane, url_id, "", confirm),
                    "replayed": open_link(st.control_plane, url_id, "", {**confirm, "decision": "approve", "confirm": "approve"}),
                    "forged": open_link(st.control_plane, url_id, "", {**confirm, "t": "0" * 64}),
                }
            done = wait_for(st.sfn, execution, 120)
            report = next_message(st, lambda m: "APPROVAL NEEDED" not in m["subject"])
            late = deploy_sh(st.control_plane, log_dir, "reject", approval_id, "--reason", "too late") if case == "timed_out" else None
            out[case] = {
                "request": request,
                "approval_id": approval_id,
                "answered": answered,
                "link": link,
                "status": done["status"],
                "report": report,
                "late": late,
            }
        out["rails_after"] = deploy_sh(st.control_plane, log_dir, "rails")
    return out


def test_deploy_sh_rails_shows_the_request_waiting_and_nothing_once_answered(approvals):
    waiting = approvals["rails_waiting"]
    assert waiting.returncode == 0, waiting.stderr
    state = json.loads(waiting.stdout)
    assert state["pause"]["paused"] is False and state["approvals"] == "true", state
    (request,) = state["pending_approvals"]
    assert request["approval_id"] == approvals["timed_out"]["approval_id"], request
    assert request["on_timeout"] == "notify-only" and request["finding"] == "c3" * 16 and not request["past_deadline"], request
    assert request["message_sent"] is True, request
    assert len(request["instances"]) == 1 and request["instances"][0].startswith("i-"), request
    after = approvals["rails_after"]
    assert after.returncode == 0, after.stderr
    assert "Pause switch: not paused" in after.stdout and "No approval request is waiting." in after.stdout, after.stdout
    # A containment a person approved takes no slot of the rate cap (src/steps/triage.rs).
    assert "none in the last hour" in after.stdout, after.stdout


def test_an_approval_request_is_answered_with_deploy_sh_and_the_waiting_execution_contains(approvals):
    approved = approvals["approved"]
    assert approved["request"]["subject"].startswith("[ec2-quarantine] APPROVAL NEEDED to contain i-"), approved["request"]
    assert "ApprovalTypePrefixes" in approved["request"]["message"] and "Deadline:" in approved["request"]["message"]
    assert approved["answered"].returncode == 0, approved["answered"].stderr
    assert approved["answered"].stdout.startswith("RECORDED: approval apr-"), approved["answered"].stdout
    assert approved["status"] == "SUCCEEDED"
    report = approved["report"]
    assert report["attributes"]["verdict"] == "contained", report
    assert f"Safety rail: approval {approved['approval_id']}: approved by " in report["message"], report["message"]


def test_an_unanswered_request_takes_the_default_and_a_later_answer_is_refused(approvals):
    timed_out = approvals["timed_out"]
    assert timed_out["status"] == "SUCCEEDED"
    report = timed_out["report"]
    assert report["attributes"]["verdict"] == "notify_only", report
    assert f"approval {timed_out['approval_id']}: nobody answered by " in report["message"], report["message"]
    assert "notify only, nothing is contained" in report["message"]
    assert timed_out["late"].returncode == 1, (timed_out["late"].stdout, timed_out["late"].stderr)
    assert timed_out["late"].stdout.startswith("REFUSED: already decided"), timed_out["late"].stdout


def test_the_approval_link_shows_the_request_takes_one_confirmed_decision_and_refuses_replays(approvals):
    linked = approvals["linked"]
    status, page = linked["link"]["opened"]
    assert status == 200 and 'value="reject"' in page and linked["approval_id"] in page, page
    status, page = linked["link"]["confirmed"]
    assert status == 200 and "rejected by the approval link (from " in page, page
    assert linked["link"]["replayed"][0] == 409 and "already decided" in linked["link"]["replayed"][1]
    assert linked["link"]["forged"][0] == 403
    assert linked["status"] == "SUCCEEDED"
    report = linked["report"]
    assert report["attributes"]["verdict"] == "notify_only", report
    assert "rejected by the approval link" in report["message"] and "(our scanner)" in report["message"], report["message"]


@pytest.fixture(scope="module")
def burst(tmp_path_factory) -> dict:
    """`deploy.sh local --deployed --burst 2 --approval approve`: three findings at once with the
    rate cap at 2 and approvals on."""
    scenario = local_run.Scenario(burst=2, approval="approve")
    return local_run.run(CONTAINED_EVENT, BIN_DIR, scenario, tmp_path_factory.mktemp("burst"), release_dir=RELEASE_DIR)


def test_a_burst_over_the_rate_cap_contains_the_cap_and_the_rest_waits_for_a_person(burst):
    instances = burst["burst"]["instances"]
    assert burst["parameters"] == {"Approvals": "true", "MaxContainmentsPerHour": "2"}, burst["parameters"]
    # When it settled: two ended, contained; the third waited in AskApproval, asking.
    settled = sorted((i["while_burst_settled"]["status"], i["while_burst_settled"]["state"]) for i in instances)
    assert [s for s, _ in settled] == ["RUNNING", "SUCCEEDED", "SUCCEEDED"], settled
    (waited,) = [i for i in instances if i["approval"]]
    assert waited["while_burst_settled"]["state"] == "AskApproval", waited
    assert waited["approval"]["decision"]["status"] == "recorded", waited["approval"]
    assert "rate cap reached" in waited["approval"]["request"]["message"], waited["approval"]["request"]["message"]
    # At the end: all three contained, the third by the person's approval, whatever the cap says.
    assert [(i["status"], i["verdict"]) for i in instances] == [("SUCCEEDED", "contained")] * 3, instances
    assert any(f"approval {waited['approval']['approval_id']}: approved by arn:aws:iam::" in r for r in waited["rails"]), waited["rails"]
    for i in instances:
        assert all(
            len(g) == 1 and g != b for g, b in zip(i["after"]["interface_groups"].values(), i["before"]["interface_groups"].values())
        ), i
    # What deploy.sh rails showed while it waited: the cap full, the request waiting.
    rails = burst["burst"]["rails_while_settled"]
    assert [r["containments_last_hour"] for r in rails["rate_cap"]] == [2], rails
    assert [p["approval_id"] for p in rails["pending_approvals"]] == [waited["approval"]["approval_id"]], rails
    shown = local_run.render(burst)
    assert "2 of 2 automatic containments in the last hour; FULL" in shown, shown
    assert (
        "When the burst had settled" in shown and "waiting in AskApproval" in shown and "Answered with deploy.sh approve: RECORDED" in shown
    )


def deploy_sh(control_plane: str, home: Path, *args: str) -> subprocess.CompletedProcess:
    """deploy.sh as a user runs it, its AWS calls going to the control plane."""
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(home),
        "AWS_ENDPOINT_URL": control_plane,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": REGION,
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
    }
    command = [str(ROOT / "helper_scripts" / "deploy.sh"), *args]
    return subprocess.run(command, check=False, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120)


def test_the_deployed_rule_starts_the_deployed_state_machine_which_contains_the_instance(deployed):
    assert deployed["path"] == "deployed"
    assert deployed["rule"]["deployed_rule_matched"] and deployed["rule"]["template_pattern_matched"]
    assert deployed["execution"]["status"] == "SUCCEEDED", deployed["execution"]
    # Every interface in the quarantine group alone, in the data plane (moto): the functions'
    # EC2, IAM, Auto Scaling and load-balancing calls reached it, not the control plane.
    after = deployed["emulator"]["after"]
    (quarantine,) = after["quarantine_groups"]
    assert (quarantine["ingress_rules"], quarantine["egress_rules"]) == (0, 0), quarantine
    assert set(map(tuple, after["interface_groups"].values())) == {(quarantine["id"],)}, after["interface_groups"]
    assert after["instance"]["instance_profile"].endswith("/ec2-quarantine-quarantined"), after["instance"]
    assert after["instance"]["termination_protection"] is True
    assert [g["instances"][0][1] for g in after["auto_scaling"]] == ["Standby"] and after["targets"] == [] and after["classic"] == []
    assert any(p.endswith("/ec2-quarantine-DenyAll") for p in after["role"]["attached_policies"]), after["role"]
    # The notification reached a subscriber of the deployed topic.
    note = deployed["notification"]
    assert note and note["attributes"]["verdict"] == "contained", note
    assert note["subject"].startswith("[CONTAINED]"), note["subject"]
    # The second finding joined the case; the release restored the instance; one case.
    assert deployed["second_finding"]["after"] == after
    assert deployed["release"]["execution"]["status"] == "SUCCEEDED" and deployed["release"]["restored"], deployed["release"]["differences"]
    assert [c["status"] for c in deployed["case_list"]] == ["released"]


def test_the_deployed_path_ends_as_the_local_run_does(deployed, local):
    # MiniStack's execution history leaves out the states inside a Map's iterations, which AWS's
    # history holds (tests/README, emulator gaps); the steps' outcomes are compared through the
    # case record, which each step writes itself.
    inner = map_iteration_states(json.loads((ROOT / "statemachine" / "containment.asl.json").read_text()))
    assert inner, "the containment state machine has no Map"
    for part in (None, "second_finding", "release"):
        mine, theirs = outcome(deployed, part), outcome(local, part)
        assert [s for s in theirs.pop("states") if s[0] not in inner] == mine.pop("states"), part
        for key in mine:
            assert mine[key] == theirs[key], f"{part or 'first finding'}, {key}: deployed {mine[key]!r} != local {theirs[key]!r}"


def test_every_resource_the_template_declares_is_deployed(deployed, configured):
    configured_extra = {
        "AlertEmailSubscription": "AWS::SNS::Subscription",
        "ChatTopic": "AWS::SNS::Topic",
        **LINK_RESOURCES,
    }
    for facts, extra in ((deployed["deployed"], {}), (configured["facts"], configured_extra)):
        got = {logical: r["type"] for logical, r in facts["resources"].items()}
        assert got == RESOURCES | extra
        assert {r["status"] for r in facts["resources"].values()} == {"CREATE_COMPLETE"}


def test_each_parameter_reaches_the_functions_through_its_own_variable(deployed, configured):
    template = load_template()
    variables = set(template["Globals"]["Function"]["Environment"]["Variables"])
    assert variables == set(PARAMETERS) | set(STACK_SETTINGS) | set(LOCAL_SETTINGS), "a function setting this test does not know"
    # Every variable is one the functions read (or their AWS SDK: its retry policy's attempts).
    source = "\n".join(p.read_text() for p in (ROOT / "src").rglob("*.rs"))
    assert [v for v in variables - set(SDK_SETTINGS) if f'"{v}"' not in source] == []
    globals_ = template["Globals"]["Function"]
    wiring = {v: ref.get("Ref") if isinstance(ref, dict) else ref for v, ref in globals_["Environment"]["Variables"].items()}
    assert {v: wiring[v] for v in PARAMETERS} == {v: parameter for v, (parameter, _) in PARAMETERS.items()}
    for facts, given in ((deployed["deployed"], {}), (configured["facts"], OVERRIDES)):
        links = {"ApprovalLinkFunction"} if given.get("ApprovalLinks") == "true" else set()
        assert set(facts["functions"]) == {f for f, t in RESOURCES.items() if t == "AWS::Lambda::Function"} | links
        for logical, f in facts["functions"].items():
            env = f["environment"]
            for variable, (parameter, _) in PARAMETERS.items():
                want = given.get(parameter, str(template["Parameters"][parameter].get("Default", "")))
                assert env.get(variable) == want, (logical, variable, env.get(variable), want)
            assert (env["CASE_TABLE"], env["RESPONDER_ACCOUNT_ID"]) == (facts["outputs"]["CaseTableName"], ACCOUNT)
            assert env["PAUSE_PARAMETER"] == facts["outputs"]["PauseParameterName"] == "/ec2-quarantine/ec2-quarantine/paused"
            assert env["METRICS_NAMESPACE"] == "ec2-quarantine/ec2-quarantine"
            assert env["SAM_LOCAL_ENDPOINT_URL"] == "", "a deployed function talks to AWS only"
            # The one adaptation: the host's architecture (deployed.build says why).
            assert f["architectures"] == [HOST_ARCHITECTURE[os.uname().machine]]
            assert (f["runtime"], f["handler"]) == (globals_["Runtime"], globals_["Handler"])
            assert (f["memory_mb"], f["timeout_s"]) == (globals_["MemorySize"], globals_["Timeout"])
        notify_env = facts["functions"]["NotifyFunction"]["environment"]
        assert notify_env["ALERT_TOPIC_ARN"] == facts["outputs"]["AlertTopicArn"]
        # The chat topic only where ChatNotifications=Enabled; Security Hub updates unless disabled.
        assert notify_env["CHAT_TOPIC_ARN"] == facts["outputs"].get("ChatTopicArn", "")
        assert bool(notify_env["CHAT_TOPIC_ARN"]) == (given.get("ChatNotifications") == "Enabled")
        # The approval link only where ApprovalLinks=true: the approval function knows its URL.
        approval_env = facts["functions"]["ApprovalFunction"]["environment"]
        assert approval_env["APPROVAL_LINK_URL"] == facts["outputs"].get("ApprovalLinkUrl", ""), approval_env
        assert bool(approval_env["APPROVAL_LINK_URL"]) == bool(links)
        hub_env = facts["functions"]["SecurityHubFunction"]["environment"]
        assert hub_env["SECURITY_HUB_UPDATES"] == given.get("SecurityHubUpdates", "Enabled")


def test_the_rule_targets_the_containment_state_machine_with_its_role_retries_and_dead_letter_queue(deployed):
    facts = deployed["deployed"]
    (target,) = facts["rule_targets"]
    assert target["Arn"] == facts["outputs"]["StateMachineArn"]
    assert ":role/" in target["RoleArn"] and "GuardDutyFindingRuleRole" in target["RoleArn"]
    assert target["RetryPolicy"] == {"MaximumRetryAttempts": 185, "MaximumEventAgeInSeconds": 3600}
    assert target["DeadLetterConfig"]["Arn"].endswith(":" + facts["outputs"]["FindingDeadLetterQueueUrl"].rsplit("/", 1)[1])


def test_each_deployed_task_calls_the_function_its_substitution_names(deployed):
    facts = deployed["deployed"]
    arns = {logical: f["arn"] for logical, f in facts["functions"].items()}
    for logical, source in (
        ("ContainmentStateMachine", "containment"),
        ("ReleaseStateMachine", "release"),
        ("EvidenceCopyStateMachine", "evidence-copy"),
        ("CollectionStateMachine", "collection"),
    ):
        machine = facts["state_machines"][logical]
        assert machine["unresolved"] == [], (logical, machine["unresolved"])
        wanted = json.loads((ROOT / "statemachine" / f"{source}.asl.json").read_text())
        got = {name: state for name, state in all_states(machine["definition"])}
        tasks = 0
        for name, state in all_states(wanted):
            resource = state.get("Resource", "")
            if m := re.fullmatch(r"\$\{(\w+)FunctionArn\}", resource):
                tasks += 1
                assert got[name]["Resource"] == arns[f"{m.group(1)}Function"], (logical, name)
            elif state.get("Parameters", {}).get("TopicArn") == "${AlertTopicArn}":
                assert got[name]["Parameters"]["TopicArn"] == facts["outputs"]["AlertTopicArn"], (logical, name)
        assert (
            tasks
            == {"ContainmentStateMachine": 8, "ReleaseStateMachine": 2, "EvidenceCopyStateMachine": 1, "CollectionStateMachine": 1}[logical]
        )


def test_deploy_sh_pauses_and_resumes_the_deployed_responder(configured):
    paused, resumed = configured["rails"]["paused"], configured["rails"]["resumed"]
    assert paused["deploy_sh"].returncode == 0, paused["deploy_sh"].stderr
    assert "is PAUSED since " in paused["deploy_sh"].stdout, paused["deploy_sh"].stdout
    note = paused["notification"]
    assert note["attributes"]["verdict"] == "notify_only", note
    assert "the responder is paused" in note["message"]
    assert "Safety rail: paused since " in note["message"] and "(reason given: scanner mistaken for an attacker)" in note["message"]
    assert resumed["deploy_sh"].returncode == 0, resumed["deploy_sh"].stderr
    assert "is running" in resumed["deploy_sh"].stdout
    # Resumed: contained again (a dry run on this stack), and nothing about the switch.
    note = resumed["notification"]
    assert note["attributes"]["verdict"] == "dry_run", note
    assert "Safety rail" not in note["message"]


def test_the_deployed_rule_filters_what_the_template_filters_and_passes_the_rest(configured):
    filtered, passed = configured["events"]["filtered"], configured["events"]["passed"]
    assert filtered["answer"]["FailedEntryCount"] == 0 and passed["answer"]["FailedEntryCount"] == 0
    # Published first, the filtered finding started nothing; the one published after it started
    # exactly one execution, its own (so delivery was not merely late).
    assert filtered["started"] == []
    assert len(passed["started"]) == 1 and passed["ids"] == [passed["finding_id"]]
    assert passed["ended"] == ["SUCCEEDED"]


# ------------------------------------------------------------------------------ helpers

# The identifiers that differ from one emulator run to the next: the emulators' ids and times; the
# evidence bucket's name (the stack's, or the local run's), a manifest's version and its SHA-256
# (its content names the case and the snapshots).
IDS = re.compile(
    r"\b(i|sg|snap|vol|eni|vpc|subnet|ami)-[0-9a-f]{8,17}\b|\d{8}T\d+Z|\d{4}-\d\d-\d\dT[\d:.]+Z|\b[0-9a-f]{16}\b"
    r"|s3://[a-z0-9.-]+/|\b[0-9a-f]{64}\b|(?<=json version )\S+"
)


def scrub(value) -> str:
    return IDS.sub("*", json.dumps(value, sort_keys=True))


def outcome(whole: dict, part: str | None) -> dict:
    """What a run (or its second finding, or its release) ended with, without the identifiers
    the emulators choose."""
    report = whole[part] if part else whole

    def step(state: dict) -> tuple:
        out = state.get("output") if isinstance(state.get("output"), dict) else {}
        return state["name"], state["type"], out.get("status"), out.get("decision"), out.get("verdict")

    note = report["notification"] or {}
    after = report["emulator"]["after"] if "emulator" in report else report["after"]
    return {
        "status": report["execution"]["status"],
        "states": [step(s) for s in report["states"]],
        "subject": scrub(note.get("subject")),
        # Its lines as a set: lists of interfaces follow their ids, which the emulator chooses.
        "message": sorted(IDS.sub("*", note.get("message") or "").splitlines()),
        "attributes": scrub({k: v for k, v in (note.get("attributes") or {}).items() if k != "instance_id"}),
        # The snapshots in device order (the emulator lists them by volume id, which it chooses).
        # and the interfaces by their groups (keyed by id, they sort by the id).
        "after": scrub(
            {
                **after,
                "snapshots": sorted(after.get("snapshots", []), key=lambda s: sorted(s["tags"].items())),
                "interface_groups": sorted(IDS.sub("*", json.dumps(g)) for g in after["interface_groups"].values()),
            }
        ),
        "cases": [c["status"] for c in whole["case_list"]],
        # Each step's outcome, with done and already done as one: a task that Step Functions
        # retried (a Lambda call slow under load: the two runs share 2 cores) ends already done
        # with one more attempt, which says nothing of the path.
        "steps": sorted(
            (s["step"], "acted" if s["outcome"] in ("done", "already_done") else s["outcome"]) for c in whole["cases"] for s in c["steps"]
        ),
    }


def map_iteration_states(definition: dict, inside: bool = False) -> set[str]:
    """The names of the states that run inside a Map's iterations."""
    names = set()
    for name, state in definition.get("States", {}).items():
        if inside:
            names.add(name)
        for inner in [state.get("ItemProcessor"), state.get("Iterator")]:
            if isinstance(inner, dict):
                names |= map_iteration_states(inner, True)
        for branch in state.get("Branches") or []:
            names |= map_iteration_states(branch, inside)
    return names


def all_states(definition: dict):
    """Each state of a definition by name, those inside Map and Parallel states too."""
    for name, state in definition.get("States", {}).items():
        yield name, state
        for inner in [state.get("ItemProcessor"), state.get("Iterator"), *(state.get("Branches") or [])]:
            if isinstance(inner, dict):
                yield from all_states(inner)
