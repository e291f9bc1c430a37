//! Races and repeats: two findings for one instance at once, two executions of one finding at
//! the same instant, and every step retried after it failed half-way, end with one case, one
//! quarantine group per VPC, one snapshot set per case, one inline deny, and reports that agree
//! with the emulator's state.

mod common;

use std::collections::BTreeSet;

use common::{
    Fixture, access_key, inject, inject_error, inject_error_times, proxy_log, record_outcome,
    retrying_ctx,
};
use ec2_quarantine::steps::isolate::{InterfaceStatus, QUARANTINE_GROUP_NAME, isolate};
use ec2_quarantine::steps::role::{Change, REVOKE_SESSIONS_POLICY_NAME, contain_role};
use ec2_quarantine::steps::snapshot::snapshot;
use ec2_quarantine::steps::triage::triage;
use ec2_quarantine::{ErrorName, Outcome, aws::tags};

const EXFILTRATION: &str = "credential-exfiltration.json";
const BACKDOOR: &str = "instance-backdoor.json";

#[tokio::test]
#[ignore = "needs the local AWS emulator: helper_scripts/test.sh starts it"]
async fn two_findings_for_one_instance_at_once() {
    let f = Fixture::new().await;
    let before = f.interface_groups().await;
    let (a, b) = (f.event(EXFILTRATION), f.event(BACKDOOR));
    // With the SDK's retries, as deployed: the emulator itself sometimes answers 500 when two
    // requests touch the same data at once, a transient error the SDK retries.
    let ctx = retrying_ctx(&f.config);

    let (ia, ib) = tokio::join!(isolate(&ctx, &a), isolate(&ctx, &b));
    let (ia, ib) = (ia.unwrap(), ib.unwrap());
    let groups = f.security_groups_named(QUARANTINE_GROUP_NAME).await;
    assert_eq!(groups.len(), 1, "one quarantine group, whoever created it");
    let qsg = groups[0].group_id().unwrap().to_owned();
    assert!(groups[0].ip_permissions_egress().is_empty());
    for r in [ia.report().unwrap(), ib.report().unwrap()] {
        assert_eq!(
            r.quarantine_groups[0].group_id, qsg,
            "both reports name the same group"
        );
        for i in &r.interfaces {
            let mut previous = i.previous_groups.clone();
            previous.sort();
            assert_eq!(
                previous, before[&i.interface_id],
                "the groups from before, not the quarantine group"
            );
        }
    }
    for groups in f.interface_groups().await.values() {
        assert_eq!(groups, &vec![qsg.clone()]);
    }
    let case = f.case().await;
    let mut seen: Vec<&str> = case
        .findings
        .iter()
        .map(|x| x.finding_id.as_str())
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            "a6c7d3f1e2b94c8d9e0f1a2b3c4d5e6f",
            "b8e9f0a1b2c34d5e6f7a8b9c0d1e2f3a"
        ],
        "one case, which both findings joined"
    );

    // Snapshots belong to the case: the step is claimed in it before anything is taken, so
    // the two findings take one set between them, and a later run takes none.
    let (sa, sb) = tokio::join!(snapshot(&ctx, &a), snapshot(&ctx, &b));
    let (sa, sb) = (sa.unwrap(), sb.unwrap());
    let snaps = f.snapshots().await;
    assert_eq!(snaps.len(), 2, "one set of two");
    let tagged: BTreeSet<&str> = snaps
        .iter()
        .filter(|s| tags::find(s.tags(), tags::CASE) == Some(case.case_id.as_str()))
        .filter_map(|s| s.snapshot_id())
        .collect();
    assert_eq!(tagged.len(), 2, "the set names the case");
    let statuses: BTreeSet<&str> = [sa.status(), sb.status()].into_iter().collect();
    assert_eq!(statuses, BTreeSet::from(["already_done", "done"]));
    let later = snapshot(&ctx, &a).await.unwrap();
    assert_eq!(later.status(), "already_done");
    let reported: BTreeSet<&str> = later
        .report()
        .unwrap()
        .snapshots
        .iter()
        .map(|s| s.snapshot_id.as_str())
        .collect();
    assert_eq!(reported, tagged, "the case names the set it took");
    assert_eq!(f.snapshots().await.len(), 2, "a later run takes none");

    let (ra, rb) = tokio::join!(contain_role(&ctx, &a), contain_role(&ctx, &b));
    assert!(ra.is_ok() && rb.is_ok(), "{ra:?} {rb:?}");
    assert_eq!(f.inline_policies().await, vec![REVOKE_SESSIONS_POLICY_NAME]);
    assert_eq!(f.deny_all_attachments().await, 1);
    record_outcome("contained");
}

/// Two executions of the same finding (EventBridge delivers an event at least once) triaged at
/// the same instant: one case. Their snapshot steps are forced to overlap (CreateSnapshots held
/// 2 s on its way, so the first is still taking its set when the second starts): one set,
/// taken by the execution that claimed the step, and one CreateSnapshots call in all.
#[tokio::test]
#[ignore = "needs the local AWS emulator: helper_scripts/test.sh starts it"]
async fn two_executions_of_one_finding_take_one_snapshot_set() {
    let f = Fixture::new().await;
    let key = access_key(&f.config).await;
    let ctx = retrying_ctx(&f.config);
    let event = f.event(BACKDOOR);
    let (ta, tb) = tokio::join!(triage(&ctx, &event), triage(&ctx, &event));
    let (ta, tb) = (ta.unwrap(), tb.unwrap());
    let (pa, pb) = (ta.targets[0].planned(), tb.targets[0].planned());
    let (ca, cb) = (pa.case.clone().unwrap(), pb.case.clone().unwrap());
    assert_eq!(ca.case_id, cb.case_id, "one case for the instance");
    assert_ne!(ca.claim, cb.claim, "each execution its own claim");
    assert!(
        ta.targets[0].already_contained_by.is_some()
            != tb.targets[0].already_contained_by.is_some(),
        "one opened the case, the other joined it: {ta:?} {tb:?}"
    );
    let (ea, eb) = (pa, pb);

    inject(&key, "ec2:CreateSnapshots", "delay", Some(1));
    let (sa, sb) = tokio::join!(snapshot(&ctx, ea.clone()), snapshot(&ctx, eb.clone()));
    let (sa, sb) = (sa.unwrap(), sb.unwrap());
    let statuses: BTreeSet<&str> = [sa.status(), sb.status()].into_iter().collect();
    assert_eq!(
        statuses,
        BTreeSet::from(["already_done", "done"]),
        "{sa:?} {sb:?}"
    );
    let waiting = if sa.status() == "done" { &sb } else { &sa };
    assert!(
        waiting.report().unwrap().warnings[0].contains("taken by another execution"),
        "{waiting:?}"
    );
    assert_eq!(f.snapshots().await.len(), 2, "one set of two volumes");
    let calls = proxy_log(&key)
        .iter()
        .filter(|e| e["action"] == "ec2:CreateSnapshots")
        .count();
    assert_eq!(calls, 1, "one CreateSnapshots call in all");

    // A retry of the execution that took the set finds it in the case.
    let (retry_event, taker) = if sa.status() == "done" {
        (&ea, &sa)
    } else {
        (&eb, &sb)
    };
    let retried = snapshot(&ctx, retry_event.clone()).await.unwrap();
    assert_eq!(retried.status(), "already_done");
    assert_eq!(
        retried.report().unwrap().snapshots,
        taker.report().unwrap().snapshots,
        "the retry reports the set it took, from the case"
    );
    assert_eq!(f.snapshots().await.len(), 2);
    record_outcome("contained");
}

#[tokio::test]
#[ignore = "needs the local AWS emulator: helper_scripts/test.sh starts it"]
async fn isolation_retried_after_failing_half_way() {
    let f = Fixture::new().await;
    let key = access_key(&f.config).await;
    let before = f.interface_groups().await;
    // The interfaces move; termination protection fails transiently (no SDK retries here).
    inject(&key, "ec2:ModifyInstanceAttribute", "unavailable", Some(1));
    let first = isolate(&f.ctx, &f.event(EXFILTRATION)).await.unwrap_err();
    assert_eq!(first.name(), ErrorName::TransientAwsError, "{first}");

    // The state machine's retry: nothing twice, and the groups from before are still reported.
    let second = isolate(&f.ctx, &f.event(EXFILTRATION)).await.unwrap();
    let report = second.report().unwrap();
    assert!(
        report
            .interfaces
            .iter()
            .all(|i| i.status == InterfaceStatus::AlreadyIsolated)
    );
    for i in &report.interfaces {
        let mut previous = i.previous_groups.clone();
        previous.sort();
        assert_eq!(previous, before[&i.interface_id]);
    }
    assert_eq!(
        f.security_groups_named(QUARANTINE_GROUP_NAME).await.len(),
        1
    );
    record_outcome("contained");
}

#[tokio::test]
#[ignore = "needs the local AWS emulator: helper_scripts/test.sh starts it"]
async fn a_quarantine_group_not_visible_yet_is_retried() {
    // Right after creation, EC2 may not know the new group yet: the step asks again a few times
    // within the second (the call was refused, so not applied).
    let f = Fixture::new().await;
    let key = access_key(&f.config).await;
    inject_error(
        &key,
        "ec2:RevokeSecurityGroupEgress",
        "InvalidGroup.NotFound",
        400,
    );
    let done = isolate(&f.ctx, &f.event(EXFILTRATION)).await.unwrap();
    assert_eq!(done.status(), "done", "the step waited for the group");
    let groups = f.security_groups_named(QUARANTINE_GROUP_NAME).await;
    assert!(groups[0].ip_permissions_egress().is_empty(), "emptied");

    // A group EC2 still does not know after that (the IPv4 and IPv6 revocations, each asked four
    // times): the step fails transiently, every interface as it was (moved back out of the
    // transit group), and the state machine's retry finishes.
    let f = Fixture::new().await;
    let key = access_key(&f.config).await;
    inject_error_times(
        &key,
        "ec2:RevokeSecurityGroupEgress",
        "InvalidGroup.NotFound",
        400,
        8,
    );
    let before = f.interface_groups().await;
    let first = isolate(&f.ctx, &f.event(EXFILTRATION)).await.unwrap_err();
    assert_eq!(first.name(), ErrorName::TransientAwsError, "{first}");
    assert_eq!(f.interface_groups().await, before, "nothing moved");

    let second = isolate(&f.ctx, &f.event(EXFILTRATION)).await.unwrap();
    assert_eq!(second.status(), "done");
    let groups = f.security_groups_named(QUARANTINE_GROUP_NAME).await;
    assert_eq!(
        groups.len(),
        1,
        "the group created by the first attempt is reused"
    );
    assert!(
        groups[0].ip_permissions_egress().is_empty(),
        "and emptied by the second"
    );
    record_outcome("contained");
}

#[tokio::test]
#[ignore = "needs the local AWS emulator: helper_scripts/test.sh starts it"]
async fn snapshots_retried_after_failing_half_way() {
    let f = Fixture::new().await;
    let key = access_key(&f.config).await;
    // The snapshot set is taken; labelling one snapshot with its device fails.
    inject(&key, "ec2:CreateTags", "unavailable", Some(1));
    let first = snapshot(&f.ctx, &f.event(EXFILTRATION)).await.unwrap();
    let second = snapshot(&f.ctx, &f.event(EXFILTRATION)).await.unwrap();
    let ids = |o: &Outcome<ec2_quarantine::steps::snapshot::SnapshotReport>| -> BTreeSet<String> {
        o.report()
            .unwrap()
            .snapshots
            .iter()
            .map(|s| s.snapshot_id.clone())
            .collect()
    };
    assert_eq!(second.status(), "already_done");
    assert_eq!(ids(&first), ids(&second));
    assert_eq!(f.snapshots().await.len(), 2, "one set");
    record_outcome("contained");
}

#[tokio::test]
#[ignore = "needs the local AWS emulator: helper_scripts/test.sh starts it"]
async fn role_containment_retried_after_failing_half_way() {
    let f = Fixture::new().await;
    let key = access_key(&f.config).await;
    inject(&key, "iam:AttachRolePolicy", "unavailable", Some(1));
    let first = contain_role(&f.ctx, &f.event(EXFILTRATION))
        .await
        .unwrap_err();
    assert_eq!(first.name(), ErrorName::TransientAwsError, "{first}");
    assert!(
        first
            .to_string()
            .contains("older sessions of compromised-instance-role revoked"),
        "{first}"
    );

    let second = contain_role(&f.ctx, &f.event(EXFILTRATION)).await.unwrap();
    let report = second.report().unwrap();
    assert_eq!(report.deny_all, Change::Applied);
    assert_eq!(
        report.revoke_sessions,
        Change::AlreadyInPlace,
        "the first attempt's cutoff is kept"
    );
    assert_eq!(f.inline_policies().await, vec![REVOKE_SESSIONS_POLICY_NAME]);
    assert_eq!(f.deny_all_attachments().await, 1);
    record_outcome("contained");
}
