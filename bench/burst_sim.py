"""What a burst of findings would take: a discrete-event simulation of the containment workflow.

Fed by the calls one containment makes (the recording proxy's log of one execution: per function,
in order, grouped into rounds of calls made at once), it runs many executions at once through:
- the state machine as statemachine/containment.asl.json shapes it: triage, then per instance
  (at most `map_concurrency` at once) isolate, deregister, snapshot and deny-role in parallel,
  then notify; a step that failed is run again as the Retry of its TransientAwsError says
  (read from the state machine's definition);
- the functions' processes: `copies` per function (the harness), or one pool of `concurrency`
  environments shared by all functions (Lambda's account concurrency);
- EC2's token buckets (tests/tools/fault_proxy.py's EC2_BUCKETS, as AWS publishes them): a call
  finding its bucket empty is refused (RequestLimitExceeded), and the SDK's standard retry
  policy asks again (3 attempts in all, full-jitter exponential backoff from 1 s, at most 20 s,
  within the retry quota of each process);
  a call refused three times fails its step (the rounds after it are not made), which the
  state machine retries;
- the service answering the calls: the harness's one process (a single server answering calls
  one at a time, `service_s` each, measured, and none before `start_s`, the time it takes to
  start a burst's executions), or AWS (each call answered after `latency_s`, no queue).

It predicts, per execution, when the isolate step's last interface move succeeded.
"""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import json
import random
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from fault_proxy import EC2_BUCKETS, ec2_bucket

# The parallel steps per instance, and the steps before and after them.
BEFORE = ("triage",)
PER_INSTANCE = ("isolate", "deregister", "snapshot", "deny-role")
AFTER = ("notify",)
ASL = Path(__file__).resolve().parents[1] / "statemachine" / "containment.asl.json"


def step_retry(asl: Path = ASL) -> dict:
    """The state machine's Retry of the isolate step's TransientAwsError, as configured (every
    Lambda step has the same)."""
    found: list[dict] = []

    def walk(states: dict) -> None:
        for name, state in states.items():
            if name == "Isolate":
                found.extend(r for r in state.get("Retry", []) if "TransientAwsError" in r["ErrorEquals"])
            for branch in state.get("Branches", []):
                walk(branch["States"])
            inner = state.get("ItemProcessor") or state.get("Iterator")
            if inner:
                walk(inner["States"])

    walk(json.loads(asl.read_text())["States"])
    r = found[0]
    return {
        "interval_s": float(r.get("IntervalSeconds", 1)),
        "backoff": float(r.get("BackoffRate", 2.0)),
        "max_attempts": int(r.get("MaxAttempts", 3)) + 1,  # the first attempt and its retries
        "max_delay_s": float(r.get("MaxDelaySeconds", 10**9)),
        "jitter": r.get("JitterStrategy") == "FULL",
    }


# The SDK's standard retry policy (aws-smithy-runtime's StandardRetryStrategy defaults).
SDK_RETRY = {"max_attempts": 3, "initial_s": 1.0, "max_s": 20.0, "quota": 500, "retry_cost": 5}
MOVE = "ec2:ModifyNetworkInterfaceAttribute"


def rounds_of(calls: list[dict]) -> list[list[str]]:
    """One function invocation's calls grouped into rounds: a call that started before every
    call of the current round ended was made beside them; one that started after is the next
    round's."""
    out: list[list[str]] = []
    ends: list[float] = []
    for c in sorted(calls, key=lambda c: c["start"]):
        if out and c["start"] < max(ends):
            out[-1].append(c["action"])
            ends.append(c["end"])
        else:
            out.append([c["action"]])
            ends = [c["end"]]
    return out


def profile_of(calls: list[dict]) -> dict[str, list[list[str]]]:
    """Per function, the rounds of one execution's calls (the proxy's log, `app` per call)."""
    by_app: dict[str, list[dict]] = {}
    for c in calls:
        if c.get("app") and c.get("end") is not None and c.get("fault") != "rate_limited":
            by_app.setdefault(c["app"], []).append(c)
    return {app: rounds_of(cs) for app, cs in by_app.items()}


def step_overhead(calls: list[dict]) -> float:
    """From one execution's calls: how long a state takes from the step before it to its
    function's first call (the state machine's transition, the invocation, the function's
    start), as the median over the steps after triage."""
    by_app: dict[str, list[dict]] = {}
    for c in calls:
        if c.get("app") and c.get("end") is not None:
            by_app.setdefault(c["app"], []).append(c)
    if "triage" not in by_app:
        return 0.0
    triage_end = max(c["end"] for c in by_app["triage"])
    gaps = [min(c["start"] for c in by_app[f]) - triage_end for f in PER_INSTANCE if f in by_app]
    return max(0.0, statistics.median(gaps)) if gaps else 0.0


def isolation_round(rounds: list[list[str]]) -> int:
    """The round of the isolate step's last interface move."""
    return max((i for i, r in enumerate(rounds) if MOVE in r), default=len(rounds) - 1)


@dataclass
class Model:
    """Where the calls go: the harness (`service_s`: one server) or AWS (`latency_s`: no queue)."""

    service_s: float | None = None
    latency_s: float = 0.0
    copies: int | None = None  # processes per function (the harness)
    concurrency: int | None = None  # environments shared by all functions (Lambda)
    invoke_s: float = 0.0  # from a state's start to the function's first call
    # When the executions begin: the harness answers no call while it starts a burst's
    # executions (its first answer comes this long after the first start; 0 on AWS).
    start_s: float = 0.0
    token_buckets: bool = True
    map_concurrency: int = 10
    sdk_attempts: int = SDK_RETRY["max_attempts"]  # AWS_MAX_ATTEMPTS


@dataclass(order=True)
class _Event:
    at: float
    seq: int
    run: object = field(compare=False)


class Simulation:
    def __init__(self, profile: dict[str, list[list[str]]], model: Model, seed: int = 1):
        self.profile, self.m = profile, model
        self.rng = random.Random(seed)
        self.now = 0.0
        self.events: list[_Event] = []
        self.seq = itertools.count()
        self.tokens = {b: float(cap) for b, (cap, _rate) in EC2_BUCKETS.items()}
        self.tokens_at = 0.0
        self.server_free = 0.0
        self.slots: dict[str, int] = {}
        self.waiting: dict[str, list] = {}
        self.calls = self.throttled = self.step_retries = self.failed_steps = 0
        self.retry = step_retry()
        self.quota: dict[str, float] = {}

    # -- the clock
    def at(self, t: float, fn) -> None:
        heapq.heappush(self.events, _Event(t, next(self.seq), fn))

    def run_until_idle(self) -> None:
        while self.events:
            e = heapq.heappop(self.events)
            self.now = e.at
            e.run()

    # -- EC2's buckets
    def take(self, action: str) -> bool:
        if not self.m.token_buckets or not action.startswith("ec2:"):
            return True
        dt = self.now - self.tokens_at
        self.tokens_at = self.now
        for b, (cap, rate) in EC2_BUCKETS.items():
            self.tokens[b] = min(cap, self.tokens[b] + dt * rate)
        b = ec2_bucket(action.split(":", 1)[1])
        if self.tokens[b] >= 1:
            self.tokens[b] -= 1
            return True
        return False

    # -- the SDK's retry quota of a function's processes (aws-smithy-runtime's token bucket:
    # 500 per process; a retry of a throttled call takes 5, given back when the call ends, but
    # for the earlier retries of the same call, which are lost; a first attempt that succeeds
    # adds 1). A process that has none left does not retry. The harness's processes serve many
    # invocations each; on AWS a burst mostly gets fresh environments, so it is not counted.
    def quota_left(self, function: str) -> float | None:
        if not self.m.copies:
            return None
        return self.quota.setdefault(function, float(SDK_RETRY["quota"] * self.m.copies))

    def quota_add(self, function: str, n: float) -> None:
        left = self.quota_left(function)
        if left is not None:
            self.quota[function] = min(left + n, float(SDK_RETRY["quota"] * self.m.copies))

    # -- one call, with the SDK's retries; done(ok)
    def call(self, function: str, action: str, done, attempt: int = 1) -> None:
        held = attempt > 1  # a retry permit of this call's last retry
        if not self.take(action):
            self.throttled += 1
            left = self.quota_left(function)
            if attempt >= self.m.sdk_attempts or (left is not None and left < SDK_RETRY["retry_cost"]):
                if held:
                    self.quota_add(function, SDK_RETRY["retry_cost"])
                self.at(self.now, lambda: done(False))
                return
            if left is not None:
                self.quota[function] = left - SDK_RETRY["retry_cost"]
            wait = self.rng.random() * min(SDK_RETRY["initial_s"] * 2 ** (attempt - 1), SDK_RETRY["max_s"])
            self.at(self.now + wait, lambda: self.call(function, action, done, attempt + 1))
            return
        self.calls += 1
        self.quota_add(function, SDK_RETRY["retry_cost"] if held else 1)
        if self.m.service_s is not None:
            start = max(self.now, self.server_free)
            self.server_free = start + self.m.service_s
            self.at(self.server_free, lambda: done(True))
        else:
            self.at(self.now + self.m.latency_s, lambda: done(True))

    # -- the functions' processes
    def pool(self, function: str) -> str:
        return function if self.m.copies else "*"

    def acquire(self, function: str, go) -> None:
        key = self.pool(function)
        limit = self.m.copies or self.m.concurrency or 10**9
        if self.slots.get(key, 0) < limit:
            self.slots[key] = self.slots.get(key, 0) + 1
            go()
        else:
            self.waiting.setdefault(key, []).append(go)

    def release(self, function: str) -> None:
        key = self.pool(function)
        queue = self.waiting.get(key)
        if queue:
            self.at(self.now, queue.pop(0))
        else:
            self.slots[key] -= 1

    # -- one step: its function's rounds, retried by the state machine when a call failed
    def step(self, function: str, done, on_round=None, attempt: int = 1) -> None:
        rounds = self.profile.get(function, [])

        def start():
            failed = [False]

            def round_at(i: int):
                if i == len(rounds):
                    self.release(function)
                    if failed[0] and attempt < self.retry["max_attempts"]:
                        self.step_retries += 1
                        r = self.retry
                        wait = min(r["interval_s"] * r["backoff"] ** (attempt - 1), r["max_delay_s"])
                        if r["jitter"]:
                            wait *= self.rng.random()
                        self.at(self.now + wait, lambda: self.step(function, done, on_round, attempt + 1))
                    else:
                        self.failed_steps += failed[0]
                        done()
                    return
                left = [len(rounds[i])]
                ok_all = [True]
                moved = [True]

                def one(action: str, ok: bool):
                    ok_all[0] &= ok
                    if action == MOVE:
                        moved[0] &= ok
                    failed[0] |= not ok
                    left[0] -= 1
                    if left[0] == 0:
                        if on_round:
                            # Isolated when the round's interface moves succeeded (a call
                            # beside them that failed fails the step, not the moves).
                            on_round(i, moved[0])
                        # A round that failed ends the step (what follows used its answers).
                        round_at(i + 1 if ok_all[0] else len(rounds))

                for action in rounds[i]:
                    self.call(function, action, lambda ok, a=action: one(a, ok))

            self.at(self.now + self.m.invoke_s, lambda: round_at(0))

        self.acquire(function, start)

    def steps(self, functions: tuple[str, ...], done) -> None:
        if not functions:
            done()
            return
        self.step(functions[0], lambda: self.steps(functions[1:], done))

    # -- one execution: `instances` instances of one finding
    def execution(self, instances: int, isolated: list[float]) -> None:
        iso = isolation_round(self.profile.get("isolate", [[]]))

        def per_instance(next_instance, finished):
            left = [len(PER_INSTANCE)]
            seen = [False]

            def one_done():
                left[0] -= 1
                if left[0] == 0:
                    finished()
                    next_instance()

            def on_isolate_round(i: int, ok: bool):
                if i == iso and ok and not seen[0]:
                    seen[0] = True
                    isolated.append(self.now)

            for f in PER_INSTANCE:
                self.step(f, one_done, on_isolate_round if f == "isolate" else None)

        def instances_then_after():
            pending = list(range(instances))
            left = [instances]

            def launch():
                if pending:
                    pending.pop()
                    per_instance(launch, finished)

            def finished():
                left[0] -= 1
                if left[0] == 0:
                    self.steps(AFTER, lambda: None)

            for _ in range(min(self.m.map_concurrency, instances)):
                launch()

        self.steps(BEFORE, instances_then_after)


def fit_service(profile: dict, model: Model, findings: int, measured_s: float) -> float:
    """The time a call takes the harness's one server such that the simulation gives the
    measured time until every instance was isolated (bisection: the time grows with it)."""
    lo, hi = 1e-5, 1.0
    for _ in range(30):
        mid = (lo + hi) / 2
        got = simulate(profile, dataclasses.replace(model, service_s=mid), findings, seeds=1)["all_isolated_s"]
        if got is None or got > measured_s:
            hi = mid
        else:
            lo = mid
    return (lo + hi) / 2


def simulate(profile: dict, model: Model, findings: int, instances_per_finding: int = 1, seeds: int = 5) -> dict:
    """`findings` executions started at once: when every instance was isolated (median over
    `seeds` runs of the random retry waits), and the calls, throttles and retries."""
    results = []
    for seed in range(1, seeds + 1):
        sim = Simulation(profile, model, seed)
        isolated: list[float] = []
        for _ in range(findings):
            sim.at(model.start_s, lambda sim=sim, isolated=isolated: sim.execution(instances_per_finding, isolated))
        sim.run_until_idle()
        want = findings * instances_per_finding
        results.append(
            {
                "all_isolated_s": max(isolated) if len(isolated) >= want else None,
                "median_isolated_s": statistics.median(isolated) if isolated else None,
                "isolated": len(isolated),
                "calls": sim.calls,
                "throttled": sim.throttled,
                "step_retries": sim.step_retries,
                "failed_steps": sim.failed_steps,
            }
        )
    done = [r["all_isolated_s"] for r in results if r["all_isolated_s"] is not None]
    pick = lambda k: statistics.median(r[k] for r in results)
    return {
        "findings": findings,
        "instances": findings * instances_per_finding,
        "all_isolated_s": statistics.median(done) if len(done) == len(results) else None,
        "median_isolated_s": pick("median_isolated_s") if all(r["median_isolated_s"] is not None for r in results) else None,
        "isolated": min(r["isolated"] for r in results),
        "calls": pick("calls"),
        "throttled": pick("throttled"),
        "step_retries": pick("step_retries"),
        "failed_steps": pick("failed_steps"),
        "seeds": seeds,
    }
