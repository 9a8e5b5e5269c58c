//! Shared helpers: a server with the tiny model, clients, requests with keys.

use qattn_serve::proto::inference::grpc_inference_service_client::GrpcInferenceServiceClient;
use qattn_serve::proto::qattn::v1 as pb;
use qattn_serve::{ModelConfig, RunningServer, ServeConfig};
use std::path::PathBuf;
use tonic::Request;
use tonic::transport::Channel;

pub(crate) const TINY: &str = "synthetic/bert-tiny-random-h32";

fn data_dir() -> PathBuf {
    std::env::var_os("QATTN_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/data"))
        })
}

/// The read-only Hugging Face cache with the test models.
pub(crate) fn hf_cache() -> PathBuf {
    let p = std::env::var_os("QATTN_HF_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| data_dir().join("hf"));
    assert!(
        p.is_dir(),
        "{} not found: set QATTN_HF_CACHE or QATTN_DATA_DIR",
        p.display()
    );
    p
}

/// A tiny-model version: `name:version` with `attention` and a 3-class head.
pub(crate) fn tiny(name: &str, version: &str, attention: &str) -> ModelConfig {
    let mut m = ModelConfig::from_arg(&format!("{TINY}={name}:{version}")).unwrap();
    m.attention = Some(attention.into());
    m.head = Some("classification:3".into());
    m
}

/// A config on 127.0.0.1:0 with metrics on an ephemeral port, offline cache, no models.
pub(crate) fn base_config() -> ServeConfig {
    let mut cfg = ServeConfig::default();
    cfg.listen.host = "127.0.0.1".into();
    cfg.listen.port = 0;
    cfg.listen.metrics_port = 0;
    cfg.hub.cache_dir = Some(hf_cache());
    cfg.hub.offline = true;
    cfg
}

pub(crate) async fn start(cfg: ServeConfig) -> RunningServer {
    qattn_serve::start(cfg, std::future::pending())
        .await
        .expect("server starts")
}

pub(crate) async fn channel(server: &RunningServer) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect()
        .await
        .expect("connect")
}

pub(crate) async fn typed(
    server: &RunningServer,
) -> pb::inference_client::InferenceClient<Channel> {
    pb::inference_client::InferenceClient::new(channel(server).await)
}

pub(crate) async fn admin(server: &RunningServer) -> pb::admin_client::AdminClient<Channel> {
    pb::admin_client::AdminClient::new(channel(server).await)
}

pub(crate) async fn oip(server: &RunningServer) -> GrpcInferenceServiceClient<Channel> {
    GrpcInferenceServiceClient::new(channel(server).await)
}

/// A request with `authorization: Bearer <key>` (when given).
pub(crate) fn with_key<T>(msg: T, key: Option<&str>) -> Request<T> {
    let mut r = Request::new(msg);
    if let Some(k) = key {
        r.metadata_mut()
            .insert("authorization", format!("Bearer {k}").parse().unwrap());
    }
    r
}

pub(crate) fn inputs(texts: &[&str]) -> Vec<pb::TextInput> {
    texts
        .iter()
        .map(|t| pb::TextInput {
            text: t.to_string(),
            text_pair: None,
        })
        .collect()
}

pub(crate) fn classify_req(model: &str, version: &str, texts: &[&str]) -> pb::ClassifyRequest {
    pb::ClassifyRequest {
        inputs: inputs(texts),
        target: Some(pb::Target {
            model: model.into(),
            version: version.into(),
            seed: None,
        }),
        id: String::new(),
    }
}

/// Writes a key file into `dir` and returns its path.
pub(crate) fn key_file(dir: &std::path::Path, name: &str, lines: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, lines).unwrap();
    p
}

/// The metrics page of a server.
pub(crate) async fn scrape(server: &RunningServer) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = server.metrics_addr.expect("metrics enabled");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}
