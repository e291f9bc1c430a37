"""What the local run reads from the template and the state machine files: the rule's event
pattern, the functions' environment, the state machine definitions with their substitutions."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from local import HarnessError

ROOT = Path(__file__).resolve().parents[2]


TEMPLATE = ROOT / "template.yaml"


STATE_MACHINE = ROOT / "statemachine" / "containment.asl.json"


RELEASE_MACHINE = ROOT / "statemachine" / "release.asl.json"


EVIDENCE_COPY_MACHINE = ROOT / "statemachine" / "evidence-copy.asl.json"


# The containment machine's substitution for the evidence-copy machine it starts.
COPY_MACHINE_SUBSTITUTION = "EvidenceCopyStateMachineArn"


COLLECTION_MACHINE = ROOT / "statemachine" / "collection.asl.json"


# The containment machine's substitution for the collection machine it starts, and the switch
# that turns the collection on ("on": VolatileEvidenceDocument=Collect) or off.
COLLECTION_MACHINE_SUBSTITUTION = "CollectionStateMachineArn"
COLLECTION_SUBSTITUTION = "VolatileCollection"


DEFAULT_EVENT = ROOT / "events" / "credential-exfiltration.json"


REGION = "us-east-1"


ACCOUNT = "123456789012"


# The physical names the local stack gives the template's resources a function's environment
# refers to (CloudFormation would generate them).
LOCAL_NAMES = {
    "CaseTable": "ec2-quarantine-CaseTable-local",
    "PauseSwitch": "/ec2-quarantine-local/paused",
    "EvidenceBucket": "ec2-quarantine-evidence-local",
    "VolatileEvidenceCollector": "ec2-quarantine-VolatileEvidenceCollector-local",
    "MemoryImageCollector": "ec2-quarantine-MemoryImageCollector-local",
}


# The rule that sends GuardDuty's findings to the containment state machine.
FINDING_RULE = "GuardDutyFindingRule"


# Binary name -> the template's substitution for its ARN.
FUNCTIONS = {
    "triage": "TriageFunctionArn",
    "isolate": "IsolateFunctionArn",
    "deregister": "DeregisterFunctionArn",
    "release": "ReleaseFunctionArn",
    "snapshot": "SnapshotFunctionArn",
    "deny-role": "DenyRoleFunctionArn",
    "notify": "NotifyFunctionArn",
    "security-hub": "SecurityHubFunctionArn",
    "approval": "ApprovalFunctionArn",
    "evidence-copy": "EvidenceCopyFunctionArn",
    "collect": "CollectFunctionArn",
}


# The template's substitution that turns the evidence copies on ("on": a forensic account is
# configured) or off.
FORENSIC_SUBSTITUTION = "ForensicCopy"


# The template's substitution for the alert topic: the state machines publish a short fallback
# message to it themselves when the notify function fails.
TOPIC_SUBSTITUTION = "AlertTopicArn"


# A topic that does not exist, for the notify function when the run makes it fail (notify_fails).
MISSING_TOPIC = f"arn:aws:sns:{REGION}:{ACCOUNT}:ec2-quarantine-no-such-topic"


class CfnLoader(yaml.SafeLoader):
    pass


def _cfn_tag(loader, tag_suffix, node):
    name = "Ref" if tag_suffix == "Ref" else f"Fn::{tag_suffix}"
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
        if name == "Fn::GetAtt":
            value = value.split(".", 1)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    return {name: value}


CfnLoader.add_multi_constructor("!", _cfn_tag)


def load_template() -> dict:
    return yaml.load(TEMPLATE.read_text(), Loader=CfnLoader)


def rule_pattern(template: dict, overrides: dict[str, str]) -> dict:
    """The EventBridge pattern of the template's finding rule (the one that starts the state
    machine), with its parameters substituted."""
    rule = template["Resources"].get(FINDING_RULE) or {}
    if rule.get("Type") != "AWS::Events::Rule":
        raise HarnessError(f"template.yaml has no AWS::Events::Rule {FINDING_RULE}")
    pattern = rule["Properties"]["EventPattern"]
    if isinstance(pattern, dict) and "Fn::Sub" in pattern:
        params = {k: str(v.get("Default", "")) for k, v in template.get("Parameters", {}).items()}
        params.update(overrides)

        def sub(m: re.Match) -> str:
            if m.group(1) not in params:
                raise HarnessError(f"the rule pattern uses ${{{m.group(1)}}}, which is not a parameter")
            return params[m.group(1)]

        pattern = json.loads(re.sub(r"\$\{([A-Za-z0-9]+)\}", sub, pattern["Fn::Sub"]))
    return pattern


def rule_matches(pattern: dict, event: dict) -> bool:
    from moto.events.models import EventPattern

    return EventPattern.load(json.dumps(pattern)).matches_event(event)


# The stack name the local run stands for (`AWS::StackName`), as deploy.sh deploys by default.
LOCAL_STACK_NAME = "ec2-quarantine"


def function_settings(template: dict, overrides: dict[str, str], account: str) -> dict[str, str]:
    """The functions' environment as the template's Globals give it, parameters resolved (their
    defaults, or the overrides as `sam deploy --parameter-overrides` would give them)."""
    params = {k: str(v.get("Default", "")) for k, v in template.get("Parameters", {}).items()}
    unknown = set(overrides) - set(params)
    if unknown:
        raise HarnessError(f"no such template parameter: {', '.join(sorted(unknown))}")
    params.update(overrides)
    params.update({"AWS::AccountId": account, "AWS::Region": REGION, "AWS::Partition": "aws", "AWS::StackName": LOCAL_STACK_NAME})
    params.update(LOCAL_NAMES)
    out = {}
    for name, value in template["Globals"]["Function"]["Environment"]["Variables"].items():
        if isinstance(value, dict) and "Ref" in value:
            value = params[value["Ref"]]
        elif isinstance(value, dict) and isinstance(value.get("Fn::Sub"), str):
            value = re.sub(r"\$\{([A-Za-z0-9:]+)\}", lambda m: params[m[1]], value["Fn::Sub"])
        out[name] = str(value)
    return out


def state_machine_definition(
    arns: dict[str, str],
    path: Path = STATE_MACHINE,
    topic_arn: str | None = None,
    forensic_copy: bool = False,
    copy_machine_arn: str | None = None,
    collection_machine_arn: str | None = None,
    collection: bool = False,
) -> str:
    text = path.read_text()
    # Without the copy machine (no forensic account), a name that starts nothing: the switch is off.
    copy_machine_arn = copy_machine_arn or f"arn:aws:states:{REGION}:{ACCOUNT}:stateMachine:ec2-quarantine-evidence-copy-not-created"
    text = text.replace("${" + COPY_MACHINE_SUBSTITUTION + "}", copy_machine_arn)
    collection_machine_arn = (
        collection_machine_arn or f"arn:aws:states:{REGION}:{ACCOUNT}:stateMachine:ec2-quarantine-collection-not-created"
    )
    text = text.replace("${" + COLLECTION_MACHINE_SUBSTITUTION + "}", collection_machine_arn)
    text = text.replace("${" + COLLECTION_SUBSTITUTION + "}", "on" if collection else "off")
    for binary, placeholder in FUNCTIONS.items():
        text = text.replace("${" + placeholder + "}", arns[binary])
    if topic_arn is not None:
        text = text.replace("${" + TOPIC_SUBSTITUTION + "}", topic_arn)
    text = text.replace("${" + FORENSIC_SUBSTITUTION + "}", "on" if forensic_copy else "off")
    left = re.findall(r"\$\{[A-Za-z0-9]+\}", text)
    if left:
        raise HarnessError(f"unresolved substitutions in the state machine: {left}")
    return text
