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

use std::fmt::Write as _;

use super::color::{self, hex, is_dark, ramp};
use super::svg::{FONT_FAMILY, TARGET_ID};
use crate::graph::{Attribution, NodeKind};
use crate::prune::Pruned;

const WIDTH: f64 = 900.0;
const MARGIN: f64 = 20.0;
const ROWS_TOP: f64 = 140.0;
const PITCH: f64 = 40.0;
const BOX_H: f64 = 22.0;
const BOX_W: f64 = 250.0;
const ATTN_X: f64 = 90.0;
const MLP_X: f64 = 610.0;
const PAD: f64 = 8.0;
const FONT: f64 = 12.0;
const TITLE_FONT: f64 = 16.0;
const MIN_EDGE: f64 = 1.0;
const MAX_EDGE: f64 = 8.0;
const POSITIVE: &str = "#2166ac";
const NEGATIVE: &str = "#b2182b";
const MUTED: &str = "#555555";

/// DejaVu Sans advance widths of ASCII `' '..='~'`, in font units (2048 per em).
const ASCII_ADVANCE: [u16; 95] = [
    651, 821, 942, 1716, 1303, 1946, 1597, 563, 799, 799, 1024, 1716, 651, 739, 651, 690, 1303,
    1303, 1303, 1303, 1303, 1303, 1303, 1303, 1303, 1303, 690, 690, 1716, 1716, 1716, 1087, 2048,
    1401, 1405, 1430, 1577, 1294, 1178, 1587, 1540, 604, 604, 1343, 1141, 1767, 1532, 1612, 1235,
    1612, 1423, 1300, 1251, 1499, 1401, 2025, 1403, 1251, 1403, 799, 690, 799, 1716, 1024, 1024,
    1255, 1300, 1126, 1300, 1260, 721, 1300, 1298, 569, 569, 1186, 569, 1995, 1298, 1253, 1300,
    1300, 842, 1067, 803, 1298, 1212, 1675, 1212, 1212, 1075, 1303, 690, 1303, 1716,
];

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
    let row_y = |row: usize| ROWS_TOP + row as f64 * PITCH;
    let height = row_y(layers + 1) + BOX_H + MARGIN;
    let place = |id: &str| -> Option<Place> {
        if id == TARGET_ID {
            return Some(Place {
                x: MLP_X,
                y: row_y(0),
            });
        }
        let n = a.node(id)?;
        let row = layers.saturating_sub(n.layer.unwrap_or(0)).max(1);
        Some(match n.kind {
            NodeKind::Embeddings => Place {
                x: ATTN_X,
                y: row_y(layers + 1),
            },
            NodeKind::Attn => Place {
                x: ATTN_X,
                y: row_y(row),
            },
            NodeKind::Mlp => Place {
                x: MLP_X,
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

    let mut s = String::new();
    let (w, h) = (WIDTH, height);
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="{FONT_FAMILY}" font-size="{FONT}">"#
    );
    defs(&mut s);
    let _ = writeln!(s, r##"<rect width="{w}" height="{h}" fill="#ffffff"/>"##);
    header(&mut s, a, pruned, node_max, edge_max);

    for i in 0..layers {
        let y = row_y(layers - i) + baseline();
        text(&mut s, MARGIN, y, FONT, MUTED, "start", &format!("L{i}"));
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
        let fill = ramp(norm(n.score, node_max));
        let ink = if is_dark(fill) { "#ffffff" } else { "#111111" };
        let score = format!("{:.4}", n.score);
        node_box(&mut s, &n.id, p, &hex(fill), "#5a5a5a", ink, &n.id, &score);
    }
    if let Some(p) = place(TARGET_ID) {
        let logit = format!("{:.2}", a.target_logit);
        let room = BOX_W - 3.0 * PAD - text_width(&logit, FONT) - text_width("logits \"\"", FONT);
        let token = fit(&visible(&a.target_token), FONT, room);
        let label = format!("{TARGET_ID} \"{token}\"");
        node_box(
            &mut s, TARGET_ID, p, "#dce9f5", "#2c5d8f", "#111111", &label, &logit,
        );
    }
    s.push_str("</svg>\n");
    s
}

/// The node legend's gradient.
fn defs(s: &mut String) {
    s.push_str("<defs>\n");
    s.push_str(r#"<linearGradient id="score-scale" x1="0" y1="0" x2="1" y2="0">"#);
    let last = (color::STOPS.len() - 1) as f64;
    for (i, c) in color::STOPS.iter().enumerate() {
        let _ = write!(
            s,
            r#"<stop offset="{:.4}" stop-color="{}"/>"#,
            i as f64 / last,
            hex(*c)
        );
    }
    s.push_str("</linearGradient>\n</defs>\n");
}

/// Title, subtitle, what was kept, and the legends.
fn header(s: &mut String, a: &Attribution, pruned: &Pruned, node_max: f64, edge_max: f64) {
    let room = WIDTH - 2.0 * MARGIN;
    let target = fit(&visible(&a.target_token), TITLE_FONT, room / 3.0);
    let tail = format!("\" → \"{target}\" (logit {:.2})", a.target_logit);
    let prompt_room = room - text_width(&tail, TITLE_FONT) - text_width("\"", TITLE_FONT);
    let prompt = fit(&visible(&a.prompt), TITLE_FONT, prompt_room);
    let title = format!("\"{prompt}{tail}");
    text(s, MARGIN, 30.0, TITLE_FONT, "#111111", "start", &title);

    let mut sub = format!(
        "{} · {} on {}, {} · {} · {} tokens",
        a.model,
        a.backend,
        a.device,
        a.dtype,
        a.method,
        a.tokens.len()
    );
    if a.chat {
        sub.push_str(" · chat template");
    }
    if a.predicted_id != a.target_id {
        let _ = write!(sub, " · predicted \"{}\"", a.predicted_token);
    }
    text(
        s,
        MARGIN,
        50.0,
        FONT,
        MUTED,
        "start",
        &fit(&visible(&sub), FONT, room),
    );

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
    text(
        s,
        MARGIN,
        70.0,
        FONT,
        "#111111",
        "start",
        &fit(&kept, FONT, room),
    );

    let (bar_x, bar_w, bar_y) = (124.0, 220.0, 84.0);
    text(s, MARGIN, bar_y + 10.0, FONT, "#111111", "start", "score");
    text(s, bar_x - 6.0, bar_y + 10.0, FONT, "#111111", "end", "0");
    let _ = writeln!(
        s,
        r##"<rect id="legend" x="{bar_x}" y="{bar_y}" width="{bar_w}" height="12" fill="url(#score-scale)" stroke="#5a5a5a" stroke-width="0.8"/>"##
    );
    let max_label = format!("{node_max:.4}");
    text(
        s,
        bar_x + bar_w + 6.0,
        bar_y + 10.0,
        FONT,
        "#111111",
        "start",
        &max_label,
    );
    let mut x = 480.0;
    for (colour, label) in [(POSITIVE, "positive edge"), (NEGATIVE, "negative edge")] {
        let _ = writeln!(
            s,
            r#"<path class="legend-edge" d="M{x:.1},{:.1} H{:.1}" stroke="{colour}" stroke-width="4" stroke-opacity="0.6"/>"#,
            bar_y + 6.0,
            x + 28.0
        );
        text(s, x + 34.0, bar_y + 10.0, FONT, "#111111", "start", label);
        x += 34.0 + text_width(label, FONT) + 24.0;
    }
    let caption = format!(
        "box colour: node score ‖g⊙a‖₂ ÷ max kept · edge width ∝ |edge score| (max {edge_max:.4}) · edges run from a box's lower half to the next's upper half, bottom → top"
    );
    text(
        s,
        MARGIN,
        118.0,
        11.0,
        MUTED,
        "start",
        &fit(&caption, 11.0, room),
    );
}

/// A box with a label at its left and a value at its right.
#[allow(clippy::too_many_arguments)]
fn node_box(
    s: &mut String,
    id: &str,
    p: Place,
    fill: &str,
    stroke: &str,
    ink: &str,
    left: &str,
    right: &str,
) {
    let _ = writeln!(
        s,
        r#"<g class="node"><rect id="node-{}" x="{}" y="{}" width="{BOX_W}" height="{BOX_H}" rx="3" fill="{fill}" stroke="{stroke}" stroke-width="0.8"/>"#,
        escape(id),
        p.x,
        p.y,
    );
    let y = p.y + baseline();
    let right_w = text_width(right, FONT);
    let left = fit(left, FONT, BOX_W - 3.0 * PAD - right_w);
    text(s, p.x + PAD, y, FONT, ink, "start", &left);
    text(s, p.x + BOX_W - PAD, y, FONT, ink, "end", right);
    s.push_str("</g>\n");
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

/// Baseline offset that centres 12 px text vertically in a box.
fn baseline() -> f64 {
    BOX_H / 2.0 + 4.0
}

/// The number of layers: one more than the largest layer index.
fn layer_count(a: &Attribution) -> usize {
    a.nodes
        .iter()
        .filter_map(|n| n.layer)
        .map(|l| l + 1)
        .max()
        .unwrap_or(0)
}

/// `score / max` in `[0, 1]`; 0 when there is nothing to normalise by.
fn norm(score: f64, max: f64) -> f64 {
    if max > 0.0 && max.is_finite() && score.is_finite() {
        (score / max).clamp(0.0, 1.0)
    } else {
        0.0
    }
}

/// An edge's stroke width: from [`MIN_EDGE`] (score 0) to [`MAX_EDGE`] (the max `|score|`).
fn edge_width(score: f64, max: f64) -> f64 {
    MIN_EDGE + (MAX_EDGE - MIN_EDGE) * norm(score, max)
}

/// One `<text>` element; `content` is escaped here.
fn text(s: &mut String, x: f64, y: f64, size: f64, fill: &str, anchor: &str, content: &str) {
    let _ = writeln!(
        s,
        r#"<text x="{x:.1}" y="{y:.1}" font-family="{FONT_FAMILY}" font-size="{size}" fill="{fill}" text-anchor="{anchor}" xml:space="preserve">{}</text>"#,
        escape(content)
    );
}

/// Text as it should be shown on one line: line breaks as `⏎`, tabs as spaces, other control
/// characters as `�`.
fn visible(s: &str) -> String {
    s.replace("\r\n", "\n")
        .chars()
        .map(|c| match c {
            '\n' | '\r' => '⏎',
            '\t' => ' ',
            c if c.is_control() => '\u{fffd}',
            c => c,
        })
        .collect()
}

/// XML-escapes text or an attribute value.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// An upper bound of the width of `s` in DejaVu Sans at `size` px (kerning only narrows it);
/// characters outside ASCII count as a full em.
fn text_width(s: &str, size: f64) -> f64 {
    let units: f64 = s
        .chars()
        .map(|c| match c {
            ' '..='~' => ASCII_ADVANCE[c as usize - 0x20] as f64,
            _ => 2048.0,
        })
        .sum();
    units / 2048.0 * size
}

/// `s`, cut and ended with `…` if it is wider than `max_w` at `size` px.
fn fit(s: &str, size: f64, max_w: f64) -> String {
    if text_width(s, size) <= max_w {
        return s.to_owned();
    }
    let budget = max_w - text_width("…", size);
    let mut out = String::new();
    let mut used = 0.0;
    for c in s.chars() {
        let w = text_width(c.encode_utf8(&mut [0; 4]), size);
        if used + w > budget {
            break;
        }
        used += w;
        out.push(c);
    }
    out.push('…');
    out
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
