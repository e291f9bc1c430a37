//! Release: undoes a containment from its case, once a person has finished the investigation.
//! Started by hand with the instance id (never by a finding). It reads only the case
//! ([`crate::case`]), never a tag: it checks that the case is the instance's open case, of its
//! account and region, then restores each interface's groups, the instance's attributes and
//! volume flags, its instance profile, its Auto Scaling group membership and its load balancer
//! registrations exactly as recorded; it removes the role's DenyAll when no other contained
//! instance holds the role. Credentials issued before containment stay denied unless the
//! request says `release_credentials`. Each attempt is recorded in the case; the case is then
//! marked released, so that a copy of its findings sent again contains nothing. Snapshots are
//! evidence and are never touched.

use std::collections::BTreeMap;

use aws_sdk_ec2::types::{
    AttributeBooleanValue, AttributeValue, EbsInstanceBlockDeviceSpecification,
    IamInstanceProfileSpecification, InstanceBlockDeviceMappingSpecification,
};
use aws_sdk_elasticloadbalancingv2::types::TargetDescription;
use futures::future::join_all;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::aws::context::{Clients, Ctx};
use crate::aws::{instance, profile, tags};
use crate::case::{Case, Previous, Store, is_case_id};
use crate::domain::finding::{InstanceRef, Resolution, Scope, is_instance_id};
use crate::domain::outcome::{Outcome, Tally};
use crate::error::Error;
use crate::steps::deregister::TargetRecord;
use crate::steps::role::{
    DENY_ALL_POLICY_NAME, REVOKE_SESSIONS_POLICY_NAME, deny_all_policy_arn,
    revoke_instance_document, revoke_instance_policy_name,
};

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
    /// The case to release; when given, it must be the instance's open case.
    #[serde(default)]
    pub case_id: Option<String>,
    /// Why the instance is released (shown in the notification and kept in the case).
    #[serde(default)]
    pub reason: Option<String>,
    /// Also lift the denies of credentials issued before containment (the role's session
    /// deny and the instance's credential deny). Off by default: stolen credentials stay dead.
    #[serde(default)]
    pub release_credentials: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct ReleaseReport {
    pub instance_id: String,
    /// The case released.
    #[serde(default)]
    pub case_id: String,
    /// The finding that opened the case.
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
    /// The marker tags removed from the instance.
    pub tags_removed: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoleRelease {
    pub role_name: String,
    /// The DenyAll policy was removed from the role.
    pub policies_removed: bool,
    /// Other contained instances that still hold the role contained (its policies stay).
    pub still_held_by: Vec<String>,
    /// The denies of credentials issued before containment were lifted too.
    #[serde(default)]
    pub credentials_released: bool,
}

/// Releases the instance a request names (the Lambda handler).
pub async fn release(ctx: &Ctx, request: &ReleaseRequest) -> Result<Outcome<ReleaseReport>, Error> {
    let ctx = &ctx.acting_as("release");
    let target = released_instance(ctx, request)?;
    if let Some(reason) = ctx.org().refusal(&target.scope.account_id) {
        return Ok(Outcome::skipped(reason));
    }
    if ctx.settings().dry_run {
        // A dry run contains nothing, so there is nothing of its own to release; and a release
        // run as a dry run (sam local invoke --parameter-overrides DryRun=true) must not undo a
        // real containment.
        return Ok(Outcome::skipped(
            "a dry run (DryRun=true) releases nothing: run the release workflow of the deployed stack",
        ));
    }
    let store = ctx.cases();
    let case = match Box::pin(open_case_of(store, &target, request)).await? {
        Resolution::Contain(case) => case,
        Resolution::Skip(reason) => return Ok(Outcome::skipped(reason)),
    };
    let clients = ctx
        .clients(&target.scope, &format!("release-{}", case.case_id))
        .await?;
    let scope = &target.scope;
    let case = match Box::pin(hold_case(store, case, scope)).await? {
        Resolution::Contain(case) => case,
        Resolution::Skip(reason) => return Ok(Outcome::skipped(reason)),
    };
    let released = Box::pin(release_case(&clients, store, &case, &target, request)).await;
    if released.is_err() {
        // The case stays open: findings join it again, and release can be run again.
        let _ = Box::pin(store.abort_release(&case, scope)).await;
    }
    released
}

/// The instance a release request names, each value checked before it reaches a request; the
/// account defaults to the responder's own, the region to the function's.
fn released_instance(ctx: &Ctx, request: &ReleaseRequest) -> Result<InstanceRef, Error> {
    if !is_instance_id(&request.instance_id) {
        return Err(Error::InvalidEvent(format!(
            "{:?} is not an EC2 instance id",
            crate::domain::finding::clip(&request.instance_id)
        )));
    }
    if let Some(id) = request.case_id.as_deref().filter(|id| !is_case_id(id)) {
        return Err(Error::InvalidEvent(format!(
            "{:?} is not a case id",
            crate::domain::finding::clip(id)
        )));
    }
    for (what, value, valid) in [
        (
            "account_id",
            request.account_id.as_deref(),
            crate::domain::finding::is_account_id as fn(&str) -> bool,
        ),
        (
            "region",
            request.region.as_deref(),
            crate::domain::finding::is_region,
        ),
        ("partition", request.partition.as_deref(), is_partition),
    ] {
        if let Some(v) = value.filter(|v| !valid(v)) {
            return Err(Error::InvalidEvent(format!(
                "{what} {:?} is not valid",
                crate::domain::finding::clip(v)
            )));
        }
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
    let target = InstanceRef {
        scope: Scope {
            account_id,
            region,
            partition: request.partition.clone().unwrap_or_else(|| "aws".into()),
        },
        instance_id: request.instance_id.clone(),
    };
    Ok(target)
}

/// The instance's open case, as the case table records it (never as a tag says): none is
/// nothing to release; one that is not the case the request names, or that records another
/// instance, is refused.
async fn open_case_of(
    store: &crate::case::Store,
    target: &InstanceRef,
    request: &ReleaseRequest,
) -> Result<Resolution<Case>, Error> {
    let Some((case_id, _)) = store.open_case(&target.scope, &target.instance_id).await? else {
        return Ok(Resolution::Skip(
            "the instance has no open case in the case table: nothing to release".into(),
        ));
    };
    if let Some(asked) = &request.case_id
        && *asked != case_id
    {
        return Err(Error::InvalidEvent(format!(
            "case {asked} is not the instance's open case ({case_id})"
        )));
    }
    let case = Box::pin(store.case(&case_id)).await?.ok_or_else(|| {
        Error::Misconfigured(format!("case {case_id} is named open but has no record"))
    })?;
    let scope = &target.scope;
    if case.instance_id != target.instance_id
        || case.account_id != scope.account_id
        || case.region != scope.region
    {
        return Err(Error::Misconfigured(format!(
            "case {case_id} records instance {} in {} {}, not {} in {} {}: nothing restored",
            case.instance_id,
            case.account_id,
            case.region,
            target.instance_id,
            scope.account_id,
            scope.region
        )));
    }
    Ok(Resolution::Contain(case))
}

/// Holds the case for the release: a finding arriving meanwhile is triaged again after it,
/// instead of joining a case being undone. Then nothing of the case may still be running (an
/// execution whose steps would contain again what release restores): a busy case lets the
/// hold go and asks for a retry.
async fn hold_case(
    store: &crate::case::Store,
    case: Case,
    scope: &Scope,
) -> Result<Resolution<Case>, Error> {
    let case_id = case.case_id.clone();
    if !Box::pin(store.begin_release(&case, scope)).await? {
        return Ok(Resolution::Skip(format!(
            "case {case_id} is no longer the instance's open case: nothing to release"
        )));
    }
    let case = match Box::pin(store.case(&case_id)).await {
        Ok(Some(case)) => case,
        Ok(None) => case,
        Err(err) => {
            let _ = Box::pin(store.abort_release(&case, scope)).await;
            return Err(err);
        }
    };
    if let Some(why) = case.busy() {
        let _ = Box::pin(store.abort_release(&case, scope)).await;
        return Err(Error::Transient {
            action: "dynamodb:Query",
            code: "CaseBusy".into(),
            message: format!(
                "case {case_id} may still be acting ({why}): release again once its execution is over"
            ),
            source: "case busy".into(),
        });
    }
    Ok(Resolution::Contain(case))
}

/// `aws`, `aws-cn`, `aws-us-gov` and the like.
fn is_partition(s: &str) -> bool {
    s.len() <= 16
        && s.starts_with("aws")
        && s.split('-')
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase()))
}

/// What a case recorded, sorted by what restores it.
#[derive(Default)]
struct Recorded {
    groups: BTreeMap<String, Vec<String>>,
    attributes: Option<(bool, String)>,
    devices: Vec<String>,
    profile: Option<String>,
    role: Option<String>,
    auto_scaling: Option<(String, String, bool)>,
    targets: Vec<TargetRecord>,
    classic: Vec<String>,
}

impl Recorded {
    fn of(case: &Case) -> Recorded {
        let mut r = Recorded::default();
        for p in &case.previous {
            match p.clone() {
                Previous::Groups {
                    interface_id,
                    groups,
                } => {
                    r.groups.insert(interface_id, groups);
                }
                Previous::Attributes {
                    termination_protection,
                    shutdown,
                } => r.attributes = Some((termination_protection, shutdown)),
                Previous::DeleteOnTermination { devices } => r.devices = devices,
                Previous::Profile { profile_arn } => r.profile = Some(profile_arn),
                Previous::Role { role_name } => r.role = Some(role_name),
                Previous::AutoScaling {
                    group,
                    mode,
                    capacity_decremented,
                } => r.auto_scaling = Some((group, mode, capacity_decremented)),
                Previous::Target {
                    target_group_arn,
                    target_id,
                    port,
                    availability_zone,
                } => r.targets.push(TargetRecord {
                    target_group_arn,
                    target_id,
                    port,
                    availability_zone,
                }),
                Previous::ClassicLoadBalancer { name } => r.classic.push(name),
            }
        }
        r
    }
}

#[tracing::instrument(skip_all, fields(instance_id = %target.instance_id, case_id = %case.case_id))]
pub async fn release_case(
    clients: &Clients,
    store: &Store,
    case: &Case,
    target: &InstanceRef,
    request: &ReleaseRequest,
) -> Result<Outcome<ReleaseReport>, Error> {
    let recorded = Recorded::of(case);
    let inst = instance::describe(&clients.ec2, &target.scope, &target.instance_id).await?;
    let mut report = ReleaseReport {
        instance_id: target.instance_id.clone(),
        case_id: case.case_id.clone(),
        finding_id: case.findings.first().map(|f| f.finding_id.clone()),
        ..ReleaseReport::default()
    };
    let spot = inst.instance_lifecycle() == Some(&aws_sdk_ec2::types::InstanceLifecycleType::Spot);
    let (interfaces, attributes, profile, role, group, targets, classic) = futures::join!(
        restore_interfaces(clients, &inst, &recorded.groups),
        restore_attributes(clients, target, &recorded, spot),
        restore_profile(clients, target, recorded.profile.clone()),
        release_role(
            clients,
            store,
            target,
            recorded.role.clone(),
            request.release_credentials
        ),
        rejoin_group(clients, target, recorded.auto_scaling.clone()),
        reregister_targets(clients, &recorded.targets),
        rejoin_classic(clients, target, &recorded.classic),
    );
    let mut tally = Tally::new("release", &target.instance_id);
    let mut keep = |what: &str, r: Result<(), Error>| {
        if tally.check(what, r).is_some() {
            tally.done(format!("{what} restored"));
        }
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
    Box::pin(store.record_release(
        &case.case_id,
        request.reason.as_deref(),
        tally.done_lines(),
        &tally.failure_lines(),
    ))
    .await?;
    // Any failure ends the step here: the case stays open, so that release can be run again.
    tally.finish()?;
    Box::pin(store.mark_released(case, &target.scope)).await?;
    // Last: the marker tags, by their keys (never read).
    let markers = [tags::CASE, tags::CONTAINED_AT];
    let removed = clients
        .ec2
        .delete_tags()
        .resources(&target.instance_id)
        .set_tags(Some(
            markers
                .iter()
                .map(|k| aws_sdk_ec2::types::Tag::builder().key(*k).build())
                .collect(),
        ))
        .send()
        .await;
    match removed {
        Ok(_) => report.tags_removed = markers.iter().map(|k| (*k).to_owned()).collect(),
        Err(e) => {
            warn!(error = %Error::from_sdk("ec2:DeleteTags", e), "marker tags left on the instance")
        }
    }
    info!(?report, "released");
    Ok(Outcome::Done(report))
}

async fn restore_interfaces(
    clients: &Clients,
    inst: &aws_sdk_ec2::types::Instance,
    recorded: &BTreeMap<String, Vec<String>>,
) -> Result<BTreeMap<String, Vec<String>>, Error> {
    let current: BTreeMap<&str, Vec<&str>> = inst
        .network_interfaces()
        .iter()
        .filter_map(|eni| {
            Some((
                eni.network_interface_id()?,
                eni.groups().iter().filter_map(|g| g.group_id()).collect(),
            ))
        })
        .collect();
    let moves = recorded.iter().filter_map(|(id, groups)| {
        if groups.is_empty() || current.get(id.as_str()).is_some_and(|c| c == groups) {
            return None;
        }
        Some(async move {
            clients
                .ec2
                .modify_network_interface_attribute()
                .network_interface_id(id)
                .set_groups(Some(groups.clone()))
                .send()
                .await
                .map_err(|e| Error::from_sdk("ec2:ModifyNetworkInterfaceAttribute", e))?;
            Ok::<_, Error>((id.clone(), groups.clone()))
        })
    });
    join_all(moves).await.into_iter().collect()
}

/// Termination protection, shutdown behaviour and DeleteOnTermination, as recorded.
async fn restore_attributes(
    clients: &Clients,
    target: &InstanceRef,
    recorded: &Recorded,
    spot: bool,
) -> Result<(Option<String>, Vec<String>), Error> {
    let id = target.instance_id.as_str();
    let ec2 = &clients.ec2;
    let mut requests = Vec::new();
    // Containment never sets termination protection on a Spot instance (EC2 refuses any change
    // of it there), so there is nothing to restore.
    if let Some((protected, _)) = recorded.attributes.as_ref().filter(|_| !spot) {
        requests.push(
            ec2.modify_instance_attribute()
                .instance_id(id)
                .disable_api_termination(
                    AttributeBooleanValue::builder().value(*protected).build(),
                ),
        );
    }
    if let Some((_, shutdown)) = &recorded.attributes {
        requests.push(
            ec2.modify_instance_attribute()
                .instance_id(id)
                .instance_initiated_shutdown_behavior(
                    AttributeValue::builder().value(shutdown).build(),
                ),
        );
    }
    let devices = recorded.devices.clone();
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
    let attributes = recorded
        .attributes
        .as_ref()
        .map(|(p, s)| format!("termination-protection={p},shutdown={s}"));
    Ok((attributes, devices))
}

async fn restore_profile(
    clients: &Clients,
    target: &InstanceRef,
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

/// Removes this instance's hold on the role (in the case table); the last hold out removes
/// the role's DenyAll. The denies of credentials issued before containment stay unless
/// `release_credentials`.
async fn release_role(
    clients: &Clients,
    store: &Store,
    target: &InstanceRef,
    role_name: Option<String>,
    release_credentials: bool,
) -> Result<Option<RoleRelease>, Error> {
    let Some(role_name) = role_name else {
        return Ok(None);
    };
    let iam = &clients.iam;
    let gone_already = |r: Result<(), Error>| match r {
        Err(e) if e.aws_code() == Some("NoSuchEntity") => Ok(()),
        other => other,
    };
    if release_credentials {
        let deleted = iam
            .delete_role_policy()
            .role_name(&role_name)
            .policy_name(revoke_instance_policy_name(&target.instance_id))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| Error::from_sdk("iam:DeleteRolePolicy", e));
        gone_already(deleted)?;
    } else {
        date_instance_deny(clients, target, &role_name).await?;
    }
    let still_held_by = Box::pin(drop_hold(
        store,
        &target.scope,
        &role_name,
        &target.instance_id,
    ))
    .await?;
    if !still_held_by.is_empty() {
        return Ok(Some(RoleRelease {
            role_name,
            policies_removed: false,
            still_held_by,
            credentials_released: release_credentials,
        }));
    }
    let policy_arn = deny_all_policy_arn(&target.scope.partition, &target.scope.account_id);
    let detached = iam
        .detach_role_policy()
        .role_name(&role_name)
        .policy_arn(&policy_arn)
        .send()
        .await
        .map(|_| ())
        .map_err(|e| Error::from_sdk("iam:DetachRolePolicy", e));
    gone_already(detached)?;
    // A containment of another instance of the role records its hold before it attaches
    // DenyAll: a hold that appeared while this release detached it puts DenyAll back.
    let held_now = Box::pin(store.holds(&target.scope, &role_name)).await?;
    if !held_now.is_empty() {
        iam.attach_role_policy()
            .role_name(&role_name)
            .policy_arn(&policy_arn)
            .send()
            .await
            .map_err(|e| Error::from_sdk("iam:AttachRolePolicy", e))?;
        info!(role = %role_name, held_by = ?held_now, "another instance holds the role now: DenyAll attached again");
        return Ok(Some(RoleRelease {
            role_name,
            policies_removed: false,
            still_held_by: held_now,
            credentials_released: release_credentials,
        }));
    }
    if release_credentials {
        let deleted = iam
            .delete_role_policy()
            .role_name(&role_name)
            .policy_name(REVOKE_SESSIONS_POLICY_NAME)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| Error::from_sdk("iam:DeleteRolePolicy", e));
        gone_already(deleted)?;
    }
    info!(role = %role_name, policy = DENY_ALL_POLICY_NAME, release_credentials, "role's quarantine policy removed");
    Ok(Some(RoleRelease {
        role_name,
        policies_removed: true,
        still_held_by,
        credentials_released: release_credentials,
    }))
}

/// Removes the instance's hold on its role from the case table, and returns the instances that
/// still hold the role.
async fn drop_hold(
    store: &Store,
    scope: &Scope,
    role_name: &str,
    instance_id: &str,
) -> Result<Vec<String>, Error> {
    store
        .db()
        .delete_item()
        .table_name(store.table())
        .key(
            "pk",
            aws_sdk_dynamodb::types::AttributeValue::S(Store::role_key(
                &scope.account_id,
                role_name,
            )),
        )
        .key(
            "sk",
            aws_sdk_dynamodb::types::AttributeValue::S(format!("hold#{instance_id}")),
        )
        .send()
        .await
        .map_err(|e| Error::from_sdk("dynamodb:DeleteItem", e))?;
    store.holds(scope, role_name).await
}

/// Dates the deny of the instance's own credentials (`revoke-instance`), if the role has one:
/// credentials issued from now on work, and the ones issued before (stolen copies included)
/// stay denied. The deny stays on the role.
async fn date_instance_deny(
    clients: &Clients,
    target: &InstanceRef,
    role_name: &str,
) -> Result<(), Error> {
    let iam = &clients.iam;
    let name = revoke_instance_policy_name(&target.instance_id);
    if crate::aws::role_policy::inline_policy(iam, role_name, &name)
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
    target: &InstanceRef,
    recorded: Option<(String, String, bool)>,
) -> Result<Option<String>, Error> {
    let Some((group, verb, decremented)) = recorded else {
        return Ok(None);
    };
    let (group, verb) = (group.as_str(), verb.as_str());
    let id = target.instance_id.as_str();
    let state = clients
        .autoscaling
        .describe_auto_scaling_instances()
        .instance_ids(id)
        .send()
        .await
        .map_err(|e| Error::from_sdk("autoscaling:DescribeAutoScalingInstances", e))?;
    let current = state.auto_scaling_instances().first();
    let note = if decremented {
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
    records: &[TargetRecord],
) -> Result<Vec<TargetRecord>, Error> {
    for answer in join_all(records.iter().map(|t| {
        clients
            .elbv2
            .register_targets()
            .target_group_arn(&t.target_group_arn)
            .targets(
                TargetDescription::builder()
                    .id(&t.target_id)
                    .set_port(t.port)
                    .set_availability_zone(t.availability_zone.clone())
                    .build(),
            )
            .send()
    }))
    .await
    {
        answer.map_err(|e| Error::from_sdk("elasticloadbalancing:RegisterTargets", e))?;
    }
    Ok(records.to_vec())
}

async fn rejoin_classic(
    clients: &Clients,
    target: &InstanceRef,
    names: &[String],
) -> Result<Vec<String>, Error> {
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
    Ok(names.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorName;
    use crate::aws::context::OrgSettings;

    fn request(instance_id: &str) -> ReleaseRequest {
        ReleaseRequest {
            instance_id: instance_id.into(),
            account_id: Some("123456789012".into()),
            region: Some("us-east-1".into()),
            partition: None,
            case_id: None,
            reason: None,
            release_credentials: false,
        }
    }

    /// Every value of a release request that reaches an AWS request is checked before any call
    /// (the context here has no credentials: a call would fail otherwise).
    #[tokio::test]
    async fn a_request_with_a_value_aws_would_not_take_is_refused_before_any_call() {
        let config = aws_config::SdkConfig::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new("us-east-1"))
            .build();
        let ctx = Ctx::new(config, OrgSettings::default());
        let bad = [
            request("i-123; DROP"),
            ReleaseRequest {
                account_id: Some("12345".into()),
                ..request(testing_instance())
            },
            ReleaseRequest {
                region: Some("us-east-1\n".into()),
                ..request(testing_instance())
            },
            ReleaseRequest {
                case_id: Some("case with spaces".into()),
                ..request(testing_instance())
            },
        ];
        for r in bad {
            let err = release(&ctx, &r).await.unwrap_err();
            assert_eq!(err.name(), ErrorName::InvalidEvent, "{r:?}: {err}");
        }
    }

    fn testing_instance() -> &'static str {
        crate::steps::testing::INSTANCE
    }
}
