//! Bad input never panics: property tests of OIP request decoding, and odd texts through the
//! server.

use crate::common::*;
use proptest::prelude::*;
use qattn_serve::config::LimitsConfig;
use qattn_serve::oip::decode_text_inputs;
use qattn_serve::proto::inference as pb;
use qattn_serve::proto::inference::model_infer_request::InferInputTensor;

fn tensor_strategy() -> impl Strategy<Value = InferInputTensor> {
    (
        prop_oneof![
            Just("text".to_string()),
            Just("text_pair".to_string()),
            "[a-z_]{0,6}"
        ],
        prop_oneof![
            Just("BYTES".to_string()),
            Just("FP32".to_string()),
            Just("INT64".to_string()),
            "[A-Z0-9]{0,5}"
        ],
        prop::collection::vec(prop_oneof![-3i64..5, Just(i64::MAX), Just(i64::MIN)], 0..4),
        prop::option::of((
            prop::collection::vec(prop::collection::vec(any::<u8>(), 0..12), 0..6),
            prop::collection::vec(any::<f32>(), 0..3),
        )),
    )
        .prop_map(|(name, datatype, shape, contents)| InferInputTensor {
            name,
            datatype,
            shape,
            parameters: Default::default(),
            contents: contents.map(|(bytes, fp32)| pb::InferTensorContents {
                bytes_contents: bytes,
                fp32_contents: fp32,
                ..Default::default()
            }),
        })
}

fn raw_strategy() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..40),
        // Well-formed length-prefixed elements.
        prop::collection::vec(prop::collection::vec(any::<u8>(), 0..8), 0..5).prop_map(|els| {
            let mut out = Vec::new();
            for e in els {
                out.extend_from_slice(&(e.len() as u32).to_le_bytes());
                out.extend_from_slice(&e);
            }
            out
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn oip_decoding_never_panics(
        inputs in prop::collection::vec(tensor_strategy(), 0..3),
        raw in prop::collection::vec(raw_strategy(), 0..3),
    ) {
        let req = pb::ModelInferRequest { inputs: inputs.clone(), raw_input_contents: raw, ..Default::default() };
        let limits = LimitsConfig { max_batch_texts: 4, max_text_bytes: 6, ..LimitsConfig::default() };
        match decode_text_inputs(&req, &limits) {
            Ok(texts) => {
                // Accepted only when well-formed: a BYTES "text" tensor of 1..=4 elements.
                let t = req.inputs.iter().find(|t| t.name == "text").expect("text present");
                prop_assert_eq!(t.datatype.as_str(), "BYTES");
                prop_assert!(!texts.is_empty() && texts.len() <= 4);
                prop_assert!(texts.iter().all(|(a, b)| a.len() <= 6 && b.as_ref().is_none_or(|b| b.len() <= 6)));
                prop_assert!(req.inputs.iter().all(|t| t.name == "text" || t.name == "text_pair"));
            }
            Err(st) => {
                prop_assert_eq!(st.code(), tonic::Code::InvalidArgument);
                prop_assert!(!st.message().is_empty());
            }
        }
    }
}

#[test]
fn oip_errors_name_the_tensor() {
    let limits = LimitsConfig::default();
    let t = |name: &str, dt: &str, shape: Vec<i64>| InferInputTensor {
        name: name.into(),
        datatype: dt.into(),
        shape,
        parameters: Default::default(),
        contents: Some(pb::InferTensorContents {
            bytes_contents: vec![b"a".to_vec()],
            ..Default::default()
        }),
    };
    let msg = |inputs: Vec<InferInputTensor>| {
        decode_text_inputs(
            &pb::ModelInferRequest {
                inputs,
                ..Default::default()
            },
            &limits,
        )
        .unwrap_err()
        .message()
        .to_string()
    };
    assert!(msg(vec![t("text", "FP32", vec![1])]).contains("input \"text\": datatype \"FP32\""));
    assert!(msg(vec![t("text", "BYTES", vec![1, 2])]).contains("input \"text\": shape [1, 2]"));
    assert!(
        msg(vec![t("text", "BYTES", vec![3])])
            .contains("bytes_contents has 1 elements but the shape says 3")
    );
    assert!(msg(vec![t("image", "BYTES", vec![1])]).contains("unknown input tensor \"image\""));
    assert!(msg(vec![t("text_pair", "BYTES", vec![1])]).contains("missing input tensor \"text\""));
    let mut bad_utf8 = t("text", "BYTES", vec![1]);
    bad_utf8.contents = Some(pb::InferTensorContents {
        bytes_contents: vec![vec![0xff, 0xfe]],
        ..Default::default()
    });
    assert!(msg(vec![bad_utf8]).contains("not valid UTF-8"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_texts_never_break_the_server() {
    let mut cfg = base_config();
    cfg.models.push(tiny("odd", "1", "stratified:4"));
    cfg.limits.max_text_bytes = 200_000;
    let server = start(cfg).await;
    let mut c = typed(&server).await;
    let huge = "overflow ".repeat(20_000);
    let cases: Vec<String> = vec![
        String::new(),
        " ".into(),
        "\0\u{1}\u{7f}".into(),
        "🦀".repeat(500),
        "ℵ₀ ∑ ∫ 中文 العربية".into(),
        huge,
        "[CLS] [SEP] [PAD] [MASK]".into(),
    ];
    for t in &cases {
        let r = c.classify(classify_req("odd", "", &[t])).await;
        let r = r.unwrap_or_else(|e| panic!("{:?}: {e:?}", t.chars().take(20).collect::<String>()));
        assert!(
            r.into_inner().results[0]
                .scores
                .iter()
                .all(|s| s.score.is_finite())
        );
    }
    // Pairs with empty sides, and the embedding path.
    let mut req = classify_req("odd", "", &["", "a"]);
    req.inputs[0].text_pair = Some(String::new());
    req.inputs[1].text_pair = Some("🦀".repeat(2000));
    c.classify(req).await.unwrap();
    // Still alive.
    c.info(qattn_serve::proto::qattn::v1::InfoRequest {})
        .await
        .unwrap();
    server.shutdown().await.unwrap();
}
