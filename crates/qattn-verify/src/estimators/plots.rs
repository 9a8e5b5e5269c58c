//! The report's three line plots: error against S, time against n, error against noise.

use super::*;
use qattn_plot::{LinePlot, Point, Scale, Series};

/// The three plots of the report: (file stem, plot).
pub fn plots(r: &StudyReport) -> Vec<(&'static str, LinePlot)> {
    let fams = estimator_families();
    let error_vs_s = LinePlot {
        title: "relative rmse of the attention output vs shots S (95% bootstrap CI)".into(),
        x_label: "shots per query S".into(),
        y_label: "relative rmse".into(),
        x_scale: Scale::Log,
        y_scale: Scale::Log,
        series: fams
            .iter()
            .map(|(f, template)| Series {
                label: template.clone(),
                points: r
                    .variance
                    .by_shots
                    .iter()
                    .filter_map(|b| {
                        let e = b.estimators.iter().find(|e| e.family == *f)?;
                        Some(Point::with_bar(
                            b.shots as f64,
                            e.rel_rmse.value,
                            e.rel_rmse.ci_low,
                            e.rel_rmse.ci_high,
                        ))
                    })
                    .collect(),
            })
            .collect(),
    };
    let t = &r.timing;
    let time_vs_n = LinePlot {
        title: format!(
            "forward time vs n (B={}, H={}, D={}, S={}, this machine, shared cpu)",
            t.batch, t.heads, t.dim, t.shots
        ),
        x_label: "n = Lq = Lk".into(),
        y_label: "seconds (best of reps)".into(),
        x_scale: Scale::Log,
        y_scale: Scale::Log,
        series: t
            .series
            .iter()
            .map(|ser| Series {
                label: format!("{} (b = {:.2})", ser.spec, ser.fit.exponent),
                points: t
                    .lengths
                    .iter()
                    .zip(&ser.seconds)
                    .map(|(&n, &x)| Point::new(n as f64, x))
                    .collect(),
            })
            .collect(),
    };
    let n = &r.noise;
    let mut groups: Vec<(String, String, bool)> = Vec::new();
    for p in &n.points {
        let key = (p.base.clone(), p.channel.clone(), p.mitigate);
        if !groups.contains(&key) {
            groups.push(key);
        }
    }
    let error_vs_noise = LinePlot {
        title: format!(
            "relative error vs noise level (S={}, mean +- se over {} seeds)",
            n.shots, n.seeds
        ),
        x_label: "noise level (depol lambda, readout eps, damping gamma)".into(),
        y_label: "relative error".into(),
        x_scale: Scale::Linear,
        y_scale: Scale::Log,
        series: groups
            .iter()
            .map(|(base, channel, mitigate)| Series {
                label: format!(
                    "{base} {channel}{}",
                    if *mitigate { " +mitigate" } else { "" }
                ),
                points: n
                    .points
                    .iter()
                    .filter(|p| &p.base == base && &p.channel == channel && p.mitigate == *mitigate)
                    .map(|p| {
                        Point::with_bar(
                            p.level,
                            p.rel_error,
                            p.rel_error - p.se,
                            p.rel_error + p.se,
                        )
                    })
                    .collect(),
            })
            .collect(),
    };
    vec![
        ("error_vs_s", error_vs_s),
        ("time_vs_n", time_vs_n),
        ("error_vs_noise", error_vs_noise),
    ]
}
