//! Races and repeats: two findings for one instance at once, and every step retried after it
//! failed half-way, end with one quarantine group per VPC, one snapshot set per finding, one
//! inline deny, and reports that agree with the emulator's state.

mod common;

use std::collections::BTreeSet;

use common::{Fixture, access_key, inject, inject_error, record_outcome, retrying_ctx};
use ec2_quarantine::isolate::{InterfaceStatus, QUARANTINE_GROUP_NAME, isolate};
use ec2_quarantine::role::{Change, REVOKE_SESSIONS_POLICY_NAME, contain_role};
use ec2_quarantine::snapshot::snapshot;
use ec2_quarantine::{ErrorName, Outcome, tags};

const EXFILTRATION: &str = "credential-exfiltration.json";
const BACKDOOR: &str = "instance-backdoor.json";

#[tokio::test]
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
    let marked = f.tags().await[tags::FINDING_ID].clone();
    assert!(
        [
            "a6c7d3f1e2b94c8d9e0f1a2b3c4d5e6f",
            "b8e9f0a1b2c34d5e6f7a8b9c0d1e2f3a"
        ]
        .contains(&marked.as_str())
    );

    // Snapshots belong to the containment, named by the finding that marked the instance: two
    // findings at the same instant may each take a set (CreateSnapshots has no idempotency
    // token; a known limit), both tagged with that finding, and a later run takes none.
    let (sa, sb) = tokio::join!(snapshot(&ctx, &a), snapshot(&ctx, &b));
    let (sa, sb) = (sa.unwrap(), sb.unwrap());
    let snaps = f.snapshots().await;
    assert!(
        matches!(snaps.len(), 2 | 4),
        "one or two sets of two: {}",
        snaps.len()
    );
    let tagged: BTreeSet<&str> = snaps
        .iter()
        .filter(|s| tags::find(s.tags(), tags::FINDING_ID) == Some(marked.as_str()))
        .filter_map(|s| s.snapshot_id())
        .collect();
    assert_eq!(
        tagged.len(),
        snaps.len(),
        "every set names the containment's finding"
    );
    for outcome in [&sa, &sb] {
        for s in &outcome.report().unwrap().snapshots {
            assert!(
                tagged.contains(s.snapshot_id.as_str()),
                "the report names a set it took or found"
            );
        }
    }
    let later = snapshot(&ctx, &a).await.unwrap();
    assert_eq!(later.status(), "already_done");
    assert_eq!(
        f.snapshots().await.len(),
        snaps.len(),
        "a later run takes none"
    );

    let (ra, rb) = tokio::join!(contain_role(&ctx, &a), contain_role(&ctx, &b));
    assert!(ra.is_ok() && rb.is_ok(), "{ra:?} {rb:?}");
    assert_eq!(f.inline_policies().await, vec![REVOKE_SESSIONS_POLICY_NAME]);
    assert_eq!(f.deny_all_attachments().await, 1);
    record_outcome("contained");
}

#[tokio::test]
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
async fn a_quarantine_group_not_visible_yet_is_retried() {
    let f = Fixture::new().await;
    let key = access_key(&f.config).await;
    // Right after creation, EC2 may not know the new group yet.
    inject_error(
        &key,
        "ec2:RevokeSecurityGroupEgress",
        "InvalidGroup.NotFound",
        400,
    );
    let first = isolate(&f.ctx, &f.event(EXFILTRATION)).await.unwrap_err();
    assert_eq!(first.name(), ErrorName::TransientAwsError, "{first}");
    assert_eq!(
        f.interface_groups()
            .await
            .values()
            .filter(|g| g.len() == 1)
            .count(),
        1,
        "nothing moved yet"
    );

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
async fn snapshots_retried_after_failing_half_way() {
    let f = Fixture::new().await;
    let key = access_key(&f.config).await;
    // The snapshot set is taken; labelling one snapshot with its device fails.
    inject(&key, "ec2:CreateTags", "unavailable", Some(1));
    let first = snapshot(&f.ctx, &f.event(EXFILTRATION)).await.unwrap();
    let second = snapshot(&f.ctx, &f.event(EXFILTRATION)).await.unwrap();
    let ids = |o: &Outcome<ec2_quarantine::snapshot::SnapshotReport>| -> BTreeSet<String> {
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
