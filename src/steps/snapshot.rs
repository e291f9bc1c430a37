//! Forensic snapshots: every attached EBS volume of the instance, in one crash-consistent
//! CreateSnapshots call. The Lambda returns the snapshot ids at once; snapshots complete in EBS
//! on their own, and a snapshot is usable as evidence from the moment it is requested.

use std::collections::BTreeMap;

use aws_sdk_ec2::operation::create_snapshots::builders::CreateSnapshotsFluentBuilder;
use aws_sdk_ec2::types::{
    CopyTagsFromSource, Filter, Instance, InstanceSpecification, ResourceType, Snapshot,
    TagSpecification,
};
use futures::future::join_all;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::aws::context::{Clients, Ctx};
use crate::aws::{instance, tags};
use crate::case::Claim;
use crate::domain::finding::{StepRequest, Target};
use crate::domain::outcome::Outcome;
use crate::error::Error;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotReport {
    pub instance_id: String,
    pub snapshots: Vec<ForensicSnapshot>,
    /// What was not done as usual, in plain words (the snapshots stand).
    #[serde(default)]
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ForensicSnapshot {
    pub snapshot_id: String,
    pub volume_id: String,
    pub device: Option<String>,
}

/// Snapshots the volumes of the instance a finding names (the Lambda handler).
pub async fn snapshot(
    ctx: &Ctx,
    request: impl Into<StepRequest>,
) -> Result<Outcome<SnapshotReport>, Error> {
    super::for_target(
        ctx,
        request.into(),
        "snapshot",
        |clients, target| async move { snapshot_instance(&clients, &target).await },
    )
    .await
}

#[tracing::instrument(skip_all, fields(finding_id = %target.finding_id, instance_id = %target.instance_id))]
pub async fn snapshot_instance(
    clients: &Clients,
    target: &Target,
) -> Result<Outcome<SnapshotReport>, Error> {
    let ec2 = &clients.ec2;
    let case = clients.case.as_ref();
    let mut warnings: Vec<String> = clients.case_unavailable.iter().cloned().collect();
    let create_called = match Box::pin(claim_set(case, &mut warnings)).await {
        Claimed::Recorded(recorded) => return Ok(recorded_set(target, recorded, warnings)),
        Claimed::Take { create_called } => create_called,
    };
    // The set's key on the snapshots: the case (or, without one, the finding).
    let set_key = case.map_or(target.finding_id.as_str(), |c| c.handle.case_id.as_str());
    let (inst, earlier) = futures::try_join!(
        instance::describe(ec2, &target.scope, &target.instance_id),
        async {
            if create_called {
                earlier_snapshots(ec2, target, set_key).await
            } else {
                Ok(Vec::new())
            }
        }
    )?;
    let devices = devices_by_volume(&inst);
    let earlier = earlier_set(case, &earlier, &devices);
    if !earlier.is_empty() {
        info!(
            set = set_key,
            "snapshots already taken for this containment"
        );
        Box::pin(record_set(case, &earlier, &mut warnings)).await;
        return Ok(Outcome::AlreadyDone(SnapshotReport {
            instance_id: target.instance_id.clone(),
            snapshots: earlier,
            warnings,
        }));
    }
    if let Some(reason) = instance::gone_reason(&inst) {
        return Ok(Outcome::skipped(reason));
    }
    if devices.is_empty() {
        return Ok(Outcome::skipped(
            "the instance has no attached EBS volume (instance store only)",
        ));
    }
    let request = create_request(ec2, target, set_key);
    if let Some(plan) = clients.plan() {
        let answer = request
            .dry_run(true)
            .send()
            .await
            .map_err(|e| Error::from_sdk("ec2:CreateSnapshots", e));
        plan.add_ec2(
            "ec2:CreateSnapshots",
            &target.instance_id,
            format!("one crash-consistent set of {} volume(s)", devices.len()),
            answer,
        );
        return Ok(plan.outcome());
    }
    if let Some(case) = case
        && let Err(err) = Box::pin(case.creating("snapshot")).await
    {
        crate::case::warn_unrecorded("snapshot call", &err);
    }
    let snapshots = Box::pin(take_set(request, &devices, &mut warnings)).await?;
    info!(snapshots = ?snapshots.iter().map(|s| &s.snapshot_id).collect::<Vec<_>>(), "snapshots requested");
    Box::pin(record_set(case, &snapshots, &mut warnings)).await;
    // Per-snapshot tags (CreateSnapshots applies the same tags to all). The snapshots exist and
    // carry the finding's tags already, so a failure here is logged, not fatal.
    let labels = join_all(snapshots.iter().map(|s| label(ec2, s))).await;
    for (s, result) in snapshots.iter().zip(labels) {
        if let Err(err) = result {
            warn!(snapshot = %s.snapshot_id, error = %err, "could not tag snapshot with its device");
        }
    }
    Ok(Outcome::Done(SnapshotReport {
        instance_id: target.instance_id.clone(),
        snapshots,
        warnings,
    }))
}

/// What the case says of the snapshot set.
enum Claimed {
    /// The set the case records: taken by an earlier run of this step, or by another execution.
    Recorded(Vec<String>),
    /// This run takes the set; `create_called`: whether an earlier run of the step called
    /// CreateSnapshots (only then are snapshots found by the case's tag taken for the set:
    /// anyone allowed to tag a snapshot could otherwise pass one off as the evidence).
    Take { create_called: bool },
}

/// One snapshot set per case: the step is claimed in the case before anything is taken, so
/// that two executions of one finding (or two findings of one instance) take one set. A claim
/// the table cannot answer never holds the evidence back: a set is taken, with a warning.
async fn claim_set(case: Option<&crate::case::Recorder>, warnings: &mut Vec<String>) -> Claimed {
    let Some(case) = case else {
        return Claimed::Take {
            create_called: true,
        };
    };
    match Box::pin(case.claim("snapshot")).await {
        Err(err) => {
            warn!(error = %err, "snapshot step not claimed in the case: taking a set all the same");
            warnings.push(format!(
                "the snapshot step could not be claimed in the case ({err}): a set was taken all the same"
            ));
            Claimed::Take {
                create_called: false,
            }
        }
        Ok(Claim::Mine) => {
            let create_called = Box::pin(case.create_called("snapshot"))
                .await
                .unwrap_or(false);
            let recorded = Box::pin(case.created("snapshot")).await.unwrap_or_default();
            if recorded.is_empty() {
                Claimed::Take { create_called }
            } else {
                info!(case = %case.handle.case_id, "snapshots already taken for this case");
                Claimed::Recorded(recorded)
            }
        }
        Ok(Claim::Taken { by, at, ended }) => {
            let recorded = Box::pin(case.created("snapshot")).await.unwrap_or_default();
            info!(%by, %at, ended, "snapshots of this case are taken by another execution");
            if !ended {
                warnings.push(format!(
                    "the snapshots of case {} are taken by another execution of it (started {at}); its ids are in the case",
                    case.handle.case_id
                ));
            }
            Claimed::Recorded(recorded)
        }
    }
}

/// The set a run cut short before it recorded it took, found by the tags set at creation
/// (CreateSnapshots has no idempotency token): only snapshots of the instance's own volumes
/// started since the case opened count.
fn earlier_set(
    case: Option<&crate::case::Recorder>,
    earlier: &[Snapshot],
    devices: &BTreeMap<String, String>,
) -> Vec<ForensicSnapshot> {
    let opened = case.map(|c| c.handle.opened_at.as_str()).and_then(|t| {
        aws_smithy_types::DateTime::from_str(t, aws_smithy_types::date_time::Format::DateTime).ok()
    });
    earlier
        .iter()
        .filter(|s| s.volume_id().is_some_and(|v| devices.contains_key(v)))
        .filter(|s| match (opened, s.start_time()) {
            (Some(opened), Some(started)) => started.secs() >= opened.secs(),
            (Some(_), None) => false,
            (None, _) => true,
        })
        .filter_map(|s| {
            let volume_id = s.volume_id()?.to_owned();
            Some(ForensicSnapshot {
                snapshot_id: s.snapshot_id()?.to_owned(),
                device: tags::find(s.tags(), tags::DEVICE)
                    .map(str::to_owned)
                    .or_else(|| devices.get(&volume_id).cloned()),
                volume_id,
            })
        })
        .collect()
}

/// One crash-consistent set of every volume of the instance, boot volume included, tagged at
/// creation with the set's key (the case) and the instance, the volumes' own tags copied.
fn create_request(
    ec2: &aws_sdk_ec2::Client,
    target: &Target,
    set_key: &str,
) -> CreateSnapshotsFluentBuilder {
    ec2.create_snapshots()
        .instance_specification(
            InstanceSpecification::builder()
                .instance_id(&target.instance_id)
                .exclude_boot_volume(false)
                .build(),
        )
        .description(tags::value(&format!(
            "Forensic snapshot of {} for GuardDuty finding {} ({})",
            target.instance_id, target.finding_id, target.finding_type
        )))
        .copy_tags_from_source(CopyTagsFromSource::Volume)
        .tag_specifications(
            TagSpecification::builder()
                .resource_type(ResourceType::Snapshot)
                .tags(tags::new(
                    "Name",
                    tags::value(&format!("quarantine {}", target.instance_id)),
                ))
                .tags(tags::new(tags::CASE, set_key))
                .tags(tags::new(tags::INSTANCE_ID, &target.instance_id))
                .build(),
        )
}

/// Takes the set. The volumes' own tags and the tool's would pass EC2's 50 tags per snapshot:
/// the evidence comes first, so the snapshots are then taken with the tool's tags alone.
async fn take_set(
    request: CreateSnapshotsFluentBuilder,
    devices: &BTreeMap<String, String>,
    warnings: &mut Vec<String>,
) -> Result<Vec<ForensicSnapshot>, Error> {
    let created = match request
        .clone()
        .send()
        .await
        .map_err(|e| Error::from_sdk("ec2:CreateSnapshots", e))
    {
        Err(err) if err.aws_code() == Some("TagLimitExceeded") => {
            warn!(error = %err, "volume tags not copied: over the tag quota");
            warnings.push(
                "the volumes' own tags were not copied to the snapshots: with the tool's tags they would pass EC2's 50 tags per snapshot".to_owned(),
            );
            request
                .set_copy_tags_from_source(None)
                .send()
                .await
                .map_err(|e| Error::from_sdk("ec2:CreateSnapshots", e))?
        }
        other => other?,
    };
    Ok(created
        .snapshots()
        .iter()
        .filter_map(|s| {
            let volume_id = s.volume_id()?.to_owned();
            Some(ForensicSnapshot {
                snapshot_id: s.snapshot_id()?.to_owned(),
                device: devices.get(&volume_id).cloned(),
                volume_id,
            })
        })
        .collect())
}

/// The set the case records (taken by this execution earlier, or by another one of the case).
fn recorded_set(
    target: &Target,
    recorded: Vec<String>,
    warnings: Vec<String>,
) -> Outcome<SnapshotReport> {
    Outcome::AlreadyDone(SnapshotReport {
        instance_id: target.instance_id.clone(),
        snapshots: recorded
            .iter()
            .map(|entry| ForensicSnapshot::recorded(entry))
            .collect(),
        warnings,
    })
}

/// Records the set in the case (the snapshots stand if this fails: they carry the case's tag).
async fn record_set(
    case: Option<&crate::case::Recorder>,
    snapshots: &[ForensicSnapshot],
    warnings: &mut Vec<String>,
) {
    let Some(case) = case else { return };
    // Each as `<snapshot> <volume> <device>`, read back by `ForensicSnapshot::recorded`.
    let created: Vec<String> = snapshots
        .iter()
        .map(|s| {
            format!(
                "{} {} {}",
                s.snapshot_id,
                s.volume_id,
                s.device.as_deref().unwrap_or("")
            )
            .trim_end()
            .to_owned()
        })
        .collect();
    if let Err(err) = case.record_created("snapshot", &created).await {
        crate::case::warn_unrecorded("snapshot set", &err);
        warnings.push(format!(
            "the snapshot ids could not be written to the case ({err}); the snapshots carry the tag {}",
            tags::CASE
        ));
    }
}

impl ForensicSnapshot {
    /// A snapshot as the case records it: `<snapshot> <volume> <device>`.
    fn recorded(entry: &str) -> ForensicSnapshot {
        let mut parts = entry.split(' ');
        ForensicSnapshot {
            snapshot_id: parts.next().unwrap_or_default().to_owned(),
            volume_id: parts.next().unwrap_or_default().to_owned(),
            device: parts.next().filter(|d| !d.is_empty()).map(str::to_owned),
        }
    }
}

async fn earlier_snapshots(
    ec2: &aws_sdk_ec2::Client,
    target: &Target,
    set_key: &str,
) -> Result<Vec<Snapshot>, Error> {
    let tag_filter = |key: &str, value: &str| {
        Filter::builder()
            .name(format!("tag:{key}"))
            .values(value)
            .build()
    };
    let out = ec2
        .describe_snapshots()
        .owner_ids("self")
        .filters(tag_filter(tags::INSTANCE_ID, &target.instance_id))
        .filters(tag_filter(tags::CASE, set_key))
        .send()
        .await
        .map_err(|e| Error::from_sdk("ec2:DescribeSnapshots", e))?;
    Ok(out.snapshots().to_vec())
}

/// Attached EBS volumes of the instance, by volume id, with their device names.
fn devices_by_volume(inst: &Instance) -> BTreeMap<String, String> {
    inst.block_device_mappings()
        .iter()
        .filter_map(|m| {
            let volume_id = m.ebs()?.volume_id()?.to_owned();
            Some((volume_id, m.device_name().unwrap_or("unknown").to_owned()))
        })
        .collect()
}

async fn label(ec2: &aws_sdk_ec2::Client, s: &ForensicSnapshot) -> Result<(), Error> {
    let mut request = ec2
        .create_tags()
        .resources(&s.snapshot_id)
        .tags(tags::new(tags::VOLUME_ID, &s.volume_id));
    if let Some(device) = &s.device {
        request = request.tags(tags::new(tags::DEVICE, tags::value(device)));
    }
    request
        .send()
        .await
        .map_err(|e| Error::from_sdk("ec2:CreateTags", e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use aws_sdk_ec2::operation::create_snapshots::CreateSnapshotsOutput;
    use aws_sdk_ec2::operation::describe_snapshots::DescribeSnapshotsOutput;
    use aws_sdk_ec2::types::InstanceStateName;
    use aws_smithy_mocks::{RuleMode, mock, mock_client};

    use super::*;
    use crate::steps::testing;

    /// An instance with no EBS volume (instance store only) has nothing to snapshot: skipped
    /// with the reason, and CreateSnapshots is not called.
    #[tokio::test]
    async fn an_instance_without_ebs_volumes_is_skipped() {
        let describe = mock!(aws_sdk_ec2::Client::describe_instances)
            .then_output(|| testing::instance(InstanceStateName::Running));
        let earlier = mock!(aws_sdk_ec2::Client::describe_snapshots)
            .then_output(|| DescribeSnapshotsOutput::builder().build());
        let create = mock!(aws_sdk_ec2::Client::create_snapshots)
            .then_output(|| CreateSnapshotsOutput::builder().build());
        let mut clients = testing::clients();
        clients.ec2 = mock_client!(
            aws_sdk_ec2,
            RuleMode::MatchAny,
            &[&describe, &earlier, &create]
        );
        let outcome = snapshot_instance(&clients, &testing::target())
            .await
            .unwrap();
        assert_eq!(
            outcome,
            Outcome::skipped("the instance has no attached EBS volume (instance store only)")
        );
        assert_eq!(create.num_calls(), 0);
    }
}
