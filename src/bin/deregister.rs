//! Lambda function: the `deregister` containment step (out of service). Input: a GuardDuty finding event.
use ec2_quarantine::{Ctx, finding};
use lambda_runtime::{LambdaEvent, service_fn};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    lambda_runtime::tracing::init_default_subscriber();
    let ctx = &Ctx::load().await?;
    lambda_runtime::run(service_fn(
        |event: LambdaEvent<serde_json::Value>| async move {
            let finding = finding::parse_event(event.payload)?;
            ec2_quarantine::deregister::deregister(ctx, &finding).await
        },
    ))
    .await
}
