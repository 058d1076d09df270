//! What the three drawings (pathway, pruned graph, heatmap) share: DejaVu Sans metrics and
//! the text helpers built on them (showing, escaping, measuring and fitting text, `<text>`
//! elements), and the parts every drawing has in common: the document's start with the colour
//! scale's gradient, the title and subtitle, the score legend, the caption, and node boxes.
//!
//! Keeping them in one place keeps the drawings alike, and all of them render identically
//! with the embedded font.

use std::fmt::Write as _;

use super::color::{self, hex, is_dark, ramp};
use super::svg::{FONT_FAMILY, TARGET_ID};
use crate::graph::Attribution;

/// The size of body text, in px.
pub(crate) const FONT: f64 = 12.0;
/// The size of the title, in px.
pub(crate) const TITLE_FONT: f64 = 16.0;
/// The size of the caption under the legend, in px.
pub(crate) const CAPTION_FONT: f64 = 11.0;
/// Space between the canvas's edges and what is drawn on it.
pub(crate) const MARGIN: f64 = 20.0;
/// Space between a box's sides and its text.
pub(crate) const PAD: f64 = 8.0;
/// The colour of ordinary text.
pub(crate) const INK: &str = "#111111";
/// The colour of secondary text (subtitle, caption, layer labels).
pub(crate) const MUTED: &str = "#555555";

/// DejaVu Sans advance widths of ASCII `' '..='~'`, in font units (2048 per em).
const ASCII_ADVANCE: [u16; 95] = [
    651, 821, 942, 1716, 1303, 1946, 1597, 563, 799, 799, 1024, 1716, 651, 739, 651, 690, 1303,
    1303, 1303, 1303, 1303, 1303, 1303, 1303, 1303, 1303, 690, 690, 1716, 1716, 1716, 1087, 2048,
    1401, 1405, 1430, 1577, 1294, 1178, 1587, 1540, 604, 604, 1343, 1141, 1767, 1532, 1612, 1235,
    1612, 1423, 1300, 1251, 1499, 1401, 2025, 1403, 1251, 1403, 799, 690, 799, 1716, 1024, 1024,
    1255, 1300, 1126, 1300, 1260, 721, 1300, 1298, 569, 569, 1186, 569, 1995, 1298, 1253, 1300,
    1300, 842, 1067, 803, 1298, 1212, 1675, 1212, 1212, 1075, 1303, 690, 1303, 1716,
];

/// Text as it should be shown on one line: line breaks as `⏎`, tabs as spaces, other control
/// characters as `�`.
pub(crate) fn visible(s: &str) -> String {
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
pub(crate) fn escape(s: &str) -> String {
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
pub(crate) fn text_width(s: &str, size: f64) -> f64 {
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
pub(crate) fn fit(s: &str, size: f64, max_w: f64) -> String {
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

/// One `<text>` element; `content` is escaped here.
pub(crate) fn text(
    s: &mut String,
    x: f64,
    y: f64,
    size: f64,
    fill: &str,
    anchor: &str,
    content: &str,
) {
    let _ = writeln!(
        s,
        r#"<text x="{x:.1}" y="{y:.1}" font-family="{FONT_FAMILY}" font-size="{size}" fill="{fill}" text-anchor="{anchor}" xml:space="preserve">{}</text>"#,
        escape(content)
    );
}

/// Baseline offset that centres 12 px text vertically in a box `box_h` high.
pub(crate) fn baseline(box_h: f64) -> f64 {
    box_h / 2.0 + 4.0
}

/// `score / max` in `[0, 1]`; 0 when there is nothing to normalise by.
pub(crate) fn norm(score: f64, max: f64) -> f64 {
    if max > 0.0 && max.is_finite() && score.is_finite() {
        (score / max).clamp(0.0, 1.0)
    } else {
        0.0
    }
}

/// The number of layers: one more than the largest layer index.
pub(crate) fn layer_count(a: &Attribution) -> usize {
    a.nodes
        .iter()
        .filter_map(|n| n.layer)
        .map(|l| l + 1)
        .max()
        .unwrap_or(0)
}

/// The start of a `w` × `h` document: the `<svg>` element, the `<defs>` (`extra_defs`, if any,
/// on a line of its own, then the colour scale's gradient `score-scale`), and the white
/// background. The caller closes the document with `</svg>`.
pub(crate) fn begin_svg(w: f64, h: f64, extra_defs: Option<&str>) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="{FONT_FAMILY}" font-size="{FONT}">"#
    );
    s.push_str("<defs>\n");
    if let Some(d) = extra_defs {
        s.push_str(d);
        s.push('\n');
    }
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
    let _ = writeln!(s, r##"<rect width="{w}" height="{h}" fill="#ffffff"/>"##);
    s
}

/// The title, `"prompt" → "target" (logit …)`, both texts cut to fit `room` between the margins.
pub(crate) fn title(s: &mut String, a: &Attribution, room: f64) {
    let target = fit(&visible(&a.target_token), TITLE_FONT, room / 3.0);
    let tail = format!("\" → \"{target}\" (logit {:.2})", a.target_logit);
    let prompt_room = room - text_width(&tail, TITLE_FONT) - text_width("\"", TITLE_FONT);
    let prompt = fit(&visible(&a.prompt), TITLE_FONT, prompt_room);
    let title = format!("\"{prompt}{tail}");
    text(s, MARGIN, 30.0, TITLE_FONT, INK, "start", &title);
}

/// The subtitle: model, backend, device, dtype, method and the token count followed by
/// `after_tokens`, then whether the chat template was used and, if `show_predicted`, the
/// predicted token where it is not the target; cut to fit `room`.
pub(crate) fn subtitle(
    s: &mut String,
    a: &Attribution,
    after_tokens: &str,
    show_predicted: bool,
    room: f64,
) {
    let mut sub = format!(
        "{} · {} on {}, {} · {} · {} tokens{after_tokens}",
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
    if show_predicted && a.predicted_id != a.target_id {
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
}

/// The colour legend: `score 0 [gradient] max`, the gradient `bar_w` wide with its top-left
/// corner at (`bar_x`, `bar_y`).
pub(crate) fn score_legend(s: &mut String, bar_x: f64, bar_y: f64, bar_w: f64, max: f64) {
    text(s, MARGIN, bar_y + 10.0, FONT, INK, "start", "score");
    text(s, bar_x - 6.0, bar_y + 10.0, FONT, INK, "end", "0");
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
        INK,
        "start",
        &max_label,
    );
}

/// The caption under the legend, at baseline `y`, cut to fit `room`.
pub(crate) fn caption(s: &mut String, y: f64, caption: &str, room: f64) {
    text(
        s,
        MARGIN,
        y,
        CAPTION_FONT,
        MUTED,
        "start",
        &fit(caption, CAPTION_FONT, room),
    );
}

/// How a box is painted: fill, outline, and the colour of its text.
pub(crate) struct BoxPaint {
    pub(crate) fill: String,
    pub(crate) stroke: &'static str,
    pub(crate) ink: &'static str,
}

impl BoxPaint {
    /// A node's box: its `score` on the colour scale, normalised by `max`, with white or black
    /// text, whichever reads better.
    pub(crate) fn scored(score: f64, max: f64) -> Self {
        let fill = ramp(norm(score, max));
        let ink = if is_dark(fill) { "#ffffff" } else { INK };
        BoxPaint {
            fill: hex(fill),
            stroke: "#5a5a5a",
            ink,
        }
    }

    /// The target's box.
    pub(crate) fn target() -> Self {
        BoxPaint {
            fill: "#dce9f5".to_owned(),
            stroke: "#2c5d8f",
            ink: INK,
        }
    }
}

/// A box `id="node-{id}"` at `[x, y, w, h]` with `left` at its left and `right` at its right.
pub(crate) fn node_box(
    s: &mut String,
    id: &str,
    [x, y, w, h]: [f64; 4],
    paint: &BoxPaint,
    left: &str,
    right: &str,
) {
    let BoxPaint { fill, stroke, ink } = paint;
    let _ = writeln!(
        s,
        r#"<g class="node"><rect id="node-{}" x="{x}" y="{y}" width="{w}" height="{h}" rx="3" fill="{fill}" stroke="{stroke}" stroke-width="0.8"/>"#,
        escape(id),
    );
    let y = y + baseline(h);
    text(s, x + PAD, y, FONT, ink, "start", left);
    text(s, x + w - PAD, y, FONT, ink, "end", right);
    s.push_str("</g>\n");
}

/// The target box's label, `logits "token"` with the token cut to leave room in a box `box_w`
/// wide, and its value, the target logit.
pub(crate) fn target_label(a: &Attribution, box_w: f64) -> (String, String) {
    let logit = format!("{:.2}", a.target_logit);
    let room = box_w - 3.0 * PAD - text_width(&logit, FONT) - text_width("logits \"\"", FONT);
    let token = fit(&visible(&a.target_token), FONT, room);
    (format!("{TARGET_ID} \"{token}\""), logit)
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
}
