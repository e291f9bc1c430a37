//! Lambda function: the finding in Security Hub (its note and workflow status). Input: the finding event, triage's plan and the report's result.
use ec2_quarantine::steps::security_hub::{self, HubInput, HubSettings};
use ec2_quarantine::{Ctx, Error};
use lambda_runtime::LambdaEvent;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    ec2_quarantine::telemetry::init_logging();
    let settings = HubSettings::from_env()?;
    let ctx = &Ctx::load().await?;
    ec2_quarantine::telemetry::serve(
        "security-hub",
        |event: LambdaEvent<serde_json::Value>| async move {
            let input: HubInput = serde_json::from_value(event.payload)
                .map_err(|e| Error::InvalidEvent(format!("not a Security Hub step input: {e}")))?;
            security_hub::update(ctx, settings, input).await
        },
    )
    .await
}
