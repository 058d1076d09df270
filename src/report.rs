//! The terminal view: the score table and the timing line.

use std::fmt::Write;

use crate::graph::{Attribution, Timings};

/// Width of the bar that shows each score relative to the largest.
const BAR: usize = 24;

/// The node scores in pathway order, aligned, 4 decimals, with a bar scaled to the largest.
pub fn score_table(a: &Attribution) -> String {
    let width = a.nodes.iter().map(|n| n.id.len()).max().unwrap_or(4).max(4);
    let max = a.max_score();
    let mut out = String::new();
    let _ = writeln!(out, "{:<width$}  {:>10}  {:>10}", "node", "score", "signed");
    for n in &a.nodes {
        let filled = if max > 0.0 {
            ((n.score / max) * BAR as f64).round() as usize
        } else {
            0
        };
        let _ = writeln!(
            out,
            "{:<width$}  {:>10.4}  {:>10.4}  {}",
            n.id,
            n.score,
            n.signed,
            "█".repeat(filled)
        );
    }
    out
}

/// `--verify`: each node's predicted and actual change, then the agreement over all nodes.
pub fn verification_table(a: &Attribution) -> String {
    let Some(v) = &a.verification else {
        return String::new();
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<14}  {:>11}  {:>11}  sign",
        format!("{} ablation", v.ablation),
        "predicted",
        "actual"
    );
    for c in &v.nodes {
        let agree = if c.sign_differs() { "DIFFERS" } else { "ok" };
        let _ = writeln!(
            out,
            "{:<14}  {:>11.4}  {:>11.4}  {agree}",
            c.id, c.predicted, c.actual
        );
    }
    if !v.edges.is_empty() {
        let _ = writeln!(
            out,
            "{:<26}  {:>11}  {:>11}",
            "edge removed from input", "predicted", "actual"
        );
        for e in &v.edges {
            let _ = writeln!(
                out,
                "{:<26}  {:>11.4}  {:>11.4}",
                format!("{} → {}", e.source, e.target),
                e.predicted,
                e.actual
            );
        }
    }
    let _ = writeln!(
        out,
        "predicted vs actual over {} nodes: Pearson {:.3}, Spearman {:.3}, same sign {:.0}%",
        v.nodes.len(),
        v.pearson,
        v.spearman,
        100.0 * v.same_sign
    );
    if let Some(f) = &v.faithfulness {
        let _ = writeln!(
            out,
            "circuit (graph-dag, {} of {} edges): faithfulness {:.3} = ({:.4} − {:.4}) / ({:.4} − {:.4}), the rest {}-ablated",
            f.edges,
            f.total_edges,
            f.faithfulness,
            f.circuit,
            f.empty,
            f.clean,
            f.empty,
            v.ablation
        );
    }
    out
}

/// The logit lens, one line per node: the target's rank and logit after it, and the top tokens.
pub fn lens_table(a: &Attribution) -> String {
    let width = a
        .lens
        .iter()
        .map(|l| l.after.len())
        .max()
        .unwrap_or(5)
        .max(5);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<width$}  {:>7}  {:>9}  top tokens",
        "after", "rank", "logit"
    );
    for row in &a.lens {
        let top: Vec<String> = row
            .top
            .iter()
            .map(|t| format!("{:?} {:.2}", t.token, t.logit))
            .collect();
        let _ = writeln!(
            out,
            "{:<width$}  {:>7}  {:>9.4}  {}",
            row.after,
            row.target_rank,
            row.target_logit,
            top.join(", ")
        );
    }
    out
}

/// The `n` heads with the largest scores, best first.
pub fn heads_table(a: &Attribution, n: usize) -> String {
    let mut heads: Vec<_> = a.heads.iter().collect();
    heads.sort_by(|x, y| y.score.total_cmp(&x.score).then(x.id.cmp(&y.id)));
    let mut out = String::new();
    let _ = writeln!(out, "{:<8}  {:>10}  {:>10}", "head", "score", "signed");
    for h in heads.into_iter().take(n) {
        let _ = writeln!(out, "{:<8}  {:>10.4}  {:>10.4}", h.id, h.score, h.signed);
    }
    out
}

/// `load 1.20 s · tokenize 0.00 s · forward …`.
pub fn timing_line(t: &Timings) -> String {
    let mut line = format!(
        "load {:.2} s · tokenize {:.3} s · forward {:.2} s · backward {:.2} s",
        t.load_s, t.tokenize_s, t.forward_s, t.backward_s
    );
    // The lens's time is part of the phase it ran in.
    let (with_backward, with_scores) = match (t.lens_s > 0.0, t.lens_beside_backward) {
        (false, _) => (String::new(), String::new()),
        (true, true) => (
            format!(" (lens {:.2} s beside it)", t.lens_s),
            String::new(),
        ),
        (true, false) => (String::new(), format!(" (lens {:.2} s)", t.lens_s)),
    };
    line.push_str(&with_backward);
    if t.ig_s > 0.0 {
        let _ = write!(line, " · EAP-IG path {:.2} s", t.ig_s);
    }
    let _ = write!(line, " · scores {:.2} s{with_scores}", t.scores_s);
    if t.verify_s > 0.0 {
        let _ = write!(line, " · verify {:.2} s", t.verify_s);
    }
    let _ = write!(line, " · render {:.2} s", t.render_s);
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::{Node, NodeKind};

    #[test]
    fn the_timing_line_puts_the_lens_in_the_phase_it_ran_in() {
        let mut t = Timings {
            backward_s: 0.3,
            scores_s: 0.01,
            ..Timings::default()
        };
        let line = timing_line(&t);
        assert!(!line.contains("lens"), "{line}");
        assert!(line.contains("backward 0.30 s · scores 0.01 s"), "{line}");
        t.lens_s = 0.08;
        t.lens_beside_backward = true;
        let line = timing_line(&t);
        assert!(
            line.contains("backward 0.30 s (lens 0.08 s beside it) · scores 0.01 s ·"),
            "{line}"
        );
        t.lens_beside_backward = false;
        t.scores_s = 0.09;
        let line = timing_line(&t);
        assert!(
            line.contains("backward 0.30 s · scores 0.09 s (lens 0.08 s) ·"),
            "{line}"
        );
    }

    #[test]
    fn table_is_aligned_with_four_decimals() {
        let node = |id: &str, score: f64| Node {
            id: id.into(),
            kind: NodeKind::Attn,
            layer: Some(0),
            score,
            signed: -score / 2.0,
            per_position: vec![score],
        };
        let a =
            Attribution::from_graph(vec![node("embeddings", 2.0), node("L10_MLP", 0.5)], vec![]);
        let table = score_table(&a);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[1].starts_with("embeddings      2.0000     -1.0000  "));
        assert!(lines[2].starts_with("L10_MLP         0.5000     -0.2500  "));
        assert_eq!(lines[1].matches('█').count(), BAR);
        assert_eq!(lines[2].matches('█').count(), BAR / 4);
    }
}
