//! `inference.GRPCInferenceService`: the KServe Open Inference Protocol v2.
//!
//! Inputs: `text` (BYTES, shape `[N]` or `[N, 1]`) and optionally `text_pair` (same shape),
//! as `contents.bytes_contents` or `raw_input_contents` (each element a 4-byte little-endian
//! length and its bytes). Outputs (FP32, always in `raw_output_contents`, as Triton does):
//! `logits` and `probabilities` `[N, labels]` for a classification head (`[N, 1]` `logits`,
//! the raw score, for a regression head or a head without label names), `embedding`
//! `[N, hidden]` for an encoder without a head.

use crate::config::LimitsConfig;
use crate::ctx::{Ctx, sticky_key};
use crate::engine::{FallbackReason, Task};
use crate::proto::inference as pb;
use crate::typed::{Texts, infer, softmax};
use pb::infer_parameter::ParameterChoice;
use std::collections::HashMap;
use tonic::{Request, Response, Status};

/// The OIP service.
#[derive(Debug, Clone)]
pub struct OipService {
    ctx: Ctx,
}

impl OipService {
    pub(crate) fn new(ctx: Ctx) -> Self {
        OipService { ctx }
    }
}

const TEXT: &str = "text";
const TEXT_PAIR: &str = "text_pair";

fn bad(msg: String) -> Status {
    Status::invalid_argument(msg)
}

/// Splits a BYTES raw buffer (4-byte LE length + bytes per element) into `n` elements.
pub fn decode_raw_bytes(name: &str, raw: &[u8], n: usize) -> Result<Vec<Vec<u8>>, Status> {
    let mut out = Vec::with_capacity(n.min(raw.len() / 4 + 1));
    let mut rest = raw;
    while !rest.is_empty() {
        if rest.len() < 4 {
            return Err(bad(format!(
                "input {name:?}: raw_input_contents ends inside an element's 4-byte length prefix"
            )));
        }
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        rest = &rest[4..];
        if len > rest.len() {
            return Err(bad(format!(
                "input {name:?}: raw element {} declares {len} bytes but only {} remain",
                out.len(),
                rest.len()
            )));
        }
        out.push(rest[..len].to_vec());
        rest = &rest[len..];
        if out.len() > n {
            break;
        }
    }
    if out.len() != n {
        return Err(bad(format!(
            "input {name:?}: raw_input_contents holds {}{} elements but the shape says {n}",
            out.len(),
            if out.len() > n { " or more" } else { "" }
        )));
    }
    Ok(out)
}

fn element_count(name: &str, shape: &[i64]) -> Result<usize, Status> {
    match shape {
        [n] | [n, 1] if *n >= 0 => Ok(*n as usize),
        _ => Err(bad(format!(
            "input {name:?}: shape {shape:?} is not supported; expected [N] or [N, 1]"
        ))),
    }
}

/// Decodes the text inputs of a ModelInfer request, checking names, datatypes, shapes,
/// contents, UTF-8 and the size limits. Never panics.
pub fn decode_text_inputs(
    req: &pb::ModelInferRequest,
    limits: &LimitsConfig,
) -> Result<Texts, Status> {
    let raw = !req.raw_input_contents.is_empty();
    if raw && req.raw_input_contents.len() != req.inputs.len() {
        return Err(bad(format!(
            "raw_input_contents has {} entries but there are {} inputs; give one per input",
            req.raw_input_contents.len(),
            req.inputs.len()
        )));
    }
    let mut text: Option<Vec<String>> = None;
    let mut pair: Option<Vec<String>> = None;
    for (i, t) in req.inputs.iter().enumerate() {
        let slot = match t.name.as_str() {
            TEXT => &mut text,
            TEXT_PAIR => &mut pair,
            other => {
                return Err(bad(format!(
                    "unknown input tensor {other:?}; expected \"text\" and optionally \"text_pair\""
                )));
            }
        };
        if slot.is_some() {
            return Err(bad(format!("input {:?} is given twice", t.name)));
        }
        if t.datatype != "BYTES" {
            return Err(bad(format!(
                "input {:?}: datatype {:?} is not supported; expected BYTES (UTF-8 text)",
                t.name, t.datatype
            )));
        }
        let n = element_count(&t.name, &t.shape)?;
        if n > limits.max_batch_texts {
            crate::metrics::reject("too_large");
            return Err(bad(format!(
                "input {:?} has {n} elements; the maximum is {} (limits.max_batch_texts)",
                t.name, limits.max_batch_texts
            )));
        }
        let elems: Vec<Vec<u8>> = if raw {
            if t.contents
                .as_ref()
                .is_some_and(|c| c != &pb::InferTensorContents::default())
            {
                return Err(bad(format!(
                    "input {:?}: contents must be empty when raw_input_contents is used",
                    t.name
                )));
            }
            decode_raw_bytes(&t.name, &req.raw_input_contents[i], n)?
        } else {
            let c = t.contents.clone().unwrap_or_default();
            let only_bytes = pb::InferTensorContents {
                bytes_contents: c.bytes_contents.clone(),
                ..Default::default()
            };
            if c != only_bytes {
                return Err(bad(format!(
                    "input {:?}: only bytes_contents may be set for a BYTES tensor",
                    t.name
                )));
            }
            if c.bytes_contents.len() != n {
                return Err(bad(format!(
                    "input {:?}: bytes_contents has {} elements but the shape says {n}",
                    t.name,
                    c.bytes_contents.len()
                )));
            }
            c.bytes_contents
        };
        let strings = elems
            .into_iter()
            .enumerate()
            .map(|(j, b)| {
                String::from_utf8(b).map_err(|_| {
                    bad(format!(
                        "input {:?}: element {j} is not valid UTF-8",
                        t.name
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        *slot = Some(strings);
    }
    let text =
        text.ok_or_else(|| bad("missing input tensor \"text\" (BYTES, shape [N])".into()))?;
    let texts: Texts = match pair {
        None => text.into_iter().map(|t| (t, None)).collect(),
        Some(p) => {
            if p.len() != text.len() {
                return Err(bad(format!(
                    "input \"text_pair\" has {} elements but \"text\" has {}",
                    p.len(),
                    text.len()
                )));
            }
            text.into_iter().zip(p).map(|(a, b)| (a, Some(b))).collect()
        }
    };
    crate::typed::check_limits(&texts, limits)?;
    Ok(texts)
}

fn outputs_of(v: &crate::engine::Version) -> Vec<(&'static str, i64)> {
    match v.head {
        None => vec![("embedding", v.hidden as i64)],
        Some(_) if v.labels.is_empty() => vec![("logits", 1)],
        Some(_) => vec![
            ("logits", v.labels.len() as i64),
            ("probabilities", v.labels.len() as i64),
        ],
    }
}

fn param(s: impl Into<String>) -> pb::InferParameter {
    pb::InferParameter {
        parameter_choice: Some(ParameterChoice::StringParam(s.into())),
    }
}

#[tonic::async_trait]
impl pb::grpc_inference_service_server::GrpcInferenceService for OipService {
    async fn server_live(
        &self,
        _req: Request<pb::ServerLiveRequest>,
    ) -> Result<Response<pb::ServerLiveResponse>, Status> {
        Ok(Response::new(pb::ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _req: Request<pb::ServerReadyRequest>,
    ) -> Result<Response<pb::ServerReadyResponse>, Status> {
        Ok(Response::new(pb::ServerReadyResponse {
            ready: self.ctx.engine.ready(),
        }))
    }

    async fn model_ready(
        &self,
        req: Request<pb::ModelReadyRequest>,
    ) -> Result<Response<pb::ModelReadyResponse>, Status> {
        let r = req.into_inner();
        let ready =
            self.ctx.engine.ready() && self.ctx.engine.resolve(&r.name, &r.version, None).is_ok();
        Ok(Response::new(pb::ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        _req: Request<pb::ServerMetadataRequest>,
    ) -> Result<Response<pb::ServerMetadataResponse>, Status> {
        Ok(Response::new(pb::ServerMetadataResponse {
            name: "qattn-serve".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: Vec::new(),
        }))
    }

    async fn model_metadata(
        &self,
        req: Request<pb::ModelMetadataRequest>,
    ) -> Result<Response<pb::ModelMetadataResponse>, Status> {
        let r = req.into_inner();
        let v = self.ctx.engine.resolve(&r.name, &r.version, None)?;
        let view = self.ctx.engine.model(&v.model)?;
        let tm =
            |name: &str, dt: &str, shape: Vec<i64>| pb::model_metadata_response::TensorMetadata {
                name: name.into(),
                datatype: dt.into(),
                shape,
            };
        Ok(Response::new(pb::ModelMetadataResponse {
            name: v.model.clone(),
            versions: view
                .versions
                .iter()
                .map(|(v, _)| v.version.clone())
                .collect(),
            platform: "qattn".into(),
            inputs: vec![
                tm(TEXT, "BYTES", vec![-1]),
                tm(TEXT_PAIR, "BYTES", vec![-1]),
            ],
            outputs: outputs_of(&v)
                .into_iter()
                .map(|(n, w)| tm(n, "FP32", vec![-1, w]))
                .collect(),
        }))
    }

    async fn model_infer(
        &self,
        req: Request<pb::ModelInferRequest>,
    ) -> Result<Response<pb::ModelInferResponse>, Status> {
        let scope = self.ctx.admit("ModelInfer", req.metadata())?;
        let sticky = sticky_key(&req);
        let ctx = self.ctx.clone();
        let (deadline, received) = (scope.deadline(), scope.received());
        let r = req.into_inner();
        scope
            .run(async move {
                let texts = decode_text_inputs(&r, &ctx.engine.config().limits)?;
                let seed = match r
                    .parameters
                    .get("seed")
                    .and_then(|p| p.parameter_choice.clone())
                {
                    None => None,
                    Some(ParameterChoice::Int64Param(s)) if s >= 0 => Some(s as u64),
                    Some(ParameterChoice::Uint64Param(s)) => Some(s),
                    Some(_) => {
                        return Err(bad(
                            "parameter \"seed\" must be a non-negative integer".into()
                        ));
                    }
                };
                // Decide the task from the resolved version's head.
                let v = ctx
                    .engine
                    .resolve(&r.model_name, &r.model_version, sticky.as_deref())?;
                let available = outputs_of(&v);
                for o in &r.outputs {
                    if !available.iter().any(|(n, _)| *n == o.name) {
                        return Err(bad(format!(
                            "requested output {:?} does not exist; this model has {}",
                            o.name,
                            available
                                .iter()
                                .map(|(n, _)| *n)
                                .collect::<Vec<_>>()
                                .join(", ")
                        )));
                    }
                }
                let task = if v.head.is_some() {
                    Task::Classify
                } else {
                    Task::Embed
                };
                let version = v.version.clone();
                let inf =
                    infer(&ctx, deadline, task, texts, &v.model, &version, seed, None).await?;
                let n = inf.out.rows.len() as i64;
                let mut outputs = Vec::new();
                let mut raw = Vec::new();
                for (name, width) in available {
                    if !r.outputs.is_empty() && !r.outputs.iter().any(|o| o.name == name) {
                        continue;
                    }
                    let mut buf = Vec::with_capacity(inf.out.rows.len() * width as usize * 4);
                    for row in &inf.out.rows {
                        let vals: Vec<f32> = if name == "probabilities" {
                            softmax(row)
                        } else {
                            row.clone()
                        };
                        for x in vals {
                            buf.extend_from_slice(&x.to_le_bytes());
                        }
                    }
                    outputs.push(pb::model_infer_response::InferOutputTensor {
                        name: name.into(),
                        datatype: "FP32".into(),
                        shape: vec![n, width],
                        parameters: HashMap::new(),
                        contents: None,
                    });
                    raw.push(buf);
                }
                let o = &inf.out;
                let mut parameters = HashMap::new();
                parameters.insert("estimator".to_string(), param(o.estimator.clone()));
                parameters.insert(
                    "fallback".to_string(),
                    pb::InferParameter {
                        parameter_choice: Some(ParameterChoice::BoolParam(o.fallback.is_some())),
                    },
                );
                if let Some(f) = o.fallback {
                    parameters.insert(
                        "fallback_reason".to_string(),
                        param(FallbackReason::as_str(f)),
                    );
                }
                parameters.insert(
                    "mc_samples".to_string(),
                    pb::InferParameter {
                        parameter_choice: Some(ParameterChoice::Int64Param(
                            o.samples.min(i64::MAX as u64) as i64,
                        )),
                    },
                );
                parameters.insert(
                    "total_us".to_string(),
                    pb::InferParameter {
                        parameter_choice: Some(ParameterChoice::Int64Param(
                            received.elapsed().as_micros() as i64,
                        )),
                    },
                );
                let resp = pb::ModelInferResponse {
                    model_name: inf.version.model.clone(),
                    model_version: inf.version.version.clone(),
                    id: r.id.clone(),
                    parameters,
                    outputs,
                    raw_output_contents: raw,
                };
                Ok((resp, inf.version.model.clone(), inf.version.version.clone()))
            })
            .await
            .map(Response::new)
    }
}
