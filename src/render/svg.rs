//! The seed's pathway as an SVG document.
//!
//! Layout, read bottom → top: the embeddings at the bottom left, then one row per layer (layer
//! label `L{i}` at the left, its Attn box in the left column and its MLP box in the right
//! column), and the target's logit at the top right. The pathway zigzags: Attn → MLP along a
//! row, then from the MLP up to the next row's Attn. Box colour is the node's score on a
//! sequential scale normalised by the largest score; an edge's width grows with its source's
//! score.

use std::fmt::Write as _;

use super::color::{self, hex, is_dark, ramp};
use crate::graph::{Attribution, NodeKind};

/// The one font the SVG names (the PNG renderer embeds it).
pub const FONT_FAMILY: &str = "DejaVu Sans";
/// The id of the target box (`id="node-logits"`), which ends the pathway.
pub const TARGET_ID: &str = "logits";

const WIDTH: f64 = 700.0;
const MARGIN: f64 = 20.0;
const ROWS_TOP: f64 = 110.0;
const PITCH: f64 = 38.0;
const BOX_H: f64 = 22.0;
const BOX_W: f64 = 260.0;
const ATTN_X: f64 = 70.0;
const MLP_X: f64 = 400.0;
const PAD: f64 = 8.0;
const FONT: f64 = 12.0;
const TITLE_FONT: f64 = 16.0;
const MIN_EDGE: f64 = 1.0;
const MAX_EDGE: f64 = 6.0;
const ARROW: f64 = 7.0;
const EDGE_COLOR: &str = "#4d4d4d";
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
    let mut s = String::new();
    let (w, h) = (lay.width, lay.height);
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="{FONT_FAMILY}" font-size="{FONT}">"#
    );
    defs(&mut s);
    let _ = writeln!(s, r##"<rect width="{w}" height="{h}" fill="#ffffff"/>"##);
    header(&mut s, a, max);

    let layers = layer_count(a);
    for i in 0..layers {
        let y = ROWS_TOP + (layers - i) as f64 * PITCH + baseline();
        text(&mut s, MARGIN, y, FONT, MUTED, "start", &format!("L{i}"));
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
        let fill = ramp(norm(node.score, max));
        let ink = if is_dark(fill) { "#ffffff" } else { "#111111" };
        let score = format!("{:.4}", node.score);
        node_box(&mut s, b, &hex(fill), "#5a5a5a", ink, &node.id, &score);
    }
    if let Some(b) = lay.boxes.last() {
        let logit = format!("{:.2}", a.target_logit);
        let room = b.w - 3.0 * PAD - text_width(&logit, FONT) - text_width("logits \"\"", FONT);
        let token = fit(&visible(&a.target_token), FONT, room);
        let label = format!("{TARGET_ID} \"{token}\"");
        node_box(&mut s, b, "#dce9f5", "#2c5d8f", "#111111", &label, &logit);
    }
    s.push_str("</svg>\n");
    s
}

/// The marker of edge ends and the legend's gradient.
fn defs(s: &mut String) {
    s.push_str("<defs>\n");
    let _ = writeln!(
        s,
        r#"<marker id="arrow" viewBox="0 0 {ARROW} 10" refX="0" refY="5" markerWidth="{ARROW}" markerHeight="10" markerUnits="userSpaceOnUse" orient="auto"><path d="M0,0 L{ARROW},5 L0,10 z" fill="{EDGE_COLOR}"/></marker>"#
    );
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

/// Title, subtitle, and the colour legend.
fn header(s: &mut String, a: &Attribution, max: f64) {
    let room = WIDTH - 2.0 * MARGIN;
    let target = fit(&visible(&a.target_token), TITLE_FONT, room / 3.0);
    let tail = format!("\" → \"{target}\" (logit {:.2})", a.target_logit);
    let prompt_room = room - text_width(&tail, TITLE_FONT) - text_width("\"", TITLE_FONT);
    let prompt = fit(&visible(&a.prompt), TITLE_FONT, prompt_room);
    text(
        s,
        MARGIN,
        30.0,
        TITLE_FONT,
        "#111111",
        "start",
        &format!("\"{prompt}{tail}"),
    );

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

    let (bar_x, bar_w, bar_y) = (124.0, 240.0, 64.0);
    text(s, MARGIN, bar_y + 10.0, FONT, "#111111", "start", "score");
    text(s, bar_x - 6.0, bar_y + 10.0, FONT, "#111111", "end", "0");
    let _ = writeln!(
        s,
        r##"<rect id="legend" x="{bar_x}" y="{bar_y}" width="{bar_w}" height="12" fill="url(#score-scale)" stroke="#5a5a5a" stroke-width="0.8"/>"##
    );
    let max_label = format!("{max:.4}");
    text(
        s,
        bar_x + bar_w + 6.0,
        bar_y + 10.0,
        FONT,
        "#111111",
        "start",
        &max_label,
    );
    let caption =
        "box colour: score ‖g⊙a‖₂ ÷ max · edge width ∝ its source's score · read bottom → top";
    text(
        s,
        MARGIN,
        94.0,
        11.0,
        MUTED,
        "start",
        &fit(caption, 11.0, room),
    );
}

/// A box with a label at its left and a value at its right.
fn node_box(
    s: &mut String,
    b: &NodeBox,
    fill: &str,
    stroke: &str,
    ink: &str,
    left: &str,
    right: &str,
) {
    let _ = writeln!(
        s,
        r#"<g class="node"><rect id="node-{}" x="{}" y="{}" width="{}" height="{}" rx="3" fill="{fill}" stroke="{stroke}" stroke-width="0.8"/>"#,
        escape(&b.id),
        b.x,
        b.y,
        b.w,
        b.h
    );
    let y = b.y + baseline();
    text(s, b.x + PAD, y, FONT, ink, "start", left);
    text(s, b.x + b.w - PAD, y, FONT, ink, "end", right);
    s.push_str("</g>\n");
}

/// One `<text>` element; `content` is escaped here.
fn text(s: &mut String, x: f64, y: f64, size: f64, fill: &str, anchor: &str, content: &str) {
    let _ = writeln!(
        s,
        r#"<text x="{x:.1}" y="{y:.1}" font-family="{FONT_FAMILY}" font-size="{size}" fill="{fill}" text-anchor="{anchor}" xml:space="preserve">{}</text>"#,
        escape(content)
    );
}

/// Baseline offset that centres 12 px text vertically in a box row.
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
    fn escapes_markup_and_shows_line_breaks() {
        let v = visible("<|im_start|>user\n\"a & b\"\t'x'\u{7}");
        assert_eq!(v, "<|im_start|>user⏎\"a & b\" 'x'\u{fffd}");
        assert_eq!(
            escape(&v),
            "&lt;|im_start|&gt;user⏎&quot;a &amp; b&quot; &apos;x&apos;\u{fffd}"
        );
    }

    #[test]
    fn fit_cuts_long_text_with_an_ellipsis() {
        assert_eq!(fit("short", 12.0, 100.0), "short");
        let long = "W".repeat(200);
        let cut = fit(&long, 12.0, 100.0);
        assert!(cut.ends_with('…'));
        assert!(text_width(&cut, 12.0) <= 100.0);
    }

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
