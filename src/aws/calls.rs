//! A trace of the EC2 calls a function makes, for the benchmarks' chain of dependent calls:
//! each call's operation, the branch of the step that made it (`branch`), and where it started
//! and ended in the function's own order of events. Off unless `EC2Q_CALL_TRACE` is set (the
//! benchmarks set it); then one log line per call, `aws call`, with `op`, `branch`, `started`,
//! `ended` (the function's event counter), `start_us`, `end_us` (since the process started) and
//! `ok`.
//!
//! A branch inside another is named `outer/inner` (each interface's moves: `network/<eni>`). A
//! call that started after another ended may have waited for it if that one was made in the
//! same branch or in a branch around it; calls of concurrent branches (the evidence attributes
//! beside the network moves, one interface's moves beside another's) never wait for each
//! other, so the branch keeps them apart where timestamps alone would chain them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::{
    BeforeSerializationInterceptorContextRef, FinalizerInterceptorContextRef,
};
use aws_smithy_runtime_api::client::orchestrator::Metadata;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::{ConfigBag, Storable, StoreReplace};
use tracing::info;

tokio::task_local! {
    static BRANCH: Arc<str>;
}

/// Runs `future` as the step's branch `name`: the calls it makes are traced with that name.
pub async fn branch<F: std::future::Future>(name: impl Into<Arc<str>>, future: F) -> F::Output {
    BRANCH.scope(name.into(), future).await
}

/// Whether calls are traced (`EC2Q_CALL_TRACE` set), read once.
pub fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("EC2Q_CALL_TRACE").is_some_and(|v| !v.is_empty()))
}

/// The function's events (a call started, a call ended), counted in the order they happened.
static EVENTS: AtomicU64 = AtomicU64::new(0);

fn since_start() -> u128 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_micros()
}

/// The interceptor that writes the trace (added to a client only when [`enabled`]).
#[derive(Debug, Default)]
pub struct CallTrace;

#[derive(Debug, Clone)]
struct Started {
    event: u64,
    at_us: u128,
    branch: Arc<str>,
}

impl Storable for Started {
    type Storer = StoreReplace<Self>;
}

impl Intercept for CallTrace {
    fn name(&self) -> &'static str {
        "CallTrace"
    }

    fn read_before_execution(
        &self,
        _context: &BeforeSerializationInterceptorContextRef<'_>,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let started = Started {
            event: EVENTS.fetch_add(1, Ordering::SeqCst),
            at_us: since_start(),
            branch: BRANCH
                .try_with(Arc::clone)
                .unwrap_or_else(|_| Arc::from("step")),
        };
        cfg.interceptor_state().store_put(started);
        Ok(())
    }

    fn read_after_execution(
        &self,
        context: &FinalizerInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let ended = EVENTS.fetch_add(1, Ordering::SeqCst);
        let end_us = since_start();
        let op = cfg.load::<Metadata>().map(|m| m.name().to_owned());
        let ok = context.output_or_error().is_some_and(|r| r.is_ok());
        if let Some(s) = cfg.load::<Started>() {
            info!(
                op = op.as_deref().unwrap_or("?"),
                branch = &*s.branch,
                started = s.event,
                ended,
                start_us = s.at_us as u64,
                end_us = end_us as u64,
                ok,
                "aws call"
            );
        }
        Ok(())
    }
}
