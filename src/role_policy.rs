//! The role's inline policies the tool writes (the session deny, the per-instance deny), read
//! the one way both the containment and the release read them.

use crate::error::Error;

/// The document of the role's inline policy `name` as IAM returns it (URL-encoded JSON);
/// `None` when the role has no such policy.
pub async fn inline_policy(
    iam: &aws_sdk_iam::Client,
    role_name: &str,
    name: &str,
) -> Result<Option<String>, Error> {
    match iam
        .get_role_policy()
        .role_name(role_name)
        .policy_name(name)
        .send()
        .await
    {
        Ok(found) => Ok(Some(found.policy_document().to_owned())),
        Err(e) => {
            let err = Error::from_sdk("iam:GetRolePolicy", e);
            match err.aws_code() {
                Some("NoSuchEntity") => Ok(None),
                _ => Err(err),
            }
        }
    }
}
