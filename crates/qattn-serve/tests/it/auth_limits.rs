//! API keys, rate limits, request size limits, deadlines, admission control.

use crate::common::*;
use qattn_serve::FailMode;
use qattn_serve::proto::qattn::v1 as pb;
use std::time::{Duration, Instant};
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_checked_without_saying_why() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = base_config();
    cfg.models.push(tiny("auth", "1", "exact"));
    cfg.auth.api_keys_file = Some(key_file(
        dir.path(),
        "keys",
        "# data keys\nalice:s3cret-alice\nbob:s3cret-bob\n",
    ));
    cfg.auth.admin_keys_file = Some(key_file(dir.path(), "admin", "ops:adm1n-secret\n"));
    let server = start(cfg).await;
    let mut c = typed(&server).await;
    let req = || classify_req("auth", "", &["hi"]);

    let ok = c.classify(with_key(req(), Some("s3cret-alice"))).await;
    assert!(ok.is_ok(), "{ok:?}");
    let missing = c.classify(with_key(req(), None)).await.unwrap_err();
    let wrong = c
        .classify(with_key(req(), Some("s3cret-alicf")))
        .await
        .unwrap_err();
    let mut malformed = with_key(req(), None);
    malformed
        .metadata_mut()
        .insert("authorization", "Basic s3cret-alice".parse().unwrap());
    let malformed = c.classify(malformed).await.unwrap_err();
    for e in [&missing, &wrong, &malformed] {
        assert_eq!(e.code(), Code::Unauthenticated);
        assert_eq!(
            e.message(),
            missing.message(),
            "messages must not say which part failed"
        );
    }
    // The OIP endpoint is guarded too.
    let mut o = oip(&server).await;
    let e = o
        .model_infer(with_key(
            qattn_serve::proto::inference::ModelInferRequest::default(),
            None,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);

    // Admin: a data key is rejected, the admin key works, and is not a data key.
    let mut a = admin(&server).await;
    let e = a
        .list_models(with_key(pb::ListModelsRequest {}, Some("s3cret-bob")))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    let l = a
        .list_models(with_key(pb::ListModelsRequest {}, Some("adm1n-secret")))
        .await
        .unwrap();
    assert_eq!(l.into_inner().models[0].name, "auth");
    let e = c
        .classify(with_key(req(), Some("adm1n-secret")))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);

    // Health stays public by default; reflection needs a key by default.
    let ch = channel(&server).await;
    let h = tonic_health::pb::health_client::HealthClient::new(ch.clone())
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await;
    assert!(h.is_ok());
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest,
    };
    let rq = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let e = ServerReflectionClient::new(ch)
        .server_reflection_info(tokio_stream::iter(vec![rq]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_is_disabled_without_admin_keys() {
    let mut cfg = base_config();
    cfg.models.push(tiny("noadmin", "1", "exact"));
    let server = start(cfg).await;
    let e = admin(&server)
        .await
        .list_models(pb::ListModelsRequest {})
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(e.message().contains("no admin keys"), "{}", e.message());
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_per_key_with_retry_information() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = base_config();
    cfg.models.push(tiny("rl", "1", "exact"));
    cfg.auth.api_keys_file = Some(key_file(dir.path(), "keys", "a:key-a\nb:key-b\n"));
    cfg.limits.rate_limit = Some(0.5);
    cfg.limits.rate_burst = Some(3.0);
    let server = start(cfg).await;
    let mut c = typed(&server).await;
    for _ in 0..3 {
        c.tokenize(with_key(
            pb::TokenizeRequest {
                inputs: inputs(&["x"]),
                target: None,
            },
            Some("key-a"),
        ))
        .await
        .unwrap();
    }
    let e = c
        .tokenize(with_key(
            pb::TokenizeRequest {
                inputs: inputs(&["x"]),
                target: None,
            },
            Some("key-a"),
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted);
    let ms: u64 = e
        .metadata()
        .get("retry-after-ms")
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(ms > 0 && ms <= 2000, "retry-after-ms {ms}");
    assert!(e.message().contains(&format!("{ms} ms")), "{}", e.message());
    // Another key has its own bucket.
    c.tokenize(with_key(
        pb::TokenizeRequest {
            inputs: inputs(&["x"]),
            target: None,
        },
        Some("key-b"),
    ))
    .await
    .unwrap();
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_requests_name_the_limit() {
    let mut cfg = base_config();
    cfg.models.push(tiny("big", "1", "exact"));
    cfg.limits.max_batch_texts = 4;
    cfg.limits.max_text_bytes = 100;
    let server = start(cfg).await;
    let mut c = typed(&server).await;
    let e = c
        .classify(classify_req("big", "", &["a"; 5]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(
        e.message(),
        "request has 5 texts; the maximum is 4 (limits.max_batch_texts)"
    );
    let long = "x".repeat(101);
    let e = c
        .classify(classify_req("big", "", &["ok", &long]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().contains("limits.max_text_bytes") && e.message().contains("input 1"),
        "{}",
        e.message()
    );
    let e = c.classify(classify_req("big", "", &[])).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    // An input at the limit is fine (and long inputs are truncated to the model's length).
    let at = "word ".repeat(20);
    c.classify(classify_req("big", "", &[&at])).await.unwrap();
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadlines_are_honoured_and_expired_requests_do_no_work() {
    let mut cfg = base_config();
    // The MC pass sleeps 300 ms: one batch occupies the worker.
    let mut slow = tiny("slow", "1", "stratified:4");
    slow.fail_mc = Some(FailMode::SleepMs(300));
    cfg.models.push(slow);
    cfg.batching.max_batch_size = 1;
    cfg.fallback.breaker_failures = 0;
    let server = start(cfg).await;
    let c = typed(&server).await;
    // First request occupies the worker for ~300 ms.
    let mut c1 = c.clone();
    let first =
        tokio::spawn(async move { c1.classify(classify_req("slow", "", &["occupy"])).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Second one has a 100 ms deadline: it expires in the queue.
    let mut c2 = c.clone();
    let mut req = tonic::Request::new(classify_req("slow", "", &["late"]));
    req.set_timeout(Duration::from_millis(100));
    let t0 = Instant::now();
    let e = c2.classify(req).await.unwrap_err();
    assert_eq!(e.code(), Code::DeadlineExceeded, "{e:?}");
    assert!(
        t0.elapsed() < Duration::from_millis(250),
        "answered after {:?}",
        t0.elapsed()
    );
    first.await.unwrap().unwrap();
    // Let the worker finish; the expired request must not have run: only one MC batch.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let page = scrape(&server).await;
    let count = page
        .lines()
        .find(|l| l.starts_with("qattn_batch_size_count") && l.contains("model=\"slow\""))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(-1.0);
    assert_eq!(count, 1.0, "batches run for model slow:\n{page}");
    assert!(page.contains("qattn_rejections_total{reason=\"deadline\"}"));
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_control_rejects_over_max_concurrent() {
    let mut cfg = base_config();
    let mut slow = tiny("busy", "1", "stratified:4");
    slow.fail_mc = Some(FailMode::SleepMs(400));
    cfg.models.push(slow);
    cfg.limits.max_concurrent = 1;
    cfg.fallback.breaker_failures = 0;
    let server = start(cfg).await;
    let c = typed(&server).await;
    let mut c1 = c.clone();
    let first =
        tokio::spawn(async move { c1.classify(classify_req("busy", "", &["occupy"])).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let e = c
        .clone()
        .classify(classify_req("busy", "", &["second"]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted);
    assert!(
        e.message().contains("limits.max_concurrent"),
        "{}",
        e.message()
    );
    first.await.unwrap().unwrap();
    server.shutdown().await.unwrap();
}
