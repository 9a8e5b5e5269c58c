//! `qattn serve` (the gRPC server) and `qattn health` (a gRPC health-check client).

use anyhow::{Context, Result, bail};
use clap::{Args as ClapArgs, ValueEnum};
use qattn_serve::{ModelConfig, ServeConfig};
use std::path::PathBuf;

/// Log output format.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub(crate) enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// `qattn serve` options; each overrides the matching serve.toml setting.
#[derive(ClapArgs, Debug)]
pub(crate) struct Args {
    /// A model to serve: Hub id or save_pretrained directory, optionally `=NAME` or
    /// `=NAME:VERSION` (repeatable; the first is the default model).
    #[arg(long = "model", value_name = "ID_OR_DIR[=NAME[:VERSION]]")]
    models: Vec<String>,
    /// serve.toml with every setting (see docs/serve.example.toml).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Interface to bind [default: 0.0.0.0].
    #[arg(long)]
    host: Option<String>,
    /// gRPC port (0: any free port) [default: 50051].
    #[arg(long)]
    port: Option<u16>,
    /// Prometheus /metrics port (0: any free port) [default: 9000].
    #[arg(long)]
    metrics_port: Option<u16>,
    /// Do not serve metrics.
    #[arg(long)]
    no_metrics: bool,
    /// Data-plane API keys file (`id:secret` or `secret` per line); also env QATTN_API_KEYS.
    #[arg(long)]
    api_keys: Option<PathBuf>,
    /// Admin API keys file; also env QATTN_ADMIN_KEYS. Without admin keys admin RPCs are off.
    #[arg(long)]
    admin_keys: Option<PathBuf>,
    /// Attention spec for the --model models (e.g. exact, stratified:32).
    #[arg(long)]
    attention: Option<String>,
    /// Weight precision for the --model models: f32, f16 or int8.
    #[arg(long)]
    precision: Option<String>,
    /// Device for the --model models, and for the serve.toml models that set no `device`:
    /// cpu, cuda or cuda:N (checked at start-up).
    #[arg(long)]
    device: Option<String>,
    /// Task head for the --model models: classification:N, regression or none.
    #[arg(long)]
    head: Option<String>,
    /// Hugging Face cache directory.
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Read the model cache only, never download.
    #[arg(long)]
    offline: bool,
    /// Log format.
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Most requests per batch.
    #[arg(long)]
    max_batch_size: Option<usize>,
    /// Padded-token budget per batch.
    #[arg(long)]
    max_batch_tokens: Option<usize>,
    /// Longest wait for a batch to fill, ms.
    #[arg(long)]
    max_wait_ms: Option<u64>,
    /// Requests served at once (more: RESOURCE_EXHAUSTED; 0 = unlimited).
    #[arg(long)]
    max_concurrent: Option<usize>,
    /// Per-key rate limit, requests/s.
    #[arg(long)]
    rate_limit: Option<f64>,
    /// Per-key burst (default max(1, rate)).
    #[arg(long)]
    rate_burst: Option<f64>,
    /// Most texts per request.
    #[arg(long)]
    max_batch_texts: Option<usize>,
    /// Allowed gRPC-web CORS origin (repeatable; `*` for any).
    #[arg(long = "cors-origin")]
    cors_origins: Vec<String>,
    /// Monte-Carlo latency budget in ms (slower passes fall back to exact).
    #[arg(long)]
    latency_budget_ms: Option<u64>,
    /// TESTING AID: make the Monte-Carlo path of the --model models fail (error, nan,
    /// sleep:MS) to exercise fallback and the breaker. Never use in production.
    #[arg(long, hide = true)]
    fail_mc: Option<String>,
}

fn init_tracing(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("QATTN_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

fn build_config(a: &Args) -> Result<ServeConfig> {
    let mut cfg = match &a.config {
        Some(p) => ServeConfig::from_file(p)?,
        None => ServeConfig::default(),
    };
    if let Some(d) = &a.device {
        for m in cfg.models.iter_mut().filter(|m| m.device.is_none()) {
            m.device = Some(d.clone());
        }
    }
    let fail = a
        .fail_mc
        .as_deref()
        .map(qattn_serve::FailMode::parse)
        .transpose()?;
    for spec in &a.models {
        let mut m = ModelConfig::from_arg(spec)?;
        m.attention = a.attention.clone();
        m.precision = a.precision.clone();
        m.device = a.device.clone();
        m.head = a.head.clone();
        m.fail_mc = fail;
        cfg.models.push(m);
    }
    if cfg.models.is_empty() {
        bail!("no model to serve: give --model ID_OR_DIR[=NAME] or [[models]] in --config");
    }
    if let Some(h) = &a.host {
        cfg.listen.host = h.clone();
    }
    if let Some(p) = a.port {
        cfg.listen.port = p;
    }
    if let Some(p) = a.metrics_port {
        cfg.listen.metrics_port = p;
    }
    if a.no_metrics {
        cfg.listen.metrics = false;
    }
    if a.api_keys.is_some() {
        cfg.auth.api_keys_file = a.api_keys.clone();
    }
    if a.admin_keys.is_some() {
        cfg.auth.admin_keys_file = a.admin_keys.clone();
    }
    if a.cache_dir.is_some() {
        cfg.hub.cache_dir = a.cache_dir.clone();
    }
    cfg.hub.offline |= a.offline;
    if let Some(v) = a.max_batch_size {
        cfg.batching.max_batch_size = v;
    }
    if let Some(v) = a.max_batch_tokens {
        cfg.batching.max_batch_tokens = v;
    }
    if let Some(v) = a.max_wait_ms {
        cfg.batching.max_wait_ms = v;
    }
    if let Some(v) = a.max_concurrent {
        cfg.limits.max_concurrent = v;
    }
    if a.rate_limit.is_some() {
        cfg.limits.rate_limit = a.rate_limit;
    }
    if a.rate_burst.is_some() {
        cfg.limits.rate_burst = a.rate_burst;
    }
    if let Some(v) = a.max_batch_texts {
        cfg.limits.max_batch_texts = v;
    }
    if !a.cors_origins.is_empty() {
        cfg.web.cors_origins = a.cors_origins.clone();
    }
    if a.latency_budget_ms.is_some() {
        cfg.fallback.latency_budget_ms = a.latency_budget_ms;
    }
    cfg.validate()?;
    Ok(cfg)
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

pub(crate) fn run(a: Args) -> Result<()> {
    init_tracing(a.log_format);
    // Each batch allocates and frees the same activation buffers: keep them in the heap.
    qattn_model::memory::retain_freed_memory();
    let cfg = build_config(&a)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("qattn-serve")
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let server = qattn_serve::start(cfg, shutdown_signal()).await?;
        let metrics = server
            .metrics_addr
            .map(|a| format!("metrics on http://{a}/metrics"))
            .unwrap_or_else(|| "metrics off".into());
        // Tests and benchmarks parse this line.
        println!("qattn-serve listening on {} ({metrics})", server.addr);
        use std::io::Write;
        let _ = std::io::stdout().flush();
        server.wait().await?;
        println!("qattn-serve stopped");
        Ok::<(), anyhow::Error>(())
    })
}

/// `qattn health` options.
#[derive(ClapArgs, Debug)]
pub(crate) struct HealthArgs {
    /// Server address.
    #[arg(long, default_value = "127.0.0.1:50051")]
    addr: String,
    /// Service to check (empty: the whole server), e.g. qattn.v1.Inference.
    #[arg(long, default_value = "")]
    service: String,
    /// Give up after this many seconds (finite, > 0, at most 3600).
    #[arg(long, default_value_t = 5.0, value_parser = crate::bounds::timeout_secs)]
    timeout: f64,
}

/// Exit 0 when the service is SERVING, 1 otherwise (the Docker HEALTHCHECK uses this).
pub(crate) fn health(a: HealthArgs) -> Result<()> {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    // In (0, 3600] by its parser; try_ keeps a bad value an error rather than a panic.
    let timeout = std::time::Duration::try_from_secs_f64(a.timeout)
        .with_context(|| format!("--timeout {}", a.timeout))?;
    let uri = if a.addr.contains("://") {
        a.addr.clone()
    } else {
        format!("http://{}", a.addr)
    };
    let status = rt.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(uri.clone())
            .with_context(|| format!("--addr {uri:?}"))?
            .connect_timeout(timeout)
            .timeout(timeout)
            .connect()
            .await
            .with_context(|| format!("connecting to {uri}"))?;
        let resp = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: a.service.clone(),
            })
            .await
            .with_context(|| format!("health check of {:?} at {uri}", a.service))?;
        Ok::<_, anyhow::Error>(resp.into_inner().status)
    })?;
    let name = ServingStatus::try_from(status)
        .map(|s| s.as_str_name().to_string())
        .unwrap_or_else(|_| format!("status {status}"));
    println!("{name}");
    if status != ServingStatus::Serving as i32 {
        bail!(
            "{:?} is {name}",
            if a.service.is_empty() {
                "server"
            } else {
                &a.service
            }
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        serve: Args,
    }

    fn config(args: &[&str]) -> ServeConfig {
        let cli = Cli::try_parse_from(std::iter::once("serve").chain(args.iter().copied()))
            .expect("arguments parse");
        build_config(&cli.serve).expect("config builds")
    }

    #[test]
    fn device_flag_sets_flag_models_and_config_models_without_a_device() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("serve.toml");
        std::fs::write(
            &path,
            "[[models]]\nname = \"a\"\nsource = \"x/a\"\ndevice = \"cpu\"\n\n\
             [[models]]\nname = \"b\"\nsource = \"x/b\"\n",
        )
        .unwrap();
        let p = path.to_str().unwrap();
        let cfg = config(&["--config", p, "--model", "x/c=c", "--device", "cuda:1"]);
        let device = |name: &str| {
            cfg.models
                .iter()
                .find(|m| m.name == name)
                .unwrap_or_else(|| panic!("model {name}"))
                .device
                .clone()
        };
        assert_eq!(
            device("a").as_deref(),
            Some("cpu"),
            "an explicit device stays"
        );
        assert_eq!(device("b").as_deref(), Some("cuda:1"));
        assert_eq!(device("c").as_deref(), Some("cuda:1"));
        // Without the flag nothing is set: the model's own default (cpu) applies.
        let cfg = config(&["--config", p]);
        assert_eq!(cfg.models[1].device, None);
    }
}
