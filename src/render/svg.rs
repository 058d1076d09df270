//! The seed's pathway as an SVG document.
//!
//! Layout, read bottom → top: the embeddings at the bottom left, then one row per layer (layer
//! label `L{i}` at the left, its Attn box in the left column and its MLP box in the right
//! column), and the target's logit at the top right. The pathway zigzags: Attn → MLP along a
//! row, then from the MLP up to the next row's Attn. Box colour is the node's score on a
//! sequential scale normalised by the largest score; an edge's width grows with its source's
//! score.

use std::fmt::Write as _;

use super::text::{
    self, baseline, begin_svg, caption, escape, layer_count, norm, score_legend, subtitle, title,
    BoxPaint, FONT, MARGIN, MUTED,
};
use crate::graph::{Attribution, NodeKind};

/// The one font the SVG names (the PNG renderer embeds it).
pub const FONT_FAMILY: &str = "DejaVu Sans";
/// The id of the target box (`id="node-logits"`), which ends the pathway.
pub const TARGET_ID: &str = "logits";

const WIDTH: f64 = 700.0;
const ROWS_TOP: f64 = 110.0;
const PITCH: f64 = 38.0;
const BOX_H: f64 = 22.0;
const BOX_W: f64 = 260.0;
const ATTN_X: f64 = 70.0;
const MLP_X: f64 = 400.0;
const MIN_EDGE: f64 = 1.0;
const MAX_EDGE: f64 = 6.0;
const ARROW: f64 = 7.0;
const EDGE_COLOR: &str = "#4d4d4d";

/// A box in the drawing, in SVG user units (pixels at scale 1).
#[derive(Debug, Clone, PartialEq)]
pub struct NodeBox {
    /// The node's id (`embeddings`, `L{i}_Attn`, `L{i}_MLP`, or [`TARGET_ID`]).
    pub id: String,
    /// Left edge.
    pub x: f64,
    /// Top edge.
    pub y: f64,
    /// Width.
    pub w: f64,
    /// Height.
    pub h: f64,
}

impl NodeBox {
    fn cx(&self) -> f64 {
        self.x + self.w / 2.0
    }
}

/// Where everything goes: the canvas size and one box per node.
#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    /// Canvas width (the SVG's `width`).
    pub width: f64,
    /// Canvas height (the SVG's `height`).
    pub height: f64,
    /// The boxes in pathway order: one per `Attribution::nodes` entry, then the target.
    pub boxes: Vec<NodeBox>,
}

/// Places every node of `a` (see the module docs for the arrangement).
pub fn layout(a: &Attribution) -> Layout {
    let layers = layer_count(a);
    let row_y = |row: usize| ROWS_TOP + row as f64 * PITCH;
    let place = |id: &str, x: f64, row: usize| NodeBox {
        id: id.to_owned(),
        x,
        y: row_y(row),
        w: BOX_W,
        h: BOX_H,
    };
    let mut boxes: Vec<NodeBox> = a
        .nodes
        .iter()
        .map(|n| {
            let row = layers.saturating_sub(n.layer.unwrap_or(0)).max(1);
            match n.kind {
                NodeKind::Embeddings => place(&n.id, ATTN_X, layers + 1),
                NodeKind::Attn => place(&n.id, ATTN_X, row),
                NodeKind::Mlp => place(&n.id, MLP_X, row),
            }
        })
        .collect();
    boxes.push(place(TARGET_ID, MLP_X, 0));
    Layout {
        width: WIDTH,
        height: row_y(layers + 1) + BOX_H + MARGIN,
        boxes,
    }
}

/// The pathway of `a` as a standalone SVG document (see the module docs).
pub fn pathway_svg(a: &Attribution) -> String {
    let lay = layout(a);
    let max = a.max_score();
    let marker = format!(
        r#"<marker id="arrow" viewBox="0 0 {ARROW} 10" refX="0" refY="5" markerWidth="{ARROW}" markerHeight="10" markerUnits="userSpaceOnUse" orient="auto"><path d="M0,0 L{ARROW},5 L0,10 z" fill="{EDGE_COLOR}"/></marker>"#
    );
    let mut s = begin_svg(lay.width, lay.height, Some(&marker));
    header(&mut s, a, max);

    let layers = layer_count(a);
    for i in 0..layers {
        let y = ROWS_TOP + (layers - i) as f64 * PITCH + baseline(BOX_H);
        text::text(&mut s, MARGIN, y, FONT, MUTED, "start", &format!("L{i}"));
    }
    for (pair, node) in lay.boxes.windows(2).zip(&a.nodes) {
        let (from, to) = (&pair[0], &pair[1]);
        let _ = writeln!(
            s,
            r#"<path id="edge-{}-{}" class="edge" d="{}" fill="none" stroke="{EDGE_COLOR}" stroke-width="{:.3}" stroke-linejoin="round" marker-end="url(#arrow)"/>"#,
            escape(&from.id),
            escape(&to.id),
            edge_path(from, to),
            edge_width(node.score, max)
        );
    }
    for (b, node) in lay.boxes.iter().zip(&a.nodes) {
        let paint = BoxPaint::scored(node.score, max);
        let score = format!("{:.4}", node.score);
        node_box(&mut s, b, &paint, &node.id, &score);
    }
    if let Some(b) = lay.boxes.last() {
        let (label, logit) = text::target_label(a, b.w);
        node_box(&mut s, b, &BoxPaint::target(), &label, &logit);
    }
    s.push_str("</svg>\n");
    s
}

/// Title, subtitle, and the colour legend.
fn header(s: &mut String, a: &Attribution, max: f64) {
    let room = WIDTH - 2.0 * MARGIN;
    title(s, a, room);
    subtitle(s, a, "", true, room);
    score_legend(s, 124.0, 64.0, 240.0, max);
    let about =
        "box colour: score ‖g⊙a‖₂ ÷ max · edge width ∝ its source's score · read bottom → top";
    caption(s, 94.0, about, room);
}

/// The box `b` with a label at its left and a value at its right.
fn node_box(s: &mut String, b: &NodeBox, paint: &BoxPaint, left: &str, right: &str) {
    text::node_box(s, &b.id, [b.x, b.y, b.w, b.h], paint, left, right);
}

/// An edge's stroke width: from [`MIN_EDGE`] (score 0) to [`MAX_EDGE`] (the max score).
fn edge_width(score: f64, max: f64) -> f64 {
    MIN_EDGE + (MAX_EDGE - MIN_EDGE) * norm(score, max)
}

/// The edge's path, stopping [`ARROW`] short of the target so the arrowhead ends on its border.
/// Along a row it runs right; between rows it leaves the source's top, runs just above it, and
/// rises into the target's bottom.
fn edge_path(from: &NodeBox, to: &NodeBox) -> String {
    if from.y == to.y {
        let y = from.y + from.h / 2.0;
        return format!("M{:.1},{y:.1} H{:.1}", from.x + from.w, to.x - ARROW);
    }
    let (x0, y0, x1) = (from.cx(), from.y, to.cx());
    let y1 = to.y + to.h + ARROW;
    if x0 == x1 {
        format!("M{x0:.1},{y0:.1} V{y1:.1}")
    } else {
        let yg = y0 - 5.0;
        format!("M{x0:.1},{y0:.1} V{yg:.1} H{x1:.1} V{y1:.1}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edges_route_along_rows_and_up_between_them() {
        let b = |x, y| NodeBox {
            id: String::new(),
            x,
            y,
            w: 10.0,
            h: 10.0,
        };
        assert_eq!(edge_path(&b(0.0, 50.0), &b(30.0, 50.0)), "M10.0,55.0 H23.0");
        assert_eq!(edge_path(&b(0.0, 50.0), &b(0.0, 20.0)), "M5.0,50.0 V37.0");
        assert_eq!(
            edge_path(&b(30.0, 50.0), &b(0.0, 20.0)),
            "M35.0,50.0 V45.0 H5.0 V37.0"
        );
    }
}
