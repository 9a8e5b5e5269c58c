//! `qattn.v1.Admin`: load, unload, default version, A/B split, rollback, list.

use crate::config::ModelConfig;
use crate::ctx::Ctx;
use crate::engine::ModelView;
use crate::proto::qattn::v1 as pb;
use tonic::{Request, Response, Status};

/// The admin service (behind the admin-key interceptor).
#[derive(Debug, Clone)]
pub struct AdminService {
    ctx: Ctx,
}

impl AdminService {
    pub(crate) fn new(ctx: Ctx) -> Self {
        AdminService { ctx }
    }
}

/// The wire form of a model snapshot.
pub(crate) fn model_info(m: &ModelView) -> pb::ModelInfo {
    pb::ModelInfo {
        name: m.name.clone(),
        default_version: m.default.clone(),
        is_default_model: m.is_default_model,
        versions: m
            .versions
            .iter()
            .map(|(v, w)| pb::VersionInfo {
                version: v.version.clone(),
                source: v.source.clone(),
                estimator: v.estimator.clone(),
                precision: v.precision.clone(),
                head: v.head_name(),
                labels: v.labels.clone(),
                weight: *w,
                is_default: v.version == m.default,
                breaker: v.breaker_state().as_str().into(),
                max_sequence_length: v.max_len as u32,
            })
            .collect(),
    }
}

fn required(what: &str, v: &str) -> Result<(), Status> {
    if v.is_empty() {
        Err(Status::invalid_argument(format!("{what} is required")))
    } else {
        Ok(())
    }
}

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminService {
    async fn load_model(
        &self,
        req: Request<pb::LoadModelRequest>,
    ) -> Result<Response<pb::LoadModelResponse>, Status> {
        let r = req.into_inner();
        required("name", &r.name)?;
        required("version", &r.version)?;
        required("source", &r.source)?;
        let opt = |s: String| (!s.is_empty()).then_some(s);
        let mc = ModelConfig {
            name: r.name.clone(),
            version: r.version.clone(),
            source: r.source,
            attention: opt(r.attention),
            precision: opt(r.precision),
            device: None,
            head: opt(r.head),
            seed: None,
            default: r.make_default,
            weight: None,
            fail_mc: None,
        };
        let engine = self.ctx.engine.clone();
        tokio::task::spawn_blocking(move || engine.load_version(&mc))
            .await
            .map_err(|e| Status::internal(format!("load task: {e}")))??;
        if r.make_default {
            self.ctx.engine.set_default(&r.name, &r.version, false)?;
        }
        tracing::info!(model = %r.name, version = %r.version, "admin: model loaded");
        Ok(Response::new(pb::LoadModelResponse {
            model: Some(model_info(&self.ctx.engine.model(&r.name)?)),
        }))
    }

    async fn unload_model(
        &self,
        req: Request<pb::UnloadModelRequest>,
    ) -> Result<Response<pb::UnloadModelResponse>, Status> {
        let r = req.into_inner();
        required("name", &r.name)?;
        self.ctx.engine.unload(&r.name, &r.version).await?;
        tracing::info!(model = %r.name, version = %r.version, "admin: unloaded");
        Ok(Response::new(pb::UnloadModelResponse {}))
    }

    async fn set_default(
        &self,
        req: Request<pb::SetDefaultRequest>,
    ) -> Result<Response<pb::SetDefaultResponse>, Status> {
        let r = req.into_inner();
        required("name", &r.name)?;
        required("version", &r.version)?;
        self.ctx.engine.set_default(&r.name, &r.version, false)?;
        tracing::info!(model = %r.name, version = %r.version, "admin: default set");
        Ok(Response::new(pb::SetDefaultResponse {
            model: Some(model_info(&self.ctx.engine.model(&r.name)?)),
        }))
    }

    async fn set_split(
        &self,
        req: Request<pb::SetSplitRequest>,
    ) -> Result<Response<pb::SetSplitResponse>, Status> {
        let r = req.into_inner();
        required("name", &r.name)?;
        let weights = r
            .weights
            .into_iter()
            .map(|w| (w.version, w.weight))
            .collect();
        self.ctx.engine.set_split(&r.name, weights, r.monitor)?;
        tracing::info!(model = %r.name, monitor = r.monitor, "admin: split set");
        Ok(Response::new(pb::SetSplitResponse {
            model: Some(model_info(&self.ctx.engine.model(&r.name)?)),
        }))
    }

    async fn rollback(
        &self,
        req: Request<pb::RollbackRequest>,
    ) -> Result<Response<pb::RollbackResponse>, Status> {
        let r = req.into_inner();
        required("name", &r.name)?;
        let restored = self.ctx.engine.rollback(&r.name)?;
        tracing::warn!(model = %r.name, restored = %restored, "admin: rollback");
        Ok(Response::new(pb::RollbackResponse {
            model: Some(model_info(&self.ctx.engine.model(&r.name)?)),
            restored,
        }))
    }

    async fn list_models(
        &self,
        _req: Request<pb::ListModelsRequest>,
    ) -> Result<Response<pb::ListModelsResponse>, Status> {
        Ok(Response::new(pb::ListModelsResponse {
            models: self.ctx.engine.models().iter().map(model_info).collect(),
        }))
    }
}
