//! The model configuration, read from (and written to) a Hugging Face `config.json`.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// The feed-forward activation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Activation {
    /// `gelu`: the exact erf form, x·Φ(x) (what BERT and MiniLM use).
    #[serde(rename = "gelu")]
    Gelu,
    /// `gelu_new` / `gelu_pytorch_tanh` / `gelu_fast`: the tanh approximation.
    #[serde(rename = "gelu_new", alias = "gelu_pytorch_tanh", alias = "gelu_fast")]
    GeluTanh,
    /// `relu`.
    #[serde(rename = "relu")]
    Relu,
    /// `silu` / `swish`.
    #[serde(rename = "silu", alias = "swish")]
    Silu,
}

impl Activation {
    /// The accepted `hidden_act` strings.
    pub const SUPPORTED: &'static str =
        "gelu, gelu_new, gelu_pytorch_tanh, gelu_fast, relu, silu, swish";

    fn parse(s: &str) -> Result<Self> {
        match s {
            "gelu" => Ok(Activation::Gelu),
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Ok(Activation::GeluTanh),
            "relu" => Ok(Activation::Relu),
            "silu" | "swish" => Ok(Activation::Silu),
            other => Err(Error::Unsupported {
                field: "hidden_act",
                value: other.to_string(),
                supported: Self::SUPPORTED,
            }),
        }
    }

    /// The canonical `hidden_act` string.
    pub fn as_str(self) -> &'static str {
        match self {
            Activation::Gelu => "gelu",
            Activation::GeluTanh => "gelu_new",
            Activation::Relu => "relu",
            Activation::Silu => "silu",
        }
    }
}

/// What a task head is trained for, as transformers' `problem_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemType {
    /// One label per input, softmax cross-entropy.
    SingleLabelClassification,
    /// A real-valued target, mean squared error.
    Regression,
    /// Independent binary labels (stored for round trips; not used by qattn's heads).
    MultiLabelClassification,
}

/// A BERT-family configuration (`model_type = "bert"`), the fields of transformers'
/// `BertConfig` that change the computation, plus task-head metadata. Unknown fields are kept
/// and written back unchanged.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Config {
    /// Always `"bert"`.
    pub model_type: String,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Hidden size H.
    pub hidden_size: usize,
    /// Encoder layers.
    pub num_hidden_layers: usize,
    /// Attention heads per layer; must divide H.
    pub num_attention_heads: usize,
    /// Feed-forward inner size.
    pub intermediate_size: usize,
    /// Feed-forward activation (`hidden_act`).
    #[serde(with = "act_serde")]
    pub hidden_act: Activation,
    /// Dropout on embeddings and every residual branch in training.
    #[serde(default = "default_dropout")]
    pub hidden_dropout_prob: f64,
    /// Dropout on attention probabilities in transformers. qattn's kernels never form the
    /// probability matrix, so this is read and kept but not applied (see the crate docs).
    #[serde(default = "default_dropout")]
    pub attention_probs_dropout_prob: f64,
    /// Longest sequence (absolute position embeddings).
    pub max_position_embeddings: usize,
    /// Token type (segment) vocabulary.
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    /// Standard deviation of the normal initialiser of new weights.
    #[serde(default = "default_init_range")]
    pub initializer_range: f64,
    /// LayerNorm epsilon.
    #[serde(default = "default_ln_eps")]
    pub layer_norm_eps: f64,
    /// Padding token id.
    #[serde(default)]
    pub pad_token_id: u32,
    /// Only `"absolute"`.
    #[serde(default = "default_pos_type")]
    pub position_embedding_type: String,
    /// Dropout before the classifier; `None` means `hidden_dropout_prob`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classifier_dropout: Option<f64>,
    /// Label names by id (transformers stores the keys as strings).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id2label: Option<BTreeMap<String, String>>,
    /// Label ids by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label2id: Option<BTreeMap<String, i64>>,
    /// The task-head problem type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem_type: Option<ProblemType>,
    /// transformers class names, e.g. `BertForSequenceClassification`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architectures: Option<Vec<String>>,
    /// Every other field, kept for the round trip.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

fn default_dropout() -> f64 {
    0.1
}
fn default_type_vocab() -> usize {
    2
}
fn default_init_range() -> f64 {
    0.02
}
fn default_ln_eps() -> f64 {
    1e-12
}
fn default_pos_type() -> String {
    "absolute".to_string()
}

mod act_serde {
    use super::Activation;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(a: &Activation, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(a.as_str())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Activation, D::Error> {
        let s = String::deserialize(d)?;
        Activation::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl Config {
    /// The accepted `model_type` values.
    pub const SUPPORTED_MODEL_TYPES: &'static str = "bert";
    /// The accepted `position_embedding_type` values.
    pub const SUPPORTED_POSITION_TYPES: &'static str = "absolute";

    /// Parses and validates `config.json` text.
    pub fn from_json(text: &str) -> Result<Self> {
        let raw: serde_json::Value =
            serde_json::from_str(text).map_err(|e| Error::Config(format!("not JSON: {e}")))?;
        // Check the fields that select an architecture first, so the error names them rather
        // than some later field that a different architecture spells differently.
        if let Some(mt) = raw.get("model_type") {
            let mt = mt.as_str().unwrap_or_default();
            if mt != "bert" {
                return Err(Error::Unsupported {
                    field: "model_type",
                    value: mt.to_string(),
                    supported: Self::SUPPORTED_MODEL_TYPES,
                });
            }
        } else {
            return Err(Error::Config(
                "missing field `model_type` (expected \"bert\")".into(),
            ));
        }
        if let Some(pt) = raw.get("position_embedding_type").and_then(|v| v.as_str())
            && pt != "absolute"
        {
            return Err(Error::Unsupported {
                field: "position_embedding_type",
                value: pt.to_string(),
                supported: Self::SUPPORTED_POSITION_TYPES,
            });
        }
        if let Some(act) = raw.get("hidden_act") {
            match act.as_str() {
                Some(s) => {
                    Activation::parse(s)?;
                }
                None => {
                    return Err(Error::Unsupported {
                        field: "hidden_act",
                        value: act.to_string(),
                        supported: Activation::SUPPORTED,
                    });
                }
            }
        }
        let cfg: Config =
            serde_json::from_value(raw).map_err(|e| Error::Config(format!("config.json: {e}")))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads and validates a `config.json` file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_json(&text).map_err(|e| match e {
            Error::Config(m) => Error::file(path, m),
            other => other,
        })
    }

    /// Checks sizes and probabilities.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("intermediate_size", self.intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings),
            ("type_vocab_size", self.type_vocab_size),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(Error::Config(format!("{name} must be > 0")));
            }
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(Error::Config(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            )));
        }
        for (name, p) in [
            ("hidden_dropout_prob", Some(self.hidden_dropout_prob)),
            (
                "attention_probs_dropout_prob",
                Some(self.attention_probs_dropout_prob),
            ),
            ("classifier_dropout", self.classifier_dropout),
        ] {
            if let Some(p) = p
                && !(0.0..1.0).contains(&p)
            {
                return Err(Error::Config(format!("{name} = {p} is not in [0, 1)")));
            }
        }
        if self.layer_norm_eps.is_nan() || self.layer_norm_eps <= 0.0 {
            return Err(Error::Config("layer_norm_eps must be > 0".into()));
        }
        Ok(())
    }

    /// Size of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Label names in id order, when `id2label` is present and dense (0..n).
    pub fn labels(&self) -> Option<Vec<String>> {
        let map = self.id2label.as_ref()?;
        let mut out = vec![None; map.len()];
        for (k, v) in map {
            let i: usize = k.parse().ok()?;
            *out.get_mut(i)? = Some(v.clone());
        }
        out.into_iter().collect()
    }

    /// Sets `id2label` / `label2id` from names in id order.
    pub fn set_labels(&mut self, labels: &[String]) {
        self.id2label = Some(
            labels
                .iter()
                .enumerate()
                .map(|(i, l)| (i.to_string(), l.clone()))
                .collect(),
        );
        self.label2id = Some(
            labels
                .iter()
                .enumerate()
                .map(|(i, l)| (l.clone(), i as i64))
                .collect(),
        );
    }

    /// Dropout before a task head.
    pub fn head_dropout(&self) -> f64 {
        self.classifier_dropout.unwrap_or(self.hidden_dropout_prob)
    }

    /// The configuration as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a Config always serialises")
    }

    /// A small configuration for tests and examples (random weights).
    pub fn tiny() -> Self {
        Config {
            model_type: "bert".into(),
            vocab_size: 128,
            hidden_size: 32,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            intermediate_size: 64,
            hidden_act: Activation::Gelu,
            hidden_dropout_prob: 0.1,
            attention_probs_dropout_prob: 0.1,
            max_position_embeddings: 64,
            type_vocab_size: 2,
            initializer_range: 0.02,
            layer_norm_eps: 1e-12,
            pad_token_id: 0,
            position_embedding_type: "absolute".into(),
            classifier_dropout: None,
            id2label: None,
            label2id: None,
            problem_type: None,
            architectures: None,
            extra: Default::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINILM: &str = r#"{"architectures":["BertModel"],"attention_probs_dropout_prob":0.1,
        "hidden_act":"gelu","hidden_dropout_prob":0.1,"hidden_size":384,"initializer_range":0.02,
        "intermediate_size":1536,"layer_norm_eps":1e-12,"max_position_embeddings":512,
        "model_type":"bert","num_attention_heads":12,"num_hidden_layers":6,"pad_token_id":0,
        "position_embedding_type":"absolute","transformers_version":"4.8.2","type_vocab_size":2,
        "use_cache":true,"vocab_size":30522}"#;

    #[test]
    fn parses_minilm_and_keeps_unknown_fields() {
        let c = Config::from_json(MINILM).unwrap();
        assert_eq!(c.hidden_size, 384);
        assert_eq!(c.head_dim(), 32);
        assert_eq!(c.hidden_act, Activation::Gelu);
        assert_eq!(c.extra["transformers_version"], "4.8.2");
        let back = Config::from_json(&c.to_json()).unwrap();
        assert_eq!(back, c);
    }

    fn with(field: &str, value: &str) -> String {
        let mut v: serde_json::Value = serde_json::from_str(MINILM).unwrap();
        v[field] = serde_json::from_str(value).unwrap();
        v.to_string()
    }

    #[test]
    fn unsupported_fields_are_named_with_the_supported_values() {
        for (field, value, supported) in [
            ("model_type", "\"roberta\"", "bert"),
            ("position_embedding_type", "\"relative_key\"", "absolute"),
            ("hidden_act", "\"mish\"", "gelu_new"),
        ] {
            let err = Config::from_json(&with(field, value))
                .unwrap_err()
                .to_string();
            assert!(err.contains(field), "{err}");
            assert!(err.contains(value.trim_matches('"')), "{err}");
            assert!(err.contains(supported), "{err}");
        }
    }

    #[test]
    fn inconsistent_sizes_are_rejected() {
        let err = Config::from_json(&with("num_attention_heads", "7"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("num_attention_heads 7"), "{err}");
        let err = Config::from_json(&with("hidden_dropout_prob", "1.5"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("hidden_dropout_prob"), "{err}");
    }

    #[test]
    fn labels_round_trip() {
        let mut c = Config::tiny();
        assert_eq!(c.labels(), None);
        let names = vec!["neg".to_string(), "pos".to_string()];
        c.set_labels(&names);
        assert_eq!(c.labels().unwrap(), names);
        let back = Config::from_json(&c.to_json()).unwrap();
        assert_eq!(back.labels().unwrap(), names);
    }
}
