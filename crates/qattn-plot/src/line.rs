//! Line plots (used by the estimator studies of qattn-verify): several series of (x, y) points on linear or
//! logarithmic axes, optional vertical error bars, a legend, written as SVG and as PNG.
//!
//! The PNG is the same plot rasterised at twice the SVG's scale with the bitmap font, canvas
//! and PNG encoder of [`crate::raster`] (qattn-glue's GLUE report plots use them too). The font has
//! lower-case letters, digits and a little punctuation only, so labels should be plain ASCII;
//! other characters are drawn as `?` in the PNG (the SVG shows them as written).
//!
//! Points that cannot be drawn — a non-finite coordinate, or a value ≤ 0 on a logarithmic
//! axis — are left out (and break the series' line there); error-bar ends ≤ 0 on a logarithmic
//! axis are clipped to the bottom of the plot.

use crate::raster::{BLACK, Canvas, GRID, nice_ticks, svg_start, xml_escape};
use serde::Serialize;
use std::fmt::Write as _;

/// How an axis maps values to positions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scale {
    /// Evenly spaced values; round ticks of 1, 2 or 5 × 10^k.
    Linear,
    /// Evenly spaced decades (base 10) over the data range padded by 5%; ticks at powers of
    /// ten inside it (and at 2× and 5× them when it spans at most 2.5 decades).
    Log,
}

/// One point of a series, with an optional error bar from `y_low` to `y_high`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Point {
    /// Position on the x axis.
    pub x: f64,
    /// Position on the y axis.
    pub y: f64,
    /// Lower end of the error bar (none drawn when either end is `None`).
    pub y_low: Option<f64>,
    /// Upper end of the error bar.
    pub y_high: Option<f64>,
}

impl Point {
    /// A point without an error bar.
    pub fn new(x: f64, y: f64) -> Self {
        Point {
            x,
            y,
            y_low: None,
            y_high: None,
        }
    }

    /// A point with an error bar from `low` to `high`.
    pub fn with_bar(x: f64, y: f64, low: f64, high: f64) -> Self {
        Point {
            x,
            y,
            y_low: Some(low),
            y_high: Some(high),
        }
    }
}

/// A named series, drawn as markers joined by a line in the order of `points`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Series {
    /// Legend label.
    pub label: String,
    /// The points.
    pub points: Vec<Point>,
}

/// A line plot.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LinePlot {
    /// Title above the plot.
    pub title: String,
    /// Label of the x axis.
    pub x_label: String,
    /// Label of the y axis.
    pub y_label: String,
    /// Scale of the x axis.
    pub x_scale: Scale,
    /// Scale of the y axis.
    pub y_scale: Scale,
    /// The series, in legend order.
    pub series: Vec<Series>,
}

/// Series colours (matplotlib's tab10), cycled.
pub const PALETTE: [[u8; 3]; 10] = [
    [0x1f, 0x77, 0xb4],
    [0xff, 0x7f, 0x0e],
    [0x2c, 0xa0, 0x2c],
    [0xd6, 0x27, 0x28],
    [0x94, 0x67, 0xbd],
    [0x8c, 0x56, 0x4b],
    [0xe3, 0x77, 0xc2],
    [0x7f, 0x7f, 0x7f],
    [0xbc, 0xbd, 0x22],
    [0x17, 0xbe, 0xcf],
];

/// Scale of the PNG relative to the SVG.
const PNG_SCALE: f64 = 2.0;
/// Longest legend label drawn (longer ones are shortened with `..`).
const MAX_LEGEND: usize = 34;

/// The colour of series `i`.
pub fn series_colour(i: usize) -> [u8; 3] {
    PALETTE[i % PALETTE.len()]
}

fn hex(c: [u8; 3]) -> String {
    format!("#{:02x}{:02x}{:02x}", c[0], c[1], c[2])
}

/// One axis: value range in transformed units (log10 for [`Scale::Log`]) and ticks.
struct Axis {
    scale: Scale,
    lo: f64,
    hi: f64,
    /// (transformed position, label).
    ticks: Vec<(f64, String)>,
}

impl Axis {
    fn transform(scale: Scale, v: f64) -> Option<f64> {
        match scale {
            Scale::Linear => v.is_finite().then_some(v),
            Scale::Log => (v.is_finite() && v > 0.0).then(|| v.log10()),
        }
    }

    fn new(scale: Scale, values: &[f64]) -> Axis {
        let t: Vec<f64> = values
            .iter()
            .filter_map(|&v| Axis::transform(scale, v))
            .collect();
        let (mut lo, mut hi) = t
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
                (a.min(v), b.max(v))
            });
        if !lo.is_finite() {
            // No data: [0, 1] (linear) or one decade [1, 10] (log).
            (lo, hi) = (0.0, 1.0);
        }
        match scale {
            Scale::Linear => {
                let (ticks, decimals) = nice_ticks(lo, hi, 5.0);
                let (a, b) = (ticks[0], ticks[ticks.len() - 1]);
                Axis {
                    scale,
                    lo: a,
                    hi: b,
                    ticks: ticks
                        .into_iter()
                        .map(|v| (v, format!("{v:.decimals$}")))
                        .collect(),
                }
            }
            Scale::Log => {
                // The data range padded by 5% of its span (a tenth of a decade at least).
                let pad = (0.05 * (hi - lo)).max(0.05);
                let (a, b) = (lo - pad, hi + pad);
                let mut ticks = Vec::new();
                let (first, last) = (a.floor() as i64, b.ceil() as i64);
                let decades = last - first;
                let step = (decades / 7 + 1).max(1);
                let mults: &[f64] = if b - a <= 2.5 {
                    &[1.0, 2.0, 5.0]
                } else {
                    &[1.0]
                };
                let mut e = first;
                while e <= last {
                    for &m in mults {
                        let t = e as f64 + m.log10();
                        if (a..=b).contains(&t) {
                            ticks.push((t, power_label(e, m)));
                        }
                    }
                    e += step;
                }
                if ticks.len() < 2 {
                    // A narrow range between round values: label its ends.
                    ticks = [a, b]
                        .iter()
                        .map(|&t| (t, format!("{:.3}", 10f64.powf(t))))
                        .collect();
                }
                Axis {
                    scale,
                    lo: a,
                    hi: b,
                    ticks,
                }
            }
        }
    }

    /// Fraction of the axis length at value `v` (transformed), 0 at `lo`.
    fn frac(&self, t: f64) -> f64 {
        (t - self.lo) / (self.hi - self.lo)
    }
}

/// `m`×10^e as a short label: plain digits for 10^-3 ≤ value < 10^5, else `me{e}`.
fn power_label(e: i64, m: f64) -> String {
    if (-3..5).contains(&e) {
        let v = m * 10f64.powi(e as i32);
        let decimals = (-e).max(0) as usize;
        format!("{v:.decimals$}")
    } else {
        format!("{m}e{e}")
    }
}

/// Geometry shared by the SVG and the PNG (in SVG pixels).
struct Layout<'a> {
    plot: &'a LinePlot,
    x: Axis,
    y: Axis,
    w: f64,
    h: f64,
    left: f64,
    right: f64,
    top: f64,
    bottom: f64,
}

impl<'a> Layout<'a> {
    fn new(plot: &'a LinePlot) -> Self {
        let mut xs = Vec::new();
        let mut ys = Vec::new();
        for s in &plot.series {
            for p in &s.points {
                if Axis::transform(plot.x_scale, p.x).is_some()
                    && Axis::transform(plot.y_scale, p.y).is_some()
                {
                    xs.push(p.x);
                    ys.push(p.y);
                    ys.extend(p.y_low);
                    ys.extend(p.y_high);
                }
            }
        }
        let longest = plot
            .series
            .iter()
            .map(|s| s.label.chars().count().min(MAX_LEGEND))
            .max()
            .unwrap_or(0);
        Layout {
            plot,
            x: Axis::new(plot.x_scale, &xs),
            y: Axis::new(plot.y_scale, &ys),
            w: 560.0 + 40.0 + 6.0 * longest as f64,
            h: 420.0,
            left: 80.0,
            right: 40.0 + 6.0 * longest as f64,
            top: 40.0,
            bottom: 56.0,
        }
    }

    fn px(&self, t: f64) -> f64 {
        self.left + self.x.frac(t) * (self.w - self.left - self.right)
    }

    fn py(&self, t: f64) -> f64 {
        self.top + (1.0 - self.y.frac(t)) * (self.h - self.top - self.bottom)
    }

    /// SVG coordinates of a point, `None` when it cannot be drawn.
    fn at(&self, p: &Point) -> Option<(f64, f64)> {
        let x = Axis::transform(self.x.scale, p.x)?;
        let y = Axis::transform(self.y.scale, p.y)?;
        Some((self.px(x), self.py(y)))
    }

    /// SVG y of an error-bar end, clipped to the plot.
    fn bar_y(&self, v: f64) -> Option<f64> {
        let t = match self.y.scale {
            Scale::Log if v.is_finite() && v <= 0.0 => self.y.lo,
            s => Axis::transform(s, v)?,
        };
        Some(self.py(t.clamp(self.y.lo, self.y.hi)))
    }

    /// The drawable runs of a series (split where a point cannot be drawn).
    fn runs(&self, s: &Series) -> Vec<Vec<(f64, f64)>> {
        let mut runs = vec![Vec::new()];
        for p in &s.points {
            match self.at(p) {
                Some(xy) => runs.last_mut().into_iter().for_each(|r| r.push(xy)),
                None => runs.push(Vec::new()),
            }
        }
        runs.retain(|r| !r.is_empty());
        runs
    }

    fn legend_label(label: &str) -> String {
        if label.chars().count() > MAX_LEGEND {
            label.chars().take(MAX_LEGEND - 2).collect::<String>() + ".."
        } else {
            label.to_string()
        }
    }

    fn has_points(&self) -> bool {
        self.plot
            .series
            .iter()
            .any(|s| s.points.iter().any(|p| self.at(p).is_some()))
    }
}

impl LinePlot {
    /// The plot as an SVG document: per series a `<polyline class="series">` through its
    /// drawable points, a `<circle class="marker">` per point (with a `<title>` tooltip) and a
    /// `<line class="errorbar">` per error bar; axes, ticks, grid, labels, title and legend.
    pub fn to_svg(&self) -> String {
        let l = Layout::new(self);
        let mut s = svg_start(l.w, l.h, (l.left + l.w - l.right) / 2.0, &self.title);
        let (x0, x1) = (l.left, l.w - l.right);
        let (y0, y1) = (l.top, l.h - l.bottom);
        for (t, label) in &l.y.ticks {
            let y = l.py(*t);
            let _ = writeln!(
                s,
                "<line class=\"grid\" x1=\"{x0:.1}\" y1=\"{y:.1}\" x2=\"{x1:.1}\" y2=\"{y:.1}\" stroke=\"#dddddd\"/>"
            );
            let _ = writeln!(
                s,
                "<line class=\"tick\" x1=\"{:.1}\" y1=\"{y:.1}\" x2=\"{x0:.1}\" y2=\"{y:.1}\" stroke=\"black\"/>",
                x0 - 5.0
            );
            let _ = writeln!(
                s,
                "<text class=\"tick-label\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
                x0 - 8.0,
                y + 4.0,
                xml_escape(label)
            );
        }
        for (t, label) in &l.x.ticks {
            let x = l.px(*t);
            let _ = writeln!(
                s,
                "<line class=\"grid\" x1=\"{x:.1}\" y1=\"{y0:.1}\" x2=\"{x:.1}\" y2=\"{y1:.1}\" stroke=\"#dddddd\"/>"
            );
            let _ = writeln!(
                s,
                "<line class=\"tick\" x1=\"{x:.1}\" y1=\"{y1:.1}\" x2=\"{x:.1}\" y2=\"{:.1}\" stroke=\"black\"/>",
                y1 + 5.0
            );
            let _ = writeln!(
                s,
                "<text class=\"tick-label\" x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
                y1 + 18.0,
                xml_escape(label)
            );
        }
        let _ = writeln!(
            s,
            "<line class=\"axis\" x1=\"{x0:.1}\" y1=\"{y0:.1}\" x2=\"{x0:.1}\" y2=\"{y1:.1}\" stroke=\"black\"/>"
        );
        let _ = writeln!(
            s,
            "<line class=\"axis\" x1=\"{x0:.1}\" y1=\"{y1:.1}\" x2=\"{x1:.1}\" y2=\"{y1:.1}\" stroke=\"black\"/>"
        );
        let _ = writeln!(
            s,
            "<text class=\"axis-label\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            (x0 + x1) / 2.0,
            l.h - 12.0,
            xml_escape(&self.x_label)
        );
        let ymid = (y0 + y1) / 2.0;
        let _ = writeln!(
            s,
            "<text class=\"axis-label\" x=\"18\" y=\"{ymid:.1}\" text-anchor=\"middle\" \
             transform=\"rotate(-90 18 {ymid:.1})\">{}</text>",
            xml_escape(&self.y_label)
        );
        if !l.has_points() {
            let _ = writeln!(
                s,
                "<text class=\"no-data\" x=\"{:.1}\" y=\"{ymid:.1}\" text-anchor=\"middle\">no data</text>",
                (x0 + x1) / 2.0
            );
        }
        for (i, series) in self.series.iter().enumerate() {
            let colour = hex(series_colour(i));
            for run in l.runs(series) {
                let pts: Vec<String> = run.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
                let _ = writeln!(
                    s,
                    "<polyline class=\"series\" points=\"{}\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"1.5\"/>",
                    pts.join(" ")
                );
            }
            for p in &series.points {
                let Some((x, y)) = l.at(p) else { continue };
                if let (Some(a), Some(b)) = (
                    p.y_low.and_then(|v| l.bar_y(v)),
                    p.y_high.and_then(|v| l.bar_y(v)),
                ) {
                    let _ = writeln!(
                        s,
                        "<line class=\"errorbar\" x1=\"{x:.1}\" y1=\"{a:.1}\" x2=\"{x:.1}\" y2=\"{b:.1}\" stroke=\"{colour}\"/>"
                    );
                }
                let tip = match (p.y_low, p.y_high) {
                    (Some(a), Some(b)) => {
                        format!(
                            "{}: x={}, y={:.4e} [{:.4e}, {:.4e}]",
                            series.label, p.x, p.y, a, b
                        )
                    }
                    _ => format!("{}: x={}, y={:.4e}", series.label, p.x, p.y),
                };
                let _ = writeln!(
                    s,
                    "<circle class=\"marker\" cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"3\" fill=\"{colour}\"><title>{}</title></circle>",
                    xml_escape(&tip)
                );
            }
            let ly = l.top + 8.0 + 16.0 * i as f64;
            let lx = l.w - l.right + 12.0;
            let _ = writeln!(
                s,
                "<line class=\"legend-line\" x1=\"{lx:.1}\" y1=\"{ly:.1}\" x2=\"{:.1}\" y2=\"{ly:.1}\" stroke=\"{colour}\" stroke-width=\"2\"/>",
                lx + 18.0
            );
            let _ = writeln!(
                s,
                "<text class=\"legend\" x=\"{:.1}\" y=\"{:.1}\">{}</text>",
                lx + 24.0,
                ly + 4.0,
                xml_escape(&Layout::legend_label(&series.label))
            );
        }
        s.push_str("</svg>\n");
        s
    }

    /// The plot of [`LinePlot::to_svg`] rasterised at twice its scale, as an 8-bit RGB PNG.
    /// Markers are discs of the series colour ([`series_colour`]) centred at
    /// [`LinePlot::png_marker_centres`].
    pub fn to_png(&self) -> Vec<u8> {
        let l = Layout::new(self);
        let k = PNG_SCALE;
        let mut c = Canvas::new((l.w * k) as usize, (l.h * k) as usize);
        let (x0, x1) = (l.left * k, (l.w - l.right) * k);
        let (y0, y1) = (l.top * k, (l.h - l.bottom) * k);
        for (t, label) in &l.y.ticks {
            let y = l.py(*t) * k;
            c.hline(x0, x1, y, 1, GRID);
            c.hline(x0 - 10.0, x0, y, 2, BLACK);
            let wpx = label.chars().count() as f64 * 12.0;
            c.text(x0 - 16.0 - wpx, y - 7.0, label, 2, false, BLACK);
        }
        for (t, label) in &l.x.ticks {
            let x = l.px(*t) * k;
            c.vline(x, y0, y1, 1, GRID);
            c.vline(x, y1, y1 + 10.0, 2, BLACK);
            let wpx = label.chars().count() as f64 * 12.0;
            c.text(x - wpx / 2.0, y1 + 16.0, label, 2, false, BLACK);
        }
        c.vline(x0, y0, y1, 2, BLACK);
        c.hline(x0, x1, y1, 2, BLACK);
        let title_w = self.title.chars().count() as f64 * 12.0;
        c.text(
            (x0 + x1 - title_w) / 2.0,
            14.0,
            &self.title,
            2,
            false,
            BLACK,
        );
        let xl_w = self.x_label.chars().count() as f64 * 12.0;
        c.text(
            (x0 + x1 - xl_w) / 2.0,
            l.h * k - 36.0,
            &self.x_label,
            2,
            false,
            BLACK,
        );
        let yl_h = self.y_label.chars().count() as f64 * 12.0;
        c.text(12.0, (y0 + y1 + yl_h) / 2.0, &self.y_label, 2, true, BLACK);
        if !l.has_points() {
            c.text(
                (x0 + x1) / 2.0 - 42.0,
                (y0 + y1) / 2.0,
                "no data",
                2,
                false,
                BLACK,
            );
        }
        for (i, series) in self.series.iter().enumerate() {
            let colour = series_colour(i);
            for run in l.runs(series) {
                for w in run.windows(2) {
                    c.line(w[0].0 * k, w[0].1 * k, w[1].0 * k, w[1].1 * k, 3, colour);
                }
            }
            for p in &series.points {
                let Some((x, _)) = l.at(p) else { continue };
                if let (Some(a), Some(b)) = (
                    p.y_low.and_then(|v| l.bar_y(v)),
                    p.y_high.and_then(|v| l.bar_y(v)),
                ) {
                    c.vline(x * k, a * k, b * k, 2, colour);
                    c.hline(x * k - 6.0, x * k + 6.0, a * k, 2, colour);
                    c.hline(x * k - 6.0, x * k + 6.0, b * k, 2, colour);
                }
            }
            for p in &series.points {
                if let Some((x, y)) = l.at(p) {
                    c.disc(x * k, y * k, 6.0, colour);
                }
            }
            let ly = (l.top + 8.0 + 16.0 * i as f64) * k;
            let lx = (l.w - l.right + 12.0) * k;
            c.hline(lx, lx + 36.0, ly, 4, colour);
            c.text(
                lx + 48.0,
                ly - 7.0,
                &Layout::legend_label(&series.label),
                2,
                false,
                BLACK,
            );
        }
        c.encode_png()
    }

    /// The PNG pixel centres of every drawable marker, per series in point order (for
    /// checking a rendering).
    pub fn png_marker_centres(&self) -> Vec<Vec<(usize, usize)>> {
        let l = Layout::new(self);
        self.series
            .iter()
            .map(|s| {
                s.points
                    .iter()
                    .filter_map(|p| l.at(p))
                    .map(|(x, y)| ((x * PNG_SCALE) as usize, (y * PNG_SCALE) as usize))
                    .collect()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raster::decode_png;

    fn sample() -> LinePlot {
        LinePlot {
            title: "rmse vs shots".into(),
            x_label: "shots S".into(),
            y_label: "relative rmse".into(),
            x_scale: Scale::Log,
            y_scale: Scale::Log,
            series: vec![
                Series {
                    label: "multinomial".into(),
                    points: vec![
                        Point::with_bar(4.0, 0.5, 0.45, 0.55),
                        Point::with_bar(16.0, 0.25, 0.22, 0.28),
                        Point::with_bar(64.0, 0.125, 0.11, 0.14),
                    ],
                },
                Series {
                    label: "a<b & c".into(),
                    points: vec![
                        Point::new(4.0, 0.3),
                        Point::new(16.0, 0.0), // not drawable on a log axis
                        Point::new(64.0, 0.05),
                    ],
                },
            ],
        }
    }

    #[test]
    fn svg_draws_every_drawable_point_bar_and_legend_entry() {
        let p = sample();
        let svg = p.to_svg();
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<circle class=\"marker\"").count(), 5);
        assert_eq!(svg.matches("<line class=\"errorbar\"").count(), 3);
        // The second series is split by its undrawable point: two runs.
        assert_eq!(svg.matches("<polyline class=\"series\"").count(), 3);
        assert_eq!(svg.matches("<text class=\"legend\"").count(), 2);
        assert!(svg.contains(">a&lt;b &amp; c</text>"));
        // Ticks of the log y axis inside the data range 0.05 .. 0.55.
        assert!(svg.contains(">0.1</text>") && svg.contains(">0.5</text>"));
        assert!(!svg.contains(">1</text>") && !svg.contains(">0.01</text>"));
        assert!(!svg.contains("no data"));
    }

    #[test]
    fn log_axis_places_decades_evenly_and_orders_values() {
        let p = sample();
        let l = Layout::new(&p);
        let (a, b, c) = (l.px(0.0), l.px(1.0), l.px(2.0));
        assert!((b - a - (c - b)).abs() < 1e-9, "decades evenly spaced");
        let y_hi = l.at(&Point::new(4.0, 0.5)).unwrap().1;
        let y_lo = l.at(&Point::new(4.0, 0.125)).unwrap().1;
        assert!(y_hi < y_lo, "larger values are higher up");
        assert!(l.at(&Point::new(4.0, -1.0)).is_none());
        assert!(l.at(&Point::new(f64::NAN, 1.0)).is_none());
    }

    #[test]
    fn png_has_the_markers_at_their_centres() {
        let p = sample();
        let img = decode_png(&p.to_png()).unwrap();
        let centres = p.png_marker_centres();
        assert_eq!(centres.iter().map(Vec::len).collect::<Vec<_>>(), [3, 2]);
        for (i, cs) in centres.iter().enumerate() {
            for &(x, y) in cs {
                // A later series may cover an earlier marker; these two do not overlap.
                assert_eq!(
                    img.pixel(x, y),
                    Some(series_colour(i)),
                    "series {i} at ({x}, {y})"
                );
            }
        }
        assert_eq!(img.pixel(img.width() - 1, img.height() - 1), Some([255; 3]));
    }

    #[test]
    fn an_empty_plot_says_so() {
        let p = LinePlot {
            series: vec![Series {
                label: "none".into(),
                points: vec![Point::new(1.0, f64::NAN)],
            }],
            ..sample()
        };
        assert!(p.to_svg().contains("no data"));
        assert!(decode_png(&p.to_png()).is_ok());
        let lin = LinePlot {
            x_scale: Scale::Linear,
            y_scale: Scale::Linear,
            ..sample()
        };
        let svg = lin.to_svg();
        assert_eq!(svg.matches("<circle class=\"marker\"").count(), 6);
    }
}
