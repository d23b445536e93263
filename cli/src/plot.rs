//! Figures of panels with labelled axes, written as SVG or PNG (chosen by the file extension).
//! The layout is computed once and drawn through a [`Canvas`]: SVG elements, or pixels for PNG
//! (lines, boxes and a 5x7 bitmap font).

use super::{font, png};
use std::fmt::Write as _;
use std::path::Path;

/// An RGB colour.
pub type Rgb = [u8; 3];

/// Colours for series, in order.
pub const PALETTE: [Rgb; 6] = [
    [31, 119, 180],
    [214, 39, 40],
    [44, 160, 44],
    [255, 127, 14],
    [148, 103, 189],
    [23, 190, 207],
];
const BLACK: Rgb = [0, 0, 0];
const GREY: Rgb = [200, 200, 200];
const WHITE: Rgb = [255, 255, 255];

/// How a series is drawn.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Mark {
    /// A polyline through the points.
    Line,
    /// A short vertical tick at each point (spike rasters).
    Ticks,
    /// Bars from zero; `xs` are the left edges, each bar as wide as the given width.
    Bars(f64),
}

/// One data series of a panel.
#[derive(Clone, Debug)]
pub struct Series {
    pub xs: Vec<f64>,
    pub ys: Vec<f64>,
    pub color: Rgb,
    pub mark: Mark,
}

/// One plot with its axes.
#[derive(Clone, Debug, Default)]
pub struct Panel {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<Series>,
    /// Fixed axis ranges; `None` fits the data.
    pub x_range: Option<(f64, f64)>,
    pub y_range: Option<(f64, f64)>,
}

impl Panel {
    pub fn new(title: &str, x_label: &str, y_label: &str) -> Self {
        Self {
            title: title.into(),
            x_label: x_label.into(),
            y_label: y_label.into(),
            ..Default::default()
        }
    }

    pub fn with(mut self, xs: Vec<f64>, ys: Vec<f64>, color: Rgb, mark: Mark) -> Self {
        self.series.push(Series {
            xs,
            ys,
            color,
            mark,
        });
        self
    }

    fn range(&self, axis: usize) -> (f64, f64) {
        if let Some(r) = [self.x_range, self.y_range][axis] {
            return r;
        }
        let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
        for s in &self.series {
            let vals = if axis == 0 { &s.xs } else { &s.ys };
            for &v in vals.iter().filter(|v| v.is_finite()) {
                lo = lo.min(v);
                hi = hi.max(v);
            }
            if let Mark::Bars(w) = s.mark {
                if axis == 0 {
                    hi = hi.max(s.xs.iter().copied().fold(f64::NEG_INFINITY, f64::max) + w);
                } else {
                    lo = lo.min(0.0);
                }
            }
        }
        if !lo.is_finite() {
            return (0.0, 1.0);
        }
        if hi - lo < 1e-12 {
            return (lo - 0.5, hi + 0.5);
        }
        (lo, hi)
    }
}

/// A grid of panels.
#[derive(Clone, Debug)]
pub struct Figure {
    pub title: String,
    pub panels: Vec<Panel>,
    pub columns: usize,
    /// Size of one panel's cell in pixels.
    pub cell: (u32, u32),
}

/// What the layout draws; implemented for SVG and for pixels.
trait Canvas {
    fn line(&mut self, a: (f64, f64), b: (f64, f64), color: Rgb);
    fn polyline(&mut self, points: &[(f64, f64)], color: Rgb) {
        for w in points.windows(2) {
            self.line(w[0], w[1], color);
        }
    }
    fn rect(&mut self, x: f64, y: f64, w: f64, h: f64, color: Rgb);
    /// Text with its anchor at `(x, y)`: `align` 0 left, 1 centre, 2 right; `vertical` turns
    /// it a quarter counter-clockwise.
    fn text(&mut self, x: f64, y: f64, s: &str, align: u8, vertical: bool, large: bool);
}

/// Tick positions for `[lo, hi]`: 1, 2 or 5 times a power of ten, about five of them.
fn ticks(lo: f64, hi: f64) -> Vec<f64> {
    let raw = (hi - lo) / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    let first = (lo / step).ceil() as i64;
    let last = (hi / step).floor() as i64;
    (first..=last).map(|k| k as f64 * step).collect()
}

fn tick_label(v: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let a = v.abs();
    if !(1e-3..1e5).contains(&a) {
        return format!("{v:.0e}");
    }
    let s = format!("{v:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    s.to_string()
}

impl Figure {
    pub fn new(title: &str, panels: Vec<Panel>, columns: usize) -> Self {
        Self {
            title: title.into(),
            panels,
            columns: columns.max(1),
            cell: (460, 300),
        }
    }

    fn size(&self) -> (u32, u32) {
        let rows = self.panels.len().div_ceil(self.columns) as u32;
        (
            self.cell.0 * self.columns.min(self.panels.len().max(1)) as u32,
            40 + self.cell.1 * rows.max(1),
        )
    }

    fn draw(&self, c: &mut dyn Canvas) {
        let (w, h) = self.size();
        c.rect(0.0, 0.0, w as f64, h as f64, WHITE);
        c.text(w as f64 / 2.0, 24.0, &self.title, 1, false, true);
        for (k, panel) in self.panels.iter().enumerate() {
            let (col, row) = ((k % self.columns) as f64, (k / self.columns) as f64);
            let (cw, ch) = (self.cell.0 as f64, self.cell.1 as f64);
            let (x0, y0) = (col * cw + 70.0, 40.0 + row * ch + 28.0);
            let (pw, ph) = (cw - 70.0 - 20.0, ch - 28.0 - 48.0);
            draw_panel(c, panel, (x0, y0, pw, ph));
        }
    }

    /// Writes the figure as SVG or PNG, by the extension of `path`.
    pub fn save(&self, path: &Path) -> Result<(), String> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        let bytes = match ext.as_deref() {
            Some("svg") => self.svg().into_bytes(),
            Some("png") => self.png()?,
            _ => {
                return Err(format!(
                    "{}: the plot file must end in .png or .svg",
                    path.display()
                ))
            }
        };
        std::fs::write(path, bytes).map_err(|e| format!("cannot write {}: {e}", path.display()))
    }

    pub fn svg(&self) -> String {
        let (w, h) = self.size();
        let mut svg = Svg(String::new());
        self.draw(&mut svg);
        format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" font-family=\"sans-serif\">\n{}</svg>\n",
            svg.0
        )
    }

    /// The figure drawn into pixels.
    fn pixels(&self) -> Pixels {
        let (w, h) = self.size();
        let mut px = Pixels {
            w: w as usize,
            h: h as usize,
            rgb: vec![255; 3 * (w * h) as usize],
        };
        self.draw(&mut px);
        px
    }

    pub fn png(&self) -> Result<Vec<u8>, String> {
        let px = self.pixels();
        png::encode(px.w as u32, px.h as u32, &px.rgb)
    }
}

/// Draws one panel into the plot area `(x, y, w, h)` (pixels, y down).
fn draw_panel(c: &mut dyn Canvas, p: &Panel, (x0, y0, w, h): (f64, f64, f64, f64)) {
    let (xl, xh) = p.range(0);
    let (yl, yh) = p.range(1);
    let sx = |x: f64| x0 + (x - xl) / (xh - xl) * w;
    let sy = |y: f64| y0 + h - (y - yl) / (yh - yl) * h;
    let clamp_y = |y: f64| y.clamp(y0, y0 + h);
    // ticks and grid
    for t in ticks(xl, xh) {
        let x = sx(t);
        c.line((x, y0), (x, y0 + h), GREY);
        c.line((x, y0 + h), (x, y0 + h + 4.0), BLACK);
        c.text(x, y0 + h + 16.0, &tick_label(t), 1, false, false);
    }
    for t in ticks(yl, yh) {
        let y = sy(t);
        c.line((x0, y), (x0 + w, y), GREY);
        c.line((x0 - 4.0, y), (x0, y), BLACK);
        c.text(x0 - 7.0, y + 4.0, &tick_label(t), 2, false, false);
    }
    for s in &p.series {
        let pts: Vec<(f64, f64)> =
            s.xs.iter()
                .zip(&s.ys)
                .filter(|(x, y)| x.is_finite() && y.is_finite())
                .map(|(&x, &y)| (sx(x), clamp_y(sy(y))))
                .collect();
        match s.mark {
            Mark::Line => c.polyline(&pts, s.color),
            Mark::Ticks => {
                for &(x, y) in &pts {
                    c.line((x, y - 1.5), (x, y + 1.5), s.color);
                }
            }
            Mark::Bars(bw) => {
                let base = clamp_y(sy(0.0f64.max(yl)));
                for &(x, y) in &pts {
                    let x1 = sx(xl + (x - x0) / w * (xh - xl) + bw);
                    c.rect(
                        x,
                        y.min(base),
                        (x1 - x - 1.0).max(1.0),
                        (base - y).abs(),
                        s.color,
                    );
                }
            }
        }
    }
    // frame and labels
    c.polyline(
        &[
            (x0, y0),
            (x0 + w, y0),
            (x0 + w, y0 + h),
            (x0, y0 + h),
            (x0, y0),
        ],
        BLACK,
    );
    c.text(x0 + w / 2.0, y0 - 8.0, &p.title, 1, false, false);
    c.text(x0 + w / 2.0, y0 + h + 34.0, &p.x_label, 1, false, false);
    c.text(x0 - 52.0, y0 + h / 2.0, &p.y_label, 1, true, false);
}

struct Svg(String);

fn hex(c: Rgb) -> String {
    format!("#{:02x}{:02x}{:02x}", c[0], c[1], c[2])
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

impl Canvas for Svg {
    fn line(&mut self, a: (f64, f64), b: (f64, f64), color: Rgb) {
        let _ = writeln!(
            self.0,
            "<line x1=\"{:.1}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"{}\"/>",
            a.0,
            a.1,
            b.0,
            b.1,
            hex(color)
        );
    }
    fn polyline(&mut self, points: &[(f64, f64)], color: Rgb) {
        let pts: Vec<String> = points
            .iter()
            .map(|(x, y)| format!("{x:.1},{y:.1}"))
            .collect();
        let _ = writeln!(
            self.0,
            "<polyline fill=\"none\" stroke=\"{}\" points=\"{}\"/>",
            hex(color),
            pts.join(" ")
        );
    }
    fn rect(&mut self, x: f64, y: f64, w: f64, h: f64, color: Rgb) {
        let _ = writeln!(
            self.0,
            "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{w:.1}\" height=\"{h:.1}\" fill=\"{}\"/>",
            hex(color)
        );
    }
    fn text(&mut self, x: f64, y: f64, s: &str, align: u8, vertical: bool, large: bool) {
        let anchor = ["start", "middle", "end"][align.min(2) as usize];
        let rotate = if vertical {
            format!(" transform=\"rotate(-90 {x:.1} {y:.1})\"")
        } else {
            String::new()
        };
        let size = if large { 18 } else { 12 };
        let _ = writeln!(
            self.0,
            "<text x=\"{x:.1}\" y=\"{y:.1}\" font-size=\"{size}\" text-anchor=\"{anchor}\"{rotate}>{}</text>",
            escape(s)
        );
    }
}

struct Pixels {
    w: usize,
    h: usize,
    rgb: Vec<u8>,
}

impl Pixels {
    fn set(&mut self, x: i64, y: i64, c: Rgb) {
        if x >= 0 && y >= 0 && (x as usize) < self.w && (y as usize) < self.h {
            let k = 3 * (y as usize * self.w + x as usize);
            self.rgb[k..k + 3].copy_from_slice(&c);
        }
    }
}

impl Canvas for Pixels {
    fn line(&mut self, a: (f64, f64), b: (f64, f64), color: Rgb) {
        let steps = (b.0 - a.0).abs().max((b.1 - a.1).abs()).ceil().max(1.0) as i64;
        for k in 0..=steps {
            let t = k as f64 / steps as f64;
            let x = a.0 + t * (b.0 - a.0);
            let y = a.1 + t * (b.1 - a.1);
            self.set(x.round() as i64, y.round() as i64, color);
        }
    }
    fn rect(&mut self, x: f64, y: f64, w: f64, h: f64, color: Rgb) {
        let (x0, y0) = (x.round() as i64, y.round() as i64);
        let (x1, y1) = ((x + w).round() as i64, (y + h).round() as i64);
        for yy in y0..y1.max(y0 + 1) {
            for xx in x0..x1.max(x0 + 1) {
                self.set(xx, yy, color);
            }
        }
    }
    fn text(&mut self, x: f64, y: f64, s: &str, align: u8, vertical: bool, large: bool) {
        let scale = if large { 2 } else { 1 };
        let advance = 6 * scale;
        let width = (s.chars().count() as i64 * advance) as f64;
        let offset = [0.0, width / 2.0, width][align.min(2) as usize];
        // the baseline is at y; glyphs are 7 rows tall
        for (k, ch) in s.chars().enumerate() {
            let g = font::glyph(ch);
            for (row, bits) in g.iter().enumerate() {
                for col in 0..5 {
                    if bits & (0x10 >> col) == 0 {
                        continue;
                    }
                    for dy in 0..scale {
                        for dx in 0..scale {
                            let along = k as i64 * advance + col * scale + dx - offset as i64;
                            let across = row as i64 * scale + dy - 7 * scale;
                            let (px, py) = if vertical {
                                (x as i64 + across + 7 * scale, y as i64 - along)
                            } else {
                                (x as i64 + along, y as i64 + across)
                            };
                            self.set(px, py, BLACK);
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Figure {
        let xs: Vec<f64> = (0..50).map(|k| k as f64 * 0.01).collect();
        let ys: Vec<f64> = xs.iter().map(|x| (10.0 * x).sin()).collect();
        Figure::new(
            "Test <figure>",
            vec![
                Panel::new("sine", "time (s)", "v").with(xs.clone(), ys, PALETTE[0], Mark::Line),
                Panel::new("bars", "rate (Hz)", "count").with(
                    vec![0.0, 10.0, 20.0],
                    vec![3.0, 5.0, 1.0],
                    PALETTE[1],
                    Mark::Bars(10.0),
                ),
            ],
            2,
        )
    }

    #[test]
    fn ticks_are_round_and_inside() {
        assert_eq!(
            ticks(0.0, 1.0),
            [0.0, 0.2, 0.4, 0.6000000000000001, 0.8, 1.0]
        );
        assert_eq!(ticks(-3.0, 47.0), [0.0, 10.0, 20.0, 30.0, 40.0]);
        assert_eq!(tick_label(0.30000000000000004), "0.3");
        assert_eq!(tick_label(250.0), "250");
    }

    #[test]
    fn svg_has_labels_and_escapes_text() {
        let svg = sample().svg();
        assert!(svg.starts_with("<svg"));
        for label in [
            "time (s)",
            "rate (Hz)",
            "count",
            "Test &lt;figure&gt;",
            "<polyline",
        ] {
            assert!(svg.contains(label), "{label}");
        }
    }

    #[test]
    fn png_draws_ink_and_compresses() {
        let fig = sample();
        let px = fig.pixels();
        let ink = px.rgb.chunks(3).filter(|p| *p != [255, 255, 255]).count();
        assert!(ink > 2000, "{ink} pixels drawn");
        // the sine's colour appears
        assert!(px.rgb.chunks(3).any(|p| p == PALETTE[0]));
        let bytes = fig.png().unwrap();
        assert!(bytes.len() < px.rgb.len() / 10, "{} bytes", bytes.len());
        let dir = std::env::temp_dir();
        let path = dir.join(format!("adex-plot-{}.png", std::process::id()));
        fig.save(&path).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
        std::fs::remove_file(&path).ok();
        let err = fig.save(&dir.join("x.jpg")).unwrap_err();
        assert!(err.contains(".png or .svg"), "{err}");
    }
}
