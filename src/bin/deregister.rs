//! Lambda function: the `deregister` containment step (out of service). Input: one target of triage's plan, or a GuardDuty finding event (invoked alone).
use ec2_quarantine::{Ctx, domain::finding};
use lambda_runtime::{LambdaEvent, service_fn};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    lambda_runtime::tracing::init_default_subscriber();
    let ctx = &Ctx::load().await?;
    lambda_runtime::run(service_fn(
        |event: LambdaEvent<serde_json::Value>| async move {
            let request = finding::parse_step_request(event.payload)?;
            ec2_quarantine::steps::deregister::deregister(ctx, request).await
        },
    ))
    .await
}
