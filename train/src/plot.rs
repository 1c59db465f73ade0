//! PNG plots of loss curves.
//!
//! `plotters` (bitmap backend only) maps coordinates and draws the lines; text is drawn with the
//! bitmap fonts built into `embedded-graphics`, so the plot needs no system font library and no
//! font file; `png` encodes the pixels. All three are pure Rust.

use std::convert::Infallible;
use std::path::Path;

use embedded_graphics::Drawable;
use embedded_graphics::mono_font::MonoTextStyle;
use embedded_graphics::mono_font::ascii::{FONT_8X13, FONT_9X15_BOLD};
use embedded_graphics::pixelcolor::Rgb888;
use embedded_graphics::prelude::{DrawTarget, OriginDimensions, Pixel, Point, RgbColor, Size};
use embedded_graphics::text::{Alignment, Baseline, Text, TextStyleBuilder};
use plotters::prelude::*;

use super::{Result, TrainError, io_err};

/// One curve: a label, an RGB colour and its `(x, y)` points (non-finite or non-positive `y`
/// values are left out on a log scale).
#[derive(Debug, Clone)]
pub struct Series<'a> {
    /// Legend text.
    pub label: &'a str,
    /// Line colour.
    pub color: (u8, u8, u8),
    /// The points.
    pub points: &'a [(f64, f64)],
}

/// An RGB8 pixel buffer that `embedded-graphics` can draw text on.
struct Canvas<'a> {
    buf: &'a mut [u8],
    w: u32,
    h: u32,
}

impl OriginDimensions for Canvas<'_> {
    fn size(&self) -> Size {
        Size::new(self.w, self.h)
    }
}

impl DrawTarget for Canvas<'_> {
    type Color = Rgb888;
    type Error = Infallible;

    fn draw_iter<I: IntoIterator<Item = Pixel<Rgb888>>>(
        &mut self,
        pixels: I,
    ) -> Result<(), Infallible> {
        for Pixel(p, c) in pixels {
            if p.x >= 0 && p.y >= 0 && (p.x as u32) < self.w && (p.y as u32) < self.h {
                let i = (p.y as usize * self.w as usize + p.x as usize) * 3;
                self.buf[i..i + 3].copy_from_slice(&[c.r(), c.g(), c.b()]);
            }
        }
        Ok(())
    }
}

/// A label to draw after plotters is done: text, position, horizontal alignment, bold.
type Label = (String, (i32, i32), Alignment, bool);

fn plot_err(e: impl std::fmt::Display) -> TrainError {
    TrainError::Plot(e.to_string())
}

/// `1e3` style for decades, plain otherwise.
fn decade_label(e: i32) -> String {
    match e {
        0 => "1".into(),
        1 => "10".into(),
        2 => "100".into(),
        _ => format!("1e{e}"),
    }
}

/// Draw the series on a log-scale y axis and write a `width` x `height` PNG to `path`.
pub fn log_curves(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series<'_>],
    (width, height): (u32, u32),
) -> Result<()> {
    let pts = || {
        series
            .iter()
            .flat_map(|s| s.points.iter())
            .filter(|(x, y)| x.is_finite() && y.is_finite() && *y > 0.0)
    };
    let (mut x0, mut x1, mut y0, mut y1) = (
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::INFINITY,
        f64::NEG_INFINITY,
    );
    for &(x, y) in pts() {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if !(x0 <= x1 && y0 <= y1) {
        return Err(TrainError::Plot(
            "nothing to plot: no finite positive point".into(),
        ));
    }
    if x0 == x1 {
        // A single step: give the axis some width.
        (x0, x1) = (x0 - 0.5, x1 + 0.5);
    }
    let (e0, e1) = (
        y0.log10().floor() as i32,
        y1.log10().ceil().max(y0.log10().floor() + 1.0) as i32,
    );
    let (ylo, yhi) = (10f64.powi(e0), 10f64.powi(e1));

    let mut buf = vec![255u8; width as usize * height as usize * 3];
    let mut labels: Vec<Label> = Vec::new();
    {
        let root = BitMapBackend::with_buffer(&mut buf, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        let mut chart = ChartBuilder::on(&root)
            .margin_top(50)
            .margin_right(20)
            .x_label_area_size(45)
            .y_label_area_size(60)
            .build_cartesian_2d(x0..x1, (ylo..yhi).log_scale())
            .map_err(plot_err)?;
        let grid = RGBColor(225, 225, 225);
        // Horizontal lines at each decade, vertical ones at round steps.
        for e in e0..=e1 {
            let y = 10f64.powi(e);
            chart
                .draw_series(LineSeries::new([(x0, y), (x1, y)], grid))
                .map_err(plot_err)?;
            let (px, py) = chart.backend_coord(&(x0, y));
            labels.push((decade_label(e), (px - 6, py), Alignment::Right, false));
        }
        let span = x1 - x0;
        let raw = span / 5.0;
        let mag = 10f64.powf(raw.log10().floor());
        let step = [1.0, 2.0, 5.0, 10.0]
            .iter()
            .map(|m| m * mag)
            .find(|s| *s >= raw)
            .unwrap_or(mag * 10.0);
        // Ticks are whole multiples of the step, printed with as many decimals as the step needs.
        let decimals = (-step.log10().floor()).max(0.0) as usize;
        let mut k = (x0 / step).ceil();
        while k * step <= x1 + 1e-9 * span {
            let x = k * step;
            chart
                .draw_series(LineSeries::new([(x, ylo), (x, yhi)], grid))
                .map_err(plot_err)?;
            let (px, py) = chart.backend_coord(&(x, ylo));
            labels.push((
                format!("{x:.decimals$}"),
                (px, py + 12),
                Alignment::Center,
                false,
            ));
            k += 1.0;
        }
        // Frame.
        for line in [
            [(x0, ylo), (x1, ylo)],
            [(x0, yhi), (x1, yhi)],
            [(x0, ylo), (x0, yhi)],
            [(x1, ylo), (x1, yhi)],
        ] {
            chart
                .draw_series(LineSeries::new(line, BLACK))
                .map_err(plot_err)?;
        }
        for (i, s) in series.iter().enumerate() {
            let color = RGBColor(s.color.0, s.color.1, s.color.2);
            let points: Vec<(f64, f64)> = s
                .points
                .iter()
                .copied()
                .filter(|(x, y)| x.is_finite() && y.is_finite() && *y > 0.0)
                .collect();
            if points.len() == 1 {
                // A line needs two points; mark a lone one.
                chart
                    .draw_series(points.iter().map(|&p| Circle::new(p, 4, color.filled())))
                    .map_err(plot_err)?;
            }
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(2)))
                .map_err(plot_err)?;
            // Legend, top right inside the plot area; FONT_8X13 is 8 pixels a character.
            let widest = series
                .iter()
                .map(|s| s.label.chars().count())
                .max()
                .unwrap_or(0) as i32;
            let (px, py) = chart.backend_coord(&(x1, yhi));
            let lx = px - 12 - 8 * widest - 36;
            let ly = py + 16 + 18 * i as i32;
            root.draw(&PathElement::new(
                vec![(lx, ly), (lx + 30, ly)],
                color.stroke_width(3),
            ))
            .map_err(plot_err)?;
            labels.push((s.label.to_owned(), (lx + 36, ly), Alignment::Left, false));
        }
        let (left, bottom) = chart.backend_coord(&(x0, ylo));
        let (right, top) = chart.backend_coord(&(x1, yhi));
        labels.push((
            title.to_owned(),
            (width as i32 / 2, 14),
            Alignment::Center,
            true,
        ));
        labels.push((
            x_label.to_owned(),
            ((left + right) / 2, bottom + 32),
            Alignment::Center,
            false,
        ));
        labels.push((y_label.to_owned(), (left, top - 12), Alignment::Left, false));
        root.present().map_err(plot_err)?;
    }
    let mut canvas = Canvas {
        buf: &mut buf,
        w: width,
        h: height,
    };
    for (text, (x, y), align, bold) in &labels {
        let font = if *bold { &FONT_9X15_BOLD } else { &FONT_8X13 };
        let style = MonoTextStyle::new(font, Rgb888::BLACK);
        let layout = TextStyleBuilder::new()
            .alignment(*align)
            .baseline(Baseline::Middle)
            .build();
        let Ok(_) =
            Text::with_text_style(text, Point::new(*x, *y), style, layout).draw(&mut canvas);
    }
    write_png(path, &buf, width, height)
}

fn write_png(path: &Path, rgb: &[u8], width: u32, height: u32) -> Result<()> {
    let file = std::fs::File::create(path).map_err(io_err(path))?;
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), width, height);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut w = enc.write_header().map_err(plot_err)?;
    w.write_image_data(rgb).map_err(plot_err)?;
    w.finish().map_err(plot_err)
}
