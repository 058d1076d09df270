//! The token heatmap: every node's per-position score as an SVG grid.
//!
//! Tokens run across (one column each, headed by the token's text rotated to read bottom →
//! top), nodes run down in pathway order (`embeddings`, `L0_Attn`, `L0_MLP`, …; one row each,
//! labelled with the node id). A cell's colour is its node's score at that position on the same
//! sequential scale as the pathway drawing, normalised by the largest per-position score over
//! the whole map. The column of the target position is outlined. Cells carry
//! `id="cell-{node}-{position}"` and a `<title>` tooltip with the exact score.
//!
//! Text, title, legend and caption come from the helpers every drawing shares (same font
//! metrics, escaping and fitting), so the drawings look alike and render identically with the
//! embedded font.

use std::fmt::Write as _;

use super::color::{hex, ramp};
use super::svg::FONT_FAMILY;
use super::text::{
    self, begin_svg, caption, escape, fit, norm, score_legend, subtitle, text_width, title,
    visible, INK, MARGIN,
};
use crate::graph::Attribution;

/// The narrowest canvas: room for the title and the legend.
const MIN_WIDTH: f64 = 700.0;
/// Top of the column headers (below title, subtitle, legend and caption).
const HEADERS_TOP: f64 = 108.0;
/// The narrowest cell; a few tokens get wider ones, up to [`MAX_CELL_W`].
const CELL_W: f64 = 18.0;
const MAX_CELL_W: f64 = 40.0;
const CELL_H: f64 = 14.0;
const LABEL_FONT: f64 = 11.0;
/// The longest a column header may be (it is rotated, so this is height).
const HEADER_MAX: f64 = 110.0;
const GAP: f64 = 6.0;
const GRID_STROKE: &str = "#ffffff";
const TARGET_STROKE: &str = "#2c5d8f";

/// Where the heatmap's parts go, in SVG user units (pixels at scale 1).
#[derive(Debug, Clone, PartialEq)]
pub struct HeatmapLayout {
    /// Canvas width (the SVG's `width`).
    pub width: f64,
    /// Canvas height (the SVG's `height`).
    pub height: f64,
    /// Left edge of the grid (right of the row labels).
    pub grid_x: f64,
    /// Top edge of the grid (below the column headers).
    pub grid_y: f64,
    /// Width of one cell.
    pub cell_w: f64,
    /// Height of one cell.
    pub cell_h: f64,
    /// Number of columns (token positions).
    pub columns: usize,
    /// Number of rows (nodes).
    pub rows: usize,
}

impl HeatmapLayout {
    /// The top-left corner of the cell of row `node` (index into `Attribution::nodes`) and
    /// column `position`.
    pub fn cell(&self, node: usize, position: usize) -> (f64, f64) {
        (
            self.grid_x + position as f64 * self.cell_w,
            self.grid_y + node as f64 * self.cell_h,
        )
    }
}

/// Sizes the heatmap of `a`: one column per token (or per score, if a node has more scores than
/// there are tokens), one row per node.
pub fn heatmap_layout(a: &Attribution) -> HeatmapLayout {
    let columns = a
        .nodes
        .iter()
        .map(|n| n.per_position.len())
        .fold(a.tokens.len(), usize::max);
    let rows = a.nodes.len();
    let label_w = a
        .nodes
        .iter()
        .map(|n| text_width(&n.id, LABEL_FONT))
        .fold(0.0, f64::max);
    let header_h = (0..columns)
        .map(|p| text_width(&header_label(a, p), LABEL_FONT))
        .fold(0.0, f64::max);
    let grid_x = MARGIN + label_w + GAP;
    let grid_y = HEADERS_TOP + header_h + GAP;
    let cell_w = ((MIN_WIDTH - grid_x - MARGIN) / columns.max(1) as f64)
        .floor()
        .clamp(CELL_W, MAX_CELL_W);
    HeatmapLayout {
        width: (grid_x + columns as f64 * cell_w + MARGIN)
            .max(MIN_WIDTH)
            .ceil(),
        height: (grid_y + rows as f64 * CELL_H + MARGIN).ceil(),
        grid_x,
        grid_y,
        cell_w,
        cell_h: CELL_H,
        columns,
        rows,
    }
}

/// The largest per-position score over all nodes (the colour scale's top); 0 if there is none.
pub fn max_per_position(a: &Attribution) -> f64 {
    a.nodes
        .iter()
        .flat_map(|n| n.per_position.iter().copied())
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max)
}

/// The token heatmap of `a` as a standalone SVG document (see the module docs). Render it to
/// PNG with [`svg_to_png`](super::svg_to_png).
pub fn heatmap_svg(a: &Attribution) -> String {
    let lay = heatmap_layout(a);
    let max = max_per_position(a);
    let min = a
        .nodes
        .iter()
        .flat_map(|n| n.per_position.iter().copied())
        .filter(|v| v.is_finite())
        .reduce(f64::min)
        .unwrap_or(0.0);
    let mut s = begin_svg(lay.width, lay.height, None);
    header(&mut s, a, &lay, min, max);

    // Column headers, rotated to read bottom → top, ending just above the grid.
    for p in 0..lay.columns {
        let (x, _) = lay.cell(0, p);
        let cx = x + lay.cell_w / 2.0 + LABEL_FONT * 0.35;
        let y = lay.grid_y - GAP / 2.0;
        let ink = if p == a.target_position {
            TARGET_STROKE
        } else {
            INK
        };
        let _ = writeln!(
            s,
            r#"<text id="token-{p}" transform="translate({cx:.1},{y:.1}) rotate(-90)" x="0" y="0" font-family="{FONT_FAMILY}" font-size="{LABEL_FONT}" fill="{ink}" text-anchor="start" xml:space="preserve">{}</text>"#,
            escape(&header_label(a, p))
        );
    }

    // Row labels and cells.
    s.push_str("<g class=\"cells\">\n");
    for (r, node) in a.nodes.iter().enumerate() {
        let (_, y) = lay.cell(r, 0);
        text::text(
            &mut s,
            lay.grid_x - GAP,
            y + CELL_H / 2.0 + LABEL_FONT * 0.35,
            LABEL_FONT,
            INK,
            "end",
            &node.id,
        );
        for p in 0..lay.columns {
            let v = node.per_position.get(p).copied().unwrap_or(0.0);
            let (x, y) = lay.cell(r, p);
            let token = a.tokens.get(p).map(|t| visible(t)).unwrap_or_default();
            let _ = writeln!(
                s,
                r#"<rect id="cell-{}-{p}" x="{x:.1}" y="{y:.1}" width="{}" height="{CELL_H}" fill="{}" stroke="{GRID_STROKE}" stroke-width="0.5"><title>{} · {p} "{}" · {v:.4}</title></rect>"#,
                escape(&node.id),
                lay.cell_w,
                hex(ramp(norm(v, max))),
                escape(&node.id),
                escape(&token),
            );
        }
    }
    s.push_str("</g>\n");

    if a.target_position < lay.columns && lay.rows > 0 {
        let (x, y) = lay.cell(0, a.target_position);
        let _ = writeln!(
            s,
            r#"<rect id="target-column" x="{x:.1}" y="{y:.1}" width="{}" height="{:.1}" fill="none" stroke="{TARGET_STROKE}" stroke-width="1.5"/>"#,
            lay.cell_w,
            lay.rows as f64 * CELL_H
        );
    }
    s.push_str("</svg>\n");
    s
}

/// Title, subtitle, colour legend and caption, as in the pathway drawing.
fn header(s: &mut String, a: &Attribution, lay: &HeatmapLayout, min: f64, max: f64) {
    let room = lay.width - 2.0 * MARGIN;
    title(s, a, room);
    subtitle(s, a, &format!(" × {} nodes", a.nodes.len()), false, room);
    score_legend(s, 124.0, 64.0, 240.0, max);
    let about = format!(
        "cell colour: per-position score ‖g⊙a‖₂ ÷ max · min {min:.4} · max {max:.4} · target position {} outlined",
        a.target_position
    );
    caption(s, 94.0, &about, room);
}

/// The header of column `p`: `{p} {token}` with the token shown on one line, its leading and
/// trailing spaces as `␣`, cut to [`HEADER_MAX`].
fn header_label(a: &Attribution, p: usize) -> String {
    let token = a.tokens.get(p).map(|t| show_spaces(&visible(t)));
    let label = match token {
        Some(t) => format!("{p} {t}"),
        None => p.to_string(),
    };
    fit(&label, LABEL_FONT, HEADER_MAX)
}

/// Leading and trailing spaces as `␣`, so ` the` and `the` differ on screen.
fn show_spaces(s: &str) -> String {
    let body = s.trim_matches(' ');
    if body.is_empty() {
        return "␣".repeat(s.chars().count());
    }
    let lead = s.len() - s.trim_start_matches(' ').len();
    let trail = s.len() - s.trim_end_matches(' ').len();
    format!("{}{body}{}", "␣".repeat(lead), "␣".repeat(trail))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spaces_at_the_ends_are_shown() {
        assert_eq!(show_spaces(" the"), "␣the");
        assert_eq!(show_spaces("a b "), "a b␣");
        assert_eq!(show_spaces("  "), "␣␣");
        assert_eq!(show_spaces("x"), "x");
    }
}
