//! The pause switch: an SSM parameter the stack creates (`PauseSwitch`, its name in
//! `PAUSE_PARAMETER`) that turns every contain decision into notify-only while it holds `true`.
//! `deploy.sh pause --reason "..."` sets it, `deploy.sh resume` clears it.
//!
//! Triage reads it once per finding it would contain, through a cache of a few seconds per
//! function instance. Only a value read as `true` pauses: a value that is not a boolean, a
//! parameter that is missing, or one the function is not allowed to read leaves the responder
//! running, and the notification says why the switch did not apply, so nobody who can break the
//! parameter can stop containment (SSM checks the value against the parameter's
//! `AllowedPattern` too). A read that fails for a while (throttled: a burst of findings starts
//! many function instances at once, and GetParameter's quota is the account's; a 5xx; a
//! timeout) is not "unreadable": the function keeps the last value it read for
//! [`KEEP_LAST_READ_FOR`], and without one triage fails with `TransientAwsError`, which the state
//! machine retries with backoff, so that a paused responder does not contain a burst because
//! SSM throttled it.
//!
//! Who paused and since when come from SSM's own record of the change that set the value read
//! (`GetParameterHistory`, the entry of the version `GetParameter` returned: `LastModifiedUser`,
//! `LastModifiedDate`), not from anything the pauser wrote; the reason is that version's
//! description, which `deploy.sh pause` writes.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_ssm::types::ParameterHistory;
use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorName};

/// How long a read of the switch is reused by the same function instance.
pub const CACHE_FOR: Duration = Duration::from_secs(5);

/// How long the last value read stands in for a read that failed transiently.
pub const KEEP_LAST_READ_FOR: Duration = Duration::from_secs(600);

/// The longest reason or user kept from the parameter's record (SSM allows 1,024 characters of
/// description; the notification shows a line).
const MAX_SHOWN: usize = 300;

/// SSM keeps the last 100 versions of a parameter; a page of its history holds at most 50.
const HISTORY_PAGES: usize = 3;

/// What the switch says, as triage applies it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Pause {
    /// Not paused: the switch holds `false`, or there is no switch (no `PAUSE_PARAMETER`).
    Running,
    /// Paused: every contain decision becomes notify-only.
    Paused {
        /// When the switch was set (SSM's `LastModifiedDate` of that version, RFC 3339), if known.
        since: Option<String>,
        /// Who set it (SSM's `LastModifiedUser` of that version, an ARN), if known.
        by: Option<String>,
        /// The reason given (that version's description), if any.
        reason: Option<String>,
    },
    /// The switch could not be read as a boolean: the responder runs, and says why.
    Unreadable { why: String },
}

impl Pause {
    /// The notification's line for the pause switch, when it has one to say.
    pub fn line(&self) -> Option<String> {
        match self {
            Pause::Running => None,
            Pause::Paused { since, by, reason } => Some(format!(
                "paused{}{}{}: no finding is contained, whether the rule or a person starts the workflow; resume with helper_scripts/deploy.sh resume",
                since
                    .as_deref()
                    .map(|s| format!(" since {s}"))
                    .unwrap_or_default(),
                by.as_deref()
                    .map(|b| format!(" by {b}"))
                    .unwrap_or_default(),
                reason
                    .as_deref()
                    .map(|r| format!(" (reason given: {r})"))
                    .unwrap_or_default(),
            )),
            Pause::Unreadable { why } => Some(format!(
                "the pause switch did not apply ({why}): the responder ran as usual"
            )),
        }
    }
}

/// The value the switch holds: `true` or `false` (SSM's `AllowedPattern` for it), surrounding
/// whitespace aside; anything else is not a pause.
pub fn parse(value: &str) -> Result<bool, String> {
    match value.trim() {
        "true" => Ok(true),
        "false" => Ok(false),
        other => Err(format!(
            "it holds {:?}, which is neither true nor false",
            clip(other, 40)
        )),
    }
}

/// The reads of one function instance: the last one (the cache), and the last that succeeded.
#[derive(Debug, Default)]
struct Reads {
    last: Option<(Instant, Pause)>,
    good: Option<(Instant, Pause)>,
}

/// The switch of one function instance: the parameter and its reads.
#[derive(Debug, Clone)]
pub struct PauseSwitch {
    ssm: aws_sdk_ssm::Client,
    name: String,
    reads: Arc<Mutex<Reads>>,
}

impl PauseSwitch {
    /// The switch named `name` (checked: an SSM parameter name).
    pub fn new(ssm: aws_sdk_ssm::Client, name: &str) -> Result<PauseSwitch, Error> {
        let name = name.trim();
        let valid = !name.is_empty()
            && name.len() <= 1011
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-/".contains(&b));
        if !valid {
            return Err(Error::Misconfigured(format!(
                "PAUSE_PARAMETER must be an SSM parameter name (letters, digits, _ . - /), got {:?}",
                clip(name, 80)
            )));
        }
        Ok(PauseSwitch {
            ssm,
            name: name.to_owned(),
            reads: Arc::default(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The same switch (and its reads) with requests naming the function in their
    /// User-Agent, as every other client of the function does (see `Ctx::acting_as`).
    pub fn acting_as(&self, app: aws_config::AppName) -> PauseSwitch {
        PauseSwitch {
            ssm: aws_sdk_ssm::Client::from_conf(
                self.ssm.config().to_builder().app_name(app).build(),
            ),
            ..self.clone()
        }
    }

    /// What the switch says now: the last read if it is younger than [`CACHE_FOR`]. A read
    /// that failed transiently gives the last value read within [`KEEP_LAST_READ_FOR`], else
    /// the error (`TransientAwsError`: the state machine retries triage).
    pub async fn read(&self) -> Result<Pause, Error> {
        if let Some(cached) = self.recent(|r| &r.last, CACHE_FOR) {
            return Ok(cached);
        }
        match self.fetch().await {
            Ok(pause) => {
                if let Ok(mut reads) = self.reads.lock() {
                    let now = Instant::now();
                    reads.last = Some((now, pause.clone()));
                    if !matches!(pause, Pause::Unreadable { .. }) {
                        reads.good = Some((now, pause.clone()));
                    }
                }
                Ok(pause)
            }
            Err(err) => match self.recent(|r| &r.good, KEEP_LAST_READ_FOR) {
                Some(good) => {
                    tracing::warn!(error = %err, "pause switch not read now: its last value stands");
                    Ok(good)
                }
                None => Err(err),
            },
        }
    }

    fn recent(
        &self,
        which: impl Fn(&Reads) -> &Option<(Instant, Pause)>,
        within: Duration,
    ) -> Option<Pause> {
        let reads = self.reads.lock().ok()?;
        which(&reads)
            .as_ref()
            .filter(|(at, _)| at.elapsed() < within)
            .map(|(_, pause)| pause.clone())
    }

    /// One read of the switch: Err only for a transient failure (throttled, 5xx, timeout).
    async fn fetch(&self) -> Result<Pause, Error> {
        let parameter = match self.ssm.get_parameter().name(&self.name).send().await {
            Ok(out) => out
                .parameter
                .unwrap_or_else(|| aws_sdk_ssm::types::Parameter::builder().build()),
            Err(err) => {
                let err = Error::from_sdk("ssm:GetParameter", err);
                if err.name() == ErrorName::TransientAwsError {
                    return Err(err);
                }
                let why = if err.aws_code() == Some("ParameterNotFound") {
                    format!("the parameter {} does not exist", self.name)
                } else {
                    format!("it could not be read: {err}")
                };
                tracing::warn!(%why, parameter = %self.name, "pause switch not applied");
                return Ok(Pause::Unreadable { why });
            }
        };
        match parse(parameter.value().unwrap_or_default()) {
            Ok(false) => Ok(Pause::Running),
            Ok(true) => {
                let change = self.change(parameter.version()).await;
                tracing::info!(parameter = %self.name, "the responder is paused");
                Ok(Pause::Paused {
                    since: change
                        .as_ref()
                        .and_then(|c| c.last_modified_date())
                        .and_then(|d| d.fmt(aws_smithy_types::date_time::Format::DateTime).ok()),
                    by: change
                        .as_ref()
                        .and_then(|c| c.last_modified_user())
                        .filter(|u| !u.is_empty() && *u != "N/A")
                        .map(|u| clip(u, MAX_SHOWN)),
                    reason: change
                        .as_ref()
                        .and_then(|c| c.description())
                        .map(str::trim)
                        .filter(|d| !d.is_empty())
                        .map(|d| clip(d, MAX_SHOWN)),
                })
            }
            Err(why) => {
                tracing::warn!(%why, parameter = %self.name, "pause switch not applied");
                Ok(Pause::Unreadable { why })
            }
        }
    }

    /// SSM's record of the change that made `version` (the one read): none when it cannot be
    /// read (the pause still applies: the value was read).
    async fn change(&self, version: i64) -> Option<ParameterHistory> {
        let mut token = None;
        for _ in 0..HISTORY_PAGES {
            let page = self
                .ssm
                .get_parameter_history()
                .name(&self.name)
                .max_results(50)
                .set_next_token(token)
                .send()
                .await;
            let page = match page {
                Ok(page) => page,
                Err(err) => {
                    let err = Error::from_sdk("ssm:GetParameterHistory", err);
                    tracing::warn!(error = %err, "who paused the responder is unknown");
                    return None;
                }
            };
            if let Some(found) = page.parameters().iter().find(|h| h.version() == version) {
                return Some(found.clone());
            }
            token = page.next_token.filter(|t| !t.is_empty());
            token.as_ref()?;
        }
        None
    }
}

/// `s` cut to at most `max` characters, control characters made visible.
fn clip(s: &str, max: usize) -> String {
    let mut out: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(max)
        .collect();
    if s.chars().count() > max {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_ssm::error::ErrorMetadata;
    use aws_sdk_ssm::operation::get_parameter::{GetParameterError, GetParameterOutput};
    use aws_sdk_ssm::operation::get_parameter_history::{
        GetParameterHistoryError, GetParameterHistoryOutput,
    };
    use aws_sdk_ssm::types::Parameter;
    use aws_smithy_mocks::{Rule, RuleMode, mock, mock_client};

    #[test]
    fn only_true_and_false_are_values_of_the_switch() {
        assert_eq!(parse("true"), Ok(true));
        assert_eq!(parse(" false\n"), Ok(false));
        for bad in ["TRUE", "yes", "1", "", "true false", "paused"] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_name_that_is_not_an_ssm_parameter_name_is_a_misconfiguration() {
        let unused = value("false", 1);
        let ssm = mock_client!(aws_sdk_ssm, [&unused]);
        assert!(PauseSwitch::new(ssm.clone(), "/ec2-quarantine/paused").is_ok());
        for bad in ["", "   ", "/x y", "/x\ny", "/é"] {
            assert!(
                matches!(
                    PauseSwitch::new(ssm.clone(), bad),
                    Err(Error::Misconfigured(_))
                ),
                "{bad:?}"
            );
        }
    }

    fn value(v: &'static str, version: i64) -> Rule {
        mock!(aws_sdk_ssm::Client::get_parameter).then_output(move || {
            GetParameterOutput::builder()
                .parameter(
                    Parameter::builder()
                        .name("/p")
                        .value(v)
                        .version(version)
                        .build(),
                )
                .build()
        })
    }

    fn history(versions: &'static [(i64, &'static str, &'static str)]) -> Rule {
        mock!(aws_sdk_ssm::Client::get_parameter_history).then_output(move || {
            let mut out = GetParameterHistoryOutput::builder();
            for (version, user, description) in versions {
                out = out.parameters(
                    ParameterHistory::builder()
                        .name("/p")
                        .version(*version)
                        .last_modified_user(*user)
                        .last_modified_date(aws_smithy_types::DateTime::from_secs(
                            1_800_000_000 + version,
                        ))
                        .description(*description)
                        .build(),
                );
            }
            out.build()
        })
    }

    fn throttled() -> Rule {
        mock!(aws_sdk_ssm::Client::get_parameter).then_error(|| {
            GetParameterError::generic(
                ErrorMetadata::builder()
                    .code("ThrottlingException")
                    .message("Rate exceeded")
                    .build(),
            )
        })
    }

    #[tokio::test]
    async fn true_pauses_and_names_who_set_the_version_read_and_why() {
        // Version 3 was read: its change is the pause, not version 2's (another person's).
        let record = history(&[
            (
                2,
                "arn:aws:iam::123456789012:user/someone-else",
                "Not paused.",
            ),
            (
                3,
                "arn:aws:iam::123456789012:user/oncall",
                "scanner mistaken\nfor an attacker",
            ),
        ]);
        let ssm = mock_client!(
            aws_sdk_ssm,
            RuleMode::Sequential,
            [&value("true", 3), &record]
        );
        let pause = PauseSwitch::new(ssm, "/p").unwrap().read().await.unwrap();
        assert_eq!(
            pause,
            Pause::Paused {
                since: Some("2027-01-15T08:00:03Z".into()),
                by: Some("arn:aws:iam::123456789012:user/oncall".into()),
                reason: Some("scanner mistaken for an attacker".into()),
            }
        );
        let line = pause.line().unwrap();
        assert!(
            line.contains("since 2027-01-15T08:00:03Z by arn:aws:iam::123456789012:user/oncall")
        );
        assert!(line.contains("whether the rule or a person starts the workflow"));
    }

    #[tokio::test]
    async fn a_pause_whose_record_cannot_be_read_still_pauses() {
        let denied = mock!(aws_sdk_ssm::Client::get_parameter_history).then_error(|| {
            GetParameterHistoryError::generic(
                ErrorMetadata::builder()
                    .code("AccessDeniedException")
                    .build(),
            )
        });
        let ssm = mock_client!(
            aws_sdk_ssm,
            RuleMode::Sequential,
            [&value("true", 7), &denied]
        );
        let pause = PauseSwitch::new(ssm, "/p").unwrap().read().await.unwrap();
        assert_eq!(
            pause,
            Pause::Paused {
                since: None,
                by: None,
                reason: None
            }
        );
        assert!(
            pause
                .line()
                .unwrap()
                .starts_with("paused: no finding is contained")
        );
    }

    #[tokio::test]
    async fn anything_but_a_readable_true_leaves_the_responder_running() {
        let ssm = mock_client!(aws_sdk_ssm, [&value("false", 1)]);
        assert_eq!(
            PauseSwitch::new(ssm, "/p").unwrap().read().await.unwrap(),
            Pause::Running
        );

        let ssm = mock_client!(aws_sdk_ssm, [&value("yes", 1)]);
        let pause = PauseSwitch::new(ssm, "/p").unwrap().read().await.unwrap();
        assert!(
            matches!(&pause, Pause::Unreadable { why } if why.contains("neither true nor false"))
        );

        let missing = mock!(aws_sdk_ssm::Client::get_parameter).then_error(|| {
            GetParameterError::ParameterNotFound(
                aws_sdk_ssm::types::error::ParameterNotFound::builder()
                    .meta(ErrorMetadata::builder().code("ParameterNotFound").build())
                    .build(),
            )
        });
        let ssm = mock_client!(aws_sdk_ssm, [&missing]);
        let pause = PauseSwitch::new(ssm, "/p").unwrap().read().await.unwrap();
        assert!(
            matches!(&pause, Pause::Unreadable { why } if why.contains("does not exist")),
            "{pause:?}"
        );

        let denied = mock!(aws_sdk_ssm::Client::get_parameter).then_error(|| {
            GetParameterError::generic(
                ErrorMetadata::builder()
                    .code("AccessDeniedException")
                    .message("not authorized to perform ssm:GetParameter")
                    .build(),
            )
        });
        let ssm = mock_client!(aws_sdk_ssm, [&denied]);
        let pause = PauseSwitch::new(ssm, "/p").unwrap().read().await.unwrap();
        assert!(
            matches!(&pause, Pause::Unreadable { why } if why.contains("could not be read")),
            "{pause:?}"
        );
        assert!(pause.line().unwrap().contains("ran as usual"));
    }

    /// A throttled read is not "unreadable": with no value read before, triage fails with a
    /// retryable error (the state machine retries it with backoff); never "not paused".
    #[tokio::test]
    async fn a_throttled_first_read_is_a_retryable_error() {
        let ssm = mock_client!(aws_sdk_ssm, [&throttled()]);
        let err = PauseSwitch::new(ssm, "/p")
            .unwrap()
            .read()
            .await
            .unwrap_err();
        assert_eq!(err.name(), ErrorName::TransientAwsError, "{err}");
    }

    /// After a good read, a throttled one keeps its value (past the cache's few seconds).
    #[tokio::test]
    async fn a_throttled_read_keeps_the_last_value_read() {
        let record = history(&[(4, "arn:aws:iam::123456789012:user/oncall", "noisy detector")]);
        let throttle = throttled();
        let ssm = mock_client!(
            aws_sdk_ssm,
            RuleMode::Sequential,
            [&value("true", 4), &record, &throttle]
        );
        let switch = PauseSwitch::new(ssm, "/p").unwrap();
        let first = switch.read().await.unwrap();
        assert!(matches!(first, Pause::Paused { .. }));
        // The cache has expired: the next read goes to SSM, which throttles it.
        switch.reads.lock().unwrap().last = None;
        assert_eq!(switch.read().await.unwrap(), first);
        // The SDK retried the throttled call first (its standard mode), then gave up.
        assert!(throttle.num_calls() >= 1);
    }

    #[tokio::test]
    async fn a_read_is_reused_for_a_few_seconds() {
        let once = value("false", 1);
        let ssm = mock_client!(aws_sdk_ssm, [&once]);
        let switch = PauseSwitch::new(ssm, "/p").unwrap();
        for _ in 0..5 {
            assert_eq!(switch.read().await.unwrap(), Pause::Running);
        }
        assert_eq!(once.num_calls(), 1);
    }
}
