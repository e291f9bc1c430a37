"""deploy.sh emulator: the local AWS emulator, for `sam local invoke` with the sample events.

`sam local invoke` runs a function in SAM's container with the caller's AWS credentials, on the
real account. This starts the AWS emulator (moto, with the harness's corrections) with the
simulated compromised instance and the stack's resources the functions use (case table, pause
switch, alert topic, evidence bucket), writes the sample events pointed at that instance into
`.tools/emulator/events/`, writes an `--env-vars` file that points every function at the
emulator (`SAM_LOCAL_ENDPOINT_URL`, which a function honours only under `sam local`: see
src/aws/context.rs), prints the exact commands (test credentials, never the caller's), and keeps
running until Ctrl-C.

The emulator listens where SAM's container can reach it: on Linux, the address of Docker's
bridge (`docker0`, 172.17.0.1 by default; without one it stops and asks for `--bind`); elsewhere
(Docker Desktop), on loopback, reached from the container as `host.docker.internal`. It answers
anyone who reaches that address (moto has no authentication); it holds only simulated data.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import platform
import signal
import subprocess
import sys
import threading
from pathlib import Path

from local.artifacts import ARTIFACTS
from local.stack import create_case_table, create_evidence_bucket, create_pause_switch, free_port
from local.template import ACCOUNT, REGION, ROOT, function_settings, load_template
from local.world import point_sample_at, put_in_service, simulate_compromised_instance

OUT = ROOT / ".tools" / "emulator"
# The credentials the printed commands give SAM (and so the container): the emulator's, never
# the caller's profile, SSO session or keys.
# No profile, no config or credentials file (a `--profile` then fails instead of bringing the
# caller's own), no session token under either name; the region as botocore reads it.
TEST_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": REGION,
    "AWS_CONFIG_FILE": "/dev/null",
    "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
}
UNSET = ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_CREDENTIAL_EXPIRATION", "DRY_RUN")


def bridge_address() -> str | None:
    """Docker's bridge address on this host (`docker0`), if there is one."""
    try:
        out = subprocess.run(
            ["ip", "-4", "-o", "addr", "show", "dev", "docker0"], capture_output=True, text=True, timeout=5, check=False
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for word in out.split():
        if "/" in word:
            try:
                return str(ipaddress.IPv4Interface(word).ip)
            except ValueError:
                continue
    return None


def container_host(bind: str) -> str:
    """How SAM's container names the emulator's host."""
    return "host.docker.internal" if ipaddress.ip_address(bind).is_loopback else bind


def command(logical_id: str, event: Path, env_file: Path) -> str:
    """The `sam local invoke` command for one function and event, with test credentials."""
    unset = " ".join(f"-u {v}" for v in UNSET)
    creds = " ".join(f"{k}={v}" for k, v in TEST_CREDENTIALS.items())
    return f"env {unset} {creds} sam local invoke {logical_id} -e {rel(event)} --env-vars {rel(env_file)} --region {REGION}"


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def prepare(endpoint: str, container_endpoint: str, out: Path) -> dict:
    """The simulated world in the emulator at `endpoint`, the events and the env file; returns
    what `--json` prints."""
    import boto3

    creds = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing", "region_name": REGION, "endpoint_url": endpoint}
    ec2, iam, sns, asg, elbv2, elb, ssm, s3 = (
        boto3.client(s, **creds) for s in ("ec2", "iam", "sns", "autoscaling", "elbv2", "elb", "ssm", "s3")
    )
    template = load_template()
    sim = simulate_compromised_instance(ec2, iam)
    sim["account"] = ACCOUNT
    put_in_service(sim, asg, elbv2, elb)
    topic = sns.create_topic(Name="ec2-quarantine-alerts")["TopicArn"]
    create_case_table(boto3.client("dynamodb", **creds), template)
    create_pause_switch(ssm, template)
    bucket = create_evidence_bucket(s3, template, {})
    events_dir = out / "events"
    events_dir.mkdir(parents=True, exist_ok=True)
    events = {}
    for path in sorted((ROOT / "events").glob("*.json")):
        pointed = point_sample_at(json.loads(path.read_text()), sim)
        (events_dir / path.name).write_text(json.dumps(pointed, indent=2) + "\n")
        events[path.name] = events_dir / path.name
    # SAM sets only the variables a function declares (its Environment and the Globals'), from
    # the file's "Parameters" (every function) or the function's own entry.
    settings = {
        **function_settings(template, {}, ACCOUNT),
        "SAM_LOCAL_ENDPOINT_URL": container_endpoint,
        "ALERT_TOPIC_ARN": topic,
        "CHAT_TOPIC_ARN": "",
        "EVIDENCE_BUCKET": bucket,
    }
    env_file = out / "env.json"
    env_file.write_text(json.dumps({"Parameters": settings}, indent=2) + "\n")
    commands = [
        {"function": name, "logical_id": logical_id, "event": rel(events[event]), "command": command(logical_id, events[event], env_file)}
        for name, logical_id, event in ARTIFACTS
    ]
    return {
        "endpoint": endpoint,
        "container_endpoint": container_endpoint,
        "instance_id": sim["instance_id"],
        "role_name": sim["role_name"],
        "env_file": rel(env_file),
        "events_dir": rel(events_dir),
        "commands": commands,
    }


def render(state: dict) -> str:
    lines = [
        f"AWS emulator on {state['endpoint']} (SAM's container reaches it as {state['container_endpoint']}).",
        f"Simulated compromised instance {state['instance_id']} (role {state['role_name']}); the sample events,",
        f"pointed at it, are in {state['events_dir']}/; the functions' environment is in {state['env_file']}.",
        "",
        "After `sam build`, from the project's root (test credentials, never yours; every AWS call goes to the emulator):",
    ]
    lines += [f"  {c['command']}" for c in state["commands"]]
    lines += ["", "Any other event of the directory works the same way. Ctrl-C stops the emulator."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", action="store_true", help="print what it made as one JSON line")
    p.add_argument("--bind", default=None, help="the address to listen on (default: Docker's bridge, else 127.0.0.1)")
    p.add_argument("--port", type=int, default=0, help="default: a free port")
    p.add_argument("--out", default=str(OUT))
    args = p.parse_args(argv)
    bind = args.bind or bridge_address()
    if bind is None and platform.system() == "Linux":
        # SAM's container on Linux reaches the host through Docker's bridge; loopback is its own.
        print(
            "deploy.sh: no docker0 here (Docker not running, rootless, or Podman): pass --bind with an address "
            "SAM's container reaches (the gateway `docker network inspect bridge` shows)",
            file=sys.stderr,
        )
        return 2
    bind = bind or "127.0.0.1"
    try:
        address = ipaddress.ip_address(bind)
    except ValueError:
        print(f"deploy.sh: --bind takes an IP address, got {bind}", file=sys.stderr)
        return 2
    if address.is_unspecified:
        print("deploy.sh: --bind takes one address, not every interface's", file=sys.stderr)
        return 2
    for var in [v for v in os.environ if v.startswith("AWS_ENDPOINT_URL") or v in UNSET]:
        del os.environ[var]
    os.environ.update({**TEST_CREDENTIALS, "AWS_DEFAULT_REGION": REGION, "AWS_EC2_METADATA_DISABLED": "true"})
    import logging

    from local import securityhub, snapshot_copy, snapshot_lock

    logging.getLogger("werkzeug").setLevel(logging.ERROR)

    securityhub.patch()
    snapshot_lock.patch()
    snapshot_copy.patch()
    from moto.server import ThreadedMotoServer

    port = args.port or free_port()
    server = ThreadedMotoServer(ip_address=bind, port=port, verbose=False)
    server.start()
    try:
        host = f"[{bind}]" if ":" in bind else bind
        state = prepare(f"http://{host}:{port}", f"http://{container_host(bind)}:{port}", Path(args.out))
        print(json.dumps(state) if args.json else render(state), flush=True)
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        stop.wait()
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
