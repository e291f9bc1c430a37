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

/// The `aws:TokenIssueTime` cutoff of a session deny as IAM returns it (URL-encoded JSON).
pub fn session_cutoff(document: &str) -> Option<String> {
    let decoded = percent_encoding::percent_decode_str(document)
        .decode_utf8()
        .ok()?;
    let policy: serde_json::Value = serde_json::from_str(&decoded).ok()?;
    policy["Statement"]
        .as_array()?
        .iter()
        .find_map(|st| st["Condition"]["DateLessThan"]["aws:TokenIssueTime"].as_str())
        .map(str::to_owned)
}

/// Whether a policy document as IAM returns it (URL-encoded JSON) denies every action on every
/// resource without condition, and allows nothing: the tool's DenyAll.
pub fn denies_everything(document: &str) -> bool {
    let Ok(decoded) = percent_encoding::percent_decode_str(document).decode_utf8() else {
        return false;
    };
    let Ok(policy) = serde_json::from_str::<serde_json::Value>(&decoded) else {
        return false;
    };
    let statements = match &policy["Statement"] {
        serde_json::Value::Array(list) => list.clone(),
        one @ serde_json::Value::Object(_) => vec![one.clone()],
        _ => return false,
    };
    let is_star = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s == "*",
        serde_json::Value::Array(list) => list.iter().any(|x| x == "*"),
        _ => false,
    };
    statements.iter().all(|st| st["Effect"] == "Deny")
        && statements.iter().any(|st| {
            is_star(&st["Action"])
                && is_star(&st["Resource"])
                && st.get("Condition").is_none()
                && st.get("NotAction").is_none()
                && st.get("NotResource").is_none()
                && st.get("NotPrincipal").is_none()
        })
}

/// Whether an RFC 3339 time is within `secs` of now (an unreadable one is not).
pub fn is_recent(time: &str, secs: i64) -> bool {
    let Ok(then) =
        aws_smithy_types::DateTime::from_str(time, aws_smithy_types::date_time::Format::DateTime)
    else {
        return false;
    };
    let now = aws_smithy_types::DateTime::from(std::time::SystemTime::now());
    now.secs() - then.secs() < secs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_deny_gives_its_cutoff_and_only_a_recent_one_stands() {
        let doc = crate::steps::role::revoke_sessions_document("2026-01-02T03:04:05Z");
        let encoded =
            percent_encoding::utf8_percent_encode(&doc, percent_encoding::NON_ALPHANUMERIC)
                .to_string();
        assert_eq!(
            session_cutoff(&encoded).as_deref(),
            Some("2026-01-02T03:04:05Z")
        );
        assert!(!is_recent("2026-01-02T03:04:05Z", 1800));
        assert!(is_recent(&crate::now_rfc3339(), 1800));
        assert!(!is_recent("not a time", 1800));
        assert_eq!(session_cutoff("%7B%7D"), None);
    }

    #[test]
    fn only_a_policy_that_denies_everything_is_the_deny_all() {
        let encode = |doc: &str| {
            percent_encoding::utf8_percent_encode(doc, percent_encoding::NON_ALPHANUMERIC)
                .to_string()
        };
        assert!(denies_everything(&encode(
            &crate::steps::role::deny_all_document()
        )));
        assert!(denies_everything(&crate::steps::role::deny_all_document()));
        for planted in [
            r#"{"Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}"#,
            r#"{"Statement":[{"Effect":"Deny","Action":"*","Resource":"*"},{"Effect":"Allow","Action":"iam:*","Resource":"*"}]}"#,
            r#"{"Statement":[{"Effect":"Deny","Action":"s3:*","Resource":"*"}]}"#,
            r#"{"Statement":[{"Effect":"Deny","Action":"*","Resource":"*","Condition":{"Bool":{"aws:ViaAWSService":"true"}}}]}"#,
            r#"{"Statement":[{"Effect":"Deny","NotAction":"iam:*","Action":"*","Resource":"*"}]}"#,
            r#"{"Statement":"x"}"#,
            "not json",
        ] {
            assert!(!denies_everything(&encode(planted)), "{planted}");
        }
    }
}
