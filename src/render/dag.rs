//! A pruned attribution graph ([`Pruned`]) as an SVG document.
//!
//! Layout, read bottom → top: the embeddings at the bottom, one row per layer (label `L{i}` at
//! the left, Attn box in the left column, MLP box in the right column), and the target `logits`
//! box at the top right. Only kept nodes are drawn; rows keep a fixed height whether or not
//! anything in them was kept, so a layer is always at the same place. Edges live in the gap
//! between the two columns: each leaves its source's inner side (lower half) and enters its
//! target's inner side (upper half), so no edge crosses a box or a label. Edge width grows with
//! `|score|` (1–8 px, normalised by the largest kept `|score|`), colour shows the sign; box
//! colour is the node's score on the pathway drawing's scale, normalised by the largest kept
//! score.
//!
//! With head edges (`--heads`) the picture is [`HEADS_W`] wider and each kept attention box has
//! its strongest heads as chips at its left (see [`layer_heads`]): the heads whose head → node
//! edges carry most of the layer's kept edges, coloured by their own score on the same scale.
//!
//! With `--verify`, a kept node whose intervention moved the target the opposite way from the
//! gradient's prediction gets a dashed red outline (see [`sign_differs`]).

use std::fmt::Write as _;

use super::svg::TARGET_ID;
use super::text::{
    self, baseline, begin_svg, caption, escape, fit, layer_count, norm, score_legend, subtitle,
    text_width, title, BoxPaint, FONT, INK, MARGIN, MUTED, PAD,
};
use crate::graph::{Attribution, NodeKind};
use crate::prune::Pruned;

const WIDTH: f64 = 900.0;
/// The extra room at the left for head chips.
pub const HEADS_W: f64 = 200.0;
/// Head chips per attention box, at most.
pub const MAX_HEADS: usize = 4;
const CHIP_W: f64 = 44.0;
const CHIP_GAP: f64 = 4.0;
const ROWS_TOP: f64 = 140.0;
const PITCH: f64 = 40.0;
const BOX_H: f64 = 22.0;
const BOX_W: f64 = 250.0;
const ATTN_X: f64 = 90.0;
const MLP_X: f64 = 610.0;
const MIN_EDGE: f64 = 1.0;
const MAX_EDGE: f64 = 8.0;
const POSITIVE: &str = "#2166ac";
const NEGATIVE: &str = "#b2182b";

/// A box: top-left corner; every box is [`BOX_W`] × [`BOX_H`].
#[derive(Debug, Clone, Copy, PartialEq)]
struct Place {
    x: f64,
    y: f64,
}

impl Place {
    /// Whether the box is in the left (Attn) column.
    fn left(self) -> bool {
        self.x < MLP_X
    }

    /// The x of the side facing the gap between the columns.
    fn inner_x(self) -> f64 {
        if self.left() {
            self.x + BOX_W
        } else {
            self.x
        }
    }
}

/// The pruned graph of `a` as a standalone SVG document (see the module docs). `pruned` must
/// come from [`prune`](crate::prune::prune) on the same `a`.
pub fn dag_svg(a: &Attribution, pruned: &Pruned) -> String {
    let layers = layer_count(a);
    let shift = if a.head_edges.is_empty() {
        0.0
    } else {
        HEADS_W
    };
    let width = WIDTH + shift;
    let (attn_x, mlp_x) = (ATTN_X + shift, MLP_X + shift);
    let top = ROWS_TOP + 14.0 * extra_captions(a) as f64;
    let row_y = |row: usize| top + row as f64 * PITCH;
    let height = row_y(layers + 1) + BOX_H + MARGIN;
    let place = |id: &str| -> Option<Place> {
        if id == TARGET_ID {
            return Some(Place {
                x: mlp_x,
                y: row_y(0),
            });
        }
        let n = a.node(id)?;
        let row = layers.saturating_sub(n.layer.unwrap_or(0)).max(1);
        Some(match n.kind {
            NodeKind::Embeddings => Place {
                x: attn_x,
                y: row_y(layers + 1),
            },
            NodeKind::Attn => Place {
                x: attn_x,
                y: row_y(row),
            },
            NodeKind::Mlp => Place {
                x: mlp_x,
                y: row_y(row),
            },
        })
    };

    let node_max = a
        .nodes
        .iter()
        .filter(|n| pruned.keeps(&n.id))
        .map(|n| n.score)
        .fold(0.0, f64::max);
    let edges: Vec<_> = pruned
        .edges
        .iter()
        .filter_map(|&i| a.edges.get(i))
        .collect();
    let edge_max = edges
        .iter()
        .map(|e| e.score.abs())
        .filter(|s| s.is_finite())
        .fold(0.0, f64::max);

    let mut s = begin_svg(width, height, None);
    header(&mut s, a, pruned, node_max, edge_max, width);

    for i in 0..layers {
        let y = row_y(layers - i) + baseline(BOX_H);
        text::text(&mut s, MARGIN, y, FONT, MUTED, "start", &format!("L{i}"));
    }

    // Thin edges first, so the strong ones are drawn on top.
    let mut order: Vec<usize> = (0..edges.len()).collect();
    order.sort_by(|&x, &y| edges[x].score.abs().total_cmp(&edges[y].score.abs()));
    s.push_str("<g fill=\"none\" stroke-opacity=\"0.6\" stroke-linecap=\"round\">\n");
    for k in order {
        let e = edges[k];
        let (Some(from), Some(to)) = (place(&e.source), place(&e.target)) else {
            continue;
        };
        let colour = if e.score < 0.0 { NEGATIVE } else { POSITIVE };
        let _ = writeln!(
            s,
            r#"<path class="edge" data-source="{}" data-target="{}" data-score="{}" d="{}" stroke="{colour}" stroke-width="{:.3}"/>"#,
            escape(&e.source),
            escape(&e.target),
            e.score,
            edge_path(from, to),
            edge_width(e.score.abs(), edge_max)
        );
    }
    s.push_str("</g>\n");

    for n in a.nodes.iter().filter(|n| pruned.keeps(&n.id)) {
        let Some(p) = place(&n.id) else { continue };
        let paint = BoxPaint::scored(n.score, node_max);
        let score = format!("{:.4}", n.score);
        node_box(&mut s, &n.id, p, &paint, &n.id, &score);
        if sign_differs(a, &n.id) {
            let _ = writeln!(
                s,
                r##"<rect class="sign-differs" data-node="{}" x="{:.1}" y="{:.1}" width="{:.1}" height="{:.1}" rx="4" fill="none" stroke="{NEGATIVE}" stroke-width="2" stroke-dasharray="4 2"/>"##,
                escape(&n.id),
                p.x - 3.0,
                p.y - 3.0,
                BOX_W + 6.0,
                BOX_H + 6.0
            );
        }
        if let (NodeKind::Attn, Some(layer)) = (n.kind, n.layer) {
            head_chips(&mut s, a, pruned, layer, p, node_max);
        }
    }
    if let Some(p) = place(TARGET_ID) {
        let (label, logit) = text::target_label(a, BOX_W);
        node_box(&mut s, TARGET_ID, p, &BoxPaint::target(), &label, &logit);
    }
    s.push_str("</svg>\n");
    s
}

/// Title, subtitle, what was kept, and the legends.
fn header(
    s: &mut String,
    a: &Attribution,
    pruned: &Pruned,
    node_max: f64,
    edge_max: f64,
    width: f64,
) {
    let room = width - 2.0 * MARGIN;
    title(s, a, room);
    subtitle(s, a, "", true, room);

    let o = &pruned.options;
    let rule = match o.top_edges {
        Some(n) => format!("top {n} edges by |score|"),
        None => format!(
            "node threshold {}, edge threshold {}",
            o.node_threshold, o.edge_threshold
        ),
    };
    let kept = format!(
        "kept {} of {} nodes, {} of {} edges ({rule})",
        pruned.nodes.iter().filter(|n| *n != TARGET_ID).count(),
        a.nodes.len(),
        pruned.edges.len(),
        a.edges.len()
    );
    text::text(s, MARGIN, 70.0, FONT, INK, "start", &fit(&kept, FONT, room));

    let bar_y = 84.0;
    score_legend(s, 124.0, bar_y, 220.0, node_max);
    let mut x = 480.0;
    for (colour, label) in [(POSITIVE, "positive edge"), (NEGATIVE, "negative edge")] {
        let _ = writeln!(
            s,
            r#"<path class="legend-edge" d="M{x:.1},{:.1} H{:.1}" stroke="{colour}" stroke-width="4" stroke-opacity="0.6"/>"#,
            bar_y + 6.0,
            x + 28.0
        );
        text::text(s, x + 34.0, bar_y + 10.0, FONT, INK, "start", label);
        x += 34.0 + text_width(label, FONT) + 24.0;
    }
    let about = format!(
        "box colour: node score ‖g⊙a‖₂ ÷ max kept · edge width ∝ |edge score| (max {edge_max:.4}) · edges run from a box's lower half to the next's upper half, bottom → top"
    );
    caption(s, 118.0, &about, room);
    let mut y = 118.0;
    if !a.head_edges.is_empty() {
        let heads = format!(
            "chips left of an attention box: its {MAX_HEADS} heads (at most) with the largest Σ|head → node edge| into the kept nodes, coloured by head score ‖c_h⊙g‖₂"
        );
        y += 14.0;
        caption(s, y, &heads, room);
    }
    if let Some(v) = &a.verification {
        let differs = v.nodes.iter().filter(|c| c.sign_differs()).count();
        let mut line = format!(
            "dashed red outline: the {} ablation's actual effect has the opposite sign to the gradient's prediction ({differs} of {} nodes)",
            v.ablation,
            v.nodes.len()
        );
        if let Some(f) = &v.faithfulness {
            line += &format!(
                "; this circuit's faithfulness {:.2} (every other edge {}-ablated)",
                f.faithfulness, v.ablation
            );
        }
        y += 14.0;
        caption(s, y, &line, room);
    }
}

/// Caption lines below the standard header: one for head chips, one for `--verify` marks.
fn extra_captions(a: &Attribution) -> usize {
    usize::from(!a.head_edges.is_empty()) + usize::from(a.verification.is_some())
}

/// Whether `--verify` found node `id`'s actual effect opposite in sign to the prediction.
pub fn sign_differs(a: &Attribution, id: &str) -> bool {
    a.verification
        .as_ref()
        .is_some_and(|v| v.nodes.iter().any(|c| c.id == id && c.sign_differs()))
}

/// A head chosen for the picture: its id, number, score, and `Σ |head → v|` over the kept
/// edges out of its layer's attention.
#[derive(Debug, Clone, PartialEq)]
pub struct ChosenHead {
    /// `L{layer}_H{head}`.
    pub id: String,
    /// The head's number in its layer.
    pub head: usize,
    /// The head's score `‖c_h ⊙ g‖₂`.
    pub score: f64,
    /// `Σ |head → v|` over the kept edges `L{layer}_Attn → v`.
    pub weight: f64,
}

/// The heads drawn next to layer `layer`'s attention box: at most [`MAX_HEADS`], largest
/// `weight` first, each carrying at least 5% of the largest; none without head edges.
pub fn layer_heads(a: &Attribution, pruned: &Pruned, layer: usize) -> Vec<ChosenHead> {
    let attn = format!("L{layer}_Attn");
    let kept_targets: Vec<&str> = pruned
        .edges
        .iter()
        .filter_map(|&i| a.edges.get(i))
        .filter(|e| e.source == attn)
        .map(|e| e.target.as_str())
        .collect();
    let mut chosen: Vec<ChosenHead> = a
        .heads
        .iter()
        .filter(|h| h.layer == layer)
        .map(|h| ChosenHead {
            id: h.id.clone(),
            head: h.head,
            score: h.score,
            weight: a
                .head_edges
                .iter()
                .filter(|e| e.source == h.id && kept_targets.contains(&e.target.as_str()))
                .map(|e| e.score.abs())
                .filter(|w| w.is_finite())
                .sum(),
        })
        .filter(|h| h.weight > 0.0)
        .collect();
    chosen.sort_by(|x, y| y.weight.total_cmp(&x.weight).then(x.head.cmp(&y.head)));
    let top = chosen.first().map_or(0.0, |h| h.weight);
    chosen.retain(|h| h.weight >= 0.05 * top);
    chosen.truncate(MAX_HEADS);
    chosen
}

/// Layer `layer`'s chosen heads as chips right to left from the attention box at `p`, the
/// strongest nearest, joined to it by a thin line.
fn head_chips(s: &mut String, a: &Attribution, pruned: &Pruned, layer: usize, p: Place, max: f64) {
    let heads = layer_heads(a, pruned, layer);
    if heads.is_empty() {
        return;
    }
    let y = p.y + 2.0;
    let h = BOX_H - 4.0;
    let left = p.x - 8.0 - heads.len() as f64 * (CHIP_W + CHIP_GAP);
    let _ = writeln!(
        s,
        r##"<path class="head-link" d="M{left:.1},{:.1} H{:.1}" stroke="#9a9a9a" stroke-width="1"/>"##,
        p.y + BOX_H / 2.0,
        p.x
    );
    for (k, head) in heads.iter().enumerate() {
        let x = p.x - 8.0 - (k + 1) as f64 * (CHIP_W + CHIP_GAP) + CHIP_GAP;
        let BoxPaint { fill, stroke, ink } = BoxPaint::scored(head.score, max);
        let _ = writeln!(
            s,
            r#"<g class="head"><title>{}: score {:.4}, Σ|edges| into kept nodes {:.4}</title><rect id="head-{}" x="{x:.1}" y="{y:.1}" width="{CHIP_W}" height="{h:.1}" rx="3" fill="{fill}" stroke="{stroke}" stroke-width="0.6"/>"#,
            escape(&head.id),
            head.score,
            head.weight,
            escape(&head.id)
        );
        text::text(
            s,
            x + CHIP_W / 2.0,
            y + baseline(h),
            FONT,
            ink,
            "middle",
            &format!("H{}", head.head),
        );
        s.push_str("</g>\n");
    }
}

/// A box with a label at its left (cut to leave room) and a value at its right.
fn node_box(s: &mut String, id: &str, p: Place, paint: &BoxPaint, left: &str, right: &str) {
    let right_w = text_width(right, FONT);
    let left = fit(left, FONT, BOX_W - 3.0 * PAD - right_w);
    text::node_box(s, id, [p.x, p.y, BOX_W, BOX_H], paint, &left, right);
}

/// The edge's path, in the gap between the columns. Along a row: a straight line between the
/// boxes' inner sides. Otherwise a cubic curve from the source's inner side (lower half) to the
/// target's inner side (upper half); between boxes of one column it bulges into the gap, more
/// for longer edges.
fn edge_path(from: Place, to: Place) -> String {
    if from.y == to.y {
        let y = from.y + BOX_H / 2.0;
        return format!("M{:.1},{y:.1} H{:.1}", from.inner_x(), to.inner_x());
    }
    let (x0, y0) = (from.inner_x(), from.y + BOX_H * 0.7);
    let (x1, y1) = (to.inner_x(), to.y + BOX_H * 0.3);
    let gap = MLP_X - (ATTN_X + BOX_W);
    let (c0, c1) = if from.left() == to.left() {
        let rows = ((y0 - y1).abs() / PITCH).round();
        let bulge = (24.0 + 10.0 * rows).min(gap * 0.6);
        let d = if from.left() { bulge } else { -bulge };
        (x0 + d, x1 + d)
    } else {
        let mid = (x0 + x1) / 2.0;
        (mid, mid)
    };
    format!("M{x0:.1},{y0:.1} C{c0:.1},{y0:.1} {c1:.1},{y1:.1} {x1:.1},{y1:.1}")
}

/// An edge's stroke width: from [`MIN_EDGE`] (score 0) to [`MAX_EDGE`] (the max `|score|`).
fn edge_width(score: f64, max: f64) -> f64 {
    MIN_EDGE + (MAX_EDGE - MIN_EDGE) * norm(score, max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dag_edges_stay_in_the_gap() {
        let a = Place {
            x: ATTN_X,
            y: 100.0,
        };
        let m = Place { x: MLP_X, y: 100.0 };
        let a_up = Place { x: ATTN_X, y: 20.0 };
        assert_eq!(edge_path(a, m), "M340.0,111.0 H610.0");
        assert_eq!(
            edge_path(a, a_up),
            "M340.0,115.4 C384.0,115.4 384.0,26.6 340.0,26.6"
        );
        assert!(edge_path(m, a_up).starts_with("M610.0,115.4 C475.0,"));
    }
}
