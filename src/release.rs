//! Release: undoes a containment from what it recorded on the instance's tags, once a person has
//! finished the investigation. Started by hand with the instance id (never by a finding). It
//! restores each interface's groups, the instance's attributes and volume flags, its instance
//! profile, its Auto Scaling group membership and its load balancer registrations; it removes
//! the role's quarantine policies when no other contained instance holds them; then it removes
//! the instance's quarantine tags. Snapshots are evidence and are never touched.

use std::collections::BTreeMap;

use aws_sdk_ec2::types::{
    AttributeBooleanValue, AttributeValue, EbsInstanceBlockDeviceSpecification,
    IamInstanceProfileSpecification, Instance, InstanceBlockDeviceMappingSpecification,
};
use aws_sdk_elasticloadbalancingv2::types::TargetDescription;
use futures::future::join_all;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::context::{Clients, Ctx};
use crate::deregister::TargetRecord;
use crate::error::Error;
use crate::finding::{Scope, Target, is_instance_id};
use crate::outcome::Outcome;
use crate::role::{
    DENY_ALL_POLICY_NAME, REVOKE_SESSIONS_POLICY_NAME, deny_all_policy_arn,
    revoke_instance_document, revoke_instance_policy_name,
};
use crate::{instance, profile, tags};

/// What a person gives the release state machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReleaseRequest {
    pub instance_id: String,
    /// Default: the responder's own account.
    #[serde(default)]
    pub account_id: Option<String>,
    /// Default: the function's region.
    #[serde(default)]
    pub region: Option<String>,
    #[serde(default)]
    pub partition: Option<String>,
    /// Why the instance is released (shown in the notification).
    #[serde(default)]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct ReleaseReport {
    pub instance_id: String,
    /// The finding that contained it.
    pub finding_id: Option<String>,
    /// Interfaces given back their recorded groups.
    pub interfaces: BTreeMap<String, Vec<String>>,
    /// Termination protection and shutdown behaviour restored, as recorded.
    pub attributes: Option<String>,
    /// Devices whose volumes are again deleted with the instance.
    pub volumes_delete_on_termination: Vec<String>,
    /// The instance profile given back.
    pub instance_profile: Option<String>,
    pub role: Option<RoleRelease>,
    /// What was undone in the Auto Scaling group.
    pub auto_scaling: Option<String>,
    pub targets: Vec<TargetRecord>,
    pub classic_load_balancers: Vec<String>,
    pub tags_removed: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoleRelease {
    pub role_name: String,
    /// The DenyAll and session-revocation policies were removed from the role.
    pub policies_removed: bool,
    /// Other contained instances that still hold the role contained (its policies stay).
    pub still_held_by: Vec<String>,
}

/// Releases the instance a request names (the Lambda handler).
pub async fn release(ctx: &Ctx, request: &ReleaseRequest) -> Result<Outcome<ReleaseReport>, Error> {
    if !is_instance_id(&request.instance_id) {
        return Err(Error::InvalidEvent(format!(
            "{:?} is not an EC2 instance id",
            crate::finding::clip(&request.instance_id)
        )));
    }
    let account_id = request
        .account_id
        .clone()
        .or_else(|| ctx.org().responder_account.clone())
        .ok_or_else(|| {
            Error::InvalidEvent(
                "give account_id: the responder's own account is not configured".into(),
            )
        })?;
    let region = request
        .region
        .clone()
        .or_else(|| ctx.config().region().map(|r| r.to_string()))
        .ok_or_else(|| Error::InvalidEvent("give region: the function has none".into()))?;
    let target = Target {
        finding_id: "release".into(),
        finding_type: "release".into(),
        severity: 0.0,
        scope: Scope {
            account_id,
            region,
            partition: request.partition.clone().unwrap_or_else(|| "aws".into()),
        },
        instance_id: request.instance_id.clone(),
        role_name: None,
        instance_profile_arn: None,
        vpc_ids: Vec::new(),
    };
    if let Some(reason) = ctx.org().refusal(&target.scope.account_id) {
        return Ok(Outcome::skipped(reason));
    }
    let clients = ctx.clients(&target).await?;
    Box::pin(release_instance(&clients, &target)).await
}

#[tracing::instrument(skip_all, fields(instance_id = %target.instance_id))]
pub async fn release_instance(
    clients: &Clients,
    target: &Target,
) -> Result<Outcome<ReleaseReport>, Error> {
    let inst = instance::describe(&clients.ec2, target).await?;
    let ours: Vec<String> = inst
        .tags()
        .iter()
        .filter_map(|t| t.key())
        .filter(|k| k.starts_with(tags::PREFIX))
        .map(str::to_owned)
        .collect();
    if ours.is_empty() {
        return Ok(Outcome::skipped(
            "the instance carries no containment record: nothing to release",
        ));
    }
    let tag = |key: &str| tags::find(inst.tags(), key).map(str::to_owned);
    let mut report = ReleaseReport {
        instance_id: target.instance_id.clone(),
        finding_id: tag(tags::FINDING_ID),
        ..ReleaseReport::default()
    };

    let (interfaces, attributes, profile, role, group, targets, classic) = futures::join!(
        restore_interfaces(clients, &inst),
        restore_attributes(clients, &inst),
        restore_profile(clients, target, tag(tags::PREVIOUS_PROFILE)),
        release_role(clients, target, tag(tags::ROLE)),
        rejoin_group(clients, target, tag(tags::AUTO_SCALING_GROUP)),
        reregister_targets(clients, target, &inst),
        rejoin_classic(clients, target, tag(tags::CLASSIC_LOAD_BALANCERS)),
    );
    let mut done = Vec::new();
    let mut failed = Vec::new();
    let mut keep = |what: &str, r: Result<(), Error>| match r {
        Ok(()) => done.push(format!("{what} restored")),
        Err(e) => failed.push((what.to_owned(), e)),
    };
    keep("interfaces", interfaces.map(|i| report.interfaces = i));
    keep(
        "instance attributes",
        attributes.map(|(a, v)| {
            report.attributes = a;
            report.volumes_delete_on_termination = v;
        }),
    );
    keep(
        "instance profile",
        profile.map(|p| report.instance_profile = p),
    );
    keep("role", role.map(|r| report.role = r));
    keep("Auto Scaling group", group.map(|g| report.auto_scaling = g));
    keep("target groups", targets.map(|t| report.targets = t));
    keep(
        "classic load balancers",
        classic.map(|c| report.classic_load_balancers = c),
    );
    if !failed.is_empty() {
        // The record stays on the instance, so that release can be run again.
        for (what, err) in &failed {
            warn!(what, error = %err, "release action failed");
        }
        return Err(Error::Incomplete {
            step: "release",
            instance_id: target.instance_id.clone(),
            done,
            failed,
        });
    }

    // Last: the record. The tool's group tags on security groups and snapshots are kept.
    clients
        .ec2
        .delete_tags()
        .resources(&target.instance_id)
        .set_tags(Some(
            ours.iter()
                .map(|k| aws_sdk_ec2::types::Tag::builder().key(k).build())
                .collect(),
        ))
        .send()
        .await
        .map_err(|e| Error::from_sdk("ec2:DeleteTags", e))?;
    report.tags_removed = ours;
    info!(?report, "released");
    Ok(Outcome::Done(report))
}

async fn restore_interfaces(
    clients: &Clients,
    inst: &Instance,
) -> Result<BTreeMap<String, Vec<String>>, Error> {
    let moves = inst.network_interfaces().iter().filter_map(|eni| {
        let id = eni.network_interface_id()?;
        let recorded = crate::isolate::recorded_groups(inst, id);
        let current: Vec<&str> = eni.groups().iter().filter_map(|g| g.group_id()).collect();
        if recorded.is_empty() || current == recorded {
            return None;
        }
        Some(async move {
            clients
                .ec2
                .modify_network_interface_attribute()
                .network_interface_id(id)
                .set_groups(Some(recorded.clone()))
                .send()
                .await
                .map_err(|e| Error::from_sdk("ec2:ModifyNetworkInterfaceAttribute", e))?;
            Ok::<_, Error>((id.to_owned(), recorded))
        })
    });
    join_all(moves).await.into_iter().collect()
}

/// Termination protection, shutdown behaviour and DeleteOnTermination, as recorded.
async fn restore_attributes(
    clients: &Clients,
    inst: &Instance,
) -> Result<(Option<String>, Vec<String>), Error> {
    let id = inst.instance_id().unwrap_or_default();
    let ec2 = &clients.ec2;
    let recorded = tags::find(inst.tags(), tags::PREVIOUS_ATTRIBUTES);
    let field = |name: &str| {
        recorded?
            .split(',')
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .map(str::to_owned)
    };
    let mut requests = Vec::new();
    // Containment never sets termination protection on a Spot instance (EC2 refuses any change
    // of it there), so there is nothing to restore.
    let spot = inst.instance_lifecycle() == Some(&aws_sdk_ec2::types::InstanceLifecycleType::Spot);
    if let Some(v) = field("termination-protection").filter(|_| !spot) {
        requests.push(
            ec2.modify_instance_attribute()
                .instance_id(id)
                .disable_api_termination(
                    AttributeBooleanValue::builder().value(v == "true").build(),
                ),
        );
    }
    if let Some(v) = field("shutdown") {
        requests.push(
            ec2.modify_instance_attribute()
                .instance_id(id)
                .instance_initiated_shutdown_behavior(AttributeValue::builder().value(v).build()),
        );
    }
    let devices: Vec<String> = tags::find(inst.tags(), tags::DELETE_ON_TERMINATION)
        .unwrap_or_default()
        .split(',')
        .filter(|d| !d.is_empty())
        .map(str::to_owned)
        .collect();
    if !devices.is_empty() {
        requests.push(
            ec2.modify_instance_attribute()
                .instance_id(id)
                .set_block_device_mappings(Some(
                    devices
                        .iter()
                        .map(|d| {
                            InstanceBlockDeviceMappingSpecification::builder()
                                .device_name(d)
                                .ebs(
                                    EbsInstanceBlockDeviceSpecification::builder()
                                        .delete_on_termination(true)
                                        .build(),
                                )
                                .build()
                        })
                        .collect(),
                )),
        );
    }
    for answer in join_all(requests.into_iter().map(|r| r.send())).await {
        answer.map_err(|e| Error::from_sdk("ec2:ModifyInstanceAttribute", e))?;
    }
    Ok((recorded.map(str::to_owned), devices))
}

async fn restore_profile(
    clients: &Clients,
    target: &Target,
    previous: Option<String>,
) -> Result<Option<String>, Error> {
    let Some(previous) = previous.filter(|p| !p.is_empty()) else {
        return Ok(None);
    };
    let Some(association) = profile::association(&clients.ec2, &target.instance_id).await? else {
        return Ok(None);
    };
    // Only the tool's own swap is undone: a profile someone set since stays.
    if !profile::is_quarantine(profile::arn(&association)) {
        return Ok(None);
    }
    clients
        .ec2
        .replace_iam_instance_profile_association()
        .association_id(association.association_id().unwrap_or_default())
        .iam_instance_profile(
            IamInstanceProfileSpecification::builder()
                .arn(&previous)
                .build(),
        )
        .send()
        .await
        .map_err(|e| Error::from_sdk("ec2:ReplaceIamInstanceProfileAssociation", e))?;
    Ok(Some(previous))
}

/// Removes this instance's hold on the role; the last hold out removes the role's quarantine
/// policies.
async fn release_role(
    clients: &Clients,
    target: &Target,
    role_name: Option<String>,
) -> Result<Option<RoleRelease>, Error> {
    let Some(role_name) = role_name else {
        return Ok(None);
    };
    let iam = &clients.iam;
    date_instance_deny(clients, target, &role_name).await?;
    let hold = format!("{}{}", tags::ROLE_HOLD, target.instance_id);
    iam.untag_role()
        .role_name(&role_name)
        .tag_keys(&hold)
        .send()
        .await
        .map_err(|e| Error::from_sdk("iam:UntagRole", e))?;
    let listed = iam
        .list_role_tags()
        .role_name(&role_name)
        .send()
        .await
        .map_err(|e| Error::from_sdk("iam:ListRoleTags", e))?;
    let still_held_by: Vec<String> = listed
        .tags()
        .iter()
        .filter_map(|t| t.key().strip_prefix(tags::ROLE_HOLD))
        .map(str::to_owned)
        .collect();
    if !still_held_by.is_empty() {
        return Ok(Some(RoleRelease {
            role_name,
            policies_removed: false,
            still_held_by,
        }));
    }
    let gone_already = |r: Result<(), Error>| match r {
        Err(e) if e.aws_code() == Some("NoSuchEntity") => Ok(()),
        other => other,
    };
    let policy_arn = deny_all_policy_arn(&target.scope.partition, &target.scope.account_id);
    let (detached, deleted) = futures::join!(
        iam.detach_role_policy()
            .role_name(&role_name)
            .policy_arn(&policy_arn)
            .send(),
        iam.delete_role_policy()
            .role_name(&role_name)
            .policy_name(REVOKE_SESSIONS_POLICY_NAME)
            .send(),
    );
    gone_already(
        detached
            .map(|_| ())
            .map_err(|e| Error::from_sdk("iam:DetachRolePolicy", e)),
    )?;
    gone_already(
        deleted
            .map(|_| ())
            .map_err(|e| Error::from_sdk("iam:DeleteRolePolicy", e)),
    )?;
    info!(role = %role_name, policy = DENY_ALL_POLICY_NAME, "role's quarantine policies removed");
    Ok(Some(RoleRelease {
        role_name,
        policies_removed: true,
        still_held_by,
    }))
}

/// Dates the deny of the instance's own credentials (`revoke-instance`), if the role has one:
/// credentials issued from now on work, and the ones issued before (stolen copies included)
/// stay denied. The deny stays on the role.
async fn date_instance_deny(
    clients: &Clients,
    target: &Target,
    role_name: &str,
) -> Result<(), Error> {
    let iam = &clients.iam;
    let name = revoke_instance_policy_name(&target.instance_id);
    if crate::role_policy::inline_policy(iam, role_name, &name)
        .await?
        .is_none()
    {
        return Ok(());
    }
    let instance_arn = target.instance_arn();
    let cutoff = crate::now_rfc3339();
    iam.put_role_policy()
        .role_name(role_name)
        .policy_name(&name)
        .policy_document(revoke_instance_document(&instance_arn, Some(&cutoff)))
        .send()
        .await
        .map_err(|e| Error::from_sdk("iam:PutRolePolicy", e))?;
    info!(role = role_name, %cutoff, "the deny of the instance's credentials now ends at the release");
    Ok(())
}

async fn rejoin_group(
    clients: &Clients,
    target: &Target,
    recorded: Option<String>,
) -> Result<Option<String>, Error> {
    let Some(recorded) = recorded else {
        return Ok(None);
    };
    let mut parts = recorded.splitn(3, ',');
    let (Some(verb), Some(how), Some(group)) = (parts.next(), parts.next(), parts.next()) else {
        return Ok(Some(format!(
            "unreadable record {recorded:?}: left as it is"
        )));
    };
    let id = target.instance_id.as_str();
    let state = clients
        .autoscaling
        .describe_auto_scaling_instances()
        .instance_ids(id)
        .send()
        .await
        .map_err(|e| Error::from_sdk("autoscaling:DescribeAutoScalingInstances", e))?;
    let current = state.auto_scaling_instances().first();
    let note = if how == "decremented" {
        ""
    } else {
        "; the group had launched a replacement: lower its desired capacity if one instance more is not wanted"
    };
    match (verb, current.and_then(|c| c.lifecycle_state())) {
        ("standby", Some("Standby")) => {
            clients
                .autoscaling
                .exit_standby()
                .auto_scaling_group_name(group)
                .instance_ids(id)
                .send()
                .await
                .map_err(|e| Error::from_sdk("autoscaling:ExitStandby", e))?;
            Ok(Some(format!(
                "{group}: out of Standby, back in service{note}"
            )))
        }
        ("detach", None) => {
            clients
                .autoscaling
                .attach_instances()
                .auto_scaling_group_name(group)
                .instance_ids(id)
                .send()
                .await
                .map_err(|e| Error::from_sdk("autoscaling:AttachInstances", e))?;
            Ok(Some(format!("{group}: attached again{note}")))
        }
        (_, state) => Ok(Some(format!(
            "{group}: left as it is (the instance is {})",
            state.unwrap_or("in no group")
        ))),
    }
}

async fn reregister_targets(
    clients: &Clients,
    target: &Target,
    inst: &Instance,
) -> Result<Vec<TargetRecord>, Error> {
    let scope = &target.scope;
    let records: Vec<TargetRecord> = inst
        .tags()
        .iter()
        .filter_map(|t| Some((t.key()?.strip_prefix(tags::TARGET_GROUP)?, t.value()?)))
        .flat_map(|(suffix, value)| {
            let arn =
                tags::target_group_arn(suffix, &scope.partition, &scope.region, &scope.account_id);
            value
                .split(',')
                .filter_map(|pair| {
                    let mut it = pair.split(' ');
                    let id = it.next().filter(|s| !s.is_empty())?;
                    Some(TargetRecord {
                        target_group_arn: arn.clone(),
                        target_id: id.to_owned(),
                        port: it.next().and_then(|p| p.parse().ok()),
                    })
                })
                .collect::<Vec<_>>()
        })
        .collect();
    for answer in join_all(records.iter().map(|t| {
        clients
            .elbv2
            .register_targets()
            .target_group_arn(&t.target_group_arn)
            .targets(
                TargetDescription::builder()
                    .id(&t.target_id)
                    .set_port(t.port)
                    .build(),
            )
            .send()
    }))
    .await
    {
        answer.map_err(|e| Error::from_sdk("elasticloadbalancing:RegisterTargets", e))?;
    }
    Ok(records)
}

async fn rejoin_classic(
    clients: &Clients,
    target: &Target,
    recorded: Option<String>,
) -> Result<Vec<String>, Error> {
    let names: Vec<String> = recorded
        .unwrap_or_default()
        .split(',')
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
        .collect();
    for answer in join_all(names.iter().map(|lb| {
        clients
            .elb
            .register_instances_with_load_balancer()
            .load_balancer_name(lb)
            .instances(
                aws_sdk_elasticloadbalancing::types::Instance::builder()
                    .instance_id(&target.instance_id)
                    .build(),
            )
            .send()
    }))
    .await
    {
        answer.map_err(|e| {
            Error::from_sdk("elasticloadbalancing:RegisterInstancesWithLoadBalancer", e)
        })?;
    }
    Ok(names)
}
