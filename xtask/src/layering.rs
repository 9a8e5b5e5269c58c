//! The layering check: no dependency edge between `qattn-*` crates may go up or sideways.
//!
//! Libraries form a chain, lowest first:
//! `qattn-kernels` → `qattn-model` → `qattn-train` → `qattn-glue` → `qattn-verify`.
//! A library may depend only on libraries strictly below it. `qattn-serve` sits beside
//! `qattn-train` and above: it may depend on `qattn-kernels` and `qattn-model` only, and no
//! library may depend on it. `qattn-cli` (the `qattn` binary, the front door), `qattn-load`
//! (the load generator) and `xtask` sit on top and may depend on anything. Leaf crates
//! (`qattn-io`, `qattn-plot`) sit under everything: they depend on no `qattn-*` crate, and any
//! crate may depend on them.

use std::collections::BTreeSet;
use std::fmt;
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde_json::Value;

/// Where a crate sits in the layer table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    /// A leaf: depends on no `qattn-*` crate; any crate may depend on it.
    Leaf,
    /// A library in the chain; lower numbers sit lower.
    Library(u8),
    /// The serving crate: on top of `qattn-model`, sideways to train/glue/verify.
    Serve,
    /// The front door binary and xtask: may depend on anything.
    Top,
}

/// The layer table. A new `qattn-*` crate must be added here before it may be used.
const LAYERS: &[(&str, Role)] = &[
    ("qattn-io", Role::Leaf),
    ("qattn-plot", Role::Leaf),
    ("qattn-kernels", Role::Library(0)),
    ("qattn-model", Role::Library(1)),
    ("qattn-train", Role::Library(2)),
    ("qattn-glue", Role::Library(3)),
    ("qattn-verify", Role::Library(4)),
    ("qattn-serve", Role::Serve),
    ("qattn-cli", Role::Top),
    ("qattn-load", Role::Top),
    ("xtask", Role::Top),
];

/// The highest library `qattn-serve` may depend on.
const SERVE_MAX_LIBRARY: u8 = 1;

fn role(name: &str) -> Option<Role> {
    LAYERS.iter().find(|(n, _)| *n == name).map(|(_, r)| *r)
}

fn library_name(level: u8) -> &'static str {
    LAYERS
        .iter()
        .find(|(_, r)| *r == Role::Library(level))
        .map_or("?", |(n, _)| n)
}

/// One dependency edge, `from` depends on `to` (normal, build or dev dependency).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Edge {
    pub(crate) from: String,
    pub(crate) to: String,
}

/// A rule broken by an edge (or by an unknown crate).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Violation {
    pub(crate) from: String,
    pub(crate) to: String,
    pub(crate) why: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} -> {}: {}", self.from, self.to, self.why)
    }
}

fn unknown(name: &str) -> String {
    format!(
        "unknown crate `{name}`: add it to the layer table LAYERS in xtask/src/layering.rs \
         (and to the crate map in ARCHITECTURE.md)"
    )
}

/// Checks one edge against the layer table. `Ok(())` when allowed, `Err(why)` otherwise.
fn check_edge(from: &str, to: &str) -> Result<(), String> {
    let from_role = role(from).ok_or_else(|| unknown(from))?;
    let to_role = role(to).ok_or_else(|| unknown(to))?;
    match (from_role, to_role) {
        (Role::Top, _) => Ok(()),
        (_, Role::Top) => Err(format!(
            "upward edge: `{to}` sits on top of the stack and nothing may depend on it"
        )),
        (Role::Leaf, _) => Err(format!(
            "upward edge: {from} is a leaf crate and may depend on no qattn-* crate"
        )),
        (_, Role::Leaf) => Ok(()),
        (Role::Library(_), Role::Serve) => Err(
            "sideways edge: no library crate may depend on qattn-serve (it sits on qattn-model only)"
                .to_owned(),
        ),
        (Role::Library(a), Role::Library(b)) if b < a => Ok(()),
        (Role::Library(a), Role::Library(b)) if b > a => Err(format!(
            "upward edge: {from} is layer {a}, {to} is layer {b}; a library may only depend on \
             libraries below it (kernels -> model -> train -> glue -> verify)"
        )),
        (Role::Library(a), Role::Library(_)) => Err(format!(
            "sideways edge: both crates are layer {a}; a library may only depend on libraries \
             strictly below it"
        )),
        (Role::Serve, Role::Library(b)) if b <= SERVE_MAX_LIBRARY => Ok(()),
        (Role::Serve, Role::Library(_)) => Err(format!(
            "sideways edge: qattn-serve may depend only on {} and {}",
            library_name(0),
            library_name(SERVE_MAX_LIBRARY)
        )),
        (Role::Serve, Role::Serve) => Err("a crate cannot depend on itself".to_owned()),
    }
}

/// Checks every workspace package name and every edge; returns all violations, sorted.
pub(crate) fn violations(packages: &[String], edges: &[Edge]) -> Vec<Violation> {
    let mut out = Vec::new();
    for p in packages {
        if p.starts_with("qattn-") && role(p).is_none() {
            out.push(Violation {
                from: p.clone(),
                to: "(layer table)".to_owned(),
                why: unknown(p),
            });
        }
    }
    let unique: BTreeSet<&Edge> = edges.iter().collect();
    for e in unique {
        if let Err(why) = check_edge(&e.from, &e.to) {
            out.push(Violation {
                from: e.from.clone(),
                to: e.to.clone(),
                why,
            });
        }
    }
    out
}

/// Reads the workspace packages and their `qattn-*` dependency edges from the output of
/// `cargo metadata --format-version 1 --no-deps`.
pub(crate) fn edges_from_metadata(metadata: &Value) -> Result<(Vec<String>, Vec<Edge>)> {
    let packages = metadata["packages"]
        .as_array()
        .context("cargo metadata: no `packages` array")?;
    let mut names = Vec::new();
    let mut edges = Vec::new();
    for p in packages {
        let from = p["name"]
            .as_str()
            .context("cargo metadata: package without a name")?;
        names.push(from.to_owned());
        let deps = p["dependencies"]
            .as_array()
            .with_context(|| format!("cargo metadata: {from} has no `dependencies` array"))?;
        // `name` is the package name even when the dependency is renamed; `kind` is
        // null (normal), "dev" or "build": all three count.
        for d in deps {
            let to = d["name"]
                .as_str()
                .with_context(|| format!("cargo metadata: a dependency of {from} has no name"))?;
            if to.starts_with("qattn-") {
                edges.push(Edge {
                    from: from.to_owned(),
                    to: to.to_owned(),
                });
            }
        }
    }
    Ok((names, edges))
}

/// Runs `cargo metadata` in `root` and fails with every violation listed.
pub(crate) fn check(root: &Path) -> Result<()> {
    let json = crate::output(crate::cargo().current_dir(root).args([
        "metadata",
        "--format-version",
        "1",
        "--no-deps",
    ]))?;
    let metadata: Value = serde_json::from_str(&json).context("parsing cargo metadata output")?;
    let (packages, edges) = edges_from_metadata(&metadata)?;
    let found = violations(&packages, &edges);
    let mut shown: Vec<String> = edges
        .iter()
        .map(|e| format!("{} -> {}", e.from, e.to))
        .collect();
    shown.sort();
    shown.dedup();
    println!(
        "{} workspace packages, {} qattn-* edges{}{}",
        packages.len(),
        shown.len(),
        if shown.is_empty() { "" } else { ": " },
        shown.join(", ")
    );
    if found.is_empty() {
        return Ok(());
    }
    for v in &found {
        eprintln!("{v}");
    }
    bail!(
        "{} layering violation(s); the allowed layers are described in ARCHITECTURE.md",
        found.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edge(from: &str, to: &str) -> Edge {
        Edge {
            from: from.to_owned(),
            to: to.to_owned(),
        }
    }

    fn check_one(from: &str, to: &str) -> Vec<Violation> {
        violations(&[from.to_owned()], &[edge(from, to)])
    }

    #[test]
    fn allowed_edges_pass() {
        let allowed = [
            ("qattn-model", "qattn-kernels"),
            ("qattn-train", "qattn-model"),
            ("qattn-train", "qattn-kernels"),
            ("qattn-glue", "qattn-train"),
            ("qattn-verify", "qattn-glue"),
            ("qattn-verify", "qattn-kernels"),
            ("qattn-serve", "qattn-model"),
            ("qattn-serve", "qattn-kernels"),
            ("qattn-cli", "qattn-kernels"),
            ("qattn-cli", "qattn-serve"),
            ("qattn-cli", "qattn-verify"),
            ("xtask", "qattn-kernels"),
            ("xtask", "qattn-io"),
            ("qattn-model", "qattn-io"),
            ("qattn-serve", "qattn-io"),
            ("qattn-verify", "qattn-io"),
            ("qattn-glue", "qattn-plot"),
            ("qattn-verify", "qattn-plot"),
            ("qattn-load", "qattn-serve"),
            ("qattn-load", "qattn-model"),
        ];
        for (from, to) in allowed {
            assert_eq!(
                check_one(from, to),
                vec![],
                "{from} -> {to} should be allowed"
            );
        }
    }

    #[test]
    fn upward_edges_fail() {
        for (from, to) in [
            ("qattn-kernels", "qattn-model"),
            ("qattn-model", "qattn-verify"),
            ("qattn-train", "qattn-glue"),
            ("qattn-kernels", "qattn-cli"),
            ("qattn-serve", "qattn-cli"),
            ("qattn-io", "qattn-model"),
            ("qattn-io", "qattn-kernels"),
            ("qattn-plot", "qattn-glue"),
            ("qattn-plot", "qattn-io"),
            ("qattn-serve", "qattn-load"),
        ] {
            let v = check_one(from, to);
            assert_eq!(v.len(), 1, "{from} -> {to} should fail");
            assert!(v[0].why.contains("upward"), "{}", v[0]);
            assert!(v[0].to_string().starts_with(&format!("{from} -> {to}: ")));
        }
    }

    #[test]
    fn sideways_edges_fail() {
        for (from, to) in [
            ("qattn-glue", "qattn-serve"),
            ("qattn-kernels", "qattn-serve"),
            ("qattn-serve", "qattn-train"),
            ("qattn-serve", "qattn-verify"),
            ("qattn-model", "qattn-model"),
        ] {
            let v = check_one(from, to);
            assert_eq!(v.len(), 1, "{from} -> {to} should fail");
            assert!(
                v[0].why.contains("sideways") || v[0].why.contains("itself"),
                "{}",
                v[0]
            );
        }
    }

    #[test]
    fn unknown_crates_fail() {
        let v = check_one("qattn-model", "qattn-mystery");
        assert_eq!(v.len(), 1);
        assert!(v[0].why.contains("add it to the layer table"), "{}", v[0]);

        let v = violations(&["qattn-mystery".to_owned()], &[]);
        assert_eq!(
            v.len(),
            1,
            "an unknown workspace package fails even without edges"
        );

        let v = violations(
            &["qattn-mystery".to_owned(), "qattn-kernels".to_owned()],
            &[edge("qattn-mystery", "qattn-kernels")],
        );
        assert_eq!(v.len(), 2, "{v:?}");
    }

    #[test]
    fn current_tree_shape_passes() {
        let packages = ["qattn-kernels", "qattn-cli", "xtask"].map(str::to_owned);
        let edges = [edge("qattn-cli", "qattn-kernels")];
        assert!(violations(&packages, &edges).is_empty());
    }

    #[test]
    fn metadata_edges_include_dev_and_build_kinds() {
        let metadata = serde_json::json!({
            "packages": [
                {"name": "qattn-model", "dependencies": [
                    {"name": "qattn-kernels", "kind": null},
                    {"name": "qattn-train", "kind": "dev"},
                    {"name": "qattn-glue", "kind": "build", "rename": "glue"},
                    {"name": "serde", "kind": null}
                ]},
                {"name": "qattn-kernels", "dependencies": []}
            ]
        });
        let (packages, edges) = edges_from_metadata(&metadata).unwrap();
        assert_eq!(packages, vec!["qattn-model", "qattn-kernels"]);
        assert_eq!(edges.len(), 3);
        let v = violations(&packages, &edges);
        let shown: Vec<String> = v.iter().map(ToString::to_string).collect();
        assert_eq!(v.len(), 2, "{shown:?}");
        assert!(shown[0].starts_with("qattn-model -> qattn-glue: upward edge"));
        assert!(shown[1].starts_with("qattn-model -> qattn-train: upward edge"));
    }
}
