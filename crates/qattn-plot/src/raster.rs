//! A minimal raster and vector toolkit shared by the plots of qattn: an RGB [`Canvas`] with
//! axis-aligned rectangles, straight lines, filled discs and a 5×7 bitmap font, a minimal PNG
//! encoder (8-bit RGB, one zlib `IDAT`) and its inverse [`decode_png`] (for checking
//! renderings), "nice" axis ticks and XML escaping for SVG text.
//!
//! Used by the line plots of [`crate::line`] and by qattn-glue's GLUE report plots.

use std::fmt;

/// A PNG that [`decode_png`] cannot read, with the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PngError(pub String);

impl fmt::Display for PngError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PNG: {}", self.0)
    }
}

impl std::error::Error for PngError {}

type Result<T> = std::result::Result<T, PngError>;

/// 5×7 glyphs, one row a byte (bit 4 = leftmost column). Letters are lower case only; upper
/// case is drawn with them, and anything else as `?`.
const GLYPHS: &[(char, [u8; 7])] = &[
    (' ', [0, 0, 0, 0, 0, 0, 0]),
    ('0', [0x0e, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0e]),
    ('1', [0x04, 0x0c, 0x04, 0x04, 0x04, 0x04, 0x0e]),
    ('2', [0x0e, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1f]),
    ('3', [0x1f, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0e]),
    ('4', [0x02, 0x06, 0x0a, 0x12, 0x1f, 0x02, 0x02]),
    ('5', [0x1f, 0x10, 0x1e, 0x01, 0x01, 0x11, 0x0e]),
    ('6', [0x06, 0x08, 0x10, 0x1e, 0x11, 0x11, 0x0e]),
    ('7', [0x1f, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08]),
    ('8', [0x0e, 0x11, 0x11, 0x0e, 0x11, 0x11, 0x0e]),
    ('9', [0x0e, 0x11, 0x11, 0x0f, 0x01, 0x02, 0x0c]),
    ('a', [0x00, 0x00, 0x0e, 0x01, 0x0f, 0x11, 0x0f]),
    ('b', [0x10, 0x10, 0x16, 0x19, 0x11, 0x11, 0x1e]),
    ('c', [0x00, 0x00, 0x0e, 0x10, 0x10, 0x11, 0x0e]),
    ('d', [0x01, 0x01, 0x0d, 0x13, 0x11, 0x11, 0x0f]),
    ('e', [0x00, 0x00, 0x0e, 0x11, 0x1f, 0x10, 0x0e]),
    ('f', [0x06, 0x09, 0x08, 0x1c, 0x08, 0x08, 0x08]),
    ('g', [0x00, 0x0f, 0x11, 0x11, 0x0f, 0x01, 0x0e]),
    ('h', [0x10, 0x10, 0x16, 0x19, 0x11, 0x11, 0x11]),
    ('i', [0x04, 0x00, 0x0c, 0x04, 0x04, 0x04, 0x0e]),
    ('j', [0x02, 0x00, 0x06, 0x02, 0x02, 0x12, 0x0c]),
    ('k', [0x10, 0x10, 0x12, 0x14, 0x18, 0x14, 0x12]),
    ('l', [0x0c, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0e]),
    ('m', [0x00, 0x00, 0x1a, 0x15, 0x15, 0x11, 0x11]),
    ('n', [0x00, 0x00, 0x16, 0x19, 0x11, 0x11, 0x11]),
    ('o', [0x00, 0x00, 0x0e, 0x11, 0x11, 0x11, 0x0e]),
    ('p', [0x00, 0x00, 0x1e, 0x11, 0x1e, 0x10, 0x10]),
    ('q', [0x00, 0x00, 0x0d, 0x13, 0x0f, 0x01, 0x01]),
    ('r', [0x00, 0x00, 0x16, 0x19, 0x10, 0x10, 0x10]),
    ('s', [0x00, 0x00, 0x0e, 0x10, 0x0e, 0x01, 0x1e]),
    ('t', [0x08, 0x08, 0x1c, 0x08, 0x08, 0x09, 0x06]),
    ('u', [0x00, 0x00, 0x11, 0x11, 0x11, 0x13, 0x0d]),
    ('v', [0x00, 0x00, 0x11, 0x11, 0x11, 0x0a, 0x04]),
    ('w', [0x00, 0x00, 0x11, 0x11, 0x15, 0x15, 0x0a]),
    ('x', [0x00, 0x00, 0x11, 0x0a, 0x04, 0x0a, 0x11]),
    ('y', [0x00, 0x00, 0x11, 0x11, 0x0f, 0x01, 0x0e]),
    ('z', [0x00, 0x00, 0x1f, 0x02, 0x04, 0x08, 0x1f]),
    ('.', [0x00, 0x00, 0x00, 0x00, 0x00, 0x0c, 0x0c]),
    (',', [0x00, 0x00, 0x00, 0x00, 0x0c, 0x04, 0x08]),
    (':', [0x00, 0x0c, 0x0c, 0x00, 0x0c, 0x0c, 0x00]),
    ('-', [0x00, 0x00, 0x00, 0x1f, 0x00, 0x00, 0x00]),
    ('+', [0x00, 0x04, 0x04, 0x1f, 0x04, 0x04, 0x00]),
    ('_', [0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x1f]),
    ('(', [0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02]),
    (')', [0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08]),
    ('/', [0x00, 0x01, 0x02, 0x04, 0x08, 0x10, 0x00]),
    ('=', [0x00, 0x00, 0x1f, 0x00, 0x1f, 0x00, 0x00]),
    ('%', [0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03]),
    ('?', [0x0e, 0x11, 0x01, 0x02, 0x04, 0x00, 0x04]),
];

/// The 5×7 glyph of `c` (upper case drawn as lower case; unknown characters as `?`).
pub fn glyph(c: char) -> [u8; 7] {
    let c = c.to_ascii_lowercase();
    GLYPHS
        .iter()
        .find(|g| g.0 == c)
        .or_else(|| GLYPHS.iter().find(|g| g.0 == '?'))
        .map(|g| g.1)
        .unwrap_or([0; 7])
}

/// An RGB canvas, white when created; (0, 0) is the top-left pixel.
#[derive(Clone, Debug)]
pub struct Canvas {
    w: usize,
    h: usize,
    px: Vec<[u8; 3]>,
}

/// Black (`#000000`): axes, ticks and text.
pub const BLACK: [u8; 3] = [0, 0, 0];
/// Light grey (`#dddddd`): grid lines.
pub const GRID: [u8; 3] = [0xdd, 0xdd, 0xdd];

impl Canvas {
    /// A white `w`×`h` canvas.
    pub fn new(w: usize, h: usize) -> Canvas {
        Canvas {
            w,
            h,
            px: vec![[255; 3]; w * h],
        }
    }

    /// Width in pixels.
    pub fn width(&self) -> usize {
        self.w
    }

    /// Height in pixels.
    pub fn height(&self) -> usize {
        self.h
    }

    /// The colour of pixel (x, y), `None` outside the canvas.
    pub fn pixel(&self, x: usize, y: usize) -> Option<[u8; 3]> {
        (x < self.w && y < self.h).then(|| self.px[y * self.w + x])
    }

    /// Sets pixel (x, y); coordinates outside the canvas are ignored.
    pub fn set(&mut self, x: i64, y: i64, c: [u8; 3]) {
        if x >= 0 && y >= 0 && (x as usize) < self.w && (y as usize) < self.h {
            self.px[y as usize * self.w + x as usize] = c;
        }
    }

    /// Fills the rectangle with corners (x0, y0) and (x1, y1), inclusive.
    pub fn rect(&mut self, x0: i64, y0: i64, x1: i64, y1: i64, c: [u8; 3]) {
        for y in y0.min(y1)..=y0.max(y1) {
            for x in x0.min(x1)..=x0.max(x1) {
                self.set(x, y, c);
            }
        }
    }

    /// A horizontal line from x0 to x1 at height y, `width` pixels thick.
    pub fn hline(&mut self, x0: f64, x1: f64, y: f64, width: i64, c: [u8; 3]) {
        let y = y.round() as i64;
        self.rect(
            x0.round() as i64,
            y - width / 2,
            x1.round() as i64,
            y - width / 2 + width - 1,
            c,
        );
    }

    /// A vertical line from y0 to y1 at x, `width` pixels thick.
    pub fn vline(&mut self, x: f64, y0: f64, y1: f64, width: i64, c: [u8; 3]) {
        let x = x.round() as i64;
        self.rect(
            x - width / 2,
            y0.round() as i64,
            x - width / 2 + width - 1,
            y1.round() as i64,
            c,
        );
    }

    /// A straight line from (x0, y0) to (x1, y1), `width` pixels thick: a `width`×`width`
    /// square stamped at every pixel step along the longer axis. Non-finite ends draw nothing.
    pub fn line(&mut self, x0: f64, y0: f64, x1: f64, y1: f64, width: i64, c: [u8; 3]) {
        if ![x0, y0, x1, y1].iter().all(|v| v.is_finite()) {
            return;
        }
        let steps = (x1 - x0).abs().max((y1 - y0).abs()).ceil().max(1.0);
        // Far outside the canvas a line is not worth walking pixel by pixel.
        let steps = steps.min(4.0 * (self.w + self.h) as f64) as i64;
        let half = width / 2;
        for i in 0..=steps {
            let t = i as f64 / steps as f64;
            let x = (x0 + t * (x1 - x0)).round() as i64 - half;
            let y = (y0 + t * (y1 - y0)).round() as i64 - half;
            self.rect(x, y, x + width - 1, y + width - 1, c);
        }
    }

    /// A filled disc of radius `r` centred at (cx, cy).
    pub fn disc(&mut self, cx: f64, cy: f64, r: f64, c: [u8; 3]) {
        let (x0, x1) = ((cx - r).floor() as i64, (cx + r).ceil() as i64);
        let (y0, y1) = ((cy - r).floor() as i64, (cy + r).ceil() as i64);
        for y in y0..=y1 {
            for x in x0..=x1 {
                let (dx, dy) = (x as f64 + 0.5 - cx, y as f64 + 0.5 - cy);
                if dx * dx + dy * dy <= r * r {
                    self.set(x, y, c);
                }
            }
        }
    }

    /// Text in the 5×7 font, each font pixel `k`×`k`, advancing 6·k per character.
    /// Horizontal text has its top-left at (x, y); `up` text reads bottom to top with its
    /// start at (x, y) as the bottom-left.
    pub fn text(&mut self, x: f64, y: f64, s: &str, k: i64, up: bool, c: [u8; 3]) {
        let (x, y) = (x.round() as i64, y.round() as i64);
        for (i, ch) in s.chars().enumerate() {
            let g = glyph(ch);
            for (row, bits) in g.iter().enumerate() {
                for col in 0..5 {
                    if bits & (0x10 >> col) == 0 {
                        continue;
                    }
                    let (u, v) = ((i as i64 * 6 + col) * k, row as i64 * k);
                    let (px, py) = if up { (x + v, y - u) } else { (x + u, y + v) };
                    if up {
                        self.rect(px, py - k + 1, px + k - 1, py, c);
                    } else {
                        self.rect(px, py, px + k - 1, py + k - 1, c);
                    }
                }
            }
        }
    }

    /// The canvas as a PNG file: 8-bit RGB, filter type 0 on every row, one zlib `IDAT`.
    pub fn encode_png(&self) -> Vec<u8> {
        use std::io::Write as _;
        fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
            out.extend_from_slice(&(data.len() as u32).to_be_bytes());
            let mut h = crc32fast::Hasher::new();
            h.update(kind);
            h.update(data);
            out.extend_from_slice(kind);
            out.extend_from_slice(data);
            out.extend_from_slice(&h.finalize().to_be_bytes());
        }
        let mut raw = Vec::with_capacity(self.h * (1 + 3 * self.w));
        for row in self.px.chunks(self.w.max(1)) {
            raw.push(0); // filter: none
            for p in row {
                raw.extend_from_slice(p);
            }
        }
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(&raw).expect("writing to memory");
        let idat = z.finish().expect("writing to memory");
        let mut ihdr = Vec::new();
        ihdr.extend_from_slice(&(self.w as u32).to_be_bytes());
        ihdr.extend_from_slice(&(self.h as u32).to_be_bytes());
        ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8 bits, RGB, deflate, no filter, no interlace
        let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
        chunk(&mut out, b"IHDR", &ihdr);
        chunk(&mut out, b"IDAT", &idat);
        chunk(&mut out, b"IEND", &[]);
        out
    }
}

/// Reads back a PNG written by [`Canvas::encode_png`] (8-bit RGB, no interlace, filter type 0
/// on every row), checking the signature, every chunk's CRC, the chunk order IHDR, IDAT…, IEND
/// and the image size. Meant for checking renderings; other PNGs are rejected with the reason.
pub fn decode_png(png: &[u8]) -> Result<Canvas> {
    use std::io::Read as _;
    let bad = PngError;
    if png.len() < 8 || &png[..8] != b"\x89PNG\r\n\x1a\n" {
        return Err(bad("missing signature".into()));
    }
    let mut at = 8;
    let (mut w, mut h, mut idat, mut kinds) = (0usize, 0usize, Vec::new(), Vec::new());
    while at < png.len() {
        let word = |i: usize| -> Result<u32> {
            png.get(i..i + 4)
                .and_then(|b| b.try_into().ok())
                .map(u32::from_be_bytes)
                .ok_or_else(|| bad(format!("truncated at byte {i}")))
        };
        let len = word(at)? as usize;
        let body = png
            .get(at + 4..at + 8 + len)
            .ok_or_else(|| bad(format!("chunk at byte {at} runs past the end")))?;
        let (kind, data) = body.split_at(4);
        let crc = word(at + 8 + len)?;
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(body);
        if hasher.finalize() != crc {
            return Err(bad(format!(
                "bad CRC in chunk {}",
                String::from_utf8_lossy(kind)
            )));
        }
        match kind {
            b"IHDR" => {
                if data.len() != 13 || data[8..] != [8, 2, 0, 0, 0] {
                    return Err(bad("IHDR is not 8-bit RGB without interlace".into()));
                }
                w = u32::from_be_bytes([data[0], data[1], data[2], data[3]]) as usize;
                h = u32::from_be_bytes([data[4], data[5], data[6], data[7]]) as usize;
            }
            b"IDAT" => idat.extend_from_slice(data),
            _ => {}
        }
        kinds.push(String::from_utf8_lossy(kind).into_owned());
        at += 12 + len;
    }
    let order_ok = kinds.first().map(String::as_str) == Some("IHDR")
        && kinds.last().map(String::as_str) == Some("IEND")
        && kinds[1..kinds.len() - 1].iter().all(|k| k == "IDAT")
        && kinds.len() > 2;
    if !order_ok {
        return Err(bad(format!("unexpected chunks {kinds:?}")));
    }
    let mut raw = Vec::new();
    flate2::read::ZlibDecoder::new(&idat[..])
        .read_to_end(&mut raw)
        .map_err(|e| bad(format!("IDAT does not inflate: {e}")))?;
    if raw.len() != h * (1 + 3 * w) {
        return Err(bad(format!(
            "{} bytes of pixel data for a {w}×{h} image",
            raw.len()
        )));
    }
    let mut c = Canvas::new(w, h);
    for (y, row) in raw.chunks(1 + 3 * w).enumerate() {
        if row[0] != 0 {
            return Err(bad(format!("row {y} uses filter {}", row[0])));
        }
        for (x, p) in row[1..].chunks(3).enumerate() {
            c.px[y * w + x] = [p[0], p[1], p[2]];
        }
    }
    Ok(c)
}

/// Round axis ticks covering [lo, hi]: multiples of a step of 1, 2 or 5 × 10^k chosen so that
/// the span holds about `target` steps, from the multiple at or below `lo` to the one at or
/// above `hi` (widened by a step on each side when that range is under half a step). Returns
/// the ticks and the number of decimals that prints them.
pub fn nice_ticks(lo: f64, hi: f64, target: f64) -> (Vec<f64>, usize) {
    let span = if hi - lo > 1e-9 { hi - lo } else { 1.0 };
    let raw = span / target.max(1.0);
    let mag = 10f64.powf(raw.log10().floor());
    let f = raw / mag;
    let step = mag
        * if f <= 1.0 {
            1.0
        } else if f <= 2.0 {
            2.0
        } else if f <= 5.0 {
            5.0
        } else {
            10.0
        };
    let mut a = (lo / step).floor() * step;
    let mut b = (hi / step).ceil() * step;
    if b - a < step * 0.5 {
        a -= step;
        b += step;
    }
    let count = ((b - a) / step).round() as usize;
    let ticks = (0..=count).map(|i| a + i as f64 * step).collect();
    let decimals = (-step.log10().floor()).max(0.0) as usize;
    (ticks, decimals)
}

/// The opening of a plot's SVG document, shared by every plot: the `<svg>` element (size
/// `w` × `h`, the plots' font), a white background and the title centred at `title_x`
/// (escaped with [`xml_escape`]). Each element ends with a newline; the caller closes `</svg>`.
pub fn svg_start(w: f64, h: f64, title_x: f64, title: &str) -> String {
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} \
         {h}\" font-family=\"DejaVu Sans, Helvetica, Arial, sans-serif\" font-size=\"11\">\n\
         <rect x=\"0\" y=\"0\" width=\"{w}\" height=\"{h}\" fill=\"white\"/>\n\
         <text class=\"title\" x=\"{title_x:.1}\" y=\"22\" text-anchor=\"middle\" \
         font-size=\"13\">{}</text>\n",
        xml_escape(title)
    )
}

/// Escapes `&`, `<`, `>` and `"` for SVG text and attribute values.
pub fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn png_round_trips_and_corruption_is_detected() {
        let mut c = Canvas::new(7, 5);
        c.line(0.0, 0.0, 6.0, 4.0, 1, [10, 20, 30]);
        c.disc(5.0, 1.0, 1.0, [200, 0, 0]);
        let png = c.encode_png();
        let back = decode_png(&png).unwrap();
        assert_eq!((back.width(), back.height()), (7, 5));
        for y in 0..5 {
            for x in 0..7 {
                assert_eq!(back.pixel(x, y), c.pixel(x, y), "pixel ({x}, {y})");
            }
        }
        assert_eq!(back.pixel(0, 0), Some([10, 20, 30]));
        assert_eq!(back.pixel(6, 4), Some([10, 20, 30]));
        let mut broken = png.clone();
        let n = broken.len();
        broken[n - 20] ^= 0xff;
        assert!(decode_png(&broken).unwrap_err().to_string().contains("CRC"));
        assert!(decode_png(b"GIF89a").is_err());
    }

    #[test]
    fn a_diagonal_line_touches_every_column_between_its_ends() {
        let mut c = Canvas::new(20, 20);
        c.line(2.0, 3.0, 17.0, 11.0, 1, BLACK);
        for x in 2..=17 {
            assert!(
                (0..20).any(|y| c.pixel(x, y) == Some(BLACK)),
                "column {x} untouched"
            );
        }
        assert_eq!(c.pixel(2, 3), Some(BLACK));
        assert_eq!(c.pixel(17, 11), Some(BLACK));
        assert_eq!(c.pixel(17, 3), Some([255; 3]));
    }

    #[test]
    fn nice_ticks_cover_the_range_with_round_steps() {
        let (t, d) = nice_ticks(0.13, 0.87, 5.0);
        assert_eq!(d, 1);
        assert!((t[0] - 0.0).abs() < 1e-12 && (t[t.len() - 1] - 1.0).abs() < 1e-12);
        assert_eq!(t.len(), 6);
        let (t, d) = nice_ticks(60.0, 75.0, 5.0);
        assert_eq!(d, 0);
        assert_eq!(t, vec![60.0, 65.0, 70.0, 75.0]);
    }
}
