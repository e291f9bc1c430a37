//! Lambda function: release, the undo of a containment. Input: `{"instance_id": "i-..."}`
//! (optionally `account_id`, `region`, `reason`), as the release state machine is started.
use ec2_quarantine::steps::release::ReleaseRequest;
use ec2_quarantine::{Ctx, Error};
use lambda_runtime::LambdaEvent;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    ec2_quarantine::telemetry::init_logging();
    let ctx = &Ctx::load().await?;
    ec2_quarantine::telemetry::serve(
        "release",
        |event: LambdaEvent<serde_json::Value>| async move {
            let request: ReleaseRequest = serde_json::from_value(event.payload)
                .map_err(|e| Error::InvalidEvent(format!("not a release request: {e}")))?;
            ec2_quarantine::steps::release::release(ctx, &request).await
        },
    )
    .await
}
