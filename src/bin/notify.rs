//! Lambda function: the notification. Input: the finding event and the steps' results.
use ec2_quarantine::steps::notify::{Notifier, NotifyInput, NotifySettings};
use ec2_quarantine::{Ctx, Error};
use lambda_runtime::LambdaEvent;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    ec2_quarantine::telemetry::init_logging();
    let settings = NotifySettings::from_env()?;
    let notifier = &Notifier::new(&Ctx::load().await?, &settings);
    ec2_quarantine::telemetry::serve(
        "notify",
        |event: LambdaEvent<serde_json::Value>| async move {
            let input: NotifyInput = serde_json::from_value(event.payload)
                .map_err(|e| Error::InvalidEvent(format!("not a notify input: {e}")))?;
            notifier.notify(&input).await
        },
    )
    .await
}
