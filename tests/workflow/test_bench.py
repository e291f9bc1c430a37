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
