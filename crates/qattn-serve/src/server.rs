//! Assembles the gRPC server: services, auth interceptors, rate limits, admission control,
//! deadlines, health, reflection, gRPC-web + CORS, metrics endpoint and graceful shutdown.

use crate::admin::AdminService;
use crate::auth::{KeyId, KeyStore};
use crate::config::ServeConfig;
use crate::ctx::Ctx;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::metrics as m;
use crate::oip::OipService;
use crate::proto;
use crate::ratelimit::RateLimiter;
use crate::typed::TypedService;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Status};

/// Env var with comma-separated data-plane keys.
pub const API_KEYS_ENV: &str = "QATTN_API_KEYS";
/// Env var with comma-separated admin keys.
pub const ADMIN_KEYS_ENV: &str = "QATTN_ADMIN_KEYS";
pub use crate::ctx::{Caller, STICKY_KEY, parse_grpc_timeout};

/// Metadata key (on RESOURCE_EXHAUSTED from the rate limiter) with the wait in ms.
pub const RETRY_AFTER_MS: &str = "retry-after-ms";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plane {
    Data,
    Admin,
    /// Health / reflection when not public: any data or admin key.
    Meta,
}

/// The interceptor for one service group.
#[derive(Clone)]
struct Auth {
    plane: Plane,
    keys: Option<Arc<KeyStore>>,
    admin: Option<Arc<KeyStore>>,
    limiter: Option<Arc<RateLimiter>>,
}

const UNAUTHENTICATED: &str = "missing or invalid API key (expected `authorization: Bearer <key>`)";

impl Interceptor for Auth {
    fn call(&mut self, mut req: Request<()>) -> std::result::Result<Request<()>, Status> {
        let header = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let verify =
            |ks: &Option<Arc<KeyStore>>| ks.as_ref().and_then(|k| k.verify(header.as_deref()));
        let key: Option<KeyId> = match self.plane {
            Plane::Data => match &self.keys {
                None => None,
                Some(_) => Some(verify(&self.keys).ok_or_else(unauthenticated)?),
            },
            Plane::Admin => {
                if self.admin.is_none() {
                    return Err(Status::permission_denied(
                        "admin RPCs are disabled: no admin keys configured (--admin-keys or QATTN_ADMIN_KEYS)",
                    ));
                }
                Some(verify(&self.admin).ok_or_else(unauthenticated)?)
            }
            Plane::Meta => {
                if self.keys.is_none() && self.admin.is_none() {
                    None
                } else {
                    Some(
                        verify(&self.keys)
                            .or_else(|| verify(&self.admin))
                            .ok_or_else(unauthenticated)?,
                    )
                }
            }
        };
        if self.plane == Plane::Data
            && let Some(limiter) = &self.limiter
        {
            let bucket = key.as_ref().map_or("anonymous", |k| k.as_str());
            if let Err(wait) = limiter.check(bucket, Instant::now()) {
                m::reject("rate_limited");
                let ms = wait.as_millis().max(1);
                let mut st = Status::resource_exhausted(format!(
                    "rate limit exceeded (limits.rate_limit = {}/s per key); retry in {ms} ms",
                    limiter.rate_per_sec()
                ));
                if let Ok(v) = ms.to_string().parse() {
                    st.metadata_mut().insert(RETRY_AFTER_MS, v);
                }
                return Err(st);
            }
        }
        req.extensions_mut().insert(Caller {
            key_id: key.map(|k| k.0),
        });
        Ok(req)
    }
}

fn unauthenticated() -> Status {
    m::reject("unauthenticated");
    Status::unauthenticated(UNAUTHENTICATED)
}

/// A running server.
#[derive(Debug)]
pub struct RunningServer {
    /// The bound gRPC address.
    pub addr: SocketAddr,
    /// The bound metrics address (None when disabled).
    pub metrics_addr: Option<SocketAddr>,
    /// The registry (for tests and embedding).
    pub engine: Arc<Engine>,
    stop: Option<oneshot::Sender<()>>,
    join: tokio::task::JoinHandle<Result<()>>,
}

impl RunningServer {
    /// Starts a graceful shutdown and waits for it (accepted requests finish, queues drain).
    pub async fn shutdown(mut self) -> Result<()> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        self.wait().await
    }

    /// Waits until the server has stopped (after the external shutdown signal).
    pub async fn wait(self) -> Result<()> {
        self.join
            .await
            .map_err(|e| Error::Transport(format!("server task: {e}")))?
    }
}

fn load_keys(file: Option<&std::path::Path>, env: &str) -> Result<Option<Arc<KeyStore>>> {
    let from_file = match file {
        Some(p) => Some(KeyStore::from_file(p).map_err(|e| Error::Config(e.to_string()))?),
        None => None,
    };
    let from_env = KeyStore::from_env(env).map_err(|e| Error::Config(e.to_string()))?;
    let ks = match (from_file, from_env) {
        (Some(a), Some(b)) => Some(a.merge(b)),
        (a, b) => a.or(b),
    };
    Ok(ks.filter(|k| !k.is_empty()).map(Arc::new))
}

/// Loads the configured models (blocking work off the async threads), binds, and serves until
/// `shutdown` resolves or [`RunningServer::shutdown`] is called. Then: health turns
/// NOT_SERVING, no new connections are accepted, accepted requests finish, batch queues drain.
pub async fn start(
    cfg: ServeConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<RunningServer> {
    cfg.validate()?;
    let keys = load_keys(cfg.auth.api_keys_file.as_deref(), API_KEYS_ENV)?;
    let admin = load_keys(cfg.auth.admin_keys_file.as_deref(), ADMIN_KEYS_ENV)?;
    if keys.is_none() {
        tracing::warn!("no API keys configured: the data plane is open to anyone who can connect");
    }
    if admin.is_none() {
        tracing::warn!("no admin keys configured: admin RPCs are disabled");
    }
    let limiter = cfg.limits.rate_limit.map(|r| {
        Arc::new(RateLimiter::new(
            r,
            cfg.limits.rate_burst.unwrap_or(r.max(1.0)),
        ))
    });
    let _ = m::handle();
    let engine = Arc::new(Engine::new(cfg.clone()));
    {
        let e = engine.clone();
        tokio::task::spawn_blocking(move || e.load_configured())
            .await
            .map_err(|e| Error::Internal(format!("model loading task: {e}")))??;
    }
    let host = if cfg.listen.host.contains(':') && !cfg.listen.host.starts_with('[') {
        format!("[{}]", cfg.listen.host)
    } else {
        cfg.listen.host.clone()
    };
    let listener = tokio::net::TcpListener::bind(format!("{host}:{}", cfg.listen.port))
        .await
        .map_err(|e| Error::Transport(format!("binding {host}:{}: {e}", cfg.listen.port)))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::Transport(e.to_string()))?;
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let (metrics_stop_tx, metrics_stop_rx) = oneshot::channel::<()>();
    let metrics_addr = if cfg.listen.metrics {
        let maddr: SocketAddr = format!("{host}:{}", cfg.listen.metrics_port)
            .parse()
            .map_err(|e| Error::Config(format!("listen.host {host:?}: {e}")))?;
        Some(
            m::serve_http(maddr, async move {
                let _ = metrics_stop_rx.await;
            })
            .await?,
        )
    } else {
        None
    };

    let ctx = Ctx::new(engine.clone(), cfg.limits.max_concurrent);
    let auth = |plane| Auth {
        plane,
        keys: keys.clone(),
        admin: admin.clone(),
        limiter: limiter.clone(),
    };
    let max = cfg.limits.max_message_bytes;
    let typed =
        proto::qattn::v1::inference_server::InferenceServer::new(TypedService::new(ctx.clone()))
            .max_decoding_message_size(max);
    let oip = proto::inference::grpc_inference_service_server::GrpcInferenceServiceServer::new(
        OipService::new(ctx.clone()),
    )
    .max_decoding_message_size(max);
    let adm = proto::qattn::v1::admin_server::AdminServer::new(AdminService::new(ctx.clone()))
        .max_decoding_message_size(max);

    let (reporter, health) = tonic_health::server::health_reporter();
    use tonic_health::ServingStatus;
    reporter
        .set_service_status("", ServingStatus::Serving)
        .await;
    for name in [
        "qattn.v1.Inference",
        "qattn.v1.Admin",
        "inference.GRPCInferenceService",
    ] {
        reporter
            .set_service_status(name, ServingStatus::Serving)
            .await;
    }
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| Error::Internal(format!("reflection: {e}")))?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| Error::Internal(format!("reflection: {e}")))?;

    let mut routes = tonic::service::Routes::builder();
    routes.add_service(InterceptedService::new(typed, auth(Plane::Data)));
    routes.add_service(InterceptedService::new(oip, auth(Plane::Data)));
    routes.add_service(InterceptedService::new(adm, auth(Plane::Admin)));
    if cfg.auth.public_health {
        routes.add_service(health);
    } else {
        routes.add_service(InterceptedService::new(health, auth(Plane::Meta)));
    }
    if cfg.auth.public_reflection {
        routes.add_service(reflection_v1);
        routes.add_service(reflection_v1alpha);
    } else {
        routes.add_service(InterceptedService::new(reflection_v1, auth(Plane::Meta)));
        routes.add_service(InterceptedService::new(
            reflection_v1alpha,
            auth(Plane::Meta),
        ));
    }
    let routes = routes.routes();

    let cors = cors_layer(&cfg.web.cors_origins)?;
    // TCP_NODELAY on every accepted connection: a response is written as several HTTP/2 frames
    // (headers, data, trailers), and with Nagle's algorithm the last one waits for the client's
    // delayed ACK — tens of milliseconds per unary call once the body exceeds one small segment.
    // (`Server::tcp_nodelay` only applies to listeners tonic binds itself.)
    let incoming = tokio_stream::StreamExt::map(
        tokio_stream::wrappers::TcpListenerStream::new(listener),
        |conn| {
            if let Ok(stream) = &conn
                && let Err(e) = stream.set_nodelay(true)
            {
                tracing::warn!("could not set TCP_NODELAY on an accepted connection: {e}");
            }
            conn
        },
    );
    let engine2 = engine.clone();
    let signal = async move {
        tokio::select! {
            _ = shutdown => {},
            _ = stop_rx => {},
        }
        tracing::info!("shutdown requested: refusing new connections, finishing accepted requests");
        reporter
            .set_service_status("", ServingStatus::NotServing)
            .await;
        for name in [
            "qattn.v1.Inference",
            "qattn.v1.Admin",
            "inference.GRPCInferenceService",
        ] {
            reporter
                .set_service_status(name, ServingStatus::NotServing)
                .await;
        }
    };
    let server = tonic::transport::Server::builder()
        .accept_http1(cfg.web.enabled)
        .layer(cors)
        .layer(tonic_web::GrpcWebLayer::new())
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming, signal);
    let join = tokio::spawn(async move {
        let r = server
            .await
            .map_err(|e| Error::Transport(format!("gRPC server: {e}")));
        engine2.shutdown().await;
        let _ = metrics_stop_tx.send(());
        tracing::info!("server stopped; batch queues drained");
        r
    });
    Ok(RunningServer {
        addr,
        metrics_addr,
        engine,
        stop: Some(stop_tx),
        join,
    })
}

fn cors_layer(origins: &[String]) -> Result<tower_http::cors::CorsLayer> {
    use tower_http::cors::{AllowOrigin, Any, CorsLayer};
    let layer = CorsLayer::new()
        .allow_methods([http::Method::POST, http::Method::OPTIONS])
        .allow_headers(Any)
        .expose_headers([
            http::HeaderName::from_static("grpc-status"),
            http::HeaderName::from_static("grpc-message"),
            http::HeaderName::from_static("grpc-status-details-bin"),
        ])
        .max_age(Duration::from_secs(86_400));
    if origins.iter().any(|o| o == "*") {
        return Ok(layer.allow_origin(Any));
    }
    let list = origins
        .iter()
        .map(|o| {
            o.parse::<http::HeaderValue>()
                .map_err(|e| Error::Config(format!("web.cors_origins: {o:?}: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(layer.allow_origin(AllowOrigin::list(list)))
}
