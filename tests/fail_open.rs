//! Isolation never fails open. Each interface passes through the tool's transit group, which
//! allows all traffic in and out; whatever fails, the step must not leave one there. For every
//! call the isolate step makes, every fault the proxy can inject (once, always, and, for the
//! interface moves, on every call after the first and after the second: the move to quarantine
//! and the move back), and a function cut short by its deadline or killed half-way: at the end no
//! interface is in the transit group alone. Each case found open is counted in the proxy's
//! summary as `fail_open`, which the test command requires to be 0.

mod common;

use std::time::Duration;

use common::{Fixture, access_key, direct_ec2, impatient_ctx, inject_rule, record_outcome};
use ec2_quarantine::steps::isolate::{TRANSIT_GROUP_NAME, isolate, isolate_until};
use ec2_quarantine::{Error, ErrorName};
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::time::Instant;

const ISOLATE_CALLS: &[&str] = &[
    "ec2:DescribeInstances",
    "ec2:DescribeNetworkInterfaces",
    "ec2:DescribeSecurityGroups",
    "ec2:CreateSecurityGroup",
    "ec2:RevokeSecurityGroupEgress",
    "ec2:AuthorizeSecurityGroupIngress",
    "ec2:AuthorizeSecurityGroupEgress",
    "ec2:CreateTags",
    "ec2:DescribeInstanceAttribute",
    "ec2:ModifyInstanceAttribute",
    "ec2:ModifyNetworkInterfaceAttribute",
];

const MOVE: &str = "ec2:ModifyNetworkInterfaceAttribute";
const EXFILTRATION: &str = "credential-exfiltration.json";

/// Every fault the proxy injects: throttling, a 5xx, a denial, a request delayed past the
/// client's timeout (dropped when the client has gone), an answer delayed past it (the change
/// made), and an error code of EC2's for the group ("not found": eventual consistency).
fn faults() -> Vec<Value> {
    vec![
        json!({"fault": "throttle"}),
        json!({"fault": "unavailable"}),
        json!({"fault": "denied"}),
        json!({"fault": "delay", "seconds": 4}),
        json!({"fault": "slow_answer", "seconds": 4}),
        json!({"fault": "error", "code": "InvalidGroup.NotFound", "status": 400}),
    ]
}

/// The interfaces left in the transit group alone, read past the proxy.
/// One test of this file at a time. Two of them measure time against a function's deadline
/// (a step that gives up waiting, a step killed after 2 s); run beside the sweep over every
/// call, which keeps the emulator busy, their reads waited seconds in its queue on a 2-core
/// machine and CI failed them on timing alone.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn left_in_transit(f: &Fixture) -> Vec<String> {
    let ec2 = direct_ec2(&f.config);
    let transit: Vec<String> = ec2
        .describe_security_groups()
        .filters(common::filter("vpc-id", &f.vpc_id))
        .filters(common::filter("group-name", TRANSIT_GROUP_NAME))
        .send()
        .await
        .unwrap()
        .security_groups()
        .iter()
        .filter_map(|g| g.group_id().map(str::to_owned))
        .collect();
    let out = ec2
        .describe_network_interfaces()
        .set_network_interface_ids(Some(f.interfaces.clone()))
        .send()
        .await
        .unwrap();
    out.network_interfaces()
        .iter()
        .filter(|n| {
            matches!(n.groups(), [only] if only.group_id().is_some_and(|g| transit.iter().any(|t| t == g)))
        })
        .filter_map(|n| n.network_interface_id().map(str::to_owned))
        .collect()
}

/// The errors the isolate task's Retry lists (statemachine/containment.asl.json).
fn retried_by_the_state_machine(err: &Error) -> bool {
    matches!(
        err.name(),
        ErrorName::TransientAwsError | ErrorName::IsolationFailedOpen
    )
}

/// One case: the rule, then the isolate step as the state machine runs it (each attempt one
/// Lambda invocation with `budget` to live, retried up to 5 times on the errors its Retry
/// lists), and what was left open at the end of the execution. Returns a line describing a
/// fail-open (or a step that said "isolated" of an interface that is not), if there was one.
async fn case(rule: Value, budget: Duration) -> Option<String> {
    let f = Fixture::new().await;
    let key = access_key(&f.config).await;
    let mut rule = rule;
    rule["access_key"] = key.into();
    inject_rule(rule.clone());
    let ctx = impatient_ctx(&f.config);
    let mut result = Err(Error::Misconfigured("not run".into()));
    for _ in 0..6 {
        let deadline = Instant::now() + budget;
        result = isolate_until(&ctx, &f.event(EXFILTRATION), Some(deadline)).await;
        match &result {
            Err(err) if retried_by_the_state_machine(err) => continue,
            _ => break,
        }
    }
    // Requests still held by the proxy land (or are dropped) before the state is read.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let open = left_in_transit(&f).await;
    let said = match &result {
        Ok(o) => format!("step said {}", o.status()),
        Err(e) => format!("step said {}: {e}", e.name()),
    };
    if let Ok(outcome) = &result
        && let Some(report) = outcome.report()
    {
        let quarantine = &report.quarantine_groups[0].group_id;
        let direct = direct_ec2(&f.config);
        let out = direct
            .describe_network_interfaces()
            .set_network_interface_ids(Some(f.interfaces.clone()))
            .send()
            .await
            .unwrap();
        for n in out.network_interfaces() {
            let groups: Vec<&str> = n.groups().iter().filter_map(|g| g.group_id()).collect();
            if groups != [quarantine.as_str()] {
                record_outcome("fail_open");
                return Some(format!(
                    "{rule}: the step said isolated, but {:?} has {groups:?}",
                    n.network_interface_id()
                ));
            }
        }
    }
    if open.is_empty() {
        record_outcome("fail_closed");
        return None;
    }
    record_outcome("fail_open");
    Some(format!(
        "{rule}: {open:?} left in the transit group; {said}"
    ))
}

#[tokio::test]
#[ignore = "needs the local AWS emulator: helper_scripts/test.sh starts it"]
async fn no_fault_at_any_call_leaves_an_interface_in_the_transit_group() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut rules = Vec::new();
    for action in ISOLATE_CALLS {
        for fault in faults() {
            let mut once = fault.clone();
            once["action"] = (*action).into();
            once["times"] = 1.into();
            let mut always = fault.clone();
            always["action"] = (*action).into();
            rules.push(once);
            rules.push(always);
            if *action == MOVE {
                // The transit moves pass; then the moves fail for a while (once, three times):
                // the move to quarantine, the read of the interface, the move back.
                for (after, times) in [(1, 1), (1, 3), (2, 1), (2, 3)] {
                    let mut later = fault.clone();
                    later["action"] = MOVE.into();
                    later["after"] = after.into();
                    later["times"] = times.into();
                    rules.push(later);
                }
            }
        }
    }
    let found: Vec<String> = futures::stream::iter(
        rules
            .into_iter()
            .map(|rule| case(rule, Duration::from_secs(25))),
    )
    .buffer_unordered(24)
    .filter_map(|open| async move { open })
    .collect()
    .await;
    assert!(
        found.is_empty(),
        "isolation failed open:\n{}",
        found.join("\n")
    );
}

#[tokio::test]
#[ignore = "needs the local AWS emulator: helper_scripts/test.sh starts it"]
async fn a_function_running_out_of_time_after_the_transit_move_moves_the_interface_back() {
    let _one = ONE_AT_A_TIME.lock().await;
    // The move to quarantine answers after 30 s; the function has 25: the step stops waiting
    // with time left to move the interface back. (The transit group is used only with 12 s
    // left; 25 leaves 13 s for the reads before the moves: on a 2-core machine, with this
    // binary's other tests loading the emulator, 5 s were not always enough, and a step with
    // less than 12 s left rightly moves straight to quarantine, which this test is not about.)
    const BUDGET: Duration = Duration::from_secs(25);
    for fault in ["slow_answer", "delay"] {
        let f = Fixture::new().await;
        let key = access_key(&f.config).await;
        let eni = f.interfaces[0].clone();
        inject_rule(
            json!({"access_key": key, "action": MOVE, "fault": fault, "seconds": 30,
                           "after": 1, "times": 1, "params": {"NetworkInterfaceId": eni}}),
        );
        // Production's client: no per-attempt timeout; the function's deadline is the bound.
        let ctx = ec2_quarantine::Ctx::from_config(f.config.clone());
        let started = Instant::now();
        let result = isolate_until(&ctx, &f.event(EXFILTRATION), Some(started + BUDGET)).await;
        assert!(
            started.elapsed() < BUDGET,
            "{fault}: the step returned before the function's deadline"
        );
        match (fault, &result) {
            // The move was applied, only its answer was late: EC2 says it is in quarantine.
            ("slow_answer", Ok(outcome)) => assert_eq!(outcome.status(), "done"),
            // The move never reached EC2: moved back, and the state machine retries the step.
            ("delay", Err(err)) => assert!(
                err.to_string().contains(&eni) && err.name().is_retryable(),
                "{err}"
            ),
            _ => panic!("{fault}: {result:?}"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(left_in_transit(&f).await, Vec::<String>::new(), "{fault}");
        record_outcome("fail_closed");
    }
}

#[tokio::test]
#[ignore = "needs the local AWS emulator: helper_scripts/test.sh starts it"]
async fn a_function_killed_after_the_transit_move_is_finished_by_the_retry() {
    let _one = ONE_AT_A_TIME.lock().await;
    let f = Fixture::new().await;
    let key = access_key(&f.config).await;
    // Every move after the first waits 30 s: the invocation is killed while it waits, with the
    // first interface in the transit group (Lambda's timeout, which no code survives).
    inject_rule(
        json!({"access_key": key, "action": MOVE, "fault": "delay", "seconds": 30, "after": 1, "times": 1}),
    );
    let ctx = impatient_ctx(&f.config);
    let killed = tokio::time::timeout(
        Duration::from_secs(2),
        isolate(&ctx, &f.event(EXFILTRATION)),
    )
    .await;
    assert!(killed.is_err(), "the first invocation was cut short");
    // The state machine retries the step (Lambda.Unknown): the retry finishes the move.
    let retried = isolate(&ctx, &f.event(EXFILTRATION)).await;
    assert!(retried.is_ok(), "{retried:?}");
    assert_eq!(left_in_transit(&f).await, Vec::<String>::new());
    record_outcome("fail_closed");
}

#[tokio::test]
#[ignore = "needs the local AWS emulator: helper_scripts/test.sh starts it"]
async fn an_interface_that_cannot_leave_the_transit_group_is_reported_exposed() {
    let _one = ONE_AT_A_TIME.lock().await;
    let f = Fixture::new().await;
    let key = access_key(&f.config).await;
    // Transit moves pass; every later move of one interface is denied: it cannot go on to
    // quarantine, nor back. The step must say so, by name, in plain words.
    let eni = f.interfaces[0].clone();
    inject_rule(
        json!({"access_key": key, "action": MOVE, "fault": "denied", "after": 1,
                       "params": {"NetworkInterfaceId": eni}}),
    );
    let ctx = impatient_ctx(&f.config);
    let err: Error = isolate(&ctx, &f.event(EXFILTRATION)).await.unwrap_err();
    assert_eq!(err.name(), ErrorName::IsolationFailedOpen, "{err}");
    let text = err.to_string();
    assert!(text.starts_with("EXPOSED: "), "{text}");
    assert!(text.contains(&eni), "{text}");
    // The fixture's own truth: that interface really is in the transit group.
    assert_eq!(left_in_transit(&f).await, vec![eni]);
    record_outcome("honest_failure");
}
