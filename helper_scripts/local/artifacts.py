"""The deployed artifacts, run as `sam local invoke` runs them, without Docker.

Each function's `bootstrap` from `sam build` (arm64, .aws-sam/build/<LogicalId>/bootstrap) runs
under AWS's Runtime Interface Emulator (the one `sam local invoke` runs inside its container,
shipped in the SAM CLI wheel) with its sample event, against the AWS emulator (MOTO_ENDPOINT) and
a simulated instance the events are pointed at. On an x86_64 host the arm64 bootstrap runs under
qemu-user (`--qemu`, `--sysroot`). The functions run in workflow order, so `release` undoes what
the others did. Exit status 1 if any artifact did not start or failed on its sample event.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from local import rie
from local.lambda_service import function_env
from local.stack import create_case_table
from local.template import ACCOUNT, REGION, ROOT, function_settings, load_template
from local.world import point_sample_at, put_in_service, simulate_compromised_instance

# In workflow order: the function's logical id in template.yaml and its sample event.
ARTIFACTS = [
    ("triage", "TriageFunction", "instance-backdoor.json"),
    ("isolate", "IsolateFunction", "instance-backdoor.json"),
    ("deregister", "DeregisterFunction", "instance-backdoor.json"),
    ("snapshot", "SnapshotFunction", "instance-backdoor.json"),
    ("deny-role", "DenyRoleFunction", "credential-exfiltration.json"),
    ("notify", "NotifyFunction", "notify-input.json"),
    ("security-hub", "SecurityHubFunction", "security-hub-input.json"),
    # Without a forensic account (the template's default) it answers that it has nothing to copy.
    ("evidence-copy", "EvidenceCopyFunction", "instance-backdoor.json"),
    # Without VolatileEvidenceDocument=Collect (the default) it answers that it has no document.
    ("collect", "CollectFunction", "collect-input.json"),
    ("approval", "ApprovalFunction", "approval-decide.json"),
    ("release", "ReleaseFunction", "release-request.json"),
]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--build-dir", default=str(ROOT / ".aws-sam" / "build"))
    p.add_argument("--qemu", help="qemu-aarch64 to run arm64 bootstraps with (x86_64 hosts)")
    p.add_argument("--sysroot", help="the arm64 C library's root for qemu (-L)")
    p.add_argument("--log-dir", default=str(ROOT / ".tools" / "artifacts"))
    args = p.parse_args(argv)
    import boto3

    emulator = os.environ["MOTO_ENDPOINT"]
    creds = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing", "region_name": REGION, "endpoint_url": emulator}
    ec2, iam, sns, asg, elbv2, elb = (boto3.client(s, **creds) for s in ("ec2", "iam", "sns", "autoscaling", "elbv2", "elb"))
    sim = simulate_compromised_instance(ec2, iam)
    sim["account"] = ACCOUNT
    put_in_service(sim, asg, elbv2, elb)
    topic = sns.create_topic(Name="ec2-quarantine-alerts")["TopicArn"]
    create_case_table(boto3.client("dynamodb", **creds), load_template())
    settings = {**function_settings(load_template(), {}, ACCOUNT), "ALERT_TOPIC_ARN": topic}
    env = function_env(emulator, REGION, settings)
    log_dir = Path(args.log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    build = Path(args.build_dir)
    failures = 0
    print(f"{'function':<11} {'artifact':<42} {'ms':>7}  result")
    for name, logical_id, event_file in ARTIFACTS:
        bootstrap = build / logical_id / "bootstrap"
        if not bootstrap.is_file():
            print(
                f"{name:<11} {str(bootstrap.relative_to(ROOT)) if bootstrap.is_relative_to(ROOT) else bootstrap:<42} {'':>7}  MISSING (run sam build)"
            )
            failures += 1
            continue
        command = [str(bootstrap)]
        if is_arm64(bootstrap) and os.uname().machine != "aarch64":
            if not args.qemu:
                print(f"{name:<11} an arm64 bootstrap on {os.uname().machine}: pass --qemu and --sysroot")
                failures += 1
                continue
            command = [args.qemu, "-L", args.sysroot, str(bootstrap)]
        raw = point_sample_at(json.loads((ROOT / "events" / event_file).read_text()), sim)
        run = rie.invoke_all(command, env, [json.dumps(raw).encode()], ROOT, log_dir / f"{name}.log")
        ms, result = run["latencies_ms"][0], run["results"][0]
        error = rie.error_of(result)
        failures += error is not None
        shown = f"FAILED {error}" if error else summary(result)
        print(f"{name:<11} {bootstrap.relative_to(ROOT)!s:<42} {ms:>7.0f}  {shown[:110]}")
    print(f"\n{len(ARTIFACTS) - failures}/{len(ARTIFACTS)} artifacts answered their sample event; logs in {log_dir}")
    return 1 if failures else 0


def is_arm64(path: Path) -> bool:
    """An ELF file for aarch64 (e_machine 183)."""
    with open(path, "rb") as f:
        header = f.read(20)
    return header[:4] == b"\x7fELF" and int.from_bytes(header[18:20], "little") == 183


def summary(result: object) -> str:
    if not isinstance(result, dict):
        return json.dumps(result)[:110]
    keys = ("status", "decision", "verdict", "reason")
    parts = [f"{k}={result[k]}" for k in keys if isinstance(result.get(k), str) and result[k]]
    return ", ".join(parts) or json.dumps(result)[:110]


if __name__ == "__main__":
    sys.exit(main())
