//! Lambda function: triage, the workflow's first state. Input: a GuardDuty finding event.
use ec2_quarantine::approval::ApprovalAsk;
use ec2_quarantine::{Ctx, domain::finding};
use lambda_runtime::LambdaEvent;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    ec2_quarantine::telemetry::init_logging();
    let ctx = &Ctx::load().await?;
    ec2_quarantine::telemetry::serve(
        "triage",
        |event: LambdaEvent<serde_json::Value>| async move {
            // After an approval request, the state machine's input holds the earlier plan's
            // request and outcome: triage believes it only as the case table records it.
            // One that cannot be read is an error (the state machine reports it), never a
            // reason to ask again.
            let asked: Option<ApprovalAsk> = event
                .payload
                .pointer("/triage/approval")
                .map(|a| serde_json::from_value(a.clone()))
                .transpose()
                .map_err(|e| {
                    ec2_quarantine::Error::InvalidEvent(format!(
                        "the earlier plan's approval request cannot be read: {e}"
                    ))
                })?;
            let finding = finding::parse_event(event.payload)?;
            // Reported like every step's result, with a status (always done).
            ec2_quarantine::steps::triage::triage_after(ctx, &finding, asked.as_ref())
                .await
                .map(ec2_quarantine::Outcome::Done)
        },
    )
    .await
}
