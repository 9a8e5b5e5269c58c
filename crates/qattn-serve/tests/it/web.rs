//! gRPC-web over HTTP/1.1 and CORS for browser clients.

use crate::common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn http(server: &qattn_serve::RunningServer, request: Vec<u8>) -> String {
    let mut s = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    s.write_all(&request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_web_and_cors() {
    let mut cfg = base_config();
    cfg.models.push(tiny("web", "1", "exact"));
    cfg.web.cors_origins = vec!["https://app.example".into()];
    let server = start(cfg).await;

    // Info over gRPC-web: an empty message is the 5-byte frame header alone.
    let body = [0u8, 0, 0, 0, 0];
    let mut req = format!(
        "POST /qattn.v1.Inference/Info HTTP/1.1\r\nhost: x\r\ncontent-type: application/grpc-web+proto\r\n\
         x-grpc-web: 1\r\norigin: https://app.example\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(&body);
    let resp = http(&server, req).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(
        resp.to_ascii_lowercase()
            .contains("content-type: application/grpc-web+proto"),
        "{resp}"
    );
    assert!(
        resp.to_ascii_lowercase()
            .contains("access-control-allow-origin: https://app.example"),
        "{resp}"
    );
    assert!(
        resp.contains("qattn-serve"),
        "the InfoResponse is in the body: {resp}"
    );
    assert!(
        resp.contains("grpc-status:0"),
        "trailer frame with OK: {resp}"
    );

    // CORS preflight: allowed origin echoed, other origins not.
    let preflight = |origin: &str| {
        format!(
            "OPTIONS /qattn.v1.Inference/Info HTTP/1.1\r\nhost: x\r\norigin: {origin}\r\n\
             access-control-request-method: POST\r\naccess-control-request-headers: content-type,x-grpc-web\r\n\
             connection: close\r\n\r\n"
        )
        .into_bytes()
    };
    let ok = http(&server, preflight("https://app.example"))
        .await
        .to_ascii_lowercase();
    assert!(
        ok.contains("access-control-allow-origin: https://app.example"),
        "{ok}"
    );
    let other = http(&server, preflight("https://evil.example"))
        .await
        .to_ascii_lowercase();
    assert!(!other.contains("access-control-allow-origin"), "{other}");
    server.shutdown().await.unwrap();
}
