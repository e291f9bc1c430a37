//! The tags this tool writes, and reads back to find its own work.
//!
//! Everything the responder creates or changes carries a key under [`PREFIX`], so that a rerun
//! finds it instead of creating it again, and clean-up selects only what the tool made.

use aws_sdk_ec2::types::Tag;

use crate::error::Error;
use crate::outcome::Plan;

pub const PREFIX: &str = "ec2-quarantine:";

/// On the quarantine security group: marks it as the tool's isolation group for its VPC.
pub const ISOLATION_GROUP: &str = "ec2-quarantine:isolation-group";
/// On the transit group: marks it as the tool's untracking group for its VPC.
pub const TRANSIT_GROUP: &str = "ec2-quarantine:untrack-group";
/// On the instance and on snapshots: the finding that led to the action.
pub const FINDING_ID: &str = "ec2-quarantine:finding-id";
/// On the instance: the finding's type.
pub const FINDING_TYPE: &str = "ec2-quarantine:finding-type";
/// On the instance: when it was contained (RFC 3339, UTC).
pub const CONTAINED_AT: &str = "ec2-quarantine:contained-at";
/// On the instance, one per network interface: the groups it had before isolation, so that a
/// person (or a release step) can restore them. Continued in `...:2`, `...:3` when long.
pub const PREVIOUS_GROUPS: &str = "ec2-quarantine:previous-groups:";
/// On the instance: the devices whose volumes had DeleteOnTermination set before containment.
pub const DELETE_ON_TERMINATION: &str = "ec2-quarantine:delete-on-termination";
/// On the instance: the instance profile it had before the quarantine profile replaced it.
pub const PREVIOUS_PROFILE: &str = "ec2-quarantine:previous-instance-profile";
/// On the instance: termination protection and shutdown behaviour before containment, as
/// `termination-protection=<bool>,shutdown=<stop|terminate>`.
pub const PREVIOUS_ATTRIBUTES: &str = "ec2-quarantine:previous-attributes";
/// On the instance: its Auto Scaling group and what was done, as
/// `<standby|detach>,<decremented|replaced>,<group name>`.
pub const AUTO_SCALING_GROUP: &str = "ec2-quarantine:auto-scaling-group";
/// On the instance, one per target group it was deregistered from (the key ends with the
/// group's name and id, `<name>:<id>`, see [`target_group_key`]): the targets, as `<id> <port>`
/// pairs joined with commas.
pub const TARGET_GROUP: &str = "ec2-quarantine:target:";
/// On the instance: the Classic Load Balancers it was deregistered from, comma-separated.
pub const CLASSIC_LOAD_BALANCERS: &str = "ec2-quarantine:classic-load-balancers";
/// On the instance: the role whose policies the containment changed.
pub const ROLE: &str = "ec2-quarantine:role";
/// On a contained role, one per instance holding it contained (the key ends with the instance
/// id): release detaches the role's quarantine policies when the last hold is gone.
pub const ROLE_HOLD: &str = "ec2-quarantine:held-by:";
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

/// The record key of a target group: [`TARGET_GROUP`] and `<name>:<id>` from its ARN
/// (`...:targetgroup/<name>/<id>`). No `/`: EC2 refuses instance tag keys with `/` or spaces on
/// instances that expose their tags in instance metadata
/// (https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/work-with-tags-in-IMDS.html).
pub fn target_group_key(arn: &str) -> String {
    let resource = arn.rsplit_once(":targetgroup/").map_or(arn, |(_, r)| r);
    format!("{TARGET_GROUP}{}", resource.replace('/', ":"))
}

/// The target group ARN a [`target_group_key`] suffix (`<name>:<id>`) stands for.
pub fn target_group_arn(suffix: &str, partition: &str, region: &str, account: &str) -> String {
    // Records written before keys lost their `/` hold the ARN's resource as it is.
    let resource = suffix.strip_prefix("targetgroup/").unwrap_or(suffix);
    format!(
        "arn:{partition}:elasticloadbalancing:{region}:{account}:targetgroup/{}",
        resource.replace(':', "/")
    )
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

/// Splits a list of ids into tag values of at most [`MAX_VALUE_CHARS`], never splitting an id.
pub fn chunk_ids(ids: &[String]) -> Vec<String> {
    let mut chunks = Vec::new();
    let mut current = String::new();
    for id in ids {
        if !current.is_empty() && current.len() + 1 + id.len() > MAX_VALUE_CHARS {
            chunks.push(std::mem::take(&mut current));
        }
        if !current.is_empty() {
            current.push(',');
        }
        current.push_str(id);
    }
    if !current.is_empty() || chunks.is_empty() {
        chunks.push(current);
    }
    chunks
}

/// Tag keys for an interface's previous groups, one per chunk: `...:eni-1`, `...:eni-1:2`, ...
pub fn previous_groups_keys(eni_id: &str, chunks: usize) -> Vec<String> {
    (1..=chunks.max(1))
        .map(|n| {
            if n == 1 {
                format!("{PREVIOUS_GROUPS}{eni_id}")
            } else {
                format!("{PREVIOUS_GROUPS}{eni_id}:{n}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_the_tool_writes_is_a_valid_instance_metadata_key() {
        let keys = [
            ISOLATION_GROUP.to_owned(),
            TRANSIT_GROUP.to_owned(),
            FINDING_ID.to_owned(),
            FINDING_TYPE.to_owned(),
            CONTAINED_AT.to_owned(),
            DELETE_ON_TERMINATION.to_owned(),
            PREVIOUS_PROFILE.to_owned(),
            PREVIOUS_ATTRIBUTES.to_owned(),
            AUTO_SCALING_GROUP.to_owned(),
            CLASSIC_LOAD_BALANCERS.to_owned(),
            ROLE.to_owned(),
            INSTANCE_ID.to_owned(),
            VOLUME_ID.to_owned(),
            DEVICE.to_owned(),
            format!("{ROLE_HOLD}i-0123456789abcdef0"),
            target_group_key(
                "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/web-80/73e2d6bc24d8a067",
            ),
        ]
        .into_iter()
        .chain(previous_groups_keys("eni-0123456789abcdef0", 3));
        for key in keys {
            assert!(is_metadata_safe_key(&key), "{key}");
            assert!(key.len() <= 128, "{key}");
        }
        for bad in ["a/b", "a b", ".", "..", "_index", ""] {
            assert!(!is_metadata_safe_key(bad), "{bad:?}");
        }
    }

    #[test]
    fn a_target_group_key_gives_its_arn_back() {
        let arn = "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/web-80/73e2d6bc24d8a067";
        let key = target_group_key(arn);
        assert_eq!(key, "ec2-quarantine:target:web-80:73e2d6bc24d8a067");
        let suffix = key.strip_prefix(TARGET_GROUP).unwrap();
        assert_eq!(
            target_group_arn(suffix, "aws", "us-east-1", "123456789012"),
            arn
        );
        assert_eq!(
            target_group_arn(
                "targetgroup/web-80/73e2d6bc24d8a067",
                "aws",
                "us-east-1",
                "123456789012"
            ),
            arn,
            "a record in the earlier format"
        );
    }

    #[test]
    fn short_lists_fit_one_value() {
        let ids = vec!["sg-0123456789abcdef0".to_owned(), "sg-1".to_owned()];
        assert_eq!(chunk_ids(&ids), ["sg-0123456789abcdef0,sg-1"]);
        assert_eq!(chunk_ids(&[]), [""]);
    }

    #[test]
    fn sixteen_groups_split_without_cutting_an_id() {
        let ids: Vec<String> = (0..16)
            .map(|i| format!("sg-0123456789abcde{i:02}"))
            .collect();
        let chunks = chunk_ids(&ids);
        assert!(chunks.len() > 1);
        assert!(chunks.iter().all(|c| c.chars().count() <= MAX_VALUE_CHARS));
        let rejoined: Vec<String> = chunks.join(",").split(',').map(str::to_owned).collect();
        assert_eq!(rejoined, ids);
        assert_eq!(
            previous_groups_keys("eni-1", 2),
            [
                "ec2-quarantine:previous-groups:eni-1",
                "ec2-quarantine:previous-groups:eni-1:2"
            ]
        );
    }
}
