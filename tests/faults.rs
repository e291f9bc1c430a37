//! Injected faults, through the test suite's fault proxy (tests/tools/fault_proxy.py), for every
//! AWS call the containment steps make: a transient fault is retried and the step still
//! contains; a permanent one gives a named outcome, the other steps still do their work, and the
//! notification says which action failed and why, with a failing verdict.

mod common;

use common::{
    Fixture, access_key, impatient_ctx, inject, on_a_big_stack, record_outcome, retrying_ctx,
};
use ec2_quarantine::steps::isolate::isolate;
use ec2_quarantine::steps::notify::{NotifyInput, render};
use ec2_quarantine::steps::role::contain_role;
use ec2_quarantine::steps::snapshot::snapshot;
use ec2_quarantine::{Ctx, Error, ErrorName, Outcome};
use futures::future::join_all;

/// How many cases run at once, across the tests of this file. The emulator answers one call at
/// a time (about 17 ms each); with every case at once (50 fixtures), a call could wait in its
/// queue past the functions' own 2 s timeout for the case table, which no AWS table would make
/// it do, and a test would fail on the emulator's queue, not on the fault it injects.
static AT_ONCE: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(6);
use serde_json::{Value, json};

const EXFILTRATION: &str = "credential-exfiltration.json";
const BACKDOOR: &str = "instance-backdoor.json";

#[derive(Debug, Clone, Copy, PartialEq)]
enum Step {
    Isolate,
    Snapshot,
    Role,
}

/// What a step ends with under a permanent fault.
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// The step fails with this name (nothing or part of it done; the message says which).
    Fails(ErrorName),
    /// The step still contains: the failing call only fed a best-effort part of its report.
    StillDone,
}

/// Runs one step; the result as the state machine would hand it to notify.
async fn run(step: Step, ctx: &Ctx, f: &Fixture, event: &str) -> Result<Value, Error> {
    let e = f.event(event);
    Ok(match step {
        Step::Isolate => serde_json::to_value(isolate(ctx, &e).await?).unwrap(),
        Step::Snapshot => serde_json::to_value(snapshot(ctx, &e).await?).unwrap(),
        Step::Role => serde_json::to_value(contain_role(ctx, &e).await?).unwrap(),
    })
}

fn caught(err: &Error) -> Value {
    json!({
        "Error": err.name().as_str(),
        "Cause": json!({"errorType": err.name().as_str(), "errorMessage": err.to_string()}).to_string(),
    })
}

/// A transient fault on `action` once: the SDK retries it and the step contains.
async fn transient(step: Step, action: &'static str, fault: &'static str, event: &'static str) {
    let _turn = AT_ONCE
        .acquire()
        .await
        .expect("the semaphore is never closed");
    let f = Fixture::new().await;
    let key = access_key(&f.config).await;
    inject(&key, action, fault, Some(1));
    let ctx = if fault == "delay" {
        impatient_ctx(&f.config)
    } else {
        retrying_ctx(&f.config)
    };
    let out = run(step, &ctx, &f, event)
        .await
        .unwrap_or_else(|e| panic!("{step:?} with one {fault} on {action}: {e}"));
    assert_eq!(
        out["status"], "done",
        "{step:?} with one {fault} on {action}: {out}"
    );
    record_outcome("contained");
}

/// A permanent denial of `action`: the named outcome, the other steps done, an honest report.
async fn permanent(step: Step, action: &'static str, event: &'static str, expect: Expect) {
    let _turn = AT_ONCE
        .acquire()
        .await
        .expect("the semaphore is never closed");
    let f = Fixture::new().await;
    let key = access_key(&f.config).await;
    inject(&key, action, "denied", None);
    let ctx = retrying_ctx(&f.config);
    let mut results = serde_json::Map::new();
    for s in [Step::Isolate, Step::Snapshot, Step::Role] {
        let name = match s {
            Step::Isolate => "isolate",
            Step::Snapshot => "snapshot",
            Step::Role => "role",
        };
        let result = run(s, &ctx, &f, event).await;
        let value = match (&result, s == step) {
            (Ok(v), true) => {
                assert!(
                    matches!(expect, Expect::StillDone),
                    "{step:?} denied {action}: expected a failure, got {v}"
                );
                assert_eq!(v["status"], "done", "{v}");
                v.clone()
            }
            (Err(e), true) => {
                match expect {
                    Expect::Fails(name) => {
                        assert_eq!(e.name(), name, "{step:?} denied {action}: {e}")
                    }
                    Expect::StillDone => {
                        panic!("{step:?} denied {action}: expected it to still contain, got {e}")
                    }
                }
                assert!(
                    e.to_string().contains(action),
                    "the error names the action: {e}"
                );
                caught(e)
            }
            (Ok(v), false) => v.clone(),
            (Err(e), false) => caught(e),
        };
        results.insert(name.into(), value);
    }
    if let Expect::Fails(_) = expect {
        let mut input = results.clone();
        input.insert("event".into(), f.event_json(event));
        let input: NotifyInput = serde_json::from_value(Value::Object(input)).unwrap();
        let message = render(&input);
        assert!(
            message.verdict.is_failure(),
            "{action}: {:?}",
            message.verdict
        );
        assert!(message.body.contains("[FAILED]"), "{}", message.body);
        assert!(
            message.body.contains(action),
            "the notification names {action}:\n{}",
            message.body
        );
        assert!(!message.subject.starts_with("[CONTAINED]"));
        // The steps that do not make the denied call did their work.
        for other in [Step::Isolate, Step::Snapshot, Step::Role] {
            if other != step && !calls(other).contains(&action) {
                let v = &results[step_name(other)];
                assert_eq!(v["status"], "done", "{action} denied: {other:?} gave {v}");
            }
        }
        record_outcome("honest_failure");
    } else {
        record_outcome("contained");
    }
}

fn calls(step: Step) -> &'static [&'static str] {
    match step {
        Step::Isolate => ISOLATE_CALLS,
        Step::Snapshot => SNAPSHOT_CALLS,
        Step::Role => ROLE_CALLS,
    }
}

fn step_name(step: Step) -> &'static str {
    match step {
        Step::Isolate => "isolate",
        Step::Snapshot => "snapshot",
        Step::Role => "role",
    }
}

const ISOLATE_CALLS: &[&str] = &[
    "ec2:DescribeInstances",
    "ec2:DescribeSecurityGroups",
    "ec2:CreateSecurityGroup",
    "ec2:RevokeSecurityGroupEgress",
    "ec2:AuthorizeSecurityGroupIngress",
    "ec2:AuthorizeSecurityGroupEgress",
    "ec2:CreateTags",
    "ec2:ModifyNetworkInterfaceAttribute",
    "ec2:ModifyInstanceAttribute",
];
const SNAPSHOT_CALLS: &[&str] = &[
    "ec2:DescribeInstances",
    "ec2:DescribeSnapshots",
    "ec2:CreateSnapshots",
    "ec2:LockSnapshot",
    "ec2:CreateTags",
];
const ROLE_CALLS: &[&str] = &[
    "iam:GetRole",
    "iam:GetPolicy",
    "iam:CreatePolicy",
    "iam:ListAttachedRolePolicies",
    "iam:AttachRolePolicy",
    "iam:GetRolePolicy",
    "iam:PutRolePolicy",
    "iam:ListInstanceProfilesForRole",
    "ec2:DescribeIamInstanceProfileAssociations",
    "iam:GetInstanceProfile",
    "iam:CreateInstanceProfile",
    "ec2:CreateTags",
    "ec2:ReplaceIamInstanceProfileAssociation",
];

#[test]
#[ignore = "needs the local AWS emulator: helper_scripts/test.sh starts it"]
fn transient_faults_on_every_call_are_retried_and_contained() {
    on_a_big_stack(|| async {
        let mut cases = Vec::new();
        for (step, calls) in [
            (Step::Isolate, ISOLATE_CALLS),
            (Step::Snapshot, SNAPSHOT_CALLS),
            (Step::Role, ROLE_CALLS),
        ] {
            for action in calls {
                for fault in ["throttle", "unavailable"] {
                    cases.push(transient(step, action, fault, EXFILTRATION));
                }
            }
        }
        // The Instance finding's path to the role: through the instance profile.
        cases.push(transient(
            Step::Role,
            "iam:GetInstanceProfile",
            "throttle",
            BACKDOOR,
        ));
        join_all(cases).await;
    });
}

#[test]
#[ignore = "needs the local AWS emulator: helper_scripts/test.sh starts it"]
fn a_call_slower_than_the_client_timeout_is_retried() {
    on_a_big_stack(|| async {
        transient(
            Step::Isolate,
            "ec2:ModifyNetworkInterfaceAttribute",
            "delay",
            EXFILTRATION,
        )
        .await;
    });
}

#[test]
#[ignore = "needs the local AWS emulator: helper_scripts/test.sh starts it"]
fn a_denied_isolation_call_is_named_and_reported() {
    on_a_big_stack(|| async {
        use Expect::*;
        let cases = [
            ("ec2:DescribeInstances", Fails(ErrorName::AccessDenied)),
            ("ec2:DescribeSecurityGroups", Fails(ErrorName::AccessDenied)),
            ("ec2:CreateSecurityGroup", Fails(ErrorName::AccessDenied)),
            (
                "ec2:RevokeSecurityGroupEgress",
                Fails(ErrorName::AccessDenied),
            ),
            // The record is for release only: the instance is contained, and the report says the
            // record is missing.
            ("ec2:CreateTags", StillDone),
            (
                "ec2:ModifyNetworkInterfaceAttribute",
                Fails(ErrorName::ContainmentIncomplete),
            ),
            (
                "ec2:ModifyInstanceAttribute",
                Fails(ErrorName::ContainmentIncomplete),
            ),
        ];
        join_all(
            cases.map(|(action, expect)| permanent(Step::Isolate, action, EXFILTRATION, expect)),
        )
        .await;
    });
}

#[test]
#[ignore = "needs the local AWS emulator: helper_scripts/test.sh starts it"]
fn a_denied_snapshot_call_is_named_and_reported() {
    on_a_big_stack(|| async {
        use Expect::*;
        let cases = [
            // Snapshots are looked up by their tag only when the case says an earlier run called
            // CreateSnapshots (a retry after a crash): a first run does not need the lookup.
            ("ec2:DescribeSnapshots", StillDone),
            ("ec2:CreateSnapshots", Fails(ErrorName::AccessDenied)),
            // A lock refused leaves the evidence taken, unlocked and said (src/steps/snapshot.rs).
            ("ec2:LockSnapshot", StillDone),
        ];
        join_all(
            cases.map(|(action, expect)| permanent(Step::Snapshot, action, EXFILTRATION, expect)),
        )
        .await;
    });
}

#[test]
#[ignore = "needs the local AWS emulator: helper_scripts/test.sh starts it"]
fn a_denied_role_call_is_named_and_reported() {
    on_a_big_stack(|| async {
        use Expect::*;
        let cases = [
            ("iam:GetRole", Fails(ErrorName::AccessDenied)),
            ("iam:GetPolicy", Fails(ErrorName::ContainmentIncomplete)),
            ("iam:CreatePolicy", Fails(ErrorName::ContainmentIncomplete)),
            (
                "iam:ListAttachedRolePolicies",
                Fails(ErrorName::ContainmentIncomplete),
            ),
            (
                "iam:AttachRolePolicy",
                Fails(ErrorName::ContainmentIncomplete),
            ),
            ("iam:GetRolePolicy", Fails(ErrorName::ContainmentIncomplete)),
            ("iam:PutRolePolicy", Fails(ErrorName::ContainmentIncomplete)),
            (
                "iam:CreateInstanceProfile",
                Fails(ErrorName::ContainmentIncomplete),
            ),
            (
                "ec2:ReplaceIamInstanceProfileAssociation",
                Fails(ErrorName::ContainmentIncomplete),
            ),
            (
                "ec2:DescribeIamInstanceProfileAssociations",
                Fails(ErrorName::ContainmentIncomplete),
            ),
            // Only the count of other instances using the role depends on this: reported, not fatal.
            ("iam:ListInstanceProfilesForRole", StillDone),
        ];
        join_all(cases.map(|(action, expect)| permanent(Step::Role, action, EXFILTRATION, expect)))
            .await;
    });
}

#[test]
#[ignore = "needs the local AWS emulator: helper_scripts/test.sh starts it"]
fn a_denied_instance_profile_lookup_is_named() {
    on_a_big_stack(|| async {
        permanent(
            Step::Role,
            "iam:GetInstanceProfile",
            BACKDOOR,
            Expect::Fails(ErrorName::AccessDenied),
        )
        .await;
    });
}

#[test]
#[ignore = "needs the local AWS emulator: helper_scripts/test.sh starts it"]
fn a_persistent_5xx_is_named_retryable_for_the_state_machine() {
    on_a_big_stack(|| async {
        let f = Fixture::new().await;
        let key = access_key(&f.config).await;
        inject(&key, "ec2:CreateSnapshots", "unavailable", None);
        let err = snapshot(&retrying_ctx(&f.config), &f.event(EXFILTRATION))
            .await
            .unwrap_err();
        assert_eq!(err.name(), ErrorName::TransientAwsError, "{err}");
        assert!(f.snapshots().await.is_empty());
        record_outcome("honest_failure");
    });
}

#[test]
#[ignore = "needs the local AWS emulator: helper_scripts/test.sh starts it"]
fn when_a_label_is_denied_the_snapshots_are_still_reported() {
    on_a_big_stack(|| async {
        let f = Fixture::new().await;
        let key = access_key(&f.config).await;
        // CreateTags after CreateSnapshots labels the device: denied, the snapshots stand.
        inject(&key, "ec2:CreateTags", "denied", None);
        match snapshot(&retrying_ctx(&f.config), &f.event(EXFILTRATION))
            .await
            .unwrap()
        {
            Outcome::Done(r) => assert_eq!(r.snapshots.len(), 2),
            other => panic!("{other:?}"),
        }
        record_outcome("contained");
    });
}
