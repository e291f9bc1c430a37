//! Lambda function: the notification. Input: the finding event and the steps' results.
use ec2_quarantine::notify::{NotifyInput, NotifySettings, notify};
use ec2_quarantine::{Ctx, Error};
use lambda_runtime::{LambdaEvent, service_fn};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    lambda_runtime::tracing::init_default_subscriber();
    let settings = &NotifySettings::from_env()?;
    let ctx = &Ctx::load().await?;
    lambda_runtime::run(service_fn(
        |event: LambdaEvent<serde_json::Value>| async move {
            let input: NotifyInput = serde_json::from_value(event.payload)
                .map_err(|e| Error::InvalidEvent(format!("not a notify input: {e}")))?;
            notify(ctx, settings, &input).await
        },
    ))
    .await
}
