//! The instance's IAM instance profile association, which containment swaps and release restores.

use aws_sdk_ec2::types::{Filter, IamInstanceProfileAssociation};

use crate::error::Error;
use crate::steps::role::QUARANTINE_PROFILE_NAME;

/// The instance's current (associated) instance profile association, if it has one.
pub async fn association(
    ec2: &aws_sdk_ec2::Client,
    instance_id: &str,
) -> Result<Option<IamInstanceProfileAssociation>, Error> {
    let out = ec2
        .describe_iam_instance_profile_associations()
        .filters(
            Filter::builder()
                .name("instance-id")
                .values(instance_id)
                .build(),
        )
        .filters(Filter::builder().name("state").values("associated").build())
        .send()
        .await
        .map_err(|e| Error::from_sdk("ec2:DescribeIamInstanceProfileAssociations", e))?;
    Ok(out.iam_instance_profile_associations().first().cloned())
}

/// The association's profile ARN (empty when it names none).
pub fn arn(association: &IamInstanceProfileAssociation) -> &str {
    association
        .iam_instance_profile()
        .and_then(|p| p.arn())
        .unwrap_or_default()
}

/// Whether the profile ARN is the tool's quarantine profile.
pub fn is_quarantine(profile_arn: &str) -> bool {
    profile_arn.ends_with(&format!("/{QUARANTINE_PROFILE_NAME}"))
}
