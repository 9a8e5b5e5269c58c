//! Every RPC of every service answers, with the right shapes and metadata.

use crate::common::*;
use qattn_serve::proto::inference as oip_pb;
use qattn_serve::proto::qattn::v1 as pb;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_rpcs_answer() {
    let mut cfg = base_config();
    cfg.models.push(tiny("rpc", "1", "exact"));
    let mut enc = tiny("rpc-enc", "1", "stratified:4");
    enc.head = Some("none".into());
    cfg.models.push(enc);
    let server = start(cfg).await;
    let mut c = typed(&server).await;

    let info = c.info(pb::InfoRequest {}).await.unwrap().into_inner();
    assert_eq!(info.server, "qattn-serve");
    assert_eq!(info.max_batch_texts, 64);
    let names: Vec<&str> = info.models.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["rpc", "rpc-enc"]);
    let v = &info.models[0].versions[0];
    assert_eq!(
        (v.head.as_str(), v.labels.len(), v.estimator.as_str()),
        ("classification:3", 3, "exact")
    );
    assert!(info.models[0].is_default_model);

    let mut req = classify_req("rpc", "", &["a short sentence", "another one"]);
    req.inputs[1].text_pair = Some("with a pair".into());
    req.id = "r1".into();
    let r = c.classify(req).await.unwrap().into_inner();
    assert_eq!(r.id, "r1");
    assert_eq!(r.results.len(), 2);
    for res in &r.results {
        assert_eq!(res.scores.len(), 3);
        let total: f32 = res.scores.iter().map(|s| s.score).sum();
        assert!((total - 1.0).abs() < 1e-4, "probabilities sum to {total}");
        let best = res
            .scores
            .iter()
            .max_by(|a, b| a.score.total_cmp(&b.score))
            .unwrap();
        assert_eq!(res.label, best.label);
    }
    let meta = r.meta.unwrap();
    assert_eq!(
        (
            meta.model.as_str(),
            meta.version.as_str(),
            meta.estimator.as_str()
        ),
        ("rpc", "1", "exact")
    );
    let t = meta.timings.unwrap();
    assert!(t.total_us >= t.inference_us && t.inference_us > 0, "{t:?}");
    let mc = meta.mc.unwrap();
    assert!(!mc.monte_carlo && !mc.fallback && mc.samples == 0);

    // Embed on the encoder-only model (MC attention): unit-norm rows of width 32.
    let e = c
        .embed(pb::EmbedRequest {
            inputs: inputs(&["hello world"]),
            target: Some(pb::Target {
                model: "rpc-enc".into(),
                version: String::new(),
                seed: Some(3),
            }),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(e.embeddings.len(), 1);
    let row = &e.embeddings[0].values;
    assert_eq!(row.len(), 32);
    let norm: f32 = row.iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-3, "norm {norm}");
    let mc = e.meta.unwrap().mc.unwrap();
    assert!(mc.monte_carlo && mc.samples > 0 && mc.step == 3, "{mc:?}");

    // Classify on an encoder-only model is refused with a clear reason.
    let err = c
        .classify(classify_req("rpc-enc", "", &["x"]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");

    let tk = c
        .tokenize(pb::TokenizeRequest {
            inputs: inputs(&["hello world"]),
            target: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(tk.model, "rpc");
    let t0 = &tk.tokens[0];
    assert_eq!(t0.tokens.first().map(String::as_str), Some("[CLS]"));
    assert_eq!(t0.tokens.last().map(String::as_str), Some("[SEP]"));
    assert_eq!(t0.ids.len(), t0.tokens.len());

    // Unknown model / version: NOT_FOUND.
    let err = c
        .classify(classify_req("nope", "", &["x"]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    let err = c
        .classify(classify_req("rpc", "9", &["x"]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);

    // Streaming: one answer per message, in order; a bad message does not end the stream.
    let msgs = vec![
        pb::ClassifyRequest {
            id: "s1".into(),
            ..classify_req("rpc", "", &["first"])
        },
        pb::ClassifyRequest {
            id: "s2".into(),
            ..classify_req("rpc", "", &[])
        },
        pb::ClassifyRequest {
            id: "s3".into(),
            ..classify_req("rpc", "", &["third", "fourth"])
        },
    ];
    let mut stream = c
        .classify_stream(tokio_stream::iter(msgs))
        .await
        .unwrap()
        .into_inner();
    let mut got = Vec::new();
    while let Some(m) = stream.message().await.unwrap() {
        got.push(m);
    }
    assert_eq!(
        got.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(),
        ["s1", "s2", "s3"]
    );
    assert_eq!(got[0].results.len(), 1);
    assert_eq!(
        got[1].error.as_ref().unwrap().code,
        tonic::Code::InvalidArgument as i32
    );
    assert_eq!(got[2].results.len(), 2);

    // Metrics page carries the documented names.
    let page = scrape(&server).await;
    for name in [
        "qattn_requests_total",
        "qattn_request_duration_seconds_bucket",
        "qattn_inference_duration_seconds_bucket",
        "qattn_batch_size_bucket",
        "qattn_model_info",
        "qattn_mc_samples_total",
    ] {
        assert!(page.contains(name), "{name} missing from /metrics");
    }
    assert!(page.contains("method=\"Classify\"") && page.contains("status=\"OK\""));
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oip_health_and_reflection_answer() {
    let mut cfg = base_config();
    cfg.models.push(tiny("oip", "1", "exact"));
    let mut enc = tiny("oip-enc", "1", "exact");
    enc.head = Some("none".into());
    cfg.models.push(enc);
    cfg.auth.public_reflection = true;
    let server = start(cfg).await;
    let mut c = oip(&server).await;
    assert!(
        c.server_live(oip_pb::ServerLiveRequest {})
            .await
            .unwrap()
            .into_inner()
            .live
    );
    assert!(
        c.server_ready(oip_pb::ServerReadyRequest {})
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    let ready = |name: &str, version: &str| oip_pb::ModelReadyRequest {
        name: name.into(),
        version: version.into(),
    };
    assert!(
        c.model_ready(ready("oip", ""))
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    assert!(
        !c.model_ready(ready("oip", "7"))
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    let sm = c
        .server_metadata(oip_pb::ServerMetadataRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(sm.name, "qattn-serve");
    let mm = c
        .model_metadata(oip_pb::ModelMetadataRequest {
            name: "oip".into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(mm.versions, ["1"]);
    assert_eq!(mm.inputs[0].datatype, "BYTES");
    let outs: Vec<&str> = mm.outputs.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(outs, ["logits", "probabilities"]);

    // Typed reference answer for the same texts.
    let texts = ["first text", "second, longer text here"];
    let reference = typed(&server)
        .await
        .classify(classify_req("oip", "", &texts))
        .await
        .unwrap()
        .into_inner();

    let tensor = |name: &str, contents: Option<oip_pb::InferTensorContents>| {
        oip_pb::model_infer_request::InferInputTensor {
            name: name.into(),
            datatype: "BYTES".into(),
            shape: vec![2],
            parameters: Default::default(),
            contents,
        }
    };
    // bytes_contents form.
    let req = oip_pb::ModelInferRequest {
        model_name: "oip".into(),
        id: "q1".into(),
        inputs: vec![tensor(
            "text",
            Some(oip_pb::InferTensorContents {
                bytes_contents: texts.iter().map(|t| t.as_bytes().to_vec()).collect(),
                ..Default::default()
            }),
        )],
        ..Default::default()
    };
    let r = c.model_infer(req).await.unwrap().into_inner();
    assert_eq!(r.id, "q1");
    assert_eq!(r.outputs.len(), 2);
    assert_eq!(r.outputs[0].shape, [2, 3]);
    let logits: Vec<f32> = r.raw_output_contents[0]
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    for (i, res) in reference.results.iter().enumerate() {
        for (j, s) in res.scores.iter().enumerate() {
            assert!(
                (logits[i * 3 + j] - s.logit).abs() < 1e-4,
                "row {i} col {j}"
            );
        }
    }
    // raw_input_contents form, one requested output.
    let mut raw = Vec::new();
    for t in texts {
        raw.extend_from_slice(&(t.len() as u32).to_le_bytes());
        raw.extend_from_slice(t.as_bytes());
    }
    let req = oip_pb::ModelInferRequest {
        model_name: "oip".into(),
        inputs: vec![tensor("text", None)],
        outputs: vec![oip_pb::model_infer_request::InferRequestedOutputTensor {
            name: "probabilities".into(),
            parameters: Default::default(),
        }],
        raw_input_contents: vec![raw],
        ..Default::default()
    };
    let r = c.model_infer(req).await.unwrap().into_inner();
    assert_eq!(r.outputs.len(), 1);
    assert_eq!(r.outputs[0].name, "probabilities");
    let p: Vec<f32> = r.raw_output_contents[0]
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    assert!((p[0] - reference.results[0].scores[0].score).abs() < 1e-4);
    // Encoder-only model: embedding output.
    let req = oip_pb::ModelInferRequest {
        model_name: "oip-enc".into(),
        inputs: vec![oip_pb::model_infer_request::InferInputTensor {
            shape: vec![1, 1],
            ..tensor(
                "text",
                Some(oip_pb::InferTensorContents {
                    bytes_contents: vec![b"hi".to_vec()],
                    ..Default::default()
                }),
            )
        }],
        ..Default::default()
    };
    let r = c.model_infer(req).await.unwrap().into_inner();
    assert_eq!(
        (r.outputs[0].name.as_str(), r.outputs[0].shape.as_slice()),
        ("embedding", &[1i64, 32][..])
    );

    // Health: overall and per service.
    let ch = channel(&server).await;
    let mut h = tonic_health::pb::health_client::HealthClient::new(ch.clone());
    for service in [
        "",
        "qattn.v1.Inference",
        "inference.GRPCInferenceService",
        "qattn.v1.Admin",
    ] {
        let s = h
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(
            s,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
            "{service}"
        );
    }
    // Reflection (v1): lists our services.
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let mut rc = ServerReflectionClient::new(ch);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut resp = rc
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .unwrap()
        .into_inner();
    let msg = resp.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = msg.message_response else {
        panic!("unexpected reflection answer {msg:?}")
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for want in [
        "qattn.v1.Inference",
        "qattn.v1.Admin",
        "inference.GRPCInferenceService",
        "grpc.health.v1.Health",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} not in {names:?}");
    }
    server.shutdown().await.unwrap();
}
