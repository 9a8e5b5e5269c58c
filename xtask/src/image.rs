//! `cargo xtask image [--cuda | --train-mpi] [--tag T] [--dry-run]`: builds the qattn-serve
//! container image from `deploy/docker/Dockerfile.cpu` (or `Dockerfile.cuda`), or the
//! distributed-training image for the Kubeflow MPI Operator from `Dockerfile.train-mpi`, with
//! docker or podman, or, when no usable container engine is present (or with `--dry-run`), prints
//! the exact commands to run elsewhere.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::Result;

use crate::deploy::which;

/// The images `cargo xtask image` builds, one per `deploy/docker/Dockerfile.*`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Variant {
    /// qattn-serve on CPUs (the default).
    Cpu,
    /// qattn-serve built with CUDA (`--cuda`).
    Cuda,
    /// Data-parallel `qattn train` for the Kubeflow MPI Operator (`--train-mpi`).
    TrainMpi,
}

impl Variant {
    /// Every variant, in the order of the usage text.
    #[cfg(test)]
    pub(crate) const ALL: [Variant; 3] = [Variant::Cpu, Variant::Cuda, Variant::TrainMpi];

    /// The Dockerfile, relative to the repository root.
    pub(crate) fn dockerfile(self) -> &'static str {
        match self {
            Variant::Cpu => "deploy/docker/Dockerfile.cpu",
            Variant::Cuda => "deploy/docker/Dockerfile.cuda",
            Variant::TrainMpi => "deploy/docker/Dockerfile.train-mpi",
        }
    }

    /// The tag when `--tag` is not given.
    fn default_tag(self) -> &'static str {
        match self {
            Variant::Cpu => "qattn-serve:cpu",
            Variant::Cuda => "qattn-serve:cuda",
            Variant::TrainMpi => "qattn-train:mpi",
        }
    }

    /// The option that selects it.
    fn flag(self) -> &'static str {
        match self {
            Variant::Cpu => "(none)",
            Variant::Cuda => "--cuda",
            Variant::TrainMpi => "--train-mpi",
        }
    }

    /// What to do with the built image `tag`, with engine `name`.
    fn next_steps(self, name: &str, tag: &str) -> String {
        match self {
            Variant::Cpu => {
                format!("{name} run --rm -p 50051:50051 -p 9000:9000 -v qattn-models:/models {tag}")
            }
            Variant::Cuda => format!(
                "{name} run --rm --gpus all -p 50051:50051 -p 9000:9000 -v qattn-models:/models {tag}"
            ),
            Variant::TrainMpi => format!(
                "{name} run --rm {tag}    # prints qattn --version\n  \
                 {name} push {tag}        # then point deploy/k8s/train-mpi/kustomization.yaml (images:) at it"
            ),
        }
    }
}

/// Parsed options of `cargo xtask image`.
#[derive(Debug, PartialEq)]
pub(crate) struct ImageOptions {
    /// Which image to build.
    pub(crate) variant: Variant,
    /// The image reference to tag (`-t`); default [`Variant::default_tag`].
    pub(crate) tag: Option<String>,
    /// Print the commands without running them.
    pub(crate) dry_run: bool,
}

/// Parses the arguments after `image`.
pub(crate) fn parse_options(args: &[&str]) -> std::result::Result<ImageOptions, String> {
    let mut opts = ImageOptions {
        variant: Variant::Cpu,
        tag: None,
        dry_run: false,
    };
    /// Selects `v` unless another non-default variant was chosen already.
    fn choose(v: Variant, opts: &mut ImageOptions) -> std::result::Result<(), String> {
        if opts.variant != Variant::Cpu && opts.variant != v {
            return Err(format!(
                "`{}` and `{}` exclude each other: build one image at a time",
                opts.variant.flag(),
                v.flag()
            ));
        }
        opts.variant = v;
        Ok(())
    }
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match *arg {
            "--cuda" => choose(Variant::Cuda, &mut opts)?,
            "--train-mpi" => choose(Variant::TrainMpi, &mut opts)?,
            "--dry-run" => opts.dry_run = true,
            "--tag" => {
                let tag = it
                    .next()
                    .ok_or("`--tag` needs an image reference, e.g. --tag registry.example/qattn-serve:0.1.0")?;
                opts.tag = Some(validate_tag(tag)?);
            }
            other => match other.strip_prefix("--tag=") {
                Some(tag) => opts.tag = Some(validate_tag(tag)?),
                None => return Err(format!("unknown option for `cargo xtask image`: {other}")),
            },
        }
    }
    Ok(opts)
}

/// A container image reference is `[registry/]name[:tag][@digest]` without whitespace; reject
/// what could never be one (and anything a shell would mangle in the printed command).
fn validate_tag(tag: &str) -> std::result::Result<String, String> {
    let ok = !tag.is_empty()
        && !tag.starts_with(['-', ':', '/', '.'])
        && tag
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-/:@".contains(c));
    if ok {
        Ok(tag.to_string())
    } else {
        Err(format!(
            "`--tag {tag}` is not a container image reference ([registry/]name[:tag], letters, digits and ._-/:@ only)"
        ))
    }
}

/// A container engine on PATH.
struct Engine {
    name: &'static str,
    path: PathBuf,
}

/// Builds the image, or prints how to.
pub(crate) fn image(root: &Path, opts: &ImageOptions) -> Result<()> {
    let dockerfile = opts.variant.dockerfile();
    anyhow::ensure!(
        root.join(dockerfile).is_file(),
        "{} is missing",
        root.join(dockerfile).display()
    );
    let tag = opts
        .tag
        .clone()
        .unwrap_or_else(|| opts.variant.default_tag().to_string());

    let (engine, why_not) = if opts.dry_run {
        (None, "--dry-run".to_string())
    } else {
        find_engine()
    };
    let name = engine.as_ref().map_or("docker", |e| e.name);
    let args = build_args(dockerfile, &tag);
    let shown = format!(
        "cd {} && {}{name} {}",
        quote(&root.display().to_string()),
        if name == "docker" {
            "DOCKER_BUILDKIT=1 "
        } else {
            ""
        },
        args.iter().map(|a| quote(a)).collect::<Vec<_>>().join(" ")
    );
    let run_hint = opts.variant.next_steps(name, &tag);

    let Some(engine) = engine else {
        println!("not building ({why_not}); the commands are:\n");
        println!("  {shown}");
        println!("  {run_hint}");
        println!(
            "\n(podman works the same: replace `DOCKER_BUILDKIT=1 docker` with `podman`; BuildKit or \
             podman is needed for the RUN --mount cache mounts.)"
        );
        return Ok(());
    };
    println!(
        "building {tag} from {dockerfile} with {}",
        engine.path.display()
    );
    println!("  {shown}");
    let mut cmd = Command::new(&engine.path);
    cmd.args(&args).current_dir(root);
    if engine.name == "docker" {
        cmd.env("DOCKER_BUILDKIT", "1");
    }
    crate::run(&mut cmd)?;
    println!("\nbuilt {tag}; next:\n  {run_hint}");
    Ok(())
}

/// `build --file deploy/docker/Dockerfile.<v> --tag <tag> .` (run from the repository root).
fn build_args(dockerfile: &str, tag: &str) -> Vec<String> {
    vec![
        "build".into(),
        "--file".into(),
        dockerfile.into(),
        "--tag".into(),
        tag.into(),
        ".".into(),
    ]
}

/// docker, else podman: the first whose `info` succeeds (a client without a reachable daemon does
/// not count). `$QATTN_CONTAINER_ENGINE` (docker|podman) restricts the choice. Returns the reason
/// when none is usable.
fn find_engine() -> (Option<Engine>, String) {
    let wanted = std::env::var("QATTN_CONTAINER_ENGINE").ok();
    let mut reasons = Vec::new();
    for name in ["docker", "podman"] {
        if wanted.as_deref().is_some_and(|w| w != name) {
            continue;
        }
        let Some(path) = which(name) else {
            reasons.push(format!("no {name} on PATH"));
            continue;
        };
        let info = Command::new(&path)
            .arg("info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output();
        match info {
            Ok(out) if out.status.success() => return (Some(Engine { name, path }), String::new()),
            Ok(out) => {
                let err = String::from_utf8_lossy(&out.stderr);
                let first = err
                    .lines()
                    .map(str::trim)
                    .find(|l| !l.is_empty())
                    .unwrap_or("no message");
                reasons.push(format!(
                    "{} is installed but `{name} info` failed ({first})",
                    path.display()
                ));
            }
            Err(err) => reasons.push(format!("could not run {}: {err}", path.display())),
        }
    }
    if let Some(w) = wanted.filter(|w| w != "docker" && w != "podman") {
        reasons.push(format!(
            "QATTN_CONTAINER_ENGINE={w} is neither docker nor podman"
        ));
    }
    (None, reasons.join("; "))
}

/// Single-quotes `s` for a POSIX shell when it has anything but safe characters.
fn quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-/:@=+,".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_parse() {
        assert_eq!(
            parse_options(&[]).unwrap(),
            ImageOptions {
                variant: Variant::Cpu,
                tag: None,
                dry_run: false
            }
        );
        let opts = parse_options(&[
            "--cuda",
            "--tag",
            "reg.example:5000/q/serve:0.1.0",
            "--dry-run",
        ])
        .unwrap();
        assert!(opts.variant == Variant::Cuda && opts.dry_run);
        assert_eq!(opts.tag.as_deref(), Some("reg.example:5000/q/serve:0.1.0"));
        assert_eq!(
            parse_options(&["--tag=a:b"]).unwrap().tag.as_deref(),
            Some("a:b")
        );
    }

    #[test]
    fn bad_options_are_refused_with_the_reason() {
        assert!(
            parse_options(&["--tag"])
                .unwrap_err()
                .contains("needs an image reference")
        );
        assert!(
            parse_options(&["--tag", "a b"])
                .unwrap_err()
                .contains("not a container image")
        );
        assert!(parse_options(&["--tag", "--cuda"]).is_err());
        assert!(parse_options(&["--gpu"]).unwrap_err().contains("--gpu"));
        assert!(
            parse_options(&["--cuda", "--train-mpi"])
                .unwrap_err()
                .contains("exclude each other")
        );
    }

    #[test]
    fn the_training_image_has_its_own_dockerfile_and_tag() {
        let opts = parse_options(&["--train-mpi", "--dry-run"]).unwrap();
        assert_eq!(opts.variant, Variant::TrainMpi);
        assert_eq!(
            opts.variant.dockerfile(),
            "deploy/docker/Dockerfile.train-mpi"
        );
        assert_eq!(opts.variant.default_tag(), "qattn-train:mpi");
        // Giving the same variant twice is fine.
        assert_eq!(
            parse_options(&["--train-mpi", "--train-mpi"])
                .unwrap()
                .variant,
            Variant::TrainMpi
        );
    }

    /// Every deploy/docker/Dockerfile.* is an image variant and every variant's Dockerfile
    /// exists, so a new Dockerfile cannot be left out of `cargo xtask image`.
    #[test]
    fn variants_and_dockerfiles_match() {
        let root = crate::repo_root();
        let mut on_disk: Vec<String> = std::fs::read_dir(root.join("deploy/docker"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("Dockerfile"))
            .map(|n| format!("deploy/docker/{n}"))
            .collect();
        on_disk.sort();
        let mut known: Vec<String> = Variant::ALL
            .iter()
            .map(|v| v.dockerfile().to_string())
            .collect();
        known.sort();
        assert_eq!(on_disk, known);
    }

    #[test]
    fn build_command_and_quoting() {
        assert_eq!(
            build_args("deploy/docker/Dockerfile.cpu", "qattn-serve:cpu").join(" "),
            "build --file deploy/docker/Dockerfile.cpu --tag qattn-serve:cpu ."
        );
        assert_eq!(quote("/work/main"), "/work/main");
        assert_eq!(quote("/a b/it's"), r"'/a b/it'\''s'");
    }
}
