//! The forensic account the evidence is copied to, as configured through the template's
//! parameters (`FORENSIC_ACCOUNT_ID`, `FORENSIC_KMS_KEY_ARN`, `FORENSIC_ROLE_NAME`): read once,
//! at init, by the evidence-copy function. A value that is not one of the documented ones fails
//! the init with [`Error::Misconfigured`], naming the variable.

use crate::domain::finding::is_role_name;
use crate::domain::settings::number_in;
use crate::error::Error;

/// The role the evidence-copy function assumes in the forensic account, as
/// `helper_scripts/forensic-account.yaml` names it.
pub const DEFAULT_ROLE_NAME: &str = "ec2-quarantine-forensic-copier";

/// How long the workflow waits between two passes of the copy step (`FORENSIC_COPY_WAIT_SECONDS`):
/// EBS copies a snapshot in minutes to hours, and each pass costs a few calls.
pub const DEFAULT_WAIT_SECONDS: u32 = 300;

/// How many passes the workflow makes before it stops following the copies
/// (`FORENSIC_COPY_MAX_PASSES`): 288 passes of 5 minutes, a day. A copy still running then goes
/// on in EBS; the report says which.
pub const DEFAULT_MAX_PASSES: u32 = 288;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForensicAccount {
    /// The account the copies go to (12 digits, not the responder's own).
    pub account_id: String,
    /// The customer managed KMS key, in the forensic account, that encrypts every copy; its
    /// region is the copies' region.
    pub kms_key_arn: String,
    pub partition: String,
    pub region: String,
    /// The role assumed in the forensic account to copy (it receives copies, nothing else).
    pub role_name: String,
    pub wait_seconds: u32,
    pub max_passes: u32,
}

impl ForensicAccount {
    pub fn from_env() -> Result<Option<ForensicAccount>, Error> {
        ForensicAccount::from_lookup(|name| std::env::var(name).ok())
    }

    /// The forensic account `lookup` configures; `None` when no account is configured (the
    /// copy step then skips, saying so).
    pub fn from_lookup(
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<ForensicAccount>, Error> {
        let var = |name: &str| {
            lookup(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let Some(account_id) = var("FORENSIC_ACCOUNT_ID") else {
            return Ok(None);
        };
        if !(account_id.len() == 12 && account_id.bytes().all(|b| b.is_ascii_digit())) {
            return Err(Error::Misconfigured(format!(
                "FORENSIC_ACCOUNT_ID {account_id:?} is not a 12-digit account id"
            )));
        }
        let key = var("FORENSIC_KMS_KEY_ARN").ok_or_else(|| {
            Error::Misconfigured(
                "FORENSIC_KMS_KEY_ARN is required with FORENSIC_ACCOUNT_ID: every copy is encrypted with a key of the forensic account".into(),
            )
        })?;
        let (partition, region) = key_location(&key, &account_id).ok_or_else(|| {
            Error::Misconfigured(format!(
                "FORENSIC_KMS_KEY_ARN {key:?} is not the ARN of a KMS key (arn:<partition>:kms:<region>:{account_id}:key/<id>) in the forensic account"
            ))
        })?;
        let role_name = var("FORENSIC_ROLE_NAME").unwrap_or_else(|| DEFAULT_ROLE_NAME.to_owned());
        if !is_role_name(&role_name) {
            return Err(Error::Misconfigured(format!(
                "FORENSIC_ROLE_NAME {role_name:?} is not an IAM role name"
            )));
        }
        let number = |name: &str, default: u32, range| {
            number_in(name, var(name).as_deref(), default, range, "a whole number")
        };
        Ok(Some(ForensicAccount {
            account_id,
            kms_key_arn: key,
            partition,
            region,
            role_name,
            wait_seconds: number("FORENSIC_COPY_WAIT_SECONDS", DEFAULT_WAIT_SECONDS, 1..=3600)?,
            max_passes: number("FORENSIC_COPY_MAX_PASSES", DEFAULT_MAX_PASSES, 1..=10_000)?,
        }))
    }

    /// The role's ARN.
    pub fn role_arn(&self) -> String {
        format!(
            "arn:{}:iam::{}:role/{}",
            self.partition, self.account_id, self.role_name
        )
    }
}

/// The partition and region of a KMS key ARN of `account`: `arn:<partition>:kms:<region>:
/// <account>:key/<id>` (an alias ARN is refused: the key it names can change).
fn key_location(arn: &str, account: &str) -> Option<(String, String)> {
    let mut parts = arn.splitn(6, ':');
    let (Some("arn"), Some(partition), Some("kms"), Some(region), Some(owner), Some(resource)) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return None;
    };
    let id = resource.strip_prefix("key/")?;
    let word = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    (matches!(partition, "aws" | "aws-cn" | "aws-us-gov")
        && word(region)
        && owner == account
        && word(id)
        && id.len() <= 64)
        .then(|| (partition.to_owned(), region.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "arn:aws:kms:eu-west-1:999999999999:key/1234abcd-12ab-34cd-56ef-1234567890ab";

    fn from(pairs: &[(&str, &str)]) -> Result<Option<ForensicAccount>, Error> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        ForensicAccount::from_lookup(|name| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        })
    }

    #[test]
    fn no_account_is_no_forensic_copy() {
        assert_eq!(from(&[]).unwrap(), None);
        assert_eq!(from(&[("FORENSIC_KMS_KEY_ARN", KEY)]).unwrap(), None);
    }

    #[test]
    fn the_keys_region_is_where_the_copies_go() {
        let f = from(&[
            ("FORENSIC_ACCOUNT_ID", "999999999999"),
            ("FORENSIC_KMS_KEY_ARN", KEY),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(
            (f.partition.as_str(), f.region.as_str()),
            ("aws", "eu-west-1")
        );
        assert_eq!(
            f.role_arn(),
            "arn:aws:iam::999999999999:role/ec2-quarantine-forensic-copier"
        );
        assert_eq!((f.wait_seconds, f.max_passes), (300, 288));
    }

    #[test]
    fn bad_values_fail_the_init_naming_the_variable() {
        for (pairs, variable) in [
            (
                vec![("FORENSIC_ACCOUNT_ID", "99999")],
                "FORENSIC_ACCOUNT_ID",
            ),
            (
                vec![("FORENSIC_ACCOUNT_ID", "999999999999")],
                "FORENSIC_KMS_KEY_ARN",
            ),
            // A key of another account, an alias, not an ARN.
            (
                vec![
                    ("FORENSIC_ACCOUNT_ID", "999999999999"),
                    (
                        "FORENSIC_KMS_KEY_ARN",
                        "arn:aws:kms:eu-west-1:111111111111:key/1234",
                    ),
                ],
                "FORENSIC_KMS_KEY_ARN",
            ),
            (
                vec![
                    ("FORENSIC_ACCOUNT_ID", "999999999999"),
                    (
                        "FORENSIC_KMS_KEY_ARN",
                        "arn:aws:kms:eu-west-1:999999999999:alias/evidence",
                    ),
                ],
                "FORENSIC_KMS_KEY_ARN",
            ),
            (
                vec![
                    ("FORENSIC_ACCOUNT_ID", "999999999999"),
                    ("FORENSIC_KMS_KEY_ARN", KEY),
                    ("FORENSIC_ROLE_NAME", "a role"),
                ],
                "FORENSIC_ROLE_NAME",
            ),
            (
                vec![
                    ("FORENSIC_ACCOUNT_ID", "999999999999"),
                    ("FORENSIC_KMS_KEY_ARN", KEY),
                    ("FORENSIC_COPY_WAIT_SECONDS", "0"),
                ],
                "FORENSIC_COPY_WAIT_SECONDS",
            ),
        ] {
            let err = from(&pairs).unwrap_err();
            assert!(
                matches!(&err, Error::Misconfigured(m) if m.contains(variable)),
                "{err}"
            );
        }
    }
}
