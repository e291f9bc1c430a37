//! Copies of the forensic snapshots in a forensic account, re-encrypted with its key.
//!
//! After containment is reported, the workflow runs this step over and over, a wait between two
//! passes (Step Functions waits, not the Lambda), until every snapshot of the case's set is
//! copied or has failed for good. One pass, for one instance of the plan:
//!
//! 1. The set is the one the case records (the responder's own record, never a tag).
//! 2. EC2 in the instance's account says each snapshot's state: a snapshot still pending is
//!    waited for (a copy needs a completed source).
//! 3. In the forensic account (its copier role, in its key's region), the copies already made are
//!    found by the tag this step writes on them at creation (`ec2-quarantine:source-snapshot`;
//!    only the forensic account writes its tags, and only copies it owns are read).
//! 4. A completed snapshot without a copy is claimed in the case (one execution copies it: a
//!    second finding of the case runs its own copy workflow), shared with the forensic account
//!    (`ModifySnapshotAttribute`, that account only) and copied there (`CopySnapshot`,
//!    `Encrypted` with the forensic key, unencrypted sources included); the copy's id goes into
//!    the case at once, so a retried pass follows it even before the forensic account lists it.
//!
//! Nothing is deleted or unshared: the share stays as part of the evidence's trail. CopySnapshot
//! takes no client token, so a pass that dies between the copy and its answer can leave two
//! copies of one snapshot; the next pass finds both by their tag and reports the first. A
//! transient failure (throttling, the 20 copies EBS runs at once, a share not yet visible to
//! the copy) is tried again at the next pass; any other is reported with EC2's reason, and tried
//! again only while other copies of the set keep the workflow going.

use std::collections::BTreeMap;

use aws_sdk_ec2::types::{
    CreateVolumePermission, CreateVolumePermissionModifications, Filter, ResourceType, Snapshot,
    SnapshotAttributeName, SnapshotState, Tag, TagSpecification,
};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::aws::tags;
use crate::domain::finding::{self, StepRequest, Target};
use crate::domain::forensic::ForensicAccount;
use crate::domain::outcome::{Check, Outcome, PlannedAction};
use crate::error::Error;
use crate::{Clients, Ctx};

/// The tag on each copy naming its source snapshot (and so the copy of that snapshot).
pub const SOURCE_SNAPSHOT_TAG: &str = "ec2-quarantine:source-snapshot";
/// The step's name in the case record.
pub const STEP: &str = "evidence-copy";

/// One pass's answer: the step's outcome, whether the copies are over (every snapshot copied or
/// failed for good, or the passes used up), and how long the workflow waits before the next.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CopyPass {
    #[serde(flatten)]
    pub outcome: Outcome<CopyReport>,
    pub finished: bool,
    /// This pass's number (from 0).
    pub pass: u32,
    /// The next pass's number, which the workflow passes back.
    pub next_pass: u32,
    pub wait_seconds: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CopyReport {
    pub instance_id: String,
    pub forensic_account: String,
    pub region: String,
    pub copies: Vec<EvidenceCopy>,
    #[serde(default)]
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvidenceCopy {
    pub source_snapshot_id: String,
    pub volume_id: String,
    /// The copy in the forensic account (none until it is requested).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copy_snapshot_id: Option<String>,
    pub state: CopyState,
    /// EC2's reason for a failure, the copy's progress, or why it waits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CopyState {
    /// The source snapshot is not completed yet.
    SourcePending,
    /// A transient failure: the next pass tries again.
    Retrying,
    /// The copy is requested and running in EBS.
    Copying,
    Completed,
    /// Failed for good (see `detail`).
    Failed,
}

impl CopyState {
    fn is_final(self) -> bool {
        matches!(self, CopyState::Completed | CopyState::Failed)
    }
}

/// The Lambda handler: one pass for one instance of triage's plan (`{target, case, pass}`).
pub async fn copy_evidence(
    ctx: &Ctx,
    forensic: Option<&ForensicAccount>,
    payload: serde_json::Value,
) -> Result<CopyPass, Error> {
    let pass = payload
        .get("pass")
        .and_then(serde_json::Value::as_u64)
        .map_or(0, |p| u32::try_from(p).unwrap_or(u32::MAX));
    let request = crate::domain::finding::parse_step_request(payload)?;
    let Some(forensic) = forensic else {
        return Ok(CopyPass {
            outcome: Outcome::skipped("no forensic account is configured (ForensicAccountId)"),
            finished: true,
            pass,
            next_pass: pass.saturating_add(1),
            wait_seconds: 0,
        });
    };
    let outcome = copy_for_target(ctx, forensic, request, pass).await?;
    let finished = outcome
        .report()
        .is_none_or(|r| r.copies.iter().all(|c| c.state.is_final()));
    Ok(CopyPass {
        outcome,
        finished,
        pass,
        next_pass: pass.saturating_add(1),
        wait_seconds: forensic.wait_seconds,
    })
}

async fn copy_for_target(
    ctx: &Ctx,
    forensic: &ForensicAccount,
    request: StepRequest,
    pass: u32,
) -> Result<Outcome<CopyReport>, Error> {
    super::for_target(ctx, request, STEP, |clients, target| async move {
        if target.scope.account_id == forensic.account_id {
            return Ok(Outcome::skipped(
                "the instance runs in the forensic account itself: its snapshots are there",
            ));
        }
        if let Some(plan) = clients.plan() {
            plan.add(PlannedAction::new(
                "ec2:CopySnapshot",
                &target.instance_id,
                format!(
                    "each snapshot of the set shared with account {} (ec2:ModifySnapshotAttribute) and copied there, in {}, encrypted with {}",
                    forensic.account_id, forensic.region, forensic.kms_key_arn
                ),
                Check::NotCheckable,
            ));
            return Ok(plan.outcome());
        }
        let Some(case) = clients.case.clone() else {
            return Ok(Outcome::skipped(format!(
                "no case record ({}): the set to copy is the one the case records",
                clients
                    .case_unavailable
                    .as_deref()
                    .unwrap_or("none was passed on")
            )));
        };
        // The case is the responder's own record, but each id is checked all the same before it
        // reaches a request, a tag or a description.
        let mut malformed = Vec::new();
        let mut set: Vec<(String, String)> = Vec::new();
        for entry in case.created("snapshot").await? {
            let recorded = super::snapshot::ForensicSnapshot::recorded(&entry);
            if finding::is_snapshot_id(&recorded.snapshot_id)
                && finding::is_volume_id(&recorded.volume_id) {
                set.push((recorded.snapshot_id, recorded.volume_id));
            } else {
                malformed.push(format!(
                    "the case's snapshot entry {:?} is not a snapshot and a volume id: not copied",
                    crate::domain::finding::clip(&entry)
                ));
            }
        }
        if set.is_empty() && malformed.is_empty() {
            return Ok(Outcome::skipped(
                "the case records no snapshot set for this instance",
            ));
        }
        if set.is_empty() {
            let mut report = report(&target, forensic, Vec::new());
            report.warnings = malformed;
            return Ok(Outcome::Failed(report));
        }
        let forensic_ec2 = match ctx
            .acting_as(STEP)
            .forensic_ec2(forensic, &target.finding_id)
            .await
        {
            Ok(client) => client,
            Err(err) if err.name().is_retryable() => return Err(err),
            Err(err) => {
                // The role is missing or does not trust the responder: no pass can copy.
                let why = format!(
                    "the forensic account's role {} could not be assumed: {err}",
                    forensic.role_arn()
                );
                let mut report = report(
                    &target,
                    forensic,
                    set.iter()
                        .map(|(s, v)| failed(s, v, None, why.clone()))
                        .collect(),
                );
                report.warnings = malformed;
                return Ok(Outcome::Failed(report));
            }
        };
        let (mut report, changed) = Box::pin(copy_pass(
            &clients,
            &forensic_ec2,
            forensic,
            &target,
            Some(&case),
            &set,
        ))
        .await?;
        let uncopyable = !malformed.is_empty();
        report.warnings.extend(malformed);
        let copies: Vec<String> = report
            .copies
            .iter()
            .filter_map(|c| {
                c.copy_snapshot_id
                    .as_ref()
                    .map(|copy| format!("{} {copy}", c.source_snapshot_id))
            })
            .collect();
        if changed
            && let Err(err) = case.record_created(STEP, &copies).await
        {
            crate::case::warn_unrecorded("evidence copies", &err);
            report.warnings.push(format!(
                "the copies could not be written to the case ({err}); each carries the tag {SOURCE_SNAPSHOT_TAG} in account {}",
                forensic.account_id
            ));
        }
        if pass.saturating_add(1) >= forensic.max_passes {
            give_up(&mut report, pass.saturating_add(1), forensic.wait_seconds);
        }
        Ok(settled(changed, uncopyable, report))
    })
    .await
}

/// One pass over the set: what EC2 says of each snapshot and its copy, and the shares and
/// copies still missing (each claimed in `case`, where there is one). Whether anything was
/// copied.
pub async fn copy_pass(
    clients: &Clients,
    forensic_ec2: &aws_sdk_ec2::Client,
    forensic: &ForensicAccount,
    target: &Target,
    case: Option<&crate::case::Recorder>,
    set: &[(String, String)],
) -> Result<(CopyReport, bool), Error> {
    let case_id = case.map_or(target.finding_id.as_str(), |c| c.handle.case_id.as_str());
    let ids: Vec<String> = set.iter().map(|(s, _)| s.clone()).collect();
    let by_source = format!("tag:{SOURCE_SNAPSHOT_TAG}");
    let (sources, existing) = futures::try_join!(
        described(&clients.ec2, "snapshot-id", &ids),
        described(forensic_ec2, &by_source, &ids),
    )?;
    let sources: BTreeMap<&str, &Snapshot> = sources
        .iter()
        .filter_map(|s| Some((s.snapshot_id()?, s)))
        .collect();
    let mut copies_of: BTreeMap<String, Vec<&Snapshot>> = BTreeMap::new();
    for copy in &existing {
        if let Some(source) = copy
            .tags()
            .iter()
            .find(|t| t.key() == Some(SOURCE_SNAPSHOT_TAG))
            .and_then(Tag::value)
        {
            copies_of.entry(source.to_owned()).or_default().push(copy);
        }
    }
    let mut changed = false;
    let mut copies = Vec::with_capacity(set.len());
    for (snapshot, volume) in set {
        if let Some(found) = copies_of.get(snapshot.as_str()) {
            copies.push(followed(snapshot, volume, found));
            continue;
        }
        let Some(source) = sources.get(snapshot.as_str()) else {
            copies.push(failed(
                snapshot,
                volume,
                None,
                "EC2 no longer holds the snapshot in the instance's account".into(),
            ));
            continue;
        };
        match source.state() {
            Some(SnapshotState::Completed) => {}
            Some(SnapshotState::Error) => {
                copies.push(failed(
                    snapshot,
                    volume,
                    None,
                    format!(
                        "the snapshot failed in EBS: {}",
                        source.state_message().unwrap_or("no reason given")
                    ),
                ));
                continue;
            }
            state => {
                copies.push(EvidenceCopy {
                    source_snapshot_id: snapshot.clone(),
                    volume_id: volume.clone(),
                    copy_snapshot_id: None,
                    state: CopyState::SourcePending,
                    detail: Some(format!(
                        "the snapshot is {} ({}); a copy needs it completed",
                        state.map_or("of unknown state", SnapshotState::as_str),
                        source.progress().unwrap_or("0%")
                    )),
                });
                continue;
            }
        }
        if let Some(case) = case
            && let Some(taken) = Box::pin(claimed_elsewhere(case, snapshot, volume)).await
        {
            copies.push(taken);
            continue;
        }
        let copied = Box::pin(share_and_copy(
            &clients.ec2,
            forensic_ec2,
            forensic,
            target,
            case_id,
            snapshot,
            volume,
        ))
        .await;
        if let Some(case) = case {
            Box::pin(record_claim(case, &copied)).await;
        }
        changed |= copied.copy_snapshot_id.is_some();
        copies.push(copied);
    }
    Ok((report(target, forensic, copies), changed))
}

/// The case's claim on copying one snapshot.
fn claim_key(snapshot: &str) -> String {
    format!("{STEP}#{snapshot}")
}

/// Claims the copy of one snapshot for this execution. `None`: this execution copies it now.
/// Otherwise what is known: the copy this execution already requested (its retried pass, before
/// the forensic account lists it), or another execution of the case copying it (a later pass
/// finds that copy by its tag). A claim that cannot be read or written is no reason to hold the
/// copy back: the copy goes ahead (at worst a second copy, reported beside the first).
async fn claimed_elsewhere(
    case: &crate::case::Recorder,
    snapshot: &str,
    volume: &str,
) -> Option<EvidenceCopy> {
    let key = claim_key(snapshot);
    let claim = match case.claim(&key).await {
        Ok(claim) => claim,
        Err(err) => {
            crate::case::warn_unrecorded("evidence copy claim", &err);
            return None;
        }
    };
    let (copy, detail) = match claim {
        crate::case::Claim::Mine => match case.created(&key).await {
            Ok(made) => match made.into_iter().next() {
                Some(copy) => {
                    // Claimed again just now: ended again, so the case never looks busy.
                    if let Err(err) = case.finished(&key, "done", "requested earlier").await {
                        crate::case::warn_unrecorded("evidence copy claim", &err);
                    }
                    (Some(copy), "requested by an earlier attempt".to_owned())
                }
                None => return None,
            },
            Err(err) => {
                crate::case::warn_unrecorded("evidence copy claim", &err);
                return None;
            }
        },
        crate::case::Claim::Taken { at, .. } => (
            None,
            format!("another execution of the case is copying it (since {at})"),
        ),
    };
    Some(EvidenceCopy {
        source_snapshot_id: snapshot.to_owned(),
        volume_id: volume.to_owned(),
        copy_snapshot_id: copy,
        state: CopyState::Copying,
        detail: Some(detail),
    })
}

/// Ends this execution's claim on a copy: the copy's id when it was requested (the claim then
/// stays this execution's), or why not (the claim is free again for a later pass). Ended, the
/// claim never makes the case look busy to a release.
async fn record_claim(case: &crate::case::Recorder, copied: &EvidenceCopy) {
    let key = claim_key(&copied.source_snapshot_id);
    if let Some(copy) = &copied.copy_snapshot_id
        && let Err(err) = case.record_created(&key, std::slice::from_ref(copy)).await
    {
        crate::case::warn_unrecorded("evidence copy", &err);
    }
    let outcome = match copied.state {
        CopyState::Copying | CopyState::Completed => "done",
        CopyState::Retrying | CopyState::SourcePending => "retrying",
        CopyState::Failed => "failed",
    };
    if let Err(err) = case
        .finished(&key, outcome, copied.detail.as_deref().unwrap_or_default())
        .await
    {
        crate::case::warn_unrecorded("evidence copy", &err);
    }
}

/// Shares one completed snapshot with the forensic account and copies it there.
async fn share_and_copy(
    source_ec2: &aws_sdk_ec2::Client,
    forensic_ec2: &aws_sdk_ec2::Client,
    forensic: &ForensicAccount,
    target: &Target,
    case_id: &str,
    snapshot: &str,
    volume: &str,
) -> EvidenceCopy {
    let outcome_of = |err: Error, what: &str| {
        let why = format!("{what}: {err}");
        if err.name().is_retryable() || is_busy(&err) {
            warn!(snapshot, error = %err, "evidence copy: tried again at the next pass");
            EvidenceCopy {
                source_snapshot_id: snapshot.to_owned(),
                volume_id: volume.to_owned(),
                copy_snapshot_id: None,
                state: CopyState::Retrying,
                detail: Some(why),
            }
        } else {
            failed(snapshot, volume, None, why)
        }
    };
    // Sharing an already shared snapshot changes nothing, so a retried pass shares again. The
    // structured form (CreateVolumePermission.Add), the one the API reference documents.
    if let Err(err) = source_ec2
        .modify_snapshot_attribute()
        .snapshot_id(snapshot)
        .attribute(SnapshotAttributeName::CreateVolumePermission)
        .create_volume_permission(
            CreateVolumePermissionModifications::builder()
                .add(
                    CreateVolumePermission::builder()
                        .user_id(&forensic.account_id)
                        .build(),
                )
                .build(),
        )
        .send()
        .await
        .map_err(|e| Error::from_sdk("ec2:ModifySnapshotAttribute", e))
    {
        return outcome_of(err, "not shared with the forensic account");
    }
    let tag = |k: &str, v: &str| Tag::builder().key(k).value(v).build();
    let answer = forensic_ec2
        .copy_snapshot()
        .source_snapshot_id(snapshot)
        .source_region(&target.scope.region)
        .encrypted(true)
        .kms_key_id(&forensic.kms_key_arn)
        .description(format!(
            "ec2-quarantine evidence: {snapshot} of {volume} ({}, case {case_id}, account {})",
            target.instance_id, target.scope.account_id
        ))
        .tag_specifications(
            TagSpecification::builder()
                .resource_type(ResourceType::Snapshot)
                .tags(tag(SOURCE_SNAPSHOT_TAG, snapshot))
                .tags(tag(
                    "ec2-quarantine:source-account",
                    &target.scope.account_id,
                ))
                .tags(tag("ec2-quarantine:source-region", &target.scope.region))
                .tags(tag(tags::INSTANCE_ID, &target.instance_id))
                .tags(tag(tags::VOLUME_ID, volume))
                .tags(tag(tags::CASE, case_id))
                .build(),
        )
        .send()
        .await
        .map_err(|e| Error::from_sdk("ec2:CopySnapshot", e));
    match answer {
        Ok(out) => {
            let copy = out.snapshot_id().map(str::to_owned);
            info!(snapshot, copy = ?copy, account = %forensic.account_id, "evidence copy requested");
            EvidenceCopy {
                source_snapshot_id: snapshot.to_owned(),
                volume_id: volume.to_owned(),
                state: if copy.is_some() {
                    CopyState::Copying
                } else {
                    CopyState::Retrying
                },
                detail: copy
                    .is_none()
                    .then(|| "CopySnapshot answered without a snapshot id".to_owned()),
                copy_snapshot_id: copy,
            }
        }
        // The share not yet visible to the forensic account (EC2 is eventually consistent).
        Err(err) if is_code(&err, "InvalidSnapshot.NotFound") => EvidenceCopy {
            state: CopyState::Retrying,
            ..outcome_of(err, "not copied yet")
        },
        Err(err) => outcome_of(err, "not copied"),
    }
}

/// A copy found in the forensic account (the first one made, when a lost answer made two).
fn followed(snapshot: &str, volume: &str, found: &[&Snapshot]) -> EvidenceCopy {
    let mut found = found.to_vec();
    // The earliest first; one without a start time last.
    found.sort_by_key(|s| {
        s.start_time()
            .map_or((1, 0, 0), |t| (0, t.secs(), t.subsec_nanos()))
    });
    let copy = found[0];
    let extra = (found.len() > 1).then(|| {
        format!(
            "; {} more copies of it: {}",
            found.len() - 1,
            found[1..]
                .iter()
                .filter_map(|s| s.snapshot_id())
                .collect::<Vec<_>>()
                .join(", ")
        )
    });
    let (state, detail) = match copy.state() {
        Some(SnapshotState::Completed) => (CopyState::Completed, None),
        Some(SnapshotState::Error) => (
            CopyState::Failed,
            Some(format!(
                "the copy failed in EBS: {} (a source key the forensic account may not use, say)",
                copy.state_message().unwrap_or("no reason given")
            )),
        ),
        _ => (
            CopyState::Copying,
            Some(format!("{} copied", copy.progress().unwrap_or("0%"))),
        ),
    };
    let detail = match (detail, extra) {
        (d, None) => d,
        (d, Some(extra)) => Some(format!("{}{extra}", d.unwrap_or_default())),
    };
    EvidenceCopy {
        source_snapshot_id: snapshot.to_owned(),
        volume_id: volume.to_owned(),
        copy_snapshot_id: copy.snapshot_id().map(str::to_owned),
        state,
        detail,
    }
}

fn failed(snapshot: &str, volume: &str, copy: Option<String>, why: String) -> EvidenceCopy {
    EvidenceCopy {
        source_snapshot_id: snapshot.to_owned(),
        volume_id: volume.to_owned(),
        copy_snapshot_id: copy,
        state: CopyState::Failed,
        detail: Some(why),
    }
}

fn report(target: &Target, forensic: &ForensicAccount, copies: Vec<EvidenceCopy>) -> CopyReport {
    CopyReport {
        instance_id: target.instance_id.clone(),
        forensic_account: forensic.account_id.clone(),
        region: forensic.region.clone(),
        copies,
        warnings: Vec::new(),
    }
}

/// The pass's outcome: failed once every copy is over and one of them failed (or an entry of
/// the set could not be copied at all), so the case's record of the step never says done while
/// evidence is missing from the forensic account; otherwise done or already done.
fn settled(changed: bool, uncopyable: bool, report: CopyReport) -> Outcome<CopyReport> {
    let over = report.copies.iter().all(|c| c.state.is_final());
    let lost = uncopyable || report.copies.iter().any(|c| c.state == CopyState::Failed);
    if over && lost {
        Outcome::Failed(report)
    } else {
        Outcome::from_changes(changed, report)
    }
}

/// The last pass: what is not over is no longer followed (a running copy goes on in EBS).
fn give_up(report: &mut CopyReport, passes: u32, wait_seconds: u32) {
    let hours = u64::from(passes) * u64::from(wait_seconds) / 3600;
    for copy in &mut report.copies {
        if !copy.state.is_final() {
            let was = copy.detail.take().unwrap_or_default();
            copy.state = CopyState::Failed;
            copy.detail = Some(match &copy.copy_snapshot_id {
                Some(id) => format!(
                    "no longer followed after {passes} passes (about {hours} h): {id} is still copying ({was}); check it in the forensic account"
                ),
                None => format!("not copied after {passes} passes (about {hours} h): {was}"),
            });
        }
    }
}

/// EBS's limit of copies running at once into one account and region (20), and a snapshot
/// still busy with another copy: worth trying again later.
fn is_busy(err: &Error) -> bool {
    is_code(err, "ResourceLimitExceeded") || is_code(err, "IncorrectState")
}

fn is_code(err: &Error, wanted: &str) -> bool {
    matches!(err, Error::Aws { code, .. } if code == wanted)
}

/// The snapshots of this account with `filter` among `values` (a filter, not SnapshotIds: a
/// snapshot that is gone is missing from the answer instead of failing the call).
async fn described(
    ec2: &aws_sdk_ec2::Client,
    filter: &str,
    values: &[String],
) -> Result<Vec<Snapshot>, Error> {
    let mut found = Vec::new();
    let mut pages = ec2
        .describe_snapshots()
        .owner_ids("self")
        .filters(
            Filter::builder()
                .name(filter)
                .set_values(Some(values.to_vec()))
                .build(),
        )
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| Error::from_sdk("ec2:DescribeSnapshots", e))?;
        found.extend(page.snapshots().iter().cloned());
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use aws_sdk_ec2::operation::copy_snapshot::{CopySnapshotError, CopySnapshotOutput};
    use aws_sdk_ec2::operation::describe_snapshots::DescribeSnapshotsOutput;
    use aws_sdk_ec2::operation::modify_snapshot_attribute::{
        ModifySnapshotAttributeError, ModifySnapshotAttributeOutput,
    };
    use aws_smithy_mocks::{Rule, RuleMode, mock, mock_client};
    use aws_smithy_types::error::ErrorMetadata;

    use super::*;
    use crate::domain::finding::{is_snapshot_id, is_volume_id};
    use crate::steps::testing;

    const SOURCE: &str = "snap-0aaaaaaaaaaaaaaa1";
    const COPY: &str = "snap-0ccccccccccccccc1";
    const KEY: &str = "arn:aws:kms:us-east-1:999999999999:key/1234abcd-12ab-34cd-56ef-1234567890ab";

    fn forensic() -> ForensicAccount {
        ForensicAccount {
            account_id: "999999999999".into(),
            kms_key_arn: KEY.into(),
            partition: "aws".into(),
            region: "us-east-1".into(),
            role_name: "ec2-quarantine-forensic-copier".into(),
            wait_seconds: 300,
            max_passes: 288,
        }
    }

    fn snapshot(id: &str, state: SnapshotState, tag: Option<&str>) -> Snapshot {
        let mut s = Snapshot::builder()
            .snapshot_id(id)
            .state(state)
            .progress("40%")
            .state_message("the key is not usable");
        if let Some(source) = tag {
            s = s.tags(
                Tag::builder()
                    .key(SOURCE_SNAPSHOT_TAG)
                    .value(source)
                    .build(),
            );
        }
        s.build()
    }

    /// DescribeSnapshots answering `snapshots` to a request filtered on `filter`.
    fn described_as(filter: &'static str, snapshots: Vec<Snapshot>) -> Rule {
        mock!(aws_sdk_ec2::Client::describe_snapshots)
            .match_requests(move |r| {
                r.owner_ids() == ["self"]
                    && r.filters().iter().any(|f| f.name() == Some(filter))
                    && r.snapshot_ids().is_empty()
            })
            .then_output(move || {
                DescribeSnapshotsOutput::builder()
                    .set_snapshots(Some(snapshots.clone()))
                    .build()
            })
    }

    async fn pass(source: &[&Rule], forensic_side: &[&Rule]) -> (CopyReport, bool) {
        let mut clients = testing::clients();
        clients.ec2 = mock_client!(aws_sdk_ec2, RuleMode::MatchAny, source);
        let forensic_ec2 = mock_client!(aws_sdk_ec2, RuleMode::MatchAny, forensic_side);
        copy_pass(
            &clients,
            &forensic_ec2,
            &forensic(),
            &testing::target(),
            None,
            &[(SOURCE.to_owned(), "vol-0a".to_owned())],
        )
        .await
        .unwrap()
    }

    /// A completed snapshot without a copy is shared with the forensic account alone and copied
    /// there: encrypted with the forensic key (whatever the source's encryption), from the
    /// finding's region, tagged with its source and case at creation.
    #[tokio::test]
    async fn a_completed_snapshot_is_shared_with_the_forensic_account_and_copied_encrypted() {
        let source = described_as(
            "snapshot-id",
            vec![snapshot(SOURCE, SnapshotState::Completed, None)],
        );
        let share = mock!(aws_sdk_ec2::Client::modify_snapshot_attribute)
            .match_requests(|r| {
                let change = r.create_volume_permission();
                r.snapshot_id() == Some(SOURCE)
                    && r.attribute() == Some(&SnapshotAttributeName::CreateVolumePermission)
                    && change.is_some_and(|c| {
                        c.remove().is_empty()
                            && c.add().len() == 1
                            && c.add()[0].user_id() == Some("999999999999")
                            && c.add()[0].group().is_none()
                    })
                    && r.user_ids().is_empty()
                    && r.group_names().is_empty()
            })
            .then_output(|| ModifySnapshotAttributeOutput::builder().build());
        let none = described_as("tag:ec2-quarantine:source-snapshot", vec![]);
        let copy = mock!(aws_sdk_ec2::Client::copy_snapshot)
            .match_requests(|r| {
                let given = r.tag_specifications()[0].tags();
                let tag = |k: &str| {
                    given
                        .iter()
                        .find(|t| t.key() == Some(k))
                        .and_then(Tag::value)
                };
                r.source_snapshot_id() == Some(SOURCE)
                    && r.source_region() == Some("us-east-1")
                    && r.encrypted() == Some(true)
                    && r.kms_key_id() == Some(KEY)
                    && r.tag_specifications()[0].resource_type() == Some(&ResourceType::Snapshot)
                    && tag(SOURCE_SNAPSHOT_TAG) == Some(SOURCE)
                    && tag(tags::CASE) == Some("f1")
                    && tag("ec2-quarantine:source-account") == Some("123456789012")
            })
            .then_output(|| CopySnapshotOutput::builder().snapshot_id(COPY).build());
        let (report, changed) = pass(&[&source, &share], &[&none, &copy]).await;
        assert!(changed);
        assert_eq!(
            report.copies,
            vec![EvidenceCopy {
                source_snapshot_id: SOURCE.into(),
                volume_id: "vol-0a".into(),
                copy_snapshot_id: Some(COPY.into()),
                state: CopyState::Copying,
                detail: None,
            }]
        );
        assert_eq!((share.num_calls(), copy.num_calls()), (1, 1));
    }

    /// A copy found by its tag is followed, never made again: its state is EC2's.
    #[tokio::test]
    async fn a_copy_already_made_is_followed_not_made_again() {
        for (state, expected) in [
            (SnapshotState::Pending, CopyState::Copying),
            (SnapshotState::Completed, CopyState::Completed),
            (SnapshotState::Error, CopyState::Failed),
        ] {
            let source = described_as(
                "snapshot-id",
                vec![snapshot(SOURCE, SnapshotState::Completed, None)],
            );
            let found = described_as(
                "tag:ec2-quarantine:source-snapshot",
                vec![snapshot(COPY, state.clone(), Some(SOURCE))],
            );
            let copy = mock!(aws_sdk_ec2::Client::copy_snapshot)
                .then_output(|| CopySnapshotOutput::builder().build());
            let (report, changed) = pass(&[&source], &[&found, &copy]).await;
            assert!(!changed);
            assert_eq!(copy.num_calls(), 0);
            let c = &report.copies[0];
            assert_eq!(
                (c.state, c.copy_snapshot_id.as_deref()),
                (expected, Some(COPY))
            );
            if expected == CopyState::Failed {
                assert!(
                    c.detail
                        .as_deref()
                        .unwrap()
                        .contains("the key is not usable"),
                    "{c:?}"
                );
            }
        }
    }

    /// A snapshot still pending is waited for: nothing is shared or copied.
    #[tokio::test]
    async fn a_pending_snapshot_is_waited_for() {
        let source = described_as(
            "snapshot-id",
            vec![snapshot(SOURCE, SnapshotState::Pending, None)],
        );
        let none = described_as("tag:ec2-quarantine:source-snapshot", vec![]);
        let (report, changed) = pass(&[&source], &[&none]).await;
        assert!(!changed);
        assert_eq!(report.copies[0].state, CopyState::SourcePending);
        assert!(report.copies[0].detail.as_deref().unwrap().contains("40%"));
    }

    /// Throttling (or EBS's 20 copies at once) is tried again at the next pass; a share EC2
    /// refuses (a snapshot encrypted with the AWS managed key) fails for good, with EC2's reason.
    #[tokio::test]
    async fn a_throttled_copy_is_retried_and_a_refused_share_fails_for_good() {
        for (code, expected) in [
            ("RequestLimitExceeded", CopyState::Retrying),
            ("ResourceLimitExceeded", CopyState::Retrying),
            // The share not yet visible to the forensic account.
            ("InvalidSnapshot.NotFound", CopyState::Retrying),
        ] {
            let source = described_as(
                "snapshot-id",
                vec![snapshot(SOURCE, SnapshotState::Completed, None)],
            );
            let share = mock!(aws_sdk_ec2::Client::modify_snapshot_attribute)
                .then_output(|| ModifySnapshotAttributeOutput::builder().build());
            let none = described_as("tag:ec2-quarantine:source-snapshot", vec![]);
            let copy = mock!(aws_sdk_ec2::Client::copy_snapshot).then_error(move || {
                CopySnapshotError::generic(ErrorMetadata::builder().code(code).build())
            });
            let (report, changed) = pass(&[&source, &share], &[&none, &copy]).await;
            assert!(!changed);
            assert_eq!(report.copies[0].state, expected, "{code}");
        }
        let source = described_as(
            "snapshot-id",
            vec![snapshot(SOURCE, SnapshotState::Completed, None)],
        );
        let share = mock!(aws_sdk_ec2::Client::modify_snapshot_attribute).then_error(|| {
            ModifySnapshotAttributeError::generic(
                ErrorMetadata::builder()
                    .code("OperationNotPermitted")
                    .message("encrypted with the AWS managed key")
                    .build(),
            )
        });
        let none = described_as("tag:ec2-quarantine:source-snapshot", vec![]);
        let copy = mock!(aws_sdk_ec2::Client::copy_snapshot)
            .then_output(|| CopySnapshotOutput::builder().build());
        let (report, _) = pass(&[&source, &share], &[&none, &copy]).await;
        assert_eq!(report.copies[0].state, CopyState::Failed);
        assert!(
            report.copies[0]
                .detail
                .as_deref()
                .unwrap()
                .contains("AWS managed key")
        );
        assert_eq!(copy.num_calls(), 0);
    }

    /// A snapshot EC2 no longer holds fails for good, without failing the pass.
    #[tokio::test]
    async fn a_snapshot_that_is_gone_fails_alone() {
        let source = described_as("snapshot-id", vec![]);
        let none = described_as("tag:ec2-quarantine:source-snapshot", vec![]);
        let (report, _) = pass(&[&source], &[&none]).await;
        assert_eq!(report.copies[0].state, CopyState::Failed);
    }

    /// After the last pass what is not over is reported as no longer followed, with the copy.
    #[test]
    fn the_last_pass_gives_up_what_is_not_over() {
        let mut report = report(
            &testing::target(),
            &forensic(),
            vec![
                EvidenceCopy {
                    source_snapshot_id: SOURCE.into(),
                    volume_id: "vol-0a".into(),
                    copy_snapshot_id: Some(COPY.into()),
                    state: CopyState::Copying,
                    detail: Some("40% copied".into()),
                },
                failed(SOURCE, "vol-0b", None, "refused".into()),
            ],
        );
        give_up(&mut report, 288, 300);
        assert_eq!(report.copies[0].state, CopyState::Failed);
        let detail = report.copies[0].detail.as_deref().unwrap();
        assert!(
            detail.contains(COPY) && detail.contains("24 h") && detail.contains("40% copied"),
            "{detail}"
        );
        assert_eq!(report.copies[1].detail.as_deref(), Some("refused"));
    }

    /// Without a forensic account the step says so and the workflow stops asking.
    #[tokio::test]
    async fn without_a_forensic_account_the_step_skips_and_finishes() {
        let config = aws_config::SdkConfig::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new("us-east-1"))
            .build();
        let ctx = Ctx::from_config(config);
        let payload = serde_json::json!({"target": testing::target(), "case": null, "pass": 3});
        let pass = copy_evidence(&ctx, None, payload).await.unwrap();
        assert!(pass.finished);
        assert_eq!((pass.pass, pass.next_pass), (3, 4));
        assert!(matches!(pass.outcome, Outcome::Skipped { .. }));
        let shown = serde_json::to_value(&pass).unwrap();
        assert_eq!(shown["status"], "skipped", "{shown}");
    }

    #[test]
    fn snapshot_ids_are_checked_before_they_reach_a_request() {
        assert!(is_snapshot_id(SOURCE));
        assert!(is_snapshot_id("snap-1234abcd"));
        for bad in [
            "snap-",
            "snap-0a",
            "vol-0aaaaaaaaaaaaaaa1",
            "snap-0aaaaaaaaaaaaaaa1 x",
            "",
        ] {
            assert!(!is_snapshot_id(bad), "{bad}");
        }
        assert!(is_volume_id("vol-0aaaaaaaaaaaaaaa1") && is_volume_id("vol-1234abcd"));
        for bad in [
            "vol-",
            "vol-0a",
            SOURCE,
            "vol-1234abcd\nx",
            "vol-1234abcd x",
        ] {
            assert!(!is_volume_id(bad), "{bad}");
        }
    }

    #[test]
    fn a_pass_is_failed_only_once_every_copy_is_over_and_one_is_lost() {
        let copy = |state| EvidenceCopy {
            source_snapshot_id: SOURCE.into(),
            volume_id: "vol-0a".into(),
            copy_snapshot_id: Some(COPY.into()),
            state,
            detail: None,
        };
        let status = |changed, uncopyable, states: &[CopyState]| {
            let copies = states.iter().map(|s| copy(*s)).collect();
            settled(
                changed,
                uncopyable,
                report(&testing::target(), &forensic(), copies),
            )
            .status()
        };
        use CopyState::*;
        assert_eq!(status(true, false, &[Completed, Completed]), "done");
        assert_eq!(status(false, false, &[Completed]), "already_done");
        assert_eq!(status(false, false, &[Completed, Failed]), "failed");
        assert_eq!(status(true, false, &[Failed]), "failed");
        // Not over yet: the next pass may still copy; its last pass says failed.
        assert_eq!(status(true, false, &[Copying, Failed]), "done");
        assert_eq!(status(false, false, &[Retrying, Failed]), "already_done");
        // An entry of the set the case holds malformed is evidence not copied.
        assert_eq!(status(false, true, &[Completed]), "failed");
    }
}
