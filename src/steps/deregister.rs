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
use crate::domain::outcome::{MAX_LISTED, Outcome, Plan, PlannedAction, Tally};
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
    let mut tally = Tally::new("out of service", &target.instance_id);
    let service = Box::pin(find_service(clients, target, &mut tally)).await?;
    if let Some(reason) = instance::gone_reason(&service.instance) {
        return Ok(Outcome::skipped(reason));
    }
    let action = clients.settings.auto_scaling_action;
    if let Some(plan) = clients.plan() {
        plan_leaving(plan, &service, action);
        return Ok(plan.outcome());
    }
    // Act first, record afterwards: a record that cannot be written never holds the instance
    // in service.
    let left = Box::pin(leave_service(clients, &service, action, &mut tally)).await;
    Box::pin(record_left(clients, &left, &mut tally)).await;
    report(&target.instance_id, left, tally)
}

/// What keeps the instance in service: its Auto Scaling group and the load balancers that send
/// it traffic.
struct InService {
    instance: Instance,
    /// The group's name and the instance's lifecycle state in it.
    group: Option<(String, String)>,
    targets: Vec<TargetRecord>,
    classic: Vec<String>,
}

/// What this run took the instance out of.
struct Left {
    auto_scaling: Option<AutoScalingChange>,
    targets: Vec<TargetRecord>,
    classic: Vec<String>,
}

/// Reads what keeps the instance in service. The instance and its Auto Scaling group are what
/// the step needs to act; a load balancer lookup that fails is tallied and never holds the
/// group's Standby or detach back.
async fn find_service(
    clients: &Clients,
    target: &Target,
    tally: &mut Tally,
) -> Result<InService, Error> {
    let id = target.instance_id.as_str();
    let (inst, group, targets, classic) = futures::join!(
        instance::describe(&clients.ec2, &target.scope, &target.instance_id),
        auto_scaling_group(clients, id),
        registered_targets(clients),
        classic_load_balancers(clients, id),
    );
    let (instance, group) = (inst?, group?);
    let targets = match tally.check("target group lookup", targets) {
        Some((found, lookup_failures)) => {
            for (what, err) in lookup_failures {
                tally.failed(what, err);
            }
            let (own, elsewhere) = instance_targets(&instance, found);
            for t in elsewhere.iter().take(MAX_LISTED) {
                tally.warn(format!(
                    "{} is registered in {}, a target group of another VPC: most likely another server with the same address, so it was left registered; deregister it by hand if it is this instance (reached through a peering)",
                    t.target_id, t.target_group_arn
                ));
            }
            own
        }
        None => Vec::new(),
    };
    let classic = tally
        .check("Classic Load Balancer lookup", classic)
        .unwrap_or_default();
    Ok(InService {
        instance,
        group,
        targets,
        classic,
    })
}

/// A dry run's plan: each change the step would make.
fn plan_leaving(plan: &Plan, service: &InService, action: AutoScalingAction) {
    let id = service.instance.instance_id().unwrap_or_default();
    if let Some((name, state)) = &service.group
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
    for t in &service.targets {
        plan.add(PlannedAction::unchecked(
            "elasticloadbalancing:DeregisterTargets",
            &t.target_group_arn,
            format!("target {} port {:?}", t.target_id, t.port),
        ));
    }
    for lb in &service.classic {
        plan.add(PlannedAction::unchecked(
            "elasticloadbalancing:DeregisterInstancesFromLoadBalancer",
            lb,
            id,
        ));
    }
}

/// Leaves the group and every load balancer at once, tallying each change.
async fn leave_service(
    clients: &Clients,
    service: &InService,
    action: AutoScalingAction,
    tally: &mut Tally,
) -> Left {
    let id = service.instance.instance_id().unwrap_or_default();
    let (asg, deregistered, left) = futures::join!(
        leave_group(clients, &service.instance, service.group.clone(), action),
        stream::iter(
            service
                .targets
                .iter()
                .map(|t| deregister_target(clients, t))
        )
        .buffered(CONCURRENT_CALLS)
        .collect::<Vec<_>>(),
        stream::iter(
            service
                .classic
                .iter()
                .map(|lb| leave_classic(clients, lb, id))
        )
        .buffered(CONCURRENT_CALLS)
        .collect::<Vec<_>>(),
    );
    let auto_scaling = tally.check("Auto Scaling group", asg).flatten();
    let mut targets = Vec::new();
    for (t, result) in service.targets.iter().zip(deregistered) {
        let what = format!("target group {}", t.target_group_arn);
        if tally.check(what, result).is_some() {
            tally.done(format!(
                "{} deregistered from {}",
                t.target_id, t.target_group_arn
            ));
            targets.push(t.clone());
        }
    }
    let mut classic = Vec::new();
    for (lb, result) in service.classic.iter().zip(left) {
        if tally
            .check(format!("classic load balancer {lb}"), result)
            .is_some()
        {
            tally.done(format!("deregistered from {lb}"));
            classic.push(lb.clone());
        }
    }
    Left {
        auto_scaling,
        targets,
        classic,
    }
}

/// Records on the case what the instance left, for release; a record that cannot be written is
/// a warning (the changes stand, and the report lists them).
async fn record_left(clients: &Clients, left: &Left, tally: &mut Tally) {
    let record = record(&left.targets, &left.classic, left.auto_scaling.as_ref());
    if record.is_empty() {
        return;
    }
    let written = match &clients.case {
        Some(case) => Box::pin(case.remember_all(&record)).await.map(|_| ()),
        None => Err(Error::Misconfigured(
            clients.case_unavailable.clone().unwrap_or_default(),
        )),
    };
    if let Err(err) = written {
        warn!(error = %err, "record of the group and load balancers not written");
        tally.warn(format!(
            "the record of the Auto Scaling group and load balancers could not be written to the case ({err}): release cannot restore them; they are listed in this report"
        ));
    }
}

/// The step's outcome from what it left and its tally.
fn report(instance_id: &str, left: Left, tally: Tally) -> Result<Outcome<DeregisterReport>, Error> {
    let warnings = tally.finish()?;
    let Left {
        auto_scaling,
        targets,
        classic,
    } = left;
    if auto_scaling.is_none() && targets.is_empty() && classic.is_empty() {
        return Ok(Outcome::skipped(
            "the instance is in no Auto Scaling group and behind no load balancer",
        ));
    }
    let changed = !targets.is_empty()
        || !classic.is_empty()
        || auto_scaling
            .as_ref()
            .is_some_and(|a| a.status == GroupStatus::Applied);
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
            instance_id: instance_id.to_owned(),
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

#[cfg(test)]
mod tests {
    use aws_sdk_autoscaling::operation::describe_auto_scaling_instances::DescribeAutoScalingInstancesOutput;
    use aws_sdk_ec2::types::InstanceStateName;
    use aws_sdk_elasticloadbalancing::operation::describe_load_balancers::DescribeLoadBalancersOutput;
    use aws_sdk_elasticloadbalancingv2::error::ErrorMetadata;
    use aws_sdk_elasticloadbalancingv2::operation::describe_target_groups::{
        DescribeTargetGroupsError, DescribeTargetGroupsOutput,
    };
    use aws_smithy_mocks::{Rule, RuleMode, mock, mock_client};

    use super::*;
    use crate::ErrorName;
    use crate::steps::testing;

    fn in_no_group() -> Rule {
        mock!(aws_sdk_autoscaling::Client::describe_auto_scaling_instances)
            .then_output(|| DescribeAutoScalingInstancesOutput::builder().build())
    }

    fn no_classic() -> Rule {
        mock!(aws_sdk_elasticloadbalancing::Client::describe_load_balancers)
            .then_output(|| DescribeLoadBalancersOutput::builder().build())
    }

    fn clients(target_groups: &Rule) -> Clients {
        let describe = mock!(aws_sdk_ec2::Client::describe_instances)
            .then_output(|| testing::instance(InstanceStateName::Running));
        let mut clients = testing::clients();
        clients.ec2 = mock_client!(aws_sdk_ec2, RuleMode::MatchAny, &[&describe]);
        clients.autoscaling =
            mock_client!(aws_sdk_autoscaling, RuleMode::MatchAny, &[&in_no_group()]);
        clients.elbv2 = mock_client!(
            aws_sdk_elasticloadbalancingv2,
            RuleMode::MatchAny,
            &[target_groups]
        );
        clients.elb = mock_client!(
            aws_sdk_elasticloadbalancing,
            RuleMode::MatchAny,
            &[&no_classic()]
        );
        clients
    }

    #[tokio::test]
    async fn an_instance_in_no_group_and_behind_no_load_balancer_is_skipped() {
        let none = mock!(aws_sdk_elasticloadbalancingv2::Client::describe_target_groups)
            .then_output(|| DescribeTargetGroupsOutput::builder().build());
        let outcome = deregister_instance(&clients(&none), &testing::target())
            .await
            .unwrap();
        assert_eq!(
            outcome,
            Outcome::skipped(
                "the instance is in no Auto Scaling group and behind no load balancer"
            )
        );
    }

    /// A lookup that failed is never read as "behind no load balancer": the step fails with
    /// the lookup named, retryable as the throttle is.
    #[tokio::test]
    async fn a_failed_target_group_lookup_is_not_nothing_to_do() {
        let throttled = mock!(aws_sdk_elasticloadbalancingv2::Client::describe_target_groups)
            .then_error(|| {
                DescribeTargetGroupsError::generic(
                    ErrorMetadata::builder()
                        .code("Throttling")
                        .message("Rate exceeded")
                        .build(),
                )
            });
        let err = deregister_instance(&clients(&throttled), &testing::target())
            .await
            .unwrap_err();
        assert_eq!(err.name(), ErrorName::TransientAwsError, "{err}");
        assert!(err.to_string().contains("target group lookup"), "{err}");
    }
}
