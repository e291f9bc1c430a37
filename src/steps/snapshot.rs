//! Forensic snapshots: every attached EBS volume of the instance, in one crash-consistent
//! CreateSnapshots call. The Lambda returns the snapshot ids at once; snapshots complete in EBS
//! on their own, and a snapshot is usable as evidence from the moment it is requested.
//!
//! Each snapshot is then locked (EBS Snapshot Lock, `SNAPSHOT_LOCK_MODE`), while still pending:
//! nobody can delete it until the lock expires, whatever their `ec2:DeleteSnapshot` rights. A
//! retried step locks what an earlier run left unlocked; a lock that fails is reported, and the
//! snapshots stand.
//!
//! Last, the set's manifest is written once to the object-locked evidence bucket
//! ([`super::manifest`]); a manifest that cannot be written is reported, and the snapshots stand.

use std::collections::BTreeMap;

use aws_sdk_ec2::operation::create_snapshots::builders::CreateSnapshotsFluentBuilder;
use aws_sdk_ec2::types::{
    CopyTagsFromSource, Filter, Instance, InstanceSpecification, LockMode, ResourceType, Snapshot,
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
use crate::domain::settings::{SnapshotLock, SnapshotLockMode};
use crate::error::Error;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotReport {
    pub instance_id: String,
    pub snapshots: Vec<ForensicSnapshot>,
    /// What was not done as usual, in plain words (the snapshots stand).
    #[serde(default)]
    pub warnings: Vec<String>,
    /// The set's manifest in the evidence bucket (none: see warnings).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<super::manifest::ManifestRecord>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ForensicSnapshot {
    pub snapshot_id: String,
    pub volume_id: String,
    pub device: Option<String>,
    /// Its lock, as EC2 answered (none when locks are off, or the lock failed: see warnings).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock: Option<SnapshotLockState>,
    /// The volume's size in GiB, as EC2 reported it with the snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_size_gib: Option<i32>,
    /// When EBS started the snapshot (RFC 3339): the moment the volume's data was captured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
}

/// A snapshot's lock as EC2 reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotLockState {
    /// `governance`, `compliance-cooloff` or `compliance` (EC2's `LockState`).
    pub state: String,
    /// When it expires (for a pending snapshot, EC2 counts the duration from its completion).
    pub expires_on: Option<String>,
    pub days: Option<i32>,
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
        Claimed::Recorded { ids, owner_running } => {
            return Ok(Box::pin(recorded_set(clients, target, ids, owner_running, warnings)).await);
        }
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
        let earlier = Box::pin(lock_set(clients, earlier, false, &mut warnings)).await;
        let manifest = Box::pin(manifest(clients, target, &earlier, &mut warnings)).await;
        return Ok(Outcome::AlreadyDone(SnapshotReport {
            instance_id: target.instance_id.clone(),
            snapshots: earlier,
            warnings,
            manifest,
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
        if let Some(lock) = planned_lock(&clients.settings.snapshot_lock) {
            plan.add(crate::domain::outcome::PlannedAction::new(
                "ec2:LockSnapshot",
                &target.instance_id,
                format!("each new snapshot locked: {lock} (checked once the snapshots exist)"),
                crate::domain::outcome::Check::NotCheckable,
            ));
        }
        plan.add(crate::domain::outcome::PlannedAction::new(
            "s3:PutObject",
            &target.instance_id,
            match &clients.evidence {
                Some(store) => format!(
                    "the set's manifest written once to the object-locked bucket {}",
                    store.bucket()
                ),
                None => "no manifest: no evidence bucket is configured (EVIDENCE_BUCKET)".into(),
            },
            crate::domain::outcome::Check::NotCheckable,
        ));
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
    let snapshots = Box::pin(lock_set(clients, snapshots, true, &mut warnings)).await;
    // Per-snapshot tags (CreateSnapshots applies the same tags to all). The snapshots exist and
    // carry the finding's tags already, so a failure here is logged, not fatal.
    let labels = join_all(snapshots.iter().map(|s| label(ec2, s))).await;
    for (s, result) in snapshots.iter().zip(labels) {
        if let Err(err) = result {
            warn!(snapshot = %s.snapshot_id, error = %err, "could not tag snapshot with its device");
        }
    }
    let manifest = Box::pin(manifest(clients, target, &snapshots, &mut warnings)).await;
    Ok(Outcome::Done(SnapshotReport {
        instance_id: target.instance_id.clone(),
        snapshots,
        warnings,
        manifest,
    }))
}

/// The longest the manifest's write may hold the step (and so the notification) back.
const MANIFEST_WITHIN: std::time::Duration = std::time::Duration::from_secs(8);

/// Writes the set's manifest (none for an empty set, or where no evidence bucket is configured:
/// the stack always configures one); a failure becomes a warning.
async fn manifest(
    clients: &Clients,
    target: &Target,
    snapshots: &[ForensicSnapshot],
    warnings: &mut Vec<String>,
) -> Option<super::manifest::ManifestRecord> {
    let store = clients.evidence.as_ref()?;
    if snapshots.is_empty() {
        return None;
    }
    let case = clients.case.as_ref().map(|c| &c.handle);
    // Each S3 call gives up after 5 s; the write (at most three calls) after MANIFEST_WITHIN.
    let written = tokio::time::timeout(
        MANIFEST_WITHIN,
        super::manifest::write(store, target, case, snapshots),
    )
    .await
    .unwrap_or_else(|_| {
        Err(format!(
            "the evidence manifest was not written within {} s; the snapshots stand and the case lists them",
            MANIFEST_WITHIN.as_secs()
        ))
    });
    match written {
        Ok(record) => Some(record),
        Err(warning) => {
            warnings.push(warning);
            None
        }
    }
}

/// The lock to set, in words (`governance, 90 days`), or none.
fn planned_lock(lock: &SnapshotLock) -> Option<String> {
    let mode = match lock.mode {
        SnapshotLockMode::None => return None,
        SnapshotLockMode::Governance => "governance".to_owned(),
        SnapshotLockMode::Compliance => match lock.cool_off_hours {
            Some(h) => format!("compliance after a {h}-hour cooling-off period"),
            None => "compliance at once".to_owned(),
        },
    };
    Some(format!("{mode}, {} days", lock.days))
}

/// Locks the set's snapshots (`fresh`: just created, so none is locked yet; otherwise the
/// locks EC2 holds are read first and only the missing ones set, so that a retry never asks
/// EC2 to change a lock: a compliance lock past its cooling-off period refuses any change but a
/// longer duration). A snapshot whose lock fails stays in the set, unlocked, with a warning.
pub(crate) async fn lock_set(
    clients: &Clients,
    mut snapshots: Vec<ForensicSnapshot>,
    fresh: bool,
    warnings: &mut Vec<String>,
) -> Vec<ForensicSnapshot> {
    let lock = clients.settings.snapshot_lock;
    let mode = match lock.mode {
        SnapshotLockMode::None => return snapshots,
        SnapshotLockMode::Governance => LockMode::Governance,
        SnapshotLockMode::Compliance => LockMode::Compliance,
    };
    if snapshots.is_empty() {
        return snapshots;
    }
    let ec2 = &clients.ec2;
    if !fresh {
        let ids: Vec<String> = snapshots.iter().map(|s| s.snapshot_id.clone()).collect();
        match ec2
            .describe_locked_snapshots()
            .set_snapshot_ids(Some(ids))
            .send()
            .await
            .map_err(|e| Error::from_sdk("ec2:DescribeLockedSnapshots", e))
        {
            Ok(out) => {
                for held in out.snapshots() {
                    let state = held.lock_state().map(|s| s.as_str().to_owned());
                    if state.as_deref().is_none_or(|s| s == "expired") {
                        continue;
                    }
                    if let Some(s) = snapshots
                        .iter_mut()
                        .find(|s| Some(s.snapshot_id.as_str()) == held.snapshot_id())
                    {
                        s.lock = Some(SnapshotLockState {
                            state: state.unwrap_or_default(),
                            expires_on: held.lock_expires_on().and_then(rfc3339),
                            days: held.lock_duration(),
                        });
                    }
                }
            }
            Err(err) => {
                // Never a lock request on a lock that may exist: a compliance lock past its
                // cooling-off period refuses any change, and one within it may restart it.
                warn!(error = %err, "locks not read: none set again");
                warnings.push(format!(
                    "the snapshots' locks could not be read ({err}): none was set again; check them with aws ec2 describe-locked-snapshots"
                ));
                return snapshots;
            }
        }
    }
    let locking = snapshots.iter().filter(|s| s.lock.is_none()).map(|s| {
        let mut request = ec2
            .lock_snapshot()
            .snapshot_id(&s.snapshot_id)
            .lock_mode(mode.clone())
            .lock_duration(lock.days);
        if lock.mode == SnapshotLockMode::Compliance
            && let Some(hours) = lock.cool_off_hours
        {
            request = request.cool_off_period(hours);
        }
        let id = s.snapshot_id.clone();
        async move {
            let answer = request
                .send()
                .await
                .map_err(|e| Error::from_sdk("ec2:LockSnapshot", e));
            (id, answer)
        }
    });
    for (id, answer) in join_all(locking).await {
        let Some(s) = snapshots.iter_mut().find(|s| s.snapshot_id == id) else {
            continue;
        };
        match answer {
            Ok(out) => {
                s.lock = Some(SnapshotLockState {
                    state: out
                        .lock_state()
                        .map_or_else(|| mode.as_str().to_owned(), |l| l.as_str().to_owned()),
                    expires_on: out.lock_expires_on().and_then(rfc3339),
                    days: out.lock_duration().or(Some(lock.days)),
                });
            }
            Err(err) => {
                warn!(snapshot = %id, error = %err, "snapshot not locked");
                let cool_off = match (lock.mode, lock.cool_off_hours) {
                    (SnapshotLockMode::Compliance, Some(h)) => format!(" --cool-off-period {h}"),
                    _ => String::new(),
                };
                warnings.push(format!(
                    "{id} was not locked ({err}): anyone allowed ec2:DeleteSnapshot can delete it; lock it by hand (aws ec2 lock-snapshot --snapshot-id {id} --lock-mode {} --lock-duration {}{cool_off})",
                    mode.as_str(),
                    lock.days
                ));
            }
        }
    }
    info!(
        locked = snapshots.iter().filter(|s| s.lock.is_some()).count(),
        of = snapshots.len(),
        "snapshot locks"
    );
    snapshots
}

fn rfc3339(t: &aws_smithy_types::DateTime) -> Option<String> {
    t.fmt(aws_smithy_types::date_time::Format::DateTime).ok()
}

/// What the case says of the snapshot set.
enum Claimed {
    /// The set the case records: taken by an earlier run of this step, or by another execution.
    /// `owner_running`: the execution that took the set is still at it, and locks it itself.
    Recorded {
        ids: Vec<String>,
        owner_running: bool,
    },
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
                Claimed::Recorded {
                    ids: recorded,
                    owner_running: false,
                }
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
            Claimed::Recorded {
                ids: recorded,
                owner_running: !ended,
            }
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
                // From the instance's block device mappings (AWS's state), never from a tag:
                // CreateSnapshots copies the volume's tags, which anyone allowed to tag it writes.
                device: devices.get(&volume_id).cloned(),
                volume_id,
                lock: None,
                volume_size_gib: s.volume_size(),
                started_at: s.start_time().and_then(rfc3339),
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
                lock: None,
                volume_size_gib: s.volume_size(),
                started_at: s.start_time().and_then(rfc3339),
            })
        })
        .collect())
}

/// The set the case records (taken by this execution earlier, or by another one of the case),
/// with any lock an earlier run did not set.
async fn recorded_set(
    clients: &Clients,
    target: &Target,
    recorded: Vec<String>,
    owner_running: bool,
    mut warnings: Vec<String>,
) -> Outcome<SnapshotReport> {
    let snapshots = recorded
        .iter()
        .map(|entry| ForensicSnapshot::recorded(entry))
        .collect();
    // The execution that took the set locks it and writes its manifest; this one never races
    // it for the same locks.
    if owner_running {
        return Outcome::AlreadyDone(SnapshotReport {
            instance_id: target.instance_id.clone(),
            snapshots,
            warnings,
            manifest: None,
        });
    }
    let snapshots = Box::pin(described(&clients.ec2, snapshots, &mut warnings)).await;
    let snapshots = Box::pin(lock_set(clients, snapshots, false, &mut warnings)).await;
    let manifest = Box::pin(manifest(clients, target, &snapshots, &mut warnings)).await;
    Outcome::AlreadyDone(SnapshotReport {
        instance_id: target.instance_id.clone(),
        snapshots,
        warnings,
        manifest,
    })
}

/// The recorded set with the sizes and start times EC2 reports (the case records ids alone);
/// a set EC2 cannot describe now keeps what the case holds, with a warning.
async fn described(
    ec2: &aws_sdk_ec2::Client,
    mut snapshots: Vec<ForensicSnapshot>,
    warnings: &mut Vec<String>,
) -> Vec<ForensicSnapshot> {
    if snapshots.is_empty() {
        return snapshots;
    }
    let ids: Vec<String> = snapshots.iter().map(|s| s.snapshot_id.clone()).collect();
    match ec2
        .describe_snapshots()
        .set_snapshot_ids(Some(ids))
        .send()
        .await
        .map_err(|e| Error::from_sdk("ec2:DescribeSnapshots", e))
    {
        Ok(out) => {
            for found in out.snapshots() {
                if let Some(s) = snapshots
                    .iter_mut()
                    .find(|s| Some(s.snapshot_id.as_str()) == found.snapshot_id())
                {
                    s.volume_size_gib = found.volume_size();
                    s.started_at = found.start_time().and_then(rfc3339);
                }
            }
        }
        Err(err) => {
            warn!(error = %err, "recorded snapshots not described");
            warnings.push(format!(
                "the recorded snapshots could not be described ({err}): their sizes and start times are missing from the manifest"
            ));
        }
    }
    snapshots
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
    pub(crate) fn recorded(entry: &str) -> ForensicSnapshot {
        let mut parts = entry.split(' ');
        ForensicSnapshot {
            snapshot_id: parts.next().unwrap_or_default().to_owned(),
            volume_id: parts.next().unwrap_or_default().to_owned(),
            device: parts.next().filter(|d| !d.is_empty()).map(str::to_owned),
            lock: None,
            volume_size_gib: None,
            started_at: None,
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

    /// The instance with two EBS volumes, and CreateSnapshots' answer for them.
    fn with_volumes() -> (
        aws_sdk_ec2::operation::describe_instances::DescribeInstancesOutput,
        CreateSnapshotsOutput,
    ) {
        use aws_sdk_ec2::types::{
            EbsInstanceBlockDevice, InstanceBlockDeviceMapping, Reservation, SnapshotInfo,
        };
        let described = testing::instance(InstanceStateName::Running);
        let mut instance = described.reservations()[0].instances()[0].clone();
        for (device, volume) in [("/dev/xvda", "vol-0a"), ("/dev/sdf", "vol-0b")] {
            instance
                .block_device_mappings
                .get_or_insert_with(Vec::new)
                .push(
                    InstanceBlockDeviceMapping::builder()
                        .device_name(device)
                        .ebs(EbsInstanceBlockDevice::builder().volume_id(volume).build())
                        .build(),
                );
        }
        let described =
            aws_sdk_ec2::operation::describe_instances::DescribeInstancesOutput::builder()
                .reservations(Reservation::builder().instances(instance).build())
                .build();
        let created = CreateSnapshotsOutput::builder()
            .snapshots(
                SnapshotInfo::builder()
                    .snapshot_id("snap-0a")
                    .volume_id("vol-0a")
                    .build(),
            )
            .snapshots(
                SnapshotInfo::builder()
                    .snapshot_id("snap-0b")
                    .volume_id("vol-0b")
                    .build(),
            )
            .build();
        (described, created)
    }

    /// The step on an instance with two volumes, LockSnapshot answered by `lock`: its report.
    async fn taken_with(mut clients: Clients, lock: &aws_smithy_mocks::Rule) -> SnapshotReport {
        let (described, created) = with_volumes();
        let describe =
            mock!(aws_sdk_ec2::Client::describe_instances).then_output(move || described.clone());
        let earlier = mock!(aws_sdk_ec2::Client::describe_snapshots)
            .then_output(|| DescribeSnapshotsOutput::builder().build());
        let create =
            mock!(aws_sdk_ec2::Client::create_snapshots).then_output(move || created.clone());
        let tag = mock!(aws_sdk_ec2::Client::create_tags).then_output(|| {
            aws_sdk_ec2::operation::create_tags::CreateTagsOutput::builder().build()
        });
        clients.ec2 = mock_client!(
            aws_sdk_ec2,
            RuleMode::MatchAny,
            &[&describe, &earlier, &create, &tag, lock]
        );
        let outcome = snapshot_instance(&clients, &testing::target())
            .await
            .unwrap();
        let Outcome::Done(report) = outcome else {
            panic!("{outcome:?}")
        };
        report
    }

    /// Each new snapshot is locked once, with the configured mode and duration, and the
    /// report says so; compliance mode sends its cooling-off period, governance none (the API
    /// refuses one there).
    #[tokio::test]
    async fn each_new_snapshot_is_locked_as_configured() {
        use aws_sdk_ec2::operation::lock_snapshot::LockSnapshotOutput;
        use aws_sdk_ec2::types::LockState;
        for (mode, cool_off, state) in [
            (SnapshotLockMode::Governance, None, LockState::Governance),
            (
                SnapshotLockMode::Compliance,
                Some(24),
                LockState::ComplianceCooloff,
            ),
        ] {
            let wanted = match mode {
                SnapshotLockMode::Governance => LockMode::Governance,
                _ => LockMode::Compliance,
            };
            let answered = state.clone();
            let lock = mock!(aws_sdk_ec2::Client::lock_snapshot)
                .match_requests(move |r| {
                    r.lock_mode() == Some(&wanted)
                        && r.lock_duration() == Some(30)
                        && r.cool_off_period() == cool_off
                        && r.expiration_date().is_none()
                })
                .then_output(move || {
                    LockSnapshotOutput::builder()
                        .lock_state(answered.clone())
                        .lock_duration(30)
                        .build()
                });
            let mut clients = testing::clients();
            clients.settings.snapshot_lock = SnapshotLock {
                mode,
                days: 30,
                cool_off_hours: Some(24),
            };
            let report = taken_with(clients, &lock).await;
            assert_eq!(lock.num_calls(), 2, "{mode:?}");
            assert!(report.warnings.is_empty(), "{:?}", report.warnings);
            for s in &report.snapshots {
                let held = s.lock.as_ref().expect("locked");
                assert_eq!((held.state.as_str(), held.days), (state.as_str(), Some(30)));
            }
        }
    }

    /// A lock EC2 refuses leaves the snapshot in the set, unlocked, and says so with the
    /// command that locks it by hand; the evidence is taken all the same.
    #[tokio::test]
    async fn a_refused_lock_is_reported_and_the_snapshots_stand() {
        let lock = mock!(aws_sdk_ec2::Client::lock_snapshot).then_error(|| {
            aws_sdk_ec2::operation::lock_snapshot::LockSnapshotError::generic(
                aws_smithy_types::error::ErrorMetadata::builder()
                    .code("UnauthorizedOperation")
                    .message("not allowed")
                    .build(),
            )
        });
        let report = taken_with(testing::clients(), &lock).await;
        assert_eq!(report.snapshots.len(), 2);
        assert!(report.snapshots.iter().all(|s| s.lock.is_none()));
        assert_eq!(report.warnings.len(), 2, "{:?}", report.warnings);
        assert!(
            report.warnings[0].contains("was not locked")
                && report.warnings[0].contains("aws ec2 lock-snapshot --snapshot-id snap-0"),
            "{:?}",
            report.warnings
        );
    }

    /// A retried step locks only what an earlier run left unlocked: a lock EC2 holds is never
    /// asked to change (a compliance lock past its cooling-off period would refuse).
    #[tokio::test]
    async fn a_retry_locks_only_the_snapshots_left_unlocked() {
        use aws_sdk_ec2::operation::describe_locked_snapshots::DescribeLockedSnapshotsOutput;
        use aws_sdk_ec2::operation::lock_snapshot::LockSnapshotOutput;
        use aws_sdk_ec2::types::{LockState, LockedSnapshotsInfo};
        let held = mock!(aws_sdk_ec2::Client::describe_locked_snapshots).then_output(|| {
            DescribeLockedSnapshotsOutput::builder()
                .snapshots(
                    LockedSnapshotsInfo::builder()
                        .snapshot_id("snap-0a")
                        .lock_state(LockState::Compliance)
                        .lock_duration(90)
                        .build(),
                )
                .build()
        });
        let lock = mock!(aws_sdk_ec2::Client::lock_snapshot)
            .match_requests(|r| r.snapshot_id() == Some("snap-0b"))
            .then_output(|| {
                LockSnapshotOutput::builder()
                    .lock_state(LockState::Governance)
                    .build()
            });
        let mut clients = testing::clients();
        clients.ec2 = mock_client!(aws_sdk_ec2, RuleMode::MatchAny, &[&held, &lock]);
        let snapshots = vec![
            ForensicSnapshot::recorded("snap-0a vol-0a /dev/xvda"),
            ForensicSnapshot::recorded("snap-0b vol-0b /dev/sdf"),
        ];
        let mut warnings = Vec::new();
        let locked = lock_set(&clients, snapshots, false, &mut warnings).await;
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(lock.num_calls(), 1);
        let states: Vec<_> = locked
            .iter()
            .map(|s| s.lock.as_ref().map(|l| l.state.as_str()))
            .collect();
        assert_eq!(states, [Some("compliance"), Some("governance")]);
    }

    /// Locks that cannot be read are not set again (a held compliance lock would refuse the
    /// request, or restart its cooling-off period): said, and nothing is asked of EC2.
    #[tokio::test]
    async fn a_retry_that_cannot_read_the_locks_sets_none() {
        let held = mock!(aws_sdk_ec2::Client::describe_locked_snapshots).then_error(|| {
            aws_sdk_ec2::operation::describe_locked_snapshots::DescribeLockedSnapshotsError::generic(
                aws_smithy_types::error::ErrorMetadata::builder()
                    .code("UnauthorizedOperation")
                    .build(),
            )
        });
        let lock = mock!(aws_sdk_ec2::Client::lock_snapshot).then_output(|| {
            aws_sdk_ec2::operation::lock_snapshot::LockSnapshotOutput::builder().build()
        });
        let mut clients = testing::clients();
        clients.ec2 = mock_client!(aws_sdk_ec2, RuleMode::MatchAny, &[&held, &lock]);
        let mut warnings = Vec::new();
        let snapshots = vec![ForensicSnapshot::recorded("snap-0a vol-0a /dev/xvda")];
        let out = lock_set(&clients, snapshots, false, &mut warnings).await;
        assert_eq!(lock.num_calls(), 0);
        assert!(out[0].lock.is_none());
        assert!(
            warnings.len() == 1 && warnings[0].contains("could not be read"),
            "{warnings:?}"
        );
    }
}
