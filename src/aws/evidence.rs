//! The evidence bucket (`EVIDENCE_BUCKET`): an S3 bucket of the responder's own account, in its
//! own region, created by the stack with S3 Object Lock and a default retention, where each case's
//! manifest is written once and cannot be changed or deleted until its retention ends.
//!
//! An object is written once under a name that carries the SHA-256 of its content, with
//! `If-None-Match: *`: S3 refuses to write over an existing key (412 Precondition Failed,
//! <https://docs.aws.amazon.com/AmazonS3/latest/userguide/conditional-writes.html>), so a retried
//! step that writes the same content finds it there and writes nothing twice. The content's
//! SHA-256 goes with the request (`x-amz-checksum-sha256`): S3 checks the bytes it received
//! against it and keeps it with the object, where `GetObject` with `ChecksumMode=ENABLED` shows it
//! (<https://docs.aws.amazon.com/AmazonS3/latest/userguide/checking-object-integrity.html>). An
//! Object Lock bucket requires a checksum on every upload
//! (<https://docs.aws.amazon.com/AmazonS3/latest/API/API_PutObject.html>); the retention is the
//! bucket's default, so the functions never choose it.

use aws_config::{AppName, SdkConfig};
use aws_sdk_s3::types::{ChecksumAlgorithm, ChecksumMode};
use base64::Engine as _;

use crate::error::Error;

/// The evidence bucket and the client for it (always the responder's own account and region).
#[derive(Debug, Clone)]
pub struct EvidenceStore {
    s3: aws_sdk_s3::Client,
    bucket: String,
    /// Why the configured name cannot be used (not an S3 bucket name): every write is refused
    /// with this, so the reports say it, and the function still takes the snapshots.
    unusable: Option<String>,
    /// Reached through a configured endpoint (a local emulator), not AWS's.
    local: bool,
}

/// An object's SHA-256 as this tool computed it from the bytes S3 returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectDigest {
    /// None when the object is larger than the reader would read.
    pub sha256: Option<String>,
    pub bytes: u64,
    pub version_id: Option<String>,
}

/// What writing an object found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stored {
    /// Written by this call; the version S3 gave it (the bucket is versioned, as Object Lock needs).
    New { version_id: Option<String> },
    /// The key was there already with the same content (the checksum S3 kept is the body's).
    Existing { version_id: Option<String> },
    /// The key holds other content (someone wrote under the name first): nothing was written.
    Other { found: Option<String> },
}

impl EvidenceStore {
    /// The store for `bucket`. A name that breaks S3's rules for general purpose buckets (3 to 63
    /// lowercase letters, digits, dots and hyphens, a letter or digit at each end) makes a store
    /// that refuses every write, saying why.
    pub fn new(config: &SdkConfig, bucket: &str) -> EvidenceStore {
        // A slow bucket never holds the step long: each call gives up after a few seconds (the
        // manifest is then a warning, and the snapshots stand), as the case table's calls do.
        let timeouts = aws_config::timeout::TimeoutConfig::builder()
            .operation_attempt_timeout(std::time::Duration::from_secs(2))
            .operation_timeout(std::time::Duration::from_secs(5))
            .build();
        let local = config.endpoint_url().is_some();
        let s3 = aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::from(config)
                .timeout_config(timeouts)
                // A local emulator answers on one host name; AWS is reached virtual-host style.
                .force_path_style(local)
                .interceptor(crate::aws::calls::CallMetrics)
                .build(),
        );
        EvidenceStore {
            local,
            ..EvidenceStore::with_client(s3, bucket)
        }
    }

    /// A store on a given client (tests give a mocked one).
    pub fn with_client(s3: aws_sdk_s3::Client, bucket: &str) -> EvidenceStore {
        let unusable = (!is_bucket_name(bucket))
            .then(|| format!("EVIDENCE_BUCKET {bucket:?} is not an S3 bucket name"));
        if let Some(why) = &unusable {
            tracing::error!(%why, "no manifest can be written");
        }
        EvidenceStore {
            s3,
            bucket: bucket.to_owned(),
            unusable,
            local: false,
        }
    }

    /// The same bucket, its requests naming `app` in their User-Agent.
    pub fn acting_as(&self, app: AppName) -> EvidenceStore {
        EvidenceStore {
            s3: aws_sdk_s3::Client::from_conf(self.s3.config().to_builder().app_name(app).build()),
            ..self.clone()
        }
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// Whether the bucket is reached through a configured endpoint (a local emulator, whose
    /// presigned URLs may be `http://`).
    pub fn is_local(&self) -> bool {
        self.local
    }

    /// Writes `body` (JSON) under `key` unless the key exists. `sha256` is the body's digest.
    pub async fn put_once(&self, key: &str, body: Vec<u8>, sha256: &[u8]) -> Result<Stored, Error> {
        if let Some(why) = &self.unusable {
            return Err(Error::Misconfigured(why.clone()));
        }
        let checksum = base64::engine::general_purpose::STANDARD.encode(sha256);
        // A conflicting write of the same key answers 409 ConditionalRequestConflict, to be
        // retried (the PutObject reference); the second answer is a 412 or a success.
        let mut conflicts = 0;
        loop {
            let answer = self
                .s3
                .put_object()
                .bucket(&self.bucket)
                .key(key)
                .content_type("application/json")
                .checksum_algorithm(ChecksumAlgorithm::Sha256)
                .checksum_sha256(&checksum)
                .if_none_match("*")
                .body(body.clone().into())
                .send()
                .await
                .map_err(|e| Error::from_sdk("s3:PutObject", e));
            match answer {
                Ok(out) => {
                    return Ok(Stored::New {
                        version_id: out.version_id().map(str::to_owned),
                    });
                }
                // S3's 412 (its code, or the status alone when the answer has no body).
                Err(err) if matches!(err.aws_code(), Some("PreconditionFailed" | "HTTP 412")) => {
                    return self.existing(key, &checksum).await;
                }
                Err(err)
                    if conflicts == 0 && err.aws_code() == Some("ConditionalRequestConflict") =>
                {
                    conflicts += 1;
                }
                Err(err) => return Err(err),
            }
        }
    }

    /// How a URL valid for `seconds` is signed (none when the bucket is not usable).
    fn presigning(&self, seconds: u64) -> Result<aws_sdk_s3::presigning::PresigningConfig, Error> {
        if let Some(why) = &self.unusable {
            return Err(Error::Misconfigured(why.clone()));
        }
        aws_sdk_s3::presigning::PresigningConfig::expires_in(std::time::Duration::from_secs(
            seconds,
        ))
        .map_err(|e| Error::Misconfigured(format!("a presigned URL of {seconds} s: {e}")))
    }

    /// A presigned PUT of `key`, valid for `seconds`: what a command on an instance uploads to
    /// without any permission of its own. Signed here with the function's credentials (S3 checks
    /// them, and the bucket's policy, when the URL is used).
    pub async fn presign_put(&self, key: &str, seconds: u64) -> Result<String, Error> {
        let config = self.presigning(seconds)?;
        let request = self
            .s3
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .presigned(config)
            .await
            .map_err(|e| {
                Error::Misconfigured(format!("the upload URL could not be signed: {e}"))
            })?;
        Ok(request.uri().to_owned())
    }

    /// A presigned GET of `key`, valid for `seconds`: how a command on an instance fetches the
    /// tool the deployment put in the bucket (the memory imager's AVML), with no permission of
    /// its own.
    pub async fn presign_get(&self, key: &str, seconds: u64) -> Result<String, Error> {
        let config = self.presigning(seconds)?;
        let request = self
            .s3
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .presigned(config)
            .await
            .map_err(|e| {
                Error::Misconfigured(format!("the tool's URL could not be signed: {e}"))
            })?;
        Ok(request.uri().to_owned())
    }

    /// The SHA-256 of the object under `key`, computed from its bytes as S3 returns them: none
    /// when there is no object (S3 says so, 404, to a reader allowed `s3:ListBucket`; without it,
    /// 403), and only its size when it is larger than `max_bytes` (it is not read).
    pub async fn digest(&self, key: &str, max_bytes: u64) -> Result<Option<ObjectDigest>, Error> {
        if let Some(why) = &self.unusable {
            return Err(Error::Misconfigured(why.clone()));
        }
        let answer = self
            .s3
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| Error::from_sdk("s3:GetObject", e));
        let out = match answer {
            Ok(out) => out,
            Err(err) if matches!(err.aws_code(), Some("NoSuchKey" | "HTTP 404")) => {
                return Ok(None);
            }
            Err(err) => return Err(err),
        };
        let version_id = out.version_id().map(str::to_owned);
        let length = out.content_length().and_then(|l| u64::try_from(l).ok());
        if let Some(length) = length.filter(|l| *l > max_bytes) {
            return Ok(Some(ObjectDigest {
                sha256: None,
                bytes: length,
                version_id,
            }));
        }
        let mut body = out.body;
        let mut hasher = sha2::Sha256::default();
        let mut bytes = 0u64;
        while let Some(chunk) = body.try_next().await.map_err(|e| Error::Transient {
            action: "s3:GetObject",
            code: "BodyRead".into(),
            message: format!("the object's body could not be read: {e}"),
            source: e.into(),
        })? {
            bytes += chunk.len() as u64;
            if bytes > max_bytes {
                return Ok(Some(ObjectDigest {
                    sha256: None,
                    bytes,
                    version_id,
                }));
            }
            sha2::Digest::update(&mut hasher, &chunk);
        }
        Ok(Some(ObjectDigest {
            sha256: Some(hex::encode(sha2::Digest::finalize(hasher))),
            bytes,
            version_id,
        }))
    }

    /// What holds `key`: the same content when the checksum S3 kept is `checksum`.
    async fn existing(&self, key: &str, checksum: &str) -> Result<Stored, Error> {
        let head = self
            .s3
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .checksum_mode(ChecksumMode::Enabled)
            .send()
            .await
            .map_err(|e| Error::from_sdk("s3:GetObject", e))?;
        let version_id = head.version_id().map(str::to_owned);
        Ok(if head.checksum_sha256() == Some(checksum) {
            Stored::Existing { version_id }
        } else {
            Stored::Other {
                found: head.checksum_sha256().map(str::to_owned),
            }
        })
    }
}

/// S3's naming rules for general purpose buckets
/// (<https://docs.aws.amazon.com/AmazonS3/latest/userguide/bucketnamingrules.html>), the parts that
/// matter for a name in a request: length, characters, the ends, no `..`.
pub fn is_bucket_name(s: &str) -> bool {
    let bytes = s.as_bytes();
    (3..=63).contains(&s.len())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'.' || *b == b'-')
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
        && !s.contains("..")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_names_follow_s3s_rules() {
        for good in ["abc", "ec2-quarantine-evidence-123456789012", "a.b-c"] {
            assert!(is_bucket_name(good), "{good}");
        }
        for bad in [
            "",
            "ab",
            "Upper",
            "-start",
            "end-",
            "two..dots",
            "under_score",
            "a/b",
            &"a".repeat(64),
        ] {
            assert!(!is_bucket_name(bad), "{bad}");
        }
    }
}
