//! The case's evidence manifest: what the snapshot step preserved, for whom and why, written once
//! to the object-locked evidence bucket ([`crate::aws::evidence`]) with its SHA-256.
//!
//! The manifest lists the case, the finding that opened the work (id, type, severity), the
//! instance and where it runs, and each forensic snapshot: its id, the volume it copies and the
//! device it was attached as, the volume's size, when EBS started the snapshot, and its lock. Its
//! content is fixed by those facts alone (no time of writing: S3 keeps that), so a retried step
//! or another execution of the same case and finding writes the same bytes under the same name,
//! and S3 keeps one object. Its name is `cases/<case>/manifest-<sha256>.json`: anyone holding the
//! name can check the bytes, and S3 checked them on arrival.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use crate::aws::evidence::{EvidenceStore, Stored};
use crate::domain::finding::Target;
use crate::steps::snapshot::ForensicSnapshot;

/// The manifest's format name; a reader checks it before reading the rest.
pub const FORMAT: &str = "ec2-quarantine/evidence-manifest/1";

/// Where a manifest was written, as the case and the notification show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestRecord {
    pub bucket: String,
    pub key: String,
    /// The SHA-256 of the object's bytes, in hex (S3 keeps it too, in base64).
    pub sha256: String,
    /// The object's version, when this run wrote it (none when it was there already).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version_id: Option<String>,
}

#[derive(Debug, Serialize)]
struct Manifest<'a> {
    format: &'static str,
    /// The case the snapshots belong to (none when the case table could not be reached).
    case_id: Option<&'a str>,
    case_opened_at: Option<&'a str>,
    finding: Finding<'a>,
    partition: &'a str,
    account_id: &'a str,
    region: &'a str,
    instance_id: &'a str,
    snapshots: Vec<Snapshot<'a>>,
}

#[derive(Debug, Serialize)]
struct Finding<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    finding_type: &'a str,
    severity: f64,
}

#[derive(Debug, Serialize)]
struct Snapshot<'a> {
    snapshot_id: &'a str,
    volume_id: &'a str,
    device: Option<&'a str>,
    volume_size_gib: Option<i32>,
    started_at: Option<&'a str>,
    /// `governance` or `compliance` (a compliance lock in its cooling-off period included),
    /// none when the snapshot is not locked.
    lock_mode: Option<&'a str>,
    lock_days: Option<i32>,
}

/// The manifest's bytes (pretty JSON, the snapshots in id order) and their SHA-256.
pub fn render(
    target: &Target,
    case: Option<&crate::case::CaseHandle>,
    snapshots: &[ForensicSnapshot],
) -> (Vec<u8>, [u8; 32]) {
    let mut listed: Vec<Snapshot<'_>> = snapshots
        .iter()
        .map(|s| {
            let lock = s.lock.as_ref();
            Snapshot {
                snapshot_id: &s.snapshot_id,
                volume_id: &s.volume_id,
                device: s.device.as_deref(),
                volume_size_gib: s.volume_size_gib,
                started_at: s.started_at.as_deref(),
                lock_mode: lock.map(|l| {
                    if l.state.starts_with("compliance") {
                        "compliance"
                    } else {
                        "governance"
                    }
                }),
                lock_days: lock.and_then(|l| l.days),
            }
        })
        .collect();
    listed.sort_by(|a, b| a.snapshot_id.cmp(b.snapshot_id));
    let manifest = Manifest {
        format: FORMAT,
        case_id: case.map(|c| c.case_id.as_str()),
        case_opened_at: case.map(|c| c.opened_at.as_str()).filter(|t| !t.is_empty()),
        finding: Finding {
            id: &target.finding_id,
            finding_type: &target.finding_type,
            severity: target.severity,
        },
        partition: &target.scope.partition,
        account_id: &target.scope.account_id,
        region: &target.scope.region,
        instance_id: &target.instance_id,
        snapshots: listed,
    };
    // Serializing plain strings and numbers cannot fail; an empty body would be refused below.
    let mut bytes = serde_json::to_vec_pretty(&manifest).unwrap_or_default();
    bytes.push(b'\n');
    let digest: [u8; 32] = Sha256::digest(&bytes).into();
    (bytes, digest)
}

/// Writes the manifest of `snapshots` once to `store`. Never fails the step: what went wrong is
/// returned as a warning, and the snapshots stand.
pub async fn write(
    store: &EvidenceStore,
    target: &Target,
    case: Option<&crate::case::CaseHandle>,
    snapshots: &[ForensicSnapshot],
) -> Result<ManifestRecord, String> {
    let (bytes, digest) = render(target, case, snapshots);
    let sha256 = hex::encode(digest);
    let folder = case.map_or(target.finding_id.as_str(), |c| c.case_id.as_str());
    let key = format!("cases/{folder}/manifest-{sha256}.json");
    match store.put_once(&key, bytes, &digest).await {
        Ok(stored) => {
            info!(bucket = store.bucket(), %key, new = matches!(stored, Stored::New { .. }), "evidence manifest");
            Ok(ManifestRecord {
                bucket: store.bucket().to_owned(),
                key,
                sha256,
                version_id: match stored {
                    Stored::New { version_id } => version_id,
                    Stored::Existing => None,
                },
            })
        }
        Err(err) => {
            warn!(error = %err, %key, "evidence manifest not written");
            Err(format!(
                "the evidence manifest was not written to s3://{}/{key} ({err}); the snapshots stand and the case lists them",
                store.bucket()
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use aws_sdk_s3::operation::put_object::{PutObjectError, PutObjectOutput};
    use aws_smithy_mocks::{RuleMode, mock, mock_client};
    use base64::Engine as _;

    use super::*;
    use crate::steps::snapshot::SnapshotLockState;
    use crate::steps::testing;

    fn set() -> Vec<ForensicSnapshot> {
        ["snap-0b vol-0b /dev/sdf", "snap-0a vol-0a /dev/xvda"]
            .iter()
            .map(|entry| {
                let mut parts = entry.split(' ');
                ForensicSnapshot {
                    snapshot_id: parts.next().unwrap().to_owned(),
                    volume_id: parts.next().unwrap().to_owned(),
                    device: parts.next().map(str::to_owned),
                    lock: Some(SnapshotLockState {
                        state: "compliance-cooloff".into(),
                        expires_on: None,
                        days: Some(90),
                    }),
                    volume_size_gib: Some(8),
                    started_at: Some("2026-12-02T10:00:00Z".into()),
                }
            })
            .collect()
    }

    fn store(rules: &[&aws_smithy_mocks::Rule]) -> EvidenceStore {
        EvidenceStore::with_client(
            mock_client!(aws_sdk_s3, RuleMode::MatchAny, rules),
            "evidence-bucket",
        )
    }

    fn s3_error(code: &str) -> PutObjectError {
        PutObjectError::generic(
            aws_smithy_types::error::ErrorMetadata::builder()
                .code(code)
                .build(),
        )
    }

    /// The same facts make the same bytes whatever order the set came in, and the lock is named
    /// by its mode (a compliance lock in its cooling-off period is compliance), so that a retry
    /// writes what the first run wrote.
    #[test]
    fn the_content_is_fixed_by_the_facts() {
        let target = testing::target();
        let (bytes, digest) = render(&target, None, &set());
        let mut reversed = set();
        reversed.reverse();
        assert_eq!(render(&target, None, &reversed).0, bytes);
        assert_eq!(digest, <[u8; 32]>::from(Sha256::digest(&bytes)));
        let doc: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(doc["format"], FORMAT);
        assert_eq!(doc["snapshots"][0]["snapshot_id"], "snap-0a");
        assert_eq!(doc["snapshots"][0]["lock_mode"], "compliance");
        assert_eq!(doc["finding"]["id"], target.finding_id.as_str());
    }

    /// The write carries If-None-Match: * and the body's SHA-256, under a name holding it.
    #[tokio::test]
    async fn the_manifest_is_written_once_with_its_checksum() {
        let target = testing::target();
        let (_, digest) = render(&target, None, &set());
        let checksum = base64::engine::general_purpose::STANDARD.encode(digest);
        let key = format!(
            "cases/{}/manifest-{}.json",
            target.finding_id,
            hex::encode(digest)
        );
        let wanted = key.clone();
        let put = mock!(aws_sdk_s3::Client::put_object)
            .match_requests(move |r| {
                r.bucket() == Some("evidence-bucket")
                    && r.key() == Some(wanted.as_str())
                    && r.if_none_match() == Some("*")
                    && r.checksum_sha256() == Some(checksum.as_str())
            })
            .then_output(|| PutObjectOutput::builder().version_id("v1").build());
        let record = write(&store(&[&put]), &target, None, &set()).await.unwrap();
        assert_eq!(put.num_calls(), 1);
        assert_eq!(record.key, key);
        assert_eq!(record.sha256, hex::encode(digest));
        assert_eq!(record.version_id.as_deref(), Some("v1"));
    }

    /// A manifest already there (S3's 412 to If-None-Match) is the same content: found, not
    /// written again; a write conflicting with another is asked once more.
    #[tokio::test]
    async fn a_manifest_already_there_is_found() {
        let conflict = mock!(aws_sdk_s3::Client::put_object)
            .then_error(|| s3_error("ConditionalRequestConflict"));
        let there =
            mock!(aws_sdk_s3::Client::put_object).then_error(|| s3_error("PreconditionFailed"));
        let s3 = mock_client!(aws_sdk_s3, RuleMode::Sequential, &[&conflict, &there]);
        let store = EvidenceStore::with_client(s3, "evidence-bucket");
        let record = write(&store, &testing::target(), None, &set())
            .await
            .unwrap();
        assert_eq!((conflict.num_calls(), there.num_calls()), (1, 1));
        assert_eq!(record.version_id, None);
    }

    /// A refused write is a warning that names where the manifest should be; nothing fails.
    #[tokio::test]
    async fn a_refused_write_is_a_warning() {
        let denied = mock!(aws_sdk_s3::Client::put_object).then_error(|| s3_error("AccessDenied"));
        let warning = write(&store(&[&denied]), &testing::target(), None, &set())
            .await
            .unwrap_err();
        assert!(
            warning.contains("was not written to s3://evidence-bucket/cases/")
                && warning.contains("AccessDenied"),
            "{warning}"
        );
    }
}
