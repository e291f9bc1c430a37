//! Lambda function: the approval link's page (a function URL). Input: the function URL's request (payload format 2.0).
use ec2_quarantine::Ctx;
use ec2_quarantine::steps::approval_link;
use lambda_runtime::LambdaEvent;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    ec2_quarantine::telemetry::init_logging();
    let ctx = &Ctx::load().await?;
    ec2_quarantine::telemetry::serve(
        "approval-link",
        |event: LambdaEvent<serde_json::Value>| async move {
            approval_link::handle(ctx, event.payload).await
        },
    )
    .await
}
