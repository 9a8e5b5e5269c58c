//! Tokenisation: a thin wrapper over the `tokenizers` crate, and dynamic padding into tensors.
//!
//! A shipped `tokenizer.json` often enables padding and truncation (all-MiniLM-L6-v2 pads
//! every sequence to 128 tokens and truncates at 128). [`Tokenizer`] switches both off after
//! loading: [`Tokenizer::encode`] returns exactly the tokens of the text plus the special
//! tokens, truncated only when [`Tokenizer::set_max_length`] asks for it, and [`collate`] pads
//! a batch to its longest member.

use std::path::Path;

use candle_core::{Device, Tensor};
use tokenizers::{
    EncodeInput, PostProcessor, TruncationDirection, TruncationParams, TruncationStrategy,
    truncate_encodings,
};

use crate::error::{Error, Result};

/// A tokenizer loaded from a `tokenizer.json`, with the file's padding and truncation
/// disabled.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    /// The tokenizer; padding and truncation always off.
    inner: tokenizers::Tokenizer,
    /// The maximum length including special tokens; `None` = no truncation.
    max_length: Option<usize>,
    /// The id used for padding.
    pad_id: u32,
}

/// One tokenised input (with special tokens, unpadded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoding {
    /// Token ids.
    pub ids: Vec<u32>,
    /// Token type (segment) ids: 0 for the first text and its special tokens, 1 for the pair.
    pub type_ids: Vec<u32>,
    /// The tokens as strings (e.g. `[CLS]`, `quick`, `##ing`).
    pub tokens: Vec<String>,
}

/// A padded batch of encodings, ready for a model.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Token ids, `[B, L]` u32, padded with the pad id.
    pub input_ids: Tensor,
    /// Token type ids, `[B, L]` u32, 0 on padding.
    pub token_type_ids: Tensor,
    /// `[B, L]` u32: 1 for a real token, 0 for padding.
    pub attention_mask: Tensor,
    /// The unpadded length of each row.
    pub lengths: Vec<usize>,
}

impl Tokenizer {
    /// Loads a `tokenizer.json`. Errors name the path.
    pub fn from_file(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let inner = tokenizers::Tokenizer::from_bytes(&bytes)
            .map_err(|e| Error::file(path, format!("not a valid tokenizer.json: {e}")))?;
        Self::from_inner(inner).map_err(|e| Error::file(path, e))
    }

    /// Loads a tokenizer from the text of a `tokenizer.json`.
    pub fn from_bytes(json: &[u8]) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_bytes(json)
            .map_err(|e| Error::Tokenizer(format!("not a valid tokenizer.json: {e}")))?;
        Self::from_inner(inner)
    }

    /// Takes the pad id from the file's padding (or the `[PAD]` / `<pad>` token, else 0), then
    /// disables padding and truncation.
    fn from_inner(mut inner: tokenizers::Tokenizer) -> Result<Self> {
        let pad_id = inner
            .get_padding()
            .map(|p| p.pad_id)
            .or_else(|| inner.token_to_id("[PAD]"))
            .or_else(|| inner.token_to_id("<pad>"))
            .unwrap_or(0);
        inner.with_padding(None);
        inner
            .with_truncation(None)
            .map_err(|e| Error::Tokenizer(format!("cannot disable truncation: {e}")))?;
        Ok(Tokenizer {
            inner,
            max_length: None,
            pad_id,
        })
    }

    /// The maximum number of tokens of an encoding, special tokens included; `None` (the
    /// default) = no truncation.
    pub fn max_length(&self) -> Option<usize> {
        self.max_length
    }

    /// Sets the maximum number of tokens of an encoding, special tokens included (`[CLS] a
    /// [SEP] b [SEP]`); longer inputs are truncated longest-first, like Hugging Face's
    /// `truncation="longest_first"`. `None` disables truncation. A length too small to hold the
    /// special tokens makes [`Tokenizer::encode`] fail.
    pub fn set_max_length(&mut self, max_length: Option<usize>) {
        self.max_length = max_length;
    }

    /// The number of special tokens added to a single text or a pair.
    fn n_special(&self, is_pair: bool) -> usize {
        self.inner
            .get_post_processor()
            .map_or(0, |p| p.added_tokens(is_pair))
    }

    /// The truncation of the texts (special tokens excluded) for an input, if any; an error
    /// when the maximum length cannot even hold the special tokens.
    fn truncation(&self, is_pair: bool) -> Result<Option<TruncationParams>> {
        let Some(m) = self.max_length else {
            return Ok(None);
        };
        let special = self.n_special(is_pair);
        if m == 0 || m < special {
            let what = if is_pair { "a text pair" } else { "a text" };
            return Err(Error::Input(format!(
                "max_length {m} is too small: the tokenizer adds {special} special tokens to \
                 {what}; use at least {}",
                special.max(1)
            )));
        }
        Ok(Some(TruncationParams {
            direction: TruncationDirection::Right,
            max_length: m - special,
            strategy: TruncationStrategy::LongestFirst,
            stride: 0,
        }))
    }

    /// Truncates the encoded texts (longest first) and adds the special tokens.
    fn finish(
        &self,
        text: tokenizers::Encoding,
        pair: Option<tokenizers::Encoding>,
        what: &str,
    ) -> Result<Encoding> {
        let (text, pair) = match self.truncation(pair.is_some())? {
            Some(params) => truncate_encodings(text, pair, &params)
                .map_err(|e| Error::Tokenizer(format!("truncating {what}: {e}")))?,
            None => (text, pair),
        };
        let encoding = self
            .inner
            .post_process(text, pair, true)
            .map_err(|e| Error::Tokenizer(format!("adding special tokens to {what}: {e}")))?;
        Ok(Encoding::from(&encoding))
    }

    /// Tokenises a text, or a text pair, adding the special tokens; truncates to
    /// [`Tokenizer::max_length`] when set; never pads.
    pub fn encode(&self, text: &str, pair: Option<&str>) -> Result<Encoding> {
        // Truncation is done here, not by `tokenizers`: its 0.23.2 early exit cuts each text
        // to max_length tokens before comparing lengths, which makes longest-first split a
        // pair differently from Hugging Face (and from `tokenizers` 0.23.3).
        self.truncation(pair.is_some())?;
        let encode = |s: &str| {
            self.inner
                .encode(s, false)
                .map_err(|e| Error::Tokenizer(format!("encoding {s:?}: {e}")))
        };
        let first = encode(text)?;
        let second = pair.map(encode).transpose()?;
        self.finish(first, second, &format!("{text:?}"))
    }

    /// Tokenises several inputs (in parallel) like [`Tokenizer::encode`]; no padding.
    pub fn encode_batch(&self, inputs: &[(&str, Option<&str>)]) -> Result<Vec<Encoding>> {
        for (_, pair) in inputs {
            self.truncation(pair.is_some())?;
        }
        let texts: Vec<EncodeInput<'_>> = inputs
            .iter()
            .flat_map(|&(text, pair)| std::iter::once(text).chain(pair))
            .map(|s| EncodeInput::Single(s.into()))
            .collect();
        let mut encoded = self
            .inner
            .encode_batch(texts, false)
            .map_err(|e| Error::Tokenizer(format!("encoding a batch of {}: {e}", inputs.len())))?
            .into_iter();
        let mut out = Vec::with_capacity(inputs.len());
        for (i, &(_, pair)) in inputs.iter().enumerate() {
            let missing = || Error::Tokenizer(format!("batch encoding lost input {i}"));
            let first = encoded.next().ok_or_else(missing)?;
            let second = match pair {
                Some(_) => Some(encoded.next().ok_or_else(missing)?),
                None => None,
            };
            out.push(self.finish(first, second, &format!("batch input {i}"))?);
        }
        Ok(out)
    }

    /// The id used to pad: the file's padding id, else the id of `[PAD]` (or `<pad>`), else 0.
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// The `tokenizer.json` text of this tokenizer, with padding and truncation disabled
    /// (`"padding": null`, `"truncation": null`), for saving next to a model.
    pub fn to_json(&self) -> Result<String> {
        self.inner
            .to_string(true)
            .map_err(|e| Error::Tokenizer(format!("cannot serialise the tokenizer: {e}")))
    }

    /// The wrapped `tokenizers` tokenizer. Its padding and truncation are always off:
    /// [`Tokenizer::encode`] truncates by itself.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// The vocabulary size, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}

impl From<&tokenizers::Encoding> for Encoding {
    fn from(e: &tokenizers::Encoding) -> Self {
        Encoding {
            ids: e.get_ids().to_vec(),
            type_ids: e.get_type_ids().to_vec(),
            tokens: e.get_tokens().to_vec(),
        }
    }
}

/// Pads `encodings` on the right to the longest one (pad id `pad_id`, token type 0, attention
/// mask 0) and stacks them into `[B, L]` u32 tensors on `device`. An empty slice is an error.
pub fn collate(encodings: &[Encoding], pad_id: u32, device: &Device) -> Result<Batch> {
    if encodings.is_empty() {
        return Err(Error::Input("cannot collate an empty batch".into()));
    }
    for (i, e) in encodings.iter().enumerate() {
        if e.type_ids.len() != e.ids.len() {
            return Err(Error::Input(format!(
                "encoding {i} has {} ids but {} type ids",
                e.ids.len(),
                e.type_ids.len()
            )));
        }
    }
    let lengths: Vec<usize> = encodings.iter().map(|e| e.ids.len()).collect();
    let b = encodings.len();
    let l = lengths.iter().copied().max().unwrap_or(0);
    let mut ids = Vec::with_capacity(b * l);
    let mut types = Vec::with_capacity(b * l);
    let mut mask = Vec::with_capacity(b * l);
    for e in encodings {
        let pad = l - e.ids.len();
        ids.extend_from_slice(&e.ids);
        ids.extend(std::iter::repeat_n(pad_id, pad));
        types.extend_from_slice(&e.type_ids);
        types.extend(std::iter::repeat_n(0u32, pad));
        mask.extend(std::iter::repeat_n(1u32, e.ids.len()));
        mask.extend(std::iter::repeat_n(0u32, pad));
    }
    Ok(Batch {
        input_ids: Tensor::from_vec(ids, (b, l), device)?,
        token_type_ids: Tensor::from_vec(types, (b, l), device)?,
        attention_mask: Tensor::from_vec(mask, (b, l), device)?,
        lengths,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    const REPO: &str = "models--sentence-transformers--all-MiniLM-L6-v2";

    /// The Hugging Face cache holding all-MiniLM-L6-v2: `$QATTN_HF_CACHE`, else
    /// `../shared/data/hf` beside the repository.
    fn hf_cache() -> PathBuf {
        std::env::var_os("QATTN_HF_CACHE")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/../../../shared/data/hf"
                ))
            })
    }

    /// A test-data file that must exist: a missing one fails the test, naming where it looked.
    fn required(path: PathBuf) -> PathBuf {
        assert!(
            path.is_file(),
            "test data {} is missing; set QATTN_HF_CACHE to the Hugging Face cache holding \
             {REPO} (default ../shared/data/hf beside the repository; fixtures are read from \
             its sibling folder `fixtures`)",
            path.display()
        );
        path
    }

    fn tokenizer_path() -> PathBuf {
        required(hf_cache().join(REPO).join("snapshots/main/tokenizer.json"))
    }

    fn minilm() -> Tokenizer {
        Tokenizer::from_file(&tokenizer_path()).unwrap()
    }

    /// The fixture `fixtures/all-MiniLM-L6-v2.json` beside the cache.
    fn fixture() -> serde_json::Value {
        let path = required(hf_cache().join("../fixtures/all-MiniLM-L6-v2.json"));
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
    }

    fn u32s(v: &serde_json::Value) -> Vec<u32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| u32::try_from(x.as_u64().unwrap()).unwrap())
            .collect()
    }

    fn rows(v: &serde_json::Value) -> Vec<Vec<u32>> {
        v.as_array().unwrap().iter().map(u32s).collect()
    }

    /// The fixture's inputs as (text, pair); `text_pair` is null (or the string "None") when
    /// absent.
    fn fixture_inputs(fx: &serde_json::Value) -> Vec<(String, Option<String>)> {
        fx["inputs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| {
                let pair = match &i["text_pair"] {
                    serde_json::Value::String(s) if s != "None" => Some(s.clone()),
                    _ => None,
                };
                (i["text"].as_str().unwrap().to_string(), pair)
            })
            .collect()
    }

    const LONG_A: &str = "The quick brown fox jumps over the lazy dog near the river bank.";
    const LONG_B: &str = "A person plays an instrument while the crowd sings along loudly.";

    #[test]
    fn encodings_match_fixture() {
        let tok = minilm();
        let fx = fixture();
        let inputs = fixture_inputs(&fx);
        assert_eq!(inputs.len(), 3);
        assert!(inputs.iter().any(|(_, p)| p.is_some()));
        for ((text, pair), want) in inputs.iter().zip(fx["inputs"].as_array().unwrap()) {
            let e = tok.encode(text, pair.as_deref()).unwrap();
            assert_eq!(e.ids, u32s(&want["input_ids"]), "{text:?}");
            assert_eq!(e.type_ids, u32s(&want["token_type_ids"]), "{text:?}");
            let tokens: Vec<&str> = want["tokens"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t.as_str().unwrap())
                .collect();
            assert_eq!(e.tokens, tokens, "{text:?}");
        }
    }

    #[test]
    fn batch_matches_fixture() {
        let tok = minilm();
        let fx = fixture();
        let inputs = fixture_inputs(&fx);
        let refs: Vec<(&str, Option<&str>)> = inputs
            .iter()
            .map(|(t, p)| (t.as_str(), p.as_deref()))
            .collect();
        let encodings = tok.encode_batch(&refs).unwrap();
        for ((text, pair), e) in refs.iter().zip(&encodings) {
            assert_eq!(e, &tok.encode(text, *pair).unwrap());
        }
        let batch = collate(&encodings, tok.pad_id(), &Device::Cpu).unwrap();
        let want = &fx["batch"];
        assert_eq!(
            batch.input_ids.to_vec2::<u32>().unwrap(),
            rows(&want["input_ids"])
        );
        assert_eq!(
            batch.attention_mask.to_vec2::<u32>().unwrap(),
            rows(&want["attention_mask"])
        );
        assert_eq!(
            batch.token_type_ids.to_vec2::<u32>().unwrap(),
            rows(&want["token_type_ids"])
        );
        assert_eq!(batch.lengths, vec![12, 7, 16]);
    }

    #[test]
    fn shipped_padding_and_truncation_are_disabled() {
        let tok = minilm();
        assert!(tok.inner().get_padding().is_none());
        assert!(tok.inner().get_truncation().is_none());
        assert_eq!(tok.max_length(), None);
        assert_eq!(tok.pad_id(), 0);
        assert_eq!(tok.vocab_size(), 30522);
        // Short inputs are not padded to 128, long ones not truncated at 128.
        assert_eq!(tok.encode("hello", None).unwrap().ids, vec![101, 7592, 102]);
        let long = "word ".repeat(300);
        assert_eq!(tok.encode(&long, None).unwrap().ids.len(), 302);
    }

    #[test]
    fn truncation_is_longest_first_with_special_tokens() {
        let mut tok = minilm();
        tok.set_max_length(Some(8));
        assert_eq!(tok.max_length(), Some(8));
        // Expected values from Python `tokenizers` 0.23.3 with
        // enable_truncation(8, strategy="longest_first") (and from transformers' classic
        // one-token-at-a-time longest_first): the texts have 14 and 12 tokens, 5 fit, the
        // longer first text keeps 3. (`tokenizers` 0.23.2's own truncation gives 2 + 3.)
        let e = tok.encode(LONG_A, Some(LONG_B)).unwrap();
        assert_eq!(e.ids, vec![101, 1996, 4248, 2829, 102, 1037, 2711, 102]);
        assert_eq!(e.type_ids, vec![0, 0, 0, 0, 0, 1, 1, 1]);
        assert_eq!(e.ids.len(), 8);
        assert_eq!(*e.ids.last().unwrap(), 102);
        // A short first text keeps all its tokens; only the longer one is cut.
        let e = tok.encode("Hi", Some(LONG_B)).unwrap();
        assert_eq!(e.ids, vec![101, 7632, 102, 1037, 2711, 3248, 2019, 102]);
        let e = tok.encode(LONG_A, None).unwrap();
        assert_eq!(e.ids, vec![101, 1996, 4248, 2829, 4419, 14523, 2058, 102]);
        // Short inputs are unchanged, and never padded.
        assert_eq!(tok.encode("hello", None).unwrap().ids, vec![101, 7592, 102]);
        // The batch path truncates the same way.
        let batch = tok
            .encode_batch(&[(LONG_A, Some(LONG_B)), ("hello", None)])
            .unwrap();
        assert_eq!(batch[0], tok.encode(LONG_A, Some(LONG_B)).unwrap());
        assert_eq!(batch[1].ids.len(), 3);
        // Exactly the special tokens fit.
        tok.set_max_length(Some(3));
        assert_eq!(
            tok.encode("Hi", Some("there you")).unwrap().ids,
            vec![101, 102, 102]
        );
        tok.set_max_length(None);
        assert!(tok.inner().get_truncation().is_none());
        assert_eq!(
            tok.encode(LONG_A, Some(LONG_B)).unwrap().ids.len(),
            14 + 12 + 3
        );
    }

    #[test]
    fn too_small_max_length_is_an_error_not_a_panic() {
        let mut tok = minilm();
        for (max, pair) in [(2, Some("there")), (1, None), (0, None), (0, Some("x"))] {
            tok.set_max_length(Some(max));
            let err = tok.encode("Hi", pair).unwrap_err();
            assert!(matches!(err, Error::Input(_)), "{max}: {err:?}");
            assert!(err.to_string().contains("max_length"), "{err}");
            let err = tok.encode_batch(&[("Hi", pair)]).unwrap_err();
            assert!(matches!(err, Error::Input(_)), "{max}: {err:?}");
        }
        // 2 holds a single text's special tokens.
        tok.set_max_length(Some(2));
        assert_eq!(tok.encode("Hi", None).unwrap().ids, vec![101, 102]);
    }

    #[test]
    fn to_json_round_trips_without_padding_or_truncation() {
        let mut tok = minilm();
        tok.set_max_length(Some(8));
        let json = tok.to_json().unwrap();
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert!(value["padding"].is_null(), "padding: {}", value["padding"]);
        assert!(
            value["truncation"].is_null(),
            "truncation: {}",
            value["truncation"]
        );
        let back = Tokenizer::from_bytes(json.as_bytes()).unwrap();
        assert_eq!(back.max_length(), None);
        assert_eq!(back.pad_id(), 0);
        assert_eq!(
            back.encode(LONG_A, Some(LONG_B)).unwrap(),
            minilm().encode(LONG_A, Some(LONG_B)).unwrap()
        );
    }

    #[test]
    fn load_errors_name_the_problem() {
        let tmp = tempfile::tempdir().unwrap();
        let gone = tmp.path().join("absent-tokenizer.json");
        let err = Tokenizer::from_file(&gone).unwrap_err();
        assert!(err.to_string().contains("absent-tokenizer.json"), "{err}");
        let bad = tmp.path().join("bad-tokenizer.json");
        std::fs::write(&bad, "{not json").unwrap();
        let err = Tokenizer::from_file(&bad).unwrap_err();
        assert!(matches!(err, Error::File { .. }), "{err:?}");
        assert!(err.to_string().contains("bad-tokenizer.json"), "{err}");
        let err = Tokenizer::from_bytes(b"[]").unwrap_err();
        assert!(matches!(err, Error::Tokenizer(_)), "{err:?}");
    }

    fn enc(ids: &[u32], type_ids: &[u32]) -> Encoding {
        Encoding {
            ids: ids.to_vec(),
            type_ids: type_ids.to_vec(),
            tokens: ids.iter().map(|i| i.to_string()).collect(),
        }
    }

    #[test]
    fn collate_pads_right_to_the_longest() {
        let batch = collate(
            &[
                enc(&[5, 6], &[0, 0]),
                enc(&[7, 8, 9, 10], &[0, 0, 1, 1]),
                enc(&[], &[]),
            ],
            99,
            &Device::Cpu,
        )
        .unwrap();
        assert_eq!(batch.input_ids.dims(), &[3, 4]);
        assert_eq!(batch.input_ids.dtype(), candle_core::DType::U32);
        assert_eq!(
            batch.input_ids.to_vec2::<u32>().unwrap(),
            vec![vec![5, 6, 99, 99], vec![7, 8, 9, 10], vec![99, 99, 99, 99]]
        );
        assert_eq!(
            batch.token_type_ids.to_vec2::<u32>().unwrap(),
            vec![vec![0, 0, 0, 0], vec![0, 0, 1, 1], vec![0, 0, 0, 0]]
        );
        assert_eq!(
            batch.attention_mask.to_vec2::<u32>().unwrap(),
            vec![vec![1, 1, 0, 0], vec![1, 1, 1, 1], vec![0, 0, 0, 0]]
        );
        assert_eq!(batch.lengths, vec![2, 4, 0]);
        // A single encoding is not padded.
        let one = collate(&[enc(&[1, 2, 3], &[0, 0, 0])], 0, &Device::Cpu).unwrap();
        assert_eq!(one.input_ids.to_vec2::<u32>().unwrap(), vec![vec![1, 2, 3]]);
    }

    #[test]
    fn collate_rejects_bad_input() {
        let err = collate(&[], 0, &Device::Cpu).unwrap_err();
        assert!(matches!(err, Error::Input(_)), "{err:?}");
        let err = collate(&[enc(&[1, 2], &[0])], 0, &Device::Cpu).unwrap_err();
        assert!(matches!(err, Error::Input(_)), "{err:?}");
    }
}
