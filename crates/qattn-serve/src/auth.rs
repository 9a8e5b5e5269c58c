//! API keys: loading them (file, environment variable) and checking `authorization` metadata.
//!
//! Entry syntax, shared by key files and the environment variable:
//! - `id:secret` — a named key; the id shows up in logs, metrics and rate-limit buckets;
//! - `secret` — an anonymous key; its id is its origin and position (`keys.txt:3` for line 3 of
//!   `keys.txt`, `QATTN_API_KEYS[2]` for the second entry of the variable), never the secret.
//!
//! In a file, one entry per line; blank lines and lines starting with `#` are ignored. In the
//! environment variable, entries are separated by commas. Ids and secrets are visible ASCII
//! without whitespace (they travel in HTTP/2 headers); a secret may contain `:` only when an
//! id is given (the first `:` splits).
//!
//! ## What is kept, and how keys are compared
//! The store keeps the key ids and the SHA-256 digest of each secret, never the secret itself,
//! so no code path can log one ([`KeyStore`]'s `Debug` prints ids only). [`KeyStore::verify`]
//! hashes the presented secret once and compares its digest with the digest of **every** key
//! using [`subtle`]'s constant-time equality, accumulating the match without branching and
//! without stopping at the first match: the time taken depends on the number of keys, not on
//! which key (if any) matched or on how many leading bytes were right. Digests have a fixed
//! length, so not even the secret's length leaks through the comparison.

use std::fmt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use subtle::{Choice, ConditionallySelectable, ConstantTimeEq};

/// Errors while loading API keys. Each names the file (or variable) and the line (or entry).
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The key file could not be read.
    #[error("cannot read API key file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// An entry is malformed. `origin` is the file path or the variable name; `line` is the
    /// 1-based line (file) or entry number (variable).
    #[error("{origin}:{line}: {message}")]
    Parse {
        /// The file path or environment variable name.
        origin: String,
        /// 1-based line (file) or comma-separated entry (variable) number.
        line: usize,
        /// What is wrong with the entry (never contains the secret).
        message: String,
    },
    /// The file or variable holds no key at all (an empty key list would silently turn
    /// authentication off, so it is refused).
    #[error("{origin}: no API keys found (expected lines \"id:secret\" or \"secret\")")]
    NoKeys {
        /// The file path or environment variable name.
        origin: String,
    },
    /// The environment variable is set but is not valid UTF-8.
    #[error("environment variable {var} is not valid UTF-8")]
    EnvNotUnicode {
        /// The variable name.
        var: String,
    },
}

/// The id of the key a request authenticated with.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub String);

impl KeyId {
    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One stored key: its id and the SHA-256 digest of its secret.
#[derive(Clone)]
struct StoredKey {
    id: KeyId,
    digest: [u8; 32],
}

/// A set of API keys. See the [module docs](self) for the entry syntax and the comparison.
#[derive(Clone, Default)]
pub struct KeyStore {
    keys: Vec<StoredKey>,
}

impl fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyStore")
            .field(
                "ids",
                &self.keys.iter().map(|k| k.id.as_str()).collect::<Vec<_>>(),
            )
            .finish()
    }
}

fn digest(secret: &[u8]) -> [u8; 32] {
    Sha256::digest(secret).into()
}

/// `true` when every byte is visible ASCII (0x21..=0x7e).
fn visible_ascii(s: &str) -> bool {
    s.bytes().all(|b| (0x21..=0x7e).contains(&b))
}

/// Parses one entry (already trimmed, non-empty). `default_id` names an anonymous key.
fn parse_entry(entry: &str, default_id: String) -> Result<(String, String), String> {
    let (id, secret) = match entry.split_once(':') {
        Some((id, secret)) => (id.trim().to_owned(), secret.trim().to_owned()),
        None => (default_id, entry.to_owned()),
    };
    if id.is_empty() {
        return Err("empty key id before ':'".into());
    }
    if !visible_ascii(&id) {
        return Err(format!(
            "key id {id:?} must be visible ASCII without whitespace"
        ));
    }
    if secret.is_empty() {
        return Err(format!("key {id:?} has an empty secret"));
    }
    if !visible_ascii(&secret) {
        // Do not echo the secret.
        return Err(format!(
            "the secret of key {id:?} must be visible ASCII without whitespace"
        ));
    }
    Ok((id, secret))
}

impl KeyStore {
    /// Reads keys from a file: one `id:secret` or `secret` per line, `#` starts a comment line.
    /// Duplicate ids or secrets, malformed lines and a file without keys are errors naming the
    /// file and line.
    pub fn from_file(path: &Path) -> Result<KeyStore, AuthError> {
        let text = std::fs::read_to_string(path).map_err(|source| AuthError::Read {
            path: path.to_owned(),
            source,
        })?;
        let origin = path.display().to_string();
        let label = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| origin.clone());
        let entries = text
            .lines()
            .enumerate()
            .map(|(i, line)| (i + 1, line.trim()))
            .filter(|(_, line)| !line.is_empty() && !line.starts_with('#'));
        Self::parse_entries(&origin, entries, |n| format!("{label}:{n}"))
    }

    /// Reads keys from the environment variable `var`: comma-separated entries with the file's
    /// syntax. `Ok(None)` when the variable is unset; a variable that is set but holds no key
    /// is an error (it would otherwise turn authentication off silently).
    pub fn from_env(var: &str) -> Result<Option<KeyStore>, AuthError> {
        match std::env::var(var) {
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(_)) => Err(AuthError::EnvNotUnicode {
                var: var.to_owned(),
            }),
            Ok(value) => Self::parse_list(var, &value).map(Some),
        }
    }

    /// Parses a comma-separated list of entries; `origin` names it in errors and in the ids of
    /// anonymous keys (`origin[n]`). This is what [`KeyStore::from_env`] does with the value.
    pub fn parse_list(origin: &str, list: &str) -> Result<KeyStore, AuthError> {
        let entries = list
            .split(',')
            .enumerate()
            .map(|(i, e)| (i + 1, e.trim()))
            .filter(|(_, e)| !e.is_empty() && !e.starts_with('#'));
        Self::parse_entries(origin, entries, |n| format!("{origin}[{n}]"))
    }

    fn parse_entries<'a>(
        origin: &str,
        entries: impl Iterator<Item = (usize, &'a str)>,
        anonymous_id: impl Fn(usize) -> String,
    ) -> Result<KeyStore, AuthError> {
        let mut store = KeyStore::default();
        for (line, entry) in entries {
            let err = |message: String| AuthError::Parse {
                origin: origin.to_owned(),
                line,
                message,
            };
            let (id, secret) = parse_entry(entry, anonymous_id(line)).map_err(err)?;
            let d = digest(secret.as_bytes());
            if store.keys.iter().any(|k| k.id.0 == id) {
                return Err(err(format!("duplicate key id {id:?}")));
            }
            if store.keys.iter().any(|k| k.digest == d) {
                return Err(err(format!(
                    "key {id:?} repeats the secret of an earlier key"
                )));
            }
            store.keys.push(StoredKey {
                id: KeyId(id),
                digest: d,
            });
        }
        if store.keys.is_empty() {
            return Err(AuthError::NoKeys {
                origin: origin.to_owned(),
            });
        }
        Ok(store)
    }

    /// Builds a store from `(id, secret)` pairs as given (no syntax checks; for configuration
    /// built in code and for tests).
    pub fn from_entries(entries: impl IntoIterator<Item = (String, String)>) -> KeyStore {
        KeyStore {
            keys: entries
                .into_iter()
                .map(|(id, secret)| StoredKey {
                    id: KeyId(id),
                    digest: digest(secret.as_bytes()),
                })
                .collect(),
        }
    }

    /// All keys of `self` followed by all keys of `other`. When both hold the same secret,
    /// [`KeyStore::verify`] answers with the id from `self`.
    pub fn merge(mut self, other: KeyStore) -> KeyStore {
        self.keys.extend(other.keys);
        self
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// `true` when the store holds no key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The key ids, in order.
    pub fn ids(&self) -> impl Iterator<Item = &KeyId> {
        self.keys.iter().map(|k| &k.id)
    }

    /// Checks an `authorization` metadata value. Returns the key id when the value is
    /// `Bearer <secret>` (scheme case-insensitive, RFC 7235) and the secret matches a key;
    /// `None` for every failure kind alike — header missing, another scheme, empty secret,
    /// unknown secret — so callers cannot tell (or tell clients) which part failed.
    ///
    /// The presented secret is compared with every key in constant time (see the
    /// [module docs](self)); a missing or malformed header still runs one full comparison pass
    /// against a dummy digest so that the work done does not depend on the failure kind.
    pub fn verify(&self, authorization: Option<&str>) -> Option<KeyId> {
        let secret = authorization.and_then(bearer_secret);
        let presented = digest(secret.unwrap_or("").as_bytes());
        let mut matched = Choice::from(0);
        let mut index = 0u64;
        for (i, key) in self.keys.iter().enumerate() {
            let eq = key.digest.ct_eq(&presented);
            index.conditional_assign(&(i as u64), eq & !matched);
            matched |= eq;
        }
        // A malformed header never matches, even if some key's secret were the empty string.
        let matched = matched & Choice::from(u8::from(secret.is_some()));
        if bool::from(matched) {
            usize::try_from(index)
                .ok()
                .and_then(|i| self.keys.get(i))
                .map(|k| k.id.clone())
        } else {
            None
        }
    }
}

/// The secret of `Bearer <secret>`, or `None` when the value has another shape.
fn bearer_secret(value: &str) -> Option<&str> {
    let value = value.trim();
    let (scheme, rest) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let secret = rest.trim_start();
    (!secret.is_empty() && visible_ascii(secret)).then_some(secret)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::io::Write;

    fn store() -> KeyStore {
        KeyStore::from_entries([
            ("alice".to_owned(), "s3cret-a".to_owned()),
            ("bob".to_owned(), "s3cret-b".to_owned()),
        ])
    }

    #[test]
    fn verify_accepts_each_key_and_names_it() {
        let s = store();
        assert_eq!(
            s.verify(Some("Bearer s3cret-a")),
            Some(KeyId("alice".into()))
        );
        assert_eq!(s.verify(Some("Bearer s3cret-b")), Some(KeyId("bob".into())));
        assert_eq!(s.verify(Some("bearer s3cret-b")), Some(KeyId("bob".into())));
        assert_eq!(
            s.verify(Some("  BEARER   s3cret-a  ")),
            Some(KeyId("alice".into()))
        );
    }

    #[test]
    fn verify_rejects_every_failure_kind_alike() {
        let s = store();
        for bad in [
            None,
            Some(""),
            Some("Bearer"),
            Some("Bearer "),
            Some("s3cret-a"),
            Some("Basic s3cret-a"),
            Some("Bearer s3cret-"),
            Some("Bearer s3cret-a1"),
            Some("Bearer S3CRET-A"),
            Some("Bearer s3cret-a s3cret-b"),
            Some("Bearerx s3cret-a"),
        ] {
            assert_eq!(s.verify(bad), None, "{bad:?}");
        }
        assert_eq!(KeyStore::default().verify(Some("Bearer x")), None);
    }

    #[test]
    fn empty_secret_key_never_matches_a_malformed_header() {
        let s = KeyStore::from_entries([("empty".to_owned(), String::new())]);
        assert_eq!(s.verify(None), None);
        assert_eq!(s.verify(Some("Bearer ")), None);
    }

    #[test]
    fn merge_prefers_the_first_store_on_equal_secrets() {
        let a = KeyStore::from_entries([("a".to_owned(), "same".to_owned())]);
        let b = KeyStore::from_entries([
            ("b".to_owned(), "same".to_owned()),
            ("c".to_owned(), "other".to_owned()),
        ]);
        let m = a.merge(b);
        assert_eq!(m.len(), 3);
        assert_eq!(m.verify(Some("Bearer same")), Some(KeyId("a".into())));
        assert_eq!(m.verify(Some("Bearer other")), Some(KeyId("c".into())));
    }

    #[test]
    fn debug_prints_ids_not_secrets() {
        let d = format!("{:?}", store());
        assert!(d.contains("alice") && d.contains("bob"), "{d}");
        assert!(!d.contains("s3cret"), "{d}");
    }

    fn write_keys(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys.txt");
        let mut f = std::fs::File::create(&path).unwrap();
        f.write_all(text.as_bytes()).unwrap();
        (dir, path)
    }

    #[test]
    fn from_file_parses_named_anonymous_comments_and_blank_lines() {
        let (_dir, path) = write_keys("# team keys\n\nalice:abc:def\n  anon-secret  \n#bob:x\n");
        let s = KeyStore::from_file(&path).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(
            s.verify(Some("Bearer abc:def")),
            Some(KeyId("alice".into()))
        );
        // anonymous key: id is file name + line, not the secret
        assert_eq!(
            s.verify(Some("Bearer anon-secret")),
            Some(KeyId("keys.txt:4".into()))
        );
    }

    #[test]
    fn from_file_errors_name_file_and_line() {
        let cases = [
            ("a:1\n\n:nosecretid\n", 3, "empty key id"),
            ("a:1\nb:\n", 2, "empty secret"),
            ("a:1\na:2\n", 2, "duplicate key id"),
            ("a:1\nb:1\n", 2, "repeats the secret"),
            ("a:1\nb:has space\n", 2, "visible ASCII"),
            ("bad id:x\n", 1, "visible ASCII"),
        ];
        for (text, line, what) in cases {
            let (_dir, path) = write_keys(text);
            let e = KeyStore::from_file(&path).unwrap_err();
            let msg = e.to_string();
            let prefix = format!("{}:{line}: ", path.display());
            assert!(msg.starts_with(&prefix), "{text:?}: {msg}");
            assert!(msg.contains(what), "{text:?}: {msg}");
            assert!(!msg.contains("has space"), "secret leaked: {msg}");
            match e {
                AuthError::Parse { line: l, .. } => assert_eq!(l, line),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn from_file_without_keys_or_missing_is_an_error_naming_the_file() {
        let (_dir, path) = write_keys("# only a comment\n\n");
        let msg = KeyStore::from_file(&path).unwrap_err().to_string();
        assert!(
            msg.contains(&path.display().to_string()) && msg.contains("no API keys"),
            "{msg}"
        );
        let missing = path.with_file_name("nope.txt");
        let msg = KeyStore::from_file(&missing).unwrap_err().to_string();
        assert!(msg.contains("nope.txt"), "{msg}");
    }

    #[test]
    fn parse_list_uses_entry_numbers() {
        let s = KeyStore::parse_list("QATTN_API_KEYS", "k1:aaa, bbb ,").unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s.verify(Some("Bearer aaa")), Some(KeyId("k1".into())));
        assert_eq!(
            s.verify(Some("Bearer bbb")),
            Some(KeyId("QATTN_API_KEYS[2]".into()))
        );
        let e = KeyStore::parse_list("QATTN_API_KEYS", "k1:aaa,k1:bbb").unwrap_err();
        assert_eq!(e.to_string(), "QATTN_API_KEYS:2: duplicate key id \"k1\"");
        assert!(matches!(
            KeyStore::parse_list("V", " , ").unwrap_err(),
            AuthError::NoKeys { .. }
        ));
    }

    #[test]
    fn from_env_unset_is_none() {
        // A name no test sets; from_env only reads the environment.
        let var = "QATTN_TEST_AUTH_SURELY_UNSET_7f3a";
        assert!(KeyStore::from_env(var).unwrap().is_none());
    }

    proptest! {
        /// Every stored key verifies to its own id, and any other visible-ASCII secret to none.
        #[test]
        fn verify_matches_exactly_the_stored_secret(
            secrets in proptest::collection::hash_set("[!-~]{1,40}", 1..8),
            probe in "[!-~]{1,40}",
        ) {
            let secrets: Vec<String> = secrets.into_iter().collect();
            let s = KeyStore::from_entries(
                secrets.iter().enumerate().map(|(i, sec)| (format!("k{i}"), sec.clone())),
            );
            for (i, sec) in secrets.iter().enumerate() {
                prop_assert_eq!(s.verify(Some(&format!("Bearer {sec}"))), Some(KeyId(format!("k{i}"))));
            }
            let expected = secrets.iter().position(|x| *x == probe).map(|i| KeyId(format!("k{i}")));
            prop_assert_eq!(s.verify(Some(&format!("Bearer {probe}"))), expected);
        }

        /// Arbitrary header values never panic.
        #[test]
        fn verify_never_panics(value in ".*") {
            let _ = store().verify(Some(&value));
        }
    }
}
