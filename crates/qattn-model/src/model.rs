//! [`Model`]: a loaded checkpoint — encoder, optional task head, tokenizer, attention
//! configuration — with loading from the Hub or a directory and `save_pretrained`.

use crate::attention::AttentionConfig;
use crate::bert::{
    Bert, EncoderOutput, Inputs, Linear, Mode, dropout, mean_pool, mean_pool_normalize,
};
use crate::config::{Config, ProblemType};
use crate::error::{Error, Result};
use crate::heads::{HeadKind, Pooling};
use crate::hub::{self, HubOptions, ModelFiles, WeightsFile};
use crate::io::write_atomic;
use crate::params::Params;
use crate::precision::Precision;
use crate::tokenizer::{Batch, Tokenizer};
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The `qattn.json` written beside a saved model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QattnMeta {
    /// Format version of this file (currently 1).
    pub format_version: u32,
    /// The attention configuration the model was saved with.
    pub attention: AttentionConfig,
    /// The task head, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head: Option<HeadKind>,
    /// The representation the task head reads (absent = `cls`, the pooler).
    #[serde(default, skip_serializing_if = "Pooling::is_cls")]
    pub pooling: Pooling,
    /// Label names in id order (classification).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Vec<String>>,
    /// The qattn version that wrote the file.
    #[serde(default)]
    pub qattn_version: String,
}

/// How to load a model.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Where to find or fetch the files.
    pub hub: HubOptions,
    /// Attention configuration; `None` = the saved `qattn.json`'s, else all exact.
    pub attention: Option<AttentionConfig>,
    /// Task head; `None` = the saved one (`qattn.json`, else `architectures`), else none.
    pub head: Option<HeadKind>,
    /// Label names for a classification head (sets `id2label`).
    pub labels: Option<Vec<String>>,
    /// What the task head reads; `None` = the saved `qattn.json`'s, else [`Pooling::Cls`].
    pub pooling: Option<Pooling>,
    /// Load the tokenizer (`tokenizer.json` becomes a required file).
    pub tokenizer: bool,
    /// Make the parameters trainable candle `Var`s.
    pub trainable: bool,
    /// Seed of the initialiser of weights absent from the checkpoint (task heads).
    pub init_seed: u64,
    /// Device of the parameters.
    pub device: Device,
    /// Storage precision of the encoder's dense weights (inference only; see
    /// [`crate::precision`]). Not saved by `save_pretrained`, which writes the f32 originals.
    pub precision: Precision,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            hub: HubOptions::default(),
            attention: None,
            head: None,
            labels: None,
            pooling: None,
            tokenizer: true,
            trainable: false,
            init_seed: 0,
            device: Device::Cpu,
            precision: Precision::F32,
        }
    }
}

/// What loading did besides reading tensors: transformers' "newly initialized" and "unused"
/// weight lists.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Weights the model needs that the checkpoint lacked, initialised from the seed.
    pub initialized: Vec<String>,
    /// Checkpoint tensors the model does not use (e.g. `cls.predictions.*`).
    pub unused: Vec<String>,
    /// Whether the checkpoint stored the encoder without the `bert.` prefix.
    pub unprefixed: bool,
}

/// A BERT-family model with pluggable attention, an optional task head and its tokenizer.
#[derive(Clone, Debug)]
pub struct Model {
    config: Config,
    bert: Bert,
    head: Option<(HeadKind, Linear)>,
    pooling: Pooling,
    params: Params,
    tokenizer: Option<Tokenizer>,
    report: LoadReport,
    files: Option<ModelFiles>,
}

/// The expected encoder parameter names and shapes of `cfg` (canonical, `bert.`-prefixed).
fn encoder_shapes(cfg: &Config) -> Vec<(String, Vec<usize>)> {
    let h = cfg.hidden_size;
    let i = cfg.intermediate_size;
    let mut v = vec![
        (
            "bert.embeddings.word_embeddings.weight".to_string(),
            vec![cfg.vocab_size, h],
        ),
        (
            "bert.embeddings.position_embeddings.weight".to_string(),
            vec![cfg.max_position_embeddings, h],
        ),
        (
            "bert.embeddings.token_type_embeddings.weight".to_string(),
            vec![cfg.type_vocab_size, h],
        ),
        ("bert.embeddings.LayerNorm.weight".to_string(), vec![h]),
        ("bert.embeddings.LayerNorm.bias".to_string(), vec![h]),
    ];
    for l in 0..cfg.num_hidden_layers {
        let p = format!("bert.encoder.layer.{l}");
        for (name, out, inp) in [
            ("attention.self.query", h, h),
            ("attention.self.key", h, h),
            ("attention.self.value", h, h),
            ("attention.output.dense", h, h),
            ("intermediate.dense", i, h),
            ("output.dense", h, i),
        ] {
            v.push((format!("{p}.{name}.weight"), vec![out, inp]));
            v.push((format!("{p}.{name}.bias"), vec![out]));
        }
        for ln in ["attention.output.LayerNorm", "output.LayerNorm"] {
            v.push((format!("{p}.{ln}.weight"), vec![h]));
            v.push((format!("{p}.{ln}.bias"), vec![h]));
        }
    }
    v
}

fn pooler_shapes(cfg: &Config) -> Vec<(String, Vec<usize>)> {
    let h = cfg.hidden_size;
    vec![
        ("bert.pooler.dense.weight".into(), vec![h, h]),
        ("bert.pooler.dense.bias".into(), vec![h]),
    ]
}

fn head_shapes(cfg: &Config, head: HeadKind) -> Vec<(String, Vec<usize>)> {
    vec![
        (
            "classifier.weight".into(),
            vec![head.outputs(), cfg.hidden_size],
        ),
        ("classifier.bias".into(), vec![head.outputs()]),
    ]
}

/// Maps a checkpoint tensor name to the canonical name: the encoder under `bert.`, old
/// TensorFlow-converted `gamma`/`beta` LayerNorm names to `weight`/`bias`.
fn canonical_name(name: &str) -> (String, bool) {
    let mut n = name.to_string();
    let mut unprefixed = false;
    for root in ["embeddings.", "encoder.", "pooler."] {
        if n.starts_with(root) {
            n = format!("bert.{n}");
            unprefixed = true;
            break;
        }
    }
    if n.contains("LayerNorm.") {
        if let Some(stem) = n.strip_suffix(".gamma") {
            n = format!("{stem}.weight");
        } else if let Some(stem) = n.strip_suffix(".beta") {
            n = format!("{stem}.bias");
        }
    }
    (n, unprefixed)
}

/// Reads every tensor of a checkpoint (safetensors, shards, or a PyTorch pickle).
fn read_weights(files: &WeightsFile, device: &Device) -> Result<(Vec<(String, Tensor)>, PathBuf)> {
    match files {
        WeightsFile::Safetensors(paths) => {
            let mut out = Vec::new();
            for path in paths {
                let map =
                    candle_core::safetensors::load(path, device).map_err(|e| Error::Weights {
                        path: path.clone(),
                        message: format!("not a readable safetensors file: {e}"),
                    })?;
                out.extend(map);
            }
            Ok((out, paths.first().cloned().unwrap_or_default()))
        }
        WeightsFile::PytorchBin(path) => {
            let list = candle_core::pickle::read_all(path).map_err(|e| Error::Weights {
                path: path.clone(),
                message: format!("not a readable PyTorch checkpoint: {e}"),
            })?;
            let list = list
                .into_iter()
                .map(|(n, t)| Ok((n, t.to_device(device)?)))
                .collect::<Result<Vec<_>>>()?;
            Ok((list, path.clone()))
        }
    }
}

impl Model {
    /// Loads `model` — a Hub repo id (`org/name[@revision]`) or a local directory — with
    /// `opts`. Weights absent from the checkpoint that a task head needs are initialised from
    /// `opts.init_seed` and reported by [`Model::load_report`] (and on stderr, as transformers
    /// warns); unused checkpoint tensors are reported there too.
    pub fn load(model: &str, opts: &LoadOptions) -> Result<Model> {
        if opts.trainable && opts.precision != Precision::F32 {
            return Err(Error::Config(format!(
                "precision {} is inference-only: a trainable model needs f32 weights \
                 (set trainable = false, or precision f32)",
                opts.precision
            )));
        }
        let files = hub::resolve(model, &opts.hub, opts.tokenizer)?;
        let mut config = Config::from_file(&files.config)?;
        let meta = match &files.qattn {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| Error::io(p, e))?;
                let meta: QattnMeta = serde_json::from_str(&text)
                    .map_err(|e| Error::file(p, format!("invalid qattn.json: {e}")))?;
                if meta.format_version != 1 {
                    return Err(Error::file(
                        p,
                        format!(
                            "qattn.json format_version {} is not supported (this build reads 1)",
                            meta.format_version
                        ),
                    ));
                }
                Some(meta)
            }
            None => None,
        };
        let attention = opts
            .attention
            .clone()
            .or_else(|| meta.as_ref().map(|m| m.attention.clone()))
            .unwrap_or_default();
        let head = opts
            .head
            .or_else(|| meta.as_ref().and_then(|m| m.head))
            .or_else(|| infer_head(&config));
        let labels = opts
            .labels
            .clone()
            .or_else(|| meta.as_ref().and_then(|m| m.labels.clone()));
        let pooling = opts
            .pooling
            .or_else(|| meta.as_ref().map(|m| m.pooling))
            .unwrap_or_default();
        if let Some(labels) = &labels {
            config.set_labels(labels);
        }

        let (raw, source) = read_weights(&files.weights, &opts.device)?;
        let mut tensors = BTreeMap::new();
        let mut report = LoadReport::default();
        for (name, t) in raw {
            let (canon, unprefixed) = canonical_name(&name);
            report.unprefixed |= unprefixed;
            tensors.insert(canon, t);
        }
        let mut needed = encoder_shapes(&config);
        let wants_pooler = head.is_some() || tensors.contains_key("bert.pooler.dense.weight");
        if wants_pooler {
            needed.extend(pooler_shapes(&config));
        }
        if let Some(h) = head {
            needed.extend(head_shapes(&config, h));
        }
        let needed_names: std::collections::BTreeSet<&str> =
            needed.iter().map(|(n, _)| n.as_str()).collect();
        let mut kept = BTreeMap::new();
        for (name, t) in tensors {
            if needed_names.contains(name.as_str()) {
                // Computation is f32; f16/bf16 checkpoints are widened once here.
                let t = if t.dtype() == DType::F32 {
                    t
                } else {
                    t.to_dtype(DType::F32)?
                };
                kept.insert(name, t);
            } else if name != "bert.embeddings.position_ids" {
                report.unused.push(name);
            }
        }
        check_checkpoint(&kept, &needed, &source)?;
        let mut params = Params::new(kept, source.clone());
        // Only task-head (and pooler) weights may be missing; a missing encoder weight means
        // the checkpoint is not this architecture and is an error from `Bert::new`.
        let initialisable: Vec<(String, Vec<usize>)> = needed
            .iter()
            .filter(|(n, _)| n.starts_with("classifier.") || n.starts_with("bert.pooler."))
            .cloned()
            .collect();
        for (name, shape) in initialisable {
            if params.init_if_missing(
                &name,
                shape,
                config.initializer_range,
                opts.init_seed,
                &opts.device,
            )? {
                report.initialized.push(name);
            }
        }
        if !report.initialized.is_empty() {
            eprintln!(
                "warning: some weights of {} were not in the checkpoint {} and are newly \
                 initialised (seed {}): {}. Train the model before using its predictions.",
                head.map(|h| h.architecture()).unwrap_or("BertModel"),
                source.display(),
                opts.init_seed,
                report.initialized.join(", ")
            );
        }
        if opts.trainable {
            params.make_trainable()?;
        }
        let tokenizer = match &files.tokenizer {
            Some(p) if opts.tokenizer => Some(Tokenizer::from_file(p)?),
            _ => None,
        };
        let mut model = Model::from_params(config, attention, head, params, tokenizer)?;
        model.set_precision(opts.precision)?;
        model.pooling = pooling;
        model.report = report;
        model.files = Some(files);
        Ok(model)
    }

    /// Builds a model from canonical parameters (see [`Params`]); `head` needs
    /// `classifier.*` and the pooler among them.
    pub fn from_params(
        mut config: Config,
        attention: AttentionConfig,
        head: Option<HeadKind>,
        params: Params,
        tokenizer: Option<Tokenizer>,
    ) -> Result<Model> {
        let bert = Bert::new(&config, attention, &params)?;
        let head = match head {
            Some(kind) => {
                if !bert.has_pooler() {
                    return Err(Error::Weights {
                        path: params.source().to_path_buf(),
                        message: "a task head needs the pooler (bert.pooler.dense.*)".into(),
                    });
                }
                if let (HeadKind::Classification { num_labels }, Some(labels)) =
                    (kind, config.labels())
                    && labels.len() != num_labels
                {
                    return Err(Error::Config(format!(
                        "{} label names for a classification head of {num_labels} labels",
                        labels.len()
                    )));
                }
                config.problem_type = match kind {
                    HeadKind::Classification { .. } => Some(ProblemType::SingleLabelClassification),
                    HeadKind::Regression => Some(ProblemType::Regression),
                    _ => None,
                };
                let lin = Linear::load(&params, "classifier", config.hidden_size, kind.outputs())?;
                Some((kind, lin))
            }
            None => None,
        };
        Ok(Model {
            config,
            bert,
            head,
            pooling: Pooling::Cls,
            params,
            tokenizer,
            report: LoadReport::default(),
            files: None,
        })
    }

    /// A randomly initialised model of `config` (N(0, initializer_range²) from `seed`).
    pub fn random(
        config: Config,
        attention: AttentionConfig,
        head: Option<HeadKind>,
        seed: u64,
        device: &Device,
    ) -> Result<Model> {
        let mut shapes = encoder_shapes(&config);
        shapes.extend(pooler_shapes(&config));
        if let Some(h) = head {
            shapes.extend(head_shapes(&config, h));
        }
        let mut params = Params::new(BTreeMap::new(), PathBuf::from("<random init>"));
        for (name, shape) in shapes {
            params.init_if_missing(&name, shape, config.initializer_range, seed, device)?;
        }
        Model::from_params(config, attention, head, params, None)
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The attention configuration.
    pub fn attention(&self) -> &AttentionConfig {
        self.bert.attention()
    }

    /// Replaces the attention configuration.
    pub fn set_attention(&mut self, attention: AttentionConfig) -> Result<()> {
        self.bert.set_attention(attention)
    }

    /// The storage precision of the encoder's dense weights.
    pub fn precision(&self) -> Precision {
        self.bert.precision()
    }

    /// Stores the encoder's dense weights in `precision` (from the f32 originals, which are
    /// kept: [`Precision::F32`] restores them). Refused for a trainable model (reduced
    /// precision is inference-only) and, changing nothing, when a dimension is not a multiple
    /// of the precision's block size.
    pub fn set_precision(&mut self, precision: Precision) -> Result<()> {
        if precision != Precision::F32 && !self.params.vars().is_empty() {
            return Err(Error::Config(format!(
                "precision {precision} is inference-only, and this model's parameters are \
                 trainable; load it with trainable = false to use reduced precision"
            )));
        }
        self.bert.set_precision(precision)
    }

    /// Autocast of the encoder's dense matmuls for reduced-precision training (see
    /// [`Bert::set_autocast`]): the parameters stay f32.
    ///
    /// # Errors
    /// When `dtype` is not bf16 or f16.
    pub fn set_autocast(&mut self, dtype: Option<candle_core::DType>) -> Result<()> {
        self.bert.set_autocast(dtype)
    }

    /// The task head, if any.
    pub fn head(&self) -> Option<HeadKind> {
        self.head.as_ref().map(|(k, _)| *k)
    }

    /// The representation the task head reads.
    pub fn pooling(&self) -> Pooling {
        self.pooling
    }

    /// Sets the representation the task head reads (saved in `qattn.json`). Changing it on a
    /// trained head changes what the head's weights mean: set it before fine-tuning.
    pub fn set_pooling(&mut self, pooling: Pooling) {
        self.pooling = pooling;
    }

    /// The tokenizer, when one was loaded.
    pub fn tokenizer(&self) -> Option<&Tokenizer> {
        self.tokenizer.as_ref()
    }

    /// Mutable access to the tokenizer (e.g. to set the truncation length).
    pub fn tokenizer_mut(&mut self) -> Option<&mut Tokenizer> {
        self.tokenizer.as_mut()
    }

    /// The parameters (for optimisers: [`Params::vars`]).
    pub fn params(&self) -> &Params {
        &self.params
    }

    /// The files the model was loaded from.
    pub fn files(&self) -> Option<&ModelFiles> {
        self.files.as_ref()
    }

    /// What loading initialised or ignored.
    pub fn load_report(&self) -> &LoadReport {
        &self.report
    }

    /// The encoder.
    pub fn bert(&self) -> &Bert {
        &self.bert
    }

    /// Encoder outputs (hidden states and pooler).
    pub fn forward(&self, inputs: &Inputs, mode: Mode) -> Result<EncoderOutput> {
        in_pool(mode, inputs, || self.bert.forward(inputs, mode, false))
    }

    /// Encoder outputs with every layer's hidden states.
    pub fn forward_all_layers(&self, inputs: &Inputs, mode: Mode) -> Result<EncoderOutput> {
        in_pool(mode, inputs, || self.bert.forward(inputs, mode, true))
    }

    /// Mean-pooled, L2-normalised sentence embeddings [B, H].
    pub fn sentence_embeddings(&self, inputs: &Inputs, mode: Mode) -> Result<Tensor> {
        let out = self.forward(inputs, mode)?;
        mean_pool_normalize(&out.last_hidden_state, inputs.attention_mask.as_ref())
    }

    /// The head's output for every sequence: logits [B, N] (classification), scores \[B\]
    /// (regression, multiple choice, candidates). Multiple-choice callers reshape the scores of
    /// B·C sequences to [B, C] (see [`Model::choice_logits`]). The head reads the representation
    /// [`Model::pooling`] names.
    pub fn logits(&self, inputs: &Inputs, mode: Mode) -> Result<Tensor> {
        let (kind, lin) = self
            .head
            .as_ref()
            .ok_or_else(|| Error::Config("the model has no task head".into()))?;
        let out = self.forward(inputs, mode)?;
        let pooled = match self.pooling {
            Pooling::Cls => out
                .pooler_output
                .ok_or_else(|| Error::Config("a task head needs the pooler".into()))?,
            Pooling::Mean => mean_pool(&out.last_hidden_state, inputs.attention_mask.as_ref())?,
        };
        let pooled = if mode.train {
            dropout(
                &pooled,
                self.config.head_dropout(),
                self.attention().seed,
                mode,
                u32::MAX,
            )?
        } else {
            pooled
        };
        let y = lin.forward(&pooled)?;
        Ok(match kind {
            HeadKind::Classification { .. } => y,
            _ => y.squeeze(1)?,
        })
    }

    /// Multiple-choice logits [B, C] from `inputs` holding B·C sequences, choice-major within
    /// each example (example 0's C choices first).
    pub fn choice_logits(&self, inputs: &Inputs, num_choices: usize, mode: Mode) -> Result<Tensor> {
        let n = inputs.input_ids.dim(0)?;
        if num_choices == 0 || n % num_choices != 0 {
            return Err(Error::Input(format!(
                "{n} sequences are not a whole number of examples of {num_choices} choices"
            )));
        }
        Ok(self
            .logits(inputs, mode)?
            .reshape((n / num_choices, num_choices))?)
    }

    /// Tokenises `texts` (with optional pairs) and pads them into one batch.
    pub fn tokenize(&self, texts: &[(&str, Option<&str>)]) -> Result<Batch> {
        let tok = self
            .tokenizer
            .as_ref()
            .ok_or_else(|| Error::Tokenizer("the model was loaded without a tokenizer".into()))?;
        let enc = tok.encode_batch(texts)?;
        crate::tokenizer::collate(&enc, tok.pad_id(), self.device())
    }

    /// The device of the parameters.
    pub fn device(&self) -> &Device {
        self.params
            .tensors()
            .values()
            .next()
            .map(|t| t.device())
            .unwrap_or(&Device::Cpu)
    }

    /// The `qattn.json` content of this model.
    pub fn meta(&self) -> QattnMeta {
        QattnMeta {
            format_version: 1,
            attention: self.attention().clone(),
            head: self.head(),
            pooling: self.pooling,
            labels: self.config.labels(),
            qattn_version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }

    /// The config.json to save: `architectures` from the head, `id2label` for classifiers.
    fn config_to_save(&self) -> Config {
        let mut cfg = self.config.clone();
        cfg.architectures = Some(vec![
            self.head()
                .map(|h| h.architecture())
                .unwrap_or("BertModel")
                .to_string(),
        ]);
        match self.head() {
            Some(HeadKind::Classification { num_labels }) if cfg.labels().is_none() => {
                let names: Vec<String> = (0..num_labels).map(|i| format!("LABEL_{i}")).collect();
                cfg.set_labels(&names);
            }
            Some(HeadKind::Regression) => {
                cfg.set_labels(&["LABEL_0".to_string()]);
            }
            _ => {}
        }
        cfg
    }

    /// Writes `config.json`, `model.safetensors` (transformers' `BertFor…` names: `bert.*`,
    /// `classifier.*`), `tokenizer.json` (when loaded) and `qattn.json` into `dir`, each
    /// atomically. The directory is created if needed. A reduced-precision model
    /// ([`Model::precision`]) saves its f32 originals: precision is a load option, not part of
    /// the checkpoint.
    pub fn save_pretrained(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let mut names: Vec<String> = encoder_shapes(&self.config)
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        if self.bert.has_pooler() {
            names.extend(pooler_shapes(&self.config).into_iter().map(|(n, _)| n));
        }
        if self.head.is_some() {
            names.push("classifier.weight".into());
            names.push("classifier.bias".into());
        }
        let mut data = Vec::with_capacity(names.len());
        for name in &names {
            let t = self
                .params
                .tensors()
                .get(name)
                .ok_or_else(|| Error::Config(format!("parameter {name} is missing")))?;
            let t = t.to_dtype(DType::F32)?.to_device(&Device::Cpu)?;
            let shape = t.dims().to_vec();
            let values = t.flatten_all()?.to_vec1::<f32>()?;
            let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
            data.push((name.clone(), shape, bytes));
        }
        let views = data
            .iter()
            .map(|(n, s, b)| {
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                    .map(|v| (n.clone(), v))
                    .map_err(|e| Error::Config(format!("tensor {n}: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        let mut metadata = std::collections::HashMap::new();
        metadata.insert("format".to_string(), "pt".to_string());
        let bytes = safetensors::tensor::serialize(views, Some(metadata))
            .map_err(|e| Error::Config(format!("serialising model.safetensors: {e}")))?;
        write_atomic(&dir.join("model.safetensors"), &bytes)?;
        write_atomic(
            &dir.join("config.json"),
            self.config_to_save().to_json().as_bytes(),
        )?;
        if let Some(tok) = &self.tokenizer {
            write_atomic(&dir.join("tokenizer.json"), tok.to_json()?.as_bytes())?;
        }
        let meta = serde_json::to_string_pretty(&self.meta())
            .map_err(|e| Error::Config(format!("qattn.json: {e}")))?;
        write_atomic(&dir.join("qattn.json"), meta.as_bytes())?;
        Ok(())
    }
}

/// Every shape mismatch, and every missing encoder tensor, in one error (heads and the pooler
/// may be missing: they are initialised).
fn check_checkpoint(
    kept: &BTreeMap<String, Tensor>,
    needed: &[(String, Vec<usize>)],
    source: &Path,
) -> Result<()> {
    let mut problems = Vec::new();
    let mut missing = Vec::new();
    for (name, shape) in needed {
        match kept.get(name) {
            Some(t) if t.dims() != shape.as_slice() => problems.push(format!(
                "{name} has shape {:?}, config.json implies {shape:?}",
                t.dims()
            )),
            Some(_) => {}
            None if name.starts_with("classifier.") || name.starts_with("bert.pooler.") => {}
            None => missing.push(name.clone()),
        }
    }
    if !missing.is_empty() {
        let shown: Vec<&str> = missing.iter().take(8).map(String::as_str).collect();
        problems.push(format!(
            "{} encoder tensors are missing: {}{}",
            missing.len(),
            shown.join(", "),
            if missing.len() > shown.len() {
                ", …"
            } else {
                ""
            }
        ));
    }
    if problems.is_empty() {
        return Ok(());
    }
    Err(Error::Weights {
        path: source.to_path_buf(),
        message: format!(
            "not a BERT checkpoint matching its config.json: {}",
            problems.join("; ")
        ),
    })
}

/// The head a transformers `architectures` entry implies.
fn infer_head(cfg: &Config) -> Option<HeadKind> {
    let arch = cfg.architectures.as_ref()?.first()?.as_str();
    match arch {
        "BertForSequenceClassification" => {
            let n = cfg.id2label.as_ref().map(|m| m.len()).unwrap_or(2);
            if n == 1 || cfg.problem_type == Some(ProblemType::Regression) {
                Some(HeadKind::Regression)
            } else {
                Some(HeadKind::Classification { num_labels: n })
            }
        }
        "BertForMultipleChoice" => Some(HeadKind::MultipleChoice),
        _ => None,
    }
}

/// The most tokens (batch × length) of an inference pass that [`in_pool`] starts on a rayon
/// worker.
const IN_POOL_MAX_TOKENS: usize = 1024;

/// Runs a small inference pass `f` on a worker thread of rayon's global pool (inline when the
/// caller is one); larger passes and training passes run on the calling thread.
///
/// A forward is dozens of rayon parallel regions (every dense layer, attention, the fused
/// element-wise kernels). Started from a thread outside the pool, each region is handed to the
/// pool while the caller sleeps on a latch: a wake-up and a sleep per region. From a pool
/// worker the regions are split by work stealing and the hand-off happens once. On two cores
/// (`bench_forward`, alternating pairs) the forward at 1 × 19 tokens went from 4.7 to
/// 3.9–4.0 ms and at 1 × 128 from 19.0–19.8 to 17.3–17.7 ms.
///
/// The catch is memory: the worker allocates from its own glibc arena, which does not reuse
/// the main arena's freed blocks. At 32 × 128 the forward gained 4% but its peak RSS went from
/// 219 to 303 MiB (one arena for all threads, `M_ARENA_MAX` = 1, kept 211 MiB but made the
/// 1 × 19 forward 15% slower through the arena's lock). So only passes of at most
/// [`IN_POOL_MAX_TOKENS`] tokens, where the hand-offs are a large share of the time and the
/// activations are small, move to a worker. Training passes stay too: their activations and
/// gradients (tens of MB each) belong in the main arena, where
/// [`qattn_kernels::memory::retain_freed_memory`] keeps them between steps (on a worker the
/// step was 4–30% slower, `bench_train` at 32 × 128).
fn in_pool<R: Send>(mode: Mode, inputs: &Inputs, f: impl FnOnce() -> R + Send) -> R {
    if mode.train || inputs.input_ids.elem_count() > IN_POOL_MAX_TOKENS {
        f()
    } else {
        rayon::scope(|_| f())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_inference_passes_run_on_a_pool_worker_and_the_rest_on_the_caller() {
        let ids =
            |n: usize| Inputs::from_ids(Tensor::zeros((1, n), DType::U32, &Device::Cpu).unwrap());
        let on_worker = |mode: Mode, inputs: &Inputs| {
            in_pool(mode, inputs, || rayon::current_thread_index().is_some())
        };
        // The test thread is not a rayon worker.
        assert!(rayon::current_thread_index().is_none());
        assert!(on_worker(Mode::EVAL, &ids(19)));
        assert!(on_worker(Mode::EVAL, &ids(IN_POOL_MAX_TOKENS)));
        assert!(!on_worker(Mode::EVAL, &ids(IN_POOL_MAX_TOKENS + 1)));
        assert!(!on_worker(Mode::train(0), &ids(19)));
    }

    #[test]
    fn canonical_names() {
        assert_eq!(
            canonical_name("embeddings.word_embeddings.weight"),
            ("bert.embeddings.word_embeddings.weight".to_string(), true)
        );
        assert_eq!(
            canonical_name("bert.encoder.layer.0.output.LayerNorm.gamma"),
            (
                "bert.encoder.layer.0.output.LayerNorm.weight".to_string(),
                false
            )
        );
        assert_eq!(
            canonical_name("classifier.bias"),
            ("classifier.bias".to_string(), false)
        );
    }

    #[test]
    fn infer_head_from_architectures() {
        let mut c = Config::tiny();
        assert_eq!(infer_head(&c), None);
        c.architectures = Some(vec!["BertForSequenceClassification".into()]);
        assert_eq!(
            infer_head(&c),
            Some(HeadKind::Classification { num_labels: 2 })
        );
        c.set_labels(&["x".into()]);
        assert_eq!(infer_head(&c), Some(HeadKind::Regression));
        c.architectures = Some(vec!["BertForMultipleChoice".into()]);
        assert_eq!(infer_head(&c), Some(HeadKind::MultipleChoice));
    }
}
