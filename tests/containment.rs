//! Each containment step against the emulator, on the user's test stack: what the emulator's
//! state is afterwards, and that a second run creates nothing new.

mod common;

use std::collections::BTreeSet;

use aws_sdk_ec2::types::{InstanceAttributeName, IpPermission, IpRange};
use common::{Fixture, filter};
use ec2_quarantine::case::Previous;
use ec2_quarantine::domain::settings::{RoleAction, Settings};
use ec2_quarantine::steps::isolate::{
    InterfaceStatus, QUARANTINE_GROUP_NAME, TRANSIT_GROUP_NAME, isolate,
};
use ec2_quarantine::steps::role::{
    Change, DENY_ALL_POLICY_NAME, REVOKE_SESSIONS_POLICY_NAME, contain_role, deny_all_policy_arn,
};
use ec2_quarantine::steps::snapshot::snapshot;
use ec2_quarantine::steps::triage::triage;
use ec2_quarantine::{Ctx, ErrorName, Outcome, aws::tags};

const EXFILTRATION: &str = "credential-exfiltration.json";
const BACKDOOR: &str = "instance-backdoor.json";

#[tokio::test]
#[ignore = "needs the local AWS emulator: helper_scripts/test.sh starts it"]
async fn isolate_moves_every_interface_into_an_empty_quarantine_group() {
    let f = Fixture::new().await;
    let before = f.interface_groups().await;
    assert_eq!(
        before[&f.interfaces[1]].len(),
        2,
        "second interface starts with two groups"
    );
    let web = f.security_groups_named("web").await;
    assert!(
        !web[0].ip_permissions_egress().is_empty(),
        "new groups start with egress rules"
    );

    let out = isolate(&f.ctx, &f.event(EXFILTRATION)).await.unwrap();
    let Outcome::Done(report) = out else {
        panic!("expected done, got {out:?}")
    };
    assert_eq!(report.quarantine_groups.len(), 1);
    let qsg = report.quarantine_groups[0].group_id.clone();
    assert_eq!(report.quarantine_groups[0].vpc_id, f.vpc_id);
    assert!(!f.interfaces.contains(&qsg));

    // Every interface is in the quarantine group and in nothing else.
    let after = f.interface_groups().await;
    for eni in &f.interfaces {
        assert_eq!(after[eni], vec![qsg.clone()], "{eni}");
    }
    // The report and the case hold what each interface had before.
    for i in &report.interfaces {
        assert_eq!(i.status, InterfaceStatus::Isolated);
        let mut previous = i.previous_groups.clone();
        previous.sort();
        assert_eq!(previous, before[&i.interface_id], "{}", i.interface_id);
    }
    let case = f.case().await;
    for eni in &f.interfaces {
        let mut recorded = case
            .previous
            .iter()
            .find_map(|p| match p {
                Previous::Groups {
                    interface_id,
                    groups,
                } if interface_id == eni => Some(groups.clone()),
                _ => None,
            })
            .expect("the case records the interface's groups");
        recorded.sort();
        assert_eq!(recorded, before[eni]);
    }
    assert_eq!(case.findings.len(), 1);
    assert_eq!(
        case.findings[0].finding_id,
        "a6c7d3f1e2b94c8d9e0f1a2b3c4d5e6f"
    );
    assert_eq!(
        case.findings[0].finding_type,
        "UnauthorizedAccess:IAMUser/InstanceCredentialExfiltration.OutsideAWS"
    );
    assert_eq!(
        (
            case.account_id.as_str(),
            case.region.as_str(),
            case.instance_id.as_str()
        ),
        (f.account.as_str(), "us-east-1", f.instance_id.as_str())
    );
    // On the instance, two marker tags only (the case and the time), written after acting.
    let tags = f.tags().await;
    let ours: Vec<&String> = tags
        .keys()
        .filter(|k| k.starts_with(tags::PREFIX))
        .collect();
    assert_eq!(ours, [tags::CASE, tags::CONTAINED_AT], "{tags:?}");
    assert_eq!(tags[tags::CASE], case.case_id);

    // The quarantine group lets nothing in or out.
    let groups = f.security_groups_named(QUARANTINE_GROUP_NAME).await;
    assert_eq!(groups.len(), 1);
    assert!(
        groups[0].ip_permissions().is_empty(),
        "{:?}",
        groups[0].ip_permissions()
    );
    assert!(
        groups[0].ip_permissions_egress().is_empty(),
        "{:?}",
        groups[0].ip_permissions_egress()
    );
    assert_eq!(
        tags::find(groups[0].tags(), tags::ISOLATION_GROUP),
        Some("true")
    );

    // Evidence kept: no API termination, and a shutdown from inside stops instead of terminating.
    let termination = f
        .ec2
        .describe_instance_attribute()
        .instance_id(&f.instance_id)
        .attribute(InstanceAttributeName::DisableApiTermination)
        .send()
        .await
        .unwrap();
    assert_eq!(
        termination.disable_api_termination().unwrap().value(),
        Some(true)
    );
    let shutdown = f
        .ec2
        .describe_instance_attribute()
        .instance_id(&f.instance_id)
        .attribute(InstanceAttributeName::InstanceInitiatedShutdownBehavior)
        .send()
        .await
        .unwrap();
    assert_eq!(
        shutdown
            .instance_initiated_shutdown_behavior()
            .unwrap()
            .value(),
        Some("stop")
    );

    // Each interface went through the transit group (all traffic allowed, so open connections
    // become untracked) before the quarantine group, which then cuts them.
    let transit = f.security_groups_named(TRANSIT_GROUP_NAME).await;
    assert_eq!(transit.len(), 1);
    let transit_id = transit[0].group_id().unwrap().to_owned();
    assert_eq!(report.quarantine_groups[0].transit_group_id, transit_id);
    for rules in [
        transit[0].ip_permissions(),
        transit[0].ip_permissions_egress(),
    ] {
        let all: Vec<_> = rules
            .iter()
            .filter(|p| p.ip_protocol() == Some("-1"))
            .collect();
        assert!(
            all.iter().any(|p| p
                .ip_ranges()
                .iter()
                .any(|r| r.cidr_ip() == Some("0.0.0.0/0"))),
            "{rules:?}"
        );
        assert!(
            all.iter().any(|p| p
                .ipv6_ranges()
                .iter()
                .any(|r| r.cidr_ipv6() == Some("::/0"))),
            "{rules:?}"
        );
    }
    assert!(report.interfaces.iter().all(|i| i.connections_cut));
    let key = common::access_key(&f.config).await;
    for eni in &f.interfaces {
        let moves: Vec<String> = common::proxy_log(&key)
            .iter()
            .filter(|e| e["action"] == "ec2:ModifyNetworkInterfaceAttribute")
            .filter(|e| e["params"]["NetworkInterfaceId"] == eni.as_str())
            .map(|e| {
                e["params"]["SecurityGroupId.1"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned()
            })
            .collect();
        assert_eq!(
            moves,
            vec![transit_id.clone(), qsg.clone()],
            "{eni}: transit, then quarantine"
        );
    }

    // No attached volume goes with the instance any more.
    let inst = f.instance().await;
    for m in inst.block_device_mappings() {
        assert_eq!(
            m.ebs().unwrap().delete_on_termination(),
            Some(false),
            "{:?}",
            m.device_name()
        );
    }
    assert_eq!(report.volumes_kept_on_termination.len(), 2);
    assert!(
        f.case()
            .await
            .previous
            .iter()
            .any(|p| matches!(p, Previous::DeleteOnTermination { devices } if devices.len() == 2)),
        "recorded for release"
    );

    // A second run (a retry, or the finding re-sent) changes nothing and still reports the
    // groups the interfaces had before the first run.
    let again = isolate(&f.ctx, &f.event(EXFILTRATION)).await.unwrap();
    let Outcome::AlreadyDone(second) = again else {
        panic!("expected already_done, got {again:?}")
    };
    assert_eq!(second.quarantine_groups[0].group_id, qsg);
    assert!(!second.quarantine_groups[0].changed);
    assert!(second.volumes_kept_on_termination.is_empty());
    for (first, second) in report.interfaces.iter().zip(&second.interfaces) {
        assert_eq!(second.status, InterfaceStatus::AlreadyIsolated);
        assert_eq!(first.previous_groups, second.previous_groups);
    }
    assert_eq!(
        f.security_groups_named(QUARANTINE_GROUP_NAME).await.len(),
        1
    );
    assert_eq!(f.tags().await, tags);
    assert_eq!(f.interface_groups().await, after);
}

#[tokio::test]
#[ignore = "needs the local AWS emulator: helper_scripts/test.sh starts it"]
async fn in_a_dual_stack_vpc_ipv6_egress_is_revoked_too() {
    let f = Fixture::dual_stack().await;
    let web = f.security_groups_named("web").await;
    let default_egress = web[0].ip_permissions_egress();
    assert!(
        default_egress.iter().any(|p| !p.ipv6_ranges().is_empty()),
        "a new group in a dual-stack VPC allows IPv6 out: {default_egress:?}"
    );
    isolate(&f.ctx, &f.event(EXFILTRATION)).await.unwrap();
    let groups = f.security_groups_named(QUARANTINE_GROUP_NAME).await;
    assert!(groups[0].ip_permissions_egress().is_empty(), "{groups:?}");
    assert!(groups[0].ip_permissions().is_empty());
}

/// Every rule of `rules` that allows all traffic from or to anywhere, IPv4 and IPv6.
fn allows_everything(rules: &[IpPermission]) -> bool {
    let all: Vec<_> = rules
        .iter()
        .filter(|p| p.ip_protocol() == Some("-1"))
        .collect();
    let v4 = all.iter().any(|p| {
        p.ip_ranges()
            .iter()
            .any(|r| r.cidr_ip() == Some("0.0.0.0/0"))
    });
    let v6 = all.iter().any(|p| {
        p.ipv6_ranges()
            .iter()
            .any(|r| r.cidr_ipv6() == Some("::/0"))
    });
    v4 && v6
}

/// Triage finds neither of the tool's groups in the instance's VPC and says so in the target;
/// isolate then creates them while it reads the instance, with no lookup of its own, and with
/// the same result: the quarantine group empty (IPv6 too in a dual-stack VPC), the transit
/// group open to everything, IPv4 and IPv6, before any interface moves. The hint gone stale
/// (the groups exist by the next run) costs a refused creation, never a second group.
#[tokio::test]
#[ignore = "needs the local AWS emulator: helper_scripts/test.sh starts it"]
async fn groups_triage_found_missing_are_made_while_the_instance_is_read() {
    let f = Fixture::dual_stack().await;
    let key = common::access_key(&f.config).await;
    let lookups = || {
        common::proxy_log(&key)
            .iter()
            .filter(|e| e["action"] == "ec2:DescribeSecurityGroups")
            .count()
    };
    let triaged = triage(&f.ctx, &f.event(BACKDOOR)).await.unwrap();
    let planned = triaged.targets[0].planned();
    assert_eq!(planned.target.vpcs_without_groups, vec![f.vpc_id.clone()]);
    let before = lookups();

    let out = isolate(&f.ctx, planned.clone()).await.unwrap();
    let Outcome::Done(report) = out else {
        panic!("expected done, got {out:?}")
    };
    assert_eq!(lookups(), before, "isolate looked no group up");
    let quarantine = f.security_groups_named(QUARANTINE_GROUP_NAME).await;
    let transit = f.security_groups_named(TRANSIT_GROUP_NAME).await;
    assert_eq!((quarantine.len(), transit.len()), (1, 1));
    assert!(quarantine[0].ip_permissions().is_empty(), "{quarantine:?}");
    assert!(
        quarantine[0].ip_permissions_egress().is_empty(),
        "{quarantine:?}"
    );
    assert!(
        allows_everything(transit[0].ip_permissions()),
        "{transit:?}"
    );
    assert!(
        allows_everything(transit[0].ip_permissions_egress()),
        "{transit:?}"
    );
    let qsg = quarantine[0].group_id().unwrap().to_owned();
    for eni in &f.interfaces {
        assert_eq!(f.interface_groups().await[eni], vec![qsg.clone()], "{eni}");
    }
    assert!(report.interfaces.iter().all(|i| i.connections_cut));

    // The same target again (a retry of the step): its hint is stale now.
    let again = isolate(&f.ctx, planned).await.unwrap();
    assert_eq!(again.status(), "already_done", "{again:?}");
    assert_eq!(
        f.security_groups_named(QUARANTINE_GROUP_NAME).await.len(),
        1
    );
    assert_eq!(f.security_groups_named(TRANSIT_GROUP_NAME).await.len(), 1);
    // A finding triaged now finds the groups.
    let later = triage(&f.ctx, &f.event(BACKDOOR)).await.unwrap();
    assert!(
        later.targets[0].target.vpcs_without_groups.is_empty(),
        "{later:?}"
    );
}

#[tokio::test]
#[ignore = "needs the local AWS emulator: helper_scripts/test.sh starts it"]
async fn a_second_finding_keeps_the_first_findings_marks() {
    let f = Fixture::new().await;
    isolate(&f.ctx, &f.event(EXFILTRATION)).await.unwrap();
    let tags = f.tags().await;
    let out = isolate(&f.ctx, &f.event(BACKDOOR)).await.unwrap();
    assert_eq!(out.status(), "already_done", "{out:?}");
    assert_eq!(
        f.tags().await,
        tags,
        "the first finding's id and the previous groups stay"
    );
}

/// A group under the quarantine group's name made by hand in the fixture's VPC, carrying `tag`
/// (`true`) if given, with one ingress rule.
async fn hand_made_quarantine_group(f: &Fixture, tag: Option<&str>, rule: IpPermission) -> String {
    let mut request = f
        .ec2
        .create_security_group()
        .group_name(QUARANTINE_GROUP_NAME)
        .description("made by hand")
        .vpc_id(&f.vpc_id);
    if let Some(tag) = tag {
        request = request.tag_specifications(
            aws_sdk_ec2::types::TagSpecification::builder()
                .resource_type(aws_sdk_ec2::types::ResourceType::SecurityGroup)
                .tags(tags::new(tag, "true"))
                .build(),
        );
    }
    let id = request.send().await.unwrap().group_id.unwrap();
    f.ec2
        .authorize_security_group_ingress()
        .group_id(&id)
        .ip_permissions(rule)
        .send()
        .await
        .unwrap();
    id
}

#[tokio::test]
#[ignore = "needs the local AWS emulator: helper_scripts/test.sh starts it"]
async fn a_quarantine_group_someone_added_rules_to_is_emptied() {
    let f = Fixture::new().await;
    // A group that carries the tool's tag, with rules added by hand.
    let https = IpPermission::builder()
        .ip_protocol("tcp")
        .from_port(443)
        .to_port(443)
        .ip_ranges(IpRange::builder().cidr_ip("0.0.0.0/0").build())
        .build();
    let id = hand_made_quarantine_group(&f, Some(tags::ISOLATION_GROUP), https).await;

    let out = isolate(&f.ctx, &f.event(EXFILTRATION)).await.unwrap();
    let report = out.report().unwrap();
    assert_eq!(
        report.quarantine_groups[0].group_id, id,
        "the existing group is reused"
    );
    let groups = f.security_groups_named(QUARANTINE_GROUP_NAME).await;
    assert_eq!(groups.len(), 1);
    assert!(groups[0].ip_permissions().is_empty());
    assert!(groups[0].ip_permissions_egress().is_empty());
}

/// A group under the tool's name, without its tag, that lets everything in: the tool may not
/// tag it as its own (IAM allows its tags on groups only at creation) nor move an interface
/// into it.
async fn squat(f: &Fixture) -> String {
    let everything = IpPermission::builder()
        .ip_protocol("-1")
        .ip_ranges(IpRange::builder().cidr_ip("0.0.0.0/0").build())
        .build();
    hand_made_quarantine_group(f, None, everything).await
}

#[tokio::test]
#[ignore = "needs the local AWS emulator: helper_scripts/test.sh starts it"]
async fn a_group_someone_else_made_under_the_tools_name_is_never_tagged_nor_used() {
    let f = Fixture::new().await;
    let squatter = squat(&f).await;

    let out = isolate(&f.ctx, &f.event(EXFILTRATION)).await.unwrap();
    let report = out.report().unwrap();
    let quarantine = &report.quarantine_groups[0].group_id;
    assert_ne!(quarantine, &squatter, "{report:?}");
    for groups in f.interface_groups().await.values() {
        assert_eq!(groups, &vec![quarantine.clone()]);
    }
    let described = f
        .ec2
        .describe_security_groups()
        .group_ids(&squatter)
        .send()
        .await
        .unwrap();
    let theirs = &described.security_groups()[0];
    assert!(
        theirs
            .tags()
            .iter()
            .all(|t| !t.key().unwrap_or_default().starts_with(tags::PREFIX)),
        "{theirs:?}"
    );
    assert_eq!(
        theirs.ip_permissions().len(),
        1,
        "left as its owner made it"
    );
    // The tool's own group carries its tag from creation, under the name with a suffix.
    let ours = f
        .ec2
        .describe_security_groups()
        .group_ids(quarantine)
        .send()
        .await
        .unwrap();
    let ours = &ours.security_groups()[0];
    assert!(tags::find(ours.tags(), tags::ISOLATION_GROUP).is_some());
    assert!(
        ours.group_name()
            .unwrap()
            .starts_with(QUARANTINE_GROUP_NAME)
    );
    assert!(ours.ip_permissions().is_empty() && ours.ip_permissions_egress().is_empty());
}

/// The same squatter, and a target whose hint says the VPC has none of the tool's groups (as
/// triage said before the first run made them): each run of the step with that target finds
/// the tool's group under its suffixed name, never makes a second one.
#[tokio::test]
#[ignore = "needs the local AWS emulator: helper_scripts/test.sh starts it"]
async fn a_stale_hint_beside_a_squatter_never_makes_a_second_group() {
    let f = Fixture::new().await;
    let squatter = squat(&f).await;
    let triaged = triage(&f.ctx, &f.event(BACKDOOR)).await.unwrap();
    let planned = triaged.targets[0].planned();
    assert_eq!(planned.target.vpcs_without_groups, vec![f.vpc_id.clone()]);

    let first = isolate(&f.ctx, planned.clone()).await.unwrap();
    let quarantine = first.report().unwrap().quarantine_groups[0]
        .group_id
        .clone();
    assert_ne!(quarantine, squatter);
    for _ in 0..2 {
        let again = isolate(&f.ctx, planned.clone()).await.unwrap();
        assert_eq!(again.status(), "already_done", "{again:?}");
        assert_eq!(
            again.report().unwrap().quarantine_groups[0].group_id,
            quarantine
        );
    }
    let tools = |tag: &'static str| {
        let ec2 = f.ec2.clone();
        let vpc = f.vpc_id.clone();
        async move {
            ec2.describe_security_groups()
                .filters(filter("vpc-id", &vpc))
                .filters(filter(&format!("tag:{tag}"), "true"))
                .send()
                .await
                .unwrap()
                .security_groups()
                .len()
        }
    };
    assert_eq!(tools(tags::ISOLATION_GROUP).await, 1);
    assert_eq!(tools(tags::TRANSIT_GROUP).await, 1);
    for groups in f.interface_groups().await.values() {
        assert_eq!(groups, &vec![quarantine.clone()]);
    }
}

#[tokio::test]
#[ignore = "needs the local AWS emulator: helper_scripts/test.sh starts it"]
async fn snapshot_takes_every_volume_once() {
    let f = Fixture::new().await;
    let out = snapshot(&f.ctx, &f.event(EXFILTRATION)).await.unwrap();
    let Outcome::Done(report) = out else {
        panic!("expected done, got {out:?}")
    };
    let volumes: BTreeSet<&str> = report
        .snapshots
        .iter()
        .map(|s| s.volume_id.as_str())
        .collect();
    let want: BTreeSet<&str> = f.volumes.iter().map(String::as_str).collect();
    assert_eq!(volumes, want, "one snapshot per attached volume");

    let snapshots = f.snapshots().await;
    assert_eq!(snapshots.len(), 2);
    for s in &snapshots {
        let t = s.tags();
        assert_eq!(
            tags::find(t, tags::CASE),
            Some(f.case().await.case_id.as_str())
        );
        assert_eq!(
            tags::find(t, tags::INSTANCE_ID),
            Some(f.instance_id.as_str())
        );
        assert_eq!(tags::find(t, tags::VOLUME_ID), s.volume_id());
        let device = tags::find(t, tags::DEVICE).expect("device tag");
        let reported = report
            .snapshots
            .iter()
            .find(|r| Some(r.snapshot_id.as_str()) == s.snapshot_id())
            .unwrap();
        assert_eq!(reported.device.as_deref(), Some(device));
    }
    let devices: BTreeSet<String> = report
        .snapshots
        .iter()
        .filter_map(|s| s.device.clone())
        .collect();
    assert!(devices.contains("/dev/sdf"), "{devices:?}");

    // The same finding again: the snapshots are found by their tags, none is taken twice.
    let again = snapshot(&f.ctx, &f.event(EXFILTRATION)).await.unwrap();
    let Outcome::AlreadyDone(second) = again else {
        panic!("expected already_done, got {again:?}")
    };
    let mut first_ids: Vec<_> = report
        .snapshots
        .iter()
        .map(|s| s.snapshot_id.clone())
        .collect();
    let mut second_ids: Vec<_> = second
        .snapshots
        .iter()
        .map(|s| s.snapshot_id.clone())
        .collect();
    first_ids.sort();
    second_ids.sort();
    assert_eq!(first_ids, second_ids);
    assert_eq!(f.snapshots().await.len(), 2);
}

#[tokio::test]
#[ignore = "needs the local AWS emulator: helper_scripts/test.sh starts it"]
async fn each_forensic_snapshot_is_locked_and_cannot_be_deleted() {
    let f = Fixture::new().await;
    let out = snapshot(&f.ctx, &f.event(EXFILTRATION)).await.unwrap();
    let Outcome::Done(report) = out else {
        panic!("expected done, got {out:?}")
    };
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
    let ids: Vec<String> = report
        .snapshots
        .iter()
        .map(|s| s.snapshot_id.clone())
        .collect();
    // EC2's record of the locks: governance, the default 90 days.
    let held = f
        .ec2
        .describe_locked_snapshots()
        .set_snapshot_ids(Some(ids.clone()))
        .send()
        .await
        .unwrap();
    let mut locked: Vec<(String, String, Option<i32>)> = held
        .snapshots()
        .iter()
        .map(|s| {
            (
                s.snapshot_id().unwrap_or_default().to_owned(),
                s.lock_state()
                    .map(|l| l.as_str().to_owned())
                    .unwrap_or_default(),
                s.lock_duration(),
            )
        })
        .collect();
    locked.sort();
    let mut want: Vec<_> = ids
        .iter()
        .map(|i| (i.clone(), "governance".to_owned(), Some(90)))
        .collect();
    want.sort();
    assert_eq!(locked, want);
    assert!(
        report.snapshots.iter().all(|s| s
            .lock
            .as_ref()
            .is_some_and(|l| l.state == "governance" && l.days == Some(90))),
        "{:?}",
        report.snapshots
    );
    // Nobody deletes the evidence while the lock holds (tried past the proxy, whose log must
    // show no destructive call of the code under test).
    let refused = common::direct_ec2(&f.config)
        .delete_snapshot()
        .snapshot_id(&ids[0])
        .send()
        .await;
    assert!(refused.is_err(), "a locked snapshot was deleted");
    assert_eq!(f.snapshots().await.len(), 2);
    // A retried step finds the locks and asks for none again.
    let again = snapshot(&f.ctx, &f.event(EXFILTRATION)).await.unwrap();
    let Outcome::AlreadyDone(second) = again else {
        panic!("expected already_done, got {again:?}")
    };
    assert!(second.warnings.is_empty(), "{:?}", second.warnings);
    assert!(second.snapshots.iter().all(|s| s.lock.is_some()));
}

#[tokio::test]
#[ignore = "needs the local AWS emulator: helper_scripts/test.sh starts it"]
async fn the_snapshot_set_has_one_manifest_in_the_object_locked_bucket() {
    use aws_sdk_s3::types::{ChecksumMode, ObjectLockMode};
    use base64::Engine as _;
    use sha2::Digest as _;
    let f = Fixture::new().await;
    let bucket = common::evidence_bucket(&f.config, &f.account).await;
    let ctx = f.ctx.clone().with_evidence_bucket(&bucket);
    let out = snapshot(&ctx, &f.event(EXFILTRATION)).await.unwrap();
    let Outcome::Done(report) = out else {
        panic!("expected done, got {out:?}")
    };
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
    let m = report.manifest.clone().expect("a manifest");
    assert_eq!(m.bucket, bucket);
    assert!(
        m.key.starts_with("cases/") && m.key.ends_with(&format!("/manifest-{}.json", m.sha256)),
        "{m:?}"
    );
    assert!(m.version_id.is_some(), "{m:?}");

    // The object: its bytes hash to the recorded SHA-256, S3 kept that checksum, and the
    // bucket's default retention holds it (governance, 90 days).
    let s3 = common::direct_s3(&f.config);
    let object = s3
        .get_object()
        .bucket(&bucket)
        .key(&m.key)
        .checksum_mode(ChecksumMode::Enabled)
        .send()
        .await
        .unwrap();
    assert_eq!(object.object_lock_mode(), Some(&ObjectLockMode::Governance));
    let until = object.object_lock_retain_until_date().expect("a retention");
    let days = (until.secs()
        - aws_smithy_types::DateTime::from(std::time::SystemTime::now()).secs())
        / 86_400;
    assert!((89..=90).contains(&days), "retained {days} days");
    let stored_checksum = object.checksum_sha256().map(str::to_owned);
    let bytes = object.body.collect().await.unwrap().into_bytes();
    let digest = sha2::Sha256::digest(&bytes);
    assert_eq!(hex::encode(digest), m.sha256);
    assert_eq!(
        stored_checksum.as_deref(),
        Some(
            base64::engine::general_purpose::STANDARD
                .encode(digest)
                .as_str()
        )
    );

    // What it says: the finding, the instance, each snapshot with its volume, size, start and lock.
    let doc: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(doc["format"], ec2_quarantine::steps::manifest::FORMAT);
    assert_eq!(doc["instance_id"], f.instance_id.as_str());
    assert_eq!(doc["account_id"], f.account.as_str());
    assert_eq!(
        doc["finding"]["type"],
        "UnauthorizedAccess:IAMUser/InstanceCredentialExfiltration.OutsideAWS"
    );
    let listed = doc["snapshots"].as_array().unwrap();
    assert_eq!(listed.len(), 2, "{doc}");
    for s in listed {
        assert!(
            f.volumes.iter().any(|v| s["volume_id"] == v.as_str()),
            "{s}"
        );
        assert!(s["volume_size_gib"].as_i64().is_some_and(|g| g > 0), "{s}");
        assert!(s["started_at"].is_string(), "{s}");
    }

    // A retried step renders the same manifest: found there (its checksum is this content's),
    // nothing written twice.
    let again = snapshot(&ctx, &f.event(EXFILTRATION)).await.unwrap();
    let Outcome::AlreadyDone(second) = again else {
        panic!("expected already_done, got {again:?}")
    };
    assert!(second.warnings.is_empty(), "{:?}", second.warnings);
    let m2 = second.manifest.expect("the manifest");
    assert_eq!((&m2.key, &m2.version_id), (&m.key, &m.version_id));
    let versions = s3
        .list_object_versions()
        .bucket(&bucket)
        .send()
        .await
        .unwrap();
    assert_eq!(versions.versions().len(), 1, "{versions:?}");
    // Nobody deletes it while the retention holds.
    let refused = s3
        .delete_object()
        .bucket(&bucket)
        .key(&m.key)
        .set_version_id(m.version_id.clone())
        .send()
        .await;
    assert!(refused.is_err(), "a retained manifest was deleted");
}

#[tokio::test]
#[ignore = "needs the local AWS emulator: helper_scripts/test.sh starts it"]
async fn with_snapshot_lock_none_nothing_is_locked() {
    use ec2_quarantine::domain::settings::{SnapshotLock, SnapshotLockMode};
    let f = Fixture::new().await;
    let settings = Settings {
        snapshot_lock: SnapshotLock {
            mode: SnapshotLockMode::None,
            ..SnapshotLock::default()
        },
        ..Settings::default()
    };
    let ctx = f.ctx.clone().with_settings(settings);
    let out = snapshot(&ctx, &f.event(EXFILTRATION)).await.unwrap();
    let Outcome::Done(report) = out else {
        panic!("expected done, got {out:?}")
    };
    assert!(report.snapshots.iter().all(|s| s.lock.is_none()));
    let held = f.ec2.describe_locked_snapshots().send().await.unwrap();
    let ids: BTreeSet<&str> = report
        .snapshots
        .iter()
        .map(|s| s.snapshot_id.as_str())
        .collect();
    assert!(
        held.snapshots()
            .iter()
            .all(|s| !ids.contains(s.snapshot_id().unwrap_or_default())),
        "locked with SnapshotLockMode=none"
    );
}

#[tokio::test]
#[ignore = "needs the local AWS emulator: helper_scripts/test.sh starts it"]
async fn a_deny_all_policy_someone_else_created_is_never_attached() {
    let f = Fixture::new().await;
    // A policy under the tool's DenyAll name and path that allows everything, created before
    // the tool's first containment in the account (anyone allowed iam:CreatePolicy can).
    f.iam
        .create_policy()
        .policy_name(DENY_ALL_POLICY_NAME)
        .path("/ec2-quarantine/")
        .policy_document(r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}"#)
        .send()
        .await
        .unwrap();
    let out = contain_role(&f.ctx, &f.event(EXFILTRATION)).await;
    assert_eq!(f.deny_all_attachments().await, 0, "{out:?}");
    assert!(
        format!("{out:?}").contains("is not the tool's DenyAll"),
        "the refusal is reported: {out:?}"
    );
    // The older sessions are revoked all the same.
    assert!(
        f.inline_policies()
            .await
            .iter()
            .any(|p| p == REVOKE_SESSIONS_POLICY_NAME),
        "{out:?}"
    );
}

#[tokio::test]
#[ignore = "needs the local AWS emulator: helper_scripts/test.sh starts it"]
async fn a_shared_role_gets_only_the_instances_credentials_revoked_by_default() {
    let f = Fixture::new().await;
    let sibling = f.launch_sibling().await;

    let out = contain_role(&f.ctx, &f.event(EXFILTRATION)).await.unwrap();
    let Outcome::Done(report) = out else {
        panic!("expected done, got {out:?}")
    };
    assert_eq!(report.role_action, RoleAction::RevokeInstance);
    assert_eq!(report.deny_all, Change::NotConfigured);
    assert_eq!(report.revoke_sessions, Change::NotConfigured);
    assert_eq!(report.revoke_instance, Change::Applied);
    assert_eq!(report.other_instances, vec![sibling]);
    assert_eq!(report.other_instances_total, 1);
    assert!(
        report
            .warnings
            .iter()
            .any(|w| w.contains("DenyAllSharedRoles")),
        "{:?}",
        report.warnings
    );
    assert!(
        f.attached_policies()
            .await
            .iter()
            .all(|p| !p.contains("DenyAll")),
        "the healthy sibling keeps its permissions"
    );
    let name = format!("ec2-quarantine-revoke-{}", f.instance_id);
    assert_eq!(f.inline_policies().await, vec![name.clone()]);
    let doc = f.inline_policy(&name).await;
    let statement = &doc["Statement"][0];
    assert_eq!(statement["Effect"], "Deny");
    assert_eq!(statement["Action"], "*");
    assert_eq!(
        statement["Condition"]["StringEquals"]["ec2:SourceInstanceARN"],
        format!(
            "arn:aws:ec2:us-east-1:{}:instance/{}",
            f.account, f.instance_id
        )
    );
    // Undated while contained: credentials the instance obtains later are denied too.
    assert!(
        statement["Condition"].get("DateLessThan").is_none(),
        "{doc}"
    );
    // A second run finds it.
    let again = contain_role(&f.ctx, &f.event(EXFILTRATION)).await.unwrap();
    assert_eq!(
        again.report().unwrap().revoke_instance,
        Change::AlreadyInPlace
    );
    assert_eq!(f.inline_policies().await.len(), 1);
}

#[tokio::test]
#[ignore = "needs the local AWS emulator: helper_scripts/test.sh starts it"]
async fn deny_role_denies_everything_and_revokes_older_sessions() {
    let f = Fixture::new().await;
    let sibling = f.launch_sibling().await;
    let policy_arn = deny_all_policy_arn("aws", &f.account);
    // DenyAll on a role other instances use needs the explicit opt-in.
    let ctx = Ctx::from_config(f.config.clone()).with_settings(Settings {
        deny_all_shared_roles: true,
        ..Settings::default()
    });

    let out = contain_role(&ctx, &f.event(EXFILTRATION)).await.unwrap();
    let Outcome::Done(report) = out else {
        panic!("expected done, got {out:?}")
    };
    assert_eq!(report.role_name, f.role_name);
    assert_eq!(report.deny_all, Change::Applied);
    assert_eq!(report.revoke_sessions, Change::Applied);
    assert_eq!(report.deny_all_policy_arn, policy_arn);
    assert_eq!(
        report.other_instances,
        vec![sibling],
        "the healthy sibling loses the role too"
    );
    assert_eq!(report.other_instances_error, None);

    let attached = f.attached_policies().await;
    assert!(attached.contains(&policy_arn), "{attached:?}");
    assert!(
        attached.iter().any(|a| a.ends_with("/s3-read-only")),
        "nothing detached"
    );
    let policy = f
        .iam
        .get_policy()
        .policy_arn(&policy_arn)
        .send()
        .await
        .unwrap();
    let version = policy.policy().unwrap().default_version_id().unwrap();
    let doc = f
        .iam
        .get_policy_version()
        .policy_arn(&policy_arn)
        .version_id(version)
        .send()
        .await
        .unwrap()
        .policy_version()
        .unwrap()
        .document()
        .unwrap()
        .to_owned();
    let doc = decode(&doc);
    assert_eq!(doc["Statement"][0]["Effect"], "Deny");
    assert_eq!(doc["Statement"][0]["Action"], "*");
    assert_eq!(doc["Statement"][0]["Resource"], "*");

    assert_eq!(f.inline_policies().await, vec![REVOKE_SESSIONS_POLICY_NAME]);
    let inline = f
        .iam
        .get_role_policy()
        .role_name(&f.role_name)
        .policy_name(REVOKE_SESSIONS_POLICY_NAME)
        .send()
        .await
        .unwrap();
    let inline = decode(inline.policy_document());
    let cutoff = &inline["Statement"][0]["Condition"]["DateLessThan"]["aws:TokenIssueTime"];
    assert_eq!(cutoff.as_str(), report.sessions_issued_before.as_deref());
    assert_eq!(inline["Statement"][0]["Effect"], "Deny");

    // The instance's metadata service hands out no credentials any more: its profile is the
    // quarantine profile, which holds no role. The profile it had is recorded for release.
    let swap = report
        .instance_profile
        .clone()
        .expect("the instance had a profile");
    assert_eq!(swap.change, Change::Applied);
    assert_eq!(
        swap.previous_profile_arn.as_deref(),
        Some(f.profile_arn.as_str())
    );
    let assoc = f
        .ec2
        .describe_iam_instance_profile_associations()
        .filters(common::filter("instance-id", &f.instance_id))
        .send()
        .await
        .unwrap();
    let arn = assoc.iam_instance_profile_associations()[0]
        .iam_instance_profile()
        .unwrap()
        .arn()
        .unwrap()
        .to_owned();
    assert!(
        arn.ends_with("/ec2-quarantine/ec2-quarantine-quarantined"),
        "{arn}"
    );
    let quarantine_profile = f
        .iam
        .get_instance_profile()
        .instance_profile_name("ec2-quarantine-quarantined")
        .send()
        .await
        .unwrap();
    assert!(
        quarantine_profile
            .instance_profile()
            .unwrap()
            .roles()
            .is_empty(),
        "it grants nothing"
    );
    assert_eq!(recorded_profile(&f).await, Some(f.profile_arn.clone()));

    // Again: nothing new attached, created or rewritten.
    let again = contain_role(&ctx, &f.event(EXFILTRATION)).await.unwrap();
    let Outcome::AlreadyDone(second) = again else {
        panic!("expected already_done, got {again:?}")
    };
    assert_eq!(second.deny_all, Change::AlreadyInPlace);
    assert_eq!(second.revoke_sessions, Change::AlreadyInPlace);
    assert_eq!(
        second.instance_profile.unwrap().change,
        Change::AlreadyInPlace
    );
    assert_eq!(
        recorded_profile(&f).await,
        Some(f.profile_arn.clone()),
        "the record is not overwritten"
    );
    assert_eq!(f.attached_policies().await, attached);
    assert_eq!(f.inline_policies().await, vec![REVOKE_SESSIONS_POLICY_NAME]);
    let ours = f
        .iam
        .list_policies()
        .scope(aws_sdk_iam::types::PolicyScopeType::Local)
        .send()
        .await
        .unwrap();
    let deny_alls = ours
        .policies()
        .iter()
        .filter(|p| p.policy_name() == Some(DENY_ALL_POLICY_NAME))
        .count();
    assert_eq!(deny_alls, 1);
}

/// IAM returns policy documents URL-encoded.
fn decode(doc: &str) -> serde_json::Value {
    let decoded = percent_encoding::percent_decode_str(doc)
        .decode_utf8()
        .unwrap();
    serde_json::from_str(&decoded).unwrap_or_else(|e| panic!("{e}: {decoded}"))
}

#[tokio::test]
#[ignore = "needs the local AWS emulator: helper_scripts/test.sh starts it"]
async fn an_instance_finding_finds_the_role_through_the_profile() {
    let f = Fixture::new().await;
    let out = contain_role(&f.ctx, &f.event(BACKDOOR)).await.unwrap();
    assert_eq!(out.report().unwrap().role_name, f.role_name);
}

#[tokio::test]
#[ignore = "needs the local AWS emulator: helper_scripts/test.sh starts it"]
async fn findings_that_name_no_instance_change_nothing() {
    let f = Fixture::new().await;
    let mut json = f.event_json(EXFILTRATION);
    json["detail"]["resource"] = serde_json::json!({"resourceType": "S3Bucket"});
    let event = ec2_quarantine::domain::finding::parse_event(json).unwrap();

    for out in [
        isolate(&f.ctx, &event).await.unwrap().status(),
        snapshot(&f.ctx, &event).await.unwrap().status(),
        contain_role(&f.ctx, &event).await.unwrap().status(),
    ] {
        assert_eq!(out, "skipped");
    }
    assert!(
        f.security_groups_named(QUARANTINE_GROUP_NAME)
            .await
            .is_empty()
    );
    assert!(f.snapshots().await.is_empty());
    assert_eq!(f.inline_policies().await, Vec::<String>::new());
    assert_eq!(f.attached_policies().await.len(), 1);
}

#[tokio::test]
#[ignore = "needs the local AWS emulator: helper_scripts/test.sh starts it"]
async fn an_instance_that_does_not_exist_is_a_named_final_error() {
    let f = Fixture::new().await;
    let mut json = f.event_json(BACKDOOR);
    json["detail"]["resource"]["instanceDetails"]["instanceId"] = "i-0fffffffffffffff0".into();
    let event = ec2_quarantine::domain::finding::parse_event(json).unwrap();
    let err = isolate(&f.ctx, &event).await.unwrap_err();
    assert_eq!(err.name(), ErrorName::InstanceNotFound, "{err}");
    assert!(!err.name().is_retryable());
    let err = snapshot(&f.ctx, &event).await.unwrap_err();
    assert_eq!(err.name(), ErrorName::InstanceNotFound, "{err}");
    assert!(
        f.security_groups_named(QUARANTINE_GROUP_NAME)
            .await
            .is_empty()
    );
}

#[tokio::test]
#[ignore = "needs the local AWS emulator: helper_scripts/test.sh starts it"]
async fn a_terminated_instance_is_skipped() {
    let f = Fixture::new().await;
    common::direct_ec2(&f.config)
        .terminate_instances()
        .instance_ids(&f.instance_id)
        .send()
        .await
        .unwrap();
    let out = isolate(&f.ctx, &f.event(BACKDOOR)).await.unwrap();
    match out {
        Outcome::Skipped { reason } => assert!(reason.contains("terminated"), "{reason}"),
        other => panic!("{other:?}"),
    }
    let groups = f
        .ec2
        .describe_security_groups()
        .filters(filter("tag-key", tags::ISOLATION_GROUP))
        .send()
        .await
        .unwrap();
    assert!(groups.security_groups().is_empty());
}

#[tokio::test]
#[ignore = "needs the local AWS emulator: helper_scripts/test.sh starts it"]
async fn a_service_linked_role_is_skipped() {
    let f = Fixture::new().await;
    f.iam
        .create_role()
        .role_name("AWSServiceRoleForExample")
        .path("/aws-service-role/example.amazonaws.com/")
        .assume_role_policy_document(
            r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"Service":"example.amazonaws.com"},"Action":"sts:AssumeRole"}]}"#,
        )
        .send()
        .await
        .unwrap();
    let mut json = f.event_json(EXFILTRATION);
    json["detail"]["resource"]["accessKeyDetails"]["userName"] = "AWSServiceRoleForExample".into();
    let event = ec2_quarantine::domain::finding::parse_event(json).unwrap();
    match contain_role(&f.ctx, &event).await.unwrap() {
        Outcome::Skipped { reason } => assert!(reason.contains("service-linked"), "{reason}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
#[ignore = "needs the local AWS emulator: helper_scripts/test.sh starts it"]
async fn a_spot_instance_keeps_its_evidence_without_termination_protection() {
    let f = Fixture::spot().await;
    assert_eq!(
        f.instance().await.instance_lifecycle().map(|l| l.as_str()),
        Some("spot"),
        "the fixture is a Spot instance"
    );
    let out = isolate(&f.ctx, &f.event(BACKDOOR)).await.unwrap();
    let Outcome::Done(report) = out else {
        panic!("expected done, got {out:?}")
    };
    assert!(!report.termination_protection);
    assert!(
        report.warnings.iter().any(|w| w.contains("Spot")),
        "{:?}",
        report.warnings
    );
    assert_eq!(report.interfaces.len(), 2, "both interfaces isolated");
    assert_eq!(
        report.volumes_kept_on_termination.len(),
        2,
        "the other evidence protections are still applied"
    );
    let shutdown = f
        .ec2
        .describe_instance_attribute()
        .instance_id(&f.instance_id)
        .attribute(InstanceAttributeName::InstanceInitiatedShutdownBehavior)
        .send()
        .await
        .unwrap();
    assert_eq!(
        shutdown
            .instance_initiated_shutdown_behavior()
            .and_then(|a| a.value()),
        Some("stop")
    );
}

#[tokio::test]
#[ignore = "needs the local AWS emulator: helper_scripts/test.sh starts it"]
async fn a_stopped_instance_gets_the_quarantine_profile_by_disassociate_and_associate() {
    let f = Fixture::new().await;
    // Stopped outside the code under test (the proxy counts StopInstances as destructive).
    let direct = common::direct_ec2(&f.config);
    direct
        .stop_instances()
        .instance_ids(&f.instance_id)
        .send()
        .await
        .unwrap();
    let out = contain_role(&f.ctx, &f.event(EXFILTRATION)).await.unwrap();
    let Outcome::Done(report) = out else {
        panic!("expected done, got {out:?}")
    };
    let swap = report.instance_profile.expect("swapped");
    assert_eq!(swap.change, Change::Applied);
    assert_eq!(
        swap.previous_profile_arn.as_deref(),
        Some(f.profile_arn.as_str())
    );
    let association = ec2_quarantine::aws::profile::association(&f.ec2, &f.instance_id)
        .await
        .unwrap()
        .expect("associated");
    assert!(
        ec2_quarantine::aws::profile::is_quarantine(ec2_quarantine::aws::profile::arn(
            &association
        )),
        "{association:?}"
    );
}

/// Tags the instance with `n` tags of the owner's.
async fn owner_tags(f: &Fixture, n: usize) {
    let mut request = f.ec2.create_tags().resources(&f.instance_id);
    for i in 0..n {
        request = request.tags(tags::new(format!("owner-tag-{i}"), "x"));
    }
    request.send().await.unwrap();
}

/// 48 tags of the owner's on an instance with tags in its metadata (the fixture's): the two
/// marker tags fit EC2's 50, the record is in the case, and release restores the instance.
/// Under the strict layer, which refuses a 51st tag and keys with `/` as AWS does.
#[tokio::test]
#[ignore = "needs the local AWS emulator: helper_scripts/test.sh starts it"]
async fn an_instance_with_48_tags_is_contained_and_released() {
    let f = Fixture::new().await;
    owner_tags(&f, 48).await;
    let before = f.interface_groups().await;
    let event = f.event(BACKDOOR);
    let out = isolate(&f.ctx, &event).await.unwrap();
    let Outcome::Done(report) = out else {
        panic!("expected done, got {out:?}")
    };
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
    assert!(report.termination_protection);
    let role = contain_role(&f.ctx, &event).await.unwrap();
    assert_eq!(role.status(), "done", "{role:?}");
    let snapshots = snapshot(&f.ctx, &event).await.unwrap();
    assert_eq!(snapshots.status(), "done", "{snapshots:?}");
    let tags = f.tags().await;
    assert_eq!(
        tags.len(),
        50,
        "48 of the owner's and the two markers: {tags:?}"
    );

    let released = ec2_quarantine::steps::release::release(&f.ctx, &common::release_request(&f))
        .await
        .unwrap();
    assert_eq!(released.status(), "done", "{released:?}");
    assert_eq!(f.interface_groups().await, before);
    let tags = f.tags().await;
    assert_eq!(tags.len(), 48, "the markers are gone, the owner's kept");
    assert!(f.case_in(&f.ctx).await.is_none(), "no open case any more");
}

/// 50 tags of the owner's: the markers do not fit. That is reported, and never holds
/// containment back; the case holds the record, so release restores all the same.
#[tokio::test]
#[ignore = "needs the local AWS emulator: helper_scripts/test.sh starts it"]
async fn a_full_tag_quota_is_reported_and_never_holds_containment_back() {
    let f = Fixture::new().await;
    owner_tags(&f, 50).await;
    let before = f.interface_groups().await;
    let out = isolate(&f.ctx, &f.event(BACKDOOR)).await.unwrap();
    let Outcome::Done(report) = out else {
        panic!("expected done, got {out:?}")
    };
    assert!(
        report.warnings.iter().any(|w| w.contains("marker tags")),
        "{:?}",
        report.warnings
    );
    let quarantine = &report.quarantine_groups[0].group_id;
    for (eni, groups) in f.interface_groups().await {
        assert_eq!(
            &groups,
            std::slice::from_ref(quarantine),
            "{eni} isolated all the same"
        );
    }
    assert!(report.termination_protection);
    let role = contain_role(&f.ctx, &f.event(BACKDOOR)).await.unwrap();
    assert_eq!(role.status(), "done", "{role:?}");
    let snapshots = snapshot(&f.ctx, &f.event(BACKDOOR)).await.unwrap();
    assert_eq!(snapshots.status(), "done", "{snapshots:?}");
    let released = ec2_quarantine::steps::release::release(&f.ctx, &common::release_request(&f))
        .await
        .unwrap();
    assert_eq!(released.status(), "done", "{released:?}");
    assert_eq!(f.interface_groups().await, before);
}

/// The instance profile the case recorded as the one the instance had.
async fn recorded_profile(f: &Fixture) -> Option<String> {
    f.case().await.previous.into_iter().find_map(|p| match p {
        Previous::Profile { profile_arn } => Some(profile_arn),
        _ => None,
    })
}

/// The evidence copied to a forensic account, pass by pass as the workflow runs the step: the
/// first pass shares each snapshot of the case's set with that account alone and copies it
/// there, encrypted with the forensic key and tagged with its source; the next finds the copies
/// by that tag and follows them until they complete; a later pass creates nothing more.
#[tokio::test]
#[ignore = "needs the local AWS emulator: helper_scripts/test.sh starts it"]
async fn the_evidence_is_copied_to_the_forensic_account_once() {
    use ec2_quarantine::domain::forensic::ForensicAccount;
    use ec2_quarantine::steps::evidence_copy::{CopyState, SOURCE_SNAPSHOT_TAG, copy_evidence};
    let f = Fixture::new().await;
    let forensic_account = common::fresh_account_id();
    let key = format!(
        "arn:aws:kms:{}:{forensic_account}:key/1234abcd-12ab-34cd-56ef-1234567890ab",
        common::REGION
    );
    let forensic = ForensicAccount::from_lookup(|name| match name {
        "FORENSIC_ACCOUNT_ID" => Some(forensic_account.clone()),
        "FORENSIC_KMS_KEY_ARN" => Some(key.clone()),
        _ => None,
    })
    .unwrap()
    .unwrap();
    let Outcome::Done(taken) = snapshot(&f.ctx, &f.event(EXFILTRATION)).await.unwrap() else {
        panic!("snapshots expected")
    };
    let sources: BTreeSet<String> = taken
        .snapshots
        .iter()
        .map(|s| s.snapshot_id.clone())
        .collect();
    let pass = |n: u32| {
        let mut payload = f.event_json(EXFILTRATION);
        payload["pass"] = n.into();
        copy_evidence(&f.ctx, Some(&forensic), payload)
    };

    let first = pass(0).await.unwrap();
    assert!(!first.finished, "{first:?}");
    assert_eq!((first.next_pass, first.wait_seconds), (1, 300));
    let Outcome::Done(report) = &first.outcome else {
        panic!("copies requested: {first:?}")
    };
    assert_eq!(report.forensic_account, forensic_account);
    assert_eq!(
        report
            .copies
            .iter()
            .map(|c| c.source_snapshot_id.clone())
            .collect::<BTreeSet<_>>(),
        sources
    );
    assert!(
        report
            .copies
            .iter()
            .all(|c| c.state == CopyState::Copying && c.copy_snapshot_id.is_some()),
        "{report:?}"
    );

    // Each source may now be used by the forensic account, and by no one else.
    for source in &sources {
        let shared = f
            .ec2
            .describe_snapshot_attribute()
            .snapshot_id(source)
            .attribute(aws_sdk_ec2::types::SnapshotAttributeName::CreateVolumePermission)
            .send()
            .await
            .unwrap();
        let who: Vec<_> = shared
            .create_volume_permissions()
            .iter()
            .map(|p| p.user_id().map(str::to_owned))
            .collect();
        assert_eq!(who, vec![Some(forensic_account.clone())], "{source}");
    }

    // moto's copies complete at once: the next pass reports them completed, and that is all.
    let second = pass(1).await.unwrap();
    assert!(second.finished, "{second:?}");
    let Outcome::AlreadyDone(report) = &second.outcome else {
        panic!("copies followed: {second:?}")
    };
    assert!(
        report
            .copies
            .iter()
            .all(|c| c.state == CopyState::Completed),
        "{report:?}"
    );
    let third = pass(2).await.unwrap();
    assert!(
        matches!(third.outcome, Outcome::AlreadyDone(_)),
        "{third:?}"
    );

    // In the forensic account: one copy per source, encrypted with the forensic key, tagged.
    let there = aws_sdk_ec2::Client::new(&common::config_in(&forensic_account).await);
    let copies = there
        .describe_snapshots()
        .owner_ids("self")
        // moto lists AMI snapshots as the caller's own: the copies are selected by the tool's tag.
        .filters(common::filter("tag-key", SOURCE_SNAPSHOT_TAG))
        .send()
        .await
        .unwrap();
    let copies = copies.snapshots();
    assert_eq!(copies.len(), sources.len(), "{} copies", copies.len());
    for copy in copies {
        assert_eq!(
            (copy.encrypted(), copy.kms_key_id()),
            (Some(true), Some(key.as_str())),
            "{copy:?}"
        );
        let source = copy
            .tags()
            .iter()
            .find(|t| t.key() == Some(SOURCE_SNAPSHOT_TAG))
            .and_then(|t| t.value());
        assert!(source.is_some_and(|s| sources.contains(s)), "{copy:?}");
    }
    // The case records each copy beside its source.
    let recorder = ec2_quarantine::case::Recorder {
        store: f.ctx.cases().clone(),
        handle: ec2_quarantine::case::CaseHandle {
            case_id: f.case().await.case_id,
            claim: "reader".into(),
            opened_at: String::new(),
        },
    };
    let recorded = recorder.created("evidence-copy").await.unwrap();
    assert_eq!(recorded.len(), sources.len(), "{recorded:?}");
    assert!(
        recorded
            .iter()
            .all(|r| sources.contains(r.split(' ').next().unwrap())),
        "{recorded:?}"
    );
}
