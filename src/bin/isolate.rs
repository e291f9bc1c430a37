//! Lambda function: the `isolate` containment step. Input: a GuardDuty finding event.
use ec2_quarantine::{Ctx, finding};
use lambda_runtime::{LambdaEvent, service_fn};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    lambda_runtime::tracing::init_default_subscriber();
    let ctx = &Ctx::load().await?;
    lambda_runtime::run(service_fn(
        |event: LambdaEvent<serde_json::Value>| async move {
            let deadline = ec2_quarantine::deadline(event.context.deadline);
            let finding = finding::parse_event(event.payload)?;
            ec2_quarantine::isolate::isolate_until(ctx, &finding, deadline).await
        },
    ))
    .await
}
