//! Prometheus metrics (names in docs/metrics.md) and the `/metrics` HTTP endpoint.
//!
//! The recorder is process-global (the `metrics` facade allows one); every server in a process
//! shares it, so `/metrics` of any of them shows all.

use crate::error::{Error, Result};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::net::SocketAddr;
use std::sync::OnceLock;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Requests by method, model, version and status (gRPC code name).
pub const REQUESTS_TOTAL: &str = "qattn_requests_total";
/// Total server time per request.
pub const REQUEST_DURATION: &str = "qattn_request_duration_seconds";
/// Time in the batch queue.
pub const QUEUE_DURATION: &str = "qattn_queue_duration_seconds";
/// Tokenisation time.
pub const TOKENIZE_DURATION: &str = "qattn_tokenize_duration_seconds";
/// Forward-pass time of a batch.
pub const INFERENCE_DURATION: &str = "qattn_inference_duration_seconds";
/// Requests per batch.
pub const BATCH_SIZE: &str = "qattn_batch_size";
/// Padded tokens per batch.
pub const BATCH_TOKENS: &str = "qattn_batch_tokens";
/// Requests waiting per model.
pub const QUEUE_DEPTH: &str = "qattn_queue_depth";
/// Requests being served.
pub const INFLIGHT: &str = "qattn_inflight_requests";
/// Exact-attention fallbacks by reason.
pub const FALLBACKS_TOTAL: &str = "qattn_fallbacks_total";
/// Breaker state (0 closed, 1 open, 2 half-open).
pub const BREAKER_STATE: &str = "qattn_breaker_state";
/// Monte-Carlo samples drawn (nominal).
pub const MC_SAMPLES_TOTAL: &str = "qattn_mc_samples_total";
/// Rejected requests by reason.
pub const REJECTIONS_TOTAL: &str = "qattn_rejections_total";
/// 1 per loaded version.
pub const MODEL_INFO: &str = "qattn_model_info";

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the global Prometheus recorder once (later calls return the same handle). When
/// another recorder is already installed, the handle still renders (an empty page).
pub fn handle() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let secs = [
                0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
            ];
            let counts = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];
            let tokens = [
                16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0,
            ];
            let builder = PrometheusBuilder::new();
            let builder = [
                REQUEST_DURATION,
                QUEUE_DURATION,
                TOKENIZE_DURATION,
                INFERENCE_DURATION,
            ]
            .into_iter()
            .try_fold(builder, |b, name| {
                b.set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Full(name.into()),
                    &secs,
                )
            })
            .and_then(|b| {
                b.set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Full(BATCH_SIZE.into()),
                    &counts,
                )
            })
            .and_then(|b| {
                b.set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Full(BATCH_TOKENS.into()),
                    &tokens,
                )
            })
            .expect("static, non-empty bucket lists");
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics stays empty");
            }
            describe();
            handle
        })
        .clone()
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        REQUESTS_TOTAL,
        "gRPC requests by method, model, version and status"
    );
    describe_histogram!(
        REQUEST_DURATION,
        Unit::Seconds,
        "total server time per request"
    );
    describe_histogram!(QUEUE_DURATION, Unit::Seconds, "time waiting for a batch");
    describe_histogram!(
        TOKENIZE_DURATION,
        Unit::Seconds,
        "tokenisation time per request"
    );
    describe_histogram!(INFERENCE_DURATION, Unit::Seconds, "forward pass per batch");
    describe_histogram!(BATCH_SIZE, "requests per batch");
    describe_histogram!(BATCH_TOKENS, "padded tokens per batch");
    describe_gauge!(QUEUE_DEPTH, "requests waiting in a model's batch queues");
    describe_gauge!(INFLIGHT, "requests being served");
    describe_counter!(FALLBACKS_TOTAL, "exact-attention fallbacks by reason");
    describe_gauge!(BREAKER_STATE, "0 closed, 1 open, 2 half-open");
    describe_counter!(MC_SAMPLES_TOTAL, "Monte-Carlo key samples drawn (nominal)");
    describe_counter!(
        REJECTIONS_TOTAL,
        "requests rejected before inference, by reason"
    );
    describe_gauge!(MODEL_INFO, "1 per loaded model version");
}

/// Counts a rejection (`unauthenticated`, `rate_limited`, `queue_full`, `concurrency`,
/// `too_large`, `deadline`).
pub fn reject(reason: &'static str) {
    metrics::counter!(REJECTIONS_TOTAL, "reason" => reason).increment(1);
}

/// Binds `addr` and serves `GET /metrics` (anything else: 404) until `shutdown` resolves.
/// Returns the bound address.
pub async fn serve_http(
    addr: SocketAddr,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<SocketAddr> {
    let handle = handle();
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| Error::Transport(format!("metrics listener on {addr}: {e}")))?;
    let bound = listener
        .local_addr()
        .map_err(|e| Error::Transport(format!("metrics listener: {e}")))?;
    tokio::spawn(async move {
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                accepted = listener.accept() => {
                    let Ok((mut sock, _)) = accepted else { continue };
                    let handle = handle.clone();
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 4096];
                        let n = match tokio::time::timeout(
                            std::time::Duration::from_secs(5),
                            sock.read(&mut buf),
                        ).await {
                            Ok(Ok(n)) => n,
                            _ => return,
                        };
                        let head = String::from_utf8_lossy(&buf[..n]);
                        let path = head.split_whitespace().nth(1).unwrap_or("");
                        let (status, body, ctype) = if path == "/metrics" || path.starts_with("/metrics?") {
                            ("200 OK", handle.render(), "text/plain; version=0.0.4")
                        } else {
                            ("404 Not Found", "not found; try /metrics\n".to_string(), "text/plain")
                        };
                        let resp = format!(
                            "HTTP/1.1 {status}\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                            body.len()
                        );
                        let _ = sock.write_all(resp.as_bytes()).await;
                        let _ = sock.shutdown().await;
                    });
                }
            }
        }
    });
    Ok(bound)
}
