//! Out of service: the instance leaves its Auto Scaling group's care (Standby, or detached) so
//! that the group neither terminates the evidence as unhealthy nor fights the isolation, and it
//! leaves every load balancer that sends it traffic (Elastic Load Balancing v2 target groups,
//! instance and IP targets, and Classic Load Balancers). What it leaves is recorded on the
//! case, for release.

use aws_sdk_ec2::types::Instance;
use aws_sdk_elasticloadbalancingv2::types::TargetDescription;
use futures::{StreamExt, stream};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::aws::context::{Clients, Ctx};
use crate::aws::instance;
use crate::case::Previous;
use crate::domain::finding::{StepRequest, Target};
use crate::domain::outcome::{MAX_LISTED, Outcome, PlannedAction};
use crate::domain::settings::AutoScalingAction;
use crate::error::Error;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeregisterReport {
    pub instance_id: String,
    /// The instance's Auto Scaling group and what was done there (`None`: it is in none).
    pub auto_scaling: Option<AutoScalingChange>,
    /// Targets deregistered by this run (the first [`MAX_LISTED`]).
    pub targets: Vec<TargetRecord>,
    /// How many targets were deregistered in all.
    #[serde(default)]
    pub targets_total: usize,
    /// Classic Load Balancers the instance was deregistered from by this run (the first
    /// [`MAX_LISTED`]).
    pub classic_load_balancers: Vec<String>,
    #[serde(default)]
    pub classic_load_balancers_total: usize,
    /// What was not recorded, in plain words (the step's changes stand).
    #[serde(default)]
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AutoScalingChange {
    pub group_name: String,
    /// The instance's lifecycle state before this run.
    pub previous_state: String,
    pub action: AutoScalingAction,
    /// The group's desired capacity was lowered so that it launches no replacement. False: the
    /// group was at its minimum size, and launches one.
    pub capacity_decremented: bool,
    pub status: GroupStatus,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupStatus {
    Applied,
    AlreadyInPlace,
    /// `AutoScalingAction` is `none`, or the instance is in a state the group cannot change
    /// (Pending, Terminating, ...): left as it is, and reported.
    LeftAsIs,
}

/// One registration of the instance with a target group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetRecord {
    pub target_group_arn: String,
    /// The instance id, or one of its IP addresses for an `ip` target group.
    pub target_id: String,
    pub port: Option<i32>,
    /// The zone an IP target outside the group's VPC was registered with (`all`), as
    /// DescribeTargetHealth shows it; given back on release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub availability_zone: Option<String>,
}

/// Takes the instance a finding names out of service (the Lambda handler).
pub async fn deregister(
    ctx: &Ctx,
    request: impl Into<StepRequest>,
) -> Result<Outcome<DeregisterReport>, Error> {
    super::for_target(
        ctx,
        request.into(),
        "deregister",
        |clients, target| async move { deregister_instance(&clients, &target).await },
    )
    .await
}

#[tracing::instrument(skip_all, fields(finding_id = %target.finding_id, instance_id = %target.instance_id))]
pub async fn deregister_instance(
    clients: &Clients,
    target: &Target,
) -> Result<Outcome<DeregisterReport>, Error> {
    let id = target.instance_id.as_str();
    // The instance and its Auto Scaling group are what the step needs to act; a load balancer
    // lookup that fails is reported and never holds the group's Standby or detach back.
    let (inst, group, targets, classic) = futures::join!(
        instance::describe(&clients.ec2, target),
        auto_scaling_group(clients, id),
        registered_targets(clients),
        classic_load_balancers(clients, id),
    );
    let (inst, group) = (inst?, group?);
    if let Some(reason) = instance::gone_reason(&inst) {
        return Ok(Outcome::skipped(reason));
    }
    let mut failed = Vec::new();
    let mut warnings = Vec::new();
    let targets = match targets {
        Ok((found, lookup_failures)) => {
            failed.extend(lookup_failures);
            let (own, elsewhere) = instance_targets(&inst, found);
            warnings.extend(elsewhere.iter().take(MAX_LISTED).map(|t| {
                format!(
                    "{} is registered in {}, a target group of another VPC: most likely another server with the same address, so it was left registered; deregister it by hand if it is this instance (reached through a peering)",
                    t.target_id, t.target_group_arn
                )
            }));
            own
        }
        Err(err) => {
            failed.push(("target group lookup".to_owned(), err));
            Vec::new()
        }
    };
    let classic = classic.unwrap_or_else(|err| {
        failed.push(("Classic Load Balancer lookup".to_owned(), err));
        Vec::new()
    });
    let action = clients.settings.auto_scaling_action;
    let plan = clients.plan();

    if let Some(plan) = plan {
        if let Some((name, state)) = &group
            && action != AutoScalingAction::None
            && state == "InService"
        {
            let call = match action {
                AutoScalingAction::Detach => "autoscaling:DetachInstances",
                _ => "autoscaling:EnterStandby",
            };
            let detail = "without a replacement where the group's minimum size allows";
            plan.add(PlannedAction::unchecked(call, name, detail));
        }
        for t in &targets {
            plan.add(PlannedAction::unchecked(
                "elasticloadbalancing:DeregisterTargets",
                &t.target_group_arn,
                format!("target {} port {:?}", t.target_id, t.port),
            ));
        }
        for lb in &classic {
            plan.add(PlannedAction::unchecked(
                "elasticloadbalancing:DeregisterInstancesFromLoadBalancer",
                lb,
                id,
            ));
        }
        return Ok(plan.outcome());
    }
    // Act first, record afterwards: a record that cannot be written never holds the instance
    // in service.
    let (asg, deregistered, left) = futures::join!(
        leave_group(clients, &inst, group, action),
        stream::iter(targets.iter().map(|t| deregister_target(clients, t)))
            .buffered(CONCURRENT_CALLS)
            .collect::<Vec<_>>(),
        stream::iter(classic.iter().map(|lb| leave_classic(clients, lb, id)))
            .buffered(CONCURRENT_CALLS)
            .collect::<Vec<_>>(),
    );

    let mut done = Vec::new();
    let auto_scaling = match asg {
        Ok(change) => change,
        Err(err) => {
            failed.push(("Auto Scaling group".to_owned(), err));
            None
        }
    };
    let mut left_targets = Vec::new();
    for (t, result) in targets.iter().zip(deregistered) {
        match result {
            Ok(()) => {
                done.push(format!(
                    "{} deregistered from {}",
                    t.target_id, t.target_group_arn
                ));
                left_targets.push(t.clone());
            }
            Err(err) => failed.push((format!("target group {}", t.target_group_arn), err)),
        }
    }
    let mut left_classic = Vec::new();
    for (lb, result) in classic.iter().zip(left) {
        match result {
            Ok(()) => {
                done.push(format!("deregistered from {lb}"));
                left_classic.push(lb.clone());
            }
            Err(err) => failed.push((format!("classic load balancer {lb}"), err)),
        }
    }
    let record = record(&left_targets, &left_classic, auto_scaling.as_ref());
    if !record.is_empty() {
        let written = match &clients.case {
            Some(case) => Box::pin(case.remember_all(&record)).await.map(|_| ()),
            None => Err(Error::Misconfigured(
                clients.case_unavailable.clone().unwrap_or_default(),
            )),
        };
        if let Err(err) = written {
            warn!(error = %err, "record of the group and load balancers not written");
            warnings.push(format!(
                "the record of the Auto Scaling group and load balancers could not be written to the case ({err}): release cannot restore them; they are listed in this report"
            ));
        }
    }
    if !failed.is_empty() {
        for (what, err) in &failed {
            warn!(what, error = %err, "out-of-service action failed");
        }
        done.extend(warnings.into_iter().map(|w| format!("warning: {w}")));
        return Err(Error::Incomplete {
            step: "out of service",
            instance_id: id.to_owned(),
            done,
            failed,
        });
    }
    let changed = !targets.is_empty()
        || !classic.is_empty()
        || auto_scaling
            .as_ref()
            .is_some_and(|a| a.status == GroupStatus::Applied);
    if auto_scaling.is_none() && targets.is_empty() && classic.is_empty() {
        return Ok(Outcome::skipped(
            "the instance is in no Auto Scaling group and behind no load balancer",
        ));
    }
    info!(
        ?auto_scaling,
        targets = targets.len(),
        classic = classic.len(),
        "out of service"
    );
    let targets_total = targets.len();
    let classic_total = classic.len();
    Ok(Outcome::from_changes(
        changed,
        DeregisterReport {
            instance_id: id.to_owned(),
            auto_scaling,
            targets: targets.into_iter().take(MAX_LISTED).collect(),
            targets_total,
            classic_load_balancers: classic.into_iter().take(MAX_LISTED).collect(),
            classic_load_balancers_total: classic_total,
            warnings,
        },
    ))
}

/// Calls to Elastic Load Balancing in flight at once, per lookup or change: an account with
/// hundreds of target groups is read without bursting through the API's rate limit.
const CONCURRENT_CALLS: usize = 8;

/// The registrations that are this instance: its id, or one of its addresses in a target group
/// of its own VPC. The same private address in a target group of another VPC is most often
/// another server (VPCs may overlap); it can also be this instance reached through a peering
/// (ELB allows IP targets outside the group's VPC:
/// https://docs.aws.amazon.com/elasticloadbalancing/latest/application/target-group-register-targets.html),
/// so it is left registered and named in the second list, for a person to judge.
fn instance_targets(
    inst: &Instance,
    found: Vec<(Option<String>, TargetRecord)>,
) -> (Vec<TargetRecord>, Vec<TargetRecord>) {
    let id = inst.instance_id().unwrap_or_default();
    let vpc = inst.vpc_id();
    let addresses = addresses(inst);
    let mut own = Vec::new();
    let mut elsewhere = Vec::new();
    for (group_vpc, t) in found {
        if t.target_id == id || (group_vpc.as_deref() == vpc && addresses.contains(&t.target_id)) {
            own.push(t);
        } else if addresses.contains(&t.target_id) {
            elsewhere.push(t);
        }
    }
    (own, elsewhere)
}

/// The instance's private addresses, IPv4 and IPv6: the ids of its `ip` targets.
fn addresses(inst: &Instance) -> Vec<String> {
    let mut out = Vec::new();
    for eni in inst.network_interfaces() {
        out.extend(
            eni.private_ip_addresses()
                .iter()
                .filter_map(|a| a.private_ip_address().map(str::to_owned)),
        );
        out.extend(
            eni.ipv6_addresses()
                .iter()
                .filter_map(|a| a.ipv6_address().map(str::to_owned)),
        );
    }
    out
}

/// The case's record of what this run took the instance out of (a run that found it already
/// out records nothing new: the case keeps the first record of each).
fn record(
    targets: &[TargetRecord],
    classic: &[String],
    group: Option<&AutoScalingChange>,
) -> Vec<Previous> {
    let mut out: Vec<Previous> = targets
        .iter()
        .map(|t| Previous::Target {
            target_group_arn: t.target_group_arn.clone(),
            target_id: t.target_id.clone(),
            port: t.port,
            availability_zone: t.availability_zone.clone(),
        })
        .collect();
    out.extend(
        classic
            .iter()
            .map(|name| Previous::ClassicLoadBalancer { name: name.clone() }),
    );
    if let Some(g) = group.filter(|g| g.status == GroupStatus::Applied) {
        out.push(Previous::AutoScaling {
            group: g.group_name.clone(),
            mode: match g.action {
                AutoScalingAction::Detach => "detach",
                _ => "standby",
            }
            .into(),
            capacity_decremented: g.capacity_decremented,
        });
    }
    out
}

/// The instance's Auto Scaling group and lifecycle state, if it is in one.
async fn auto_scaling_group(
    clients: &Clients,
    id: &str,
) -> Result<Option<(String, String)>, Error> {
    let out = clients
        .autoscaling
        .describe_auto_scaling_instances()
        .instance_ids(id)
        .send()
        .await
        .map_err(|e| Error::from_sdk("autoscaling:DescribeAutoScalingInstances", e))?;
    Ok(out.auto_scaling_instances().first().map(|i| {
        (
            i.auto_scaling_group_name().unwrap_or_default().to_owned(),
            i.lifecycle_state().unwrap_or_default().to_owned(),
        )
    }))
}

/// Standby or detach, lowering the desired capacity where the group's minimum allows, so that
/// no replacement is launched; at the minimum, without lowering it (the report says so).
async fn leave_group(
    clients: &Clients,
    inst: &Instance,
    group: Option<(String, String)>,
    action: AutoScalingAction,
) -> Result<Option<AutoScalingChange>, Error> {
    let Some((group_name, state)) = group else {
        return Ok(None);
    };
    let id = inst.instance_id().unwrap_or_default();
    let mut change = AutoScalingChange {
        group_name: group_name.clone(),
        previous_state: state.clone(),
        action,
        capacity_decremented: false,
        status: GroupStatus::LeftAsIs,
    };
    let already = match action {
        AutoScalingAction::Standby => state == "Standby",
        _ => false,
    };
    if already {
        // An earlier run put it there: the case says whether it lowered the capacity.
        change.status = GroupStatus::AlreadyInPlace;
        if let Some(case) = &clients.case {
            change.capacity_decremented = Box::pin(case.recalled()).await?.iter().any(|p| {
                matches!(
                    p,
                    Previous::AutoScaling {
                        capacity_decremented: true,
                        ..
                    }
                )
            });
        }
        return Ok(Some(change));
    }
    if action == AutoScalingAction::None || state != "InService" {
        info!(%group_name, %state, ?action, "Auto Scaling group left as it is");
        return Ok(Some(change));
    }
    let group_name = group_name.as_str();
    let attempt = |decrement: bool| async move {
        match action {
            AutoScalingAction::Detach => clients
                .autoscaling
                .detach_instances()
                .auto_scaling_group_name(group_name)
                .instance_ids(id)
                .should_decrement_desired_capacity(decrement)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| Error::from_sdk("autoscaling:DetachInstances", e)),
            _ => clients
                .autoscaling
                .enter_standby()
                .auto_scaling_group_name(group_name)
                .instance_ids(id)
                .should_decrement_desired_capacity(decrement)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| Error::from_sdk("autoscaling:EnterStandby", e)),
        }
    };
    // Lowering the desired capacity below the group's minimum is refused (ValidationError):
    // then the instance leaves all the same and the group launches a replacement.
    let decremented = match attempt(true).await {
        Ok(()) => true,
        Err(err) if err.aws_code() == Some("ValidationError") => {
            warn!(error = %err, "at the group's minimum size: a replacement will be launched");
            attempt(false).await?;
            false
        }
        Err(err) => return Err(err),
    };
    info!(group = %change.group_name, ?action, decremented, "left the Auto Scaling group");
    change.capacity_decremented = decremented;
    change.status = GroupStatus::Applied;
    Ok(Some(change))
}

/// Every registration with a target group (all pages), with the group's VPC; the caller keeps
/// the instance's. A target group whose targets could not be read is a lookup failure of its
/// own, reported beside the others, which are still found.
#[allow(clippy::type_complexity)]
async fn registered_targets(
    clients: &Clients,
) -> Result<(Vec<(Option<String>, TargetRecord)>, Vec<(String, Error)>), Error> {
    let groups = clients
        .elbv2
        .describe_target_groups()
        .into_paginator()
        .items()
        .send()
        .try_collect()
        .await
        .map_err(|e| Error::from_sdk("elasticloadbalancing:DescribeTargetGroups", e))?;
    let groups: Vec<(String, Option<String>)> = groups
        .iter()
        .filter(|g| !matches!(g.target_type().map(|t| t.as_str()), Some("lambda" | "alb")))
        .filter_map(|g| {
            Some((
                g.target_group_arn()?.to_owned(),
                g.vpc_id().map(str::to_owned),
            ))
        })
        .collect();
    let healths: Vec<_> = stream::iter(groups.into_iter().map(|(arn, vpc)| async move {
        let out = clients
            .elbv2
            .describe_target_health()
            .target_group_arn(&arn)
            .send()
            .await
            .map_err(|e| Error::from_sdk("elasticloadbalancing:DescribeTargetHealth", e));
        (arn, vpc, out)
    }))
    .buffer_unordered(CONCURRENT_CALLS)
    .collect()
    .await;
    let mut found = Vec::new();
    let mut failures = Vec::new();
    for (arn, vpc, out) in healths {
        match out {
            Ok(out) => found.extend(
                out.target_health_descriptions()
                    .iter()
                    .filter_map(|d| d.target())
                    .map(|t| {
                        (
                            vpc.clone(),
                            TargetRecord {
                                target_group_arn: arn.clone(),
                                target_id: t.id().unwrap_or_default().to_owned(),
                                port: t.port(),
                                availability_zone: t.availability_zone().map(str::to_owned),
                            },
                        )
                    }),
            ),
            Err(err) => failures.push((format!("targets of {arn} (lookup)"), err)),
        }
    }
    Ok((found, failures))
}

async fn deregister_target(clients: &Clients, t: &TargetRecord) -> Result<(), Error> {
    clients
        .elbv2
        .deregister_targets()
        .target_group_arn(&t.target_group_arn)
        .targets(
            TargetDescription::builder()
                .id(&t.target_id)
                .set_port(t.port)
                .build(),
        )
        .send()
        .await
        .map(|_| ())
        .map_err(|e| Error::from_sdk("elasticloadbalancing:DeregisterTargets", e))
}

/// The Classic Load Balancers the instance is registered with; all pages.
async fn classic_load_balancers(clients: &Clients, id: &str) -> Result<Vec<String>, Error> {
    let lbs = clients
        .elb
        .describe_load_balancers()
        .into_paginator()
        .items()
        .send()
        .try_collect()
        .await
        .map_err(|e| Error::from_sdk("elasticloadbalancing:DescribeLoadBalancers", e))?;
    Ok(lbs
        .iter()
        .filter(|lb| lb.instances().iter().any(|i| i.instance_id() == Some(id)))
        .filter_map(|lb| lb.load_balancer_name().map(str::to_owned))
        .collect())
}

async fn leave_classic(clients: &Clients, lb: &str, id: &str) -> Result<(), Error> {
    clients
        .elb
        .deregister_instances_from_load_balancer()
        .load_balancer_name(lb)
        .instances(
            aws_sdk_elasticloadbalancing::types::Instance::builder()
                .instance_id(id)
                .build(),
        )
        .send()
        .await
        .map(|_| ())
        .map_err(|e| {
            Error::from_sdk(
                "elasticloadbalancing:DeregisterInstancesFromLoadBalancer",
                e,
            )
        })
}
