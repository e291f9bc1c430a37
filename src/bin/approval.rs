//! Lambda function: approval (request, decide, settle). Input: `{"action": ...}` from the state machine or `deploy.sh approve|reject`.
use ec2_quarantine::steps::approval::{self, ApprovalInput, ApprovalSettings};
use ec2_quarantine::{Ctx, Error};
use lambda_runtime::LambdaEvent;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    ec2_quarantine::telemetry::init_logging();
    let settings = &ApprovalSettings::from_env()?;
    let ctx = &Ctx::load().await?;
    ec2_quarantine::telemetry::serve(
        "approval",
        |event: LambdaEvent<serde_json::Value>| async move {
            let input: ApprovalInput = serde_json::from_value(event.payload)
                .map_err(|e| Error::InvalidEvent(format!("not an approval input: {e}")))?;
            approval::handle(ctx, settings, input).await
        },
    )
    .await
}
