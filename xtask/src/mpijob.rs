//! The CI check of `kind: MPIJob` manifests (Kubeflow MPI Operator, `kubeflow.org/v2beta1`) under
//! `deploy/k8s/`, which kubernetes-validate cannot check (a custom resource without a schema).
//!
//! Two parts, both run by [`check`]:
//!
//! * [`check_structure`]: what the operator needs and what the qattn job relies on: the API
//!   version; `spec.mpiReplicaSpecs` with exactly a `Launcher` (replicas 1) and a `Worker`
//!   (replicas ≥ 1); `slotsPerWorker` ≥ 1, `sshAuthMountPath`, `runPolicy.cleanPodPolicy` and the
//!   enumerations the operator accepts; no unknown fields in the MPIJob's own parts (strict, like
//!   kubernetes-validate's `--strict`); every container of each replica with an `image`; and the
//!   Launcher's first container (the operator's main container) running `mpirun … qattn train`.
//! * the pod templates: each replica's `template` becomes a temporary core/v1 `PodTemplate`
//!   ([`pod_templates`]) that kubernetes-validate checks strictly, so containers, volumes,
//!   resources and security contexts are schema-checked as in a Deployment.
//!
//! Every problem names the file and the field (`spec.mpiReplicaSpecs.Worker.replicas`). The YAML
//! is read by the CI Python environment's PyYAML (a dependency of kubernetes-validate), so xtask
//! needs no YAML crate.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde_json::{Map, Value, json};

use crate::deploy::{K8S_VERSION, parse_report, run_validator};
use crate::pyenv::PyEnv;

/// The only MPIJob API the operator's v2 controller serves.
pub(crate) const API_VERSION: &str = "kubeflow.org/v2beta1";
/// The custom resource's kind.
pub(crate) const KIND: &str = "MPIJob";

/// Fields of `MPIJobSpec` (kubeflow/mpi-operator `pkg/apis/kubeflow/v2beta1/types.go`).
const SPEC_FIELDS: &[&str] = &[
    "slotsPerWorker",
    "runLauncherAsWorker",
    "runPolicy",
    "mpiReplicaSpecs",
    "sshAuthMountPath",
    "launcherCreationPolicy",
    "mpiImplementation",
];
/// Fields of `RunPolicy`.
const RUN_POLICY_FIELDS: &[&str] = &[
    "cleanPodPolicy",
    "ttlSecondsAfterFinished",
    "activeDeadlineSeconds",
    "backoffLimit",
    "schedulingPolicy",
    "suspend",
    "managedBy",
];
/// Fields of `ReplicaSpec`.
const REPLICA_FIELDS: &[&str] = &["replicas", "template", "restartPolicy"];
/// The replica types: the operator knows these two.
const REPLICA_TYPES: &[&str] = &["Launcher", "Worker"];
/// Values the operator's validation accepts (`pkg/apis/kubeflow/validation`).
const CLEAN_POD_POLICIES: &[&str] = &["None", "Running", "All"];
const RESTART_POLICIES: &[&str] = &["Never", "OnFailure"];
const MPI_IMPLEMENTATIONS: &[&str] = &["OpenMPI", "Intel", "MPICH"];
const LAUNCHER_CREATION_POLICIES: &[&str] = &["AtStartup", "WaitForWorkersReady"];

/// One finding: `file: field: message`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Problem {
    pub(crate) file: String,
    pub(crate) field: String,
    pub(crate) message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.file, self.field, self.message)
    }
}

/// What [`check`] found for one MPIJob that passed.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Checked {
    pub(crate) file: String,
    pub(crate) name: String,
    pub(crate) workers: u64,
    pub(crate) slots_per_worker: u64,
}

/// Collects the problems of one document, with field paths relative to its root.
struct Findings<'a> {
    file: &'a str,
    problems: Vec<Problem>,
}

impl Findings<'_> {
    fn add(&mut self, field: &str, message: impl Into<String>) {
        self.problems.push(Problem {
            file: self.file.to_string(),
            field: field.to_string(),
            message: message.into(),
        });
    }

    /// The object at `field`, or a problem (`required` decides whether absence is one).
    fn object<'v>(
        &mut self,
        v: Option<&'v Value>,
        field: &str,
        required: bool,
    ) -> Option<&'v Map<String, Value>> {
        match v {
            Some(Value::Object(m)) => Some(m),
            None | Some(Value::Null) if !required => None,
            None | Some(Value::Null) => {
                self.add(field, "required, missing");
                None
            }
            Some(other) => {
                self.add(
                    field,
                    format!("must be an object, found {}", kind_of(other)),
                );
                None
            }
        }
    }

    /// Unknown keys of `map` (strict, like kubernetes-validate --strict).
    fn known_fields(&mut self, map: &Map<String, Value>, field: &str, known: &[&str]) {
        for key in map.keys().filter(|k| !known.contains(&k.as_str())) {
            self.add(
                &join(field, key),
                format!("unknown field (known: {})", known.join(", ")),
            );
        }
    }

    /// A string field that must be one of `allowed` (absent is fine unless `required`).
    fn one_of(&mut self, map: &Map<String, Value>, field: &str, key: &str, allowed: &[&str]) {
        self.enum_field(map, field, key, allowed, false);
    }

    fn enum_field(
        &mut self,
        map: &Map<String, Value>,
        field: &str,
        key: &str,
        allowed: &[&str],
        required: bool,
    ) {
        let path = join(field, key);
        match map.get(key) {
            None | Some(Value::Null) if required => self.add(
                &path,
                format!("required, missing (one of {})", allowed.join(", ")),
            ),
            None | Some(Value::Null) => {}
            Some(Value::String(s)) if allowed.contains(&s.as_str()) => {}
            Some(other) => self.add(
                &path,
                format!("must be one of {}, found {other}", allowed.join(", ")),
            ),
        }
    }
}

/// `a.b` (or `b` at the root).
fn join(field: &str, key: &str) -> String {
    if field.is_empty() {
        key.to_string()
    } else {
        format!("{field}.{key}")
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// An integer field: `Some(n)` when it is a non-negative integer, else a problem.
fn integer(f: &mut Findings<'_>, v: Option<&Value>, field: &str) -> Option<u64> {
    match v {
        None | Some(Value::Null) => {
            f.add(field, "required, missing");
            None
        }
        Some(Value::Number(n)) => match n.as_u64() {
            Some(n) => Some(n),
            None => {
                f.add(field, format!("must be a non-negative integer, found {n}"));
                None
            }
        },
        Some(other) => {
            f.add(
                field,
                format!("must be an integer, found {}: {other}", kind_of(other)),
            );
            None
        }
    }
}

/// Checks one MPIJob document (`doc`, the YAML as JSON) read from `file`. An empty list means
/// it passed; [`pod_templates`] covers the pod templates' schema.
pub(crate) fn check_structure(file: &str, doc: &Value) -> Vec<Problem> {
    let mut f = Findings {
        file,
        problems: Vec::new(),
    };
    match doc.get("apiVersion") {
        Some(Value::String(a)) if a == API_VERSION => {}
        other => f.add(
            "apiVersion",
            format!(
                "must be {API_VERSION} (the MPI Operator v2 API), found {}",
                other.map_or_else(|| "nothing".to_string(), Value::to_string)
            ),
        ),
    }
    match doc.pointer("/metadata/name") {
        Some(Value::String(n)) if !n.is_empty() => {}
        _ => f.add("metadata.name", "required, missing"),
    }
    let Some(spec) = f.object(doc.get("spec"), "spec", true) else {
        return f.problems;
    };
    f.known_fields(spec, "spec", SPEC_FIELDS);

    if let Some(slots) = integer(&mut f, spec.get("slotsPerWorker"), "spec.slotsPerWorker")
        && slots < 1
    {
        f.add(
            "spec.slotsPerWorker",
            format!("must be at least 1 (processes per worker), found {slots}"),
        );
    }
    match spec.get("sshAuthMountPath") {
        Some(Value::String(p)) if p.starts_with('/') => {}
        None | Some(Value::Null) => f.add(
            "spec.sshAuthMountPath",
            "required, missing (where the operator mounts the ssh keys: the home of the image's user + /.ssh)",
        ),
        Some(other) => f.add(
            "spec.sshAuthMountPath",
            format!("must be an absolute path, found {other}"),
        ),
    }
    f.one_of(spec, "spec", "mpiImplementation", MPI_IMPLEMENTATIONS);
    f.one_of(
        spec,
        "spec",
        "launcherCreationPolicy",
        LAUNCHER_CREATION_POLICIES,
    );
    if let Some(run_policy) = f.object(spec.get("runPolicy"), "spec.runPolicy", true) {
        f.known_fields(run_policy, "spec.runPolicy", RUN_POLICY_FIELDS);
        f.enum_field(
            run_policy,
            "spec.runPolicy",
            "cleanPodPolicy",
            CLEAN_POD_POLICIES,
            true,
        );
    }

    let Some(replicas) = f.object(spec.get("mpiReplicaSpecs"), "spec.mpiReplicaSpecs", true) else {
        return f.problems;
    };
    f.known_fields(replicas, "spec.mpiReplicaSpecs", REPLICA_TYPES);
    for replica_type in REPLICA_TYPES {
        let field = format!("spec.mpiReplicaSpecs.{replica_type}");
        let Some(replica) = f.object(replicas.get(*replica_type), &field, true) else {
            continue;
        };
        check_replica(&mut f, replica_type, replica, &field);
    }
    f.problems
}

/// One entry of `spec.mpiReplicaSpecs`.
fn check_replica(
    f: &mut Findings<'_>,
    replica_type: &str,
    replica: &Map<String, Value>,
    field: &str,
) {
    f.known_fields(replica, field, REPLICA_FIELDS);
    let replicas_field = join(field, "replicas");
    if let Some(n) = integer(f, replica.get("replicas"), &replicas_field) {
        match replica_type {
            "Launcher" if n != 1 => f.add(&replicas_field, format!("must be 1, found {n}")),
            "Worker" if n < 1 => f.add(&replicas_field, format!("must be at least 1, found {n}")),
            _ => {}
        }
    }
    f.one_of(replica, field, "restartPolicy", RESTART_POLICIES);

    let template_field = join(field, "template");
    let Some(template) = f.object(replica.get("template"), &template_field, true) else {
        return;
    };
    let spec_field = join(&template_field, "spec");
    let Some(pod_spec) = f.object(template.get("spec"), &spec_field, true) else {
        return;
    };
    let containers_field = join(&spec_field, "containers");
    let containers = match pod_spec.get("containers") {
        Some(Value::Array(c)) if !c.is_empty() => c,
        Some(Value::Array(_)) | None | Some(Value::Null) => {
            f.add(&containers_field, "needs at least one container");
            return;
        }
        Some(other) => {
            f.add(
                &containers_field,
                format!("must be a list, found {}", kind_of(other)),
            );
            return;
        }
    };
    for (i, c) in containers.iter().enumerate() {
        let at = format!("{containers_field}[{i}]");
        match c.get("image") {
            Some(Value::String(img)) if !img.trim().is_empty() => {}
            _ => f.add(&join(&at, "image"), "required, missing"),
        }
    }
    if replica_type == "Launcher" {
        // The operator treats the first container as the main one (hostfile, ssh keys, env).
        let line = command_line(&containers[0]);
        let at = format!("{containers_field}[0]");
        for needle in ["mpirun", "qattn train"] {
            if !line.contains(needle) {
                f.add(
                    &format!("{at}.command/args"),
                    format!(
                        "the Launcher must run `mpirun … qattn train …`; `{needle}` is missing from `{}`",
                        shorten(&line)
                    ),
                );
            }
        }
    }
}

/// A container's `command` and `args`, joined with spaces (string items only).
fn command_line(container: &Value) -> String {
    ["command", "args"]
        .iter()
        .filter_map(|k| container.get(*k).and_then(Value::as_array))
        .flatten()
        .filter_map(Value::as_str)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The first line of `s`, at most 80 characters, for messages.
fn shorten(s: &str) -> String {
    let first = s.lines().next().unwrap_or_default();
    let cut: String = first.chars().take(80).collect();
    if cut.len() < s.len() {
        format!("{cut}…")
    } else {
        cut
    }
}

/// Each replica's `template` as a `kind: PodTemplate` (apiVersion v1) named `{prefix}-{type}`
/// (lowercase), with the field path it came from: `(name, "spec.mpiReplicaSpecs.Worker", doc)`.
/// Replicas without an object `template` are left out ([`check_structure`] reports them).
pub(crate) fn pod_templates(doc: &Value, prefix: &str) -> Vec<(String, String, Value)> {
    let mut out = Vec::new();
    let Some(replicas) = doc
        .pointer("/spec/mpiReplicaSpecs")
        .and_then(Value::as_object)
    else {
        return out;
    };
    for (replica_type, replica) in replicas {
        let Some(template) = replica.get("template").filter(|t| t.is_object()) else {
            continue;
        };
        let name = format!("{prefix}-{}", replica_type.to_ascii_lowercase());
        let pod_template = json!({
            "apiVersion": "v1",
            "kind": "PodTemplate",
            "metadata": { "name": name },
            "template": template,
        });
        out.push((
            name,
            format!("spec.mpiReplicaSpecs.{replica_type}"),
            pod_template,
        ));
    }
    out
}

/// Turns one kubernetes-validate problem line about a temporary PodTemplate back into a problem
/// of the MPIJob: `ERROR - did not validate for resource podtemplate/NAME against version V:
/// template.spec.containers.0: MESSAGE` → `file: spec.mpiReplicaSpecs.T.template.spec.containers[0]:
/// MESSAGE`. `None` for a line that names none of the temporary templates.
fn map_template_problem(
    line: &str,
    origins: &BTreeMap<String, (String, String)>,
) -> Option<Problem> {
    let (_, rest) = line.split_once(" for resource podtemplate/")?;
    let (name, rest) = rest.split_once(" against version ")?;
    let (file, replica_field) = origins.get(name)?;
    let detail = rest.split_once(": ").map_or("", |(_, d)| d);
    // `template.spec.containers.0: message`: a field path, then the message.
    let (field, message) = match detail.split_once(": ") {
        Some((path, msg)) if path.starts_with("template") && !path.contains(' ') => {
            (join(replica_field, &bracket_indices(path)), msg.to_string())
        }
        _ => (join(replica_field, "template"), detail.to_string()),
    };
    Some(Problem {
        file: file.clone(),
        field,
        message: format!("{message} (as a core/v1 PodTemplateSpec, Kubernetes {K8S_VERSION})"),
    })
}

/// `template.spec.containers.0.image` → `template.spec.containers[0].image`.
fn bracket_indices(path: &str) -> String {
    let mut out = String::new();
    for part in path.split('.') {
        if !out.is_empty() && part.chars().all(|c| c.is_ascii_digit()) && !part.is_empty() {
            out.push_str(&format!("[{part}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(part);
        }
    }
    out
}

/// Reads `files` (relative to `root`) as YAML streams with the venv's PyYAML: `{file: [doc…]}`.
fn load_yaml(root: &Path, env: &PyEnv, files: &[PathBuf]) -> Result<BTreeMap<String, Vec<Value>>> {
    const SCRIPT: &str = "\
import json, sys, yaml
out = {}
for path in sys.argv[1:]:
    with open(path, encoding='utf-8') as f:
        out[path] = list(yaml.safe_load_all(f))
json.dump(out, sys.stdout, default=str)
";
    let text = crate::output(
        Command::new(env.python())
            .args(["-c", SCRIPT])
            .args(files)
            .current_dir(root),
    )
    .context(
        "reading the manifests with PyYAML (the CI venv's, installed with kubernetes-validate)",
    )?;
    serde_json::from_str(&text).context("reading PyYAML's JSON output")
}

/// The MPIJob check over `files` (manifests, relative to `root`): every `kind: MPIJob` document
/// gets [`check_structure`], and its pod templates go through kubernetes-validate (`validator`)
/// as `PodTemplate`s. Fails with every problem, each naming the file and the field; returns what
/// passed.
pub(crate) fn check(
    root: &Path,
    env: &PyEnv,
    validator: &Path,
    files: &[PathBuf],
) -> Result<Vec<Checked>> {
    let docs = load_yaml(root, env, files)?;
    let mut problems = Vec::new();
    let mut checked = Vec::new();
    let mut templates = Vec::new();
    let mut origins = BTreeMap::new();
    let mut jobs = 0usize;
    for (file, file_docs) in &docs {
        for doc in file_docs {
            if doc.get("kind").and_then(Value::as_str) != Some(KIND) {
                continue;
            }
            let found = check_structure(file, doc);
            // Unique across files, so each kubernetes-validate line maps back to one replica.
            let prefix = format!("mpijob-{jobs}");
            jobs += 1;
            for (name, field, template) in pod_templates(doc, &prefix) {
                origins.insert(name, (file.clone(), field));
                templates.push(template);
            }
            if found.is_empty() {
                checked.push(Checked {
                    file: file.clone(),
                    name: doc
                        .pointer("/metadata/name")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string(),
                    workers: doc
                        .pointer("/spec/mpiReplicaSpecs/Worker/replicas")
                        .and_then(Value::as_u64)
                        .unwrap_or_default(),
                    slots_per_worker: doc
                        .pointer("/spec/slotsPerWorker")
                        .and_then(Value::as_u64)
                        .unwrap_or_default(),
                });
            }
            problems.extend(found);
        }
    }
    if !templates.is_empty() {
        let stream = templates
            .iter()
            .map(Value::to_string)
            .collect::<Vec<_>>()
            .join("\n---\n");
        let (status, stdout, stderr) =
            run_validator(validator, root, &[PathBuf::from("-")], Some(&stream))?;
        let passed = match parse_report(&stdout) {
            Ok(report) => report.passed,
            Err(lines) => {
                for line in lines {
                    match map_template_problem(&line, &origins) {
                        Some(p) => problems.push(p),
                        None => bail!(
                            "kubernetes-validate on the MPIJob pod templates: {line}\n{stderr}"
                        ),
                    }
                }
                0
            }
        };
        if problems.is_empty() && (!status.success() || passed != templates.len()) {
            bail!(
                "kubernetes-validate passed {passed} of {} MPIJob pod template(s) (exit {status}):\n{stdout}{stderr}",
                templates.len()
            );
        }
    }
    if !problems.is_empty() {
        let list: Vec<String> = problems.iter().map(ToString::to_string).collect();
        bail!(
            "{} problem(s) in MPIJob manifests:\n  {}",
            list.len(),
            list.join("\n  ")
        );
    }
    Ok(checked)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A job like deploy/k8s/train-mpi/mpijob.yaml, reduced to what the check reads.
    fn good() -> Value {
        json!({
            "apiVersion": "kubeflow.org/v2beta1",
            "kind": "MPIJob",
            "metadata": {"name": "qattn-train", "namespace": "qattn"},
            "spec": {
                "slotsPerWorker": 1,
                "mpiImplementation": "OpenMPI",
                "sshAuthMountPath": "/home/qattn/.ssh",
                "launcherCreationPolicy": "WaitForWorkersReady",
                "runPolicy": {"cleanPodPolicy": "Running", "backoffLimit": 3},
                "mpiReplicaSpecs": {
                    "Launcher": {
                        "replicas": 1,
                        "restartPolicy": "OnFailure",
                        "template": {"spec": {"containers": [{
                            "name": "launcher",
                            "image": "ghcr.io/qattn/qattn-train:mpi",
                            "command": ["/bin/sh", "-c"],
                            "args": ["set -eu\nexec mpirun --hostfile /etc/mpi/hostfile -np 2 \\\n  qattn train --model m --resume\n"],
                        }]}}
                    },
                    "Worker": {
                        "replicas": 2,
                        "template": {"spec": {
                            "containers": [{
                                "name": "worker",
                                "image": "ghcr.io/qattn/qattn-train:mpi",
                                "command": ["/usr/sbin/sshd"],
                                "args": ["-D", "-e"],
                                "resources": {"limits": {"cpu": "4", "memory": "8Gi"}},
                            }],
                            "volumes": [{"name": "shared", "persistentVolumeClaim": {"claimName": "qattn-train-shared"}}],
                        }}
                    }
                }
            }
        })
    }

    fn problems(doc: &Value) -> Vec<Problem> {
        check_structure("deploy/k8s/x/mpijob.yaml", doc)
    }

    /// Exactly one problem, at `field`, whose message contains `words`.
    fn only_problem(doc: &Value, field: &str, words: &str) {
        let found = problems(doc);
        assert_eq!(found.len(), 1, "{found:#?}");
        assert_eq!(found[0].field, field, "{found:#?}");
        assert!(found[0].message.contains(words), "{found:#?}");
        let shown = found[0].to_string();
        assert!(
            shown.starts_with(&format!("deploy/k8s/x/mpijob.yaml: {field}: ")),
            "{shown}"
        );
    }

    #[test]
    fn a_good_mpijob_passes() {
        assert_eq!(problems(&good()), vec![]);
        // `mpirun` and `qattn train` as separate list items count too.
        let mut doc = good();
        doc["spec"]["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]["containers"][0] = json!({
            "name": "launcher", "image": "i",
            "command": ["mpirun"], "args": ["-np", "2", "qattn", "train", "--model", "m"],
        });
        assert_eq!(problems(&doc), vec![]);
    }

    #[test]
    fn a_missing_launcher_is_named() {
        let mut doc = good();
        doc["spec"]["mpiReplicaSpecs"]
            .as_object_mut()
            .unwrap()
            .remove("Launcher");
        only_problem(&doc, "spec.mpiReplicaSpecs.Launcher", "required");
    }

    #[test]
    fn zero_workers_and_two_launchers_fail() {
        let mut doc = good();
        doc["spec"]["mpiReplicaSpecs"]["Worker"]["replicas"] = json!(0);
        only_problem(
            &doc,
            "spec.mpiReplicaSpecs.Worker.replicas",
            "at least 1, found 0",
        );
        let mut doc = good();
        doc["spec"]["mpiReplicaSpecs"]["Launcher"]["replicas"] = json!(2);
        only_problem(
            &doc,
            "spec.mpiReplicaSpecs.Launcher.replicas",
            "must be 1, found 2",
        );
        let mut doc = good();
        doc["spec"]["mpiReplicaSpecs"]["Worker"]
            .as_object_mut()
            .unwrap()
            .remove("replicas");
        only_problem(&doc, "spec.mpiReplicaSpecs.Worker.replicas", "required");
    }

    #[test]
    fn a_launcher_without_mpirun_or_qattn_train_fails() {
        let mut doc = good();
        doc["spec"]["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]["containers"][0]["args"] =
            json!(["qattn train --model m"]);
        only_problem(
            &doc,
            "spec.mpiReplicaSpecs.Launcher.template.spec.containers[0].command/args",
            "`mpirun` is missing",
        );
        let mut doc = good();
        doc["spec"]["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]["containers"][0]["args"] =
            json!(["mpirun -np 2 qattn serve"]);
        only_problem(
            &doc,
            "spec.mpiReplicaSpecs.Launcher.template.spec.containers[0].command/args",
            "`qattn train` is missing",
        );
    }

    #[test]
    fn spec_level_mistakes_are_named() {
        let mut doc = good();
        doc["apiVersion"] = json!("kubeflow.org/v1");
        only_problem(&doc, "apiVersion", "must be kubeflow.org/v2beta1");

        let mut doc = good();
        doc["spec"]["slotsPerWorker"] = json!(0);
        only_problem(&doc, "spec.slotsPerWorker", "at least 1");

        let mut doc = good();
        doc["spec"]["runPolicy"]
            .as_object_mut()
            .unwrap()
            .remove("cleanPodPolicy");
        only_problem(&doc, "spec.runPolicy.cleanPodPolicy", "required");

        let mut doc = good();
        doc["spec"]
            .as_object_mut()
            .unwrap()
            .remove("sshAuthMountPath");
        only_problem(&doc, "spec.sshAuthMountPath", "required");

        // A typo is an unknown field (strict), not a silently ignored one.
        let mut doc = good();
        doc["spec"]["slotPerWorker"] = json!(1);
        only_problem(&doc, "spec.slotPerWorker", "unknown field");

        let mut doc = good();
        doc["spec"]["mpiReplicaSpecs"]["Worker"]["restartPolicy"] = json!("Always");
        only_problem(
            &doc,
            "spec.mpiReplicaSpecs.Worker.restartPolicy",
            "must be one of Never, OnFailure",
        );

        let mut doc = good();
        doc["spec"]["mpiReplicaSpecs"]["Chief"] = doc["spec"]["mpiReplicaSpecs"]["Worker"].clone();
        only_problem(&doc, "spec.mpiReplicaSpecs.Chief", "unknown field");
    }

    #[test]
    fn containers_need_an_image() {
        let mut doc = good();
        doc["spec"]["mpiReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]
            .as_object_mut()
            .unwrap()
            .remove("image");
        only_problem(
            &doc,
            "spec.mpiReplicaSpecs.Worker.template.spec.containers[0].image",
            "required",
        );
        let mut doc = good();
        doc["spec"]["mpiReplicaSpecs"]["Worker"]["template"]["spec"]["containers"] = json!([]);
        only_problem(
            &doc,
            "spec.mpiReplicaSpecs.Worker.template.spec.containers",
            "at least one container",
        );
    }

    #[test]
    fn replica_templates_become_pod_templates() {
        let doc = good();
        let templates = pod_templates(&doc, "mpijob-0");
        let names: Vec<&str> = templates.iter().map(|(n, _, _)| n.as_str()).collect();
        assert_eq!(names, ["mpijob-0-launcher", "mpijob-0-worker"]);
        let (_, field, worker) = &templates[1];
        assert_eq!(field, "spec.mpiReplicaSpecs.Worker");
        assert_eq!(worker["apiVersion"], "v1");
        assert_eq!(worker["kind"], "PodTemplate");
        assert_eq!(worker["metadata"]["name"], "mpijob-0-worker");
        assert_eq!(
            worker["template"],
            doc["spec"]["mpiReplicaSpecs"]["Worker"]["template"]
        );
    }

    #[test]
    fn template_schema_errors_name_the_file_and_the_mpijob_field() {
        let origins = BTreeMap::from([(
            "mpijob-0-worker".to_string(),
            (
                "deploy/k8s/x/mpijob.yaml".to_string(),
                "spec.mpiReplicaSpecs.Worker".to_string(),
            ),
        )]);
        let line = "ERROR - did not validate for resource podtemplate/mpijob-0-worker against version 1.35: \
                    template.spec.containers.0: Additional properties are not allowed ('bogus' was unexpected)";
        let p = map_template_problem(line, &origins).unwrap();
        assert_eq!(p.file, "deploy/k8s/x/mpijob.yaml");
        assert_eq!(
            p.field,
            "spec.mpiReplicaSpecs.Worker.template.spec.containers[0]"
        );
        assert!(
            p.message
                .starts_with("Additional properties are not allowed")
        );
        assert!(map_template_problem("ERROR something else", &origins).is_none());
        assert_eq!(
            bracket_indices("template.spec.volumes.10.name"),
            "template.spec.volumes[10].name"
        );
    }
}
