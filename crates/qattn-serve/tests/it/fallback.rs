//! Fallback to exact attention and the circuit breaker, with an injected failing estimator.

use crate::common::*;
use qattn_serve::FailMode;
use qattn_serve::proto::qattn::v1 as pb;
use std::time::Duration;

fn fallback_of(r: &pb::ClassifyResponse) -> (String, bool, String, String) {
    let m = r.meta.clone().unwrap();
    let mc = m.mc.unwrap();
    (m.estimator, mc.fallback, mc.fallback_reason, m.version)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fallback_serves_exact_and_the_breaker_opens_and_closes() {
    let mut cfg = base_config();
    let mut mc = tiny("fb", "mc", "stratified:4");
    mc.fail_mc = Some(FailMode::Error);
    cfg.models.push(mc);
    cfg.models.push(tiny("fb", "exact", "exact"));
    cfg.fallback.breaker_failures = 3;
    cfg.fallback.breaker_window_ms = 10_000;
    cfg.fallback.breaker_open_ms = 300;
    let server = start(cfg).await;
    let mut c = typed(&server).await;
    let text = ["the same sentence"];
    let exact = c
        .classify(classify_req("fb", "exact", &text))
        .await
        .unwrap()
        .into_inner();
    let mut reasons = Vec::new();
    for _ in 0..5 {
        let r = c
            .classify(classify_req("fb", "mc", &text))
            .await
            .unwrap()
            .into_inner();
        let (est, fallback, reason, _) = fallback_of(&r);
        assert!(fallback);
        assert_eq!(est, "exact");
        // The fallback answer is the exact model's answer.
        for (a, b) in r.results[0].scores.iter().zip(&exact.results[0].scores) {
            assert!((a.logit - b.logit).abs() < 1e-5);
        }
        reasons.push(reason);
    }
    assert_eq!(
        reasons,
        ["error", "error", "error", "breaker_open", "breaker_open"]
    );
    let info = c.info(pb::InfoRequest {}).await.unwrap().into_inner();
    let breaker = |info: &pb::InfoResponse| {
        info.models[0]
            .versions
            .iter()
            .find(|v| v.version == "mc")
            .unwrap()
            .breaker
            .clone()
    };
    assert_eq!(breaker(&info), "open");
    // After open_for, a probe runs MC: it fails again -> open.
    tokio::time::sleep(Duration::from_millis(350)).await;
    let r = c
        .classify(classify_req("fb", "mc", &text))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(fallback_of(&r).2, "error");
    assert_eq!(
        breaker(&c.info(pb::InfoRequest {}).await.unwrap().into_inner()),
        "open"
    );
    // Heal the estimator: the next probe succeeds and closes the breaker.
    server
        .engine
        .resolve("fb", "mc", None)
        .unwrap()
        .set_fail_mc(None);
    tokio::time::sleep(Duration::from_millis(350)).await;
    let r = c
        .classify(classify_req("fb", "mc", &text))
        .await
        .unwrap()
        .into_inner();
    let (est, fallback, _, _) = fallback_of(&r);
    assert!(!fallback && est == "stratified:4", "{est} {fallback}");
    assert!(r.meta.unwrap().mc.unwrap().monte_carlo);
    assert_eq!(
        breaker(&c.info(pb::InfoRequest {}).await.unwrap().into_inner()),
        "closed"
    );
    let page = scrape(&server).await;
    for want in [
        "qattn_fallbacks_total{model=\"fb\",version=\"mc\",reason=\"error\"} 4",
        "qattn_fallbacks_total{model=\"fb\",version=\"mc\",reason=\"breaker_open\"} 2",
        "qattn_breaker_state{model=\"fb\",version=\"mc\"} 0",
    ] {
        assert!(page.contains(want), "{want} not in /metrics:\n{page}");
    }
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_finite_and_latency_fallbacks() {
    let mut cfg = base_config();
    let mut nan = tiny("fb2", "nan", "stratified:4");
    nan.fail_mc = Some(FailMode::Nan);
    let mut slow = tiny("fb2", "slow", "stratified:4");
    slow.fail_mc = Some(FailMode::SleepMs(120));
    cfg.models.extend([nan, slow]);
    cfg.fallback.latency_budget_ms = Some(60);
    cfg.fallback.breaker_failures = 0;
    let server = start(cfg).await;
    let mut c = typed(&server).await;
    let r = c
        .classify(classify_req("fb2", "nan", &["x"]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(fallback_of(&r).2, "non_finite");
    assert!(r.results[0].scores.iter().all(|s| s.score.is_finite()));
    let r = c
        .classify(classify_req("fb2", "slow", &["x"]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(fallback_of(&r).2, "latency");
    server.shutdown().await.unwrap();
}
