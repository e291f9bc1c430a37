"""The benchmark's own arithmetic: dependent-call chains, EC2's token buckets and their bound.

The figures themselves are never asserted on (bench/bench.py reports them); these check that
what it computes from a request log is what the table claims.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

from fault_proxy import EC2_BUCKETS, TokenBucket, ec2_bucket

import bench


def call(action: str, start: float, end: float, **kw) -> dict:
    return {"action": action, "start": start, "end": end, **kw}


def test_the_critical_path_counts_calls_made_at_once_once():
    calls = [
        call("ec2:DescribeInstances", 0.0, 1.0),
        call("ec2:DescribeSecurityGroups", 0.0, 1.2),
        call("ec2:DescribeNetworkInterfaces", 0.0, 0.5),
        # written while the first move runs
        call("ec2:CreateTags", 1.3, 1.9),
        call("ec2:ModifyNetworkInterfaceAttribute", 1.3, 2.0),
        call("ec2:ModifyNetworkInterfaceAttribute", 2.1, 3.0),
    ]
    path = [c["action"].split(":")[1] for c in bench.critical_path(calls, calls[-1])]
    assert path == ["DescribeSecurityGroups", "ModifyNetworkInterfaceAttribute", "ModifyNetworkInterfaceAttribute"]


def test_calls_one_after_another_all_count():
    calls = [call(f"ec2:A{i}", i, i + 0.5) for i in range(5)]
    assert len(bench.critical_path(calls, calls[-1])) == 5
    assert bench.critical_path(calls, calls[0]) == [calls[0]]


def test_the_bound_is_the_slowest_bucket_beyond_its_capacity():
    # 200 interface changes: 100 pass at once, 100 more at 5 a second -> 20 s.
    calls = [call("ec2:ModifyNetworkInterfaceAttribute", 0, 0) for _ in range(200)]
    # 500 describes: 100 at once, 400 at 20 a second -> 20 s as well; 150 tags -> 5 s.
    calls += [call("ec2:DescribeInstances", 0, 0) for _ in range(500)]
    calls += [call("ec2:CreateTags", 0, 0) for _ in range(150)]
    # throttled answers and other services use no EC2 token
    calls += [call("ec2:DescribeInstances", 0, 0, fault="rate_limited") for _ in range(1000)]
    calls += [call("iam:AttachRolePolicy", 0, 0) for _ in range(1000)]
    b = bench.bucket_bound(calls)
    assert b["seconds_per_bucket"] == {"ModifyNetworkInterfaceAttribute": 20.0, "describe": 20.0, "CreateTags": 5.0}
    assert b["seconds"] == 20.0


def test_token_buckets_follow_ec2s_published_sizes():
    assert EC2_BUCKETS["ModifyNetworkInterfaceAttribute"] == (100, 5)
    assert EC2_BUCKETS["CreateSnapshots"] == (100, 5)
    assert EC2_BUCKETS["CreateTags"] == (100, 10)
    assert EC2_BUCKETS["describe"] == (100, 20)
    assert EC2_BUCKETS["mutating"] == (50, 5)
    assert ec2_bucket("DescribeSecurityGroups") == "describe"
    assert ec2_bucket("ModifyInstanceAttribute") == "mutating"
    assert ec2_bucket("CreateSnapshots") == "CreateSnapshots"


def test_an_empty_bucket_refuses_until_it_refills():
    b = TokenBucket(3, 0.0)
    assert [b.take() for _ in range(4)] == [True, True, True, False]
    b = TokenBucket(1, 1000.0)
    assert b.take()
    b.at -= 0.01  # 10 ms later at 1000 a second: full again
    assert b.take()


def test_an_invalid_run_is_named():
    r = {
        "cold": {
            "isolate": {"rust": {"error_count": 1, "errors": ["InvalidEvent: x"], "init_ms": {"median": 5}, "peak_rss_mib": {"median": 9}}}
        },
        "calls": [{"interfaces": 1, "status": "SUCCEEDED", "verdict": "partial"}],
        "burst": {"unfinished": 2},
        "release": {"per_function": {"notify": {"ready": False}}},
    }
    problems = bench.invalid(r)
    assert len(problems) == 4


def burst_run(last: float | None, buckets: float, floor: float | None) -> dict:
    burst = {"findings": 10, "contained": 10, "failed_executions": 0, "all_contained_s": last, "bound_containment": {"seconds": buckets}}
    return {"burst": burst, "burst_floor": None if floor is None else {"all_contained_s": floor}}


def test_the_burst_is_judged_against_what_it_cannot_beat():
    """A 10-finding burst stays within EC2's buckets' capacity (their bound is 0 s): the bound is
    then the harness's own time without them, not 0."""
    assert bench.burst_target(burst_run(7.1, 0.0, 6.0))["met"] is True
    assert bench.burst_target(burst_run(9.5, 0.0, 6.0))["met"] is False
    assert bench.burst_target(burst_run(50.0, 37.6, 6.0))["met"] is True, "the buckets' bound, when larger"
    assert bench.burst_target(burst_run(7.1, 0.0, None))["met"] is None, "not judged without the floor"
    measured = bench.burst_target(burst_run(7.1, 0.0, 6.0))["measured"]
    assert "buckets' bound 0.0 s, the harness alone 6.0 s" in measured, measured


def traced(op: str, branch: str, started: int, ended: int, ok: bool = True) -> str:
    # a text log line of src/aws/calls.rs, as the default subscriber writes it (with colours)
    return (
        f" \x1b[32mINFO\x1b[0m isolate_instance{{finding_id=f1 instance_id=i-0abc}}:invoke{{service=ec2 operation={op}}}: "
        f'aws call op="{op}" branch="{branch}" started={started} ended={ended} start_us=1 end_us=2 ok={str(ok).lower()}'
    )


def test_the_trace_is_read_from_text_and_json_lines():
    lines = [
        traced("DescribeInstances", "read", 0, 3),
        "INFO isolate_instance{finding_id=f1 instance_id=i-0abc}: isolated changed=true",
        (
            '{"level":"INFO","fields":{"message":"aws call","op":"CreateSecurityGroup","branch":"network","started":4,"ended":5,"start_us":1,"end_us":2,"ok":false},'
            '"spans":[{"name":"isolate_instance","instance_id":"i-0def"}]}'
        ),
    ]
    calls = bench.traced_calls(lines)
    assert [(c["op"], c["branch"], c["started"], c["ended"], c["ok"], c["instance_id"]) for c in calls] == [
        ("DescribeInstances", "read", 0, 3, True, "i-0abc"),
        ("CreateSecurityGroup", "network", 4, 5, False, "i-0def"),
    ]


def test_the_awaited_chain_follows_the_steps_own_order_and_ignores_the_branches_beside_it():
    lines = [
        # round 1: the instance and the groups' lookups, at once
        traced("DescribeInstances", "read", 0, 4),
        traced("DescribeSecurityGroups", "read", 1, 3),
        traced("DescribeSecurityGroups", "read", 2, 5),
        # the evidence branch: three calls one after another, beside the moves
        traced("DescribeInstanceAttribute", "evidence", 6, 7),
        traced("ModifyInstanceAttribute", "evidence", 8, 11),
        traced("ModifyInstanceAttribute", "evidence", 12, 19),
        # round 2: the groups created
        traced("CreateSecurityGroup", "network", 9, 13),
        traced("CreateSecurityGroup", "network", 10, 14),
        # round 3: their rules and each interface's move to transit, at once
        traced("RevokeSecurityGroupEgress", "network", 15, 20),
        traced("AuthorizeSecurityGroupIngress", "network", 16, 21),
        traced("ModifyNetworkInterfaceAttribute", "network/eni-1", 17, 22),
        traced("ModifyNetworkInterfaceAttribute", "network/eni-2", 18, 28),
        # round 4: each on to quarantine (the first before the second's transit move ended);
        # then the marker tags
        traced("ModifyNetworkInterfaceAttribute", "network/eni-1", 23, 24),
        traced("ModifyNetworkInterfaceAttribute", "network/eni-2", 29, 30),
        traced("CreateTags", "after", 31, 32),
    ]
    chain = bench.awaited_chain(bench.traced_calls(lines))
    assert [c["op"] for c in chain] == [
        "DescribeSecurityGroups",
        "CreateSecurityGroup",
        "ModifyNetworkInterfaceAttribute",
        "ModifyNetworkInterfaceAttribute",
    ]


def test_groups_made_while_the_instance_is_read_come_before_the_moves():
    lines = [
        # round 1: the instance read, and the groups created beside it (triage found none)
        traced("DescribeInstances", "read", 0, 3),
        traced("CreateSecurityGroup", "read/groups/vpc-1", 1, 4),
        traced("CreateSecurityGroup", "read/groups/vpc-1", 2, 5),
        # round 2: their rules (made beside the read, never after it)
        traced("RevokeSecurityGroupEgress", "read/groups/vpc-1", 6, 8),
        traced("AuthorizeSecurityGroupIngress", "read/groups/vpc-1", 7, 9),
        # rounds 3 and 4: the interface's two moves
        traced("ModifyNetworkInterfaceAttribute", "network/eni-1", 10, 11),
        traced("ModifyNetworkInterfaceAttribute", "network/eni-1", 12, 13),
    ]
    chain = bench.awaited_chain(bench.traced_calls(lines))
    assert [c["op"] for c in chain] == [
        "CreateSecurityGroup",
        "AuthorizeSecurityGroupIngress",
        "ModifyNetworkInterfaceAttribute",
        "ModifyNetworkInterfaceAttribute",
    ], [c["op"] for c in chain]
    # a branch of the read never waits for the read's other calls' branches beside it
    made = {"branch": "read/groups/vpc-1"}
    assert not bench.may_wait_for({"branch": "read/groups/vpc-2"}, made)
    assert bench.may_wait_for({"branch": "network/eni-1"}, made)
    assert not bench.may_wait_for({"branch": "read/groups/vpc-1"}, {"branch": "read"})
    assert bench.may_wait_for({"branch": "read"}, {"branch": "read"})
    assert bench.may_wait_for({"branch": "network"}, {"branch": "read"})


def test_no_successful_move_no_chain():
    lines = [traced("DescribeInstances", "read", 0, 1), traced("ModifyNetworkInterfaceAttribute", "network", 2, 3, ok=False)]
    assert bench.awaited_chain(bench.traced_calls(lines)) == []


def test_a_functions_calls_are_grouped_into_rounds_made_at_once():
    import burst_sim

    calls = [
        call("ec2:DescribeInstances", 0.0, 1.0),
        call("ec2:DescribeSecurityGroups", 0.1, 0.8),
        call("ec2:ModifyNetworkInterfaceAttribute", 1.1, 2.0),
        call("ec2:CreateTags", 1.2, 1.5),
        call("ec2:ModifyNetworkInterfaceAttribute", 2.1, 3.0),
    ]
    assert burst_sim.rounds_of(calls) == [
        ["ec2:DescribeInstances", "ec2:DescribeSecurityGroups"],
        ["ec2:ModifyNetworkInterfaceAttribute", "ec2:CreateTags"],
        ["ec2:ModifyNetworkInterfaceAttribute"],
    ]
    assert burst_sim.isolation_round(burst_sim.rounds_of(calls)) == 2


def test_one_server_answers_one_call_at_a_time():
    import burst_sim

    # triage: 1 call; isolate: 2 rounds of 1 call; snapshot: 1 call beside isolate. One server
    # answering each call in 1 s: triage ends at 1, then isolate and snapshot share the server.
    profile = {
        "triage": [["ec2:DescribeInstances"]],
        "isolate": [["ec2:DescribeInstances"], [burst_sim.MOVE]],
        "snapshot": [["ec2:CreateSnapshots"]],
    }
    r = burst_sim.simulate(profile, burst_sim.Model(service_s=1.0, copies=1), findings=1, seeds=1)
    assert r["all_isolated_s"] == 4.0  # 1 (triage) + 3 calls answered one after another
    assert r["calls"] == 4 and r["throttled"] == 0
    # Without a queue (AWS: 0.1 s a call), the rounds alone: 0.1 + 0.1 + 0.1.
    r = burst_sim.simulate(profile, burst_sim.Model(latency_s=0.1), findings=1, seeds=1)
    assert abs(r["all_isolated_s"] - 0.3) < 1e-9


def test_an_empty_bucket_throttles_and_the_retries_wait_for_it():
    import burst_sim

    # 150 findings whose isolate step makes one ModifyNetworkInterfaceAttribute: 100 pass from
    # the bucket at once, the rest wait for its refill (5 a second) through retries.
    profile = {"isolate": [[burst_sim.MOVE]]}
    r = burst_sim.simulate(profile, burst_sim.Model(latency_s=0.1), findings=150, seeds=3)
    assert r["throttled"] > 0
    assert r["isolated"] == 150
    # 50 beyond the capacity at 5 a second: at least 10 s.
    assert r["all_isolated_s"] >= 10.0


def test_the_harness_speed_is_fitted_back_from_a_measured_time():
    import dataclasses

    import burst_sim

    profile = {
        "triage": [["ec2:DescribeInstances"]],
        "isolate": [["ec2:DescribeInstances"], [burst_sim.MOVE]],
        "snapshot": [["ec2:CreateSnapshots"]],
    }
    model = burst_sim.Model(service_s=0.0, copies=2, invoke_s=0.05, token_buckets=False)
    measured = burst_sim.simulate(profile, dataclasses.replace(model, service_s=0.02), findings=10, seeds=1)["all_isolated_s"]
    assert abs(burst_sim.fit_service(profile, model, 10, measured) - 0.02) < 1e-4
