//! Lambda function: the approval link's page (a function URL). Input: the function URL's request (payload format 2.0).
use ec2_quarantine::Ctx;
use ec2_quarantine::steps::approval_link;
use lambda_runtime::{LambdaEvent, service_fn};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    lambda_runtime::tracing::init_default_subscriber();
    let ctx = &Ctx::load().await?;
    lambda_runtime::run(service_fn(
        |event: LambdaEvent<serde_json::Value>| async move {
            approval_link::handle(ctx, event.payload).await
        },
    ))
    .await
}
