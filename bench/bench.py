"""The benchmarks: what the Rust functions cost beside a Python boto3 baseline, and how the
workflow behaves under EC2's rate limits. Run by helper_scripts/bench.sh, which builds the release
bootstraps and starts the AWS emulator (MOTO_ENDPOINT) first.

Measured, each printed in one Markdown table and written to JSON:
- per function, the stripped release `bootstrap` (x86_64 and, when built, arm64) and its zip;
- per function and implementation, served by AWS's Runtime Interface Emulator (the one in the
  SAM CLI wheel) against the emulator: init (the RIE's INIT REPORT), first invocation and warm
  invocations (wall time of the Invoke call), peak RSS of the runtime process (VmHWM), each over
  repeated cold starts, as median and range;
- whether a function makes any network call before it is ready (it must not);
- AWS calls per finding and the longest chain of dependent calls before every interface is in
  the quarantine group, through the real state machine (1 ENI/1 volume and 4 ENIs/8 volumes);
- a burst of findings for distinct instances through the workflow, behind a proxy enforcing EC2's
  token buckets: time until all are contained, throttled calls, failures.
No figure here is asserted on; the targets are reported as met or missed.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import itertools
import json
import os
import platform
import re
import select
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
from fault_proxy import EC2_BUCKETS, ec2_bucket
from local import rie
from local.lambda_service import function_env
from local.stack import create_case_table, execute, local_stack
from local.template import ACCOUNT, REGION, function_settings, load_template
from local.world import IMAGE_ID, point_event_at, point_sample_at

BASELINE_DIR = ROOT / "bench" / "baseline"
PROXY = ROOT / "tests" / "tools" / "fault_proxy.py"
# Function -> (the template's logical id, the sample event it is invoked with, the baseline handler).
FUNCTIONS = {
    "triage": ("TriageFunction", "credential-exfiltration.json", None),
    "isolate": ("IsolateFunction", "credential-exfiltration.json", "isolate.handler"),
    "deregister": ("DeregisterFunction", "instance-backdoor.json", None),
    "snapshot": ("SnapshotFunction", "credential-exfiltration.json", "snapshot.handler"),
    "deny-role": ("DenyRoleFunction", "credential-exfiltration.json", "deny_role.handler"),
    "release": ("ReleaseFunction", "release-request.json", None),
    "notify": ("NotifyFunction", "notify-input.json", "notify.handler"),
}
TARGETS = {
    "init_ms": 20,
    "init_ratio": 1 / 20,
    "rss_mb": 16,
    "bootstrap_mb": 8,
    # The isolate step's dependent calls before every interface is quarantined: the first
    # containment in a VPC (the tool's groups created), and every later one (found).
    "dependent_calls": {"created": 4, "found": 3},
    "burst_factor": 1.5,
}


def log(msg: str) -> None:
    print(f"--> {msg}", file=sys.stderr, flush=True)


def spread(values: list[float]) -> dict | None:
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


# ---------------------------------------------------------------- the machine


def machine() -> dict:
    cpu = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")),
        platform.processor(),
    )
    mem_kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
    rustc = subprocess.run(["rustc", "--version"], check=False, capture_output=True, text=True).stdout.strip()
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "rustc": rustc,
        "python": platform.python_version(),
    }


# ---------------------------------------------------------------- sizes


def zipped_size(files: dict[str, bytes]) -> int:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in files.items():
            z.writestr(name, data)
    return len(buf.getvalue())


def sizes(x86_dir: Path, arm_dir: Path | None) -> dict:
    out = {}
    for name, (logical_id, _event, _baseline) in FUNCTIONS.items():
        row = {}
        x86 = x86_dir / name
        if x86.is_file():
            data = x86.read_bytes()
            row["x86_64"] = {"bytes": len(data), "zip_bytes": zipped_size({"bootstrap": data})}
        arm = arm_dir / logical_id / "bootstrap" if arm_dir else None
        if arm and arm.is_file():
            data = arm.read_bytes()
            row["arm64"] = {"bytes": len(data), "zip_bytes": zipped_size({"bootstrap": data})}
        out[name] = row
    handlers = {p.name: p.read_bytes() for p in BASELINE_DIR.glob("*.py")}
    out["baseline"] = {
        "zip_bytes": zipped_size(handlers),
        "boto3_in_runtime_bytes": installed_size("boto3", "botocore", "s3transfer", "jmespath", "dateutil", "urllib3"),
    }
    return out


def installed_size(*packages: str) -> int:
    site = ROOT / ".tools" / "baseline" / "lib" / "python3.11" / "site-packages"
    total = 0
    for pkg in packages:
        for path in (site / pkg).rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts:
                total += path.stat().st_size
    return total


# ---------------------------------------------------------------- the emulator's accounts


class Account:
    """One emulated account of its own per measurement, so that state never grows across them."""

    counter = 0

    def __init__(self, emulator: str):
        import boto3

        Account.counter += 1
        self.id = f"{300000000000 + os.getpid() % 1000 * 1000 + Account.counter}"
        sts = boto3.client("sts", region_name=REGION, endpoint_url=emulator, aws_access_key_id="testing", aws_secret_access_key="testing")
        c = sts.assume_role(RoleArn=f"arn:aws:iam::{self.id}:role/bench", RoleSessionName="bench")["Credentials"]
        self.credentials = {
            "AWS_ACCESS_KEY_ID": c["AccessKeyId"],
            "AWS_SECRET_ACCESS_KEY": c["SecretAccessKey"],
            "AWS_SESSION_TOKEN": c["SessionToken"],
        }
        session = boto3.Session(
            aws_access_key_id=c["AccessKeyId"],
            aws_secret_access_key=c["SecretAccessKey"],
            aws_session_token=c["SessionToken"],
            region_name=REGION,
        )
        self.ec2 = session.client("ec2", endpoint_url=emulator)
        self.iam = session.client("iam", endpoint_url=emulator)
        self.sns = session.client("sns", endpoint_url=emulator)
        vpc = self.ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
        self.vpc = vpc
        self.subnet = self.ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.0.0/20", AvailabilityZone=f"{REGION}a")["Subnet"]["SubnetId"]
        self.group = self.ec2.create_security_group(GroupName="web", Description="web tier", VpcId=vpc)["GroupId"]
        self.topic = self.sns.create_topic(Name="ec2-quarantine-alerts")["TopicArn"]
        # The case table, as the template declares it (the functions' CASE_TABLE).
        create_case_table(session.client("dynamodb", endpoint_url=emulator), load_template())


INSTANCE_NUMBERS = itertools.count(1)


def make_instance(ec2, iam, subnet: str, group: str, interfaces: int = 1, volumes: int = 1) -> dict:
    """An instance with its own role and profile, `interfaces` ENIs and `volumes` EBS volumes."""
    n = next(INSTANCE_NUMBERS)
    role = f"app-role-{n}"
    iam.create_role(
        RoleName=role,
        AssumeRolePolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}],
            }
        ),
    )
    profile = iam.create_instance_profile(InstanceProfileName=f"app-profile-{n}")["InstanceProfile"]
    iam.add_role_to_instance_profile(InstanceProfileName=f"app-profile-{n}", RoleName=role)
    root = "/dev/sda1"
    devices = [{"DeviceName": root, "Ebs": {"VolumeSize": 8, "DeleteOnTermination": True}}] + [
        {"DeviceName": f"/dev/sd{chr(ord('f') + i)}", "Ebs": {"VolumeSize": 10, "DeleteOnTermination": True}} for i in range(volumes - 1)
    ]
    instance = ec2.run_instances(
        ImageId=IMAGE_ID,
        InstanceType="t3.micro",
        MinCount=1,
        MaxCount=1,
        IamInstanceProfile={"Arn": profile["Arn"]},
        NetworkInterfaces=[{"DeviceIndex": i, "SubnetId": subnet, "Groups": [group]} for i in range(interfaces)],
        BlockDeviceMappings=devices,
    )["Instances"][0]
    return {
        "instance_id": instance["InstanceId"],
        "vpc_id": instance["VpcId"],
        "role_name": role,
        "profile_arn": profile["Arn"],
        "interfaces": [i["NetworkInterfaceId"] for i in instance["NetworkInterfaces"]],
    }


def event_for(name: str, acct: Account, sim: dict) -> bytes:
    """The function's sample event, pointed at the simulated instance in the bench account."""
    raw = json.loads((ROOT / "events" / FUNCTIONS[name][1]).read_text())
    raw = point_sample_at(raw, {**sim, "account": acct.id})
    if isinstance(raw.get("detail"), dict):
        # A finding of its own per instance: the steps keep one record per finding.
        raw["detail"]["id"] = f"bench{sim['instance_id'][2:]}"
    return json.dumps(raw).encode()


def settings_for(acct: Account, emulator: str) -> dict[str, str]:
    settings = {**function_settings(load_template(), {}, acct.id), "ALERT_TOPIC_ARN": acct.topic}
    return {**function_env(emulator, REGION, settings), **acct.credentials}


# ---------------------------------------------------------------- cold and warm starts under the RIE


def under_rie(command: list[str], env: dict[str, str], events: list[bytes], cwd: Path, log_path: Path) -> dict:
    """One cold start (the emulator starts the runtime at the first invocation), then warm ones."""
    run = rie.invoke_all(command, env, events, cwd, log_path)
    return {
        "init_ms": run["init_ms"],
        "first_ms": run["latencies_ms"][0],
        "warm_ms": run["latencies_ms"][1:],
        "peak_rss_kib": run["peak_rss_kib"],
        "errors": [e for e in map(rie.error_of, run["results"]) if e],
    }


def cold_starts(name: str, command: list[str], cwd: Path, emulator: str, runs: int, warm: int, log_dir: Path, extra_env=None) -> dict:
    acct = Account(emulator)
    env = {**settings_for(acct, emulator), **(extra_env or {})}
    inits, firsts, warms, rss, errors = [], [], [], [], []
    for _ in range(runs):
        events = [event_for(name, acct, make_instance(acct.ec2, acct.iam, acct.subnet, acct.group)) for _ in range(1 + warm)]
        r = under_rie(command, env, events, cwd, log_dir / f"{name}-{cwd.name}.log")
        if r["init_ms"] is not None:
            inits.append(r["init_ms"])
        firsts.append(r["first_ms"])
        warms.extend(r["warm_ms"])
        if r["peak_rss_kib"]:
            rss.append(r["peak_rss_kib"] / 1024)
        errors.extend(r["errors"])
    # One more run through the recording proxy (not timed: the proxy adds to every call): how
    # many AWS calls an invocation makes, which is what a warm invocation's time mostly is.
    with recording_proxy(emulator, token_buckets=False) as proxy:
        events = [event_for(name, acct, make_instance(acct.ec2, acct.iam, acct.subnet, acct.group)) for _ in range(2)]
        under_rie(command, {**env, "AWS_ENDPOINT_URL": proxy}, events, cwd, log_dir / f"{name}-{cwd.name}-calls.log")
        counted = proxy_log(proxy)
    return {
        "init_ms": spread(inits),
        "first_ms": spread(firsts),
        "warm_ms": spread(warms),
        "peak_rss_mib": spread(rss),
        "calls_per_invocation": len(counted) / len(events),
        "errors": sorted(set(errors))[:5],
        "error_count": len(errors),
    }


def network_at_init(binary: Path, env: dict[str, str]) -> dict:
    """Starts the function with its Runtime API and its AWS endpoint on two listening sockets,
    waits for it to ask for its first invocation, and reports whether it connected anywhere first."""
    runtime, endpoint = socket.socket(), socket.socket()
    for s in (runtime, endpoint):
        s.bind(("127.0.0.1", 0))
        s.listen(8)
    env = {
        **env,
        "AWS_LAMBDA_RUNTIME_API": f"127.0.0.1:{runtime.getsockname()[1]}",
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{endpoint.getsockname()[1]}",
        "AWS_LAMBDA_FUNCTION_NAME": binary.name,
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "128",
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
    }
    proc = subprocess.Popen([str(binary)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        ready, _, _ = select.select([runtime], [], [], 10)
        if not ready:
            return {"ready": False, "calls_before_ready": None}
        time.sleep(0.2)
        early, _, _ = select.select([endpoint], [], [], 0)
        return {"ready": True, "calls_before_ready": 1 if early else 0}
    finally:
        proc.kill()
        proc.wait()
        runtime.close()
        endpoint.close()


# ---------------------------------------------------------------- the workflow: calls per finding, bursts


@contextlib.contextmanager
def recording_proxy(upstream: str, token_buckets: bool):
    args = [sys.executable, str(PROXY), "--upstream", upstream] + (["--ec2-token-buckets"] if token_buckets else [])
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline())
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait()


def proxy_log(proxy: str) -> list[dict]:
    with urllib.request.urlopen(proxy + "/__proxy__/log") as r:
        return json.load(r)


# Set in the harness's environment, it makes the functions trace their EC2 calls
# (src/aws/calls.rs): one `aws call` log line each, with the branch of the step that made it
# and where it started and ended in the function's own order of events.
CALL_TRACE = "EC2Q_CALL_TRACE"
# The isolate step's branches that run beside the interfaces' moves and that no move waits for:
# the evidence attributes, the case's record, the marker tags after the moves.
BESIDE_THE_MOVES = {"evidence", "record", "after"}
# The branches every later call of the step comes after: the read, and calls outside any branch.


def may_wait_for(call: dict, earlier: dict) -> bool:
    """Whether `call` can have waited for `earlier`: made outside any branch (`step`), in the
    same branch, in a branch around it (`network` around `network/<eni>`), or in the read (or a
    branch of it: the groups made while the instance is read, `read/groups/<vpc>`), which every
    branch after the read waits for; a branch of the read never waits for the read's own
    calls, nor for another branch of it."""
    b, e = call["branch"], earlier["branch"]
    if e == "step":
        return True
    if b == e or b.startswith(e + "/"):
        # a branch of the read starts with the read's first calls, never after them
        return not (e == "read" and b != e)
    return e.split("/")[0] == "read" and b.split("/")[0] != "read"


ANSI = re.compile(r"\x1b\[[0-9;]*m")
TRACE_FIELD = re.compile(r'(\w+)=("[^"]*"|[^\s}]+)')


def traced_calls(lines: list[str]) -> list[dict]:
    """The `aws call` lines of a function's log (JSON or text), in the order written."""
    out = []
    for line in lines:
        line = ANSI.sub("", line)
        if "aws call" not in line:
            continue
        if line.lstrip().startswith("{"):
            try:
                j = json.loads(line)
            except ValueError:
                continue
            fields = dict(j.get("fields") or {})
            if fields.get("message") != "aws call":
                continue
            spans = j.get("spans") or []
            fields["instance_id"] = next((sp["instance_id"] for sp in spans if sp.get("instance_id")), None)
        else:
            head, _, tail = line.partition("aws call")
            fields = {k: v.strip('"') for k, v in TRACE_FIELD.findall(tail)}
            m = re.search(r"instance_id=([^\s}]+)", head)
            fields["instance_id"] = m.group(1) if m else None
        try:
            out.append(
                {
                    "op": str(fields["op"]),
                    "branch": str(fields["branch"]),
                    "started": int(fields["started"]),
                    "ended": int(fields["ended"]),
                    "ok": str(fields["ok"]).lower() == "true",
                    "instance_id": fields["instance_id"],
                }
            )
        except (KeyError, ValueError):
            continue
    return out


def awaited_chain(calls: list[dict]) -> list[dict]:
    """The isolate step's longest chain of dependent calls up to its last successful interface
    move, from its own trace: a call may have waited for one of the calls that ended before it
    started (in the function's order of events) in its own branch or one around it, never for a
    call of a branch that runs beside it. Empty without a move."""
    mine = sorted((c for c in calls if c["branch"] not in BESIDE_THE_MOVES), key=lambda c: c["started"])
    depth: list[int] = []
    before: list[int | None] = []
    for c in mine:
        waited = [j for j in range(len(depth)) if mine[j]["ended"] < c["started"] and may_wait_for(c, mine[j])]
        best = max(waited, key=lambda j: (depth[j], mine[j]["ended"]), default=None)
        depth.append(1 + (depth[best] if best is not None else 0))
        before.append(best)
    moves = [i for i, c in enumerate(mine) if c["op"] == "ModifyNetworkInterfaceAttribute" and c["ok"]]
    if not moves:
        return []
    at: int | None = max(moves, key=lambda i: mine[i]["ended"])
    chain = []
    while at is not None:
        chain.insert(0, mine[at])
        at = before[at]
    return chain


class LogTail:
    """The lines a log file gains from now on."""

    def __init__(self, path: Path):
        self.path = path
        self.at = path.stat().st_size if path.exists() else 0

    def lines(self) -> list[str]:
        if not self.path.exists():
            return []
        with self.path.open("rb") as f:
            f.seek(self.at)
            data = f.read()
        self.at += len(data)
        return data.decode("utf-8", "replace").splitlines()


def critical_path(calls: list[dict], last: dict) -> list[dict]:
    """The calls `last` waited for, back to the first: each call's predecessor is the call that
    ended last before it started (calls that overlapped ran at the same time and count once)."""
    path = [last]
    while True:
        before = [c for c in calls if c["end"] <= path[0]["start"]]
        if not before:
            return path
        path.insert(0, max(before, key=lambda c: c["end"]))


@contextlib.contextmanager
def workflow(bin_dir: Path, log_dir: Path, token_buckets: bool, copies: int = 1, parameters: dict[str, str] | None = None):
    holder: dict = {}

    def via_proxy(emulator: str) -> str:
        holder["proxy_cm"] = recording_proxy(emulator, token_buckets)
        holder["proxy"] = holder["proxy_cm"].__enter__()
        return holder["proxy"]

    # The benchmarks measure how fast containment goes: the rate cap (a safety rail, 20 an hour
    # by default) is raised out of the way of the bursts.
    parameters = {"MaxContainmentsPerHour": "1000", **(parameters or {})}
    try:
        with local_stack(bin_dir, log_dir, parameters=parameters, functions_endpoint=via_proxy, copies=copies) as st:
            st.proxy = holder["proxy"]
            yield st
    finally:
        if "proxy_cm" in holder:
            holder["proxy_cm"].__exit__(None, None, None)


def calls_per_finding(bin_dir: Path, log_dir: Path, shapes: list[tuple[int, int]], runs: int) -> list[dict]:
    """Per shape and run, two instance findings in a VPC of their own: the first creates the
    tool's groups there, the second finds them. The isolate step's chain of dependent calls
    comes from its own trace of its calls (`awaited_chain`); triage's calls come before it."""
    per: dict[tuple[int, int, str], list[dict]] = {}
    profile: list[dict] = []
    os.environ[CALL_TRACE] = "1"
    try:
        with workflow(bin_dir, log_dir, token_buckets=False) as st:
            template = json.loads((ROOT / "events" / "instance-backdoor.json").read_text())
            isolate_log = log_dir / "isolate.log"
            for run, (k, (interfaces, volumes)) in itertools.product(range(runs), enumerate(shapes)):
                n = run * len(shapes) + k
                vpc = st.ec2.create_vpc(CidrBlock=f"10.{100 + n}.0.0/16")["Vpc"]["VpcId"]
                subnet = st.ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.{100 + n}.0.0/20", AvailabilityZone=f"{REGION}a")["Subnet"][
                    "SubnetId"
                ]
                group = st.ec2.create_security_group(GroupName="bench-web", Description="web", VpcId=vpc)["GroupId"]
                for groups in ("created", "found"):
                    sim = make_instance(st.ec2, st.iam, subnet, group, interfaces, volumes)
                    sim["account"] = ACCOUNT
                    before = len(proxy_log(st.proxy))
                    tail = LogTail(isolate_log)
                    outcome, _states, _note = execute(st, st.machine, point_event_at(template, sim, sim["instance_id"]))
                    calls = [c for c in proxy_log(st.proxy)[before:] if c.get("end") is not None]
                    chain = awaited_chain(traced_calls(tail.lines()))
                    triage = [c for c in calls if c["app"] == "triage"]
                    triage_chain = critical_path(triage, max(triage, key=lambda c: c["end"])) if triage else []
                    by_function: dict[str, int] = {}
                    for c in calls:
                        by_function[c["app"] or "?"] = by_function.get(c["app"] or "?", 0) + 1
                    if (interfaces, volumes, groups) == (1, 1, "found") and not profile:
                        # One containment's calls as the burst's instances make them (1 ENI, 1
                        # volume, the groups there): the simulation's profile.
                        profile = calls
                    per.setdefault((interfaces, volumes, groups), []).append(
                        {
                            "status": outcome["status"],
                            "verdict": execution_verdict(outcome.get("output")),
                            "calls": len(calls),
                            "calls_by_function": by_function,
                            "dependent_calls_isolate": len(chain),
                            "dependent_calls_from_finding": len(chain) + len(triage_chain) if chain else 0,
                            "chain": [c["action"].split(":")[1] for c in triage_chain] + [c["op"] for c in chain],
                        }
                    )
    finally:
        os.environ.pop(CALL_TRACE, None)
    out = []
    for (interfaces, volumes, groups), rs in per.items():
        verdicts = {r["verdict"] for r in rs}
        out.append(
            {
                "interfaces": interfaces,
                "volumes": volumes,
                "quarantine_groups": groups,
                "runs": len(rs),
                "status": rs[-1]["status"],
                "verdict": verdicts.pop() if len(verdicts) == 1 else ", ".join(sorted(map(str, verdicts))),
                "calls": spread([r["calls"] for r in rs]),
                "calls_by_function": rs[-1]["calls_by_function"],
                "dependent_calls_isolate": spread([r["dependent_calls_isolate"] for r in rs]),
                "dependent_calls_from_finding": spread([r["dependent_calls_from_finding"] for r in rs]),
                # The longest chain of the runs, as an example.
                "chain": max(rs, key=lambda r: r["dependent_calls_isolate"])["chain"],
            }
        )
    return out, profile


def execution_verdict(output) -> str | None:
    if not isinstance(output, dict):
        return None
    return (output.get("notification") or {}).get("verdict")


def ec2_bucket_of(call: dict) -> str:
    return ec2_bucket(call["action"].split(":", 1)[1])


def bucket_bound(calls: list[dict]) -> dict:
    """The least time EC2's token buckets let these calls through: per bucket, the calls beyond
    its capacity at its refill rate."""
    from fault_proxy import ec2_bucket

    counts: dict[str, int] = {}
    for c in calls:
        service, name = c["action"].split(":", 1)
        if service == "ec2" and c.get("fault") != "rate_limited":
            b = ec2_bucket(name)
            counts[b] = counts.get(b, 0) + 1
    per = {b: max(0.0, (n - EC2_BUCKETS[b][0]) / EC2_BUCKETS[b][1]) for b, n in counts.items()}
    return {"seconds": max(per.values(), default=0.0), "calls_per_bucket": counts, "seconds_per_bucket": per}


def burst(bin_dir: Path, log_dir: Path, findings: int, copies: int, token_buckets: bool = True) -> dict:
    with workflow(bin_dir, log_dir, token_buckets=token_buckets, copies=copies) as st:
        subnet = st.ec2.create_subnet(VpcId=st.sim["vpc_id"], CidrBlock="10.0.16.0/20", AvailabilityZone=f"{REGION}a")["Subnet"]["SubnetId"]
        group = st.ec2.create_security_group(GroupName="bench-web", Description="web", VpcId=st.sim["vpc_id"])["GroupId"]
        template = json.loads((ROOT / "events" / "instance-backdoor.json").read_text())
        sims = []
        for _ in range(findings):
            sim = make_instance(st.ec2, st.iam, subnet, group)
            sim["account"] = ACCOUNT
            sims.append(sim)
        before = len(proxy_log(st.proxy))
        t0 = time.monotonic()
        executions = []
        for i, sim in enumerate(sims):
            event = point_event_at(template, sim, sim["instance_id"])
            event["detail"]["id"] = f"burst{i:04d}{sim['instance_id'][2:]}"
            executions.append(
                st.sfn.start_execution(stateMachineArn=st.machine, name=f"burst-{i}-{time.time_ns()}", input=json.dumps(event))[
                    "executionArn"
                ]
            )
        pending = set(executions)
        finished: dict[str, dict] = {}
        deadline = t0 + 900
        while pending and time.monotonic() < deadline:
            time.sleep(1)
            listed = st.sfn.list_executions(stateMachineArn=st.machine, maxResults=1000)["executions"]
            for e in listed:
                if e["executionArn"] in pending and e["status"] != "RUNNING":
                    finished[e["executionArn"]] = st.sfn.describe_execution(executionArn=e["executionArn"])
                    pending.discard(e["executionArn"])
        t_all_done = time.monotonic() - t0
        calls = [c for c in proxy_log(st.proxy)[before:] if c.get("end") is not None]
        # Every call of the burst, kept for a closer look (the simulation's inputs are drawn
        # from one execution; this is what the many did).
        kept = [{k: c.get(k) for k in ("app", "action", "start", "end", "status", "fault")} for c in calls]
        (log_dir / f"burst-{findings}-{'buckets' if token_buckets else 'floor'}-calls.json").write_text(json.dumps(kept))
        interfaces = {eni for s in sims for eni in s["interfaces"]}
        quarantined_at: dict[str, float] = {}
        for c in calls:
            eni = (c.get("params") or {}).get("NetworkInterfaceId")
            if c["action"] == "ec2:ModifyNetworkInterfaceAttribute" and c["app"] == "isolate" and c["status"] == 200 and eni in interfaces:
                quarantined_at[eni] = c["end"] - t0
        contained_ok = len(quarantined_at) == len(interfaces)
        verdicts: dict[str, int] = {}
        causes: dict[str, int] = {}
        step_retries = 0
        for arn, d in finished.items():
            verdict = execution_verdict(json.loads(d.get("output") or "{}")) if d["status"] == "SUCCEEDED" else d["status"]
            verdicts[str(verdict)] = verdicts.get(str(verdict), 0) + 1
            history = st.sfn.get_execution_history(executionArn=arn, maxResults=1000)["events"]
            failed_attempts = [e for e in history if e["type"] in ("LambdaFunctionFailed", "TaskFailed")]
            step_retries += len(failed_attempts)
            for e in failed_attempts:
                details = e.get("lambdaFunctionFailedEventDetails") or e.get("taskFailedEventDetails") or {}
                cause = str(details.get("cause", ""))
                message = json.loads(cause).get("errorMessage", cause) if cause.startswith("{") else cause
                message = re.sub(r"[0-9a-f]{8,}|app-role-[0-9]+", "…", message)
                # a step that did part of its work names what failed last: keep that part
                message = message[message.find("failed:") :] if "failed:" in message else message
                key = f"{details.get('error')}: {message[:160]}"
                causes[key] = causes.get(key, 0) + 1
        # What containment waits for: the reads of triage and isolate, and the interface moves
        # (isolate's other writes run beside the moves, in buckets of their own).
        containment_calls = [
            c
            for c in calls
            if c["app"] in ("triage", "isolate")
            and c["action"].startswith("ec2:")
            and ec2_bucket_of(c) in ("describe", "ModifyNetworkInterfaceAttribute")
        ]
        return {
            "findings": findings,
            "function_copies": copies,
            "all_contained_s": max(quarantined_at.values()) if contained_ok else None,
            "median_contained_s": statistics.median(quarantined_at.values()) if quarantined_at else None,
            "contained": sum(1 for s in sims if all(e in quarantined_at for e in s["interfaces"])),
            # The harness's start: its first answer to a function (it starts the burst's
            # executions meanwhile, and answers nothing).
            "first_answer_s": (min(c["end"] for c in calls) - t0) if calls else 0.0,
            "all_finished_s": t_all_done,
            "unfinished": len(pending),
            "verdicts": verdicts,
            "failed_executions": sum(1 for d in finished.values() if d["status"] != "SUCCEEDED") + len(pending),
            "calls": len(calls),
            "throttled_calls": sum(1 for c in calls if c.get("fault") == "rate_limited"),
            "step_retries": step_retries,
            "failed_attempt_causes": dict(sorted(causes.items(), key=lambda kv: -kv[1])[:8]),
            "bound_containment": bucket_bound(containment_calls),
            "bound_all": bucket_bound(calls),
            # How long the harness answered calls for: from the first call to the last answer.
            "calls_span_s": (max(c["end"] for c in calls) - min(c["start"] for c in calls)) if calls else 0.0,
        }


def group_case(bin_dir: Path, log_dir: Path, instances: int) -> dict:
    """One attack sequence naming `instances` instances (GuardDuty lists at most 25 per shared
    resource), through EC2's token buckets, MaxInstancesPerFinding raised to contain them all:
    the time until every interface is quarantined, the buckets' bound for the calls containment
    waits for, and each instance's dependent-call chain in its isolate step (from the step's own
    trace, as the table above)."""
    cap = {"MaxInstancesPerFinding": str(instances)}
    os.environ[CALL_TRACE] = "1"
    with contextlib.ExitStack() as stack:
        stack.callback(os.environ.pop, CALL_TRACE, None)
        st = stack.enter_context(workflow(bin_dir, log_dir, token_buckets=True, parameters=cap))
        subnet = st.ec2.create_subnet(VpcId=st.sim["vpc_id"], CidrBlock="10.0.32.0/20", AvailabilityZone=f"{REGION}a")["Subnet"]["SubnetId"]
        group = st.ec2.create_security_group(GroupName="bench-group", Description="web", VpcId=st.sim["vpc_id"])["GroupId"]
        sims = [make_instance(st.ec2, st.iam, subnet, group) for _ in range(instances)]
        event = json.loads((ROOT / "events" / "attack-sequence-instance-group.json").read_text())
        event["detail"]["service"]["detection"]["sequence"]["resources"] = [
            {
                "uid": s["instance_id"],
                "resourceType": "EC2_INSTANCE",
                "accountId": ACCOUNT,
                "region": REGION,
                "data": {"ec2Instance": {"instanceState": "running"}},
            }
            for s in sims
        ]
        before = len(proxy_log(st.proxy))
        tail = LogTail(log_dir / "isolate.log")
        t0 = time.monotonic()
        outcome, _states, _note = execute(st, st.machine, event)
        finished = time.monotonic() - t0
        traced = traced_calls(tail.lines())
        calls = [c for c in proxy_log(st.proxy)[before:] if c.get("end") is not None]
        interfaces = {e for s in sims for e in s["interfaces"]}
        isolate_calls = [c for c in calls if c["app"] == "isolate" and c["action"].startswith("ec2:")]
        quarantined_at: dict[str, float] = {}
        chains = []
        for s in sims:
            mine = set(s["interfaces"]) | {s["instance_id"]}
            moves = [
                c
                for c in isolate_calls
                if c["action"] == "ec2:ModifyNetworkInterfaceAttribute"
                and c["status"] == 200
                and (c.get("params") or {}).get("NetworkInterfaceId") in mine
            ]
            for c in moves:
                quarantined_at[c["params"]["NetworkInterfaceId"]] = c["end"] - t0
            chain = awaited_chain([c for c in traced if c["instance_id"] == s["instance_id"]])
            if chain:
                chains.append(float(len(chain)))
        containment_calls = [
            c
            for c in calls
            if c["app"] in ("triage", "isolate")
            and c["action"].startswith("ec2:")
            and ec2_bucket_of(c) in ("describe", "ModifyNetworkInterfaceAttribute")
        ]
        return {
            "instances": instances,
            "status": outcome["status"],
            "verdict": execution_verdict(outcome.get("output")),
            "contained": sum(1 for s in sims if all(e in quarantined_at for e in s["interfaces"])),
            "all_contained_s": max(quarantined_at.values()) if len(quarantined_at) == len(interfaces) else None,
            "finished_s": finished,
            "calls": len(calls),
            "throttled_calls": sum(1 for c in calls if c.get("fault") == "rate_limited"),
            "bound_containment": bucket_bound(containment_calls),
            "chain_per_instance": spread(chains),
        }


# The simulation's assumptions for AWS (bench/burst_sim.py): each AWS call answered in 150 ms,
# a Lambda function's first call 50 ms after its state started, Lambda's default account
# concurrency (1,000 environments) and the state machine's Map (10 instances at once).
AWS_LATENCY_S, AWS_INVOKE_S, AWS_CONCURRENCY = 0.15, 0.05, 1000


def simulation(profile_calls: list[dict], r: dict, copies: int, group_size: int) -> dict | None:
    """The burst predicted by the simulation (bench/burst_sim.py): first at the harness's own
    speed (fitted to the burst without token buckets) against the burst measured through them,
    then with AWS's answers for 100 and 1,000 findings and a 25-instance group."""
    import burst_sim

    b, floor = r.get("burst"), r.get("burst_floor")
    if not profile_calls or not b or not floor or not floor["all_contained_s"]:
        return None
    profile = burst_sim.profile_of(profile_calls)
    # The harness: its function processes, a state's start as one execution alone shows it, and
    # one server answering calls one at a time, as fast as the burst without buckets says.
    overhead_s = burst_sim.step_overhead(profile_calls)
    # The functions' SDK asks as many times as the template's SdkMaxAttempts says (here and on AWS).
    attempts = int(function_settings(load_template(), {}, ACCOUNT).get("AWS_MAX_ATTEMPTS", burst_sim.SDK_RETRY["max_attempts"]))
    harness = burst_sim.Model(
        sdk_attempts=attempts, service_s=0.0, copies=copies, invoke_s=overhead_s, start_s=floor.get("first_answer_s", 0.0)
    )
    service_s = burst_sim.fit_service(
        profile, dataclasses.replace(harness, token_buckets=False), floor["findings"], floor["all_contained_s"]
    )
    harness = dataclasses.replace(harness, service_s=service_s)
    predicted = burst_sim.simulate(profile, harness, b["findings"])
    measured = b["all_contained_s"]
    error = (predicted["all_isolated_s"] / measured - 1) if measured and predicted["all_isolated_s"] else None
    # When the burst left instances unisolated (measured or predicted), the median is compared.
    measured_median = b.get("median_contained_s")
    median_error = (predicted["median_isolated_s"] / measured_median - 1) if measured_median and predicted["median_isolated_s"] else None
    aws = burst_sim.Model(latency_s=AWS_LATENCY_S, invoke_s=AWS_INVOKE_S, concurrency=AWS_CONCURRENCY, sdk_attempts=attempts)
    return {
        # The execution it was fed, to run it again (`burst_sim.profile_of`).
        "profile_calls": [{k: c.get(k) for k in ("app", "action", "start", "end", "fault")} for c in profile_calls],
        "profile": {f: [len(x) for x in rounds] for f, rounds in profile.items()},
        "harness_service_ms": service_s * 1000,
        "harness_step_overhead_ms": overhead_s * 1000,
        "harness_start_s": harness.start_s,
        "check": {
            "findings": b["findings"],
            "predicted": predicted,
            "measured_s": measured,
            "error": error,
            "measured_contained": b["contained"],
            "measured_median_s": measured_median,
            "median_error": median_error,
        },
        "aws": {
            "assumptions": {"latency_s": AWS_LATENCY_S, "invoke_s": AWS_INVOKE_S, "concurrency": AWS_CONCURRENCY, "sdk_attempts": attempts},
            "burst_100": burst_sim.simulate(profile, aws, 100),
            "burst_1000": burst_sim.simulate(profile, aws, 1000, seeds=2),
            "group_25": burst_sim.simulate(profile, aws, 1, 25),
            # The same 100 with the SDK's own default of 3 attempts (SdkMaxAttempts=3): what
            # less patience with EC2's buckets would change.
            "burst_100_attempts_3": burst_sim.simulate(profile, dataclasses.replace(aws, sdk_attempts=3), 100),
        },
    }


# ---------------------------------------------------------------- the table


def fmt(s: dict | None, digits: int = 1) -> str:
    if not s:
        return "n/a"
    if s["n"] == 1 or s["min"] == s["max"]:
        return f"{s['median']:.{digits}f}"
    return f"{s['median']:.{digits}f} ({s['min']:.{digits}f}–{s['max']:.{digits}f})"


def mb(n: int | None) -> str:
    return f"{n / 1e6:.2f}" if n else "n/a"


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "**missed**")


def render(r: dict) -> str:
    w = []
    m = r["machine"]
    w.append(f"## Benchmark ({r['mode']} mode), {m['date']}\n")
    w.append(
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, Linux {m['kernel']}; {m['rustc']}; Python {m['python']}. "
        f"Runs: {r['runs']} cold starts × (1 first + {r['warm']} warm) invocations per function and implementation, "
        "served by AWS's Runtime Interface Emulator against the moto emulator on loopback. "
        "Times in ms, sizes in MB (10^6 bytes), memory in MiB: median (min–max).\n"
    )
    w.append("### Per function\n")
    w.append(
        "| function | impl | bootstrap x86_64 | zip x86_64 | bootstrap arm64 | zip arm64 | init | first invoke | warm invoke | peak RSS | AWS calls per invocation | errors |"
    )
    w.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name in FUNCTIONS:
        size = r["sizes"].get(name, {})
        for impl in ("rust", "python"):
            c = r["cold"].get(name, {}).get(impl)
            if c is None:
                continue
            if impl == "rust":
                cells = [
                    mb(size.get("x86_64", {}).get("bytes")),
                    mb(size.get("x86_64", {}).get("zip_bytes")),
                    mb(size.get("arm64", {}).get("bytes")),
                    mb(size.get("arm64", {}).get("zip_bytes")),
                ]
            else:
                base = r["sizes"]["baseline"]
                cells = ["—", f"{base['zip_bytes'] / 1e3:.1f} kB (+ boto3 in the runtime: {mb(base['boto3_in_runtime_bytes'])})", "—", "—"]
            w.append(
                f"| {name} | {impl} | "
                + " | ".join(cells)
                + f" | {fmt(c['init_ms'])} | {fmt(c['first_ms'])} | {fmt(c['warm_ms'])} | {fmt(c['peak_rss_mib'])} | {c['calls_per_invocation']:.1f} | {c['error_count']} |"
            )
    w.append("")
    w.append("### Rust beside the Python baseline (ratios of medians, Python ÷ Rust)\n")
    w.append("| function | init | first invoke | warm invoke | peak RSS |")
    w.append("|---|---|---|---|---|")
    for name, ratios in r["ratios"].items():
        w.append(
            f"| {name} | "
            + " | ".join(f"{ratios[k]:.1f}×" if ratios.get(k) else "n/a" for k in ("init_ms", "first_ms", "warm_ms", "peak_rss_mib"))
            + " |"
        )
    w.append("")
    runs = r["calls"][0].get("runs", 1) if r["calls"] else 0
    w.append(f"### AWS calls per finding (instance finding, whole workflow; {runs} runs each: median (min–max))\n")
    w.append(
        "| instance | calls | by function (last run) | dependent calls before all ENIs quarantined: isolate step (its own trace) | from the finding (triage + isolate) | the longest chain |"
    )
    w.append("|---|---|---|---|---|---|")
    for c in r["calls"]:
        by = ", ".join(f"{k} {v}" for k, v in sorted(c["calls_by_function"].items()))
        w.append(
            f"| {c['interfaces']} ENI / {c['volumes']} vol, groups {c['quarantine_groups']} ({c['verdict'] or c['status']}) | {fmt(c['calls'], 0)} | {by} | {fmt(c['dependent_calls_isolate'], 0)} | {fmt(c['dependent_calls_from_finding'], 0)} | {' → '.join(c['chain'])} |"
        )
    w.append("")
    b = r["burst"]
    if b:
        w.append(f"### Burst: {b['findings']} findings for {b['findings']} instances, EC2 token buckets enforced\n")
        w.append(
            "| contained | last contained (s) | containment bound (s) | all finished (s) | whole-burst bound (s) | calls | throttled calls | step retries | failed executions | verdicts |"
        )
        w.append("|---|---|---|---|---|---|---|---|---|---|")
        last = f"{b['all_contained_s']:.1f}" if b["all_contained_s"] is not None else "n/a"
        w.append(
            f"| {b['contained']}/{b['findings']} | {last} | {b['bound_containment']['seconds']:.1f} | {b['all_finished_s']:.1f} | {b['bound_all']['seconds']:.1f} | {b['calls']} | {b['throttled_calls']} | {b['step_retries']} | {b['failed_executions']} | "
            + ", ".join(f"{k} {v}" for k, v in sorted(b["verdicts"].items()))
            + " |"
        )
        f = r.get("burst_floor")
        if f:
            w.append(
                f"| without token buckets (the harness alone): {f['contained']}/{f['findings']} | {f['all_contained_s'] if f['all_contained_s'] is None else round(f['all_contained_s'], 1)} | — | {f['all_finished_s']:.1f} | — | {f['calls']} | 0 | {f['step_retries']} | {f['failed_executions']} | "
                + ", ".join(f"{k} {v}" for k, v in sorted(f["verdicts"].items()))
                + " |"
            )
        if b.get("failed_attempt_causes"):
            w.append("\nFailed step attempts (retried by the state machine, or caught and reported):\n")
            for cause, n in b["failed_attempt_causes"].items():
                w.append(f"- {n} × {cause}")
        w.append(
            "\nEC2 calls per bucket: "
            + ", ".join(f"{k} {v}" for k, v in sorted(b["bound_all"]["calls_per_bucket"].items()))
            + f"; each function served by {b['function_copies']} processes.\n"
        )
    sim = r.get("simulation")
    if sim:
        c = sim["check"]
        p = c["predicted"]
        w.append("### Burst simulated (bench/burst_sim.py)\n")
        w.append(
            f"Fed by one containment's calls (per function, in rounds: {', '.join(f'{k} {v}' for k, v in sorted(sim['profile'].items()))}), "
            "EC2's token buckets, the SDK's standard retries and the state machine's Retry.\n"
        )
        w.append(
            "| case | where the calls go | instances isolated | last isolated (s) | median isolated (s) | calls | throttled | step retries | failed steps |"
        )
        w.append("|---|---|---|---|---|---|---|---|---|")

        def row(name: str, where: str, x: dict) -> str:
            last = "n/a" if x["all_isolated_s"] is None else f"{x['all_isolated_s']:.1f}"
            med = "n/a" if x["median_isolated_s"] is None else f"{x['median_isolated_s']:.1f}"
            return f"| {name} | {where} | {x['isolated']}/{x['instances']} | {last} | {med} | {x['calls']:.0f} | {x['throttled']:.0f} | {x['step_retries']:.0f} | {x['failed_steps']:.0f} |"

        w.append(
            row(
                f"check: the {c['findings']}-finding burst above",
                f"the harness ({sim['harness_service_ms']:.1f} ms a call, one at a time; {sim['harness_step_overhead_ms']:.0f} ms from a state to its first call)",
                p,
            )
        )
        a = sim["aws"]
        attempts = a["assumptions"].get("sdk_attempts", 3)
        where = f"AWS ({a['assumptions']['latency_s'] * 1000:.0f} ms a call, {a['assumptions']['concurrency']} Lambda environments, {attempts} SDK attempts)"
        w.append(row("100 findings at once", where, a["burst_100"]))
        w.append(row("1,000 findings at once", where, a["burst_1000"]))
        w.append(row("one finding naming 25 instances", where, a["group_25"]))
        if a.get("burst_100_attempts_3"):
            w.append(
                row("100 findings at once, the SDK asking 3 times (its own default: `SdkMaxAttempts=3`)", where, a["burst_100_attempts_3"])
            )
        measured = "n/a" if c["measured_s"] is None else f"{c['measured_s']:.1f} s"
        err = "n/a" if c["error"] is None else f"{c['error'] * 100:+.0f}%"
        pred = "n/a" if p["all_isolated_s"] is None else f"{p['all_isolated_s']:.1f} s"
        line = f"\nThe check: the last isolated, predicted {pred} against {measured} measured ({err})"
        if c.get("median_error") is not None:
            line += (
                f"; the median, {p['median_isolated_s']:.1f} s against {c['measured_median_s']:.1f} s ({c['median_error'] * 100:+.0f}%); "
                f"isolated {p['isolated']}/{p['instances']} predicted, {c['measured_contained']}/{c['findings']} measured"
            )
        w.append(line + f". The harness answered its first call {sim.get('harness_start_s', 0.0):.1f} s after the burst began.\n")
    g = r.get("group")
    if g:
        w.append(f"### Group: one attack sequence naming {g['instances']} instances, EC2 token buckets enforced\n")
        w.append(
            "| contained | last interface quarantined (s) | containment bound (s) | execution finished (s) | calls | throttled calls | dependent calls per instance, isolate step | verdict |"
        )
        w.append("|---|---|---|---|---|---|---|---|")
        last = f"{g['all_contained_s']:.1f}" if g["all_contained_s"] is not None else "n/a"
        w.append(
            f"| {g['contained']}/{g['instances']} | {last} | {g['bound_containment']['seconds']:.1f} | {g['finished_s']:.1f} | {g['calls']} | {g['throttled_calls']} | {fmt(g['chain_per_instance'], 0)} | {g['verdict'] or g['status']} |"
        )
        w.append("")
    w.append("### Targets\n")
    w.append("| target | measured | |")
    w.append("|---|---|---|")
    for t in r["targets"]:
        w.append(f"| {t['target']} | {t['measured']} | {verdict(t['met'])} |")
    w.append("")
    w.append("### Release build\n")
    rb = r["release"]
    w.append(
        f"- TLS stacks in the dependency tree: {', '.join(rb['tls']) or 'none'}; duplicated crates (`cargo tree -d`, normal deps): {rb['duplicates']}"
    )
    w.append(f"- Network calls before a function is ready: {rb['network_at_init']}")
    return "\n".join(w) + "\n"


def targets(r: dict) -> list[dict]:
    out = []
    rust = {n: r["cold"][n]["rust"] for n in r["cold"] if "rust" in r["cold"][n]}
    inits = [c["init_ms"]["median"] for c in rust.values() if c["init_ms"]]
    if inits:
        out.append(
            {
                "target": f"init ≤ {TARGETS['init_ms']} ms",
                "measured": f"worst median {max(inits):.1f} ms",
                "met": max(inits) <= TARGETS["init_ms"],
            }
        )
    ratios = [v["init_ms"] for v in r["ratios"].values() if v.get("init_ms")]
    if ratios:
        out.append(
            {
                "target": "init ≤ 1/20 of the baseline's",
                "measured": f"baseline ÷ Rust ≥ {min(ratios):.0f}×",
                "met": min(ratios) >= 1 / TARGETS["init_ratio"],
            }
        )
    rss = [c["peak_rss_mib"]["max"] for c in rust.values() if c["peak_rss_mib"]]
    if rss:
        out.append(
            {"target": f"peak RSS ≤ {TARGETS['rss_mb']} MB", "measured": f"worst {max(rss):.1f} MiB", "met": max(rss) <= TARGETS["rss_mb"]}
        )
    for arch in ("x86_64", "arm64"):
        sz = [v[arch]["bytes"] for k, v in r["sizes"].items() if k != "baseline" and arch in v]
        out.append(
            {
                "target": f"stripped bootstrap ≤ {TARGETS['bootstrap_mb']} MB ({arch})",
                "measured": f"largest {mb(max(sz))} MB" if sz else "not built",
                "met": (max(sz) <= TARGETS["bootstrap_mb"] * 1e6) if sz else None,
            }
        )
    for c in r["calls"]:
        most = TARGETS["dependent_calls"][c["quarantine_groups"]]
        chain = c["dependent_calls_isolate"]
        out.append(
            {
                "target": f"≤ {most} dependent calls in the isolate step before isolation ({c['interfaces']} ENI, groups {c['quarantine_groups']})",
                "measured": f"{fmt(chain, 0)} over {c['runs']} runs ({fmt(c['dependent_calls_from_finding'], 0)} from the finding)",
                "met": c["verdict"] == "contained" and bool(chain) and chain["max"] <= most,
            }
        )
    if r["burst"]:
        out.append(burst_target(r))
    sim = r.get("simulation")
    if sim:
        c = sim["check"]
        # The last instance isolated; when one side left instances unisolated, the median.
        err, what = (c["error"], "the last isolated") if c["error"] is not None else (c.get("median_error"), "the median isolated")
        out.append(
            {
                "target": "the burst simulation predicts the harness's measured burst within 20%",
                "measured": "n/a" if err is None else f"{err * 100:+.0f}% ({what})",
                "met": None if err is None else abs(err) <= 0.2,
            }
        )
    return out


def burst_target(r: dict) -> dict:
    """The burst's target: every instance contained, within 1.5x what it cannot beat."""
    b = r["burst"]
    buckets, floor = burst_bounds(r)
    bound = max(buckets, floor or 0.0)
    ok = (
        b["contained"] == b["findings"]
        and b["failed_executions"] == 0
        and b["all_contained_s"] is not None
        and floor is not None
        and b["all_contained_s"] <= bound * TARGETS["burst_factor"]
    )
    return {
        "target": f"burst: {b['findings']}/{b['findings']} contained within 1.5× the bound (the larger of EC2's buckets' and the harness's own time without them), no failed execution",
        "measured": f"{b['contained']}/{b['findings']}, last at {b['all_contained_s'] if b['all_contained_s'] is None else round(b['all_contained_s'], 1)} s "
        + f"(buckets' bound {buckets:.1f} s, the harness alone "
        + (f"{floor:.1f} s" if floor is not None else "not measured")
        + f"), {b['failed_executions']} failed",
        "met": ok if floor is not None else None,
    }


def burst_bounds(r: dict) -> tuple[float, float | None]:
    """What the burst cannot beat: EC2's token buckets for the calls containment waits for, and
    the same burst without them (this machine's emulator and interpreter alone), or None when
    that run did not contain every instance."""
    floor = r.get("burst_floor") or {}
    return r["burst"]["bound_containment"]["seconds"], floor.get("all_contained_s")


def release_checks(x86_dir: Path, emulator: str) -> dict:
    tree = subprocess.run(
        ["cargo", "tree", "-e", "normal", "--prefix", "none", "--locked"], check=False, cwd=ROOT, capture_output=True, text=True
    ).stdout
    names = {line.split()[0] for line in tree.splitlines() if line.strip()}
    tls = sorted(n for n in names if n in ("rustls", "native-tls", "openssl", "openssl-sys", "s2n-tls", "aws-lc-rs", "ring"))
    dups = subprocess.run(
        ["cargo", "tree", "-d", "-e", "normal", "--depth", "0", "--locked"], check=False, cwd=ROOT, capture_output=True, text=True
    ).stdout
    dup_names = sorted({line.split()[0] for line in dups.splitlines() if line and not line.startswith(" ") and line[0].isalnum()})
    acct = Account(emulator)
    early = {}
    for name in FUNCTIONS:
        binary = x86_dir / name
        if binary.is_file():
            early[name] = network_at_init(binary, settings_for(acct, emulator))
    clean = all(v["ready"] and v["calls_before_ready"] == 0 for v in early.values())
    summary = "none (every function asked for its first invocation without opening a connection)" if clean else json.dumps(early)
    return {"tls": tls, "duplicates": ", ".join(dup_names) or "none", "network_at_init": summary, "per_function": early}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="few runs and a small burst (the test command's mode)")
    p.add_argument("--x86-dir", help="the x86_64 release bootstraps (one file per function)")
    p.add_argument("--arm-dir", help="sam build's output (.aws-sam/build), for the arm64 sizes")
    p.add_argument("--python", help="the baseline's Python (with boto3 and awslambdaric)")
    p.add_argument("--json", required=True, help="where the results go")
    p.add_argument("--markdown", help="where the table goes too")
    p.add_argument("--render", action="store_true", help="only print the table of the results in --json")
    p.add_argument("--burst", type=int, help="findings in the burst (default: 10 quick, 100 full)")
    args = p.parse_args(argv)
    if args.render:
        print(render(json.loads(Path(args.json).read_text())))
        return 0
    emulator = os.environ["MOTO_ENDPOINT"]
    runs, warm, findings, copies = (2, 3, 10, 2) if args.quick else (10, 10, 100, 10)
    if args.burst:
        findings, copies = args.burst, 2 if args.burst <= 10 else 10
    group_size = 10 if args.quick else 25
    x86_dir, arm_dir = Path(args.x86_dir), Path(args.arm_dir) if args.arm_dir else None
    log_dir = Path(tempfile.mkdtemp(prefix="ec2-quarantine-bench-"))
    r: dict = {"mode": "quick" if args.quick else "full", "runs": runs, "warm": warm, "machine": machine(), "logs": str(log_dir)}
    log("sizes")
    r["sizes"] = sizes(x86_dir, arm_dir)
    log("release build checks")
    r["release"] = release_checks(x86_dir, emulator)
    r["cold"], r["ratios"] = {}, {}
    for name, (_id, _event, handler) in FUNCTIONS.items() if not os.environ.get("BENCH_SKIP_COLD") else ():
        log(f"{name}: Rust, {runs} cold starts")
        r["cold"][name] = {"rust": cold_starts(name, [str(x86_dir / name)], ROOT, emulator, runs, warm, log_dir)}
        if handler:
            log(f"{name}: Python baseline, {runs} cold starts")
            py = cold_starts(
                name,
                [os.path.abspath(args.python), "-m", "awslambdaric", handler],
                BASELINE_DIR,
                emulator,
                runs,
                warm,
                log_dir,
                {"PYTHONPATH": str(BASELINE_DIR)},
            )
            r["cold"][name]["python"] = py
            rust = r["cold"][name]["rust"]
            r["ratios"][name] = {
                k: (py[k]["median"] / rust[k]["median"]) if py[k] and rust[k] and rust[k]["median"] else None
                for k in ("init_ms", "first_ms", "warm_ms", "peak_rss_mib")
            }
    log("AWS calls per finding (1 ENI/1 volume, 4 ENIs/8 volumes)")
    r["calls"], profile = calls_per_finding(x86_dir, log_dir, [(1, 1), (4, 8)], 2 if args.quick else 5)
    log(f"burst of {findings} findings through EC2's token buckets")
    r["burst"] = burst(x86_dir, log_dir, findings, copies)
    log(f"one attack sequence naming {group_size} instances through EC2's token buckets")
    r["group"] = group_case(x86_dir, log_dir, group_size)
    # The same burst without rate limits: how fast this machine's emulator and interpreter go,
    # the other bound the burst cannot beat (quick mode too: the buckets' bound of a small burst
    # is 0, every call within the buckets' capacity).
    log("the same burst without rate limits (the local harness's own speed)")
    r["burst_floor"] = burst(x86_dir, log_dir, findings, copies, token_buckets=False)
    log("the burst simulated: checked against the harness's burst, then with AWS's answers")
    r["simulation"] = simulation(profile, r, copies, group_size)
    r["targets"] = targets(r)
    r["invalid"] = invalid(r)
    table = render(r)
    Path(args.json).write_text(json.dumps(r, indent=2) + "\n")
    if args.markdown:
        Path(args.markdown).write_text(table)
    print(table)
    for problem in r["invalid"]:
        print(f"invalid measurement: {problem}", file=sys.stderr)
    return 1 if r["invalid"] else 0


def invalid(r: dict) -> list[str]:
    """What makes the figures meaningless (never a time or a size): a function that failed on its
    event, a workflow that did not contain its instance, a function that called out at init."""
    problems = []
    for name, impls in r["cold"].items():
        for impl, c in impls.items():
            if c["error_count"]:
                problems.append(f"{name} ({impl}) failed {c['error_count']} invocation(s): {c['errors']}")
            if not c["init_ms"] or not c["peak_rss_mib"]:
                problems.append(f"{name} ({impl}): no init time or memory figure")
    for c in r["calls"]:
        if c["verdict"] != "contained":
            problems.append(f"the {c['interfaces']}-ENI finding ended {c['status']}/{c['verdict']}, not contained")
    g = r.get("group")
    if g and g["verdict"] != "contained":
        problems.append(f"the {g['instances']}-instance attack sequence ended {g['status']}/{g['verdict']}, not contained")
    b = r.get("burst")
    if b and b["unfinished"]:
        problems.append(f"{b['unfinished']} burst execution(s) did not finish")
    for name, v in r["release"]["per_function"].items():
        if not v["ready"]:
            problems.append(f"{name} never asked for an invocation")
    return problems


if __name__ == "__main__":
    sys.exit(main())
