//! The case record's guarantees that no single step shows: a finding arriving during a release,
//! a release while an execution of the case may still act, a released finding sent again or
//! updated since, and a case table that cannot be reached.

mod common;

use common::{Fixture, access_key, inject, record_outcome, release_request};
use ec2_quarantine::domain::finding::{FindingEvent, Scope, parse_event};
use ec2_quarantine::steps::deregister::deregister;
use ec2_quarantine::steps::isolate::isolate;
use ec2_quarantine::steps::release::release;
use ec2_quarantine::steps::role::contain_role;
use ec2_quarantine::steps::snapshot::snapshot;
use ec2_quarantine::steps::triage::{Decision, TriageReport, triage};
use ec2_quarantine::{Ctx, ErrorName};

const BACKDOOR: &str = "instance-backdoor.json";

/// One execution as the state machine runs it: triage, then the four steps with triage's case.
async fn execution(ctx: &Ctx, event: &FindingEvent) -> TriageReport {
    let t = triage(ctx, event).await.unwrap();
    assert_eq!(t.decision, Decision::Contain, "{t:?}");
    // Each step gets the plan's entry for the instance, as the state machine's Map hands it on.
    let planned = t.targets[0].planned();
    let (i, d, s, r) = futures::join!(
        isolate(ctx, planned.clone()),
        deregister(ctx, planned.clone()),
        snapshot(ctx, planned.clone()),
        contain_role(ctx, planned)
    );
    for (name, ok) in [
        ("isolate", i.is_ok()),
        ("deregister", d.is_ok()),
        ("snapshot", s.is_ok()),
        ("role", r.is_ok()),
    ] {
        assert!(ok, "{name} failed");
    }
    t
}

fn scope(f: &Fixture) -> Scope {
    Scope {
        account_id: f.account.clone(),
        region: common::REGION.into(),
        partition: "aws".into(),
    }
}

/// The same finding with another id (another finding for the same instance).
fn another_finding(f: &Fixture, id: &str) -> FindingEvent {
    let mut e = f.event_json(BACKDOOR);
    e["detail"]["id"] = id.into();
    parse_event(e).unwrap()
}

#[tokio::test]
#[ignore = "needs the local AWS emulator: helper_scripts/test.sh starts it"]
async fn a_finding_arriving_during_a_release_waits_for_it() {
    let f = Fixture::new().await;
    execution(&f.ctx, &f.event(BACKDOOR)).await;
    let case = f.case().await;
    let store = f.ctx.cases();
    assert!(store.begin_release(&case, &scope(&f)).await.unwrap());

    // While the case is held for its release, a new finding does not join it: triage fails
    // with a transient error, which the state machine retries.
    let second = another_finding(&f, "c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0");
    let err = triage(&f.ctx, &second).await.unwrap_err();
    assert_eq!(err.name(), ErrorName::TransientAwsError, "{err}");
    assert!(err.to_string().contains("being released"), "{err}");
    assert_eq!(f.case().await.findings.len(), 1, "nothing joined");

    // A release that did not finish lets findings join again.
    store.abort_release(&case, &scope(&f)).await.unwrap();
    let t = triage(&f.ctx, &second).await.unwrap();
    assert_eq!(
        t.targets[0].case.clone().unwrap().case_id,
        case.case_id,
        "joins the open case"
    );
}

#[tokio::test]
#[ignore = "needs the local AWS emulator: helper_scripts/test.sh starts it"]
async fn release_waits_while_an_execution_of_the_case_may_still_act() {
    let f = Fixture::new().await;
    execution(&f.ctx, &f.event(BACKDOOR)).await;
    let before_groups = f.case().await.previous.len();

    // A second finding joined the case, and its steps have not run yet.
    let second = another_finding(&f, "d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1");
    let t = triage(&f.ctx, &second).await.unwrap();
    let err = release(&f.ctx, &release_request(&f)).await.unwrap_err();
    assert_eq!(err.name(), ErrorName::TransientAwsError, "{err}");
    assert!(err.to_string().contains("may still be acting"), "{err}");
    let contained = f.interface_groups().await;
    assert!(f.case_in(&f.ctx).await.is_some(), "the case stays open");

    // Its steps run; then the release goes through.
    let second = t.targets[0].planned();
    isolate(&f.ctx, second.clone()).await.unwrap();
    deregister(&f.ctx, second.clone()).await.unwrap();
    snapshot(&f.ctx, second.clone()).await.unwrap();
    contain_role(&f.ctx, second).await.unwrap();
    assert_eq!(f.interface_groups().await, contained);
    assert_eq!(
        f.case().await.previous.len(),
        before_groups,
        "the second execution recorded nothing over the first's record"
    );
    let released = release(&f.ctx, &release_request(&f)).await.unwrap();
    assert_eq!(released.status(), "done", "{released:?}");
    record_outcome("contained");
}

#[tokio::test]
#[ignore = "needs the local AWS emulator: helper_scripts/test.sh starts it"]
async fn a_released_findings_copy_is_only_reported_and_its_update_contains_again() {
    let f = Fixture::new().await;
    let event = f.event(BACKDOOR);
    let first = execution(&f.ctx, &event).await.targets[0]
        .case
        .clone()
        .unwrap()
        .case_id;
    let released = release(&f.ctx, &release_request(&f)).await.unwrap();
    assert_eq!(released.status(), "done", "{released:?}");

    // EventBridge delivers at least once: the same copy again contains nothing.
    let again = triage(&f.ctx, &event).await.unwrap();
    assert_eq!(again.decision, Decision::NotifyOnly, "{again:?}");
    assert!(again.reason.contains("released"), "{}", again.reason);
    assert!(again.reason.contains(&first), "{}", again.reason);

    // GuardDuty updates the same finding when the activity recurs: that contains again, in a
    // new case.
    let mut recurred = f.event_json(BACKDOOR);
    recurred["detail"]["updatedAt"] = "2030-01-01T00:00:00.000Z".into();
    recurred["detail"]["service"]["count"] = 7.into();
    let recurred = parse_event(recurred).unwrap();
    let t = execution(&f.ctx, &recurred).await;
    let second = t.targets[0].case.clone().unwrap().case_id;
    assert_ne!(second, first, "a new case");
    assert_eq!(f.case().await.case_id, second);
    record_outcome("contained");
}

#[tokio::test]
#[ignore = "needs the local AWS emulator: helper_scripts/test.sh starts it"]
async fn an_unreachable_case_table_never_holds_containment_back() {
    let f = Fixture::new().await;
    let key = access_key(&f.config).await;
    for action in [
        "dynamodb:GetItem",
        "dynamodb:PutItem",
        "dynamodb:UpdateItem",
        "dynamodb:Query",
    ] {
        inject(&key, action, "throttle", None);
    }
    let event = f.event(BACKDOOR);
    let t = triage(&f.ctx, &event).await.unwrap();
    assert_eq!(t.decision, Decision::Contain, "{t:?}");
    assert!(t.targets[0].case.is_none());
    assert!(t.reason.contains("without a case record"), "{}", t.reason);

    let isolated = isolate(&f.ctx, &event).await.unwrap();
    let report = isolated.report().expect("isolated");
    let quarantine = &report.quarantine_groups[0].group_id;
    for groups in f.interface_groups().await.values() {
        assert_eq!(
            groups,
            std::slice::from_ref(quarantine),
            "isolated all the same"
        );
    }
    assert!(
        report.warnings.iter().any(|w| w.contains("case")),
        "{:?}",
        report.warnings
    );
    let snapshots = snapshot(&f.ctx, &event).await.unwrap();
    assert_eq!(snapshots.status(), "done", "{snapshots:?}");
    assert_eq!(f.snapshots().await.len(), 2, "the evidence is taken");

    // The role is contained; the step then fails, transiently, for its missing record, so that
    // the state machine's retry writes it.
    let role = contain_role(&f.ctx, &event).await.unwrap_err();
    assert_eq!(role.name(), ErrorName::TransientAwsError, "{role}");
    assert!(role.to_string().contains("record of the role"), "{role}");
    assert_eq!(
        f.deny_all_attachments().await,
        1,
        "DenyAll attached all the same"
    );
    record_outcome("contained");
}
