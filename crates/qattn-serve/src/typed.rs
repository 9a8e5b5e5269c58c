//! `qattn.v1.Inference`: Info, Classify, ClassifyStream, Embed, Tokenize.

use crate::ctx::{Ctx, sticky_key};
use crate::engine::{FallbackReason, Job, JobOutput, Task, Version};
use crate::error::Error;
use crate::metrics as m;
use crate::proto::qattn::v1 as pb;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

/// The typed service.
#[derive(Debug, Clone)]
pub struct TypedService {
    ctx: Ctx,
}

impl TypedService {
    pub(crate) fn new(ctx: Ctx) -> Self {
        TypedService { ctx }
    }
}

/// Texts (with optional pairs) of a request.
pub(crate) type Texts = Vec<(String, Option<String>)>;

/// Checks the request-size limits; the message names the limit.
pub(crate) fn check_limits(
    texts: &Texts,
    limits: &crate::config::LimitsConfig,
) -> Result<(), Status> {
    let too_large = |msg: String| {
        m::reject("too_large");
        Status::invalid_argument(msg)
    };
    if texts.is_empty() {
        return Err(Status::invalid_argument("the request has no inputs"));
    }
    if texts.len() > limits.max_batch_texts {
        return Err(too_large(format!(
            "request has {} texts; the maximum is {} (limits.max_batch_texts)",
            texts.len(),
            limits.max_batch_texts
        )));
    }
    for (i, (a, b)) in texts.iter().enumerate() {
        for (what, s) in [("text", Some(a)), ("text_pair", b.as_ref())] {
            if let Some(s) = s
                && s.len() > limits.max_text_bytes
            {
                return Err(too_large(format!(
                    "input {i}: {what} has {} bytes; the maximum is {} (limits.max_text_bytes)",
                    s.len(),
                    limits.max_text_bytes
                )));
            }
        }
    }
    Ok(())
}

/// The result of [`infer`].
pub(crate) struct Inferred {
    pub(crate) version: Arc<Version>,
    pub(crate) out: JobOutput,
    pub(crate) tokenize: Duration,
}

/// Routing, tokenisation, batching and outcome recording shared by every inference RPC.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn infer(
    ctx: &Ctx,
    deadline: Option<Instant>,
    task: Task,
    texts: Texts,
    model: &str,
    version: &str,
    seed: Option<u64>,
    sticky: Option<String>,
) -> Result<Inferred, Status> {
    check_limits(&texts, &ctx.engine.config().limits)?;
    let v = ctx.engine.resolve(model, version, sticky.as_deref())?;
    if task == Task::Classify && v.head.is_none() {
        return Err(Status::failed_precondition(format!(
            "model {}:{} has no task head (head = \"none\"); use Embed, or load it with head = \"classification:N\"",
            v.model, v.version
        )));
    }
    let t0 = Instant::now();
    let refs: Vec<(&str, Option<&str>)> = texts
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_deref()))
        .collect();
    let encodings = v.tokenize(&refs)?;
    let tokenize = t0.elapsed();
    metrics::histogram!(m::TOKENIZE_DURATION, "model" => v.model.clone())
        .record(tokenize.as_secs_f64());
    let job = Job {
        task,
        encodings,
        deadline,
        seed,
        enqueued: Instant::now(),
    };
    let r = v.submit(job).await;
    match &r {
        Ok(out) => {
            metrics::histogram!(m::QUEUE_DURATION, "model" => v.model.clone())
                .record(out.queue.as_secs_f64());
            ctx.engine
                .record_outcome(&v.model, &v.version, out.fallback.is_none());
        }
        Err(Error::DeadlineExceeded(_))
        | Err(Error::ResourceExhausted(_))
        | Err(Error::Unavailable(_)) => {
            if matches!(r, Err(Error::ResourceExhausted(_))) {
                m::reject("queue_full");
            }
        }
        Err(_) => ctx.engine.record_outcome(&v.model, &v.version, false),
    }
    Ok(Inferred {
        out: r?,
        version: v,
        tokenize,
    })
}

pub(crate) fn meta(inf: &Inferred, received: Instant) -> pb::ResultMeta {
    let o = &inf.out;
    pb::ResultMeta {
        model: inf.version.model.clone(),
        version: inf.version.version.clone(),
        estimator: o.estimator.clone(),
        precision: inf.version.precision.clone(),
        timings: Some(pb::Timings {
            queue_us: o.queue.as_micros() as u64,
            tokenize_us: inf.tokenize.as_micros() as u64,
            inference_us: o.inference.as_micros() as u64,
            total_us: received.elapsed().as_micros() as u64,
        }),
        mc: Some(pb::McDiagnostics {
            monte_carlo: o.monte_carlo,
            samples: o.samples,
            seed: o.seed,
            step: o.step,
            fallback: o.fallback.is_some(),
            fallback_reason: o.fallback.map(FallbackReason::as_str).unwrap_or("").into(),
        }),
    }
}

fn texts_of(inputs: Vec<pb::TextInput>) -> Texts {
    inputs.into_iter().map(|i| (i.text, i.text_pair)).collect()
}

/// Softmax of one row of logits (max-subtracted), the probabilities both APIs return.
pub(crate) fn softmax(x: &[f32]) -> Vec<f32> {
    let mx = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = x.iter().map(|v| (v - mx).exp()).collect();
    let s: f32 = e.iter().sum();
    e.iter().map(|v| v / s).collect()
}

fn classifications(inf: &Inferred) -> Vec<pb::Classification> {
    let labels = &inf.version.labels;
    inf.out
        .rows
        .iter()
        .map(|row| {
            if labels.is_empty() || row.len() != labels.len() {
                // Regression (one score) or a head without label names.
                let scores: Vec<pb::LabelScore> = row
                    .iter()
                    .enumerate()
                    .map(|(i, &x)| pb::LabelScore {
                        label: if row.len() == 1 {
                            "score".into()
                        } else {
                            format!("LABEL_{i}")
                        },
                        score: x,
                        logit: x,
                    })
                    .collect();
                return pb::Classification {
                    label: scores.first().map(|s| s.label.clone()).unwrap_or_default(),
                    scores,
                };
            }
            let p = softmax(row);
            let best = (0..p.len())
                .max_by(|&a, &b| p[a].total_cmp(&p[b]))
                .unwrap_or(0);
            pb::Classification {
                label: labels[best].clone(),
                scores: labels
                    .iter()
                    .zip(p.iter().zip(row))
                    .map(|(l, (&s, &x))| pb::LabelScore {
                        label: l.clone(),
                        score: s,
                        logit: x,
                    })
                    .collect(),
            }
        })
        .collect()
}

type ClassifyStream = Pin<Box<dyn Stream<Item = Result<pb::ClassifyResponse, Status>> + Send>>;

#[tonic::async_trait]
impl pb::inference_server::Inference for TypedService {
    async fn info(
        &self,
        req: Request<pb::InfoRequest>,
    ) -> Result<Response<pb::InfoResponse>, Status> {
        let scope = self.ctx.admit("Info", req.metadata())?;
        let ctx = self.ctx.clone();
        scope
            .run(async move {
                let l = &ctx.engine.config().limits;
                Ok((
                    pb::InfoResponse {
                        server: "qattn-serve".into(),
                        server_version: env!("CARGO_PKG_VERSION").into(),
                        models: ctx
                            .engine
                            .models()
                            .iter()
                            .map(crate::admin::model_info)
                            .collect(),
                        max_batch_texts: l.max_batch_texts as u32,
                        max_text_bytes: l.max_text_bytes as u32,
                    },
                    String::new(),
                    String::new(),
                ))
            })
            .await
            .map(Response::new)
    }

    async fn classify(
        &self,
        req: Request<pb::ClassifyRequest>,
    ) -> Result<Response<pb::ClassifyResponse>, Status> {
        let scope = self.ctx.admit("Classify", req.metadata())?;
        let sticky = sticky_key(&req);
        let ctx = self.ctx.clone();
        let inner = req.into_inner();
        let deadline = scope.deadline();
        let received = scope.received();
        scope
            .run(async move {
                let probe = ScopeInfo { deadline, received };
                classify_with(&ctx, probe, inner, sticky).await
            })
            .await
            .map(Response::new)
    }

    type ClassifyStreamStream = ClassifyStream;

    async fn classify_stream(
        &self,
        req: Request<Streaming<pb::ClassifyRequest>>,
    ) -> Result<Response<Self::ClassifyStreamStream>, Status> {
        let sticky = sticky_key(&req);
        let meta = req.metadata().clone();
        let mut incoming = req.into_inner();
        let ctx = self.ctx.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            while let Some(msg) = incoming.next().await {
                let msg = match msg {
                    Ok(m) => m,
                    Err(st) => {
                        let _ = tx.send(Err(st)).await;
                        break;
                    }
                };
                let id = msg.id.clone();
                let resp = match ctx.admit("ClassifyStream", &meta) {
                    Err(st) => Err(st),
                    Ok(scope) => {
                        let info = ScopeInfo {
                            deadline: scope.deadline(),
                            received: scope.received(),
                        };
                        let c = ctx.clone();
                        let s = sticky.clone();
                        scope
                            .run(async move { classify_with(&c, info, msg, s).await })
                            .await
                    }
                };
                let resp = resp.unwrap_or_else(|st| pb::ClassifyResponse {
                    id,
                    error: Some(pb::StreamError {
                        code: st.code() as i32,
                        message: st.message().into(),
                    }),
                    ..Default::default()
                });
                if tx.send(Ok(resp)).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn embed(
        &self,
        req: Request<pb::EmbedRequest>,
    ) -> Result<Response<pb::EmbedResponse>, Status> {
        let scope = self.ctx.admit("Embed", req.metadata())?;
        let sticky = sticky_key(&req);
        let ctx = self.ctx.clone();
        let inner = req.into_inner();
        let (deadline, received) = (scope.deadline(), scope.received());
        scope
            .run(async move {
                let target = inner.target.unwrap_or_default();
                let inf = infer(
                    &ctx,
                    deadline,
                    Task::Embed,
                    texts_of(inner.inputs),
                    &target.model,
                    &target.version,
                    target.seed,
                    sticky,
                )
                .await?;
                let resp = pb::EmbedResponse {
                    embeddings: inf
                        .out
                        .rows
                        .iter()
                        .map(|r| pb::Embedding { values: r.clone() })
                        .collect(),
                    meta: Some(meta(&inf, received)),
                };
                Ok((resp, inf.version.model.clone(), inf.version.version.clone()))
            })
            .await
            .map(Response::new)
    }

    async fn tokenize(
        &self,
        req: Request<pb::TokenizeRequest>,
    ) -> Result<Response<pb::TokenizeResponse>, Status> {
        let scope = self.ctx.admit("Tokenize", req.metadata())?;
        let sticky = sticky_key(&req);
        let ctx = self.ctx.clone();
        let inner = req.into_inner();
        scope
            .run(async move {
                let texts = texts_of(inner.inputs);
                check_limits(&texts, &ctx.engine.config().limits)?;
                let target = inner.target.unwrap_or_default();
                let v = ctx
                    .engine
                    .resolve(&target.model, &target.version, sticky.as_deref())?;
                let refs: Vec<(&str, Option<&str>)> = texts
                    .iter()
                    .map(|(a, b)| (a.as_str(), b.as_deref()))
                    .collect();
                let encs = v.tokenize(&refs)?;
                let resp = pb::TokenizeResponse {
                    tokens: encs
                        .into_iter()
                        .map(|e| pb::Tokens {
                            ids: e.ids,
                            type_ids: e.type_ids,
                            tokens: e.tokens,
                        })
                        .collect(),
                    model: v.model.clone(),
                    version: v.version.clone(),
                };
                Ok((resp, v.model.clone(), v.version.clone()))
            })
            .await
            .map(Response::new)
    }
}

#[derive(Clone, Copy)]
struct ScopeInfo {
    deadline: Option<Instant>,
    received: Instant,
}

async fn classify_with(
    ctx: &Ctx,
    s: ScopeInfo,
    req: pb::ClassifyRequest,
    sticky: Option<String>,
) -> Result<(pb::ClassifyResponse, String, String), Status> {
    let target = req.target.clone().unwrap_or_default();
    let inf = infer(
        ctx,
        s.deadline,
        Task::Classify,
        texts_of(req.inputs),
        &target.model,
        &target.version,
        target.seed,
        sticky,
    )
    .await?;
    let resp = pb::ClassifyResponse {
        results: classifications(&inf),
        meta: Some(meta(&inf, s.received)),
        id: req.id,
        error: None,
    };
    Ok((resp, inf.version.model.clone(), inf.version.version.clone()))
}
