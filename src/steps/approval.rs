//! The approval step: asks a person before the instances of a gated finding are contained, and
//! records the answer. One function, three actions:
//!
//! - `request`, run by the state machine's `.waitForTaskToken` state: records the request with
//!   its task token in the case table and sends the request message (who, what, why, what will
//!   be done, how to answer, the deadline and what follows it). The state machine then waits.
//! - `decide`, run by `deploy.sh approve|reject`: records the person's decision (only on a
//!   pending request, before its deadline) and hands it to the waiting execution.
//! - `settle`, run by the state machine when its wait ends (an answer, the timeout, or a failed
//!   request): the decision the record holds, or, when it holds none, the configured default,
//!   recorded as the timeout's. The state machine never takes the wait's answer itself.
//!
//! The execution goes on only with what the record says: triage reads the approval from the
//! case table before it contains anything.

use serde::{Deserialize, Serialize};
use tracing::info;

use crate::approval::{self, ApprovalAsk, ApprovalOutcome, ApprovalRecord, Decided, OnTimeout};
use crate::aws::context::Ctx;
use crate::error::Error;

/// The function's settings, read once at init.
#[derive(Debug, Clone)]
pub struct ApprovalSettings {
    /// Where the request goes (the alert topic).
    pub topic_arn: String,
    /// The approval link function's URL (`APPROVAL_LINK_URL`), when the stack has one: the
    /// request message then carries a link with a single-use token.
    pub link_url: Option<String>,
}

impl ApprovalSettings {
    pub fn from_env() -> Result<ApprovalSettings, Error> {
        Self::from_value(std::env::var("ALERT_TOPIC_ARN").unwrap_or_default())?
            .with_link(std::env::var("APPROVAL_LINK_URL").unwrap_or_default())
    }

    /// With the link function's URL (empty: none). Only an `https://` URL (or `http://` on
    /// loopback, for the local run) is taken.
    pub fn with_link(mut self, url: String) -> Result<ApprovalSettings, Error> {
        let url = url.trim();
        if url.is_empty() {
            return Ok(self);
        }
        let local = ["http://127.0.0.1:", "http://localhost:"]
            .iter()
            .any(|p| url.starts_with(p));
        if !(url.starts_with("https://") || local) || url.contains(['?', '#', ' ', '"', '<', '>']) {
            return Err(Error::Misconfigured(format!(
                "APPROVAL_LINK_URL {url:?} is not an https URL without a query"
            )));
        }
        self.link_url = Some(url.trim_end_matches('/').to_owned() + "/");
        Ok(self)
    }

    pub fn from_value(topic_arn: String) -> Result<ApprovalSettings, Error> {
        let parts: Vec<&str> = topic_arn.split(':').collect();
        if parts.len() != 6 || parts[0] != "arn" || parts[2] != "sns" || parts[5].is_empty() {
            return Err(Error::Misconfigured(format!(
                "ALERT_TOPIC_ARN {topic_arn:?} is not an SNS topic ARN"
            )));
        }
        Ok(ApprovalSettings {
            topic_arn,
            link_url: None,
        })
    }
}

/// The function's input: one of its three actions.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
pub enum ApprovalInput {
    Request {
        task_token: String,
        execution: String,
        ask: Box<ApprovalAsk>,
    },
    Settle {
        execution: String,
    },
    Decide {
        approval_id: String,
        approve: bool,
        by: String,
        #[serde(default)]
        reason: String,
    },
}

/// What each action answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ApprovalOutput {
    /// `settle`: the decision that stands (the state machine's input to triage).
    Outcome(ApprovalOutcome),
    /// `request` and `decide`: what happened, in words.
    Answer(Answer),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Answer {
    pub approval_id: String,
    /// `requested`, `recorded` or `refused`.
    pub status: String,
    /// One sentence: the decision, or why nothing changed.
    pub message: String,
    /// Whether the waiting execution received the decision (`decide`), or the request message
    /// went out (`request`).
    pub delivered: bool,
}

/// Runs one action.
#[tracing::instrument(skip_all)]
pub async fn handle(
    ctx: &Ctx,
    settings: &ApprovalSettings,
    input: ApprovalInput,
) -> Result<ApprovalOutput, Error> {
    let ctx = &ctx.acting_as("approval");
    match input {
        ApprovalInput::Request {
            task_token,
            execution,
            ask,
        } => request(ctx, settings, &task_token, &execution, &ask).await,
        ApprovalInput::Settle { execution } => {
            check_execution(&execution)?;
            settle(ctx, &approval::approval_id(&execution)).await
        }
        ApprovalInput::Decide {
            approval_id,
            approve,
            by,
            reason,
        } => decide(ctx, &approval_id, approve, &by, &reason).await,
    }
}

fn check_execution(execution: &str) -> Result<(), Error> {
    let parts: Vec<&str> = execution.split(':').collect();
    if parts.len() == 8 && parts[0] == "arn" && parts[2] == "states" && parts[5] == "execution" {
        Ok(())
    } else {
        Err(Error::InvalidEvent(format!(
            "{:?} is not a Step Functions execution ARN",
            crate::domain::finding::clip(execution)
        )))
    }
}

async fn request(
    ctx: &Ctx,
    settings: &ApprovalSettings,
    task_token: &str,
    execution: &str,
    ask: &ApprovalAsk,
) -> Result<ApprovalOutput, Error> {
    check_execution(execution)?;
    // Step Functions' task tokens are 1 to 2,048 characters (SendTaskSuccess, taskToken).
    if task_token.is_empty() || task_token.len() > 2048 {
        return Err(Error::InvalidEvent(
            "the task token is empty or longer than 2,048 characters".into(),
        ));
    }
    if !crate::domain::settings::APPROVAL_TIMEOUT_RANGE_SECS.contains(&ask.wait_seconds) {
        return Err(Error::InvalidEvent(format!(
            "the approval wait of {} seconds is outside the settings' range",
            ask.wait_seconds
        )));
    }
    let store = ctx.cases();
    let record = store.request_approval(execution, task_token, ask).await?;
    // Decided already (a request retried after its answer): the answer again.
    if let Some(outcome) = &record.outcome {
        let delivered = deliver(ctx, task_token, outcome).await.is_ok();
        return Ok(ApprovalOutput::Answer(Answer {
            approval_id: record.approval_id.clone(),
            status: "recorded".into(),
            message: outcome.line(),
            delivered,
        }));
    }
    if !record.published {
        let (subject, mut body) = request_message(&record, ctx.settings());
        if let Some(url) = &settings.link_url {
            // A fresh token for each message sent: only its hash is kept.
            let token = approval::new_link_token()?;
            store
                .set_approval_link(&record.approval_id, &approval::link_hash(&token))
                .await?;
            body.push_str(&format!(
                "\nOr open this link (single use, until the deadline; it shows the request and asks you to confirm): {url}?a={}&t={token}\n",
                record.approval_id
            ));
        }
        ctx.sns_for_topic(&settings.topic_arn)
            .publish()
            .topic_arn(&settings.topic_arn)
            .subject(subject)
            .message(body)
            .send()
            .await
            .map_err(|e| Error::from_sdk("sns:Publish", e))?;
        // A request sent but not marked sent is sent again by a retry: twice, never none.
        if let Err(err) = store.approval_published(&record.approval_id).await {
            tracing::warn!(error = %err, "the request went out but is not marked sent");
        }
    }
    info!(approval_id = %record.approval_id, "approval requested");
    Ok(ApprovalOutput::Answer(Answer {
        approval_id: record.approval_id,
        status: "requested".into(),
        message: format!(
            "approval requested; the workflow waits until {}",
            deadline(record.expires_at)
        ),
        delivered: true,
    }))
}

async fn settle(ctx: &Ctx, approval_id: &str) -> Result<ApprovalOutput, Error> {
    let store = ctx.cases();
    let outcome = match store.expire_approval(approval_id).await? {
        Decided::Recorded(record) => record.outcome,
        // A person decided first: that decision stands.
        Decided::Refused(_) => store.approval(approval_id).await?.and_then(|r| r.outcome),
    };
    let outcome = outcome.ok_or_else(|| Error::Aws {
        action: "dynamodb:GetItem",
        code: "ApprovalNotRecorded".into(),
        message: format!(
            "the approval request {approval_id} is not in the case table: it was never recorded, so nothing is contained"
        ),
        source: "approval".into(),
    })?;
    info!(%approval_id, status = ?outcome.status, "approval settled");
    Ok(ApprovalOutput::Outcome(outcome))
}

async fn decide(
    ctx: &Ctx,
    approval_id: &str,
    approve: bool,
    by: &str,
    reason: &str,
) -> Result<ApprovalOutput, Error> {
    if !approval::is_approval_id(approval_id) {
        return Err(Error::InvalidEvent(format!(
            "{:?} is not an approval id (apr- and 16 hex digits, as the request message gives it)",
            crate::domain::finding::clip(approval_id)
        )));
    }
    if approval::clean_text(by).is_empty() {
        return Err(Error::InvalidEvent(
            "a decision names who makes it (by)".into(),
        ));
    }
    let store = ctx.cases();
    let (record, fresh) = match store
        .decide_approval(approval_id, approve, by, "deploy.sh", reason)
        .await?
    {
        Decided::Recorded(record) => (*record, true),
        Decided::Refused(why) => {
            // The same decision made again (its delivery failed, say): delivered again. Any
            // other is refused, and nothing changes.
            let same = store.approval(approval_id).await?.filter(|r| {
                r.outcome
                    .as_ref()
                    .is_some_and(|o| o.via == "deploy.sh" && o.contain == approve)
            });
            match same {
                Some(record) => (record, false),
                None => {
                    info!(%approval_id, %why, "decision refused");
                    return Ok(ApprovalOutput::Answer(Answer {
                        approval_id: approval_id.to_owned(),
                        status: "refused".into(),
                        message: why,
                        delivered: false,
                    }));
                }
            }
        }
    };
    let Some(outcome) = record.outcome.clone() else {
        return Err(Error::InvalidEvent(format!(
            "the approval request {approval_id} holds no decision"
        )));
    };
    let delivery = deliver(ctx, &record.task_token, &outcome).await;
    let message = match &delivery {
        Ok(()) => outcome.line(),
        Err(err) => format!(
            "{}; the waiting execution did not take it ({err}): when its wait ends, it reads this decision from the case table",
            outcome.line()
        ),
    };
    info!(%approval_id, fresh, delivered = delivery.is_ok(), "decision recorded");
    Ok(ApprovalOutput::Answer(Answer {
        approval_id: approval_id.to_owned(),
        status: "recorded".into(),
        message,
        delivered: delivery.is_ok(),
    }))
}

/// Hands `outcome` to the execution waiting on `task_token`.
pub(crate) async fn deliver(
    ctx: &Ctx,
    task_token: &str,
    outcome: &ApprovalOutcome,
) -> Result<(), Error> {
    let output = serde_json::to_string(outcome)
        .map_err(|e| Error::InvalidEvent(format!("approval outcome: {e}")))?;
    aws_sdk_sfn::Client::new(ctx.config())
        .send_task_success()
        .task_token(task_token)
        .output(output)
        .send()
        .await
        .map_err(|e| Error::from_sdk("states:SendTaskSuccess", e))?;
    Ok(())
}

fn deadline(expires_at: i64) -> String {
    aws_smithy_types::DateTime::from_secs(expires_at)
        .fmt(aws_smithy_types::date_time::Format::DateTime)
        .unwrap_or_default()
}

/// The request message: who, what, why, what will be done, how to answer, by when.
pub fn request_message(
    record: &ApprovalRecord,
    settings: &crate::domain::settings::Settings,
) -> (String, String) {
    let ask = &record.ask;
    let id = &record.approval_id;
    let first = ask
        .instances
        .first()
        .map(|i| i.split(' ').next().unwrap_or_default())
        .unwrap_or_default();
    let more = if ask.instances.len() > 1 {
        format!(" and {} more", ask.instances.len() - 1)
    } else {
        String::new()
    };
    let subject: String = format!("[ec2-quarantine] APPROVAL NEEDED to contain {first}{more}")
        .chars()
        .take(crate::steps::notify::MAX_SUBJECT_CHARS)
        .collect();
    let mut body = String::new();
    use std::fmt::Write as _;
    let _ = writeln!(
        body,
        "GuardDuty finding {} ({}, severity {}) in account {} ({}) names instances that wait for your approval before they are contained.\n",
        crate::domain::finding::clip(&ask.finding_id),
        crate::domain::finding::clip(&ask.finding_type),
        ask.severity
            .map(|s| s.to_string())
            .unwrap_or_else(|| "not given".into()),
        ask.account_id,
        ask.region
    );
    let _ = writeln!(body, "Waiting, and why:");
    for line in &ask.instances {
        let _ = writeln!(body, "- {line}");
    }
    let _ = writeln!(
        body,
        "\nWhat approval does: each instance is isolated into the quarantine security group, taken out of its Auto Scaling group and load balancers ({}), its volumes snapshotted, and its role contained ({}). Nothing is terminated or deleted; a release undoes it.",
        serde_json::to_value(settings.auto_scaling_action)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default(),
        serde_json::to_value(settings.role_action)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default(),
    );
    let _ = writeln!(
        body,
        "\nAnswer (request {id}):\n  helper_scripts/deploy.sh approve {id}\n  helper_scripts/deploy.sh reject {id} --reason \"...\"\n"
    );
    let _ = writeln!(
        body,
        "Deadline: {}. Unanswered by then: {}.",
        deadline(record.expires_at),
        match ask.on_timeout {
            OnTimeout::Contain => "the instances are contained (ApprovalTimeoutAction=contain)",
            OnTimeout::NotifyOnly =>
                "nothing is contained and you get the report (ApprovalTimeoutAction=notify-only)",
        }
    );
    (subject, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_take_only_a_topic_and_an_https_link() {
        let topic = "arn:aws:sns:us-east-1:111122223333:alerts".to_owned();
        let settings = ApprovalSettings::from_value(topic.clone()).unwrap();
        assert_eq!(settings.topic_arn, topic);
        assert_eq!(settings.link_url, None);
        let url = "https://abc123.lambda-url.us-east-1.on.aws";
        assert_eq!(
            settings
                .clone()
                .with_link(url.into())
                .unwrap()
                .link_url
                .as_deref(),
            Some("https://abc123.lambda-url.us-east-1.on.aws/")
        );
        assert_eq!(
            settings.clone().with_link(String::new()).unwrap().link_url,
            None
        );
        for bad in [
            "http://abc123.lambda-url.us-east-1.on.aws/",
            "https://x/?a=1",
            "javascript:alert(1)",
            "https://x/\"><script>",
        ] {
            let err = settings.clone().with_link(bad.into()).unwrap_err();
            assert!(err.to_string().contains("APPROVAL_LINK_URL"), "{bad}");
        }
        for bad in ["", "alerts", "arn:aws:sqs:us-east-1:111122223333:alerts"] {
            let err = ApprovalSettings::from_value(bad.into()).unwrap_err();
            assert!(err.to_string().contains("ALERT_TOPIC_ARN"), "{bad}");
        }
    }

    #[test]
    fn inputs_are_one_of_the_three_actions_and_nothing_else() {
        let decide: ApprovalInput = serde_json::from_value(serde_json::json!({
            "action": "decide", "approval_id": "apr-0123456789abcdef", "approve": true, "by": "alice"
        }))
        .unwrap();
        assert!(matches!(
            decide,
            ApprovalInput::Decide { approve: true, .. }
        ));
        for bad in [
            serde_json::json!({"action": "approve_all"}),
            serde_json::json!({"action": "decide", "approval_id": "apr-0123456789abcdef", "approve": "yes", "by": "a"}),
            serde_json::json!({"action": "settle", "execution": "x", "task_token": "t"}),
            serde_json::json!({"approval_id": "apr-0123456789abcdef"}),
        ] {
            assert!(
                serde_json::from_value::<ApprovalInput>(bad.clone()).is_err(),
                "{bad}"
            );
        }
        assert!(check_execution("arn:aws:states:us-east-1:111122223333:execution:sm:name").is_ok());
        assert!(check_execution("arn:aws:states:us-east-1:111122223333:stateMachine:sm").is_err());
    }

    #[test]
    fn the_request_says_who_what_why_how_to_answer_and_by_when() {
        let record = ApprovalRecord {
            approval_id: "apr-0123456789abcdef".into(),
            ask: ApprovalAsk {
                account_id: "111122223333".into(),
                region: "us-east-1".into(),
                finding_id: "finding-1".into(),
                finding_type: "Backdoor:EC2/C&CActivity.B".into(),
                severity: Some(8.0),
                instances: vec![
                    "i-0123456789abcdef0 (approval required: the instance is tagged Environment=production (ApprovalTag))".into(),
                ],
                on_timeout: OnTimeout::NotifyOnly,
                wait_seconds: 3600,
                outcome: None,
                error: None,
            },
            execution: "arn".into(),
            task_token: "SECRET-TOKEN".into(),
            requested_at: String::new(),
            expires_at: 1_800_000_000,
            status: crate::approval::ApprovalStatus::Pending,
            published: false,
            link_hash: None,
            outcome: None,
        };
        let (subject, body) = request_message(&record, &Default::default());
        assert!(subject.contains("APPROVAL NEEDED") && subject.contains("i-0123456789abcdef0"));
        assert!(subject.chars().count() <= crate::steps::notify::MAX_SUBJECT_CHARS);
        for part in [
            "111122223333",
            "Backdoor:EC2/C&CActivity.B",
            "Environment=production",
            "deploy.sh approve apr-0123456789abcdef",
            "deploy.sh reject apr-0123456789abcdef",
            "2027-01-15T08:00:00Z",
            "nothing is contained",
            "quarantine security group",
        ] {
            assert!(body.contains(part), "{part} missing from:\n{body}");
        }
        assert!(
            !body.contains("SECRET-TOKEN"),
            "the task token is never shown"
        );
    }
}
