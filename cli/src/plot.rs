//! Figures of panels with labelled axes and legends, drawn by `plotters` and written as SVG or
//! PNG (chosen by the file extension). The layout is described once ([`Figure`], [`Panel`],
//! [`Series`]) and drawn on either backend by one generic function.

use anyhow::Context as _;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontStyle;
use std::path::Path;
use std::sync::Once;

/// An RGB colour.
pub type Rgb = [u8; 3];

/// Colours for series, in order (matplotlib's first six).
pub const PALETTE: [Rgb; 6] = [
    [31, 119, 180],
    [214, 39, 40],
    [44, 160, 44],
    [255, 127, 14],
    [148, 103, 189],
    [23, 190, 207],
];

/// The family every text is set in; [`register_font`] binds it to DejaVu Sans.
const FONT: &str = "sans-serif";

/// ab_glyph finds no system fonts by design: the embedded face is registered once per process.
fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let registered =
            plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular());
        assert!(registered.is_ok(), "the embedded DejaVu Sans parses");
    });
}

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
    /// Its entry in the panel's legend; a panel without labelled series has no legend.
    pub label: Option<String>,
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
    /// Where the legend goes (when a series has a label).
    pub legend: Corner,
}

/// A corner of a panel's plot area.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum Corner {
    #[default]
    UpperRight,
    UpperLeft,
    LowerRight,
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

    /// Adds a series without a legend entry.
    pub fn with(mut self, xs: Vec<f64>, ys: Vec<f64>, color: Rgb, mark: Mark) -> Self {
        self.series.push(Series {
            xs,
            ys,
            color,
            mark,
            label: None,
        });
        self
    }

    /// Adds a series with a legend entry.
    pub fn with_labelled(
        self,
        label: &str,
        xs: Vec<f64>,
        ys: Vec<f64>,
        color: Rgb,
        mark: Mark,
    ) -> Self {
        let mut panel = self.with(xs, ys, color, mark);
        if let Some(s) = panel.series.last_mut() {
            s.label = Some(label.into());
        }
        panel
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
        if axis == 1 {
            // a little room above and below, so that a trace at its extreme stays visible
            let pad = 0.03 * (hi - lo);
            return (lo - if lo == 0.0 { 0.0 } else { pad }, hi + pad);
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

/// Tick labels: as short as the value allows, exponents outside 1e-3..1e5.
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

fn color(c: Rgb) -> RGBColor {
    RGBColor(c[0], c[1], c[2])
}

/// Height of the figure's title strip in pixels.
const TITLE: u32 = 44;

impl Figure {
    pub fn new(title: &str, panels: Vec<Panel>, columns: usize) -> Self {
        Self {
            title: title.into(),
            panels,
            columns: columns.max(1),
            cell: (520, 340),
        }
    }

    fn rows(&self) -> usize {
        self.panels.len().div_ceil(self.columns).max(1)
    }

    fn size(&self) -> (u32, u32) {
        let columns = self.columns.min(self.panels.len().max(1)) as u32;
        (
            self.cell.0 * columns,
            TITLE + self.cell.1 * self.rows() as u32,
        )
    }

    /// Writes the figure as SVG or PNG, by the extension of `path`.
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        let bytes = match ext.as_deref() {
            Some("svg") => self.svg()?.into_bytes(),
            Some("png") => self.png()?,
            _ => anyhow::bail!("{}: the plot file must end in .png or .svg", path.display()),
        };
        std::fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))
    }

    pub fn svg(&self) -> anyhow::Result<String> {
        let mut svg = String::new();
        {
            let root = SVGBackend::with_string(&mut svg, self.size()).into_drawing_area();
            self.draw(&root)?;
            root.present()?;
        }
        Ok(svg)
    }

    /// The figure drawn into RGB pixels, row-major: `(width, height, bytes)`.
    fn pixels(&self) -> anyhow::Result<(u32, u32, Vec<u8>)> {
        let (w, h) = self.size();
        let mut rgb = vec![255; 3 * (w * h) as usize];
        {
            let root = BitMapBackend::with_buffer(&mut rgb, (w, h)).into_drawing_area();
            self.draw(&root)?;
            root.present()?;
        }
        Ok((w, h, rgb))
    }

    pub fn png(&self) -> anyhow::Result<Vec<u8>> {
        let (w, h, rgb) = self.pixels()?;
        crate::png::encode(w, h, &rgb)
    }

    /// Title strip, then the panels row by row.
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> anyhow::Result<()> {
        register_font();
        // plotters' errors borrow the backend's error type, which need not be 'static
        let err = |e: DrawingAreaErrorKind<DB::ErrorType>| anyhow::anyhow!("drawing: {e}");
        root.fill(&WHITE).map_err(err)?;
        let body = root
            .titled(&self.title, (FONT, 22).into_font().color(&BLACK))
            .map_err(err)?;
        let cells = body.split_evenly((self.rows(), self.columns));
        for (panel, cell) in self.panels.iter().zip(&cells) {
            draw_panel(cell, panel).map_err(err)?;
        }
        Ok(())
    }
}

/// One panel in its cell: title, mesh with tick labels and axis labels, series, legend.
fn draw_panel<DB: DrawingBackend>(
    cell: &DrawingArea<DB, Shift>,
    p: &Panel,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    let (xl, xh) = p.range(0);
    let (yl, yh) = p.range(1);
    let mut chart = ChartBuilder::on(cell)
        .caption(&p.title, (FONT, 15))
        .margin_top(6)
        .margin_left(10)
        .margin_right(18)
        .margin_bottom(10)
        .x_label_area_size(44)
        .y_label_area_size(58)
        .build_cartesian_2d(xl..xh, yl..yh)?;
    let label = |v: &f64| tick_label(*v);
    chart
        .configure_mesh()
        .x_desc(&p.x_label)
        .y_desc(&p.y_label)
        .x_label_formatter(&label)
        .y_label_formatter(&label)
        .x_labels(6)
        .y_labels(6)
        .label_style((FONT, 12))
        .axis_desc_style((FONT, 13))
        .bold_line_style(RGBColor(220, 220, 220))
        .light_line_style(TRANSPARENT)
        .draw()?;
    let mut legend = false;
    for s in &p.series {
        let c = color(s.color);
        let points =
            s.xs.iter()
                .zip(&s.ys)
                .filter(|(x, y)| x.is_finite() && y.is_finite())
                .map(|(&x, &y)| (x, y));
        let drawn = match s.mark {
            Mark::Line => chart.draw_series(LineSeries::new(points, c.stroke_width(1)))?,
            // ticks a fixed few pixels tall, whatever the number of rows
            Mark::Ticks => chart.draw_series(points.map(|(x, y)| {
                EmptyElement::at((x, y)) + PathElement::new([(0, -2), (0, 2)], c.stroke_width(1))
            }))?,
            Mark::Bars(w) => chart.draw_series(points.map(|(x, y)| {
                Rectangle::new([(x, 0.0f64.max(yl)), (x + 0.92 * w, y)], c.filled())
            }))?,
        };
        if let Some(text) = &s.label {
            legend = true;
            drawn
                .label(text.as_str())
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], c.stroke_width(2)));
        }
    }
    if legend {
        chart
            .configure_series_labels()
            .position(match p.legend {
                Corner::UpperRight => SeriesLabelPosition::UpperRight,
                Corner::UpperLeft => SeriesLabelPosition::UpperLeft,
                Corner::LowerRight => SeriesLabelPosition::LowerRight,
            })
            .label_font((FONT, 12))
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(160, 160, 160))
            .draw()?;
    }
    Ok(())
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
                Panel::new("sine", "time (s)", "v").with_labelled(
                    "neuron 7",
                    xs.clone(),
                    ys,
                    PALETTE[0],
                    Mark::Line,
                ),
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
    fn tick_labels_are_short() {
        assert_eq!(tick_label(0.30000000000000004), "0.3");
        assert_eq!(tick_label(250.0), "250");
        assert_eq!(tick_label(0.0), "0");
        assert_eq!(tick_label(2e-5), "2e-5");
    }

    #[test]
    fn svg_has_labels_legend_and_escapes_text() {
        let svg = sample().svg().unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..80]);
        for label in [
            "time (s)",
            "rate (Hz)",
            "count",
            "neuron 7",
            "Test &lt;figure&gt;",
            "<polyline",
        ] {
            assert!(svg.contains(label), "{label}");
        }
    }

    #[test]
    fn png_has_smooth_text_and_the_series_colours() {
        let fig = sample();
        let (w, h, rgb) = fig.pixels().unwrap();
        assert_eq!(rgb.len(), 3 * (w * h) as usize);
        let px: Vec<&[u8]> = rgb.chunks(3).collect();
        assert!(px.iter().any(|p| *p == PALETTE[0]), "the line's colour");
        assert!(px.iter().any(|p| *p == PALETTE[1]), "the bars' colour");
        // Anti-aliased type: the title strip holds many grey levels between black and white,
        // not the two of a bitmap font.
        let title = &rgb[..3 * (w * TITLE) as usize];
        let mut greys: Vec<u8> = title
            .chunks(3)
            .filter(|p| p[0] == p[1] && p[1] == p[2])
            .map(|p| p[0])
            .collect();
        greys.sort_unstable();
        greys.dedup();
        assert!(greys.len() > 20, "{} grey levels", greys.len());
        let bytes = fig.png().unwrap();
        assert!(bytes.len() < rgb.len() / 10, "{} bytes", bytes.len());
        let dir = std::env::temp_dir();
        let path = dir.join(format!("adex-plot-{}.png", std::process::id()));
        fig.save(&path).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
        std::fs::remove_file(&path).ok();
        let err = fig.save(&dir.join("x.jpg")).unwrap_err().to_string();
        assert!(err.contains(".png or .svg"), "{err}");
    }
}
