//! A/B splits, sticky keys, admin RPCs, manual and automatic rollback.

use crate::common::*;
use qattn_serve::FailMode;
use qattn_serve::proto::qattn::v1 as pb;
use tonic::Code;

async fn version_of(
    c: &mut pb::inference_client::InferenceClient<tonic::transport::Channel>,
    model: &str,
    sticky: Option<&str>,
) -> String {
    let mut req = tonic::Request::new(pb::TokenizeRequest {
        inputs: inputs(&["x"]),
        target: Some(pb::Target {
            model: model.into(),
            ..Default::default()
        }),
    });
    if let Some(k) = sticky {
        req.metadata_mut()
            .insert("x-qattn-sticky-key", k.parse().unwrap());
    }
    c.tokenize(req).await.unwrap().into_inner().version
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ab_split_proportions_and_sticky_keys() {
    let mut cfg = base_config();
    let mut a = tiny("ab", "a", "exact");
    a.weight = Some(0.7);
    let mut b = tiny("ab", "b", "exact");
    b.weight = Some(0.3);
    cfg.models.extend([a, b]);
    let server = start(cfg).await;
    let mut c = typed(&server).await;
    let n = 600u32;
    let mut nb = 0u32;
    for _ in 0..n {
        if version_of(&mut c, "ab", None).await == "b" {
            nb += 1;
        }
    }
    // Binomial(600, 0.3): mean 180, sd 11.2; the two-sided 99.9% interval is ±3.29 sd.
    let (mean, sd) = (n as f64 * 0.3, (n as f64 * 0.3 * 0.7).sqrt());
    let (lo, hi) = (mean - 3.29 * sd, mean + 3.29 * sd);
    assert!(
        (lo..=hi).contains(&(nb as f64)),
        "{nb} of {n} went to b; 99.9% interval [{lo:.0}, {hi:.0}]"
    );
    // Sticky: the same key always lands on the same version; many keys reach both.
    let mut seen = std::collections::BTreeSet::new();
    for user in 0..40 {
        let key = format!("user-{user}");
        let first = version_of(&mut c, "ab", Some(&key)).await;
        for _ in 0..4 {
            assert_eq!(
                version_of(&mut c, "ab", Some(&key)).await,
                first,
                "{key} moved"
            );
        }
        seen.insert(first);
    }
    assert_eq!(seen.len(), 2, "40 sticky keys all on {seen:?}");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_rpcs_and_manual_rollback() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = base_config();
    cfg.models.push(tiny("adm", "1", "exact"));
    cfg.auth.admin_keys_file = Some(key_file(dir.path(), "admin", "ops:opsecret\n"));
    let server = start(cfg).await;
    let mut a = admin(&server).await;
    let mut c = typed(&server).await;
    let key = Some("opsecret");
    let loaded = a
        .load_model(with_key(
            pb::LoadModelRequest {
                name: "adm".into(),
                version: "2".into(),
                source: TINY.into(),
                attention: "stratified:4".into(),
                head: "classification:3".into(),
                ..Default::default()
            },
            key,
        ))
        .await
        .unwrap()
        .into_inner()
        .model
        .unwrap();
    assert_eq!(loaded.versions.len(), 2);
    assert_eq!(loaded.default_version, "1");
    let e = a
        .load_model(with_key(
            pb::LoadModelRequest {
                name: "adm".into(),
                version: "3".into(),
                source: "/no/such/dir".into(),
                ..Default::default()
            },
            key,
        ))
        .await
        .unwrap_err();
    assert_ne!(e.code(), Code::Ok);
    assert!(e.message().contains("/no/such/dir"), "{}", e.message());

    a.set_default(with_key(
        pb::SetDefaultRequest {
            name: "adm".into(),
            version: "2".into(),
        },
        key,
    ))
    .await
    .unwrap();
    assert_eq!(version_of(&mut c, "adm", None).await, "2");
    let rb = a
        .rollback(with_key(pb::RollbackRequest { name: "adm".into() }, key))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rb.restored, "1");
    assert_eq!(version_of(&mut c, "adm", None).await, "1");

    let split = a
        .set_split(with_key(
            pb::SetSplitRequest {
                name: "adm".into(),
                weights: vec![
                    pb::VersionWeight {
                        version: "1".into(),
                        weight: 1.0,
                    },
                    pb::VersionWeight {
                        version: "2".into(),
                        weight: 1.0,
                    },
                ],
                monitor: false,
            },
            key,
        ))
        .await
        .unwrap()
        .into_inner()
        .model
        .unwrap();
    assert!(split.versions.iter().all(|v| (v.weight - 0.5).abs() < 1e-9));
    let e = a
        .set_split(with_key(
            pb::SetSplitRequest {
                name: "adm".into(),
                weights: vec![pb::VersionWeight {
                    version: "9".into(),
                    weight: 1.0,
                }],
                monitor: false,
            },
            key,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    // A version in the split cannot be unloaded; after SetDefault(1) version 2 can.
    let e = a
        .unload_model(with_key(
            pb::UnloadModelRequest {
                name: "adm".into(),
                version: "2".into(),
            },
            key,
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    a.set_default(with_key(
        pb::SetDefaultRequest {
            name: "adm".into(),
            version: "1".into(),
        },
        key,
    ))
    .await
    .unwrap();
    a.unload_model(with_key(
        pb::UnloadModelRequest {
            name: "adm".into(),
            version: "2".into(),
        },
        key,
    ))
    .await
    .unwrap();
    let list = a
        .list_models(with_key(pb::ListModelsRequest {}, key))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.models[0].versions.len(), 1);
    let e = c
        .classify(classify_req("adm", "2", &["x"]))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn automatic_rollback_when_the_promoted_version_fails() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = base_config();
    cfg.models.push(tiny("auto", "1", "exact"));
    let mut bad = tiny("auto", "2", "stratified:4");
    bad.fail_mc = Some(FailMode::Error);
    cfg.models.push(bad);
    cfg.auth.admin_keys_file = Some(key_file(dir.path(), "admin", "ops:opsecret\n"));
    cfg.rollout.min_requests = 5;
    cfg.rollout.error_rate_threshold = 0.5;
    cfg.fallback.breaker_failures = 0;
    let server = start(cfg).await;
    let mut a = admin(&server).await;
    let mut c = typed(&server).await;
    a.set_split(with_key(
        pb::SetSplitRequest {
            name: "auto".into(),
            weights: vec![pb::VersionWeight {
                version: "2".into(),
                weight: 1.0,
            }],
            monitor: true,
        },
        Some("opsecret"),
    ))
    .await
    .unwrap();
    let mut versions = Vec::new();
    for _ in 0..8 {
        let r = c
            .classify(classify_req("auto", "", &["x"]))
            .await
            .unwrap()
            .into_inner();
        let m = r.meta.unwrap();
        versions.push((m.version, m.mc.unwrap().fallback));
    }
    // Five failing (fallback) answers from version 2, then version 1 only.
    let expect: Vec<(String, bool)> = (0..8)
        .map(|i| {
            if i < 5 {
                ("2".into(), true)
            } else {
                ("1".into(), false)
            }
        })
        .collect();
    assert_eq!(versions, expect);
    let info = c.info(pb::InfoRequest {}).await.unwrap().into_inner();
    assert_eq!(info.models[0].default_version, "1");
    server.shutdown().await.unwrap();
}

/// A rollout window too long for a `Duration` (possible only in a configuration built in code;
/// files are refused at load) makes a monitored SetSplit / SetDefault fail with an error naming
/// the key, and leaves the routing exactly as it was: nothing half-applied, no panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_rollout_window_is_refused_before_the_routing_changes() {
    let mut cfg = base_config();
    cfg.rollout.window_s = 1e20;
    let err = cfg.validate().unwrap_err().to_string();
    assert!(err.contains("rollout.window_s"), "{err}");
    let engine = qattn_serve::engine::Engine::new(cfg);
    engine.load_version(&tiny("w", "a", "exact")).unwrap();
    engine.load_version(&tiny("w", "b", "exact")).unwrap();
    engine.set_default("w", "a", false).unwrap();
    let snapshot = |e: &qattn_serve::engine::Engine| {
        let m = e.model("w").unwrap();
        let weights: Vec<(String, f64)> = m
            .versions
            .iter()
            .map(|(v, w)| (v.version.clone(), *w))
            .collect();
        (m.default, weights)
    };
    let before = snapshot(&engine);
    let err = engine
        .set_split("w", vec![("a".into(), 0.1), ("b".into(), 0.9)], true)
        .unwrap_err()
        .to_string();
    assert!(err.contains("rollout.window_s"), "{err}");
    assert_eq!(snapshot(&engine), before);
    let err = engine.set_default("w", "b", true).unwrap_err().to_string();
    assert!(err.contains("rollout.window_s"), "{err}");
    assert_eq!(snapshot(&engine), before);
    // Rollback has nothing recorded to go back to: the failed calls changed no history.
    assert!(engine.rollback("w").is_err());
    // Unmonitored changes need no window and still work.
    engine.set_default("w", "b", false).unwrap();
    assert_eq!(snapshot(&engine).0, "b");
}
