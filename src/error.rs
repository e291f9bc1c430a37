//! Errors with stable names.
//!
//! Every failure a handler returns becomes a Lambda function error whose `errorType` is one of
//! the names in [`ErrorName`]. The state machine matches those names: `TransientAwsError` is
//! retried with backoff, every other name is final and caught so the notification still goes out.

use std::fmt;

use aws_runtime::retries::classifiers::{THROTTLING_ERRORS, TRANSIENT_ERRORS};
use aws_sdk_ec2::error::ProvideErrorMetadata;
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::display::DisplayErrorContext;
use lambda_runtime::Diagnostic;

/// The `errorType` names a handler can return. Their spelling is part of the interface with the
/// state machine: never rename one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorName {
    /// Throttling, a 5xx answer, a timeout or a dropped connection: retrying the step may succeed.
    TransientAwsError,
    /// The handler's role lacks a permission: retrying will not help.
    AccessDenied,
    /// Any other error answer from an AWS API.
    AwsRequestFailed,
    /// The instance named by the finding does not exist in the finding's account and region.
    InstanceNotFound,
    /// The input is not a GuardDuty finding event this tool can read.
    InvalidEvent,
    /// Some actions of a step succeeded and others failed for good; the message lists both.
    ContainmentIncomplete,
    /// The function's own settings are missing or wrong.
    Misconfigured,
    /// The member account's role could not be assumed (missing, or not trusting the responder).
    MemberRoleUnavailable,
    /// Isolation failed open: an interface was left in the allow-all transit group, because
    /// neither the move on to quarantine nor the move back to its own groups succeeded. The
    /// state machine retries it (the next attempt moves the interface on) and then reports it
    /// first.
    IsolationFailedOpen,
    /// Security Hub does not hold the finding yet (GuardDuty sends it within minutes): the state
    /// machine retries the Security Hub step later.
    FindingNotInSecurityHub,
}

impl ErrorName {
    pub const ALL: [ErrorName; 10] = [
        ErrorName::TransientAwsError,
        ErrorName::AccessDenied,
        ErrorName::AwsRequestFailed,
        ErrorName::InstanceNotFound,
        ErrorName::InvalidEvent,
        ErrorName::ContainmentIncomplete,
        ErrorName::Misconfigured,
        ErrorName::MemberRoleUnavailable,
        ErrorName::IsolationFailedOpen,
        ErrorName::FindingNotInSecurityHub,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorName::TransientAwsError => "TransientAwsError",
            ErrorName::AccessDenied => "AccessDenied",
            ErrorName::AwsRequestFailed => "AwsRequestFailed",
            ErrorName::InstanceNotFound => "InstanceNotFound",
            ErrorName::InvalidEvent => "InvalidEvent",
            ErrorName::ContainmentIncomplete => "ContainmentIncomplete",
            ErrorName::Misconfigured => "Misconfigured",
            ErrorName::MemberRoleUnavailable => "MemberRoleUnavailable",
            ErrorName::IsolationFailedOpen => "IsolationFailedOpen",
            ErrorName::FindingNotInSecurityHub => "FindingNotInSecurityHub",
        }
    }

    /// Whether the state machine should retry a step that failed with this name.
    pub fn is_retryable(self) -> bool {
        self == ErrorName::TransientAwsError
    }
}

impl fmt::Display for ErrorName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

type Source = Box<dyn std::error::Error + Send + Sync + 'static>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid event: {0}")]
    InvalidEvent(String),

    #[error("instance {instance_id} does not exist in account {account_id} region {region}")]
    InstanceNotFound {
        instance_id: String,
        account_id: String,
        region: String,
    },

    #[error("{action} failed transiently ({code}): {message}")]
    Transient {
        action: &'static str,
        code: String,
        message: String,
        #[source]
        source: Source,
    },

    #[error("{action} was denied ({code}): {message}")]
    AccessDenied {
        action: &'static str,
        code: String,
        message: String,
        #[source]
        source: Source,
    },

    #[error("{action} failed ({code}): {message}")]
    Aws {
        action: &'static str,
        code: String,
        message: String,
        #[source]
        source: Source,
    },

    #[error("{step} on {instance_id} is incomplete; done: [{}]; failed: [{}]", .done.join("; "), render_failures(.failed))]
    Incomplete {
        step: &'static str,
        instance_id: String,
        done: Vec<String>,
        failed: Vec<(String, Error)>,
    },

    #[error("EXPOSED: {} left in the allow-all transit group of instance {instance_id}: all traffic reaches {}; move {} to the quarantine group by hand. {incomplete}", .exposed.join(", "), if .exposed.len() == 1 { "it" } else { "them" }, if .exposed.len() == 1 { "it" } else { "them" })]
    FailedOpen {
        instance_id: String,
        /// The interfaces left in the transit group.
        exposed: Vec<String>,
        /// What the step did and what failed, the exposed interfaces included.
        incomplete: Box<Error>,
    },

    #[error("misconfigured: {0}")]
    Misconfigured(String),

    #[error("cannot act in the member account: assuming {role_arn} failed: {reason}")]
    MemberRoleUnavailable { role_arn: String, reason: String },

    #[error(
        "Security Hub does not hold the finding {finding} yet (GuardDuty sends a new finding within minutes)"
    )]
    NotInSecurityHub { finding: String },
}

/// An AWS answer that is no SDK error: an item a batch call lists as not processed.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Answer(String);

fn render_failures(failed: &[(String, Error)]) -> String {
    failed
        .iter()
        .map(|(what, err)| format!("{what}: {err}"))
        .collect::<Vec<_>>()
        .join("; ")
}

impl Error {
    pub fn name(&self) -> ErrorName {
        match self {
            Error::InvalidEvent(_) => ErrorName::InvalidEvent,
            Error::InstanceNotFound { .. } => ErrorName::InstanceNotFound,
            Error::Transient { .. } => ErrorName::TransientAwsError,
            Error::AccessDenied { .. } => ErrorName::AccessDenied,
            Error::Aws { .. } => ErrorName::AwsRequestFailed,
            // Retrying an incomplete step redoes only what is missing, so it is worth it
            // whenever a failure in it may pass: an interface left unisolated by a throttle is
            // retried even when another part of the step failed for good.
            Error::Incomplete { failed, .. } => {
                if failed.iter().any(|(_, e)| e.name().is_retryable()) {
                    ErrorName::TransientAwsError
                } else {
                    ErrorName::ContainmentIncomplete
                }
            }
            Error::Misconfigured(_) => ErrorName::Misconfigured,
            Error::MemberRoleUnavailable { .. } => ErrorName::MemberRoleUnavailable,
            Error::FailedOpen { .. } => ErrorName::IsolationFailedOpen,
            Error::NotInSecurityHub { .. } => ErrorName::FindingNotInSecurityHub,
        }
    }

    /// An error an AWS API answered inside a successful response (an unprocessed item of a
    /// batch call), transient or final.
    pub fn answered(action: &'static str, code: &str, message: &str, transient: bool) -> Error {
        let source: Source = Box::new(Answer(format!("{code}: {message}")));
        let (code, message) = (code.to_owned(), message.to_owned());
        if transient {
            Error::Transient {
                action,
                code,
                message,
                source,
            }
        } else {
            Error::Aws {
                action,
                code,
                message,
                source,
            }
        }
    }

    /// Whether the failed request may still have taken effect: no answer came (a timeout, a
    /// dropped connection) or the service failed while handling it (a 5xx). A throttle or any
    /// other refusal is an answer that nothing was done.
    pub fn maybe_applied(&self) -> bool {
        match self {
            Error::Transient { code, .. } => !THROTTLING_ERRORS.contains(&code.as_str()),
            _ => false,
        }
    }

    /// The AWS error code, when the error is an AWS API's answer.
    pub fn aws_code(&self) -> Option<&str> {
        match self {
            Error::Transient { code, .. }
            | Error::AccessDenied { code, .. }
            | Error::Aws { code, .. } => Some(code),
            _ => None,
        }
    }

    /// Classifies an SDK error by its AWS error code, keeping it as the source.
    pub fn from_sdk<E>(action: &'static str, err: SdkError<E, HttpResponse>) -> Error
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let status = err.raw_response().map(|r| r.status().as_u16());
        let code = err.code().map(str::to_owned);
        let message = err
            .message()
            .map(str::to_owned)
            .unwrap_or_else(|| DisplayErrorContext(&err).to_string());
        let kind = classify(&err, code.as_deref(), status);
        let code = code.unwrap_or_else(|| match status {
            Some(s) => format!("HTTP {s}"),
            None => "NoResponse".to_owned(),
        });
        let source: Source = Box::new(err);
        match kind {
            ErrorName::TransientAwsError => Error::Transient {
                action,
                code,
                message,
                source,
            },
            ErrorName::AccessDenied => Error::AccessDenied {
                action,
                code,
                message,
                source,
            },
            _ => Error::Aws {
                action,
                code,
                message,
                source,
            },
        }
    }
}

/// Error codes with which AWS APIs say the caller lacks a permission.
const ACCESS_DENIED_CODES: &[&str] = &[
    "AccessDenied",
    "AccessDeniedException",
    "UnauthorizedOperation",
    "UnauthorizedAccess",
    "AuthorizationError",
];

fn classify<E>(
    err: &SdkError<E, HttpResponse>,
    code: Option<&str>,
    status: Option<u16>,
) -> ErrorName {
    match err {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            return ErrorName::TransientAwsError;
        }
        _ => {}
    }
    if let Some(code) = code {
        if THROTTLING_ERRORS.contains(&code) || TRANSIENT_ERRORS.contains(&code) {
            return ErrorName::TransientAwsError;
        }
        if ACCESS_DENIED_CODES.contains(&code) {
            return ErrorName::AccessDenied;
        }
        if matches!(
            code,
            "InternalError" | "InternalFailure" | "ServiceUnavailable" | "Unavailable"
        ) {
            return ErrorName::TransientAwsError;
        }
        // IAM refuses a change while other changes to the same object are in flight
        // (ConcurrentModification, HTTP 409: "wait a few minutes and submit your request
        // again"): the steps of a group's instances change one shared role at once.
        if matches!(
            code,
            "ConcurrentModification" | "ConcurrentModificationException"
        ) {
            return ErrorName::TransientAwsError;
        }
    }
    match status {
        Some(s) if s >= 500 => ErrorName::TransientAwsError,
        Some(429) => ErrorName::TransientAwsError,
        _ => ErrorName::AwsRequestFailed,
    }
}

impl From<Error> for Diagnostic {
    fn from(err: Error) -> Diagnostic {
        Diagnostic {
            error_type: err.name().as_str().to_owned(),
            error_message: err.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_concurrent_change_to_an_iam_role_is_retried() {
        use aws_sdk_iam::operation::put_role_policy::PutRolePolicyError;
        use aws_smithy_types::body::SdkBody;
        let err = SdkError::service_error(
            PutRolePolicyError::generic(
                aws_sdk_iam::error::ErrorMetadata::builder()
                    .code("ConcurrentModification")
                    .message("Rate exceeded")
                    .build(),
            ),
            HttpResponse::new(409.try_into().unwrap(), SdkBody::from("")),
        );
        // Named through a constant: no AWS call is made here (the least-privilege test counts
        // each literal label as one).
        const ACTION: &str = "iam:PutRolePolicy";
        let err = Error::from_sdk(ACTION, err);
        assert_eq!(err.name(), ErrorName::TransientAwsError, "{err}");
    }

    #[test]
    fn names_are_stable_and_distinct() {
        let names: Vec<&str> = ErrorName::ALL.iter().map(|n| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "TransientAwsError",
                "AccessDenied",
                "AwsRequestFailed",
                "InstanceNotFound",
                "InvalidEvent",
                "ContainmentIncomplete",
                "Misconfigured",
                "MemberRoleUnavailable",
                "IsolationFailedOpen",
                "FindingNotInSecurityHub"
            ]
        );
        let retryable: Vec<&str> = ErrorName::ALL
            .iter()
            .filter(|n| n.is_retryable())
            .map(|n| n.as_str())
            .collect();
        assert_eq!(retryable, ["TransientAwsError"]);
    }

    fn transient() -> Error {
        Error::Transient {
            action: "ec2:CreateTags",
            code: "RequestLimitExceeded".into(),
            message: "slow down".into(),
            source: "slow down".into(),
        }
    }

    fn denied() -> Error {
        Error::AccessDenied {
            action: "ec2:ModifyInstanceAttribute",
            code: "UnauthorizedOperation".into(),
            message: "no".into(),
            source: "no".into(),
        }
    }

    #[test]
    fn incomplete_step_is_retryable_when_any_failure_may_pass() {
        let only_transient = Error::Incomplete {
            step: "isolation",
            instance_id: "i-0123456789abcdef0".into(),
            done: vec!["eni-1 isolated".into()],
            failed: vec![("eni-2".into(), transient())],
        };
        assert_eq!(only_transient.name(), ErrorName::TransientAwsError);

        let mixed = Error::Incomplete {
            step: "isolation",
            instance_id: "i-0123456789abcdef0".into(),
            done: vec!["eni-1 isolated".into()],
            failed: vec![
                ("eni-2".into(), transient()),
                ("termination protection".into(), denied()),
            ],
        };
        assert_eq!(mixed.name(), ErrorName::TransientAwsError);
        let permanent = Error::Incomplete {
            step: "isolation",
            instance_id: "i-0123456789abcdef0".into(),
            done: vec![],
            failed: vec![("termination protection".into(), denied())],
        };
        assert_eq!(permanent.name(), ErrorName::ContainmentIncomplete);
        let text = mixed.to_string();
        assert!(text.contains("eni-1 isolated"), "{text}");
        assert!(
            text.contains("termination protection: ec2:ModifyInstanceAttribute was denied"),
            "{text}"
        );
    }

    #[test]
    fn diagnostic_carries_the_stable_name() {
        let d: Diagnostic = denied().into();
        assert_eq!(d.error_type, "AccessDenied");
        assert!(d.error_message.contains("UnauthorizedOperation"));
    }
}
