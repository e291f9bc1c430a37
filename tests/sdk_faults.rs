//! What the emulator cannot do: AWS answering with throttling, denials and 5xx. The steps run
//! on mocked SDK clients; each test checks the named outcome and that the rest of the step
//! still did its work.

use aws_sdk_ec2::error::ErrorMetadata;
use aws_sdk_ec2::operation::create_snapshots::CreateSnapshotsError;
use aws_sdk_ec2::operation::describe_iam_instance_profile_associations::DescribeIamInstanceProfileAssociationsOutput;
use aws_sdk_ec2::operation::describe_instance_attribute::DescribeInstanceAttributeOutput;
use aws_sdk_ec2::operation::describe_instances::DescribeInstancesOutput;
use aws_sdk_ec2::operation::describe_network_interfaces::DescribeNetworkInterfacesOutput;
use aws_sdk_ec2::operation::describe_security_groups::DescribeSecurityGroupsOutput;
use aws_sdk_ec2::operation::describe_snapshots::DescribeSnapshotsOutput;
use aws_sdk_ec2::operation::modify_instance_attribute::{
    ModifyInstanceAttributeError, ModifyInstanceAttributeOutput,
};
use aws_sdk_ec2::operation::modify_network_interface_attribute::{
    ModifyNetworkInterfaceAttributeError, ModifyNetworkInterfaceAttributeOutput,
};
use aws_sdk_ec2::types::{
    AttributeBooleanValue, AttributeValue, EbsInstanceBlockDevice, GroupIdentifier, Instance,
    InstanceBlockDeviceMapping, InstanceNetworkInterface, InstanceState, InstanceStateName,
    IpPermission, IpRange, Ipv6Range, NetworkInterface, Reservation, SecurityGroup,
};
use aws_sdk_ec2::{Client as Ec2, operation::create_tags::CreateTagsOutput};
use aws_sdk_iam::Client as Iam;
use aws_sdk_iam::operation::attach_role_policy::AttachRolePolicyError;
use aws_sdk_iam::operation::get_policy::GetPolicyOutput;
use aws_sdk_iam::operation::get_role::GetRoleOutput;
use aws_sdk_iam::operation::get_role_policy::GetRolePolicyError;
use aws_sdk_iam::operation::list_attached_role_policies::ListAttachedRolePoliciesOutput;
use aws_sdk_iam::operation::list_instance_profiles_for_role::ListInstanceProfilesForRoleOutput;
use aws_sdk_iam::operation::put_role_policy::PutRolePolicyOutput;
use aws_sdk_iam::operation::tag_role::TagRoleOutput;
use aws_sdk_iam::types::Role;
use aws_smithy_mocks::{RuleMode, mock, mock_client};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::http::StatusCode;
use aws_smithy_types::body::SdkBody;
use ec2_quarantine::domain::finding::{Target, parse_event, resolve};
use ec2_quarantine::steps::isolate::isolate_instance;
use ec2_quarantine::steps::role::contain_instance_role;
use ec2_quarantine::steps::snapshot::snapshot_instance;
use ec2_quarantine::{Clients, ErrorName};

const INSTANCE: &str = "i-0123456789abcdef0";
const VPC: &str = "vpc-0123456789abcdef0";
const QUARANTINE: &str = "sg-0aaaaaaaaaaaaaaa0";
const TRANSIT: &str = "sg-0ccccccccccccccc0";

fn target() -> Target {
    let event = parse_event(serde_json::json!({
        "detail-type": "GuardDuty Finding", "source": "aws.guardduty",
        "detail": {
            "id": "f1", "accountId": "123456789012", "region": "us-east-1",
            "type": "UnauthorizedAccess:IAMUser/InstanceCredentialExfiltration.OutsideAWS",
            "resource": {"resourceType": "AccessKey", "accessKeyDetails": {
                "principalId": format!("AROAEXAMPLE:{INSTANCE}"), "userName": "web-role"}}
        }
    }))
    .unwrap();
    resolve(&event).unwrap().contain().unwrap()
}

fn denied(code: &str) -> ErrorMetadata {
    ErrorMetadata::builder()
        .code(code)
        .message("You are not authorized to perform this operation.")
        .build()
}

fn throttled() -> ErrorMetadata {
    ErrorMetadata::builder()
        .code("RequestLimitExceeded")
        .message("Request limit exceeded.")
        .build()
}

fn instance() -> DescribeInstancesOutput {
    let eni = |id: &str| {
        InstanceNetworkInterface::builder()
            .network_interface_id(id)
            .vpc_id(VPC)
            .groups(
                GroupIdentifier::builder()
                    .group_id("sg-0bbbbbbbbbbbbbbb0")
                    .group_name("web")
                    .build(),
            )
            .build()
    };
    let volume = |device: &str, id: &str| {
        InstanceBlockDeviceMapping::builder()
            .device_name(device)
            .ebs(EbsInstanceBlockDevice::builder().volume_id(id).build())
            .build()
    };
    DescribeInstancesOutput::builder()
        .reservations(
            Reservation::builder()
                .instances(
                    Instance::builder()
                        .instance_id(INSTANCE)
                        .vpc_id(VPC)
                        .state(
                            InstanceState::builder()
                                .name(InstanceStateName::Running)
                                .build(),
                        )
                        .network_interfaces(eni("eni-0000000000000000a"))
                        .network_interfaces(eni("eni-0000000000000000b"))
                        .block_device_mappings(volume("/dev/xvda", "vol-0000000000000000a"))
                        .block_device_mappings(volume("/dev/sdf", "vol-0000000000000000b"))
                        .build(),
                )
                .build(),
        )
        .build()
}

fn quarantine_group() -> DescribeSecurityGroupsOutput {
    DescribeSecurityGroupsOutput::builder()
        .security_groups(
            SecurityGroup::builder()
                .group_id(QUARANTINE)
                .vpc_id(VPC)
                .build(),
        )
        .build()
}

/// The groups the mocked EC2 knows: the quarantine group, empty, and the transit group, open.
fn known_groups() -> aws_smithy_mocks::Rule {
    mock!(Ec2::describe_security_groups).then_compute_output(|input| {
        // The lookup by the transit group's tag (`tag:<key>` = true).
        let transit = input
            .filters()
            .iter()
            .any(|f| f.name() == Some("tag:ec2-quarantine:untrack-group"));
        if !transit {
            return quarantine_group();
        }
        let all = IpPermission::builder()
            .ip_protocol("-1")
            .ip_ranges(IpRange::builder().cidr_ip("0.0.0.0/0").build())
            .ipv6_ranges(Ipv6Range::builder().cidr_ipv6("::/0").build())
            .build();
        DescribeSecurityGroupsOutput::builder()
            .security_groups(
                SecurityGroup::builder()
                    .group_id(TRANSIT)
                    .vpc_id(VPC)
                    .ip_permissions(all.clone())
                    .ip_permissions_egress(all)
                    .build(),
            )
            .build()
    })
}

/// DescribeNetworkInterfaces: the instance's interfaces, `managed` of them requester-managed.
fn interfaces_managed(managed: &'static [&'static str]) -> aws_smithy_mocks::Rule {
    mock!(Ec2::describe_network_interfaces).then_output(move || {
        DescribeNetworkInterfacesOutput::builder()
            .set_network_interfaces(Some(
                managed
                    .iter()
                    .map(|id| {
                        NetworkInterface::builder()
                            .network_interface_id(*id)
                            .requester_managed(true)
                            .build()
                    })
                    .collect(),
            ))
            .build()
    })
}

/// DescribeInstanceAttribute: not protected, shutdown stops (what the record reads first).
fn attributes() -> aws_smithy_mocks::Rule {
    mock!(Ec2::describe_instance_attribute).then_output(|| {
        DescribeInstanceAttributeOutput::builder()
            .disable_api_termination(AttributeBooleanValue::builder().value(false).build())
            .instance_initiated_shutdown_behavior(AttributeValue::builder().value("stop").build())
            .build()
    })
}

fn clients(ec2: Ec2, iam: Iam) -> Clients {
    let config = aws_config::SdkConfig::builder()
        .behavior_version(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .build();
    let mut c = Clients::new(&config, Default::default());
    c.ec2 = ec2;
    c.iam = iam;
    c
}

fn no_iam() -> Iam {
    mock_client!(aws_sdk_iam, RuleMode::MatchAny, &[])
}

#[tokio::test]
async fn denied_termination_protection_does_not_hold_isolation_back() {
    let describe = mock!(Ec2::describe_instances).then_output(instance);
    let groups = known_groups();
    let tags = mock!(Ec2::create_tags).then_output(|| CreateTagsOutput::builder().build());
    let moves = mock!(Ec2::modify_network_interface_attribute)
        .match_requests(|r| r.groups() == [QUARANTINE])
        .then_output(|| ModifyNetworkInterfaceAttributeOutput::builder().build());
    let transit_moves = mock!(Ec2::modify_network_interface_attribute)
        .match_requests(|r| r.groups() == [TRANSIT])
        .then_output(|| ModifyNetworkInterfaceAttributeOutput::builder().build());
    let protect = mock!(Ec2::modify_instance_attribute)
        .then_error(|| ModifyInstanceAttributeError::generic(denied("UnauthorizedOperation")));
    let ec2 = mock_client!(
        aws_sdk_ec2,
        RuleMode::MatchAny,
        &[
            &describe,
            &groups,
            &tags,
            &moves,
            &transit_moves,
            &protect,
            &interfaces_managed(&[]),
            &attributes()
        ]
    );

    let err = isolate_instance(&clients(ec2, no_iam()), &target(), None)
        .await
        .unwrap_err();
    assert_eq!(err.name(), ErrorName::ContainmentIncomplete, "{err}");
    assert_eq!(moves.num_calls(), 2, "both interfaces were still isolated");
    assert_eq!(
        transit_moves.num_calls(),
        2,
        "each through the transit group first"
    );
    let message = err.to_string();
    assert!(
        message.contains("eni-0000000000000000a isolated"),
        "{message}"
    );
    assert!(
        message.contains("eni-0000000000000000b isolated"),
        "{message}"
    );
    assert!(
        message.contains(
            "termination protection: ec2:ModifyInstanceAttribute was denied (UnauthorizedOperation)"
        ),
        "{message}"
    );
}

#[tokio::test]
async fn a_requester_managed_interface_is_reported_and_the_others_isolated() {
    let describe = mock!(Ec2::describe_instances).then_output(instance);
    let groups = known_groups();
    let tags = mock!(Ec2::create_tags).then_output(|| CreateTagsOutput::builder().build());
    let moves = mock!(Ec2::modify_network_interface_attribute)
        .match_requests(|r| r.network_interface_id() == Some("eni-0000000000000000a"))
        .then_output(|| ModifyNetworkInterfaceAttributeOutput::builder().build());
    let protect = mock!(Ec2::modify_instance_attribute)
        .then_output(|| ModifyInstanceAttributeOutput::builder().build());
    // No rule lets eni-...b move: a call for it would fail the step.
    let ec2 = mock_client!(
        aws_sdk_ec2,
        RuleMode::MatchAny,
        &[
            &describe,
            &groups,
            &tags,
            &moves,
            &protect,
            &interfaces_managed(&["eni-0000000000000000b"]),
            &attributes()
        ]
    );

    let outcome = isolate_instance(&clients(ec2, no_iam()), &target(), None)
        .await
        .unwrap();
    let report = outcome.report().expect("isolated");
    assert_eq!(moves.num_calls(), 2, "eni-...a: transit, then quarantine");
    assert_eq!(report.interfaces.len(), 1);
    assert_eq!(report.interfaces[0].interface_id, "eni-0000000000000000a");
    assert_eq!(report.skipped_interfaces.len(), 1);
    assert_eq!(
        report.skipped_interfaces[0].interface_id,
        "eni-0000000000000000b"
    );
    assert!(
        report.skipped_interfaces[0]
            .reason
            .contains("requester-managed")
    );
}

#[tokio::test]
async fn a_throttled_interface_makes_the_step_retryable_and_the_other_is_isolated() {
    let describe = mock!(Ec2::describe_instances).then_output(instance);
    let groups = known_groups();
    let tags = mock!(Ec2::create_tags).then_output(|| CreateTagsOutput::builder().build());
    let throttled_move = mock!(Ec2::modify_network_interface_attribute)
        .match_requests(|r| r.network_interface_id() == Some("eni-0000000000000000b"))
        .then_error(|| ModifyNetworkInterfaceAttributeError::generic(throttled()));
    let other_move = mock!(Ec2::modify_network_interface_attribute)
        .then_output(|| ModifyNetworkInterfaceAttributeOutput::builder().build());
    let protect = mock!(Ec2::modify_instance_attribute)
        .then_output(|| ModifyInstanceAttributeOutput::builder().build());
    let ec2 = mock_client!(
        aws_sdk_ec2,
        RuleMode::MatchAny,
        &[
            &describe,
            &groups,
            &tags,
            &throttled_move,
            &other_move,
            &protect,
            &interfaces_managed(&[]),
            &attributes()
        ]
    );

    let err = isolate_instance(&clients(ec2, no_iam()), &target(), None)
        .await
        .unwrap_err();
    assert_eq!(err.name(), ErrorName::TransientAwsError, "{err}");
    assert!(err.name().is_retryable());
    assert_eq!(
        other_move.num_calls(),
        2,
        "the other interface: transit, then quarantine"
    );
    assert_eq!(
        protect.num_calls(),
        2,
        "termination protection and shutdown behaviour"
    );
    assert!(err.to_string().contains("interface eni-0000000000000000b (NOT isolated: left in its previous groups): ec2:ModifyNetworkInterfaceAttribute failed transiently (RequestLimitExceeded)"), "{err}");
}

#[tokio::test]
async fn throttled_create_snapshots_is_retryable() {
    let describe = mock!(Ec2::describe_instances).then_output(instance);
    let none =
        mock!(Ec2::describe_snapshots).then_output(|| DescribeSnapshotsOutput::builder().build());
    let create =
        mock!(Ec2::create_snapshots).then_error(|| CreateSnapshotsError::generic(throttled()));
    let ec2 = mock_client!(
        aws_sdk_ec2,
        RuleMode::MatchAny,
        &[&describe, &none, &create]
    );

    let err = snapshot_instance(&clients(ec2, no_iam()), &target())
        .await
        .unwrap_err();
    assert_eq!(err.name(), ErrorName::TransientAwsError, "{err}");
    assert_eq!(err.aws_code(), Some("RequestLimitExceeded"));
}

#[tokio::test]
async fn a_5xx_without_an_error_code_is_retryable() {
    let describe = mock!(Ec2::describe_instances).then_http_response(|| {
        HttpResponse::new(
            StatusCode::try_from(503).unwrap(),
            SdkBody::from("Service Unavailable"),
        )
    });
    // The managed-interface lookup runs alongside the instance read.
    let managed = interfaces_managed(&[]);
    let ec2 = mock_client!(aws_sdk_ec2, RuleMode::MatchAny, &[&describe, &managed]);
    let err = isolate_instance(&clients(ec2, no_iam()), &target(), None)
        .await
        .unwrap_err();
    assert_eq!(err.name(), ErrorName::TransientAwsError, "{err}");
}

#[tokio::test]
async fn a_denied_attach_still_revokes_older_sessions_and_says_which_failed() {
    let get_role = mock!(Iam::get_role).then_output(|| {
        GetRoleOutput::builder()
            .role(
                Role::builder()
                    .role_name("web-role")
                    .path("/")
                    .role_id("AROAEXAMPLE")
                    .arn("arn:aws:iam::123456789012:role/web-role")
                    .create_date(aws_smithy_types::DateTime::from_secs(0))
                    .build()
                    .unwrap(),
            )
            .build()
    });
    let get_policy = mock!(Iam::get_policy).then_output(|| {
        GetPolicyOutput::builder()
            .policy(
                aws_sdk_iam::types::Policy::builder()
                    .default_version_id("v1")
                    .build(),
            )
            .build()
    });
    let deny_all = mock!(Iam::get_policy_version).then_output(|| {
        aws_sdk_iam::operation::get_policy_version::GetPolicyVersionOutput::builder()
            .policy_version(
                aws_sdk_iam::types::PolicyVersion::builder()
                    .document(ec2_quarantine::steps::role::deny_all_document())
                    .build(),
            )
            .build()
    });
    let attached = mock!(Iam::list_attached_role_policies)
        .then_output(|| ListAttachedRolePoliciesOutput::builder().build());
    let attach = mock!(Iam::attach_role_policy)
        .then_error(|| AttachRolePolicyError::generic(denied("AccessDenied")));
    let no_inline = mock!(Iam::get_role_policy).then_error(|| {
        GetRolePolicyError::generic(ErrorMetadata::builder().code("NoSuchEntity").build())
    });
    let put = mock!(Iam::put_role_policy).then_output(|| PutRolePolicyOutput::builder().build());
    let profiles = mock!(Iam::list_instance_profiles_for_role).then_output(|| {
        ListInstanceProfilesForRoleOutput::builder()
            .set_instance_profiles(Some(vec![]))
            .build()
            .unwrap()
    });
    let iam = mock_client!(
        aws_sdk_iam,
        RuleMode::MatchAny,
        &[
            &get_role,
            &get_policy,
            &deny_all,
            &attached,
            &attach,
            &no_inline,
            &put,
            &profiles,
            &mock!(Iam::tag_role).then_output(|| TagRoleOutput::builder().build())
        ]
    );
    // The instance has no profile association: there is no profile to replace.
    let no_association = mock!(Ec2::describe_iam_instance_profile_associations)
        .then_output(|| DescribeIamInstanceProfileAssociationsOutput::builder().build());
    let tags = mock!(Ec2::create_tags).then_output(|| CreateTagsOutput::builder().build());
    // The instance is read beside the association lookup (its state chooses the calls).
    let describe = mock!(Ec2::describe_instances).then_output(instance);
    let ec2 = mock_client!(
        aws_sdk_ec2,
        RuleMode::MatchAny,
        &[&no_association, &tags, &describe]
    );

    let err = contain_instance_role(&clients(ec2, iam), &target())
        .await
        .unwrap_err();
    assert_eq!(err.name(), ErrorName::ContainmentIncomplete, "{err}");
    assert_eq!(put.num_calls(), 1, "older sessions were still revoked");
    let message = err.to_string();
    assert!(
        message.contains("older sessions of web-role revoked"),
        "{message}"
    );
    assert!(
        message.contains("DenyAll policy: iam:AttachRolePolicy was denied (AccessDenied)"),
        "{message}"
    );
}
