//! # qattn-plot
//!
//! The one home of qattn's plotting, below every library that draws (qattn-glue's GLUE report,
//! qattn-verify's estimator studies):
//!
//! - [`raster`]: an RGB [`Canvas`](raster::Canvas) with rectangles, lines, discs and a 5×7
//!   bitmap font, a minimal PNG encoder and its inverse for checking renderings, "nice" axis
//!   ticks and XML escaping for SVG text;
//! - [`line`]: [`LinePlot`]s — series of points on linear or logarithmic axes with error bars
//!   and a legend — written as SVG and as PNG.
//!
//! Written by hand rather than with a plotting crate; ARCHITECTURE.md ("Plots") says why.
//!
//! ```
//! use qattn_plot::{LinePlot, Point, Scale, Series};
//!
//! let plot = LinePlot {
//!     title: "error vs shots".into(),
//!     x_label: "shots".into(),
//!     y_label: "relative error".into(),
//!     x_scale: Scale::Log,
//!     y_scale: Scale::Log,
//!     series: vec![Series {
//!         label: "multinomial".into(),
//!         points: vec![Point::new(4.0, 0.5), Point::new(16.0, 0.25)],
//!     }],
//! };
//! assert!(plot.to_svg().starts_with("<svg"));
//! assert!(plot.to_png().starts_with(b"\x89PNG"));
//! ```

pub mod line;
pub mod raster;

pub use line::{LinePlot, Point, Scale, Series};
