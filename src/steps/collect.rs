//! Volatile evidence from an instance that waits for a person's approval: the tool's SSM
//! document (`VolatileEvidenceCollector`) run on it while it can still answer, its archive
//! uploaded to the evidence bucket and checked there, the hashes kept with the approval.
//!
//! Containment is never held back for it. An instance contained at once cannot answer (its
//! security groups allow nothing, its profile holds no role), so the only window the workflow
//! has is the wait for an approval: the collection workflow is started just before the request
//! is sent, and whatever the person decides, the containment goes on without waiting for it (a
//! containment decided meanwhile cuts the command off, and the record says so).
//!
//! One pass, for one instance of the plan (Step Functions waits between two passes):
//!
//! 1. The record is the approval's (`approval#<id>`, `collection#<instance>` in the case table):
//!    the first pass claims it with a conditional write, so one execution sends one command per
//!    instance and approval; a retried pass finds the command it sent.
//! 2. The archive's name in the evidence bucket is fixed by the approval and the instance
//!    (`volatile/<approval>/<instance>.tar.gz`), and the URL the command carries is a presigned
//!    PUT of that name only, valid for an hour: the instance needs no permission of its own, and
//!    the script's `If-None-Match: *` makes a second upload to the name fail.
//! 3. Systems Manager sends the command (`SendCommand`); an instance it does not manage (no
//!    agent, or not online) is reported as such, not retried.
//! 4. Later passes read the invocation (`GetCommandInvocation`) until it is over; then the
//!    output's hashes are read (the output is the instance's: every value is checked) and the
//!    archive's SHA-256 is computed from the object S3 holds, which alone counts.
//!
//! The document is the responder's, in its own account and region: instances elsewhere are
//! skipped, saying why.

use aws_sdk_ssm::types::CommandInvocationStatus;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::Ctx;
use aws_sdk_dynamodb::types::AttributeValue;

use crate::aws::evidence::{EvidenceStore, ObjectDigest};
use crate::case::{Store, written};
use crate::domain::finding::{self, StepRequest, Target};
use crate::domain::outcome::{Check, Outcome, PlannedAction};
use crate::error::Error;

/// The step's name (the function, its User-Agent).
pub const STEP: &str = "collect";

/// How long the presigned upload URL is valid: the command's delivery timeout, its 600 s and a
/// margin.
pub const URL_SECONDS: u64 = 3600;

/// How long Systems Manager tries to deliver the command before it gives up
/// (`TimeoutSeconds` of SendCommand: 30 to 2,592,000).
pub const DELIVERY_SECONDS: i32 = 300;

/// The most passes of the volatile collection: at the wait below, about 25 minutes (the
/// document runs at most 600 s).
pub const VOLATILE_PASSES: u32 = 50;

/// The most passes in all, the memory image's included: at the wait below, 100 minutes (its
/// document runs at most an hour, after the volatile collection).
pub const MAX_PASSES: u32 = 200;

/// The wait between two passes (`COLLECT_WAIT_SECONDS`, 1 to 600).
pub const WAIT_SECONDS: u32 = 30;

/// The largest archive read back (the script's is a few MiB at most): a larger object under
/// the name is not read, and not evidence.
pub const MAX_ARCHIVE_BYTES: u64 = 256 * 1024 * 1024;

/// Systems Manager's answers to SendCommand that prove it took no command: only after one of
/// them may another pass send (after a timeout or a 5xx, the command may have been taken).
const REFUSED: &[&str] = &[
    "InvalidParameters",
    "InvalidDocument",
    "InvalidDocumentVersion",
    "UnsupportedPlatformType",
    "AccessDeniedException",
    "ThrottlingException",
];

/// Most lines of the output's file list kept (the script writes 15 files).
const MAX_FILES: usize = 64;

/// The collector as the function's environment configures it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Collector {
    /// The document's name (`VOLATILE_EVIDENCE_DOCUMENT`), in the responder's account.
    pub document: String,
    /// The wait between two passes.
    pub wait_seconds: u32,
}

impl Collector {
    /// From `VOLATILE_EVIDENCE_DOCUMENT`; none when it is unset or empty (the step then skips).
    pub fn from_env() -> Result<Option<Collector>, Error> {
        let wait = crate::domain::settings::number_in(
            "COLLECT_WAIT_SECONDS",
            std::env::var("COLLECT_WAIT_SECONDS")
                .ok()
                .as_deref()
                .map(str::trim)
                .filter(|v| !v.is_empty()),
            WAIT_SECONDS,
            1..=600,
            "a whole number of seconds",
        )?;
        match std::env::var("VOLATILE_EVIDENCE_DOCUMENT") {
            Ok(name) if !name.is_empty() => Collector::new(&name).map(|c| Some(c.waiting(wait))),
            _ => Ok(None),
        }
    }

    pub fn new(document: &str) -> Result<Collector, Error> {
        if !is_document_name(document) {
            return Err(Error::Misconfigured(format!(
                "VOLATILE_EVIDENCE_DOCUMENT {document:?} is not an SSM document name"
            )));
        }
        Ok(Collector {
            document: document.to_owned(),
            wait_seconds: WAIT_SECONDS,
        })
    }

    /// The same, waiting `seconds` between two passes.
    pub fn waiting(mut self, seconds: u32) -> Collector {
        self.wait_seconds = seconds;
        self
    }
}

/// SSM's rule for a document name (`^[a-zA-Z0-9_\-.]{3,128}$`, SendCommand's DocumentName).
pub fn is_document_name(s: &str) -> bool {
    (3..=128).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
}

/// One pass's answer, as the collection workflow reads it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CollectPass {
    #[serde(flatten)]
    pub outcome: Outcome<CollectReport>,
    pub finished: bool,
    pub pass: u32,
    pub next_pass: u32,
    pub wait_seconds: u32,
    /// The memory image, once the volatile collection is over (when one is configured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Outcome<super::memory::MemoryReport>>,
}

/// What the collection found, as the approval's record keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CollectReport {
    pub instance_id: String,
    pub approval_id: String,
    pub document: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_id: Option<String>,
    /// Systems Manager's status of the invocation (not `status`: the outcome's tag is) (`Pending`, `InProgress`, `Success`,
    /// `Failed`, `TimedOut`...), and its details (`DeliveryTimedOut`, `Undeliverable`...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_status_details: Option<String>,
    /// The archive the script reported, and what the bucket holds under its name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive: Option<Archive>,
    /// Each file's SHA-256, as the script printed them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<FileHash>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Archive {
    pub bucket: String,
    pub key: String,
    /// The SHA-256 the script printed (the instance's word).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub printed_sha256: Option<String>,
    /// The SHA-256 of the object S3 holds under the name, computed by this step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored_sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_id: Option<String>,
    /// Both hashes known and equal: the object the bucket holds is the archive the command's
    /// output names. The instance's root made both (its bytes and its output): this checks the
    /// upload, not the host.
    pub verified: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileHash {
    pub name: String,
    pub sha256: String,
}

/// What the script printed that the record keeps: checked values only.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Printed {
    pub files: Vec<FileHash>,
    pub archive_sha256: Option<String>,
    pub uploaded: Option<bool>,
}

/// A SHA-256 as sha256sum prints it: 64 lowercase hexadecimal digits.
pub(crate) fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A file name as the script writes them (`processes.tsv`): letters, digits, `.`, `-`, `_`.
fn is_file_name(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// Reads the hashes from the command's output (at most the 24,000 characters the API shows).
/// Lines that do not have the script's shape are ignored: the output comes from a host the
/// attacker may control.
pub fn parse_output(stdout: &str) -> Printed {
    let mut printed = Printed::default();
    let mut in_files = false;
    for line in stdout.lines() {
        let line = line.trim_end();
        if line.starts_with("== ") {
            in_files = line == "== files (sha256)";
            continue;
        }
        if in_files {
            // sha256sum's format: the hash, two spaces (or a space and `*`), the name.
            if let Some((hash, name)) = line.split_once(' ') {
                let name = name.trim_start_matches([' ', '*']);
                if is_sha256_hex(hash) && is_file_name(name) && printed.files.len() < MAX_FILES {
                    printed.files.push(FileHash {
                        name: name.to_owned(),
                        sha256: hash.to_owned(),
                    });
                }
            }
        } else if let Some(hash) = line.strip_prefix("archive_sha256: ") {
            if is_sha256_hex(hash) {
                printed.archive_sha256 = Some(hash.to_owned());
            }
        } else if line == "uploaded: yes" {
            printed.uploaded = Some(true);
        } else if line.starts_with("uploaded: no") {
            printed.uploaded = Some(false);
        }
    }
    printed
}

/// An execution ARN of the responder's own account and region
/// (`arn:<partition>:states:<region>:<account>:execution:<machine>:<name>`, at most 2,048
/// characters as the API allows).
fn is_own_execution(ctx: &Ctx, s: &str) -> bool {
    let parts: Vec<&str> = s.split(':').collect();
    let region = ctx.config().region().map(|r| r.as_ref().to_owned());
    s.len() <= 2048
        && parts.len() == 8
        && parts[0] == "arn"
        && parts[2] == "states"
        && Some(parts[3]) == region.as_deref()
        && ctx.org().is_own(parts[4])
        && parts[5] == "execution"
        && !parts[6].is_empty()
        && !parts[7].is_empty()
}

/// The document's `UploadUrl` pattern
/// (`^(https://[A-Za-z0-9.-]+(:[0-9]{1,5})?/[A-Za-z0-9._~/%=&?+:-]{0,8192})?$`), checked before
/// the command is sent: a URL SSM would refuse is said plainly, not retried.
pub fn is_upload_url(url: &str) -> bool {
    let Some(rest) = url.strip_prefix("https://") else {
        return false;
    };
    let Some((authority, path)) = rest.split_once('/') else {
        return false;
    };
    let (host, port) = authority.split_once(':').unwrap_or((authority, ""));
    !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        && (authority.len() == host.len()
            || ((1..=5).contains(&port.len()) && port.bytes().all(|b| b.is_ascii_digit())))
        && path.len() <= 8192
        && path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._~/%=&?+:-".contains(&b))
}

/// The archive's name in the evidence bucket for `approval_id` and `instance_id` (both checked
/// before they get here).
pub fn archive_key(approval_id: &str, instance_id: &str) -> String {
    format!("volatile/{approval_id}/{instance_id}.tar.gz")
}

/// The Lambda handler: one pass for one instance of the plan (`{target, execution, pass}`).
pub async fn collect(
    ctx: &Ctx,
    collector: Option<&Collector>,
    imager: Option<&super::memory::Imager>,
    ssm: &aws_sdk_ssm::Client,
    payload: serde_json::Value,
) -> Result<CollectPass, Error> {
    let ctx = &ctx.acting_as(STEP);
    let pass = payload
        .get("pass")
        .and_then(serde_json::Value::as_u64)
        .map_or(0, |p| u32::try_from(p).unwrap_or(u32::MAX));
    // The approval this collection belongs to: the one the execution that waits asks for
    // (its id is derived from the execution, as the approval step derives it).
    let approval_id = payload
        .get("execution")
        .and_then(serde_json::Value::as_str)
        .filter(|e| is_own_execution(ctx, e))
        .map(crate::approval::approval_id)
        .ok_or_else(|| {
            Error::InvalidEvent(
                "no execution of this account and region (the ARN of the execution that waits)"
                    .into(),
            )
        })?;
    let target = match finding::parse_step_request(payload)? {
        StepRequest::Planned(planned) => planned.target,
        StepRequest::Finding(_) => {
            return Err(Error::InvalidEvent(
                "the collection takes an instance of triage's plan, not a finding".into(),
            ));
        }
    };
    let outcome = pass_for(ctx, collector, ssm, &target, &approval_id, pass).await?;
    let last_pass = pass.saturating_add(1) >= MAX_PASSES;
    // The memory image follows the volatile collection: the small, quick evidence first.
    let memory = match (imager, &outcome) {
        (None, _) | (_, Outcome::AlreadyDone(_)) => None,
        (Some(imager), Outcome::DryRun { .. }) => Some(Outcome::DryRun {
            actions: super::memory::planned(imager, &target.instance_id),
        }),
        (Some(_), Outcome::Skipped { reason }) => Some(Outcome::skipped(format!(
            "not imaged, as the volatile collection was skipped: {reason}"
        ))),
        (Some(imager), Outcome::Done(_) | Outcome::Failed(_)) => Some(
            super::memory::pass(
                ctx,
                imager,
                ssm,
                &target,
                &approval_id,
                MAX_PASSES.saturating_sub(pass),
            )
            .await?,
        ),
    };
    let over = |o: &Outcome<_>| !matches!(o, Outcome::AlreadyDone(_));
    let finished = (over(&outcome)
        && memory
            .as_ref()
            .is_none_or(|m: &Outcome<super::memory::MemoryReport>| {
                !matches!(m, Outcome::AlreadyDone(_))
            }))
        || last_pass;
    Ok(CollectPass {
        outcome,
        finished,
        pass,
        next_pass: pass.saturating_add(1),
        wait_seconds: collector.map_or(WAIT_SECONDS, |c| c.wait_seconds),
        memory,
    })
}

/// One pass. `AlreadyDone` carries a report of a command still running (the workflow waits
/// and passes again); `Done` an archive stored and checked; `Failed` a command that ended
/// without one.
async fn pass_for(
    ctx: &Ctx,
    collector: Option<&Collector>,
    ssm: &aws_sdk_ssm::Client,
    target: &Target,
    approval_id: &str,
    pass: u32,
) -> Result<Outcome<CollectReport>, Error> {
    let Some(collector) = collector else {
        return Ok(Outcome::skipped(
            "no collector document is configured (VolatileEvidenceDocument)",
        ));
    };
    let own_region = ctx.config().region().map(|r| r.as_ref().to_owned());
    if !ctx.org().is_own(&target.scope.account_id)
        || own_region.as_deref() != Some(target.scope.region.as_str())
    {
        return Ok(Outcome::skipped(format!(
            "the instance runs in account {} and {}: the collector document is the responder's, in its own account and region",
            target.scope.account_id, target.scope.region
        )));
    }
    if ctx.settings().dry_run {
        return Ok(Outcome::DryRun {
            actions: vec![PlannedAction::new(
                "ssm:SendCommand",
                &target.instance_id,
                format!(
                    "{} run on the instance, its archive uploaded to the evidence bucket",
                    collector.document
                ),
                Check::NotCheckable,
            )],
        });
    }
    let Some(store) = ctx.evidence() else {
        return Ok(Outcome::skipped(
            "no evidence bucket is configured (EVIDENCE_BUCKET)",
        ));
    };
    let cases = ctx.cases();
    let instance_id = &target.instance_id;
    let key = archive_key(approval_id, instance_id);
    let mut report = CollectReport {
        instance_id: instance_id.clone(),
        approval_id: approval_id.to_owned(),
        document: collector.document.clone(),
        command_id: None,
        command_status: None,
        command_status_details: None,
        archive: None,
        files: Vec::new(),
        warnings: Vec::new(),
    };
    let record = cases.collection(approval_id, instance_id).await?;
    if let Some(over) = record.as_ref().and_then(|r| r.report.clone()) {
        // Over in an earlier pass: the record stands, nothing is sent again.
        return Ok(over);
    }
    let command_id = match record.and_then(|r| r.command_id) {
        Some(id) => id,
        None => {
            let sent_before = match cases.claim_collection(approval_id, instance_id).await? {
                CollectionClaim::Fresh => None,
                // The pass that claimed it died: perhaps after Systems Manager took its
                // command, which is followed rather than sent twice.
                CollectionClaim::TakenOver => {
                    sent_earlier(ssm, &collector.document, instance_id, &comment(approval_id))
                        .await?
                }
                CollectionClaim::Held => {
                    // Another pass is sending the command: found at the next pass.
                    report
                        .warnings
                        .push("another pass is sending the command".into());
                    return running(cases, approval_id, instance_id, report, pass).await;
                }
            };
            let sent = match sent_before {
                Some(id) => Ok(id),
                None => match store.presign_put(&key, URL_SECONDS).await {
                    // SSM checks the URL against the document's pattern (https only). With an
                    // endpoint configured (never on AWS: the Rust suite's emulator, plain HTTP),
                    // that check is left to the emulator's SSM: the local run's simulated agent
                    // makes it as SSM does, behind an HTTPS front.
                    Ok(url) if !is_upload_url(&url) && !store.is_local() => {
                        Err(Sent::Refused(Error::Misconfigured(format!(
                            "the presigned upload URL ({} characters) does not fit the document's UploadUrl pattern: SSM would refuse it",
                            url.len()
                        ))))
                    }
                    Ok(url) => send(ssm, collector, target, approval_id, &url).await,
                    Err(err) => Err(Sent::Refused(err)),
                },
            };
            match sent {
                Ok(id) => {
                    cases.collection_sent(approval_id, instance_id, &id).await?;
                    info!(command = %id, %key, "collection sent");
                    // Asked at the next pass: the agent needs the time anyway.
                    report.command_id = Some(id);
                    report.command_status = Some("Pending".into());
                    return running(cases, approval_id, instance_id, report, pass).await;
                }
                Err(Sent::Unmanaged(why)) => {
                    let over = Outcome::skipped(why);
                    cases
                        .collection_over(approval_id, instance_id, &over)
                        .await?;
                    return Ok(over);
                }
                Err(Sent::Refused(err)) => {
                    // Nothing was sent: the claim goes, so that the next pass may send.
                    cases.release_collection(approval_id, instance_id).await?;
                    return Err(err);
                }
                // Perhaps sent: the claim stays; once stale, a pass looks for the command
                // before it sends one.
                Err(Sent::Error(err)) => return Err(err),
            }
        }
    };
    report.command_id = Some(command_id.clone());
    let invocation = ssm
        .get_command_invocation()
        .command_id(&command_id)
        .instance_id(instance_id)
        .send()
        .await
        .map_err(|e| Error::from_sdk("ssm:GetCommandInvocation", e));
    let invocation = match invocation {
        Ok(out) => out,
        // Systems Manager's record of a command it just took can lag behind (the API
        // reference: InvocationDoesNotExist); the next pass asks again.
        Err(err) if err.aws_code() == Some("InvocationDoesNotExist") => {
            report.command_status = Some("Pending".into());
            return running(cases, approval_id, instance_id, report, pass).await;
        }
        Err(err) => return Err(err),
    };
    let status = invocation.status().cloned();
    report.command_status = status.as_ref().map(|s| s.as_str().to_owned());
    report.command_status_details = invocation.status_details().map(str::to_owned);
    if matches!(
        status,
        Some(
            CommandInvocationStatus::Pending
                | CommandInvocationStatus::InProgress
                | CommandInvocationStatus::Delayed
                | CommandInvocationStatus::Cancelling
        )
    ) {
        return running(cases, approval_id, instance_id, report, pass).await;
    }
    let printed = parse_output(invocation.standard_output_content().unwrap_or_default());
    report.files = printed.files.clone();
    let stored = store.digest(&key, MAX_ARCHIVE_BYTES).await;
    let archive = match stored {
        Ok(found) => {
            if let Some(too_big) = found.as_ref().filter(|f| f.sha256.is_none()) {
                report.warnings.push(format!(
                    "the object under the archive's name holds {} bytes, more than an archive of the collector: not read, not evidence",
                    too_big.bytes
                ));
            }
            archive(store, &key, &printed, found)
        }
        // A throttle or a failed read: the next pass reads again (nothing is recorded yet).
        Err(err) if err.name().is_retryable() => return Err(err),
        Err(err) => {
            report
                .warnings
                .push(format!("the archive could not be read back: {err}"));
            archive(store, &key, &printed, None)
        }
    };
    let verified = archive.verified;
    report.archive = Some(archive);
    if printed.uploaded == Some(true) && !verified {
        report.warnings.push(
            "the instance says it uploaded the archive, but the object under its name is not the archive it printed: not evidence".into(),
        );
    }
    let over = if verified {
        Outcome::Done(report)
    } else {
        Outcome::Failed(report)
    };
    cases
        .collection_over(approval_id, instance_id, &over)
        .await?;
    Ok(over)
}

/// A running command's report; after the last pass, a failure that says so, recorded (the
/// command is not cancelled: it may still upload, and the archive's name holds it).
async fn running(
    cases: &Store,
    approval_id: &str,
    instance_id: &str,
    mut report: CollectReport,
    pass: u32,
) -> Result<Outcome<CollectReport>, Error> {
    if pass.saturating_add(1) < VOLATILE_PASSES {
        return Ok(Outcome::AlreadyDone(report));
    }
    report.warnings.push(format!(
        "the command was still {} after {VOLATILE_PASSES} passes: no longer followed",
        report.command_status.as_deref().unwrap_or("unknown")
    ));
    let over = Outcome::Failed(report);
    cases
        .collection_over(approval_id, instance_id, &over)
        .await?;
    Ok(over)
}

fn archive(
    store: &EvidenceStore,
    key: &str,
    printed: &Printed,
    stored: Option<ObjectDigest>,
) -> Archive {
    let verified = matches!(
        (&printed.archive_sha256, stored.as_ref().and_then(|s| s.sha256.as_ref())),
        (Some(p), Some(s)) if p == s
    );
    Archive {
        bucket: store.bucket().to_owned(),
        key: key.to_owned(),
        printed_sha256: printed.archive_sha256.clone(),
        stored_sha256: stored.as_ref().and_then(|s| s.sha256.clone()),
        stored_bytes: stored.as_ref().map(|s| s.bytes),
        version_id: stored.and_then(|s| s.version_id),
        verified,
    }
}

fn comment(approval_id: &str) -> String {
    format!("ec2-quarantine volatile evidence, {approval_id}")
}

/// The command of `document` an earlier pass sent to the instance, if Systems Manager lists
/// one with the comment `wanted` (it names the approval; commands are listed for 30 days).
pub(crate) async fn sent_earlier(
    ssm: &aws_sdk_ssm::Client,
    document: &str,
    instance_id: &str,
    wanted: &str,
) -> Result<Option<String>, Error> {
    let mut pages = ssm
        .list_commands()
        .instance_id(instance_id)
        .filters(
            aws_sdk_ssm::types::CommandFilter::builder()
                .key(aws_sdk_ssm::types::CommandFilterKey::DocumentName)
                .value(document)
                .build()
                .map_err(|e| Error::InvalidEvent(format!("a command filter: {e}")))?,
        )
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| Error::from_sdk("ssm:ListCommands", e))?;
        if let Some(id) = page
            .commands()
            .iter()
            .find(|c| c.comment() == Some(wanted))
            .and_then(|c| c.command_id())
        {
            return Ok(Some(id.to_owned()));
        }
    }
    Ok(None)
}

enum Sent {
    /// Systems Manager does not manage the instance (or it is not online): not collected.
    Unmanaged(String),
    /// Refused: no command was taken (another pass may send).
    Refused(Error),
    /// Unknown: the command may have been taken (the claim stays until its takeover).
    Error(Error),
}

async fn send(
    ssm: &aws_sdk_ssm::Client,
    collector: &Collector,
    target: &Target,
    approval_id: &str,
    url: &str,
) -> Result<String, Sent> {
    let answer = ssm
        .send_command()
        .document_name(&collector.document)
        .instance_ids(&target.instance_id)
        .parameters("CaseId", vec![approval_id.to_owned()])
        .parameters("UploadUrl", vec![url.to_owned()])
        .comment(comment(approval_id))
        .timeout_seconds(DELIVERY_SECONDS)
        // SendCommand takes no idempotency token: the SDK must not send it again after a
        // timeout (the claim's takeover finds a command SSM took, through ListCommands).
        .customize()
        .config_override(
            aws_sdk_ssm::config::Builder::default()
                .retry_config(aws_config::retry::RetryConfig::disabled()),
        )
        .send()
        .await
        .map_err(|e| Error::from_sdk("ssm:SendCommand", e));
    match answer {
        Ok(out) => out
            .command()
            .and_then(|c| c.command_id())
            .map(str::to_owned)
            .ok_or_else(|| {
                Sent::Error(Error::Aws {
                    action: "ssm:SendCommand",
                    code: "NoCommandId".into(),
                    message: "SendCommand answered without a command id".into(),
                    source: "no command id".into(),
                })
            }),
        // The API reference: InvalidInstanceId when the instance is not managed, not running
        // or not online (no agent, no path to Systems Manager, no credentials).
        Err(err) if err.aws_code() == Some("InvalidInstanceId") => {
            warn!(error = %err, "not managed by Systems Manager");
            Err(Sent::Unmanaged(format!(
                "Systems Manager does not manage the instance, or it is not online ({err}): no volatile evidence"
            )))
        }
        Err(err) if err.aws_code().is_some_and(|c| REFUSED.contains(&c)) => Err(Sent::Refused(err)),
        Err(err) => Err(Sent::Error(err)),
    }
}

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

/// The volatile-evidence collection of one instance of an approval (`approval#<id>`,
/// `collection#<instance>`): the command sent, and once it is over, its report.
#[derive(Debug, Clone, PartialEq)]
pub struct CollectionRecord {
    pub command_id: Option<String>,
    pub report: Option<Outcome<CollectReport>>,
}

/// What claiming a collection found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CollectionClaim {
    /// Nobody claimed it: this pass sends the command.
    Fresh,
    /// A claim older than [`COLLECTION_CLAIM_SECS`] without a command recorded: its pass died,
    /// perhaps after Systems Manager took the command; this pass looks for it before sending.
    TakenOver,
    /// Another pass holds it.
    Held,
}

/// How long a collection's claim holds without a command recorded: longer than a pass runs.
pub const COLLECTION_CLAIM_SECS: i64 = 180;

fn collection_sort_key(instance_id: &str) -> String {
    format!("collection#{instance_id}")
}

impl Store {
    /// The collection of `instance_id` for `approval_id`, if one was claimed (read consistently).
    pub async fn collection(
        &self,
        approval_id: &str,
        instance_id: &str,
    ) -> Result<Option<CollectionRecord>, Error> {
        let out = self
            .db()
            .get_item()
            .table_name(self.table())
            .key("pk", s(format!("approval#{approval_id}")))
            .key("sk", s(collection_sort_key(instance_id)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| Error::from_sdk("dynamodb:GetItem", e))?;
        Ok(out.item.map(|item| {
            let text = |name: &str| item.get(name).and_then(|v| v.as_s().ok()).cloned();
            CollectionRecord {
                command_id: text("command_id"),
                report: text("report").and_then(|r| serde_json::from_str(&r).ok()),
            }
        }))
    }

    /// Claims the collection for this pass (see [`CollectionClaim`]).
    pub async fn claim_collection(
        &self,
        approval_id: &str,
        instance_id: &str,
    ) -> Result<CollectionClaim, Error> {
        let now = aws_smithy_types::DateTime::from(std::time::SystemTime::now()).secs();
        let put = |condition: &str| {
            self.db()
                .put_item()
                .table_name(self.table())
                .item("pk", s(format!("approval#{approval_id}")))
                .item("sk", s(collection_sort_key(instance_id)))
                .item("instance_id", s(instance_id))
                .item("claimed_at", AttributeValue::N(now.to_string()))
                .condition_expression(condition.to_owned())
        };
        let fresh = put("attribute_not_exists(pk)").send().await;
        if written("dynamodb:PutItem", fresh)? {
            return Ok(CollectionClaim::Fresh);
        }
        let stale = put(
            "attribute_not_exists(command_id) AND attribute_not_exists(report) AND claimed_at < :stale",
        )
        .expression_attribute_values(
            ":stale",
            AttributeValue::N((now - COLLECTION_CLAIM_SECS).to_string()),
        )
        .send()
        .await;
        Ok(if written("dynamodb:PutItem", stale)? {
            CollectionClaim::TakenOver
        } else {
            CollectionClaim::Held
        })
    }

    /// Records the command sent, once.
    pub async fn collection_sent(
        &self,
        approval_id: &str,
        instance_id: &str,
        command_id: &str,
    ) -> Result<(), Error> {
        self.db()
            .update_item()
            .table_name(self.table())
            .key("pk", s(format!("approval#{approval_id}")))
            .key("sk", s(collection_sort_key(instance_id)))
            .update_expression("SET command_id = :id")
            .condition_expression("attribute_exists(pk) AND attribute_not_exists(command_id)")
            .expression_attribute_values(":id", s(command_id))
            .send()
            .await
            .map_err(|e| Error::from_sdk("dynamodb:UpdateItem", e))?;
        Ok(())
    }

    /// Gives up a claim that sent nothing: the next pass takes it over (it looks for a command
    /// first, in case Systems Manager took one after all).
    pub async fn release_collection(
        &self,
        approval_id: &str,
        instance_id: &str,
    ) -> Result<(), Error> {
        let answer = self
            .db()
            .update_item()
            .table_name(self.table())
            .key("pk", s(format!("approval#{approval_id}")))
            .key("sk", s(collection_sort_key(instance_id)))
            .update_expression("SET claimed_at = :never")
            .condition_expression(
                "attribute_exists(pk) AND attribute_not_exists(command_id) AND attribute_not_exists(#report)",
            )
            .expression_attribute_names("#report", "report")
            .expression_attribute_values(":never", AttributeValue::N("0".into()))
            .send()
            .await;
        // Refused by its condition: the record already stands as it should.
        written("dynamodb:UpdateItem", answer).map(|_| ())
    }

    /// Records the collection's end (its report), once: a later pass reads it and sends nothing.
    pub async fn collection_over(
        &self,
        approval_id: &str,
        instance_id: &str,
        report: &Outcome<CollectReport>,
    ) -> Result<(), Error> {
        let json = serde_json::to_string(report)
            .map_err(|e| Error::InvalidEvent(format!("collection report: {e}")))?;
        let answer = self
            .db()
            .update_item()
            .table_name(self.table())
            .key("pk", s(format!("approval#{approval_id}")))
            .key("sk", s(collection_sort_key(instance_id)))
            .update_expression("SET #report = :report, ended_at = :now")
            .condition_expression("attribute_exists(pk) AND attribute_not_exists(#report)")
            .expression_attribute_names("#report", "report")
            .expression_attribute_values(":report", s(json))
            .expression_attribute_values(":now", s(crate::now_rfc3339()))
            .send()
            .await;
        // Refused by its condition: the record already stands as it should.
        written("dynamodb:UpdateItem", answer).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUTPUT: &str = "ec2-quarantine volatile evidence, case apr-0123456789abcdef, from a to b
== files (sha256)
3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b8551  processes.tsv
e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855  *sockets.txt
zz  bad.txt
3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b8551  ../../etc/passwd
== archive
archive_sha256: 0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
archive_bytes: 1234
uploaded: yes
";

    #[test]
    fn the_output_gives_checked_hashes_only() {
        let p = parse_output(OUTPUT);
        assert_eq!(
            p.files.iter().map(|f| f.name.as_str()).collect::<Vec<_>>(),
            ["processes.tsv", "sockets.txt"]
        );
        assert_eq!(
            p.archive_sha256.as_deref(),
            Some("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")
        );
        assert_eq!(p.uploaded, Some(true));
        let hostile = parse_output(
            "== archive\narchive_sha256: ABC\nuploaded: no (curl exited 7)\n== files (sha256)\narchive_sha256: 0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\n",
        );
        assert_eq!(
            hostile.archive_sha256, None,
            "upper case, or in the file list"
        );
        assert_eq!(hostile.uploaded, Some(false));
        assert!(hostile.files.is_empty());
        let many = format!(
            "== files (sha256)\n{}",
            "3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b8551  a.txt\n".repeat(500)
        );
        assert_eq!(parse_output(&many).files.len(), MAX_FILES);
    }

    #[test]
    fn document_names_follow_ssm() {
        assert!(is_document_name(
            "ec2-quarantine-VolatileEvidenceCollector-1AB2C3"
        ));
        for bad in [
            "ab",
            "a b c",
            "arn:aws:ssm:us-east-1:1:document/x",
            &"a".repeat(129),
        ] {
            assert!(!is_document_name(bad), "{bad}");
        }
        assert!(Collector::new("x/y").is_err());
    }

    /// A URL signed as the function signs it (temporary credentials: a session token of 2,000
    /// characters, half of them `+`, `/` and `=`, each three once encoded: far longer than
    /// Lambda's today) fits the document's pattern.
    #[tokio::test]
    async fn a_presigned_url_fits_the_documents_upload_pattern() {
        let token: String = "A+b/C=".chars().cycle().take(2000).collect();
        let config = aws_sdk_s3::Config::builder()
            .behavior_version(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_s3::config::Credentials::new(
                "ASIAEXAMPLEEXAMPLE01",
                "secret",
                Some(token),
                None,
                "test",
            ))
            .build();
        let store = EvidenceStore::with_client(
            aws_sdk_s3::Client::from_conf(config),
            "ec2-quarantine-evidence-123456789012",
        );
        let key = archive_key("apr-0123456789abcdef", "i-0123456789abcdef0");
        let url = store.presign_put(&key, URL_SECONDS).await.unwrap();
        assert!(
            url.starts_with(
                "https://ec2-quarantine-evidence-123456789012.s3.us-east-1.amazonaws.com/volatile/"
            ),
            "{url}"
        );
        assert!(url.contains("X-Amz-Security-Token=") && url.contains("X-Amz-Expires=3600"));
        assert!(is_upload_url(&url), "{} characters: {url}", url.len());
        for bad in [
            "http://bucket.s3.amazonaws.com/x",
            "https://bucket.s3.amazonaws.com/x y",
            "https://bucket.s3.amazonaws.com/x'y",
            "https://bucket.s3.amazonaws.com",
            "https://b:123456/x",
        ] {
            assert!(!is_upload_url(bad), "{bad}");
        }
        assert!(!is_upload_url(&format!("https://h/{}", "a".repeat(8193))));
    }

    #[test]
    fn the_archive_is_named_by_the_approval_and_the_instance() {
        assert_eq!(
            archive_key("apr-0123456789abcdef", "i-0123456789abcdef0"),
            "volatile/apr-0123456789abcdef/i-0123456789abcdef0.tar.gz"
        );
    }
}

#[cfg(test)]
mod roundtrip {
    use super::*;

    #[test]
    fn a_report_reads_back_as_written() {
        let report = CollectReport {
            instance_id: "i-0123456789abcdef0".into(),
            approval_id: "apr-0123456789abcdef".into(),
            document: "doc".into(),
            command_id: Some("c".into()),
            command_status: Some("Success".into()),
            command_status_details: None,
            archive: None,
            files: vec![],
            warnings: vec![],
        };
        let json = serde_json::to_string(&Outcome::Done(report)).unwrap();
        let back: Result<Outcome<CollectReport>, _> = serde_json::from_str(&json);
        assert!(back.is_ok(), "{json} {back:?}");
    }
}
