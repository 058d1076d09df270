//! `graph.html`: one self-contained interactive page of an attribution run.
//!
//! The page holds the pruned DAG ([`dag_svg`]) and the token heatmap ([`heatmap_svg`]) as
//! inline SVG, a header with the run's facts, the logit-lens table, inline CSS and a little
//! JavaScript, and the data the script needs as JSON in a `<script type="application/json">`.
//! It loads nothing: no external scripts, styles, fonts or images, so it works offline and
//! from a `file://` URL.
//!
//! In the DAG, hovering over a node box shows a tooltip (`#tooltip`) with the node's score,
//! signed effect, influence on the target and its three strongest incoming and outgoing edges
//! (among all residual edges, not only the kept ones); clicking a node pins it (its edges
//! highlighted, the rest dimmed) until it, the background or Escape is clicked or pressed. A
//! slider (`#edge-threshold`) hides the kept edges whose `|score|` is below a fraction of the
//! strongest kept edge.

use std::fmt::Write as _;

use serde::Serialize;

use super::svg::TARGET_ID;
use super::text::{escape, visible};
use super::{dag_svg, heatmap_svg};
use crate::graph::{Attribution, Edge};
use crate::prune::Pruned;

/// How many incoming and outgoing edges a node's tooltip lists.
const STRONGEST: usize = 3;

/// One end of an edge as the tooltip lists it: the node at the other end and the edge's score.
#[derive(Serialize)]
struct Link<'a> {
    node: &'a str,
    score: f64,
}

/// What the tooltip shows about a node.
#[derive(Serialize)]
struct NodeData<'a> {
    id: &'a str,
    score: f64,
    signed: f64,
    influence: Option<f64>,
    kept: bool,
    inputs: Vec<Link<'a>>,
    outputs: Vec<Link<'a>>,
}

/// What the tooltip shows about the target (`logits`).
#[derive(Serialize)]
struct TargetData<'a> {
    id: &'a str,
    token: &'a str,
    logit: f64,
    metric: &'a str,
    value: f64,
    inputs: Vec<Link<'a>>,
}

/// The JSON embedded in the page.
#[derive(Serialize)]
struct PageData<'a> {
    nodes: Vec<NodeData<'a>>,
    target: TargetData<'a>,
}

/// The page's style sheet.
const CSS: &str = r#"
body { font: 14px/1.45 system-ui, sans-serif; color: #111; background: #f6f6f4; margin: 0; }
header, main { max-width: 1280px; margin: 0 auto; padding: 0 24px; }
header { padding-top: 16px; }
h1 { font-size: 20px; margin: 8px 0; }
h2 { font-size: 16px; margin: 24px 0 8px; }
.facts { color: #555; margin: 0; }
.facts b { color: #111; font-weight: 600; }
.tok { font-family: ui-monospace, monospace; white-space: pre; background: #e8e8e4; padding: 0 3px; border-radius: 3px; }
.figure { overflow-x: auto; background: #fff; border: 1px solid #ddd; border-radius: 4px; }
.figure svg { display: block; }
.controls { display: flex; gap: 12px; align-items: center; margin: 8px 0; flex-wrap: wrap; }
.controls input { width: 260px; }
.hint { color: #555; }
#dag .node { cursor: pointer; }
#dag path.edge.hidden { display: none; }
#dag.pinned .node.dim, #dag.pinned path.edge.dim { opacity: 0.12; }
#dag .node.pin rect { stroke: #111; stroke-width: 2.5; }
#dag path.edge.hl { stroke-opacity: 0.95; }
#tooltip { position: absolute; z-index: 10; max-width: 360px; background: #fff; border: 1px solid #888; border-radius: 4px; box-shadow: 0 2px 8px rgba(0,0,0,.2); padding: 8px 10px; font-size: 13px; pointer-events: none; }
#tooltip.pinned { border-color: #111; border-width: 2px; }
#tooltip h3 { font-size: 14px; margin: 0 0 4px; }
#tooltip table { border-collapse: collapse; }
#tooltip td { padding: 0 6px 0 0; }
#tooltip td.num, table.lens td.num { text-align: right; font-variant-numeric: tabular-nums; }
#tooltip .pos { color: #2166ac; }
#tooltip .neg { color: #b2182b; }
table.lens { border-collapse: collapse; background: #fff; margin-bottom: 32px; }
table.lens th, table.lens td { border: 1px solid #ddd; padding: 3px 8px; }
table.lens th { background: #eee; text-align: left; }
table.lens tr.first td { background: #eef4fa; }
"#;

/// The page's script: tooltip, pinning and the edge slider (see the module docs).
const JS: &str = r#"
(function () {
  'use strict';
  var data = JSON.parse(document.getElementById('graph-data').textContent);
  var dag = document.getElementById('dag');
  var tip = document.getElementById('tooltip');
  var slider = document.getElementById('edge-threshold');
  var count = document.getElementById('edge-count');
  var byId = {};
  data.nodes.forEach(function (n) { byId[n.id] = n; });
  byId[data.target.id] = data.target;
  var edges = Array.prototype.slice.call(dag.querySelectorAll('path.edge'));
  var boxes = Array.prototype.slice.call(dag.querySelectorAll('g.node'));
  var maxEdge = edges.reduce(function (m, e) {
    var s = Math.abs(parseFloat(e.getAttribute('data-score')));
    return isFinite(s) && s > m ? s : m;
  }, 0);
  var pinned = null;

  function fmt(x) {
    if (typeof x !== 'number' || !isFinite(x)) { return '–'; }
    return x === 0 || Math.abs(x) >= 1e-3 ? x.toFixed(4) : x.toExponential(2);
  }
  function signed(x) { return (typeof x === 'number' && x > 0 ? '+' : '') + fmt(x); }
  function el(tag, text, cls) {
    var e = document.createElement(tag);
    if (text !== undefined) { e.textContent = text; }
    if (cls) { e.className = cls; }
    return e;
  }
  function nodeOf(target) {
    var g = target.closest ? target.closest('g.node') : null;
    var rect = g && g.querySelector('rect');
    return rect && rect.id.indexOf('node-') === 0 ? { g: g, id: rect.id.slice(5) } : null;
  }
  function links(table, title, list, arrow) {
    if (!list || !list.length) { return; }
    var head = table.insertRow();
    head.appendChild(el('td', title)).colSpan = 2;
    list.forEach(function (l) {
      var row = table.insertRow();
      row.appendChild(el('td', arrow + ' ' + l.node));
      row.appendChild(el('td', signed(l.score), 'num ' + (l.score < 0 ? 'neg' : 'pos')));
    });
  }
  function fill(id) {
    var n = byId[id];
    tip.textContent = '';
    tip.appendChild(el('h3', id));
    var facts = tip.appendChild(el('table'));
    function fact(k, v) {
      var row = facts.insertRow();
      row.appendChild(el('td', k));
      row.appendChild(el('td', v, 'num'));
    }
    if (!n) { return; }
    if (id === data.target.id) {
      fact('target', JSON.stringify(n.token));
      fact('logit', fmt(n.logit));
      fact(n.metric, fmt(n.value));
      fact('influence', fmt(1));
    } else {
      fact('score', fmt(n.score));
      fact('effect', signed(n.signed));
      fact('influence', fmt(n.influence));
    }
    var t = tip.appendChild(el('table'));
    links(t, 'strongest inputs', n.inputs, '←');
    links(t, 'strongest outputs', n.outputs, '→');
  }
  // Next to the pointer, in page coordinates (a pinned tooltip scrolls with its node), kept
  // inside the window.
  function show(id, ev) {
    fill(id);
    tip.hidden = false;
    var w = tip.offsetWidth, h = tip.offsetHeight;
    var x = Math.min(ev.clientX + 14, window.innerWidth - w - 8);
    var y = ev.clientY + 14 + h > window.innerHeight ? ev.clientY - h - 14 : ev.clientY + 14;
    tip.style.left = Math.max(4, x) + window.scrollX + 'px';
    tip.style.top = Math.max(4, y) + window.scrollY + 'px';
  }
  function highlight(id) {
    var near = {};
    near[id] = true;
    edges.forEach(function (e) {
      var s = e.getAttribute('data-source'), t = e.getAttribute('data-target');
      var on = id !== null && (s === id || t === id);
      if (on) { near[s] = true; near[t] = true; }
      e.classList.toggle('hl', on);
      e.classList.toggle('dim', id !== null && !on);
    });
    boxes.forEach(function (g) {
      var n = nodeOf(g);
      g.classList.toggle('pin', id !== null && n.id === id);
      g.classList.toggle('dim', id !== null && !near[n.id]);
    });
    dag.classList.toggle('pinned', id !== null);
    tip.classList.toggle('pinned', id !== null);
    if (id === null) { dag.removeAttribute('data-pinned'); } else { dag.setAttribute('data-pinned', id); }
  }
  function unpin() {
    pinned = null;
    highlight(null);
    tip.hidden = true;
  }

  dag.addEventListener('mousemove', function (ev) {
    if (pinned !== null) { return; }
    var n = nodeOf(ev.target);
    if (n) { show(n.id, ev); } else { tip.hidden = true; }
  });
  dag.addEventListener('mouseleave', function () { if (pinned === null) { tip.hidden = true; } });
  dag.addEventListener('click', function (ev) {
    var n = nodeOf(ev.target);
    if (!n || n.id === pinned) { unpin(); return; }
    pinned = n.id;
    highlight(n.id);
    show(n.id, ev);
  });
  document.addEventListener('keydown', function (ev) { if (ev.key === 'Escape') { unpin(); } });

  function threshold() {
    var f = parseFloat(slider.value) || 0;
    var shown = 0;
    edges.forEach(function (e) {
      var s = Math.abs(parseFloat(e.getAttribute('data-score')));
      var hide = !(s >= f * maxEdge);
      e.classList.toggle('hidden', hide);
      if (!hide) { shown += 1; }
    });
    count.textContent = 'hiding edges below ' + Math.round(f * 100) + '% of the strongest (' +
      fmt(f * maxEdge) + '): ' + shown + ' of ' + edges.length + ' edges shown';
    count.setAttribute('data-shown', String(shown));
  }
  slider.addEventListener('input', threshold);
  threshold();
}());
"#;

/// The strongest `STRONGEST` of `edges` by `|score|` (non-finite scores left out), each as
/// the node at the other end (`source` if `incoming`) and the score.
fn strongest<'a>(edges: impl Iterator<Item = &'a Edge>, incoming: bool) -> Vec<Link<'a>> {
    let mut list: Vec<&Edge> = edges.filter(|e| e.score.is_finite()).collect();
    list.sort_by(|x, y| y.score.abs().total_cmp(&x.score.abs()));
    list.into_iter()
        .take(STRONGEST)
        .map(|e| Link {
            node: if incoming { &e.source } else { &e.target },
            score: e.score,
        })
        .collect()
}

/// The data the page's script reads.
fn page_data<'a>(a: &'a Attribution, pruned: &Pruned) -> PageData<'a> {
    let into = |id: &str| strongest(a.edges.iter().filter(|e| e.target == id), true);
    let out_of = |id: &str| strongest(a.edges.iter().filter(|e| e.source == id), false);
    PageData {
        nodes: a
            .nodes
            .iter()
            .map(|n| NodeData {
                id: &n.id,
                score: n.score,
                signed: n.signed,
                influence: pruned.influence_of(&n.id),
                kept: pruned.keeps(&n.id),
                inputs: into(&n.id),
                outputs: out_of(&n.id),
            })
            .collect(),
        target: TargetData {
            id: TARGET_ID,
            token: &a.target_token,
            logit: a.target_logit,
            metric: &a.metric,
            value: a.target_value,
            inputs: into(TARGET_ID),
        },
    }
}

/// JSON that is safe inside `<script>`: every `<` (which can only occur inside a string) is
/// written as `\u003c`, so no `</script>` or `<!--` can end or confuse the element.
fn script_json(data: &PageData) -> String {
    serde_json::to_string(data)
        .unwrap_or_else(|_| "null".to_owned())
        .replace('<', "\\u003c")
}

/// `svg` with every `id` and `url(#…)`/`href="#…"` reference prefixed by `prefix`, so that two
/// drawings inlined in one page do not share ids (both define `score-scale` and `legend`).
/// Only attribute values start with `"`: text content has its quotes escaped.
fn prefix_ids(svg: &str, prefix: &str) -> String {
    svg.replace(" id=\"", &format!(" id=\"{prefix}"))
        .replace("\"url(#", &format!("\"url(#{prefix}"))
        .replace("href=\"#", &format!("href=\"#{prefix}"))
}

/// Text as a `<span class="tok">` showing its exact characters, line breaks as `⏎`.
fn token(s: &str) -> String {
    format!("<span class=\"tok\">{}</span>", escape(&visible(s)))
}

/// A number for the page: 4 decimals, or `–` if it is not finite.
fn num(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.4}")
    } else {
        "–".to_owned()
    }
}

/// The header: prompt → target, then the run's facts.
fn header(s: &mut String, a: &Attribution, pruned: &Pruned) {
    let _ = writeln!(
        s,
        "<header>\n<h1>{} → {}</h1>",
        token(&a.prompt),
        token(&a.target_token)
    );
    s.push_str("<p class=\"facts\">");
    let _ = write!(
        s,
        "<b>model</b> {} · {} on {}, {} · {} · {} tokens{}",
        escape(&a.model),
        escape(&a.backend),
        escape(&a.device),
        escape(&a.dtype),
        escape(&a.method),
        a.tokens.len(),
        if a.chat { " · chat template" } else { "" }
    );
    s.push_str("<br>");
    let _ = write!(
        s,
        "<b>target</b> {} (id {}) after position {} · logit {}",
        token(&a.target_token),
        a.target_id,
        a.target_position,
        num(a.target_logit)
    );
    if let Some(c) = &a.contrast_token {
        let _ = write!(s, " · <b>contrast</b> {}", token(c));
    }
    let _ = write!(
        s,
        " · <b>metric</b> {} · <b>value</b> {}",
        escape(&a.metric),
        num(a.target_value)
    );
    if a.predicted_id != a.target_id {
        let _ = write!(s, " · predicted {}", token(&a.predicted_token));
    }
    s.push_str("<br>");
    let _ = write!(
        s,
        "<b>pruned DAG</b> {} of {} nodes, {} of {} edges kept",
        pruned.nodes.iter().filter(|n| *n != TARGET_ID).count(),
        a.nodes.len(),
        pruned.edges.len(),
        a.edges.len()
    );
    s.push_str("</p>\n</header>\n");
}

/// The logit-lens table, or nothing when the run has no lens.
fn lens_table(s: &mut String, a: &Attribution) {
    if a.lens.is_empty() {
        return;
    }
    s.push_str("<section id=\"lens\">\n<h2>Logit lens</h2>\n");
    s.push_str(
        "<p class=\"hint\">The final norm and LM head applied to the residual stream after each node: where the target's rank and logit stand, and the five highest tokens.</p>\n",
    );
    s.push_str("<table class=\"lens\">\n<thead><tr><th>after</th><th>target rank</th><th>target logit</th>");
    for k in 1..=5 {
        let _ = write!(s, "<th>#{k}</th>");
    }
    s.push_str("</tr></thead>\n<tbody>\n");
    for row in &a.lens {
        let class = if row.target_rank == 1 {
            " class=\"first\""
        } else {
            ""
        };
        let _ = write!(
            s,
            "<tr{class}><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>",
            escape(&row.after),
            row.target_rank,
            num(f64::from(row.target_logit))
        );
        for k in 0..5 {
            match row.top.get(k) {
                Some(t) => {
                    let _ = write!(
                        s,
                        "<td>{} {}</td>",
                        token(&t.token),
                        num(f64::from(t.logit))
                    );
                }
                None => s.push_str("<td></td>"),
            }
        }
        s.push_str("</tr>\n");
    }
    s.push_str("</tbody>\n</table>\n</section>\n");
}

/// The run `a`, pruned to `pruned`, as one self-contained interactive HTML page (see the
/// module docs). `pruned` must come from [`prune`](crate::prune::prune) on the same `a`.
pub fn graph_html(a: &Attribution, pruned: &Pruned) -> String {
    let mut s = String::new();
    s.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    let _ = writeln!(
        s,
        "<title>attrib: {} → {}</title>",
        escape(&visible(&a.prompt)),
        escape(&visible(&a.target_token))
    );
    let _ = writeln!(s, "<style>{CSS}</style>\n</head>\n<body>");
    header(&mut s, a, pruned);

    s.push_str("<main>\n<section>\n<h2>Pruned attribution graph</h2>\n");
    s.push_str("<div class=\"controls\"><label for=\"edge-threshold\">edge threshold</label>");
    s.push_str("<input type=\"range\" id=\"edge-threshold\" min=\"0\" max=\"1\" step=\"0.01\" value=\"0\">");
    s.push_str("<span id=\"edge-count\"></span></div>\n");
    s.push_str("<p class=\"hint\">Hover over a node for its numbers and strongest edges; click it to pin it and highlight its edges, click again or on the background to unpin.</p>\n");
    s.push_str("<div class=\"figure\" id=\"dag\">\n");
    s.push_str(&dag_svg(a, pruned));
    s.push_str("</div>\n</section>\n");

    s.push_str("<section>\n<h2>Token heatmap</h2>\n<div class=\"figure\" id=\"heatmap\">\n");
    s.push_str(&prefix_ids(&heatmap_svg(a), "heatmap-"));
    s.push_str("</div>\n</section>\n");
    lens_table(&mut s, a);
    s.push_str("</main>\n<div id=\"tooltip\" role=\"tooltip\" hidden></div>\n");

    let _ = writeln!(
        s,
        "<script type=\"application/json\" id=\"graph-data\">{}</script>",
        script_json(&page_data(a, pruned))
    );
    let _ = writeln!(s, "<script>{JS}</script>\n</body>\n</html>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::{LensRow, LensToken, Node, NodeKind};
    use crate::prune::{prune, PruneOptions};

    const NASTY: &str = "</script><b>&\"'\n";

    fn node(id: &str, kind: NodeKind, layer: Option<usize>, score: f64) -> Node {
        Node {
            id: id.into(),
            kind,
            layer,
            score,
            signed: -score / 2.0,
            per_position: vec![score; 2],
        }
    }

    fn edge(source: &str, target: &str, score: f64) -> Edge {
        Edge {
            source: source.into(),
            target: target.into(),
            score,
            per_position: vec![score / 2.0; 2],
        }
    }

    /// Two layers, an edge from every node to every later one, nasty token texts, a lens.
    fn attribution() -> Attribution {
        let nodes = vec![
            node("embeddings", NodeKind::Embeddings, None, 1.0),
            node("L0_Attn", NodeKind::Attn, Some(0), 0.5),
            node("L0_MLP", NodeKind::Mlp, Some(0), 2.0),
            node("L1_Attn", NodeKind::Attn, Some(1), 0.25),
            node("L1_MLP", NodeKind::Mlp, Some(1), 3.0),
        ];
        let mut ids: Vec<&str> = nodes.iter().map(|n| n.id.as_str()).collect();
        ids.push(TARGET_ID);
        let mut edges = Vec::new();
        for (v, t) in ids.iter().enumerate() {
            for (u, s) in ids.iter().enumerate().take(v) {
                let sign = if (u + v) % 3 == 0 { -1.0 } else { 1.0 };
                edges.push(edge(s, t, sign * (1.0 + u as f64) / (1 + v - u) as f64));
            }
        }
        let mut a = Attribution::from_graph(nodes, edges);
        a.prompt = format!("p {NASTY}");
        a.tokens = vec!["p".into(), NASTY.into()];
        a.input_ids = vec![1, 2];
        a.target_token = NASTY.into();
        a.target_position = 1;
        a.lens = vec![LensRow {
            after: "embeddings".into(),
            target_rank: 3,
            target_logit: 1.5,
            top: vec![LensToken {
                id: 9,
                token: NASTY.into(),
                logit: 2.5,
            }],
        }];
        a
    }

    /// The content of the `<script>` element whose start tag contains `marker`.
    fn script<'a>(page: &'a str, marker: &str) -> &'a str {
        let start = page.find(marker).expect("script present");
        let open = start + page[start..].find('>').unwrap() + 1;
        let close = open + page[open..].find("</script>").unwrap();
        &page[open..close]
    }

    #[test]
    fn page_holds_every_kept_node_and_data_parses_back() {
        let a = attribution();
        let pruned = prune(&a, &PruneOptions::default());
        assert!(pruned.nodes.len() > 2, "{:?}", pruned.nodes);
        let page = graph_html(&a, &pruned);
        for id in &pruned.nodes {
            assert!(page.contains(&format!("id=\"node-{id}\"")), "{id}");
        }
        let json = script(&page, "id=\"graph-data\"");
        assert!(!json.contains('<'));
        let data: serde_json::Value = serde_json::from_str(json).unwrap();
        let nodes = data["nodes"].as_array().unwrap();
        assert_eq!(nodes.len(), a.nodes.len());
        assert_eq!(data["target"]["token"].as_str(), Some(NASTY));
        // The strongest inputs of L1_MLP, by |score|, strongest first.
        let mlp = nodes.iter().find(|n| n["id"] == "L1_MLP").unwrap();
        let inputs: Vec<(&str, f64)> = mlp["inputs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| (l["node"].as_str().unwrap(), l["score"].as_f64().unwrap()))
            .collect();
        assert_eq!(
            inputs,
            [("L1_Attn", 2.0), ("L0_MLP", -1.0), ("L0_Attn", 0.5)]
        );
        assert_eq!(mlp["outputs"][0]["node"], TARGET_ID);
        assert_eq!(mlp["influence"].as_f64(), pruned.influence_of("L1_MLP"));
        assert_eq!(data["target"]["inputs"].as_array().unwrap().len(), 3);
        assert!(page.contains("id=\"tooltip\""));
        assert!(page.contains("<input type=\"range\" id=\"edge-threshold\""));
        assert!(page.contains("<section id=\"lens\">"));
    }

    #[test]
    fn token_text_cannot_break_out() {
        let a = attribution();
        let page = graph_html(&a, &prune(&a, &PruneOptions::default()));
        // The only elements are the page's own: the nasty text never appears raw.
        assert!(!page.contains("<b>&"));
        assert_eq!(page.matches("</script>").count(), 2);
        assert_eq!(page.matches("<script").count(), 2);
        assert!(page.contains("&lt;/script&gt;&lt;b&gt;&amp;&quot;&apos;⏎"));
        // The script itself is intact: it ends the IIFE.
        assert!(script(&page, "<script>").trim_end().ends_with("}());"));
    }

    #[test]
    fn page_loads_nothing_from_the_network() {
        let a = attribution();
        let page = graph_html(&a, &prune(&a, &PruneOptions::default()));
        let mut uris = 0;
        for scheme in ["http://", "https://"] {
            for (at, _) in page.match_indices(scheme) {
                uris += 1;
                assert!(
                    page[at + scheme.len()..].starts_with("www.w3.org/"),
                    "{}",
                    page.get(at..at + 60).unwrap_or(&page[at..])
                );
            }
        }
        assert!(uris >= 1, "the inline SVGs declare their namespace");
        for tag in ["<link", "<img", "<iframe", "src=", "@import", "url(http"] {
            assert!(!page.contains(tag), "{tag}");
        }
    }

    #[test]
    fn ids_are_unique_and_lens_is_optional() {
        let mut a = attribution();
        let pruned = prune(&a, &PruneOptions::default());
        let page = graph_html(&a, &pruned);
        let mut ids: Vec<&str> = page
            .match_indices(" id=\"")
            .map(|(at, m)| {
                let rest = &page[at + m.len()..];
                &rest[..rest.find('"').unwrap()]
            })
            .collect();
        let all = ids.len();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), all, "duplicate ids");
        assert!(page.contains("fill=\"url(#heatmap-score-scale)\""));

        a.lens.clear();
        let page = graph_html(&a, &pruned);
        assert!(!page.contains("id=\"lens\""));
    }

    #[test]
    fn non_finite_scores_do_not_break_the_data() {
        let mut a = attribution();
        a.nodes[1].score = f64::NAN;
        a.edges[0].score = f64::INFINITY;
        let pruned = prune(&a, &PruneOptions::default());
        let page = graph_html(&a, &pruned);
        let data: serde_json::Value =
            serde_json::from_str(script(&page, "id=\"graph-data\"")).unwrap();
        assert!(data["nodes"][1]["score"].is_null());
        assert_eq!(data["nodes"].as_array().unwrap().len(), a.nodes.len());
    }
}
