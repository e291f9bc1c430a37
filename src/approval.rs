//! Approvals: a finding the approval policy gates (or one over the rate cap) waits for a person
//! before its instances are contained. The request, the decision, its author and its time are
//! one item of the case table (`approval#<id>`, `request`), written only by the responder's
//! functions; the state machine waits on a Step Functions task token that only this item holds.
//!
//! Every decision is a conditional write on the item (still pending, not past its deadline):
//! the first decision stands, whoever makes it (a person, or the timeout), and a late or
//! repeated one changes nothing and says why.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use crate::case::Store;
use crate::error::Error;

/// What triage asks a person to approve (the report's `approval`), and, once the state machine
/// has it, the outcome (or the error that stopped the request).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApprovalAsk {
    pub account_id: String,
    pub region: String,
    pub finding_id: String,
    pub finding_type: String,
    pub severity: Option<f64>,
    /// The instances that wait, each with why (`i-... (production tag)`).
    pub instances: Vec<String>,
    /// The decision the workflow takes when nobody answers in time.
    pub on_timeout: OnTimeout,
    /// How long the state machine waits (its TimeoutSecondsPath reads it here).
    pub wait_seconds: i64,
    /// Set by the state machine: the decision, once there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<ApprovalOutcome>,
    /// Set by the state machine: why the request or its expiry failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<serde_json::Value>,
}

/// What the workflow does with a request nobody answered (`APPROVAL_TIMEOUT_ACTION`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnTimeout {
    /// Report, contain nothing (the default: the rail exists so that a person decides).
    #[default]
    NotifyOnly,
    Contain,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApprovalStatus {
    Pending,
    Approved,
    Rejected,
    TimedOut,
}

impl ApprovalStatus {
    fn as_str(self) -> &'static str {
        match self {
            ApprovalStatus::Pending => "pending",
            ApprovalStatus::Approved => "approved",
            ApprovalStatus::Rejected => "rejected",
            ApprovalStatus::TimedOut => "timed_out",
        }
    }

    fn parse(s: &str) -> Option<ApprovalStatus> {
        [
            ApprovalStatus::Pending,
            ApprovalStatus::Approved,
            ApprovalStatus::Rejected,
            ApprovalStatus::TimedOut,
        ]
        .into_iter()
        .find(|v| v.as_str() == s)
    }
}

/// A decision on a request, as recorded: what the state machine receives and the case keeps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApprovalOutcome {
    pub approval_id: String,
    pub status: ApprovalStatus,
    /// Whether the instances are contained: approved, or unanswered with `OnTimeout::Contain`.
    pub contain: bool,
    /// Who decided (the caller `deploy.sh` names, or `timeout`).
    pub by: String,
    pub at: String,
    /// How: `deploy.sh` or `timeout`.
    pub via: String,
    #[serde(default)]
    pub reason: String,
}

impl ApprovalOutcome {
    /// The decision in one line, for the notification and the case.
    pub fn line(&self) -> String {
        let why = if self.reason.is_empty() {
            String::new()
        } else {
            format!(" ({})", self.reason)
        };
        match self.status {
            ApprovalStatus::Approved => format!(
                "approval {}: approved by {} at {} through {}{why}",
                self.approval_id, self.by, self.at, self.via
            ),
            ApprovalStatus::Rejected => format!(
                "approval {}: rejected by {} at {} through {}{why}: nothing is contained",
                self.approval_id, self.by, self.at, self.via
            ),
            ApprovalStatus::TimedOut => format!(
                "approval {}: nobody answered by {}; the configured default applied: {}",
                self.approval_id,
                self.at,
                if self.contain {
                    "contain"
                } else {
                    "notify only, nothing is contained"
                }
            ),
            ApprovalStatus::Pending => format!("approval {}: still pending", self.approval_id),
        }
    }
}

/// The request's id: `apr-` and 16 hex digits of the SHA-256 of the execution that asks (one
/// request per execution, found again by a retried step).
pub fn approval_id(execution: &str) -> String {
    let digest = sha2::Sha256::digest(execution.as_bytes());
    format!("apr-{}", hex::encode(&digest[..8]))
}

/// Whether `s` can be an id [`approval_id`] made: what a person types is checked before it
/// reaches a request.
pub fn is_approval_id(s: &str) -> bool {
    s.strip_prefix("apr-").is_some_and(|hex| {
        hex.len() == 16
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// A link token: 32 random bytes from the operating system, in hex (64 characters).
pub fn new_link_token() -> Result<String, Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|e| Error::Misconfigured(format!("no randomness for a link token: {e}")))?;
    Ok(hex::encode(bytes))
}

/// Whether `s` can be a token [`new_link_token`] made.
pub fn is_link_token(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// What the record keeps of a link token: its SHA-256, in hex.
pub fn link_hash(token: &str) -> String {
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

/// The most characters of a decision's author or reason kept (they are a person's words).
pub const MAX_DECISION_TEXT: usize = 300;

/// `text` on one line, without control characters, at most [`MAX_DECISION_TEXT`] characters.
pub fn clean_text(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_DECISION_TEXT)
        .collect::<String>()
        .trim()
        .to_owned()
}

/// The request as the case table holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct ApprovalRecord {
    pub approval_id: String,
    pub ask: ApprovalAsk,
    pub execution: String,
    /// The state machine's task token: never shown, never logged.
    pub task_token: String,
    pub requested_at: String,
    /// The deadline, in seconds since the epoch (the state's TimeoutSeconds after the request).
    pub expires_at: i64,
    pub status: ApprovalStatus,
    /// Whether the request message went out.
    pub published: bool,
    /// The SHA-256 (hex) of the request's link token, when the message carries a link; the
    /// token itself is only in the message.
    pub link_hash: Option<String>,
    /// The decision, once made.
    pub outcome: Option<ApprovalOutcome>,
}

/// What a decision found.
#[derive(Debug, Clone, PartialEq)]
pub enum Decided {
    /// Written: the record as it is now (with the task token to answer the state machine).
    Recorded(Box<ApprovalRecord>),
    /// Refused: why, in one sentence (no such request, decided already, past its deadline).
    Refused(String),
}

/// The one answer to a link that is not a request's: the same whether the request is unknown or
/// the token wrong, so that a guess learns nothing.
pub const INVALID_LINK: &str = "this link is not a valid approval link";

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn key(approval_id: &str) -> String {
    format!("approval#{approval_id}")
}

const SORT_KEY: &str = "request";

const CONDITION_FAILED: &str = "ConditionalCheckFailedException";

fn now_secs() -> i64 {
    aws_smithy_types::DateTime::from(std::time::SystemTime::now()).secs()
}

fn rfc3339(secs: i64) -> String {
    aws_smithy_types::DateTime::from_secs(secs)
        .fmt(aws_smithy_types::date_time::Format::DateTime)
        .unwrap_or_default()
}

impl ApprovalRecord {
    fn from_item(item: &HashMap<String, AttributeValue>) -> Option<ApprovalRecord> {
        let text = |name: &str| item.get(name)?.as_s().ok().cloned();
        let number = |name: &str| item.get(name)?.as_n().ok()?.parse::<i64>().ok();
        let ask: ApprovalAsk = serde_json::from_str(&text("ask")?).ok()?;
        let outcome = text("outcome").and_then(|o| serde_json::from_str(&o).ok());
        Some(ApprovalRecord {
            approval_id: text("approval_id")?,
            ask,
            execution: text("execution").unwrap_or_default(),
            task_token: text("task_token").unwrap_or_default(),
            requested_at: text("requested_at").unwrap_or_default(),
            expires_at: number("expires_at")?,
            status: ApprovalStatus::parse(&text("status")?)?,
            published: item
                .get("published")
                .and_then(|v| v.as_bool().ok())
                .copied()
                .unwrap_or(false),
            link_hash: text("link_hash"),
            outcome,
        })
    }
}

impl Store {
    /// Records the request of `execution` (waiting on `task_token` until `timeout_secs` from
    /// now), once: a retried request finds the record it made and refreshes only its task
    /// token while it is pending. Returns the record as it stands.
    pub async fn request_approval(
        &self,
        execution: &str,
        task_token: &str,
        ask: &ApprovalAsk,
    ) -> Result<ApprovalRecord, Error> {
        let timeout_secs = ask.wait_seconds;
        let approval_id = approval_id(execution);
        let now = now_secs();
        let ask_json = serde_json::to_string(ask)
            .map_err(|e| Error::InvalidEvent(format!("approval request: {e}")))?;
        let put = self
            .db()
            .put_item()
            .table_name(self.table())
            .item("pk", s(key(&approval_id)))
            .item("sk", s(SORT_KEY))
            .item("approval_id", s(&approval_id))
            .item("execution", s(execution))
            .item("task_token", s(task_token))
            .item("ask", s(ask_json))
            .item("requested_at", s(rfc3339(now)))
            .item(
                "expires_at",
                AttributeValue::N((now + timeout_secs).to_string()),
            )
            .item("status", s(ApprovalStatus::Pending.as_str()))
            .item("published", AttributeValue::Bool(false))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await
            .map_err(|e| Error::from_sdk("dynamodb:PutItem", e));
        match put {
            Ok(_) => {}
            Err(err) if err.aws_code() == Some(CONDITION_FAILED) => {
                // A retried request: the same execution's task token, kept current.
                let refreshed = self
                    .db()
                    .update_item()
                    .table_name(self.table())
                    .key("pk", s(key(&approval_id)))
                    .key("sk", s(SORT_KEY))
                    .update_expression("SET task_token = :token")
                    .condition_expression("#status = :pending AND execution = :execution")
                    .expression_attribute_names("#status", "status")
                    .expression_attribute_values(":token", s(task_token))
                    .expression_attribute_values(":pending", s(ApprovalStatus::Pending.as_str()))
                    .expression_attribute_values(":execution", s(execution))
                    .send()
                    .await
                    .map_err(|e| Error::from_sdk("dynamodb:UpdateItem", e));
                match refreshed {
                    Ok(_) => {}
                    Err(err) if err.aws_code() == Some(CONDITION_FAILED) => {}
                    Err(err) => return Err(err),
                }
            }
            Err(err) => return Err(err),
        }
        self.approval(&approval_id)
            .await?
            .ok_or_else(|| Error::Aws {
                action: "dynamodb:GetItem",
                code: "ApprovalNotRecorded".into(),
                message: format!(
                    "the approval request {approval_id} was written but cannot be read"
                ),
                source: "approval".into(),
            })
    }

    /// Keeps the hash of the link token the request message is about to carry (a request
    /// retried before its message went out gets a new one; the earlier token then stops
    /// working). Only on a pending request.
    pub async fn set_approval_link(&self, approval_id: &str, hash: &str) -> Result<(), Error> {
        self.db()
            .update_item()
            .table_name(self.table())
            .key("pk", s(key(approval_id)))
            .key("sk", s(SORT_KEY))
            .update_expression("SET link_hash = :hash")
            .condition_expression("#status = :pending")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":hash", s(hash))
            .expression_attribute_values(":pending", s(ApprovalStatus::Pending.as_str()))
            .send()
            .await
            .map_err(|e| Error::from_sdk("dynamodb:UpdateItem", e))?;
        Ok(())
    }

    /// Marks the request's message as sent.
    pub async fn approval_published(&self, approval_id: &str) -> Result<(), Error> {
        self.db()
            .update_item()
            .table_name(self.table())
            .key("pk", s(key(approval_id)))
            .key("sk", s(SORT_KEY))
            .update_expression("SET published = :yes")
            .condition_expression("attribute_exists(pk)")
            .expression_attribute_values(":yes", AttributeValue::Bool(true))
            .send()
            .await
            .map_err(|e| Error::from_sdk("dynamodb:UpdateItem", e))?;
        Ok(())
    }

    /// The request `approval_id`, if there is one (read consistently).
    pub async fn approval(&self, approval_id: &str) -> Result<Option<ApprovalRecord>, Error> {
        let out = self
            .db()
            .get_item()
            .table_name(self.table())
            .key("pk", s(key(approval_id)))
            .key("sk", s(SORT_KEY))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| Error::from_sdk("dynamodb:GetItem", e))?;
        Ok(out.item.as_ref().and_then(ApprovalRecord::from_item))
    }

    /// Records a person's decision on `approval_id`, if it is still pending and within its
    /// deadline; otherwise refuses and says why. `by` and `reason` are cleaned
    /// ([`clean_text`]).
    pub async fn decide_approval(
        &self,
        approval_id: &str,
        approve: bool,
        by: &str,
        via: &str,
        reason: &str,
    ) -> Result<Decided, Error> {
        self.decide(approval_id, approve, by, via, reason, None)
            .await
    }

    /// Records a decision made through the request's link: only with the token the message
    /// carried (its hash is the record's), and otherwise as [`Store::decide_approval`].
    pub async fn decide_approval_by_link(
        &self,
        approval_id: &str,
        token: &str,
        approve: bool,
        by: &str,
        reason: &str,
    ) -> Result<Decided, Error> {
        self.decide(approval_id, approve, by, "link", reason, Some(token))
            .await
    }

    async fn decide(
        &self,
        approval_id: &str,
        approve: bool,
        by: &str,
        via: &str,
        reason: &str,
        token: Option<&str>,
    ) -> Result<Decided, Error> {
        let Some(record) = self.approval(approval_id).await? else {
            return Ok(Decided::Refused(format!(
                "there is no approval request {approval_id}"
            )));
        };
        let hash = token.map(link_hash);
        if hash.is_some() && record.link_hash != hash {
            return Ok(Decided::Refused(INVALID_LINK.into()));
        }
        let now = now_secs();
        let status = if approve {
            ApprovalStatus::Approved
        } else {
            ApprovalStatus::Rejected
        };
        let outcome = ApprovalOutcome {
            approval_id: approval_id.to_owned(),
            status,
            contain: approve,
            by: clean_text(by),
            at: rfc3339(now),
            via: via.to_owned(),
            reason: clean_text(reason),
        };
        self.settle(record, outcome, now, true, hash.as_deref())
            .await
    }

    /// The timeout's decision on `approval_id`: the configured default, unless a person decided
    /// first (then that decision, as recorded).
    pub async fn expire_approval(&self, approval_id: &str) -> Result<Decided, Error> {
        let Some(record) = self.approval(approval_id).await? else {
            return Ok(Decided::Refused(format!(
                "there is no approval request {approval_id}"
            )));
        };
        let now = now_secs();
        let outcome = ApprovalOutcome {
            approval_id: approval_id.to_owned(),
            status: ApprovalStatus::TimedOut,
            contain: record.ask.on_timeout == OnTimeout::Contain,
            by: "timeout".into(),
            at: rfc3339(now),
            via: "timeout".into(),
            reason: String::new(),
        };
        self.settle(record, outcome, now, false, None).await
    }

    /// Writes `outcome` on a pending record (before its deadline when `within_deadline`).
    async fn settle(
        &self,
        record: ApprovalRecord,
        outcome: ApprovalOutcome,
        now: i64,
        within_deadline: bool,
        link_hash: Option<&str>,
    ) -> Result<Decided, Error> {
        if let Some(refusal) = refusal(&record, now, within_deadline) {
            return Ok(Decided::Refused(refusal));
        }
        let outcome_json = serde_json::to_string(&outcome)
            .map_err(|e| Error::InvalidEvent(format!("approval outcome: {e}")))?;
        let condition = match (within_deadline, link_hash) {
            (true, Some(_)) => "#status = :pending AND expires_at > :now AND link_hash = :hash",
            (true, None) => "#status = :pending AND expires_at > :now",
            (false, _) => "#status = :pending",
        };
        let mut update = self
            .db()
            .update_item()
            .table_name(self.table())
            .key("pk", s(key(&record.approval_id)))
            .key("sk", s(SORT_KEY))
            .update_expression("SET #status = :status, outcome = :outcome")
            .condition_expression(condition)
            // The record as written: the task token current at the write (a retried request
            // may have refreshed it since it was read).
            .return_values(aws_sdk_dynamodb::types::ReturnValue::AllNew)
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":status", s(outcome.status.as_str()))
            .expression_attribute_values(":outcome", s(outcome_json))
            .expression_attribute_values(":pending", s(ApprovalStatus::Pending.as_str()));
        if within_deadline {
            update = update.expression_attribute_values(":now", AttributeValue::N(now.to_string()));
            if let Some(hash) = link_hash {
                update = update.expression_attribute_values(":hash", s(hash));
            }
        }
        match update
            .send()
            .await
            .map_err(|e| Error::from_sdk("dynamodb:UpdateItem", e))
        {
            Ok(out) => Ok(Decided::Recorded(Box::new(
                out.attributes
                    .as_ref()
                    .and_then(ApprovalRecord::from_item)
                    .unwrap_or(ApprovalRecord {
                        status: outcome.status,
                        outcome: Some(outcome),
                        ..record
                    }),
            ))),
            // Another decision came first: read what stands.
            Err(err) if err.aws_code() == Some(CONDITION_FAILED) => {
                let now_record = self.approval(&record.approval_id).await?;
                Ok(Decided::Refused(
                    now_record
                        .as_ref()
                        .and_then(|r| refusal(r, now, within_deadline))
                        .unwrap_or_else(|| "another decision was recorded first".into()),
                ))
            }
            Err(err) => Err(err),
        }
    }
}

impl Store {
    /// Keeps the approval that let a case's instance be contained in the case
    /// (`case#<id>`, `approval#<approval id>`), once.
    pub async fn approval_in_case(
        &self,
        case_id: &str,
        outcome: &ApprovalOutcome,
    ) -> Result<(), Error> {
        let outcome_json = serde_json::to_string(outcome)
            .map_err(|e| Error::InvalidEvent(format!("approval outcome: {e}")))?;
        let put = self
            .db()
            .put_item()
            .table_name(self.table())
            .item("pk", s(format!("case#{case_id}")))
            .item("sk", s(format!("approval#{}", outcome.approval_id)))
            .item("outcome", s(outcome_json))
            .item("line", s(outcome.line()))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await
            .map_err(|e| Error::from_sdk("dynamodb:PutItem", e));
        match put {
            Err(err) if err.aws_code() != Some(CONDITION_FAILED) => Err(err),
            _ => Ok(()),
        }
    }
}

/// Why a decision on `record` is refused at `now`, if it is.
fn refusal(record: &ApprovalRecord, now: i64, within_deadline: bool) -> Option<String> {
    if let Some(outcome) = &record.outcome {
        return Some(format!("already decided: {}", outcome.line()));
    }
    if record.status != ApprovalStatus::Pending {
        return Some(format!(
            "the request {} is {}",
            record.approval_id,
            record.status.as_str()
        ));
    }
    (within_deadline && now >= record.expires_at).then(|| {
        format!(
            "the request {} expired at {}: the workflow takes its default",
            record.approval_id,
            rfc3339(record.expires_at)
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_per_execution_and_checked() {
        let a = approval_id("arn:aws:states:us-east-1:111122223333:execution:sm:one");
        assert_eq!(
            a,
            approval_id("arn:aws:states:us-east-1:111122223333:execution:sm:one")
        );
        assert_ne!(
            a,
            approval_id("arn:aws:states:us-east-1:111122223333:execution:sm:two")
        );
        assert!(is_approval_id(&a), "{a}");
        for bad in [
            "",
            "apr-",
            "apr-0123456789abcde",
            "apr-0123456789abcdef0",
            "apr-0123456789ABCDEF",
            "apr-0123456789abcdeg",
            "i-0123456789abcdef0",
            "apr-01234567/9abcdef",
        ] {
            assert!(!is_approval_id(bad), "{bad}");
        }
    }

    #[test]
    fn link_tokens_are_random_and_only_their_hash_is_kept() {
        let (a, b) = (new_link_token().unwrap(), new_link_token().unwrap());
        assert_ne!(a, b);
        assert!(is_link_token(&a) && is_link_token(&b));
        assert!(!is_link_token(&a[1..]) && !is_link_token(&a.to_uppercase()));
        assert_eq!(link_hash(&a), link_hash(&a));
        assert_ne!(link_hash(&a), a);
        assert_eq!(link_hash(&a).len(), 64);
    }

    #[test]
    fn a_persons_words_are_kept_on_one_bounded_line() {
        assert_eq!(clean_text("  alice\n\u{1b}[31m  "), "alice  [31m");
        assert_eq!(clean_text(&"x".repeat(1000)).len(), MAX_DECISION_TEXT);
    }

    fn record(status: ApprovalStatus, expires_at: i64) -> ApprovalRecord {
        ApprovalRecord {
            approval_id: "apr-0123456789abcdef".into(),
            ask: ApprovalAsk {
                account_id: "111122223333".into(),
                region: "us-east-1".into(),
                finding_id: "f".into(),
                finding_type: "Backdoor:EC2/C&CActivity.B".into(),
                severity: Some(8.0),
                instances: vec!["i-0123456789abcdef0".into()],
                on_timeout: OnTimeout::NotifyOnly,
                wait_seconds: 3600,
                outcome: None,
                error: None,
            },
            execution: "arn".into(),
            task_token: "token".into(),
            requested_at: rfc3339(0),
            expires_at,
            status,
            published: true,
            link_hash: None,
            outcome: None,
        }
    }

    #[test]
    fn late_and_repeated_decisions_are_refused_with_the_reason() {
        let pending = record(ApprovalStatus::Pending, 100);
        assert_eq!(refusal(&pending, 99, true), None);
        assert!(refusal(&pending, 100, true).unwrap().contains("expired"));
        // The timeout's own decision comes after the deadline.
        assert_eq!(refusal(&pending, 200, false), None);
        let rejected = record(ApprovalStatus::Rejected, 100);
        assert!(refusal(&rejected, 1, true).unwrap().contains("is rejected"));
    }

    #[test]
    fn each_outcome_says_who_when_and_what_follows() {
        let mut o = ApprovalOutcome {
            approval_id: "apr-0123456789abcdef".into(),
            status: ApprovalStatus::Approved,
            contain: true,
            by: "arn:aws:iam::111122223333:user/alice".into(),
            at: "2026-12-02T12:00:00Z".into(),
            via: "deploy.sh".into(),
            reason: String::new(),
        };
        assert!(
            o.line()
                .contains("approved by arn:aws:iam::111122223333:user/alice")
        );
        o.status = ApprovalStatus::Rejected;
        o.reason = "a scanner".into();
        assert!(o.line().contains("(a scanner): nothing is contained"));
        o.status = ApprovalStatus::TimedOut;
        o.contain = false;
        assert!(o.line().contains("notify only"));
    }
}
