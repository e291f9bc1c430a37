//! Findings from member accounts: the responder runs in the administrator account and acts in
//! the member account through the member role, and nowhere else.

mod common;

use aws_sdk_sts::operation::assume_role::AssumeRoleError;
use aws_smithy_mocks::{RuleMode, mock, mock_client};
use common::{Fixture, account_config, filter};
use ec2_quarantine::aws::context::OrgSettings;
use ec2_quarantine::steps::isolate::{QUARANTINE_GROUP_NAME, isolate};
use ec2_quarantine::steps::role::contain_role;
use ec2_quarantine::steps::snapshot::snapshot;
use ec2_quarantine::{Ctx, ErrorName, Outcome, aws::tags};

const EXFILTRATION: &str = "credential-exfiltration.json";

/// The responder in a fresh administrator account, set up for the member role.
async fn administrator(
    org: impl FnOnce(&str) -> OrgSettings,
) -> (Ctx, aws_sdk_ec2::Client, String) {
    let (config, account) = account_config().await;
    common::create_case_table(&config).await;
    let ec2 = aws_sdk_ec2::Client::new(&config);
    let ctx = Ctx::new(config, org(&account));
    (ctx, ec2, account)
}

fn member_role(own: &str) -> OrgSettings {
    OrgSettings {
        responder_account: Some(own.to_owned()),
        member_role_name: Some("ec2-quarantine-member".into()),
        external_id: Some("a-shared-secret".into()),
        ..OrgSettings::default()
    }
}

#[tokio::test]
#[ignore = "needs the local AWS emulator: helper_scripts/test.sh starts it"]
async fn a_member_account_instance_is_contained_from_the_administrator_account() {
    let member = Fixture::new().await;
    let (ctx, admin_ec2, admin) = administrator(member_role).await;
    assert_ne!(admin, member.account);
    let event = member.event(EXFILTRATION);

    let isolated = isolate(&ctx, &event).await.unwrap();
    assert_eq!(isolated.status(), "done", "{isolated:?}");
    let qsg = isolated.report().unwrap().quarantine_groups[0]
        .group_id
        .clone();
    for groups in member.interface_groups().await.values() {
        assert_eq!(groups, &vec![qsg.clone()]);
    }
    assert_eq!(snapshot(&ctx, &event).await.unwrap().status(), "done");
    assert_eq!(member.snapshots().await.len(), 2);
    let role = contain_role(&ctx, &event).await.unwrap();
    assert_eq!(
        role.report().unwrap().deny_all_policy_arn,
        format!(
            "arn:aws:iam::{}:policy/ec2-quarantine/ec2-quarantine-DenyAll",
            member.account
        )
    );
    assert!(
        member
            .inline_policies()
            .await
            .contains(&"ec2-quarantine-revoke-older-sessions".to_owned())
    );

    // The case is the responder's, in its own table: the member account holds none.
    let case = member
        .case_in(&ctx)
        .await
        .expect("a case in the responder's table");
    assert_eq!(case.account_id, member.account);
    assert!(
        member.case_in(&member.ctx).await.is_none(),
        "nothing recorded in the member account"
    );

    // The administrator account itself is untouched.
    let admin_groups = admin_ec2
        .describe_security_groups()
        .filters(filter("tag-key", tags::ISOLATION_GROUP))
        .send()
        .await
        .unwrap();
    assert!(admin_groups.security_groups().is_empty());
    let admin_iam = aws_sdk_iam::Client::new(ctx.config());
    let policies = admin_iam
        .list_policies()
        .scope(aws_sdk_iam::types::PolicyScopeType::Local)
        .send()
        .await
        .unwrap();
    assert!(policies.policies().is_empty(), "{:?}", policies.policies());
}

#[tokio::test]
#[ignore = "needs the local AWS emulator: helper_scripts/test.sh starts it"]
async fn an_account_outside_the_allow_list_is_only_notified() {
    let member = Fixture::new().await;
    let (ctx, _, _) = administrator(|own| OrgSettings {
        allow: vec!["000000000001".into()],
        ..member_role(own)
    })
    .await;
    let event = member.event(EXFILTRATION);
    match isolate(&ctx, &event).await.unwrap() {
        Outcome::Skipped { reason } => {
            assert!(
                reason.contains("not on the responder's allow-list"),
                "{reason}"
            )
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(snapshot(&ctx, &event).await.unwrap().status(), "skipped");
    assert_eq!(
        contain_role(&ctx, &event).await.unwrap().status(),
        "skipped"
    );
    assert!(
        member
            .security_groups_named(QUARANTINE_GROUP_NAME)
            .await
            .is_empty()
    );
    assert!(member.snapshots().await.is_empty());
    assert!(member.inline_policies().await.is_empty());
}

#[tokio::test]
#[ignore = "needs the local AWS emulator: helper_scripts/test.sh starts it"]
async fn a_denied_account_is_only_notified() {
    let member = Fixture::new().await;
    let account = member.account.clone();
    let (ctx, _, _) = administrator(|own| OrgSettings {
        deny: vec![account],
        ..member_role(own)
    })
    .await;
    match isolate(&ctx, &member.event(EXFILTRATION)).await.unwrap() {
        Outcome::Skipped { reason } => assert!(reason.contains("deny-list"), "{reason}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
#[ignore = "needs the local AWS emulator: helper_scripts/test.sh starts it"]
async fn a_member_role_that_cannot_be_assumed_is_a_named_error() {
    let member = Fixture::new().await;
    let (ctx, _, _) = administrator(member_role).await;
    // The emulator lets any role be assumed; AWS refuses a missing or untrusting one like this.
    let refuse = mock!(aws_sdk_sts::Client::assume_role).then_error(|| {
        AssumeRoleError::generic(
            aws_sdk_sts::error::ErrorMetadata::builder()
                .code("AccessDenied")
                .message("User is not authorized to perform: sts:AssumeRole on resource")
                .build(),
        )
    });
    let sts = mock_client!(aws_sdk_sts, RuleMode::MatchAny, &[&refuse]);
    let ctx = ctx.with_sts(sts);
    let err = isolate(&ctx, &member.event(EXFILTRATION))
        .await
        .unwrap_err();
    assert_eq!(err.name(), ErrorName::MemberRoleUnavailable, "{err}");
    assert!(!err.name().is_retryable());
    let text = err.to_string();
    assert!(
        text.contains(&format!(
            "arn:aws:iam::{}:role/ec2-quarantine-member",
            member.account
        )),
        "{text}"
    );
    assert!(
        !text.contains("a-shared-secret"),
        "the external id is not shown"
    );
    assert!(
        member
            .security_groups_named(QUARANTINE_GROUP_NAME)
            .await
            .is_empty()
    );
}
