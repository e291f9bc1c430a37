//! The functions' `tracing` spans in the invocation's X-Ray trace.
//!
//! With active tracing, Lambda records a segment for each invocation and hands the function the
//! trace header (`Root=...;Parent=...;Sampled=1`) and the address of its X-Ray daemon
//! (`AWS_XRAY_DAEMON_ADDRESS`). This layer sends each span of the steps (their
//! `#[tracing::instrument]` functions) and each AWS SDK operation (its `EC2.DescribeInstances`
//! span, as the X-Ray SDKs name an AWS call: namespace `aws`, the service as name, the
//! operation) to that daemon as a subsegment of the invocation's segment, when the span ends:
//! one UDP datagram, the daemon's header line then the subsegment's JSON
//! (<https://docs.aws.amazon.com/xray/latest/devguide/xray-api-sendingdata.html>, "Sending
//! segment documents to the X-Ray daemon"; the fields:
//! <https://docs.aws.amazon.com/xray/latest/devguide/xray-api-segmentdocuments.html>).
//!
//! Written here, not taken from a crate: the Rust X-Ray clients published (`xray`, `xray-lite`,
//! 0.0.x) neither follow `tracing` spans nor are kept up; the OpenTelemetry route needs a
//! collector layer beside each function. Nothing waits on the daemon: a datagram that cannot be
//! sent is dropped, and a trace never holds containment back.

use std::fmt::Write as _;
use std::net::{SocketAddr, ToSocketAddrs, UdpSocket};
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use lambda_runtime::tracing::subscriber::Layer;
use lambda_runtime::tracing::subscriber::layer::Context;
use lambda_runtime::tracing::subscriber::registry::LookupSpan;
use tracing::Subscriber;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};

/// The invocation's trace, as Lambda's trace header gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceHeader {
    pub root: String,
    pub parent: String,
    pub sampled: bool,
}

impl TraceHeader {
    /// Reads `Root=1-...;Parent=...;Sampled=1`; `None` without a root and a parent of the
    /// shapes X-Ray gives them.
    pub fn parse(header: &str) -> Option<TraceHeader> {
        let (mut root, mut parent, mut sampled) = (None, None, false);
        for part in header.split(';') {
            match part.trim().split_once('=') {
                Some(("Root", v)) if is_trace_id(v) => root = Some(v.to_owned()),
                Some(("Parent", v)) if is_segment_id(v) => parent = Some(v.to_owned()),
                Some(("Sampled", v)) => sampled = v == "1",
                _ => {}
            }
        }
        Some(TraceHeader {
            root: root?,
            parent: parent?,
            sampled,
        })
    }
}

/// `1-` 8 hexadecimal digits (the time) `-` 24 hexadecimal digits.
fn is_trace_id(v: &str) -> bool {
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    matches!(v.split('-').collect::<Vec<_>>().as_slice(), ["1", time, id] if hex(time, 8) && hex(id, 24))
}

fn is_segment_id(v: &str) -> bool {
    v.len() == 16 && v.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The trace of the invocation running now (a Lambda function runs one at a time), set by
/// [`super::serve`] from the invocation's context.
static CURRENT: RwLock<Option<Arc<TraceHeader>>> = RwLock::new(None);

/// Sets the trace the spans that start from now on belong to (`None`: not traced).
pub fn set_current(header: Option<&str>) {
    let header = header.and_then(TraceHeader::parse).filter(|h| h.sampled);
    if let Ok(mut current) = CURRENT.write() {
        *current = header.map(Arc::new);
    }
}

fn current() -> Option<Arc<TraceHeader>> {
    CURRENT.read().ok().and_then(|c| c.clone())
}

/// The daemon's UDP address from `AWS_XRAY_DAEMON_ADDRESS` (`host:port`, or
/// `tcp:host:port udp:host:port`).
pub fn daemon_address(value: &str) -> Option<SocketAddr> {
    let udp = value
        .split_whitespace()
        .find_map(|p| p.strip_prefix("udp:"))
        .unwrap_or(value.trim());
    udp.to_socket_addrs().ok()?.next()
}

/// The layer that sends the spans to the daemon.
#[derive(Debug)]
pub struct XRayLayer {
    socket: UdpSocket,
    daemon: SocketAddr,
}

impl XRayLayer {
    /// A layer sending to `daemon`; `None` if no local socket can be opened.
    pub fn new(daemon: SocketAddr) -> Option<XRayLayer> {
        let local: SocketAddr = if daemon.is_ipv6() {
            "[::]:0".parse().ok()?
        } else {
            "0.0.0.0:0".parse().ok()?
        };
        let socket = UdpSocket::bind(local).ok()?;
        socket.set_nonblocking(true).ok()?;
        Some(XRayLayer { socket, daemon })
    }

    /// From Lambda's environment: only where a daemon address is given.
    pub fn from_env() -> Option<XRayLayer> {
        let address = std::env::var("AWS_XRAY_DAEMON_ADDRESS").ok()?;
        XRayLayer::new(daemon_address(&address)?)
    }
}

/// What a span becomes, kept in its extensions until it closes.
struct Subsegment {
    id: String,
    trace: Arc<TraceHeader>,
    parent_id: String,
    name: String,
    /// `Some(operation)` for an AWS SDK call.
    operation: Option<String>,
    start: f64,
}

/// The fields of an SDK operation's span.
#[derive(Default)]
struct Rpc {
    system: Option<String>,
    service: Option<String>,
    method: Option<String>,
}

impl Visit for Rpc {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "rpc.system" => self.system = Some(value.to_owned()),
            "rpc.service" => self.service = Some(value.to_owned()),
            "rpc.method" => self.method = Some(value.to_owned()),
            _ => {}
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.record_str(field, format!("{value:?}").trim_matches('"'));
    }
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

fn new_id() -> String {
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        // A clock-derived id: unique enough for one function's spans.
        bytes = (now().to_bits() ^ u64::from(std::process::id())).to_be_bytes();
    }
    hex::encode(bytes)
}

/// X-Ray takes names of letters, digits, whitespace and `_ . : / % & # = + \ - @`, up to 200.
fn xray_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_alphanumeric() || c.is_whitespace() || "_.:/%&#=+\\-@".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(200)
        .collect()
}

impl<S> Layer<S> for XRayLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(trace) = current() else {
            return;
        };
        let meta = attrs.metadata();
        let mut rpc = Rpc::default();
        attrs.record(&mut rpc);
        let (name, operation) = match (rpc.system.as_deref(), rpc.service, rpc.method) {
            (Some("aws-api"), Some(service), Some(method)) => (service, Some(method)),
            _ if meta.target().starts_with("ec2_quarantine") => (meta.name().to_owned(), None),
            _ => return,
        };
        let Some(span) = ctx.span(id) else {
            return;
        };
        // The nearest enclosing span that is a subsegment of the same trace, else the
        // invocation's own segment.
        let parent_id = span
            .scope()
            .skip(1)
            .find_map(|s| {
                s.extensions()
                    .get::<Subsegment>()
                    .filter(|p| p.trace.root == trace.root)
                    .map(|p| p.id.clone())
            })
            .unwrap_or_else(|| trace.parent.clone());
        span.extensions_mut().insert(Subsegment {
            id: new_id(),
            trace,
            parent_id,
            name: xray_name(&name),
            operation,
            start: now(),
        });
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(&id) else {
            return;
        };
        let Some(sub) = span.extensions_mut().remove::<Subsegment>() else {
            return;
        };
        let _ = self
            .socket
            .send_to(document(&sub, now()).as_bytes(), self.daemon);
    }
}

/// The datagram for a subsegment that ended at `end`: the daemon's header, then the document.
fn document(sub: &Subsegment, end: f64) -> String {
    let mut doc = serde_json::json!({
        "type": "subsegment",
        "id": sub.id,
        "trace_id": sub.trace.root,
        "parent_id": sub.parent_id,
        "name": sub.name,
        "start_time": sub.start,
        "end_time": end.max(sub.start),
    });
    if let Some(operation) = &sub.operation {
        doc["namespace"] = "aws".into();
        doc["aws"] = serde_json::json!({ "operation": operation });
    }
    let mut out = String::from("{\"format\": \"json\", \"version\": 1}\n");
    let _ = write!(out, "{doc}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use lambda_runtime::tracing::subscriber::layer::SubscriberExt;
    use std::time::Duration;

    const HEADER: &str =
        "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1";

    fn received(daemon: &UdpSocket) -> Vec<serde_json::Value> {
        daemon
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut out = Vec::new();
        let mut buf = [0u8; 65536];
        while let Ok(n) = daemon.recv(&mut buf) {
            let text = std::str::from_utf8(&buf[..n]).unwrap();
            let (head, body) = text.split_once('\n').unwrap();
            assert_eq!(head, "{\"format\": \"json\", \"version\": 1}");
            out.push(serde_json::from_str(body).unwrap());
        }
        out
    }

    #[test]
    fn the_header_is_read_as_lambda_gives_it() {
        let h = TraceHeader::parse(HEADER).unwrap();
        assert_eq!(h.root, "1-5759e988-bd862e3fe1be46a994272793");
        assert_eq!(h.parent, "53995c3f42cd8ad8");
        assert!(h.sampled);
        assert!(
            !TraceHeader::parse(
                "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=0"
            )
            .unwrap()
            .sampled
        );
        assert_eq!(
            TraceHeader::parse("Root=1-xyz;Parent=53995c3f42cd8ad8;Sampled=1"),
            None
        );
        assert_eq!(
            TraceHeader::parse("Root=1-5759e988-bd862e3fe1be46a994272793"),
            None
        );
        assert_eq!(
            daemon_address("tcp:127.0.0.1:2000 udp:127.0.0.2:2001"),
            Some("127.0.0.2:2001".parse().unwrap())
        );
        assert_eq!(
            daemon_address("169.254.79.129:2000"),
            Some("169.254.79.129:2000".parse().unwrap())
        );
    }

    /// One test for the whole path (the current trace is the process's, as in a function).
    #[test]
    fn spans_of_a_sampled_invocation_reach_the_daemon_as_nested_subsegments() {
        let daemon = UdpSocket::bind("127.0.0.1:0").unwrap();
        let layer = XRayLayer::new(daemon.local_addr().unwrap()).unwrap();
        let subscriber = lambda_runtime::tracing::subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            set_current(Some(HEADER));
            let step =
                tracing::info_span!(target: "ec2_quarantine::steps::isolate", "isolate_instance");
            step.in_scope(|| {
                tracing::debug_span!(
                    target: "aws_sdk_ec2::operation::describe_instances",
                    "EC2.DescribeInstances",
                    "rpc.service" = "EC2",
                    "rpc.method" = "DescribeInstances",
                    "rpc.system" = "aws-api",
                )
                .in_scope(|| {});
                // Another crate's span is not a subsegment.
                tracing::info_span!(target: "hyper::client", "connect").in_scope(|| {});
            });
            drop(step);
            // Not sampled: nothing is sent.
            set_current(Some(&HEADER.replace("Sampled=1", "Sampled=0")));
            tracing::info_span!(target: "ec2_quarantine::steps::snapshot", "snapshot")
                .in_scope(|| {});
            set_current(None);
        });
        let got = received(&daemon);
        assert_eq!(got.len(), 2, "{got:?}");
        let (call, step) = (&got[0], &got[1]);
        assert_eq!(step["name"], "isolate_instance");
        assert_eq!(
            step["parent_id"], "53995c3f42cd8ad8",
            "the invocation's segment"
        );
        assert_eq!(call["name"], "EC2");
        assert_eq!(call["namespace"], "aws");
        assert_eq!(call["aws"]["operation"], "DescribeInstances");
        assert_eq!(
            call["parent_id"], step["id"],
            "nested in the step's subsegment"
        );
        for s in &got {
            assert_eq!(s["type"], "subsegment");
            assert_eq!(s["trace_id"], "1-5759e988-bd862e3fe1be46a994272793");
            assert!(is_segment_id(s["id"].as_str().unwrap()));
            assert!(s["start_time"].as_f64().unwrap() <= s["end_time"].as_f64().unwrap());
        }
    }
}
