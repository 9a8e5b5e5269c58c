//! `report.md`: the studies' results as Markdown tables and prose.

use super::*;
use std::fmt::Write as _;

fn ci(e: &Estimate, digits: usize) -> String {
    format!(
        "{:.d$} [{:.d$}, {:.d$}]",
        e.value,
        e.ci_low,
        e.ci_high,
        d = digits
    )
}

fn sci(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.3e}")
    } else {
        "—".into()
    }
}

/// The report as Markdown: one section per study, numbers with their intervals.
pub fn to_markdown(r: &StudyReport) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Estimator studies\n");
    let _ = writeln!(
        s,
        "qattn {} ({}) · {} study · model `{}` · seed {} · wall time {:.1} s\n",
        r.qattn_version,
        match (&r.git_sha, r.git_dirty) {
            (Some(c), Some(d)) => format!(
                "commit {}, {}",
                &c[..c.len().min(12)],
                if d { "dirty" } else { "clean" }
            ),
            (Some(c), None) => format!("commit {}", &c[..c.len().min(12)]),
            _ => "commit unknown".to_string(),
        },
        if r.quick { "quick" } else { "full" },
        r.model,
        r.seed,
        r.wall_seconds
    );
    let _ = writeln!(
        s,
        "Rows: {} ({} rows in {} problems).\n",
        r.workload.description,
        r.workload.rows,
        r.workload.problems.len()
    );

    let v = &r.variance;
    let _ = writeln!(
        s,
        "## 1. Variance of each estimator against multinomial:S\n"
    );
    let _ = writeln!(
        s,
        "MSE per row over {} seeds (common random numbers), ratio = Σ MSE / Σ MSE(multinomial:S) \
         over {} rows; [95% percentile interval over {} bootstrap resamples of the {} (head, \
         sentence) clusters: the rows of one head on one sentence are correlated, so they are \
         resampled together]; p: two-sided bootstrap p-value of ratio = 1. Every estimator here \
         is unbiased without noise, so MSE is the sampling variance.\n",
        v.replications, v.rows, v.bootstrap, v.clusters
    );
    for b in &v.by_shots {
        let _ = writeln!(s, "### S = {}\n", b.shots);
        let _ = writeln!(
            s,
            "| estimator | mean shots / row | relative RMSE [95% CI] | variance ratio vs multinomial [95% CI] | p |"
        );
        let _ = writeln!(s, "|---|---:|---:|---:|---:|");
        for e in &b.estimators {
            let _ = writeln!(
                s,
                "| `{}` | {:.2} | {} | {} | {} |",
                e.spec,
                e.mean_shots,
                ci(&e.rel_rmse, 4),
                ci(&e.ratio, 3),
                e.p_value.map_or("–".into(), |p| format!("{p:.4}"))
            );
        }
        let _ = writeln!(
            s,
            "\nCheck: measured / exact multinomial variance = {} (1 expected).\n",
            ci(&b.multinomial_vs_theory, 3)
        );
    }
    let _ = writeln!(
        s,
        "Claim: \"{CLAIM}\", i.e. a stratified / multinomial variance ratio of {CLAIMED_STRATIFIED_RATIO:.2}.\n"
    );
    let _ = writeln!(
        s,
        "| S | measured stratified ratio [95% CI] | claimed | verdict |"
    );
    let _ = writeln!(s, "|---:|---:|---:|---|");
    for c in &v.claim {
        let _ = writeln!(
            s,
            "| {} | {} | {:.2} | {} |",
            c.shots,
            ci(&c.measured, 3),
            c.claimed,
            c.verdict
        );
    }

    let b = &r.bhc;
    let _ = writeln!(
        s,
        "\n## 2. Bretagnolle–Huber–Carol bound for multinomial:S (δ = {})\n",
        b.delta
    );
    let _ = writeln!(
        s,
        "ε(δ) = √(2(K ln 2 + ln(1/δ))/S); counts from {}; {} seeds. Exceed = trials with \
         ‖p̂ − p‖₁ ≥ ε(δ) (the bound allows a fraction δ); quantile = empirical (1 − δ)-quantile \
         of ‖p̂ − p‖₁; looseness = ε(δ) / quantile.\n",
        b.source, b.seeds
    );
    let _ = writeln!(
        s,
        "| S | K | trials | ε(δ) | exceed fraction (95% upper) | mean ‖p̂ − p‖₁ | quantile | looseness |"
    );
    let _ = writeln!(s, "|---:|---:|---:|---:|---:|---:|---:|---:|");
    for g in &b.groups {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.4}{} | {:.2e} ({:.2e}) | {:.4} | {:.4} | {:.2} |",
            g.shots,
            g.keys,
            g.trials,
            g.epsilon,
            if g.vacuous { " (vacuous)" } else { "" },
            g.exceed_fraction,
            g.exceed_upper95,
            g.mean_l1,
            g.quantile,
            g.looseness
        );
    }
    let _ = writeln!(
        s,
        "\nAll groups: {} of {} trials exceed ε(δ) (fraction {:.2e}, 95% upper limit {:.2e}; δ = {}).",
        b.exceed, b.trials, b.exceed_fraction, b.exceed_upper95, b.delta
    );

    let t = &r.timing;
    let _ = writeln!(s, "\n## 3. Time scaling\n");
    let _ = writeln!(
        s,
        "{}. Machine: {}. B = {}, H = {}, D = {}, Lq = Lk = n, S = {}, best of {}. Fit: \
         ln t = a + b ln n, b with a 95% interval (Student's t, n − 2 df).\n",
        t.note, t.machine, t.batch, t.heads, t.dim, t.shots, t.reps
    );
    let mut head = "| estimator |".to_string();
    let mut rule = "|---|".to_string();
    for n in &t.lengths {
        let _ = write!(head, " n = {n} (ms) |");
        rule.push_str("---:|");
    }
    let _ = writeln!(s, "{head} exponent b [95% CI] |\n{rule}---:|");
    for ser in &t.series {
        let mut row = format!("| `{}` |", ser.spec);
        for x in &ser.seconds {
            let _ = write!(row, " {:.3} |", x * 1e3);
        }
        let _ = writeln!(
            s,
            "{row} {:.3} [{:.3}, {:.3}] |",
            ser.fit.exponent, ser.fit.ci_low, ser.fit.ci_high
        );
    }

    let n = &r.noise;
    let _ = writeln!(
        s,
        "\n## 4. Noise sweep (S = {}, {} seeds)\n",
        n.shots, n.seeds
    );
    let _ = writeln!(
        s,
        "Mean relative error ‖ô − o‖/‖o‖ against exact attention (± standard error). Level 0 is \
         the noiseless estimator. Depolarizing is not mitigated (`+mitigate` corrects readout and \
         damping only).\n"
    );
    let _ = writeln!(
        s,
        "| estimator | channel | level | no mitigation | +mitigate |"
    );
    let _ = writeln!(s, "|---|---|---:|---:|---:|");
    for p in n.points.iter().filter(|p| !p.mitigate) {
        let mitigated = n
            .points
            .iter()
            .find(|m| {
                m.mitigate && m.base == p.base && m.channel == p.channel && m.level == p.level
            })
            .map(|m| format!("{:.4} ± {:.4}", m.rel_error, m.se))
            .unwrap_or_else(|| "—".into());
        let _ = writeln!(
            s,
            "| {}:{} | {} | {} | {:.4} ± {:.4} | {} |",
            p.base, n.shots, p.channel, p.level, p.rel_error, p.se, mitigated
        );
    }
    let _ = writeln!(
        s,
        "\nMethod: see the documentation of `qattn_verify::estimators`. Per-row MSE means: {}.",
        v.by_shots
            .iter()
            .flat_map(|b| b
                .estimators
                .iter()
                .map(|e| format!("{} {}", e.spec, sci(e.mse))))
            .collect::<Vec<_>>()
            .join(", ")
    );
    s
}
