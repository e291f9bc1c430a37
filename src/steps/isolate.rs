//! Network isolation: every network interface of the instance into a quarantine security group
//! that allows nothing in and nothing out, plus the evidence-keeping instance attributes.

use std::collections::{BTreeMap, BTreeSet};

use aws_sdk_ec2::operation::modify_instance_attribute::builders::ModifyInstanceAttributeFluentBuilder;
use aws_sdk_ec2::types::{
    AttributeBooleanValue, AttributeValue, EbsInstanceBlockDeviceSpecification, Filter,
    GroupIdentifier, Instance, InstanceAttributeName, InstanceBlockDeviceMappingSpecification,
    InstanceLifecycleType, IpPermission, IpRange, Ipv6Range, ResourceType, SecurityGroup,
    TagSpecification,
};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use futures::FutureExt;
use futures::future::{join_all, try_join_all};
use serde::{Deserialize, Serialize};
use tokio::time::{Duration, Instant};
use tracing::{error, info, warn};

use crate::aws::context::{Clients, Ctx};
use crate::aws::{calls, instance, tags};
use crate::case::Previous;
use crate::domain::finding::{Resolution, StepRequest, Target};
use crate::domain::outcome::{Outcome, Plan, PlannedAction, Tally};
use crate::error::Error;

/// The name of the tool's quarantine group in each VPC (names are unique per VPC).
pub const QUARANTINE_GROUP_NAME: &str = "ec2-quarantine-isolation";
const QUARANTINE_GROUP_DESCRIPTION: &str = "Quarantine for compromised instances: no inbound, no outbound. Managed by ec2-quarantine; add no rules.";
/// The transit group each interface passes through on its way to quarantine. A group that
/// allows all traffic in and out, IPv4 and IPv6, leaves its flows untracked, so that the move to
/// the quarantine group then cuts connections that were open (an attacker's SSH or C2 session),
/// which a plain group change leaves alive.
pub const TRANSIT_GROUP_NAME: &str = "ec2-quarantine-untrack";
const TRANSIT_GROUP_DESCRIPTION: &str = "Transit for ec2-quarantine: allows all traffic for an instant so that open connections become untracked and are cut by the quarantine group. Managed by ec2-quarantine.";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IsolateReport {
    pub instance_id: String,
    pub quarantine_groups: Vec<QuarantineGroup>,
    pub interfaces: Vec<InterfaceIsolation>,
    pub termination_protection: bool,
    pub shutdown_behavior: String,
    /// Devices whose volume this run stopped from being deleted with the instance.
    #[serde(default)]
    pub volumes_kept_on_termination: Vec<String>,
    /// Interfaces left as they are, with the reason (requester-managed: ECS, EKS, Lambda).
    #[serde(default)]
    pub skipped_interfaces: Vec<SkippedInterface>,
    /// What was not done or not recorded without making the step fail (termination protection
    /// on a Spot instance, a record refused by the tag quota), each in plain words.
    #[serde(default)]
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SkippedInterface {
    pub interface_id: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuarantineGroup {
    pub vpc_id: String,
    pub group_id: String,
    /// The transit group of this VPC (see [`TRANSIT_GROUP_NAME`]).
    #[serde(default)]
    pub transit_group_id: String,
    /// Whether this run created the group (or, for a group found, emptied rules someone added).
    pub changed: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InterfaceIsolation {
    pub interface_id: String,
    pub vpc_id: String,
    /// The groups the interface had before isolation, to restore on release.
    pub previous_groups: Vec<String>,
    pub status: InterfaceStatus,
    /// Whether the interface passed through the transit group, the technique AWS's containment
    /// runbook uses to cut tracked connections (false when it was already isolated, or the
    /// transit move could not be made: open connections may persist).
    #[serde(default)]
    pub connections_cut: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InterfaceStatus {
    Isolated,
    AlreadyIsolated,
}

/// An interface of the instance as DescribeInstances shows it.
struct Interface {
    id: String,
    vpc_id: String,
    groups: Vec<String>,
    /// Already in the tool's quarantine group alone, by name (its id is not known yet).
    looks_isolated: bool,
    /// In the tool's transit group alone: an earlier run was cut short between its two moves,
    /// so these are not groups to restore.
    in_transit: bool,
}

/// Isolates the instance a finding names, with no time limit (tests, tools).
pub async fn isolate(
    ctx: &Ctx,
    request: impl Into<StepRequest>,
) -> Result<Outcome<IsolateReport>, Error> {
    isolate_until(ctx, request, None).await
}

/// Isolates the instance a finding names (the Lambda handler). `deadline` is when the function
/// is stopped (Lambda's timeout): the step keeps enough time to move an interface back out of
/// the transit group, so that being cut short never leaves one open.
pub async fn isolate_until(
    ctx: &Ctx,
    request: impl Into<StepRequest>,
    deadline: Option<Instant>,
) -> Result<Outcome<IsolateReport>, Error> {
    super::for_target(
        ctx,
        request.into(),
        "isolate",
        |clients, target| async move { isolate_instance(&clients, &target, deadline).await },
    )
    .await
}

#[tracing::instrument(skip_all, fields(finding_id = %target.finding_id, instance_id = %target.instance_id))]
pub async fn isolate_instance(
    clients: &Clients,
    target: &Target,
    deadline: Option<Instant>,
) -> Result<Outcome<IsolateReport>, Error> {
    let plan = clients.plan();
    let mut found = match Box::pin(calls::branch(
        "read",
        read_instance(&clients.ec2, plan, target),
    ))
    .await?
    {
        Resolution::Contain(found) => found,
        Resolution::Skip(reason) => {
            info!(%reason, "skipped");
            return Ok(Outcome::skipped(reason));
        }
    };
    // An interface an earlier run left isolated or in transit: its own groups are the ones the
    // case recorded (read only then, off the usual path).
    let recalled = if found
        .interfaces
        .iter()
        .any(|i| i.looks_isolated || i.in_transit)
    {
        Box::pin(recorded_groups(clients)).await
    } else {
        BTreeMap::new()
    };
    // Evidence first and independent of the network change: a failure here must not hold
    // isolation back, and isolation must not wait for it.
    let lookups = std::mem::take(&mut found.lookups);
    let (protection, isolated) = futures::join!(
        calls::branch("evidence", protect(clients, &found.instance)),
        calls::branch(
            "network",
            isolate_network(clients, &found, lookups, &recalled, deadline)
        )
    );
    let Protection {
        mut tally,
        volumes_kept_on_termination,
        termination_protection,
    } = protection;
    let (recorded, groups, moves) = match isolated {
        Ok(isolated) => isolated,
        // An interface an earlier run left in the transit group is still there: say so first.
        Err(err) if found.interfaces.iter().any(|i| i.in_transit) && plan.is_none() => {
            tally.failed("network isolation", err);
            let exposed = found
                .interfaces
                .iter()
                .filter(|i| i.in_transit)
                .map(|i| i.id.clone())
                .collect();
            return Err(failed_open(target, exposed, tally));
        }
        Err(err) => return Err(err),
    };
    if let Some(plan) = plan {
        return Ok(plan.outcome());
    }
    let skipped_interfaces = skipped(&found.managed);
    let (report_interfaces, exposed) = tally_moves(moves, &mut tally);
    if exposed.is_empty()
        && report_interfaces
            .iter()
            .any(|i| i.status == InterfaceStatus::Isolated)
    {
        crate::telemetry::time_to_isolation(target.updated_at.as_deref());
    }
    let recorded = Box::pin(calls::branch(
        "after",
        // An interface left EXPOSED: the failure is returned at once (no marker tags, whose
        // calls could outlast the function's time).
        note_records(clients, target, recorded, &mut tally, exposed.is_empty()),
    ))
    .await;
    if !exposed.is_empty() {
        return Err(failed_open(target, exposed, tally));
    }
    let warnings = tally.finish()?;
    let isolated = Isolated {
        recorded,
        groups,
        interfaces: report_interfaces,
        skipped_interfaces,
        volumes_kept_on_termination,
        termination_protection,
    };
    Ok(isolate_report(target, isolated, warnings))
}

/// What the step did, every action having succeeded.
struct Isolated {
    /// The case's record of the previous groups was written by this run.
    recorded: bool,
    groups: Vec<QuarantineGroup>,
    interfaces: Vec<InterfaceIsolation>,
    skipped_interfaces: Vec<SkippedInterface>,
    volumes_kept_on_termination: Vec<String>,
    termination_protection: bool,
}

/// The step's outcome: done if this run changed anything, already done otherwise.
fn isolate_report(
    target: &Target,
    isolated: Isolated,
    warnings: Vec<String>,
) -> Outcome<IsolateReport> {
    let changed = isolated.recorded
        || !isolated.volumes_kept_on_termination.is_empty()
        || isolated.groups.iter().any(|g| g.changed)
        || isolated
            .interfaces
            .iter()
            .any(|i| i.status == InterfaceStatus::Isolated);
    info!(changed, interfaces = isolated.interfaces.len(), "isolated");
    Outcome::from_changes(
        changed,
        IsolateReport {
            instance_id: target.instance_id.clone(),
            quarantine_groups: isolated.groups,
            interfaces: isolated.interfaces,
            termination_protection: isolated.termination_protection,
            shutdown_behavior: "stop".into(),
            volumes_kept_on_termination: isolated.volumes_kept_on_termination,
            skipped_interfaces: isolated.skipped_interfaces,
            warnings,
        },
    )
}

/// The interfaces a service manages (requester-managed), left as they are, with why.
fn skipped(managed: &BTreeSet<String>) -> Vec<SkippedInterface> {
    managed
        .iter()
        .map(|id| {
            warn!(eni = %id, "requester-managed interface left as it is");
            SkippedInterface {
                interface_id: id.clone(),
                reason: "requester-managed (a service such as ECS, EKS or Lambda owns it): its groups cannot be changed".into(),
            }
        })
        .collect()
}

/// The records of the isolation: the case's record of the previous groups (written while the
/// interfaces moved) and the marker tags on the instance, written now (`mark_instance`: not
/// when an interface was left EXPOSED). Either only serves
/// release or a person: one that could not be written (a full tag quota, a denial) is a
/// warning, and the containment stands. Whether the case's record was written by this run.
async fn note_records(
    clients: &Clients,
    target: &Target,
    recorded: Result<bool, Error>,
    tally: &mut Tally,
    mark_instance: bool,
) -> bool {
    let recorded = recorded.unwrap_or_else(|err| {
        warn!(error = %err, "record of the previous groups not written");
        tally.warn(format!(
            "the record of each interface's previous groups could not be written to the case ({err}); they are listed in this report, for a release by hand"
        ));
        false
    });
    if !mark_instance {
        return recorded;
    }
    if let Err(err) = Box::pin(mark(clients, &target.instance_id)).await {
        warn!(error = %err, "marker tags not written");
        tally.warn(format!(
            "the marker tags (case id, time) could not be written on the instance ({err}); the case holds the record"
        ));
    }
    recorded
}

/// The instance as the isolation starts from it.
struct Found {
    instance: Instance,
    interfaces: Vec<Interface>,
    /// Interfaces a service manages, left as they are.
    managed: BTreeSet<String>,
    /// Each VPC of the instance's interfaces, with the tool's groups there as far as the read
    /// got them.
    lookups: Vec<(String, Prepared)>,
}

/// A VPC's groups as the instance's read left them.
enum Prepared {
    /// Looked up (`None`: not yet): still to be set.
    Lookup(Option<Box<FoundGroups>>),
    /// Created and set while the instance was read (triage found none there).
    Ready(Result<QuarantineGroup, Error>),
}

/// Reads the instance, and while it is read: the interfaces services manage, and the tool's
/// groups in the VPCs triage saw the instance in: looked up where triage found them, created
/// and set where it found none (a group there after all is found by its name). For an
/// instance whose groups exist, the interfaces then move right away: three dependent calls;
/// four where the groups are created. An instance that is gone, or has no interface, is
/// skipped with the reason (groups made meanwhile stay, empty, for the next containment).
async fn read_instance(
    ec2: &aws_sdk_ec2::Client,
    plan: Option<&Plan>,
    target: &Target,
) -> Result<Resolution<Found>, Error> {
    let absent = |vpc: &String| target.vpcs_without_groups.contains(vpc);
    let (inst, found, made, managed) = futures::join!(
        instance::describe(ec2, &target.scope, &target.instance_id),
        join_all(
            target
                .vpc_ids
                .iter()
                .filter(|vpc| !absent(vpc))
                .map(|vpc| async move { (vpc.as_str(), find_groups(ec2, vpc).await) })
        ),
        join_all(target.vpc_ids.iter().filter(|vpc| absent(vpc)).map(|vpc| {
            let none = (Ok(None), Ok(None));
            let made = async move {
                let made = ensure_quarantine_group(ec2, plan, vpc, Some(none)).await;
                (vpc.as_str(), made)
            };
            calls::branch(format!("read/groups/{vpc}"), made)
        })),
        requester_managed(ec2, &target.instance_id),
    );
    let mut found: BTreeMap<&str, FoundGroups> = found.into_iter().collect();
    let mut made: BTreeMap<&str, Result<QuarantineGroup, Error>> = made.into_iter().collect();
    let instance = inst?;
    if let Some(reason) = instance::gone_reason(&instance) {
        return Ok(Resolution::Skip(reason));
    }
    let interfaces = interfaces(&instance);
    if interfaces.is_empty() {
        return Ok(Resolution::Skip(
            "the instance has no network interface".into(),
        ));
    }
    let managed = managed?;
    let vpcs: BTreeSet<&str> = interfaces.iter().map(|i| i.vpc_id.as_str()).collect();
    let lookups = vpcs
        .iter()
        .map(|vpc| {
            let prepared = match made.remove(vpc) {
                Some(made) => Prepared::Ready(made),
                None => Prepared::Lookup(found.remove(vpc).map(Box::new)),
            };
            (vpc.to_string(), prepared)
        })
        .collect();
    Ok(Resolution::Contain(Found {
        instance,
        interfaces,
        managed,
        lookups,
    }))
}

/// Makes sure of each VPC's quarantine group, then moves every interface (but the managed ones)
/// into it. The record of the previous groups is written while the interfaces move: it holds
/// the groups read before any move, and a record that could not be written does not hold
/// isolation back (the groups are in the report all the same). `Err`: a quarantine group could
/// not be had, and no interface moved.
async fn isolate_network(
    clients: &Clients,
    found: &Found,
    lookups: Vec<(String, Prepared)>,
    recalled: &BTreeMap<String, Vec<String>>,
    deadline: Option<Instant>,
) -> Result<(Result<bool, Error>, Vec<QuarantineGroup>, Vec<Moved>), Error> {
    let (ec2, plan) = (&clients.ec2, clients.plan());
    let moved = async {
        let groups = try_join_all(lookups.into_iter().map(|(vpc, prepared)| async move {
            match prepared {
                Prepared::Ready(made) => made,
                Prepared::Lookup(lookup) => {
                    ensure_quarantine_group(ec2, plan, &vpc, lookup.map(|l| *l)).await
                }
            }
        }))
        .await?;
        let by_vpc: BTreeMap<&str, &QuarantineGroup> =
            groups.iter().map(|g| (g.vpc_id.as_str(), g)).collect();
        let moves = join_all(
            found
                .interfaces
                .iter()
                .filter(|eni| !found.managed.contains(&eni.id))
                .map(|eni| {
                    let moved = move_interface(
                        ec2,
                        plan,
                        eni,
                        by_vpc.get(eni.vpc_id.as_str()).copied(),
                        recalled.get(&eni.id).cloned().unwrap_or_default(),
                        deadline,
                    );
                    calls::branch(format!("network/{}", eni.id), moved)
                }),
        )
        .await;
        Ok::<_, Error>((groups, moves))
    };
    let (recorded, moved) = futures::join!(
        calls::branch(
            "record",
            record(clients, &found.instance, &found.interfaces)
        ),
        moved
    );
    let (groups, moves) = moved?;
    Ok((recorded, groups, moves))
}

/// One interface's move: isolated, or how it was left.
type Moved = Result<InterfaceIsolation, (String, MoveFailure)>;

/// Tallies each interface's move; returns the isolated ones and those left EXPOSED in the
/// transit group.
fn tally_moves(moves: Vec<Moved>, tally: &mut Tally) -> (Vec<InterfaceIsolation>, Vec<String>) {
    let mut isolated = Vec::new();
    let mut exposed = Vec::new();
    for result in moves {
        match result {
            Ok(eni) => {
                tally.done(format!(
                    "{} isolated (previous groups: {})",
                    eni.interface_id,
                    eni.previous_groups.join(", ")
                ));
                isolated.push(eni);
            }
            Err((eni, MoveFailure::NotIsolated(err))) => tally.failed(
                format!("interface {eni} (NOT isolated: left in its previous groups)"),
                err,
            ),
            Err((eni, MoveFailure::Exposed(err))) => {
                tally.failed(
                    format!("interface {eni} (EXPOSED: left in the allow-all transit group)"),
                    err,
                );
                exposed.push(eni);
            }
        }
    }
    (isolated, exposed)
}

/// The step's error when an interface is left in the allow-all transit group: it names them
/// first, and carries the step's tally (which holds at least the failure that left them).
fn failed_open(target: &Target, exposed: Vec<String>, tally: Tally) -> Error {
    let incomplete = match tally.finish() {
        Err(incomplete) => incomplete,
        Ok(_) => Error::Incomplete {
            step: "isolation",
            instance_id: target.instance_id.clone(),
            done: Vec::new(),
            failed: Vec::new(),
        },
    };
    Error::FailedOpen {
        instance_id: target.instance_id.clone(),
        exposed,
        incomplete: Box::new(incomplete),
    }
}

/// The instance's interfaces that a service manages (requester-managed): EC2 refuses changes
/// to their groups, so they are reported, not moved.
async fn requester_managed(
    ec2: &aws_sdk_ec2::Client,
    instance_id: &str,
) -> Result<BTreeSet<String>, Error> {
    let out = ec2
        .describe_network_interfaces()
        .filters(filter("attachment.instance-id", instance_id))
        .send()
        .await
        .map_err(|e| Error::from_sdk("ec2:DescribeNetworkInterfaces", e))?;
    Ok(out
        .network_interfaces()
        .iter()
        .filter(|n| n.requester_managed() == Some(true))
        .filter_map(|n| n.network_interface_id().map(str::to_owned))
        .collect())
}

fn interfaces(inst: &Instance) -> Vec<Interface> {
    inst.network_interfaces()
        .iter()
        .filter_map(|eni| {
            let groups = eni.groups();
            Some(Interface {
                id: eni.network_interface_id()?.to_owned(),
                vpc_id: eni.vpc_id().or(inst.vpc_id())?.to_owned(),
                groups: groups
                    .iter()
                    .filter_map(|g| g.group_id().map(str::to_owned))
                    .collect(),
                looks_isolated: alone_in(groups, QUARANTINE_GROUP_NAME),
                in_transit: alone_in(groups, TRANSIT_GROUP_NAME),
            })
        })
        .collect()
}

/// Whether the interface's only group is the tool's group of that name.
fn alone_in(groups: &[GroupIdentifier], name: &str) -> bool {
    matches!(groups, [only] if only.group_name() == Some(name))
}

/// Each interface's groups as the case recorded them (none without a case, or when it cannot
/// be read: the report then names no previous groups for those interfaces).
async fn recorded_groups(clients: &Clients) -> BTreeMap<String, Vec<String>> {
    let Some(case) = &clients.case else {
        return BTreeMap::new();
    };
    match Box::pin(case.recalled()).await {
        Ok(previous) => previous
            .into_iter()
            .filter_map(|p| match p {
                Previous::Groups {
                    interface_id,
                    groups,
                } => Some((interface_id, groups)),
                _ => None,
            })
            .collect(),
        Err(err) => {
            warn!(error = %err, "the case's record of the previous groups could not be read");
            BTreeMap::new()
        }
    }
}

/// Records in the case, for release, each interface's groups as read before any move and the
/// devices whose volumes are deleted with the instance. The first record of each stands: a
/// later run reads what containment left and never overwrites it. Returns whether it wrote.
async fn record(
    clients: &Clients,
    inst: &Instance,
    interfaces: &[Interface],
) -> Result<bool, Error> {
    let Some(case) = &clients.case else {
        return match &clients.case_unavailable {
            Some(why) => Err(Error::Misconfigured(why.clone())),
            None => Ok(false),
        };
    };
    let mut previous: Vec<Previous> = interfaces
        .iter()
        .filter(|e| !e.looks_isolated && !e.in_transit)
        .map(|e| Previous::Groups {
            interface_id: e.id.clone(),
            groups: e.groups.clone(),
        })
        .collect();
    let devices = deleted_on_termination(inst);
    if !devices.is_empty() {
        previous.push(Previous::DeleteOnTermination { devices });
    }
    Ok(Box::pin(case.remember_all(&previous)).await? > 0)
}

/// Marks the instance as contained, after acting: the case id and the time, two tags a person
/// sees in the console. Never read to decide anything.
async fn mark(clients: &Clients, instance_id: &str) -> Result<(), Error> {
    let Some(case) = &clients.case else {
        return Ok(());
    };
    tags::write(
        &clients.ec2,
        None,
        instance_id,
        vec![
            tags::new(tags::CASE, tags::value(&case.handle.case_id)),
            tags::new(tags::CONTAINED_AT, tags::value(&case.handle.opened_at)),
        ],
        "marker: the case that contained the instance",
    )
    .await
}

/// Devices of attached EBS volumes that would be deleted with the instance.
fn deleted_on_termination(inst: &Instance) -> Vec<String> {
    inst.block_device_mappings()
        .iter()
        .filter(|m| m.ebs().and_then(|e| e.delete_on_termination()) == Some(true))
        .filter_map(|m| m.device_name().map(str::to_owned))
        .collect()
}

/// What keeping the evidence did, each change on its own.
struct Protection {
    /// The step's tally, begun here: each change, and the warnings of the record.
    tally: Tally,
    /// Devices whose DeleteOnTermination this run turned off.
    volumes_kept_on_termination: Vec<String>,
    termination_protection: bool,
}

/// Keeps the evidence: no API termination, a shutdown from inside stops, and no volume is
/// deleted with the instance. Each of the three changes is made on its own, so that one refused
/// does not hold the others back. The attributes the instance had are read and recorded in the
/// case first, for release; a record that fails never holds a change back.
async fn protect(clients: &Clients, inst: &Instance) -> Protection {
    let plan = clients.plan();
    let instance_id = inst.instance_id().unwrap_or_default();
    let mut out = Protection {
        tally: Tally::new("isolation", instance_id),
        volumes_kept_on_termination: Vec::new(),
        termination_protection: false,
    };
    Box::pin(remember_attributes(clients, instance_id, &mut out.tally)).await;
    let devices = deleted_on_termination(inst);
    let requests = attribute_changes(&clients.ec2, inst, &devices, &mut out.tally);
    let dry_run = plan.is_some();
    let answers = join_all(
        requests
            .into_iter()
            .map(|(request, what, detail)| async move {
                let answer = request
                    .dry_run(dry_run)
                    .send()
                    .await
                    .map(|_| ())
                    .map_err(|e| Error::from_sdk("ec2:ModifyInstanceAttribute", e));
                (answer, what, detail)
            }),
    )
    .await;
    for (answer, what, detail) in answers {
        if let Some(plan) = plan {
            plan.add_ec2("ec2:ModifyInstanceAttribute", instance_id, detail, answer);
            continue;
        }
        if out.tally.check(what, answer).is_none() {
            continue;
        }
        if what == "termination protection" {
            out.termination_protection = true;
        }
        if what == "volumes kept on termination" {
            info!(?devices, "volumes kept on termination");
            out.volumes_kept_on_termination = devices.clone();
        }
        out.tally.done(detail);
    }
    out
}

/// Reads termination protection and the shutdown behaviour the instance had, and records them
/// in the case before the change (the first record stands, so a retry that reads the changed
/// attributes never overwrites it). Neither a read nor a record that fails holds anything back:
/// each is a warning, as release will not restore what it lacks.
async fn remember_attributes(clients: &Clients, instance_id: &str, tally: &mut Tally) {
    let ec2 = &clients.ec2;
    let attribute = |name: InstanceAttributeName| {
        ec2.describe_instance_attribute()
            .instance_id(instance_id)
            .attribute(name)
            .send()
            .map(|r| r.map_err(|e| Error::from_sdk("ec2:DescribeInstanceAttribute", e)))
    };
    let previous = match futures::try_join!(
        attribute(InstanceAttributeName::DisableApiTermination),
        attribute(InstanceAttributeName::InstanceInitiatedShutdownBehavior),
    ) {
        Ok((termination, shutdown)) => Previous::Attributes {
            termination_protection: termination
                .disable_api_termination()
                .and_then(|a| a.value())
                .unwrap_or(false),
            shutdown: shutdown
                .instance_initiated_shutdown_behavior()
                .and_then(|a| a.value())
                .unwrap_or("stop")
                .to_owned(),
        },
        Err(err) => {
            tally.warn(format!(
                "termination protection and shutdown behaviour before containment could not be read ({err}): release will not restore them"
            ));
            return;
        }
    };
    if let Some(case) = clients.case.as_ref().filter(|_| clients.plan().is_none())
        && let Err(err) = Box::pin(case.remember(&previous)).await
    {
        warn!(error = %err, "record of the previous attributes not written");
        tally.warn(format!(
            "the record of termination protection and shutdown behaviour before containment could not be written to the case ({err}): release will not restore them"
        ));
    }
}

/// The attribute changes that keep the evidence, each a request of its own with what it is and
/// its line for the report. Spot instances cannot take termination protection: EC2 refuses
/// DisableApiTermination for them
/// (https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/ec2-instance-termination-protection.html),
/// so it is left out with a warning.
fn attribute_changes(
    ec2: &aws_sdk_ec2::Client,
    inst: &Instance,
    devices: &[String],
    tally: &mut Tally,
) -> Vec<(ModifyInstanceAttributeFluentBuilder, &'static str, String)> {
    let instance_id = inst.instance_id().unwrap_or_default();
    let mut requests = Vec::new();
    if inst.instance_lifecycle() == Some(&InstanceLifecycleType::Spot) {
        tally.warn(
            "termination protection not set: EC2 does not allow it on Spot instances (an interruption or a person can still terminate this one: snapshots are the evidence)",
        );
    } else {
        requests.push((
            ec2.modify_instance_attribute()
                .instance_id(instance_id)
                .disable_api_termination(AttributeBooleanValue::builder().value(true).build()),
            "termination protection",
            "termination protection on".to_owned(),
        ));
    }
    requests.push((
        ec2.modify_instance_attribute()
            .instance_id(instance_id)
            .instance_initiated_shutdown_behavior(AttributeValue::builder().value("stop").build()),
        "shutdown behaviour",
        "shutdown from inside the instance stops it".to_owned(),
    ));
    if !devices.is_empty() {
        let mappings = devices
            .iter()
            .map(|d| {
                InstanceBlockDeviceMappingSpecification::builder()
                    .device_name(d)
                    .ebs(
                        EbsInstanceBlockDeviceSpecification::builder()
                            .delete_on_termination(false)
                            .build(),
                    )
                    .build()
            })
            .collect();
        requests.push((
            ec2.modify_instance_attribute()
                .instance_id(instance_id)
                .set_block_device_mappings(Some(mappings)),
            "volumes kept on termination",
            format!("volumes kept on termination: {}", devices.join(", ")),
        ));
    }
    requests
}

/// How an interface that did not reach the quarantine group was left.
enum MoveFailure {
    /// In the groups it had before (the move failed before the transit group, or it was moved
    /// back out of it): not isolated, and no more open than before.
    NotIsolated(Error),
    /// In the allow-all transit group: neither the move on to the quarantine group nor the move
    /// back to its previous groups succeeded. All traffic reaches it.
    Exposed(Error),
}

/// Time kept back from the function's deadline to move an interface out of the transit group
/// when the move to quarantine has not answered.
const REVERT_RESERVE: Duration = Duration::from_secs(5);
/// Below this much time left, an interface goes straight to quarantine: the transit group is
/// used only when there is time both to leave it and to come back from it.
const TRANSIT_MIN_TIME: Duration = Duration::from_secs(12);
/// Time kept back from the deadline by the move back and its checks, for the step to return
/// what it left (EXPOSED): a call the SDK keeps asking under throttling (`SdkMaxAttempts`)
/// never runs into the function's end.
const ANSWER_RESERVE: Duration = Duration::from_secs(1);

/// Runs `call` until `deadline` (none: until it ends); a call cut by the deadline is a transient
/// failure whose effect is unknown.
async fn until<T, F>(deadline: Option<Instant>, call: F) -> Result<T, Error>
where
    F: std::future::Future<Output = Result<T, Error>>,
{
    let Some(deadline) = deadline else {
        return call.await;
    };
    tokio::time::timeout_at(deadline, call)
        .await
        .unwrap_or_else(|_| {
            Err(Error::Transient {
                action: "ec2:NetworkInterface",
                code: "FunctionDeadline".into(),
                message: "no answer before the function's time ran out".into(),
                source: "deadline".into(),
            })
        })
}

/// Moves one interface into the quarantine group alone, through the transit group when there is
/// one. Once the interface may be in the transit group it never stays there: it goes on to the
/// quarantine group or back to the groups it had, or the failure says EXPOSED.
///
/// One piece on purpose: every way out of it says where the interface is left (quarantine, its
/// own groups, or EXPOSED in transit), and the fail-safe is checked by reading that sequence
/// whole (`tests/fail_open.rs` drives each exit).
async fn move_interface(
    ec2: &aws_sdk_ec2::Client,
    plan: Option<&Plan>,
    eni: &Interface,
    group: Option<&QuarantineGroup>,
    recorded: Vec<String>,
    deadline: Option<Instant>,
) -> Result<InterfaceIsolation, (String, MoveFailure)> {
    let (group_id, transit_id) = group
        .map(|g| (g.group_id.as_str(), g.transit_group_id.as_str()))
        .unwrap_or_default();
    let isolated = eni.groups.len() == 1 && eni.groups[0] == group_id;
    // An interface found in the transit group was put there by an earlier run cut short: its
    // own groups are the ones that run recorded.
    let previous_groups = if isolated || eni.in_transit {
        recorded
    } else {
        eni.groups.clone()
    };
    let report = |status, connections_cut| InterfaceIsolation {
        interface_id: eni.id.clone(),
        vpc_id: eni.vpc_id.clone(),
        previous_groups: previous_groups.clone(),
        status,
        connections_cut,
    };
    if isolated {
        return Ok(report(InterfaceStatus::AlreadyIsolated, false));
    }
    if let Some(plan) = plan {
        for (group, detail) in [
            (
                transit_id,
                "first to the transit group, which untracks open connections",
            ),
            (group_id, "then to the quarantine group alone"),
        ] {
            plan_groups(ec2, plan, &eni.id, group, detail).await;
        }
        return Ok(report(InterfaceStatus::Isolated, false));
    }
    let set_groups = |groups: Vec<String>| {
        settle(move || {
            ec2.modify_network_interface_attribute()
                .network_interface_id(&eni.id)
                .set_groups(Some(groups.clone()))
                .send()
                .map(|r| {
                    r.map(|_| ())
                        .map_err(|e| Error::from_sdk("ec2:ModifyNetworkInterfaceAttribute", e))
                })
        })
    };
    let time_left = |reserve: Duration| {
        deadline.is_none_or(|d| d.saturating_duration_since(Instant::now()) > reserve)
    };
    // Whether the interface may be in the transit group now (moved there by this run or an
    // earlier one, or by a request whose answer never came).
    let mut maybe_in_transit = eni.in_transit;
    let mut connections_cut = eni.in_transit;
    let transit_tried = !eni.in_transit && !transit_id.is_empty() && time_left(TRANSIT_MIN_TIME);
    if transit_tried {
        match until(
            deadline.map(|d| d - REVERT_RESERVE),
            set_groups(vec![transit_id.to_owned()]),
        )
        .await
        {
            Ok(()) => {
                maybe_in_transit = true;
                connections_cut = true;
            }
            Err(err) => {
                maybe_in_transit = err.maybe_applied();
                warn!(eni = %eni.id, error = %err, "transit move failed: open connections may persist");
            }
        }
    }
    let to_quarantine = || {
        until(
            deadline.map(|d| d - REVERT_RESERVE),
            set_groups(vec![group_id.to_owned()]),
        )
    };
    let isolated = |connections_cut| {
        info!(eni = %eni.id, sg = %group_id, previous = ?previous_groups, connections_cut, "interface isolated");
        Ok(report(InterfaceStatus::Isolated, connections_cut))
    };
    let err = match to_quarantine().await {
        Ok(()) => return isolated(connections_cut),
        Err(err) if !maybe_in_transit && !transit_tried => {
            return Err((eni.id.clone(), MoveFailure::NotIsolated(err)));
        }
        Err(err) => err,
    };
    // A call that failed may still have been applied (an earlier attempt the SDK retried, an
    // answer that never came): where the interface is, AWS says.
    let not_open = |groups: &[String]| groups != [transit_id.to_owned()];
    let answer_by = deadline.map(|d| d - ANSWER_RESERVE);
    match until(answer_by, current_groups(ec2, &eni.id)).await {
        Ok(groups) if groups == [group_id.to_owned()] => return isolated(connections_cut),
        Ok(groups) if not_open(&groups) => {
            return Err((eni.id.clone(), MoveFailure::NotIsolated(err)));
        }
        _ => {}
    }
    // In the transit group (or unknown): once more to quarantine when the failure may pass,
    // then back to the groups it had, which allow no more than before.
    if err.name().is_retryable() && to_quarantine().await.is_ok() {
        return isolated(connections_cut);
    }
    warn!(eni = %eni.id, error = %err, "the move to quarantine failed after the transit group: moving the interface back");
    if !previous_groups.is_empty()
        && until(answer_by, set_groups(previous_groups.clone()))
            .await
            .is_ok()
    {
        warn!(eni = %eni.id, previous = ?previous_groups, "moved back to its previous groups: not isolated");
        return Err((eni.id.clone(), MoveFailure::NotIsolated(err)));
    }
    match until(answer_by, current_groups(ec2, &eni.id)).await {
        Ok(groups) if groups == [group_id.to_owned()] => isolated(connections_cut),
        Ok(groups) if not_open(&groups) => Err((eni.id.clone(), MoveFailure::NotIsolated(err))),
        _ => {
            error!(eni = %eni.id, "EXPOSED: in the transit group, and neither the move on nor the move back succeeded");
            Err((eni.id.clone(), MoveFailure::Exposed(err)))
        }
    }
}

/// Runs `call` again while EC2 does not know a group yet: `InvalidGroup.NotFound` right after
/// the group's creation is EC2's eventual consistency, and a call refused so was not applied.
/// Three more times at most, over 1.4 s.
async fn settle<T, F, Fut>(mut call: F) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Error>>,
{
    let mut wait = Duration::from_millis(200);
    for _ in 0..3 {
        match call().await {
            Err(err) if err.aws_code() == Some("InvalidGroup.NotFound") => {
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
            other => return other,
        }
    }
    call().await
}

/// The interface's groups as EC2 has them now.
async fn current_groups(ec2: &aws_sdk_ec2::Client, eni: &str) -> Result<Vec<String>, Error> {
    let out = ec2
        .describe_network_interfaces()
        .network_interface_ids(eni)
        .send()
        .await
        .map_err(|e| Error::from_sdk("ec2:DescribeNetworkInterfaces", e))?;
    Ok(out
        .network_interfaces()
        .first()
        .map(|n| {
            n.groups()
                .iter()
                .filter_map(|g| g.group_id().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default())
}

/// Plans one group change of an interface, checked with EC2's DryRun when the group exists.
async fn plan_groups(ec2: &aws_sdk_ec2::Client, plan: &Plan, eni: &str, group: &str, detail: &str) {
    let detail = format!("{detail} ({group})");
    if is_planned_group(group) || group.is_empty() {
        plan.add(PlannedAction::unchecked(
            "ec2:ModifyNetworkInterfaceAttribute",
            eni,
            detail,
        ));
        return;
    }
    let answer = ec2
        .modify_network_interface_attribute()
        .network_interface_id(eni)
        .groups(group)
        .dry_run(true)
        .send()
        .await
        .map_err(|e| Error::from_sdk("ec2:ModifyNetworkInterfaceAttribute", e));
    plan.add_ec2("ec2:ModifyNetworkInterfaceAttribute", eni, detail, answer);
}

/// The stand-in id of a group a dry run would create.
fn planned_group_id(name: &str) -> String {
    format!("(new group {name})")
}

fn is_planned_group(id: &str) -> bool {
    id.starts_with("(new group ")
}

fn filter(name: &str, value: &str) -> Filter {
    Filter::builder().name(name).values(value).build()
}

/// Finds or creates the tool's two groups in a VPC (both at once, each created tagged and known
/// from what its create call returns: no read back), then sets their rules, both at once: the
/// quarantine group with every rule revoked, the transit group allowing all traffic. No
/// interface moves before both are set. Without a usable transit group the interfaces are still
/// isolated, only without cutting open connections. `found` is a lookup already made (while the
/// instance was read); without it the groups are looked up here.
async fn ensure_quarantine_group(
    ec2: &aws_sdk_ec2::Client,
    plan: Option<&Plan>,
    vpc_id: &str,
    found: Option<FoundGroups>,
) -> Result<QuarantineGroup, Error> {
    let (found_quarantine, found_transit) = match found {
        Some(found) => found,
        None => find_groups(ec2, vpc_id).await,
    };
    let quarantine = async {
        let (group, created) = ensure_group(
            ec2,
            plan,
            vpc_id,
            (
                QUARANTINE_GROUP_NAME,
                QUARANTINE_GROUP_DESCRIPTION,
                tags::ISOLATION_GROUP,
            ),
            found_quarantine?,
        )
        .await?;
        // A group this run created has the rules EC2 gives every new group; a group found has
        // the rules its lookup listed.
        let emptied = if created {
            revoke_defaults(ec2, plan, group.group_id().unwrap_or_default()).await?
        } else {
            revoke_all_rules(ec2, plan, &group).await?
        };
        Ok::<_, Error>((group, created || emptied))
    };
    let transit = async {
        let (group, created) = ensure_group(
            ec2,
            plan,
            vpc_id,
            (
                TRANSIT_GROUP_NAME,
                TRANSIT_GROUP_DESCRIPTION,
                tags::TRANSIT_GROUP,
            ),
            found_transit?,
        )
        .await?;
        // A group this run created has the one rule EC2 gives every new group: all traffic
        // out, IPv4 (and IPv6 in a dual-stack VPC: asked again, a duplicate is fine).
        let listed = if created {
            let mut new = group.clone();
            new.ip_permissions_egress = Some(vec![all_traffic(false)]);
            new
        } else {
            group.clone()
        };
        let opened = allow_all(ec2, plan, &listed).await?;
        Ok::<_, Error>((group, created || opened))
    };
    let (quarantine, transit) = futures::join!(quarantine, transit);
    let (group, quarantine_changed) = quarantine?;
    let (transit_group_id, transit_changed) = match transit {
        Ok((g, changed)) => (g.group_id().unwrap_or_default().to_owned(), changed),
        Err(err) => {
            warn!(vpc_id, error = %err, "no transit group: open connections will not be cut");
            (String::new(), false)
        }
    };
    let group_id = group.group_id().unwrap_or_default().to_owned();
    Ok(QuarantineGroup {
        vpc_id: vpc_id.to_owned(),
        group_id,
        transit_group_id,
        changed: quarantine_changed || transit_changed,
    })
}

/// Every protocol to or from anywhere, IPv4 (`v6` false) or IPv6.
fn all_traffic(v6: bool) -> IpPermission {
    let p = IpPermission::builder().ip_protocol("-1");
    if v6 {
        p.ipv6_ranges(Ipv6Range::builder().cidr_ipv6("::/0").build())
    } else {
        p.ip_ranges(IpRange::builder().cidr_ip("0.0.0.0/0").build())
    }
    .build()
}

/// Revokes the rules EC2 gives a new group in a VPC: all traffic out, IPv4, and IPv6 in a
/// dual-stack VPC (both asked at once; a rule that is not there, IPv6 in an IPv4-only VPC or
/// one a concurrent execution revoked first, is the state wanted).
async fn revoke_defaults(
    ec2: &aws_sdk_ec2::Client,
    plan: Option<&Plan>,
    id: &str,
) -> Result<bool, Error> {
    if let Some(plan) = plan {
        plan.add(PlannedAction::unchecked(
            "ec2:RevokeSecurityGroupEgress",
            id,
            "revoke the new quarantine group's default rules (all traffic out)",
        ));
        return Ok(false);
    }
    let revoke = |v6: bool| {
        settle(move || async move {
            let revoked = ec2
                .revoke_security_group_egress()
                .group_id(id)
                .ip_permissions(all_traffic(v6))
                .send()
                .await
                .map(|_| ())
                .map_err(|e| group_error("ec2:RevokeSecurityGroupEgress", e));
            match revoked {
                Err(e) if e.aws_code() == Some("InvalidPermission.NotFound") => Ok(()),
                other => other,
            }
        })
    };
    // Both to their end (neither cut short by the other's failure).
    let (v4, v6) = futures::join!(revoke(false), revoke(true));
    v4?;
    v6?;
    Ok(true)
}

/// The tool's group with that tag in the VPC, if there is one.
async fn find_group(
    ec2: &aws_sdk_ec2::Client,
    vpc_id: &str,
    tag: &str,
) -> Result<Option<SecurityGroup>, Error> {
    let found = ec2
        .describe_security_groups()
        .filters(filter("vpc-id", vpc_id))
        // The value too: a group tagged `false` by someone else is not the tool's (its rules
        // could not be changed under the policy's `aws:ResourceTag/...=true` condition).
        .filters(filter(&format!("tag:{tag}"), "true"))
        .send()
        .await
        .map_err(|e| Error::from_sdk("ec2:DescribeSecurityGroups", e))?;
    Ok(found.security_groups().first().cloned())
}

/// The tool's two groups in a VPC (quarantine, transit) as a lookup found them.
type FoundGroups = (
    Result<Option<SecurityGroup>, Error>,
    Result<Option<SecurityGroup>, Error>,
);

/// Looks both groups up at once.
async fn find_groups(ec2: &aws_sdk_ec2::Client, vpc_id: &str) -> FoundGroups {
    futures::join!(
        find_group(ec2, vpc_id, tags::ISOLATION_GROUP),
        find_group(ec2, vpc_id, tags::TRANSIT_GROUP),
    )
}

/// The tool's group of that name in the VPC (`found` by its tag), created if missing. Returns
/// it and whether it was created.
async fn ensure_group(
    ec2: &aws_sdk_ec2::Client,
    plan: Option<&Plan>,
    vpc_id: &str,
    (name, description, tag): (&str, &str, &str),
    found: Option<SecurityGroup>,
) -> Result<(SecurityGroup, bool), Error> {
    if let Some(group) = found {
        return Ok((group, false));
    }
    if let Some(plan) = plan {
        let answer = ec2
            .create_security_group()
            .group_name(name)
            .description(description)
            .vpc_id(vpc_id)
            .dry_run(true)
            .send()
            .await
            .map_err(|e| Error::from_sdk("ec2:CreateSecurityGroup", e));
        plan.add_ec2(
            "ec2:CreateSecurityGroup",
            vpc_id,
            format!("group {name}"),
            answer,
        );
        let planned = SecurityGroup::builder()
            .group_id(planned_group_id(name))
            .group_name(name)
            .vpc_id(vpc_id)
            .build();
        return Ok((planned, true));
    }
    create_group(ec2, vpc_id, name, description, tag).await
}

/// Creates the tool's group `name` in the VPC, tagged in the same call (the only tags the tool
/// may put on a security group: IAM allows `ec2:CreateTags` on groups only with
/// `ec2:CreateAction=CreateSecurityGroup`), and known from the id the call returns. When the
/// name is taken, the group of that name is adopted if it carries the tool's tag (another
/// execution created it first: its rules as listed); a group someone else made under the
/// tool's name is never tagged nor used: the tool's group is created beside it under the name
/// with a suffix. Returns the group and whether this call created it.
async fn create_group(
    ec2: &aws_sdk_ec2::Client,
    vpc_id: &str,
    name: &str,
    description: &str,
    tag: &str,
) -> Result<(SecurityGroup, bool), Error> {
    let mut chosen = name.to_owned();
    for attempt in 0..2 {
        let created = ec2
            .create_security_group()
            .group_name(&chosen)
            .description(description)
            .vpc_id(vpc_id)
            .tag_specifications(
                TagSpecification::builder()
                    .resource_type(ResourceType::SecurityGroup)
                    .tags(tags::new("Name", name))
                    .tags(tags::new(tag, "true"))
                    .build(),
            )
            .send()
            .await;
        match created {
            Ok(out) => {
                let Some(id) = out.group_id() else {
                    return Err(Error::Transient {
                        action: "ec2:CreateSecurityGroup",
                        code: "NoGroupId".into(),
                        message: format!(
                            "the group {chosen} of {vpc_id} was created without an id in the answer"
                        ),
                        source: "no group id".into(),
                    });
                };
                let group = SecurityGroup::builder()
                    .group_id(id)
                    .group_name(&chosen)
                    .vpc_id(vpc_id)
                    .build();
                return Ok((group, true));
            }
            Err(e) => {
                let err = Error::from_sdk("ec2:CreateSecurityGroup", e);
                if err.aws_code() != Some("InvalidGroup.Duplicate") {
                    return Err(err);
                }
            }
        }
        let described = ec2
            .describe_security_groups()
            .filters(filter("vpc-id", vpc_id))
            .filters(filter("group-name", &chosen))
            .send()
            .await
            .map_err(|e| Error::from_sdk("ec2:DescribeSecurityGroups", e))?;
        // EC2 is eventually consistent: a group another execution just created may not be
        // listed yet. Retrying the step finds it.
        let group = described
            .security_groups()
            .first()
            .cloned()
            .ok_or_else(|| Error::Transient {
                action: "ec2:DescribeSecurityGroups",
                code: "InvalidGroup.NotFound".into(),
                message: format!("the group {chosen} of {vpc_id} is not visible yet"),
                source: "group not visible after creation".into(),
            })?;
        // A group of that name made earlier is the tool's only if it carries the tag.
        if tags::find(group.tags(), tag) == Some("true") {
            return Ok((group, false));
        }
        warn!(group = ?group.group_id(), name = %chosen, "a group not made by the tool holds its name: left alone");
        if attempt == 1 {
            break;
        }
        // The tool's group may be there already under a suffixed name (made by an earlier run,
        // when it was not looked up first: triage found none): that one, never a second.
        if let Some(group) = find_group(ec2, vpc_id, tag).await? {
            return Ok((group, false));
        }
        chosen = format!("{name}-{}", &crate::case::new_claim()[..8]);
    }
    Err(Error::Transient {
        action: "ec2:CreateSecurityGroup",
        code: "InvalidGroup.Duplicate".into(),
        message: format!(
            "the name {name} of {vpc_id}, and the same with a suffix, are held by groups the tool did not make"
        ),
        source: "group name taken".into(),
    })
}

/// Makes the transit group allow all traffic in and out, IPv4 and IPv6, from the rules `group`
/// lists (for a group this run created, the one EC2 gives it). Each missing rule is its own
/// request, all at once: EC2 refuses a request whole when one of its rules exists, so a
/// duplicate (a concurrent execution added it first, the state wanted) never hides another
/// rule that is missing. Returns whether it added a rule.
async fn allow_all(
    ec2: &aws_sdk_ec2::Client,
    plan: Option<&Plan>,
    group: &SecurityGroup,
) -> Result<bool, Error> {
    let id = group.group_id().unwrap_or_default();
    let has = |perms: &[IpPermission], v6: bool| {
        perms
            .iter()
            .filter(|p| p.ip_protocol() == Some("-1"))
            .any(|p| {
                if v6 {
                    p.ipv6_ranges()
                        .iter()
                        .any(|r| r.cidr_ipv6() == Some("::/0"))
                } else {
                    p.ip_ranges()
                        .iter()
                        .any(|r| r.cidr_ip() == Some("0.0.0.0/0"))
                }
            })
    };
    // (ingress, v6) of each rule missing.
    let missing: Vec<(bool, bool)> = [(true, false), (true, true), (false, false), (false, true)]
        .into_iter()
        .filter(|&(ingress, v6)| {
            let listed = if ingress {
                group.ip_permissions()
            } else {
                group.ip_permissions_egress()
            };
            !has(listed, v6)
        })
        .collect();
    if let Some(plan) = plan {
        for (action, direction) in [
            ("ec2:AuthorizeSecurityGroupIngress", true),
            ("ec2:AuthorizeSecurityGroupEgress", false),
        ] {
            if missing.iter().any(|&(ingress, _)| ingress == direction) {
                plan.add(PlannedAction::unchecked(
                    action,
                    id,
                    "allow all traffic, IPv4 and IPv6 (transit group)",
                ));
            }
        }
        return Ok(!missing.is_empty());
    }
    // A group just created may not be known to EC2 yet: `settle` waits that out.
    let add = |(ingress, v6): (bool, bool)| {
        settle(move || async move {
            let added = if ingress {
                ec2.authorize_security_group_ingress()
                    .group_id(id)
                    .ip_permissions(all_traffic(v6))
                    .send()
                    .await
                    .map(|_| ())
                    .map_err(|e| group_error("ec2:AuthorizeSecurityGroupIngress", e))
            } else {
                ec2.authorize_security_group_egress()
                    .group_id(id)
                    .ip_permissions(all_traffic(v6))
                    .send()
                    .await
                    .map(|_| ())
                    .map_err(|e| group_error("ec2:AuthorizeSecurityGroupEgress", e))
            };
            match added {
                Err(e) if e.aws_code() == Some("InvalidPermission.Duplicate") => Ok(()),
                other => other,
            }
        })
    };
    // Each to its end (none cut short by another's failure).
    join_all(missing.iter().copied().map(add))
        .await
        .into_iter()
        .collect::<Result<Vec<()>, Error>>()?;
    Ok(!missing.is_empty())
}

/// An error about the quarantine group the step just found or created: "not found" there is
/// EC2's eventual consistency, which a retry of the step outlasts.
fn group_error<E>(action: &'static str, err: SdkError<E, HttpResponse>) -> Error
where
    E: aws_sdk_ec2::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match Error::from_sdk(action, err) {
        Error::Aws {
            action,
            code,
            message,
            source,
        } if code == "InvalidGroup.NotFound" => Error::Transient {
            action,
            code,
            message,
            source,
        },
        other => other,
    }
}

/// Revokes every rule of the group, IPv4 and IPv6, in and out. Returns whether it revoked any.
async fn revoke_all_rules(
    ec2: &aws_sdk_ec2::Client,
    plan: Option<&Plan>,
    group: &SecurityGroup,
) -> Result<bool, Error> {
    if let Some(plan) = plan {
        let id = group.group_id().unwrap_or_default();
        for (action, rules) in [
            (
                "ec2:RevokeSecurityGroupEgress",
                group.ip_permissions_egress(),
            ),
            ("ec2:RevokeSecurityGroupIngress", group.ip_permissions()),
        ] {
            if !rules.is_empty() {
                plan.add(PlannedAction::unchecked(
                    action,
                    id,
                    format!("revoke {} rule(s) of the quarantine group", rules.len()),
                ));
            }
        }
        return Ok(false);
    }
    match revoke_listed(ec2, group).await {
        // Another execution revoked some of these rules first: revoke what is left, once.
        Err(err) if err.aws_code() == Some("InvalidPermission.NotFound") => {
            let id = group.group_id().unwrap_or_default();
            let fresh = ec2
                .describe_security_groups()
                .filters(filter("group-id", id))
                .send()
                .await
                .map_err(|e| Error::from_sdk("ec2:DescribeSecurityGroups", e))?;
            match fresh.security_groups().first() {
                Some(g) => revoke_listed(ec2, g).await.map(|_| true),
                None => Err(err),
            }
        }
        other => other,
    }
}

/// Revokes the rules `group` lists (waiting out a group EC2 does not know yet, as a group
/// another execution just created may be). Returns whether there were any.
async fn revoke_listed(ec2: &aws_sdk_ec2::Client, group: &SecurityGroup) -> Result<bool, Error> {
    let id = group.group_id().unwrap_or_default();
    let egress = group.ip_permissions_egress().to_vec();
    let ingress = group.ip_permissions().to_vec();
    let revoke_egress = async {
        if egress.is_empty() {
            return Ok(false);
        }
        settle(|| {
            ec2.revoke_security_group_egress()
                .group_id(id)
                .set_ip_permissions(Some(egress.clone()))
                .send()
                .map(|r| r.map_err(|e| group_error("ec2:RevokeSecurityGroupEgress", e)))
        })
        .await?;
        Ok(true)
    };
    let revoke_ingress = async {
        if ingress.is_empty() {
            return Ok(false);
        }
        settle(|| {
            ec2.revoke_security_group_ingress()
                .group_id(id)
                .set_ip_permissions(Some(ingress.clone()))
                .send()
                .map(|r| r.map_err(|e| group_error("ec2:RevokeSecurityGroupIngress", e)))
        })
        .await?;
        Ok(true)
    };
    let (e, i) = futures::try_join!(revoke_egress, revoke_ingress)?;
    Ok(e || i)
}

#[cfg(test)]
mod tests {
    use aws_sdk_ec2::operation::describe_network_interfaces::DescribeNetworkInterfacesOutput;
    use aws_sdk_ec2::operation::modify_network_interface_attribute::ModifyNetworkInterfaceAttributeOutput;
    use aws_sdk_ec2::types::InstanceStateName;
    use aws_smithy_mocks::{RuleMode, mock, mock_client};

    use super::*;
    use crate::steps::testing;

    /// A terminated (or terminating) instance is reported as gone, and nothing is changed: no
    /// group is made and no interface moves.
    #[tokio::test]
    async fn a_terminated_instance_is_skipped_and_nothing_changes() {
        for state in [
            InstanceStateName::Terminated,
            InstanceStateName::ShuttingDown,
        ] {
            let answered = state.clone();
            let describe = mock!(aws_sdk_ec2::Client::describe_instances)
                .then_output(move || testing::instance(answered.clone()));
            let interfaces = mock!(aws_sdk_ec2::Client::describe_network_interfaces)
                .then_output(|| DescribeNetworkInterfacesOutput::builder().build());
            let moves = mock!(aws_sdk_ec2::Client::modify_network_interface_attribute)
                .then_output(|| ModifyNetworkInterfaceAttributeOutput::builder().build());
            let mut clients = testing::clients();
            clients.ec2 = mock_client!(
                aws_sdk_ec2,
                RuleMode::MatchAny,
                &[&describe, &interfaces, &moves]
            );
            let outcome = isolate_instance(&clients, &testing::target(), None)
                .await
                .unwrap();
            let Outcome::Skipped { reason } = outcome else {
                panic!("{state:?}: {outcome:?}");
            };
            assert!(reason.contains(state.as_str()), "{reason}");
            assert_eq!(moves.num_calls(), 0);
        }
    }
}
