//! Lambda function: the `isolate` containment step. Input: one target of triage's plan, or a GuardDuty finding event (invoked alone).
use ec2_quarantine::{Ctx, domain::finding};
use lambda_runtime::{LambdaEvent, service_fn};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    lambda_runtime::tracing::init_default_subscriber();
    let ctx = &Ctx::load().await?;
    lambda_runtime::run(service_fn(
        |event: LambdaEvent<serde_json::Value>| async move {
            let deadline = ec2_quarantine::deadline(event.context.deadline);
            let request = finding::parse_step_request(event.payload)?;
            ec2_quarantine::steps::isolate::isolate_until(ctx, request, deadline).await
        },
    ))
    .await
}
