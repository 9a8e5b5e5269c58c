//! The training run's progress on stderr: an indicatif bar or plain lines.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// Progress of a training run on stderr.
///
/// When stderr is a terminal (and plain output is not forced): an indicatif bar with the
/// step, the total, loss, learning rate, samples/s and ETA. Otherwise one plain line per
/// [`update`](Progress::update), as [`format_progress_line`] writes it:
/// `step 40/200  loss 0.6931  lr 2.00e-05  12.3 samples/s  eta 1m05s`.
///
/// The ETA is the wall time per step since [`Progress::new`] times the steps left.
#[derive(Debug)]
pub struct Progress {
    bar: Option<indicatif::ProgressBar>,
    total: u64,
    start_step: u64,
    started: Instant,
}

impl Progress {
    /// Progress towards `total_steps`, resuming at `start_step` (0 for a fresh run). With
    /// `force_plain`, plain lines even on a terminal.
    pub fn new(total_steps: u64, start_step: u64, force_plain: bool) -> Self {
        let bar = (!force_plain && std::io::stderr().is_terminal()).then(|| {
            let bar = indicatif::ProgressBar::with_draw_target(
                Some(total_steps),
                indicatif::ProgressDrawTarget::stderr(),
            );
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "[{elapsed_precise}] {bar:30.cyan/blue} {pos}/{len}  {msg}",
            ) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_position(start_step.min(total_steps));
            bar
        });
        Progress {
            bar,
            total: total_steps,
            start_step,
            started: Instant::now(),
        }
    }

    /// Whether this shows a bar (stderr is a terminal) rather than plain lines.
    pub fn is_bar(&self) -> bool {
        self.bar.is_some()
    }

    /// The estimated time left after `step`, from the pace since [`Progress::new`]; `None`
    /// before the first step.
    pub fn eta(&self, step: u64) -> Option<Duration> {
        let done = step.checked_sub(self.start_step).filter(|&d| d > 0)?;
        let left = self.total.saturating_sub(step);
        let per_step = self.started.elapsed().as_secs_f64() / done as f64;
        Duration::try_from_secs_f64(per_step * left as f64).ok()
    }

    /// Reports that `step` is done, with the current loss, learning rate and throughput.
    pub fn update(&self, step: u64, loss: f64, lr: f64, samples_per_s: f64) {
        let eta = self.eta(step);
        match &self.bar {
            Some(bar) => {
                bar.set_position(step.min(self.total));
                bar.set_message(format!(
                    "loss {}  lr {}  {:.1} samples/s  eta {}",
                    format_loss(loss),
                    format_lr(lr),
                    samples_per_s,
                    format_eta(eta)
                ));
            }
            None => plain(&format_progress_line(
                step,
                self.total,
                loss,
                lr,
                samples_per_s,
                eta,
            )),
        }
    }

    /// Prints `msg` on a line of its own (above the bar when there is one).
    pub fn println(&self, msg: &str) {
        match &self.bar {
            Some(bar) => bar.println(msg),
            None => plain(msg),
        }
    }

    /// Ends the progress display and prints `summary`.
    pub fn finish(&self, summary: &str) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
        plain(summary);
    }
}

/// Writes a line to stderr, ignoring failures (a closed stderr must not stop training).
fn plain(line: &str) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{line}");
    let _ = err.flush();
}

/// The plain progress line:
/// `step 40/200  loss 0.6931  lr 2.00e-05  12.3 samples/s  eta 1m05s` (loss with 4 decimals,
/// learning rate in scientific notation with a two-digit exponent, throughput with 1
/// decimal, ETA as [`format_eta`] writes it).
pub fn format_progress_line(
    step: u64,
    total: u64,
    loss: f64,
    lr: f64,
    samples_per_s: f64,
    eta: Option<Duration>,
) -> String {
    format!(
        "step {step}/{total}  loss {}  lr {}  {samples_per_s:.1} samples/s  eta {}",
        format_loss(loss),
        format_lr(lr),
        format_eta(eta)
    )
}

/// An ETA in whole seconds: `42s`, `1m05s`, `2h03m04s`; `?` when unknown.
pub fn format_eta(eta: Option<Duration>) -> String {
    let Some(eta) = eta else {
        return "?".to_string();
    };
    let secs = eta.as_secs() + u64::from(eta.subsec_millis() >= 500);
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    if h > 0 {
        format!("{h}h{m:02}m{s:02}s")
    } else if m > 0 {
        format!("{m}m{s:02}s")
    } else {
        format!("{s}s")
    }
}

fn format_loss(loss: f64) -> String {
    format!("{loss:.4}")
}

/// Scientific notation with two decimals and a signed two-digit exponent (`2.00e-05`), as
/// Python's `{:.2e}` writes it.
fn format_lr(lr: f64) -> String {
    if !lr.is_finite() {
        return format!("{lr}");
    }
    let s = format!("{lr:.2e}");
    match s.split_once('e') {
        Some((mantissa, exp)) => {
            let exp: i32 = exp.parse().unwrap_or(0);
            let sign = if exp < 0 { '-' } else { '+' };
            format!("{mantissa}e{sign}{:02}", exp.unsigned_abs())
        }
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lr_is_written_like_python() {
        assert_eq!(format_lr(2e-5), "2.00e-05");
        assert_eq!(format_lr(1.0), "1.00e+00");
        assert_eq!(format_lr(0.0), "0.00e+00");
        assert_eq!(format_lr(3.456e12), "3.46e+12");
        assert_eq!(format_lr(1e-100), "1.00e-100");
        assert_eq!(format_lr(f64::NAN), "NaN");
    }

    #[test]
    fn eta_formats() {
        let d = |s: f64| Some(Duration::from_secs_f64(s));
        assert_eq!(format_eta(None), "?");
        assert_eq!(format_eta(d(0.2)), "0s");
        assert_eq!(format_eta(d(42.0)), "42s");
        assert_eq!(format_eta(d(64.6)), "1m05s");
        assert_eq!(format_eta(d(3600.0 * 2.0 + 3.0 * 60.0 + 4.0)), "2h03m04s");
    }

    #[test]
    fn plain_line_has_the_documented_format() {
        let line = format_progress_line(
            40,
            200,
            std::f64::consts::LN_2,
            2e-5,
            12.34,
            Some(Duration::from_secs(65)),
        );
        assert_eq!(
            line,
            "step 40/200  loss 0.6931  lr 2.00e-05  12.3 samples/s  eta 1m05s"
        );
    }

    #[test]
    fn eta_uses_the_pace_since_start() {
        let p = Progress::new(100, 10, true);
        assert!(!p.is_bar());
        assert_eq!(p.eta(10), None);
        assert_eq!(p.eta(5), None);
        assert!(p.eta(20).is_some());
        assert_eq!(p.eta(100), Some(Duration::ZERO));
    }
}
