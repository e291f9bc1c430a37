//! Lambda function: the `isolate` containment step. Input: one target of triage's plan, or a GuardDuty finding event (invoked alone).
use ec2_quarantine::{Ctx, domain::finding};
use lambda_runtime::LambdaEvent;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    ec2_quarantine::telemetry::init_logging();
    let ctx = &Ctx::load().await?;
    ec2_quarantine::telemetry::serve(
        "isolate",
        |event: LambdaEvent<serde_json::Value>| async move {
            let deadline = ec2_quarantine::deadline(event.context.deadline);
            let request = finding::parse_step_request(event.payload)?;
            ec2_quarantine::steps::isolate::isolate_until(ctx, request, deadline).await
        },
    )
    .await
}
