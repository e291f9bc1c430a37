//! The whole life of a containment against the emulator: triage, out of service (Auto Scaling,
//! target groups, Classic Load Balancers), dry run, a second finding, and release back to the
//! state before containment.

mod common;

use std::collections::BTreeMap;

use aws_sdk_ec2::types::InstanceAttributeName;
use common::{Fixture, access_key, filter, inject_error, record_outcome};
use ec2_quarantine::case::Previous;
use ec2_quarantine::domain::outcome::Check;
use ec2_quarantine::domain::settings::{AutoScalingAction, RoleAction, Settings};
use ec2_quarantine::steps::deregister::{GroupStatus, deregister};
use ec2_quarantine::steps::isolate::isolate;
use ec2_quarantine::steps::release::{ReleaseRequest, release};
use ec2_quarantine::steps::role::contain_role;
use ec2_quarantine::steps::snapshot::snapshot;
use ec2_quarantine::steps::triage::{Decision, triage};
use ec2_quarantine::{Ctx, Outcome};
use serde_json::{Value, json};

const BACKDOOR: &str = "instance-backdoor.json";
const EXFILTRATION: &str = "credential-exfiltration.json";
const GROUP: &str = "web-asg";
const CLASSIC: &str = "web-classic";

/// The fixture's instance in an Auto Scaling group (minimum 0), a target group (instance
/// target, port 80) and a Classic Load Balancer. Returns the target group's ARN.
async fn in_service(f: &Fixture) -> String {
    let asg = aws_sdk_autoscaling::Client::new(&f.config);
    asg.create_launch_configuration()
        .launch_configuration_name("web-lc")
        .image_id("ami-1e749f67")
        .instance_type("t3.micro")
        .send()
        .await
        .unwrap();
    asg.create_auto_scaling_group()
        .auto_scaling_group_name(GROUP)
        .launch_configuration_name("web-lc")
        .min_size(0)
        .max_size(3)
        .desired_capacity(0)
        .vpc_zone_identifier(&f.subnet_id)
        .send()
        .await
        .unwrap();
    asg.attach_instances()
        .auto_scaling_group_name(GROUP)
        .instance_ids(&f.instance_id)
        .send()
        .await
        .unwrap();
    use aws_sdk_elasticloadbalancingv2::types::TargetTypeEnum;
    let tg = f
        .target_group_with(
            "web-tg",
            &f.vpc_id,
            TargetTypeEnum::Instance,
            &f.instance_id,
            80,
        )
        .await;
    // The same private address in another VPC (overlapping CIDR) is another server: its
    // target group must be left as it is. And an IP target group of the instance's own VPC.
    let address = f.instance().await.network_interfaces()[0]
        .private_ip_address()
        .unwrap()
        .to_owned();
    let other_vpc = f
        .ec2
        .create_vpc()
        .cidr_block("10.0.0.0/16")
        .send()
        .await
        .unwrap()
        .vpc
        .unwrap()
        .vpc_id
        .unwrap();
    for (name, vpc) in [
        ("other-vpc-ip", other_vpc.as_str()),
        ("own-vpc-ip", f.vpc_id.as_str()),
    ] {
        f.target_group_with(name, vpc, TargetTypeEnum::Ip, &address, 8080)
            .await;
    }
    let elb = aws_sdk_elasticloadbalancing::Client::new(&f.config);
    elb.create_load_balancer()
        .load_balancer_name(CLASSIC)
        .listeners(
            aws_sdk_elasticloadbalancing::types::Listener::builder()
                .protocol("HTTP")
                .load_balancer_port(80)
                .instance_port(80)
                .build()
                .unwrap(),
        )
        .availability_zones("us-east-1a")
        .send()
        .await
        .unwrap();
    elb.register_instances_with_load_balancer()
        .load_balancer_name(CLASSIC)
        .instances(
            aws_sdk_elasticloadbalancing::types::Instance::builder()
                .instance_id(&f.instance_id)
                .build(),
        )
        .send()
        .await
        .unwrap();
    tg
}

/// The target ids registered with the target group of that name.
async fn targets_named(f: &Fixture, name: &str) -> Vec<String> {
    let elbv2 = aws_sdk_elasticloadbalancingv2::Client::new(&f.config);
    let arn = elbv2
        .describe_target_groups()
        .names(name)
        .send()
        .await
        .unwrap()
        .target_groups()[0]
        .target_group_arn()
        .unwrap()
        .to_owned();
    elbv2
        .describe_target_health()
        .target_group_arn(arn)
        .send()
        .await
        .unwrap()
        .target_health_descriptions()
        .iter()
        .filter_map(|d| d.target()?.id().map(str::to_owned))
        .collect()
}

/// Everything containment may change, read from the emulator.
async fn state(f: &Fixture, tg: Option<&str>) -> Value {
    let inst = f.instance().await;
    let attribute = |name: InstanceAttributeName| {
        f.ec2
            .describe_instance_attribute()
            .instance_id(&f.instance_id)
            .attribute(name)
            .send()
    };
    let termination = attribute(InstanceAttributeName::DisableApiTermination)
        .await
        .unwrap()
        .disable_api_termination()
        .and_then(|a| a.value());
    let shutdown = attribute(InstanceAttributeName::InstanceInitiatedShutdownBehavior)
        .await
        .unwrap()
        .instance_initiated_shutdown_behavior()
        .and_then(|a| a.value())
        .map(str::to_owned);
    let volumes: BTreeMap<String, Option<bool>> = inst
        .block_device_mappings()
        .iter()
        .map(|m| {
            (
                m.device_name().unwrap().to_owned(),
                m.ebs().and_then(|e| e.delete_on_termination()),
            )
        })
        .collect();
    let profile = f
        .ec2
        .describe_iam_instance_profile_associations()
        .filters(filter("instance-id", &f.instance_id))
        .filters(filter("state", "associated"))
        .send()
        .await
        .unwrap()
        .iam_instance_profile_associations()
        .first()
        .and_then(|a| a.iam_instance_profile())
        .and_then(|p| p.arn())
        .map(str::to_owned);
    let role_tags: Vec<String> = f
        .iam
        .list_role_tags()
        .role_name(&f.role_name)
        .send()
        .await
        .unwrap()
        .tags()
        .iter()
        .map(|t| t.key().to_owned())
        .collect();
    let asg = aws_sdk_autoscaling::Client::new(&f.config);
    let group = asg
        .describe_auto_scaling_groups()
        .auto_scaling_group_names(GROUP)
        .send()
        .await
        .unwrap();
    let group = group.auto_scaling_groups().first().map(|g| {
        json!({
            "desired": g.desired_capacity(),
            "instances": g.instances().iter().map(|i| json!([i.instance_id(), i.lifecycle_state().map(|s| s.as_str())])).collect::<Vec<_>>(),
        })
    });
    let targets = match tg {
        Some(arn) => {
            let out = aws_sdk_elasticloadbalancingv2::Client::new(&f.config)
                .describe_target_health()
                .target_group_arn(arn)
                .send()
                .await
                .unwrap();
            out.target_health_descriptions()
                .iter()
                .filter_map(|d| d.target())
                .map(|t| json!([t.id(), t.port()]))
                .collect()
        }
        None => vec![],
    };
    let classic: Vec<String> = aws_sdk_elasticloadbalancing::Client::new(&f.config)
        .describe_load_balancers()
        .send()
        .await
        .unwrap()
        .load_balancer_descriptions()
        .iter()
        .flat_map(|lb| lb.instances().iter().filter_map(|i| i.instance_id()))
        .map(str::to_owned)
        .collect();
    json!({
        "interfaces": f.interface_groups().await,
        "termination_protection": termination,
        "shutdown": shutdown,
        "volumes_delete_on_termination": volumes,
        "instance_profile": profile,
        "role_attached": f.attached_policies().await,
        "role_inline": f.inline_policies().await,
        "role_tags": role_tags,
        "auto_scaling": group,
        "targets": targets,
        "classic": classic,
        "instance_tags": f.tags().await,
    })
}

/// The planned calls of a dry-run outcome, with EC2's answer to each.
fn plan_of<T: std::fmt::Debug>(o: Outcome<T>) -> Vec<(String, Check)> {
    match o {
        Outcome::DryRun { actions } => actions.into_iter().map(|a| (a.action, a.check)).collect(),
        other => panic!("not a dry run: {other:?}"),
    }
}

fn ctx_with(f: &Fixture, settings: Settings) -> Ctx {
    Ctx::from_config(f.config.clone()).with_settings(settings)
}

fn request(f: &Fixture) -> ReleaseRequest {
    common::release_request(f)
}

/// The four containment steps, as the state machine's Parallel runs them.
async fn contain(ctx: &Ctx, f: &Fixture, event_file: &str) {
    let event = f.event(event_file);
    let t = triage(ctx, &event).await.unwrap();
    assert_eq!(t.decision, Decision::Contain, "{t:?}");
    let (i, d, s, r) = futures::join!(
        isolate(ctx, &event),
        deregister(ctx, &event),
        snapshot(ctx, &event),
        contain_role(ctx, &event)
    );
    for (name, status) in [
        ("isolate", i.map(|o| o.status())),
        ("deregister", d.map(|o| o.status())),
        ("snapshot", s.map(|o| o.status())),
        ("role", r.map(|o| o.status())),
    ] {
        let status = status.unwrap_or_else(|e| panic!("{name}: {e}"));
        // Out of service has nothing to do for an instance in no group and behind no balancer.
        let nothing = name == "deregister" && status == "skipped";
        assert!(
            matches!(status, "done" | "already_done") || nothing,
            "{name}: {status}"
        );
    }
}

#[tokio::test]
#[ignore = "needs the local AWS emulator: helper_scripts/test.sh starts it"]
async fn out_of_service_then_release_restores_the_state_before_containment() {
    let f = Fixture::new().await;
    let tg = in_service(&f).await;
    let before = state(&f, Some(&tg)).await;
    let ctx = ctx_with(&f, Settings::default());

    contain(&ctx, &f, BACKDOOR).await;
    let contained = state(&f, Some(&tg)).await;
    assert_eq!(contained["auto_scaling"]["instances"][0][1], "Standby");
    assert_eq!(contained["auto_scaling"]["desired"], 0, "no replacement");
    assert_eq!(contained["targets"], json!([]), "out of the target group");
    assert_eq!(
        contained["classic"],
        json!([]),
        "out of the Classic Load Balancer"
    );
    assert_eq!(contained["termination_protection"], true);
    assert!(
        contained["instance_profile"]
            .as_str()
            .unwrap()
            .ends_with("/ec2-quarantine-quarantined")
    );
    let case = f.case().await;
    assert!(case.previous.contains(&Previous::AutoScaling {
        group: GROUP.into(),
        mode: "standby".into(),
        capacity_decremented: true
    }));
    assert!(case.previous.iter().any(|p| matches!(p,
        Previous::Target { target_group_arn, port: Some(80), .. } if target_group_arn.contains(":targetgroup/web-tg/"))));
    assert!(case.previous.contains(&Previous::ClassicLoadBalancer {
        name: CLASSIC.into()
    }));
    assert!(case.previous.contains(&Previous::Role {
        role_name: f.role_name.clone()
    }));
    let tags = contained["instance_tags"].as_object().unwrap();
    let ours: Vec<&String> = tags
        .keys()
        .filter(|k| k.starts_with("ec2-quarantine:"))
        .collect();
    assert_eq!(
        ours,
        ["ec2-quarantine:case", "ec2-quarantine:contained-at"],
        "markers only"
    );
    // The address in the instance's own VPC left its IP target group; the same address in the
    // other VPC is another server and stays.
    assert_eq!(targets_named(&f, "own-vpc-ip").await, Vec::<String>::new());
    assert_eq!(targets_named(&f, "other-vpc-ip").await.len(), 1);

    // A retried step finds its work done and changes nothing.
    let again = deregister(&ctx, &f.event(BACKDOOR)).await.unwrap();
    let Outcome::AlreadyDone(report) = again else {
        panic!("{again:?}");
    };
    assert_eq!(
        report.auto_scaling.unwrap().status,
        GroupStatus::AlreadyInPlace
    );
    assert_eq!(state(&f, Some(&tg)).await, contained);

    let snapshots = f.snapshots().await.len();
    let released = release(&ctx, &request(&f)).await.unwrap();
    assert_eq!(released.status(), "done", "{released:?}");
    let mut after = state(&f, Some(&tg)).await;
    assert_eq!(
        after["role_inline"],
        json!(["ec2-quarantine-revoke-older-sessions"]),
        "credentials issued before containment stay denied"
    );
    after["role_inline"] = before["role_inline"].clone();
    assert_eq!(after, before, "release restores every recorded change");
    assert_eq!(f.snapshots().await.len(), snapshots, "snapshots are kept");
    record_outcome("contained");
}

#[tokio::test]
#[ignore = "needs the local AWS emulator: helper_scripts/test.sh starts it"]
async fn at_the_groups_minimum_the_instance_is_detached_and_the_report_says_a_replacement_comes() {
    let f = Fixture::new().await;
    in_service(&f).await;
    let ctx = ctx_with(
        &f,
        Settings {
            auto_scaling_action: AutoScalingAction::Detach,
            ..Settings::default()
        },
    );
    // AWS refuses to lower the desired capacity below the minimum (moto does not check).
    let key = access_key(&f.config).await;
    inject_error(&key, "autoscaling:DetachInstances", "ValidationError", 400);

    let outcome = deregister(&ctx, &f.event(BACKDOOR)).await.unwrap();
    let report = outcome.report().expect("done").clone();
    let group = report.auto_scaling.unwrap();
    assert_eq!(group.status, GroupStatus::Applied);
    assert!(!group.capacity_decremented);
    assert!(f.case().await.previous.contains(&Previous::AutoScaling {
        group: GROUP.into(),
        mode: "detach".into(),
        capacity_decremented: false
    }));
    let asg = aws_sdk_autoscaling::Client::new(&f.config);
    let described = asg
        .describe_auto_scaling_instances()
        .instance_ids(&f.instance_id)
        .send()
        .await
        .unwrap();
    assert!(described.auto_scaling_instances().is_empty(), "detached");

    let released = release(&ctx, &request(&f)).await.unwrap();
    assert_eq!(released.status(), "done");
    let described = asg
        .describe_auto_scaling_instances()
        .instance_ids(&f.instance_id)
        .send()
        .await
        .unwrap();
    assert_eq!(
        described.auto_scaling_instances().len(),
        1,
        "attached again"
    );
}

#[tokio::test]
#[ignore = "needs the local AWS emulator: helper_scripts/test.sh starts it"]
async fn a_dry_run_reports_every_step_and_changes_nothing() {
    let f = Fixture::new().await;
    let tg = in_service(&f).await;
    let before = state(&f, Some(&tg)).await;
    let snapshots = f.snapshots().await.len();
    let ctx = ctx_with(
        &f,
        Settings {
            dry_run: true,
            ..Settings::default()
        },
    );
    let event = f.event(BACKDOOR);
    let t = triage(&ctx, &event).await.unwrap();
    assert!(t.dry_run);
    let mut planned = Vec::new();
    planned.extend(plan_of(isolate(&ctx, &event).await.unwrap()));
    planned.extend(plan_of(deregister(&ctx, &event).await.unwrap()));
    planned.extend(plan_of(snapshot(&ctx, &event).await.unwrap()));
    planned.extend(plan_of(contain_role(&ctx, &event).await.unwrap()));
    let names: Vec<&str> = planned.iter().map(|(a, _)| a.as_str()).collect();
    for expected in [
        "ec2:CreateSecurityGroup",
        "ec2:ModifyNetworkInterfaceAttribute",
        "ec2:ModifyInstanceAttribute",
        "autoscaling:EnterStandby",
        "elasticloadbalancing:DeregisterTargets",
        "elasticloadbalancing:DeregisterInstancesFromLoadBalancer",
        "ec2:CreateSnapshots",
        "iam:AttachRolePolicy",
        "iam:PutRolePolicy",
        "ec2:ReplaceIamInstanceProfileAssociation",
    ] {
        assert!(
            names.contains(&expected),
            "{expected} not planned: {names:?}"
        );
    }
    // EC2's own dry run checked the EC2 calls it can check.
    assert!(
        planned
            .iter()
            .any(|(a, c)| a == "ec2:CreateSnapshots" && *c == Check::Permitted)
    );
    assert_eq!(
        state(&f, Some(&tg)).await,
        before,
        "the emulator's state is unchanged"
    );
    assert_eq!(f.snapshots().await.len(), snapshots);
}

#[tokio::test]
#[ignore = "needs the local AWS emulator: helper_scripts/test.sh starts it"]
async fn a_second_finding_for_a_contained_instance_creates_nothing_new() {
    let f = Fixture::new().await;
    let ctx = ctx_with(&f, Settings::default());
    contain(&ctx, &f, BACKDOOR).await;
    let first_snapshots: Vec<String> = f
        .snapshots()
        .await
        .iter()
        .map(|s| s.snapshot_id().unwrap().to_owned())
        .collect();
    let contained = state(&f, None).await;

    // Another finding, with another id, for the same instance.
    let mut second = f.event_json(EXFILTRATION);
    second["detail"]["id"] = "b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6e7".into();
    let second = ec2_quarantine::domain::finding::parse_event(second).unwrap();
    let first_case = f.case().await.case_id;
    let t = triage(&ctx, &second).await.unwrap();
    assert_eq!(t.decision, Decision::Contain);
    assert_eq!(
        t.targets[0].already_contained_by.as_deref(),
        Some(first_case.as_str())
    );
    assert_eq!(
        t.targets[0].case.as_ref().map(|c| c.case_id.as_str()),
        Some(first_case.as_str()),
        "the finding joins the case"
    );
    assert_eq!(
        f.case().await.findings.len(),
        2,
        "the case names both findings"
    );
    assert!(t.reason.contains("already contained"), "{}", t.reason);
    assert_eq!(
        snapshot(&ctx, &second).await.unwrap().status(),
        "already_done"
    );
    assert_eq!(
        isolate(&ctx, &second).await.unwrap().status(),
        "already_done"
    );
    let now: Vec<String> = f
        .snapshots()
        .await
        .iter()
        .map(|s| s.snapshot_id().unwrap().to_owned())
        .collect();
    assert_eq!(now, first_snapshots, "no second snapshot set");
    assert_eq!(state(&f, None).await, contained);
}

#[tokio::test]
#[ignore = "needs the local AWS emulator: helper_scripts/test.sh starts it"]
async fn exempt_instances_and_probed_targets_are_only_reported() {
    let f = Fixture::new().await;
    let ctx = ctx_with(&f, Settings::default());
    let mut probe = f.event_json(BACKDOOR);
    probe["detail"]["type"] = "Recon:EC2/PortProbeUnprotectedPort".into();
    probe["detail"]["service"]["resourceRole"] = "TARGET".into();
    let probe = ec2_quarantine::domain::finding::parse_event(probe).unwrap();
    let t = triage(&ctx, &probe).await.unwrap();
    assert_eq!(t.decision, Decision::NotifyOnly);
    assert!(t.reason.contains("target of the activity"), "{}", t.reason);
    assert_eq!(
        t.side,
        Some(ec2_quarantine::domain::evidence::Side::Targeted)
    );

    f.ec2
        .create_tags()
        .resources(&f.instance_id)
        .tags(ec2_quarantine::aws::tags::new(
            "ec2-quarantine-exempt",
            "load test",
        ))
        .send()
        .await
        .unwrap();
    let t = triage(&ctx, &f.event(BACKDOOR)).await.unwrap();
    assert_eq!(t.decision, Decision::NotifyOnly);
    assert!(t.reason.contains("ec2-quarantine-exempt"), "{}", t.reason);
}

#[tokio::test]
#[ignore = "needs the local AWS emulator: helper_scripts/test.sh starts it"]
async fn the_role_action_is_configurable_and_release_keeps_a_role_another_contained_instance_holds()
{
    let f = Fixture::new().await;
    let revoke_only = ctx_with(
        &f,
        Settings {
            role_action: RoleAction::RevokeSessions,
            ..Settings::default()
        },
    );
    let r = contain_role(&revoke_only, &f.event(EXFILTRATION))
        .await
        .unwrap();
    assert_eq!(r.status(), "done");
    assert!(
        f.attached_policies()
            .await
            .iter()
            .all(|p| !p.contains("DenyAll"))
    );
    assert_eq!(
        f.inline_policies().await,
        ["ec2-quarantine-revoke-older-sessions"]
    );

    // A second instance with the same role is contained too (deny-all, opted in for a shared
    // role): two holds.
    let sibling = f.launch_sibling().await;
    let ctx = ctx_with(
        &f,
        Settings {
            deny_all_shared_roles: true,
            ..Settings::default()
        },
    );
    let mut event = f.event_json(EXFILTRATION);
    event["detail"]["resource"]["accessKeyDetails"]["principalId"] =
        format!("AROAEXAMPLE:{sibling}").into();
    event["detail"]["id"] = "c3d4e5f6a7b8c9d0e1f2a3b4c5d6e7f8".into();
    let event = ec2_quarantine::domain::finding::parse_event(event).unwrap();
    contain_role(&ctx, &event).await.unwrap();
    assert!(
        f.attached_policies()
            .await
            .iter()
            .any(|p| p.contains("DenyAll"))
    );

    // Releasing the first keeps the role contained: the sibling still holds it.
    let released = release(&ctx, &request(&f)).await.unwrap();
    let Outcome::Done(report) = released else {
        panic!("{released:?}");
    };
    let role = report.role.unwrap();
    assert!(!role.policies_removed);
    assert_eq!(role.still_held_by, [sibling]);
    assert!(
        f.attached_policies()
            .await
            .iter()
            .any(|p| p.contains("DenyAll"))
    );

    let other = Fixture::new().await;
    let none = ctx_with(
        &other,
        Settings {
            role_action: RoleAction::None,
            ..Settings::default()
        },
    );
    contain_role(&none, &other.event(EXFILTRATION))
        .await
        .unwrap();
    assert!(
        other
            .attached_policies()
            .await
            .iter()
            .all(|p| !p.contains("DenyAll"))
    );
    assert!(other.inline_policies().await.is_empty());
    assert!(
        other.case().await.previous.contains(&Previous::Profile {
            profile_arn: other.profile_arn.clone()
        }),
        "the profile is swapped in every mode"
    );
}

#[tokio::test]
#[ignore = "needs the local AWS emulator: helper_scripts/test.sh starts it"]
async fn release_dates_the_deny_of_the_instances_credentials_and_keeps_it() {
    let f = Fixture::new().await;
    f.launch_sibling().await;
    let ctx = ctx_with(&f, Settings::default());
    let r = contain_role(&ctx, &f.event(EXFILTRATION)).await.unwrap();
    assert_eq!(
        r.report().unwrap().role_action,
        RoleAction::RevokeInstance,
        "a shared role"
    );
    let name = format!("ec2-quarantine-revoke-{}", f.instance_id);
    let released = release(&ctx, &request(&f)).await.unwrap();
    assert_eq!(released.status(), "done", "{released:?}");
    assert_eq!(
        f.inline_policies().await,
        std::slice::from_ref(&name),
        "the deny stays"
    );
    let doc = f.inline_policy(&name).await;
    let condition = &doc["Statement"][0]["Condition"];
    assert!(
        condition["DateLessThan"]["aws:TokenIssueTime"].is_string(),
        "credentials issued after the release work again: {doc}"
    );
    assert!(condition["StringEquals"]["ec2:SourceInstanceARN"].is_string());
}

/// Everything an attacker allowed `ec2:CreateTags` and `iam:TagRole` can write, written between
/// containment and release: the records earlier versions kept in tags (an admin profile as the
/// previous profile, a production target group, another Auto Scaling group, other groups for
/// the interfaces, holds on the role), and the markers overwritten. Release reads only the case:
/// the outcome is the one without tampering, and nothing the tags name is touched.
#[tokio::test]
#[ignore = "needs the local AWS emulator: helper_scripts/test.sh starts it"]
async fn release_after_tampering_with_every_tag_restores_the_true_state() {
    let f = Fixture::new().await;
    let tg = in_service(&f).await;
    let before = state(&f, Some(&tg)).await;
    let ctx = ctx_with(&f, Settings::default());
    contain(&ctx, &f, BACKDOOR).await;
    let case_id = f.case().await.case_id;

    // What the attacker points at: an admin profile, a production target group, a group
    // that allows everything in.
    let admin_profile = f
        .iam
        .create_instance_profile()
        .instance_profile_name("admin-profile")
        .send()
        .await
        .unwrap()
        .instance_profile
        .unwrap()
        .arn;
    use aws_sdk_elasticloadbalancingv2::types::TargetTypeEnum;
    let healthy = f.launch_sibling().await;
    let prod = f
        .target_group_with(
            "prod-tg",
            &f.vpc_id,
            TargetTypeEnum::Instance,
            &healthy,
            443,
        )
        .await;
    let prod_targets_before = targets_named(&f, "prod-tg").await;
    let open_group = f.ssh_group.clone();
    let prod_key = prod
        .rsplit_once(":targetgroup/")
        .unwrap()
        .1
        .replace('/', ":");
    let mut forged = vec![
        (
            "ec2-quarantine:case".to_owned(),
            "i-0aaaaaaaaaaaaaaaa-20200101T000000Z".to_owned(),
        ),
        ("ec2-quarantine:contained-at".to_owned(), "never".to_owned()),
        ("ec2-quarantine:finding-id".to_owned(), "forged".to_owned()),
        (
            "ec2-quarantine:previous-instance-profile".to_owned(),
            admin_profile.clone(),
        ),
        (
            "ec2-quarantine:role".to_owned(),
            "some-other-role".to_owned(),
        ),
        (
            "ec2-quarantine:auto-scaling-group".to_owned(),
            "detach,replaced,prod-asg".to_owned(),
        ),
        (
            "ec2-quarantine:classic-load-balancers".to_owned(),
            "prod-classic".to_owned(),
        ),
        (
            format!("ec2-quarantine:target:{prod_key}"),
            format!("{} 443", f.instance_id),
        ),
        (
            "ec2-quarantine:previous-attributes".to_owned(),
            "termination-protection=false,shutdown=terminate".to_owned(),
        ),
        (
            "ec2-quarantine:delete-on-termination".to_owned(),
            "/dev/xvda,/dev/sdf".to_owned(),
        ),
    ];
    forged.extend(f.interfaces.iter().map(|eni| {
        (
            format!("ec2-quarantine:previous-groups:{eni}"),
            open_group.clone(),
        )
    }));
    let mut tagging = f.ec2.create_tags().resources(&f.instance_id);
    for (k, v) in &forged {
        tagging = tagging.tags(ec2_quarantine::aws::tags::new(k, v));
    }
    tagging.send().await.unwrap();
    for key in [
        "ec2-quarantine:held-by:i-0bbbbbbbbbbbbbbbb",
        "ec2-quarantine:held-by:i-0ccccccccccccccc",
    ] {
        f.iam
            .tag_role()
            .role_name(&f.role_name)
            .tags(
                aws_sdk_iam::types::Tag::builder()
                    .key(key)
                    .value("forged")
                    .build()
                    .unwrap(),
            )
            .send()
            .await
            .unwrap();
    }

    let mut req = request(&f);
    req.release_credentials = true;
    let released = release(&ctx, &req).await.unwrap();
    let Outcome::Done(report) = released else {
        panic!("{released:?}");
    };
    assert_eq!(report.case_id, case_id, "the case, not the forged marker");
    assert!(
        report.role.as_ref().unwrap().policies_removed,
        "the forged holds count for nothing"
    );
    let mut after = state(&f, Some(&tg)).await;
    // The forged tags stay (release deletes only its two markers, by key): set them aside.
    let tags = after["instance_tags"].as_object_mut().unwrap();
    for (k, _) in &forged {
        if k != "ec2-quarantine:case" && k != "ec2-quarantine:contained-at" {
            assert!(tags.remove(k).is_some(), "{k}");
        }
    }
    after["role_tags"] = before["role_tags"].clone();
    assert_eq!(after, before, "exactly the state before containment");
    assert_ne!(
        after["instance_profile"].as_str(),
        Some(admin_profile.as_str()),
        "never the admin profile"
    );
    assert_eq!(
        targets_named(&f, "prod-tg").await,
        prod_targets_before,
        "never the production target group"
    );
    assert!(f.case_in(&ctx).await.is_none(), "the case is released");
    record_outcome("contained");
}
