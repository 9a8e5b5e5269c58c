//! The state the gRPC services share: the engine, admission control (`limits.max_concurrent`),
//! per-request [`Scope`]s (in-flight gauge, deadline from `grpc-timeout`, request metrics) and
//! who is calling. `typed`, `oip` and `admin` depend on this module; `server` builds one
//! [`Ctx`] and wires the services, so no service depends on `server`.

use crate::engine::Engine;
use crate::error::code_name;
use crate::metrics as m;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::metadata::MetadataMap;
use tonic::{Request, Status};

/// Metadata key that pins a caller to one A/B version.
pub const STICKY_KEY: &str = "x-qattn-sticky-key";

/// Who is calling (set by the auth interceptor).
#[derive(Debug, Clone, Default)]
pub struct Caller {
    /// The API key id, when keys are configured.
    pub key_id: Option<String>,
}

/// Shared state of the service implementations.
#[derive(Debug, Clone)]
pub(crate) struct Ctx {
    pub(crate) engine: Arc<Engine>,
    concurrency: Option<Arc<Semaphore>>,
}

impl Ctx {
    /// The shared state over `engine`; at most `max_concurrent` requests at once (0: no limit).
    pub(crate) fn new(engine: Arc<Engine>, max_concurrent: usize) -> Ctx {
        Ctx {
            engine,
            concurrency: (max_concurrent > 0).then(|| Arc::new(Semaphore::new(max_concurrent))),
        }
    }
}

/// One request being served: admission permit, in-flight gauge and request metrics.
pub(crate) struct Scope {
    method: &'static str,
    start: Instant,
    received: Instant,
    deadline: Option<Instant>,
    pub(crate) model: String,
    pub(crate) version: String,
    _permit: Option<OwnedSemaphorePermit>,
}

impl Ctx {
    /// Admits a request (or RESOURCE_EXHAUSTED at `limits.max_concurrent`).
    pub(crate) fn admit(
        &self,
        method: &'static str,
        meta: &MetadataMap,
    ) -> std::result::Result<Scope, Status> {
        let received = Instant::now();
        let permit = match &self.concurrency {
            Some(s) => Some(s.clone().try_acquire_owned().map_err(|_| {
                m::reject("concurrency");
                let st = Status::resource_exhausted(format!(
                    "the server is at its concurrency limit (limits.max_concurrent = {}); retry later",
                    self.engine.config().limits.max_concurrent
                ));
                count(method, "", "", st.code(), received);
                st
            })?),
            None => None,
        };
        metrics::gauge!(m::INFLIGHT).increment(1.0);
        Ok(Scope {
            method,
            start: received,
            received,
            deadline: deadline_of(meta, received),
            model: String::new(),
            version: String::new(),
            _permit: permit,
        })
    }
}

fn count(method: &'static str, model: &str, version: &str, code: tonic::Code, start: Instant) {
    metrics::counter!(m::REQUESTS_TOTAL, "method" => method, "model" => model.to_string(),
        "version" => version.to_string(), "status" => code_name(code))
    .increment(1);
    metrics::histogram!(m::REQUEST_DURATION, "method" => method, "model" => model.to_string())
        .record(start.elapsed().as_secs_f64());
}

impl Scope {
    /// When the request was received.
    pub(crate) fn received(&self) -> Instant {
        self.received
    }

    /// The effective deadline (from `grpc-timeout`, a little early so the answer is
    /// DEADLINE_EXCEEDED rather than tonic's own CANCELLED at the same instant).
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Runs `fut` under the deadline and records the outcome.
    pub(crate) async fn run<T, F>(mut self, fut: F) -> std::result::Result<T, Status>
    where
        F: std::future::Future<Output = std::result::Result<(T, String, String), Status>>,
    {
        let r = match self.deadline {
            Some(d) => {
                match tokio::time::timeout_at(tokio::time::Instant::from_std(d), fut).await {
                    Ok(r) => r,
                    Err(_) => Err(Status::deadline_exceeded(
                        "deadline exceeded (grpc-timeout) before the answer was ready",
                    )),
                }
            }
            None => fut.await,
        };
        let r = r.map(|(t, model, version)| {
            self.model = model;
            self.version = version;
            t
        });
        if let Err(st) = &r
            && st.code() == tonic::Code::DeadlineExceeded
        {
            m::reject("deadline");
        }
        let code = r.as_ref().map_or_else(|s| s.code(), |_| tonic::Code::Ok);
        count(self.method, &self.model, &self.version, code, self.start);
        r
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        metrics::gauge!(m::INFLIGHT).decrement(1.0);
    }
}

/// Parses `grpc-timeout` (`<digits><H|M|S|m|u|n>`) into a deadline a little before the
/// client's (5% early, at least 1 ms, at most 50 ms).
pub(crate) fn deadline_of(meta: &MetadataMap, received: Instant) -> Option<Instant> {
    let v = meta.get("grpc-timeout")?.to_str().ok()?;
    let timeout = parse_grpc_timeout(v)?;
    let margin = (timeout / 20).clamp(Duration::from_millis(1), Duration::from_millis(50));
    Some(received + timeout.saturating_sub(margin))
}

/// Parses a `grpc-timeout` header value; `None` when malformed.
pub fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (digits, unit) = v.split_at(v.len() - 1);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The sticky key of a request: `x-qattn-sticky-key` metadata, else the API key id.
pub(crate) fn sticky_key<T>(req: &Request<T>) -> Option<String> {
    req.metadata()
        .get(STICKY_KEY)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| {
            req.extensions()
                .get::<Caller>()
                .and_then(|c| c.key_id.clone())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_parsing() {
        assert_eq!(parse_grpc_timeout("100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("5"), None);
        assert_eq!(parse_grpc_timeout("1x"), None);
        assert_eq!(parse_grpc_timeout("123456789m"), None);
        assert_eq!(parse_grpc_timeout("-1m"), None);
    }

    /// The services depend on this module, never on `server` (which wires them): no import
    /// cycle between the transport modules.
    #[test]
    fn services_do_not_import_the_server_module() {
        for (file, src) in [
            ("typed.rs", include_str!("typed.rs")),
            ("oip.rs", include_str!("oip.rs")),
            ("admin.rs", include_str!("admin.rs")),
            ("ctx.rs", include_str!("ctx.rs")),
        ] {
            assert!(
                !src.contains(concat!("crate::", "server")),
                "{file} depends on server.rs; shared state belongs in ctx.rs"
            );
        }
    }
}
