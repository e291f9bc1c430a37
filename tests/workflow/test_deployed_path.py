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
from pathlib import Path

import pytest
from iam_check import translated
from local import run as local_run
from local.deployed import HOST_ARCHITECTURE
from local.template import ACCOUNT, function_settings, load_template

ROOT = Path(__file__).resolve().parents[2]
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
RELEASE_DIR = Path(os.environ.get("RELEASE_BIN_DIR") or TARGET / "release")
BIN_DIR = Path(os.environ.get("FUNCTIONS_BIN_DIR") or TARGET / "debug")
EVENTS = ROOT / "events"

# An EC2 finding the rule passes (High, Backdoor:EC2/), and one it must not (Low).
CONTAINED_EVENT = EVENTS / "instance-backdoor.json"
FILTERED_EVENT = EVENTS / "low-severity-ssh-probe.json"


@pytest.fixture(scope="module")
def deployed(tmp_path_factory) -> dict:
    """One run on the deployed path: the stack deployed, the finding through the deployed rule."""
    return local_run.run(CONTAINED_EVENT, BIN_DIR, local_run.Scenario(), tmp_path_factory.mktemp("deployed"), release_dir=RELEASE_DIR)


@pytest.fixture(scope="module")
def local(tmp_path_factory) -> dict:
    """The same finding on today's local path (the state machine file in moto's interpreter)."""
    return local_run.run(CONTAINED_EVENT, BIN_DIR, local_run.Scenario(), tmp_path_factory.mktemp("local"))


def test_the_deployed_rule_starts_the_deployed_state_machine_which_contains_the_instance(deployed):
    assert deployed["path"] == "deployed"
    assert deployed["rule"]["deployed_rule_matched"] and deployed["rule"]["template_pattern_matched"]
    assert deployed["execution"]["status"] == "SUCCEEDED", deployed["execution"]
    # Every interface in the quarantine group alone, in the data plane.
    after = deployed["emulator"]["after"]
    (quarantine,) = after["quarantine_groups"]
    assert (quarantine["ingress_rules"], quarantine["egress_rules"]) == (0, 0), quarantine
    assert set(map(tuple, after["interface_groups"].values())) == {(quarantine["id"],)}, after["interface_groups"]
    assert after["instance"]["instance_profile"].endswith("/ec2-quarantine-quarantined"), after["instance"]
    assert after["instance"]["termination_protection"] is True
    # The notification reached a subscriber of the deployed topic.
    note = deployed["notification"]
    assert note and note["attributes"]["verdict"] == "contained", note
    assert note["subject"].startswith("[CONTAINED]"), note["subject"]
    # One case, in the deployed case table.
    assert [c["status"] for c in deployed["case_list"]] == ["open"]


def test_the_deployed_path_ends_as_the_local_run_does(deployed, local):
    mine, theirs = outcome(deployed), outcome(local)
    # MiniStack's execution history leaves out the states inside a Map's iterations, which AWS's
    # history holds (tests/README, emulator gaps); the steps' outcomes are compared through the
    # case record, which each step writes itself.
    inner = map_iteration_states(json.loads((ROOT / "statemachine" / "containment.asl.json").read_text()))
    assert inner, "the containment state machine has no Map"
    assert [s for s in theirs.pop("states") if s[0] not in inner] == mine.pop("states")
    for key in mine:
        assert mine[key] == theirs[key], f"{key}: deployed {mine[key]!r} != local {theirs[key]!r}"


def test_every_resource_the_template_declares_is_deployed(deployed):
    template = translated("single")
    params = {k: str(v.get("Default", "")) for k, v in load_template()["Parameters"].items()}
    wanted = {
        logical: resource["Type"]
        for logical, resource in template["Resources"].items()
        if condition_holds(template, resource.get("Condition"), params)
    }
    got = {logical: r["type"] for logical, r in deployed["deployed"]["resources"].items()}
    assert got == wanted
    assert {r["status"] for r in deployed["deployed"]["resources"].values()} == {"CREATE_COMPLETE"}


def test_the_parameters_reach_the_functions_as_the_template_gives_them(deployed):
    template = load_template()
    facts = deployed["deployed"]
    expected = function_settings(template, {}, ACCOUNT)
    expected["CASE_TABLE"] = facts["outputs"]["CaseTableName"]
    globals_ = template["Globals"]["Function"]
    functions = {k for k, r in template["Resources"].items() if r["Type"] == "AWS::Serverless::Function"}
    assert set(facts["functions"]) == functions
    for logical, f in facts["functions"].items():
        for name, value in expected.items():
            assert f["environment"].get(name) == value, (logical, name, f["environment"].get(name), value)
        # The one adaptation: the host's architecture (deployed.build says why).
        assert f["architectures"] == [HOST_ARCHITECTURE[os.uname().machine]]
        assert (f["runtime"], f["handler"]) == (globals_["Runtime"], globals_["Handler"])
        assert (f["memory_mb"], f["timeout_s"]) == (globals_["MemorySize"], globals_["Timeout"])
    assert facts["functions"]["NotifyFunction"]["environment"]["ALERT_TOPIC_ARN"] == facts["outputs"]["AlertTopicArn"]


def test_the_rule_targets_the_containment_state_machine_with_its_role_retries_and_dead_letter_queue(deployed):
    facts = deployed["deployed"]
    (target,) = facts["rule_targets"]
    assert target["Arn"] == facts["outputs"]["StateMachineArn"]
    assert ":role/" in target["RoleArn"] and "GuardDutyFindingRuleRole" in target["RoleArn"]
    assert target["RetryPolicy"] == {"MaximumRetryAttempts": 185, "MaximumEventAgeInSeconds": 3600}
    assert target["DeadLetterConfig"]["Arn"].endswith(facts["outputs"]["FindingDeadLetterQueueUrl"].rsplit("/", 1)[1])


def test_the_deployed_state_machines_call_the_deployed_functions(deployed):
    facts = deployed["deployed"]
    arns = {logical: f["arn"] for logical, f in facts["functions"].items()}
    calls = {"ContainmentStateMachine": 6, "ReleaseStateMachine": 2}
    for logical, machine in facts["state_machines"].items():
        assert machine["unresolved"] == [], (logical, machine["unresolved"])
        assert set(machine["function_arns"]) <= set(arns.values()), (logical, machine["function_arns"])
        assert len(machine["function_arns"]) == calls[logical], (logical, machine["function_arns"])


def test_a_finding_the_deployed_rule_must_not_match_starts_nothing(tmp_path):
    report = local_run.run(FILTERED_EVENT, BIN_DIR, local_run.Scenario(), tmp_path, release_dir=RELEASE_DIR)
    assert report["rule"] == {**report["rule"], "matched": False, "deployed_rule_matched": False, "template_pattern_matched": False}
    assert report["execution"] is None and report["notification"] is None
    assert report["emulator"]["after"] == report["emulator"]["before"]
    assert report["case_list"] == []


# ------------------------------------------------------------------------------ helpers

# The identifiers that differ from one emulator run to the next.
IDS = re.compile(r"\b(i|sg|snap|vol|eni|vpc|subnet|ami)-[0-9a-f]{8,17}\b|\d{8}T\d+Z|\d{4}-\d\d-\d\dT[\d:.]+Z|\b[0-9a-f]{16}\b")


def scrub(value) -> str:
    return IDS.sub("*", json.dumps(value, sort_keys=True))


def outcome(report: dict) -> dict:
    """What a run ended with, without the identifiers the emulators choose."""

    def step(state: dict) -> tuple:
        out = state.get("output") if isinstance(state.get("output"), dict) else {}
        return state["name"], state["type"], out.get("status"), out.get("decision"), out.get("verdict")

    note = report["notification"] or {}
    return {
        "rule": report["rule"]["matched"],
        "status": report["execution"]["status"],
        "states": [step(s) for s in report["states"]],
        "subject": scrub(note.get("subject")),
        "message": scrub(note.get("message")),
        "attributes": scrub({k: v for k, v in (note.get("attributes") or {}).items() if k != "instance_id"}),
        # The snapshots in device order (the emulator lists them by volume id, which it chooses).
        "after": scrub(
            {
                **report["emulator"]["after"],
                "snapshots": sorted(report["emulator"]["after"]["snapshots"], key=lambda s: sorted(s["tags"].items())),
            }
        ),
        "cases": [c["status"] for c in report["case_list"]],
        "steps": sorted((s["step"], s["outcome"], s["attempts"]) for c in report["cases"] for s in c["steps"]),
    }


def condition_holds(template: dict, name: str | None, params: dict[str, str]) -> bool:
    """A template condition with the parameters' values (the template's conditions are
    Not/Equals of a Ref and a literal)."""
    if name is None:
        return True

    def value(node):
        if isinstance(node, dict) and "Ref" in node:
            return params[node["Ref"]]
        if isinstance(node, dict) and "Fn::Not" in node:
            return not value(node["Fn::Not"][0])
        if isinstance(node, dict) and "Fn::Equals" in node:
            left, right = node["Fn::Equals"]
            return value(left) == value(right)
        if isinstance(node, str):
            return node
        raise AssertionError(f"a condition this test cannot evaluate: {node}")

    return value(template["Conditions"][name])


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
