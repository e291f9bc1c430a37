//! The tags this tool writes. They mark what it made (its security groups, its snapshots) and
//! which case contained an instance, for a person in the console. The record of what a
//! containment changed is the case ([`crate::case`]), never a tag: anyone allowed
//! `ec2:CreateTags` can write one.

use aws_sdk_ec2::types::Tag;

use crate::domain::outcome::Plan;
use crate::error::Error;

pub const PREFIX: &str = "ec2-quarantine:";

/// On the quarantine security group: marks it as the tool's isolation group for its VPC.
pub const ISOLATION_GROUP: &str = "ec2-quarantine:isolation-group";
/// On the transit group: marks it as the tool's untracking group for its VPC.
pub const TRANSIT_GROUP: &str = "ec2-quarantine:untrack-group";
/// On the instance (a marker, never read to decide anything) and on snapshots: the case that
/// contained it (see [`crate::case`]).
pub const CASE: &str = "ec2-quarantine:case";
/// On the instance (a marker): when it was contained (RFC 3339, UTC).
pub const CONTAINED_AT: &str = "ec2-quarantine:contained-at";
/// On snapshots: the instance, volume and device they were taken from.
pub const INSTANCE_ID: &str = "ec2-quarantine:instance-id";
pub const VOLUME_ID: &str = "ec2-quarantine:volume-id";
pub const DEVICE: &str = "ec2-quarantine:device";

/// Writes `tags` on `resource` (the record a step keeps for release). In a dry run, asks EC2
/// whether the write would be permitted and adds it to the plan instead.
pub async fn write(
    ec2: &aws_sdk_ec2::Client,
    plan: Option<&Plan>,
    resource: &str,
    tags: Vec<Tag>,
    why: &str,
) -> Result<(), Error> {
    let request = ec2.create_tags().resources(resource).set_tags(Some(tags));
    match plan {
        Some(plan) => {
            let answer = request
                .dry_run(true)
                .send()
                .await
                .map_err(|e| Error::from_sdk("ec2:CreateTags", e));
            plan.add_ec2("ec2:CreateTags", resource, why, answer);
            Ok(())
        }
        None => request
            .send()
            .await
            .map(|_| ())
            .map_err(|e| Error::from_sdk("ec2:CreateTags", e)),
    }
}

/// Whether EC2 takes `key` as an instance tag key whatever the instance's metadata options:
/// letters, digits and `+ - = . , _ : @`, and not `.`, `..` or `_index`
/// (https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/work-with-tags-in-IMDS.html).
pub fn is_metadata_safe_key(key: &str) -> bool {
    !key.is_empty()
        && !matches!(key, "." | ".." | "_index")
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-=.,_:@".contains(c))
}

/// The value of `key` among `tags`.
pub fn find<'a>(tags: &'a [Tag], key: &str) -> Option<&'a str> {
    tags.iter()
        .find(|t| t.key() == Some(key))
        .and_then(|t| t.value())
}

pub fn new(key: impl Into<String>, value: impl Into<String>) -> Tag {
    Tag::builder().key(key).value(value).build()
}

/// EC2 accepts tag values of at most 256 characters.
pub const MAX_VALUE_CHARS: usize = 256;

/// Cuts a value to what EC2 accepts, on a character boundary.
pub fn value(s: &str) -> String {
    s.chars().take(MAX_VALUE_CHARS).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_the_tool_writes_is_a_valid_instance_metadata_key() {
        let keys = [
            ISOLATION_GROUP,
            TRANSIT_GROUP,
            CASE,
            CONTAINED_AT,
            INSTANCE_ID,
            VOLUME_ID,
            DEVICE,
        ];
        for key in keys {
            assert!(is_metadata_safe_key(key), "{key}");
            assert!(key.len() <= 128, "{key}");
        }
        for bad in ["a/b", "a b", ".", "..", "_index", ""] {
            assert!(!is_metadata_safe_key(bad), "{bad:?}");
        }
    }
}
