//! Forensic snapshots: every attached EBS volume of the instance, in one crash-consistent
//! CreateSnapshots call. The Lambda returns the snapshot ids at once; snapshots complete in EBS
//! on their own, and a snapshot is usable as evidence from the moment it is requested.

use std::collections::BTreeMap;

use aws_sdk_ec2::types::{
    CopyTagsFromSource, Filter, Instance, InstanceSpecification, ResourceType, Snapshot,
    TagSpecification,
};
use futures::future::join_all;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::context::{Clients, Ctx};
use crate::error::Error;
use crate::finding::{FindingEvent, Target};
use crate::outcome::Outcome;
use crate::{instance, tags};

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
pub async fn snapshot(ctx: &Ctx, event: &FindingEvent) -> Result<Outcome<SnapshotReport>, Error> {
    crate::for_target(ctx, event, |clients, target| async move {
        snapshot_instance(&clients, &target).await
    })
    .await
}

#[tracing::instrument(skip_all, fields(finding_id = %target.finding_id, instance_id = %target.instance_id))]
pub async fn snapshot_instance(
    clients: &Clients,
    target: &Target,
) -> Result<Outcome<SnapshotReport>, Error> {
    let ec2 = &clients.ec2;
    let (inst, earlier) = futures::try_join!(
        instance::describe(ec2, target),
        earlier_snapshots(ec2, target)
    )?;
    let devices = devices_by_volume(&inst);
    // One snapshot set per containment: the finding that contained the instance first (its
    // tag) names it, so that a second finding for a contained instance takes none again.
    let containment = tags::find(inst.tags(), tags::FINDING_ID).unwrap_or(&target.finding_id);
    let earlier: Vec<&Snapshot> = earlier
        .iter()
        .filter(|s| tags::find(s.tags(), tags::FINDING_ID) == Some(containment))
        .collect();

    // CreateSnapshots has no idempotency token: the tags set at creation are how a retried or
    // re-sent finding finds the snapshots it already took.
    if !earlier.is_empty() {
        let snapshots = earlier
            .iter()
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
            .collect();
        info!(
            finding = containment,
            "snapshots already taken for this containment"
        );
        return Ok(Outcome::AlreadyDone(SnapshotReport {
            instance_id: target.instance_id.clone(),
            snapshots,
            warnings: Vec::new(),
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

    let request = ec2
        .create_snapshots()
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
                .tags(tags::new(tags::FINDING_ID, containment))
                .tags(tags::new(tags::INSTANCE_ID, &target.instance_id))
                .build(),
        );
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
    let mut warnings = Vec::new();
    let created = match request
        .clone()
        .send()
        .await
        .map_err(|e| Error::from_sdk("ec2:CreateSnapshots", e))
    {
        // The volumes' own tags and the tool's would pass EC2's 50 tags per snapshot: the
        // evidence comes first, so the snapshots are taken with the tool's tags alone.
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

    let snapshots: Vec<ForensicSnapshot> = created
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
        .collect();
    info!(snapshots = ?snapshots.iter().map(|s| &s.snapshot_id).collect::<Vec<_>>(), "snapshots requested");

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

async fn earlier_snapshots(
    ec2: &aws_sdk_ec2::Client,
    target: &Target,
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
