//! The BERT encoder: embeddings, encoder layers whose self-attention runs through
//! qattn-kernels with the configured estimator per layer/head, and the pooler.

use crate::attention::{AttentionConfig, SeedStream, derive};
use crate::config::{Activation, Config};
use crate::error::{Error, Result};
use crate::params::Params;
use crate::precision::{Precision, ReducedWeight};
use candle_core::{D, DType, Device, IndexOp, Tensor};
use qattn_kernels::packed::PackedWeight;
use qattn_kernels::{AttentionOptions, attention};
use rayon::prelude::*;
use std::sync::{Arc, OnceLock};

/// Training or inference, and the training step that seeds attention draws and dropout.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Mode {
    /// Training mode: dropout on, differentiable LayerNorm.
    pub train: bool,
    /// The optimiser step (0 at inference); part of every seed.
    pub step: u64,
    /// Index of this batch's first sequence in a larger logical batch (0 unless a batch is
    /// split across processes). Dropout masks and attention draws are keyed per sequence by
    /// `row_offset + b`, so each shard of a split batch draws what the whole batch would.
    pub row_offset: u64,
}

impl Mode {
    /// Inference: no dropout, step 0.
    pub const EVAL: Mode = Mode {
        train: false,
        step: 0,
        row_offset: 0,
    };

    /// Training at `step`.
    pub fn train(step: u64) -> Self {
        Mode {
            train: true,
            step,
            row_offset: 0,
        }
    }

    /// This mode for the rows starting at `row_offset` of a larger logical batch.
    pub fn at_row(self, row_offset: u64) -> Self {
        Mode { row_offset, ..self }
    }
}

/// Token inputs of one batch.
#[derive(Clone, Debug)]
pub struct Inputs {
    /// Token ids [B, L] (u32 or i64).
    pub input_ids: Tensor,
    /// Segment ids [B, L]; zeros when `None`.
    pub token_type_ids: Option<Tensor>,
    /// 1 for real tokens, 0 for padding, [B, L]; all ones when `None`.
    pub attention_mask: Option<Tensor>,
}

impl Inputs {
    /// Inputs of `ids` with no segments and no padding.
    pub fn from_ids(input_ids: Tensor) -> Self {
        Inputs {
            input_ids,
            token_type_ids: None,
            attention_mask: None,
        }
    }
}

impl From<&crate::tokenizer::Batch> for Inputs {
    fn from(b: &crate::tokenizer::Batch) -> Self {
        Inputs {
            input_ids: b.input_ids.clone(),
            token_type_ids: Some(b.token_type_ids.clone()),
            attention_mask: Some(b.attention_mask.clone()),
        }
    }
}

/// What the encoder returns.
#[derive(Clone, Debug)]
pub struct EncoderOutput {
    /// The last layer's hidden states [B, L, H].
    pub last_hidden_state: Tensor,
    /// tanh(W·h_\[CLS\] + b) [B, H], when the model has a pooler.
    pub pooler_output: Option<Tensor>,
    /// Embedding output followed by every layer's output (when requested), each [B, L, H].
    pub hidden_states: Vec<Tensor>,
}

/// A dense layer y = x Wᵀ + b over the last dimension, computed as one 2-D matmul.
#[derive(Clone, Debug)]
pub(crate) struct Linear {
    pub(crate) weight: Tensor,
    pub(crate) bias: Tensor,
    /// The weight in reduced precision, used instead of `weight` when set.
    reduced: Option<ReducedWeight>,
    /// The weight packed for small-batch inference ([`qattn_kernels::packed`]), built on the
    /// first call that takes that path. Shared by clones of the layer.
    packed: Arc<OnceLock<PackedWeight>>,
    /// Autocast: the matmul runs in this dtype (inputs and weight cast to it, the product cast
    /// back to the input's dtype, the bias added there), so the weight keeps its own dtype —
    /// f32 master weights — and its gradient flows back through the casts.
    autocast: Option<DType>,
}

impl Linear {
    pub(crate) fn load(p: &Params, name: &str, in_dim: usize, out_dim: usize) -> Result<Self> {
        Ok(Linear {
            weight: p.get(&format!("{name}.weight"), (out_dim, in_dim))?,
            bias: p.get(&format!("{name}.bias"), out_dim)?,
            reduced: None,
            packed: Arc::default(),
            autocast: None,
        })
    }

    /// Stores the weight of layer `name` in `precision` (f32: the original weight).
    fn set_precision(&mut self, precision: Precision, name: &str) -> Result<()> {
        self.reduced = ReducedWeight::new(&self.weight, precision, name)?;
        Ok(())
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if self.takes_dense(x) {
            return Ok(qattn_kernels::dense::linear(
                x,
                &self.weight,
                Some(&self.bias),
            )?);
        }
        add_bias(&self.project(x)?, &self.bias)
    }

    /// x Wᵀ without the bias (for the fused bias + activation / bias + residual + LayerNorm).
    pub(crate) fn project(&self, x: &Tensor) -> Result<Tensor> {
        if self.takes_dense(x) {
            return Ok(qattn_kernels::dense::linear(x, &self.weight, None)?);
        }
        let dims = x.dims().to_vec();
        let (last, lead) = dims
            .split_last()
            .ok_or_else(|| Error::Input("a dense layer needs at least one dimension".into()))?;
        let rows: usize = lead.iter().product();
        let x2 = x.reshape((rows, *last))?;
        let y = match (&self.reduced, self.autocast) {
            (_, Some(dt)) if self.autocasts(x) => x2
                .to_dtype(dt)?
                .matmul(&self.weight.to_dtype(dt)?.t()?)?
                .to_dtype(x.dtype())?,
            (Some(r), _) => r.matmul_t(&x2)?,
            (None, _) if self.takes_packed(&x2) => once(&self.packed, || {
                Ok(PackedWeight::from_tensor(&self.weight)?)
            })?
            .matmul_t(&x2)?,
            (None, _) => x2.matmul(&self.weight.t()?)?,
        };
        let mut out = lead.to_vec();
        out.push(self.weight.dim(0)?);
        Ok(y.reshape(out)?)
    }

    /// Whether the matmul runs under autocast: a compute dtype is set and differs from the
    /// input's.
    fn autocasts(&self, x: &Tensor) -> bool {
        self.autocast.is_some_and(|dt| dt != x.dtype())
    }

    /// Whether `x Wᵀ` takes [`qattn_kernels::dense::linear`] (one autograd node, the bias
    /// accumulated by the GEMM): an f32 weight on the CPU, no autocast, and not the packed
    /// kernel — in practice the f32 training path, where the weight is a `Var`.
    fn takes_dense(&self, x: &Tensor) -> bool {
        self.reduced.is_none()
            && !self.autocasts(x)
            && !self.takes_packed(x)
            && qattn_kernels::fused::supported(x)
            && qattn_kernels::fused::supported(&self.weight)
    }

    /// Whether `x Wᵀ` takes the packed-weight kernel: an f32 weight (no reduced precision) at
    /// inference (neither the input nor the weight tracks gradients — a trainable weight
    /// changes between steps, and a packed copy would go stale), both on the CPU, a CPU with
    /// FMA.
    fn takes_packed(&self, x: &Tensor) -> bool {
        self.reduced.is_none()
            && !x.track_op()
            && !self.weight.track_op()
            && qattn_kernels::fused::supported(x)
            && qattn_kernels::fused::supported(&self.weight)
            && self.weight.dims2().is_ok_and(|(n, k)| {
                qattn_kernels::packed::worth_it(x.elem_count() / k.max(1), k, n)
            })
    }
}

/// The value of `cell`, built by `init` on first use (a failed build leaves it empty).
fn once<T>(cell: &OnceLock<T>, init: impl FnOnce() -> Result<T>) -> Result<&T> {
    match cell.get() {
        Some(v) => Ok(v),
        None => {
            let v = init()?;
            Ok(cell.get_or_init(|| v))
        }
    }
}

/// `y + bias` over the last dimension: the fused op (parallel bias gradient) for f32 on the
/// CPU, candle's broadcast add otherwise.
fn add_bias(y: &Tensor, bias: &Tensor) -> Result<Tensor> {
    if qattn_kernels::fused::supported(y) && qattn_kernels::fused::supported(bias) {
        Ok(qattn_kernels::fused::bias_add(y, bias)?)
    } else {
        Ok(y.broadcast_add(bias)?)
    }
}

#[derive(Clone, Debug)]
struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    fn load(p: &Params, name: &str, size: usize, eps: f64) -> Result<Self> {
        Ok(LayerNorm {
            weight: p.get(&format!("{name}.weight"), size)?,
            bias: p.get(&format!("{name}.bias"), size)?,
            eps,
        })
    }

    /// LayerNorm(x + bias + residual) (bias and residual optional). f32 on the CPU takes the
    /// fused kernel (one pass, with its own backward), written over `x` at inference (`x` is
    /// taken by value: callers pass a fresh result nobody else reads); other dtypes and devices
    /// the candle ops.
    fn forward(
        &self,
        x: Tensor,
        bias: Option<&Tensor>,
        residual: Option<&Tensor>,
        mode: Mode,
    ) -> Result<Tensor> {
        if qattn_kernels::fused::supported(&x) {
            let zeros;
            let bias = match bias {
                Some(b) => b,
                None => {
                    zeros = self.bias.zeros_like()?;
                    &zeros
                }
            };
            if !mode.train && !x.track_op() && x.is_contiguous() {
                qattn_kernels::fused::bias_residual_layer_norm_(
                    &x,
                    bias,
                    residual,
                    &self.weight,
                    &self.bias,
                    self.eps,
                )?;
                return Ok(x);
            }
            return Ok(qattn_kernels::fused::bias_residual_layer_norm(
                &x,
                bias,
                residual,
                &self.weight,
                &self.bias,
                self.eps,
            )?);
        }
        let mut z = match bias {
            Some(b) => x.broadcast_add(b)?,
            None => x,
        };
        if let Some(r) = residual {
            z = (z + r)?;
        }
        // candle-nn's fused kernel has no backward; training takes the composed form.
        let y = if mode.train {
            candle_nn::ops::layer_norm_slow(&z, &self.weight, &self.bias, self.eps as f32)?
        } else {
            candle_nn::ops::layer_norm(&z.contiguous()?, &self.weight, &self.bias, self.eps as f32)?
        };
        Ok(y)
    }
}

/// Inverted dropout whose mask comes from a Philox stream of (seed, step, site), so a training
/// run is reproducible from its seed (candle's CPU RNG cannot be seeded).
pub(crate) fn dropout(x: &Tensor, p: f64, seed: u64, mode: Mode, site: u32) -> Result<Tensor> {
    if p <= 0.0 {
        return Ok(x.clone());
    }
    let n = x.elem_count();
    // One Philox key per sequence (dimension 0), keyed by its index in the logical batch, and
    // the counter runs over the sequence's elements in row-major order: a sequence gets the
    // same mask whichever shard of a split batch it is in, and however long the batch's
    // padding is (the element at (t, h) of a [B, L, H] tensor is number t·H + h of its row).
    let rows = if x.rank() == 0 { 1 } else { x.dim(0)? };
    let per_row = n / rows.max(1);
    let keep = 1.0 - p;
    let scale = (1.0 / keep) as f32;
    let threshold = (keep * 4_294_967_296.0) as u64;
    if n == 0 {
        return Ok(x.clone());
    }
    // Rows are independent streams, so generating them in parallel gives the same mask.
    let mut mask = vec![0f32; n];
    mask.par_chunks_mut(per_row)
        .enumerate()
        .for_each(|(r, out)| {
            let row = mode.row_offset + r as u64;
            let key = derive(
                seed,
                SeedStream::Dropout,
                mode.step,
                site,
                (row & 0x00FF_FFFF) as u32,
            );
            let key = [key as u32, (key >> 32) as u32];
            for (ctr, block) in out.chunks_mut(4).enumerate() {
                let ctr = ctr as u64;
                let w4 = qattn_kernels::philox::philox4x32_10(
                    [ctr as u32, (ctr >> 32) as u32, 0, 0],
                    key,
                );
                for (m, w) in block.iter_mut().zip(w4) {
                    *m = if u64::from(w) < threshold { scale } else { 0.0 };
                }
            }
        });
    let mask = Tensor::from_vec(mask, x.shape(), &Device::Cpu)?
        .to_device(x.device())?
        .to_dtype(x.dtype())?;
    Ok((x * mask)?)
}

#[derive(Clone, Debug)]
struct Embeddings {
    word: Tensor,
    position: Tensor,
    token_type: Tensor,
    norm: LayerNorm,
}

impl Embeddings {
    fn load(p: &Params, cfg: &Config) -> Result<Self> {
        let h = cfg.hidden_size;
        Ok(Embeddings {
            word: p.get(
                "bert.embeddings.word_embeddings.weight",
                (cfg.vocab_size, h),
            )?,
            position: p.get(
                "bert.embeddings.position_embeddings.weight",
                (cfg.max_position_embeddings, h),
            )?,
            token_type: p.get(
                "bert.embeddings.token_type_embeddings.weight",
                (cfg.type_vocab_size, h),
            )?,
            norm: LayerNorm::load(p, "bert.embeddings.LayerNorm", h, cfg.layer_norm_eps)?,
        })
    }
}

#[derive(Clone, Debug)]
struct Layer {
    query: Linear,
    key: Linear,
    value: Linear,
    attn_out: Linear,
    attn_norm: LayerNorm,
    intermediate: Linear,
    output: Linear,
    out_norm: LayerNorm,
    /// Query, key and value packed as one `[3H, H]` weight with their biases, for inference:
    /// one matmul instead of three. Built on first use, shared by clones.
    qkv: Arc<OnceLock<(PackedWeight, Vec<f32>)>>,
    /// The same three weights stacked as one dense `[3H, H]` tensor with their `[3H]` biases,
    /// for inference through gemm (when the packed kernel is not taken): one matmul and one
    /// parallel split instead of three matmuls and three single-threaded transposes. Built on
    /// first use, shared by clones.
    qkv_dense: Arc<OnceLock<(Tensor, Tensor)>>,
}

impl Layer {
    fn load(p: &Params, cfg: &Config, i: usize) -> Result<Self> {
        let h = cfg.hidden_size;
        let eps = cfg.layer_norm_eps;
        let pre = format!("bert.encoder.layer.{i}");
        Ok(Layer {
            query: Linear::load(p, &format!("{pre}.attention.self.query"), h, h)?,
            key: Linear::load(p, &format!("{pre}.attention.self.key"), h, h)?,
            value: Linear::load(p, &format!("{pre}.attention.self.value"), h, h)?,
            attn_out: Linear::load(p, &format!("{pre}.attention.output.dense"), h, h)?,
            attn_norm: LayerNorm::load(p, &format!("{pre}.attention.output.LayerNorm"), h, eps)?,
            intermediate: Linear::load(
                p,
                &format!("{pre}.intermediate.dense"),
                h,
                cfg.intermediate_size,
            )?,
            output: Linear::load(p, &format!("{pre}.output.dense"), cfg.intermediate_size, h)?,
            out_norm: LayerNorm::load(p, &format!("{pre}.output.LayerNorm"), h, eps)?,
            qkv: Arc::default(),
            qkv_dense: Arc::default(),
        })
    }

    /// The layer's dense layers with their parameter prefixes.
    fn dense_mut(&mut self, i: usize) -> [(&mut Linear, String); 6] {
        let pre = format!("bert.encoder.layer.{i}");
        [
            (&mut self.query, format!("{pre}.attention.self.query")),
            (&mut self.key, format!("{pre}.attention.self.key")),
            (&mut self.value, format!("{pre}.attention.self.value")),
            (&mut self.attn_out, format!("{pre}.attention.output.dense")),
            (&mut self.intermediate, format!("{pre}.intermediate.dense")),
            (&mut self.output, format!("{pre}.output.dense")),
        ]
    }
}

/// The BERT encoder (embeddings, layers, optional pooler) with pluggable attention.
#[derive(Clone, Debug)]
pub struct Bert {
    config: Config,
    attention: AttentionConfig,
    embeddings: Embeddings,
    layers: Vec<Layer>,
    pooler: Option<Linear>,
    precision: Precision,
}

impl Bert {
    /// Builds the encoder from canonical (`bert.`-prefixed) parameters.
    pub fn new(cfg: &Config, attention: AttentionConfig, p: &Params) -> Result<Self> {
        cfg.validate()?;
        attention.validate(cfg.num_hidden_layers, cfg.num_attention_heads)?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| Layer::load(p, cfg, i))
            .collect::<Result<Vec<_>>>()?;
        let pooler = if p.contains("bert.pooler.dense.weight") {
            Some(Linear::load(
                p,
                "bert.pooler.dense",
                cfg.hidden_size,
                cfg.hidden_size,
            )?)
        } else {
            None
        };
        Ok(Bert {
            config: cfg.clone(),
            attention,
            embeddings: Embeddings::load(p, cfg)?,
            layers,
            pooler,
            precision: Precision::F32,
        })
    }

    /// The storage precision of the encoder layers' dense weights.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Stores the dense weights of every encoder layer (Q, K, V, attention output,
    /// intermediate, output) in `precision`, from the f32 originals (so any precision can be
    /// set at any time; [`Precision::F32`] restores the originals). Embeddings, LayerNorms and
    /// the pooler stay f32. Errors, changing nothing, when a layer's input dimension is not a
    /// multiple of the precision's block size (see [`crate::precision`]).
    pub fn set_precision(&mut self, precision: Precision) -> Result<()> {
        let cfg = &self.config;
        crate::precision::check_block(
            "the encoder's Q, K, V, attention-output and intermediate layers (hidden_size)",
            cfg.hidden_size,
            precision,
        )?;
        crate::precision::check_block(
            "the encoder's output dense layers (intermediate_size)",
            cfg.intermediate_size,
            precision,
        )?;
        let mut layers = self.layers.clone();
        for (i, layer) in layers.iter_mut().enumerate() {
            for (lin, name) in layer.dense_mut(i) {
                lin.set_precision(precision, &name)?;
            }
        }
        self.layers = layers;
        self.precision = precision;
        Ok(())
    }

    /// Autocast for training in reduced precision: the matmuls of every encoder layer's six
    /// dense layers run in `dtype` (bf16 or f16; `None` turns it off), their inputs and the
    /// f32 weights cast to it and the products cast back to f32, so parameters stay f32
    /// (master weights) and receive f32 gradients through the casts. Embeddings, attention,
    /// LayerNorm, GELU, the pooler and task heads stay f32, as under PyTorch's autocast.
    /// On the CPU candle widens bf16 matmuls to f32 internally, so there this reproduces the
    /// rounding of reduced precision without its speed.
    ///
    /// # Errors
    /// When `dtype` is not bf16 or f16.
    pub fn set_autocast(&mut self, dtype: Option<DType>) -> Result<()> {
        if let Some(dt) = dtype
            && !matches!(dt, DType::BF16 | DType::F16)
        {
            return Err(Error::Config(format!(
                "autocast runs matmuls in bf16 or f16, not {dt:?}"
            )));
        }
        for (i, layer) in self.layers.iter_mut().enumerate() {
            for (lin, _) in layer.dense_mut(i) {
                lin.autocast = dtype;
            }
        }
        Ok(())
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The attention configuration.
    pub fn attention(&self) -> &AttentionConfig {
        &self.attention
    }

    /// Replaces the attention configuration (validated against the layer and head counts).
    pub fn set_attention(&mut self, attention: AttentionConfig) -> Result<()> {
        attention.validate(
            self.config.num_hidden_layers,
            self.config.num_attention_heads,
        )?;
        self.attention = attention;
        Ok(())
    }

    /// Whether the checkpoint had a pooler.
    pub fn has_pooler(&self) -> bool {
        self.pooler.is_some()
    }

    /// The per-head query, key and value tensors [B, heads, L, head_dim] that self-attention of
    /// layer `layer` (0-based) receives at inference: the layer's projections of the hidden
    /// state entering it (the embedding output for layer 0), which the layers before it compute
    /// with this encoder's attention configuration in [`Mode::EVAL`]. Exact attention on them,
    /// with `inputs.attention_mask` as the key mask, is that layer's attention context.
    pub fn attention_inputs(
        &self,
        inputs: &Inputs,
        layer: usize,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        let n = self.layers.len();
        let block = self.layers.get(layer).ok_or_else(|| {
            Error::Input(format!(
                "layer {layer} does not exist: the model has {n} layers (0..{n})"
            ))
        })?;
        let truncated = Bert {
            layers: self.layers[..layer].to_vec(),
            pooler: None,
            ..self.clone()
        };
        let x = truncated
            .forward(inputs, Mode::EVAL, false)?
            .last_hidden_state;
        self.project_qkv(block, &x)
    }

    /// Runs the encoder. With `all_hidden_states`, the output also holds the embedding output
    /// and every layer's output.
    pub fn forward(
        &self,
        inputs: &Inputs,
        mode: Mode,
        all_hidden_states: bool,
    ) -> Result<EncoderOutput> {
        let cfg = &self.config;
        let (b, l) = inputs.input_ids.dims2().map_err(|_| {
            Error::Input(format!(
                "input_ids must be [batch, length], got {:?}",
                inputs.input_ids.dims()
            ))
        })?;
        if l == 0 || b == 0 {
            return Err(Error::Input("empty batch or zero-length sequence".into()));
        }
        if mode.train && self.precision != Precision::F32 {
            return Err(Error::Config(format!(
                "training needs f32 weights, but this model's encoder weights are {}: reduced \
                 precision is inference-only (load the model with precision f32 to train it)",
                self.precision
            )));
        }
        if l > cfg.max_position_embeddings {
            return Err(Error::Input(format!(
                "sequence length {l} exceeds max_position_embeddings {}; truncate the input",
                cfg.max_position_embeddings
            )));
        }
        let ids = to_u32(&inputs.input_ids, "input_ids")?;
        check_range(&ids, cfg.vocab_size, "input_ids", "vocab_size")?;
        let dev = self.embeddings.word.device().clone();
        let types = match &inputs.token_type_ids {
            Some(t) => {
                check_same_shape(t, (b, l), "token_type_ids")?;
                let t = to_u32(t, "token_type_ids")?;
                check_range(&t, cfg.type_vocab_size, "token_type_ids", "type_vocab_size")?;
                t
            }
            None => Tensor::zeros((b, l), DType::U32, &dev)?,
        };
        let mask = match &inputs.attention_mask {
            Some(m) => {
                check_same_shape(m, (b, l), "attention_mask")?;
                Some(m.clone())
            }
            None => None,
        };

        let e = &self.embeddings;
        let flat = ids.flatten_all()?;
        let words = e
            .word
            .index_select(&flat, 0)?
            .reshape((b, l, cfg.hidden_size))?;
        let types = e
            .token_type
            .index_select(&types.flatten_all()?, 0)?
            .reshape((b, l, cfg.hidden_size))?;
        let pos = e.position.narrow(0, 0, l)?.unsqueeze(0)?;
        let mut x = words.broadcast_add(&pos)?.add(&types)?;
        x = e.norm.forward(x, None, None, mode)?;
        x = self.drop(&x, mode, 0)?;

        let mut hidden = Vec::new();
        if all_hidden_states {
            hidden.push(x.clone());
        }
        for (i, layer) in self.layers.iter().enumerate() {
            x = self.layer_forward(layer, i, &x, mask.as_ref(), mode)?;
            if all_hidden_states {
                hidden.push(x.clone());
            }
        }
        let pooler_output = match &self.pooler {
            Some(p) => Some(p.forward(&x.i((.., 0))?.contiguous()?)?.tanh()?),
            None => None,
        };
        Ok(EncoderOutput {
            last_hidden_state: x,
            pooler_output,
            hidden_states: hidden,
        })
    }

    fn drop(&self, x: &Tensor, mode: Mode, site: u32) -> Result<Tensor> {
        if !mode.train {
            return Ok(x.clone());
        }
        dropout(
            x,
            self.config.hidden_dropout_prob,
            self.attention.seed,
            mode,
            site,
        )
    }

    fn layer_forward(
        &self,
        layer: &Layer,
        index: usize,
        x: &Tensor,
        mask: Option<&Tensor>,
        mode: Mode,
    ) -> Result<Tensor> {
        let (q, k, v) = self.project_qkv(layer, x)?;
        let ctx = self.attend(index, &q, &k, &v, mask, mode)?;
        self.after_attention(layer, index, x, &ctx, mode)
    }

    /// The per-head query, key and value projections [B, nh, L, dh] of `x` [B, L, H].
    fn project_qkv(&self, layer: &Layer, x: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let (b, l, _) = x.dims3()?;
        let nh = self.config.num_attention_heads;
        let dh = self.config.head_dim();
        // [B, L, H] → [B, nh, L, dh]
        let heads = |t: Tensor| -> Result<Tensor> {
            Ok(t.reshape((b, l, nh, dh))?.transpose(1, 2)?.contiguous()?)
        };
        let x2 = x.reshape((b * l, ()))?;
        if [&layer.query, &layer.key, &layer.value]
            .iter()
            .all(|d| d.takes_packed(&x2))
        {
            let (w, bias) = once(&layer.qkv, || {
                let w = PackedWeight::stacked(&[
                    &layer.query.weight,
                    &layer.key.weight,
                    &layer.value.weight,
                ])?;
                let bias =
                    Tensor::cat(&[&layer.query.bias, &layer.key.bias, &layer.value.bias], 0)?
                        .to_dtype(DType::F32)?
                        .to_vec1::<f32>()?;
                Ok((w, bias))
            })?;
            // [B·L, 3H] → q, k, v [B, nh, L, dh], in one parallel pass.
            let y = w.matmul_bias_t(&x2, Some(bias))?;
            return Ok(qattn_kernels::heads::split_qkv(&y, b, l, nh, dh)?);
        }
        let qkv = [&layer.query, &layer.key, &layer.value];
        if !x2.track_op()
            && qkv
                .iter()
                .all(|d| d.takes_dense(&x2) && !d.weight.track_op() && !d.bias.track_op())
        {
            let (w, bias) = once(&layer.qkv_dense, || {
                let w = Tensor::cat(&qkv.map(|d| &d.weight), 0)?.contiguous()?;
                let bias = Tensor::cat(&qkv.map(|d| &d.bias), 0)?.to_dtype(DType::F32)?;
                Ok((w, bias))
            })?;
            // [B·L, 3H] → q, k, v [B, nh, L, dh], in one parallel pass.
            let y = qattn_kernels::dense::linear(&x2, w, Some(bias))?;
            return Ok(qattn_kernels::heads::split_qkv(&y, b, l, nh, dh)?);
        }
        Ok((
            heads(layer.query.forward(x)?)?,
            heads(layer.key.forward(x)?)?,
            heads(layer.value.forward(x)?)?,
        ))
    }

    /// The rest of a layer once its attention context `ctx` [B, nh, L, dh] is known: output
    /// projection, residual + LayerNorm, feed-forward, residual + LayerNorm.
    fn after_attention(
        &self,
        layer: &Layer,
        index: usize,
        x: &Tensor,
        ctx: &Tensor,
        mode: Mode,
    ) -> Result<Tensor> {
        let cfg = &self.config;
        let (b, l, h) = x.dims3()?;
        let ctx = if !mode.train && !ctx.track_op() && qattn_kernels::fused::supported(ctx) {
            qattn_kernels::heads::merge_heads(ctx)?
        } else {
            ctx.transpose(1, 2)?.contiguous()?.reshape((b, l, h))?
        };
        // Dropout acts between the dense bias and the residual: with it on, the bias is added
        // first; without it, the bias folds into the fused residual + LayerNorm.
        let dropout_on = mode.train && cfg.hidden_dropout_prob > 0.0;
        let a = if dropout_on {
            let a = self.drop(&layer.attn_out.forward(&ctx)?, mode, 1 + 2 * index as u32)?;
            layer.attn_norm.forward(a, None, Some(x), mode)?
        } else {
            layer.attn_norm.forward(
                layer.attn_out.project(&ctx)?,
                Some(&layer.attn_out.bias),
                Some(x),
                mode,
            )?
        };
        let f = layer.intermediate.project(&a)?;
        let bias = &layer.intermediate.bias;
        let f = match cfg.hidden_act {
            Activation::Gelu if qattn_kernels::fused::supported(&f) => {
                if !mode.train && !f.track_op() && f.is_contiguous() {
                    // `f` is the fresh matmul result: GELU over it, no new buffer.
                    qattn_kernels::fused::bias_gelu_(&f, bias)?;
                    f
                } else {
                    qattn_kernels::fused::bias_gelu(&f, bias)?
                }
            }
            Activation::Gelu => add_bias(&f, bias)?.gelu_erf()?,
            Activation::GeluTanh => add_bias(&f, bias)?.gelu()?,
            Activation::Relu => add_bias(&f, bias)?.relu()?,
            Activation::Silu => add_bias(&f, bias)?.silu()?,
        };
        if dropout_on {
            let f = self.drop(&layer.output.forward(&f)?, mode, 2 + 2 * index as u32)?;
            layer.out_norm.forward(f, None, Some(&a), mode)
        } else {
            layer.out_norm.forward(
                layer.output.project(&f)?,
                Some(&layer.output.bias),
                Some(&a),
                mode,
            )
        }
    }

    /// Self-attention of one layer: one kernel call per group of heads sharing an estimator.
    fn attend(
        &self,
        layer: usize,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: Option<&Tensor>,
        mode: Mode,
    ) -> Result<Tensor> {
        let nh = self.config.num_attention_heads;
        let groups = self.attention.groups(layer, nh);
        let opts = |spec: &qattn_kernels::EstimatorSpec, first: usize| AttentionOptions {
            estimator: *spec,
            seed: self.attention.seed_for(mode.step, layer, first),
            causal: false,
            scale: None,
            grad_mode: self.attention.grad_mode,
            mask: mask.cloned(),
            batch_offset: mode.row_offset as usize,
        };
        if groups.len() == 1 {
            return Ok(attention(q, k, v, &opts(&groups[0].0, 0))?);
        }
        let mut outs: Vec<Option<Tensor>> = vec![None; nh];
        for (spec, hs) in &groups {
            let idx = Tensor::new(
                hs.iter().map(|&h| h as u32).collect::<Vec<_>>().as_slice(),
                q.device(),
            )?;
            let pick =
                |t: &Tensor| -> Result<Tensor> { Ok(t.index_select(&idx, 1)?.contiguous()?) };
            let o = attention(&pick(q)?, &pick(k)?, &pick(v)?, &opts(spec, hs[0]))?;
            for (j, &h) in hs.iter().enumerate() {
                outs[h] = Some(o.narrow(1, j, 1)?);
            }
        }
        let outs: Vec<Tensor> = outs.into_iter().flatten().collect();
        Ok(Tensor::cat(&outs, 1)?)
    }
}

fn to_u32(t: &Tensor, name: &str) -> Result<Tensor> {
    match t.dtype() {
        DType::U32 => Ok(t.clone()),
        DType::I64 | DType::U8 => Ok(t.to_dtype(DType::U32)?),
        other => Err(Error::Input(format!(
            "{name} must be an integer tensor (u32/i64), got {other:?}"
        ))),
    }
}

fn check_same_shape(t: &Tensor, (b, l): (usize, usize), name: &str) -> Result<()> {
    if t.dims() != [b, l] {
        return Err(Error::Input(format!(
            "{name} has shape {:?}, input_ids has [{b}, {l}]",
            t.dims()
        )));
    }
    Ok(())
}

fn check_range(t: &Tensor, limit: usize, name: &str, field: &str) -> Result<()> {
    let max = t.flatten_all()?.max(D::Minus1)?.to_scalar::<u32>()?;
    if max as usize >= limit {
        return Err(Error::Input(format!(
            "{name} contains {max}, but the model's {field} is {limit}"
        )));
    }
    Ok(())
}

/// Mean of the hidden states over real (mask = 1) tokens, then L2-normalised: the
/// sentence-transformers embedding. `hidden` [B, L, H], `mask` [B, L] → [B, H].
pub fn mean_pool_normalize(hidden: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
    let mean = mean_pool(hidden, mask)?;
    let norm = mean
        .sqr()?
        .sum_keepdim(1)?
        .sqrt()?
        .clamp(1e-12, f64::INFINITY)?;
    Ok(mean.broadcast_div(&norm)?)
}

/// The mean of `hidden` [B, L, H] over the positions where `mask` [B, L] is 1 (all positions
/// without a mask): [B, H]. A row whose mask is all zero gives zeros rather than NaN.
pub fn mean_pool(hidden: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
    let (b, l, _) = hidden.dims3()?;
    let mask = match mask {
        Some(m) => m.to_dtype(hidden.dtype())?,
        None => Tensor::ones((b, l), hidden.dtype(), hidden.device())?,
    };
    let summed = hidden.broadcast_mul(&mask.unsqueeze(2)?)?.sum(1)?;
    let count = mask.sum_keepdim(1)?.clamp(1e-9, f64::INFINITY)?;
    Ok(summed.broadcast_div(&count)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::model::Model;

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    /// At inference a dense layer takes the packed-weight kernel (when the CPU has one) and
    /// agrees with candle's matmul.
    #[test]
    fn linear_packed_path_matches_matmul() {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 0.1, (40, 24), &dev).unwrap();
        let lin = Linear {
            weight: w.clone(),
            bias: Tensor::zeros(40, DType::F32, &dev).unwrap(),
            reduced: None,
            packed: Arc::default(),
            autocast: None,
        };
        let x = Tensor::randn(0f32, 1.0, (2, 5, 24), &dev).unwrap();
        let got = lin.project(&x).unwrap();
        assert_eq!(got.dims(), [2, 5, 40]);
        let want = x
            .reshape((10, 24))
            .unwrap()
            .matmul(&w.t().unwrap())
            .unwrap()
            .reshape((2, 5, 40))
            .unwrap();
        assert!(max_abs_diff(&got, &want) < 1e-5);
        assert_eq!(
            lin.packed.get().is_some(),
            qattn_kernels::packed::available(),
            "the packed copy is built exactly when the packed path is available"
        );
    }

    /// Under autocast the product is the reduced-precision matmul of the rounded operands,
    /// cast back to f32 with the bias added there; the f32 master weight stays f32 and gets an
    /// f32 gradient close to the f32 layer's.
    #[test]
    fn autocast_linear_rounds_the_matmul_and_keeps_f32_gradients() {
        let dev = Device::Cpu;
        let var = candle_core::Var::from_tensor(&Tensor::randn(0f32, 0.3, (16, 32), &dev).unwrap())
            .unwrap();
        let bias = Tensor::randn(0f32, 0.1, 16, &dev).unwrap();
        let x = Tensor::randn(0f32, 1.0, (2, 3, 32), &dev).unwrap();
        for dt in [DType::BF16, DType::F16] {
            let mut lin = Linear {
                weight: var.as_tensor().clone(),
                bias: bias.clone(),
                reduced: None,
                packed: Arc::default(),
                autocast: Some(dt),
            };
            let got = lin.forward(&x).unwrap();
            assert_eq!(got.dtype(), DType::F32);
            let want = x
                .reshape((6, 32))
                .unwrap()
                .to_dtype(dt)
                .unwrap()
                .matmul(&var.as_tensor().to_dtype(dt).unwrap().t().unwrap())
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap()
                .broadcast_add(&bias)
                .unwrap()
                .reshape((2, 3, 16))
                .unwrap();
            assert_eq!(max_abs_diff(&got, &want), 0.0, "{dt:?}");
            let g = got.sum_all().unwrap().backward().unwrap();
            let gw = g
                .get(var.as_tensor())
                .expect("the master weight gets a gradient");
            assert_eq!(gw.dtype(), DType::F32);
            lin.autocast = None;
            let full = lin.forward(&x).unwrap();
            let diff = max_abs_diff(&got, &full);
            // bf16 keeps 8 significant bits, f16 11: the products differ, but only by rounding.
            let tol = if dt == DType::BF16 { 5e-2 } else { 5e-3 };
            assert!(diff > 0.0 && diff < tol, "{dt:?}: {diff}");
            let gf = full.sum_all().unwrap().backward().unwrap();
            let gd = max_abs_diff(gw, gf.get(var.as_tensor()).unwrap());
            assert!(gd < tol * 4.0, "{dt:?} gradient: {gd}");
        }
        let mut bert_err = Linear {
            weight: var.as_tensor().clone(),
            bias,
            reduced: None,
            packed: Arc::default(),
            autocast: None,
        };
        bert_err.autocast = Some(DType::F32);
        assert!(
            !bert_err.autocasts(&x),
            "autocast to the input's own dtype is a no-op"
        );
    }

    /// A trainable weight never takes the packed path: after the variable changes, the layer's
    /// output follows it (a packed copy would be stale).
    #[test]
    fn trainable_linear_is_never_packed() {
        let dev = Device::Cpu;
        let var = candle_core::Var::from_tensor(&Tensor::randn(0f32, 0.1, (8, 6), &dev).unwrap())
            .unwrap();
        let lin = Linear {
            weight: var.as_tensor().clone(),
            bias: Tensor::zeros(8, DType::F32, &dev).unwrap(),
            reduced: None,
            packed: Arc::default(),
            autocast: None,
        };
        let x = Tensor::randn(0f32, 1.0, (3, 6), &dev).unwrap();
        assert!(!lin.takes_packed(&x));
        let before = lin.project(&x).unwrap();
        var.set(&Tensor::randn(0f32, 0.1, (8, 6), &dev).unwrap())
            .unwrap();
        let after = lin.project(&x).unwrap();
        let want = x.matmul(&var.as_tensor().t().unwrap()).unwrap();
        assert!(max_abs_diff(&after, &want) < 1e-6);
        assert!(max_abs_diff(&after, &before) > 1e-3);
        assert!(lin.packed.get().is_none());
    }

    /// A random `Config::tiny()` model with exact attention, seeded.
    fn tiny_model(seed: u64) -> (Config, Model) {
        let cfg = Config::tiny();
        let model = Model::random(
            cfg.clone(),
            AttentionConfig::default(),
            None,
            seed,
            &Device::Cpu,
        )
        .unwrap();
        (cfg, model)
    }

    /// At inference the query, key and value projections run as one matmul (packed for few
    /// rows, the stacked dense weight through gemm for many on AVX-512) and agree with the
    /// three projections and transposes done separately, at both row counts.
    #[test]
    fn fused_qkv_projection_matches_separate_projections() {
        let (cfg, model) = tiny_model(5);
        let bert = model.bert();
        let layer = &bert.layers[0];
        let (nh, dh) = (cfg.num_attention_heads, cfg.head_dim());
        for (b, l) in [(2, 5), (4, 80)] {
            let x = Tensor::randn(0f32, 1.0, (b, l, cfg.hidden_size), &Device::Cpu).unwrap();
            let (q, k, v) = bert.project_qkv(layer, &x).unwrap();
            for (got, lin) in [(q, &layer.query), (k, &layer.key), (v, &layer.value)] {
                let want = x
                    .broadcast_matmul(&lin.weight.t().unwrap())
                    .unwrap()
                    .broadcast_add(&lin.bias)
                    .unwrap()
                    .reshape((b, l, nh, dh))
                    .unwrap()
                    .transpose(1, 2)
                    .unwrap()
                    .contiguous()
                    .unwrap();
                assert_eq!(got.dims(), want.dims());
                let d = max_abs_diff(&got, &want);
                assert!(d < 1e-5, "{b}×{l}: {d}");
            }
        }
        // The many-row call built the stacked dense copy exactly when it did not take the
        // packed kernel.
        let packed_many = [&layer.query, &layer.key, &layer.value].iter().all(|d| {
            d.takes_packed(
                &Tensor::zeros((320, cfg.hidden_size), DType::F32, &Device::Cpu).unwrap(),
            )
        });
        assert_eq!(layer.qkv_dense.get().is_some(), !packed_many);
    }

    /// Exact attention on [`Bert::attention_inputs`], followed by the rest of the layer,
    /// reproduces the layer's output in a full forward pass, for every layer, with padding.
    #[test]
    fn attention_inputs_reproduce_each_layers_context() {
        let (cfg, model) = tiny_model(3);
        let bert = model.bert();
        let ids = Tensor::new(&[[2u32, 7, 9, 4, 3, 0], [2, 5, 3, 0, 0, 0]], &Device::Cpu).unwrap();
        let mask = Tensor::new(&[[1u32, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0]], &Device::Cpu).unwrap();
        let inputs = Inputs {
            input_ids: ids,
            token_type_ids: None,
            attention_mask: Some(mask.clone()),
        };
        let full = bert.forward(&inputs, Mode::EVAL, true).unwrap();
        assert!(cfg.num_hidden_layers >= 2);
        for (i, layer) in bert.layers.iter().enumerate() {
            let (q, k, v) = bert.attention_inputs(&inputs, i).unwrap();
            assert_eq!(
                q.dims(),
                [2, cfg.num_attention_heads, 6, cfg.head_dim()],
                "layer {i}"
            );
            let opts = AttentionOptions {
                mask: Some(mask.clone()),
                ..Default::default()
            };
            let ctx = attention(&q, &k, &v, &opts).unwrap();
            let out = bert
                .after_attention(layer, i, &full.hidden_states[i], &ctx, Mode::EVAL)
                .unwrap();
            let diff = max_abs_diff(&out, &full.hidden_states[i + 1]);
            assert!(diff < 1e-5, "layer {i}: max |difference| {diff}");
            // The inputs of the next layer are not this layer's.
            if i + 1 < cfg.num_hidden_layers {
                let (q2, _, _) = bert.attention_inputs(&inputs, i + 1).unwrap();
                let d = (q2 - &q).unwrap().abs().unwrap().sum_all().unwrap();
                assert!(d.to_scalar::<f32>().unwrap() > 1e-3, "layer {i}");
            }
        }
        let err = bert
            .attention_inputs(&inputs, cfg.num_hidden_layers)
            .unwrap_err()
            .to_string();
        assert!(err.contains("does not exist"), "{err}");
    }
}
