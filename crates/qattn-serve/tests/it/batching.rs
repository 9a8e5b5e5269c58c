//! Concurrent clients get their own answers out of batched inference.

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_clients_get_unmixed_answers() {
    let mut cfg = base_config();
    cfg.models.push(tiny("batch", "1", "exact"));
    cfg.batching.max_wait_ms = 30;
    cfg.batching.max_batch_size = 16;
    let server = start(cfg).await;
    let c = typed(&server).await;
    // Distinct texts of different lengths (so padding differs inside a batch).
    let texts: Vec<String> = (0..24)
        .map(|i| format!("request number {i} {}", "padding words ".repeat(i % 5)))
        .collect();
    // Reference: each alone.
    let mut reference = Vec::new();
    for t in &texts {
        let r = c
            .clone()
            .classify(classify_req("batch", "", &[t]))
            .await
            .unwrap()
            .into_inner();
        reference.push(
            r.results[0]
                .scores
                .iter()
                .map(|s| s.logit)
                .collect::<Vec<f32>>(),
        );
    }
    // Concurrently, twice over, with different orders of arrival.
    let mut handles = Vec::new();
    for round in 0..2 {
        for (i, t) in texts.iter().enumerate() {
            let mut c = c.clone();
            let t = t.clone();
            handles.push(tokio::spawn(async move {
                if round == 1 {
                    tokio::time::sleep(std::time::Duration::from_millis((i % 3) as u64)).await;
                }
                let r = c
                    .classify(classify_req("batch", "", &[&t]))
                    .await
                    .unwrap()
                    .into_inner();
                (
                    i,
                    r.results[0]
                        .scores
                        .iter()
                        .map(|s| s.logit)
                        .collect::<Vec<f32>>(),
                )
            }));
        }
    }
    for h in handles {
        let (i, got) = h.await.unwrap();
        for (a, b) in got.iter().zip(&reference[i]) {
            assert!(
                (a - b).abs() < 1e-4,
                "request {i}: batched {got:?} vs alone {:?}",
                reference[i]
            );
        }
    }
    // Batching did happen: more requests than batches for this model.
    let page = scrape(&server).await;
    let metric = |name: &str| {
        page.lines()
            .find(|l| l.starts_with(name) && l.contains("model=\"batch\""))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap()
    };
    let (batches, requests) = (
        metric("qattn_batch_size_count"),
        metric("qattn_batch_size_sum"),
    );
    assert_eq!(requests, 24.0 + 48.0);
    assert!(
        batches < requests,
        "{batches} batches for {requests} requests: nothing was batched"
    );
    server.shutdown().await.unwrap();
}
