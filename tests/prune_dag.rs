//! Pruning a synthetic attribution graph and drawing what is kept.

mod common;

use attrib::graph::{Attribution, Edge, Head, NodeCheck, Verification};
use attrib::prune::{prune, PruneOptions, Pruned};
use attrib::render::dag::{sign_differs, HEADS_W, MAX_HEADS};
use attrib::render::{dag_svg, layer_heads, parse_svg, svg_to_png, PNG_SCALE};
use common::synthetic::{attribution, nodes, permuted_score, NASTY};
use resvg::tiny_skia::Pixmap;
use resvg::usvg::roxmltree;

/// An attribution with `layers` layers, an edge from every node to every later node and to
/// `logits`, with signed scores of varied size.
fn synthetic(layers: usize) -> Attribution {
    let n = 2 * layers + 1;
    let nodes = nodes(layers, |k| {
        let score = permuted_score(k, n);
        (score, score, vec![score / 2.0; 4])
    });
    let mut ids: Vec<String> = nodes.iter().map(|n| n.id.clone()).collect();
    ids.push("logits".into());
    let mut edges = Vec::new();
    for (v, target) in ids.iter().enumerate().skip(1) {
        for (u, source) in ids.iter().enumerate().take(v) {
            // Mostly near neighbours matter; a few long edges are strong too.
            let size = if (u * 7 + v * 3) % 11 == 0 {
                3.0
            } else {
                1.0 / (1 + v - u) as f64 / (1 + (u * v) % 5) as f64
            };
            let sign = if (u + 2 * v) % 3 == 0 { -1.0 } else { 1.0 };
            edges.push(Edge {
                source: source.clone(),
                target: target.clone(),
                score: sign * size,
                per_position: vec![sign * size; 4],
            });
        }
    }
    let tokens = vec!["a".into(), "b".into(), "c".into(), "d".into()];
    Attribution {
        edges,
        ..attribution(NASTY, tokens, 3, nodes)
    }
}

/// Checks the drawing of `pruned` against it: boxes exactly for kept nodes, one path per kept
/// edge, and a PNG of the SVG's size.
fn check_drawing(a: &Attribution, pruned: &Pruned) {
    let svg = dag_svg(a, pruned);
    let tree = parse_svg(&svg).expect("usvg parses the SVG");
    let doc = roxmltree::Document::parse(&svg).unwrap();
    let rect = |id: &str| {
        doc.descendants()
            .any(|e| e.has_tag_name("rect") && e.attribute("id") == Some(&format!("node-{id}")))
    };
    for node in &a.nodes {
        assert_eq!(rect(&node.id), pruned.keeps(&node.id), "{}", node.id);
    }
    assert!(rect("logits"));
    let drawn: Vec<(String, String)> = doc
        .descendants()
        .filter(|e| e.attribute("class") == Some("edge"))
        .map(|e| {
            let end = |k| e.attribute(k).unwrap().to_owned();
            (end("data-source"), end("data-target"))
        })
        .collect();
    assert_eq!(drawn.len(), pruned.edges.len());
    for &i in &pruned.edges {
        let e = &a.edges[i];
        assert!(drawn.contains(&(e.source.clone(), e.target.clone())));
        assert!(pruned.keeps(&e.source) && pruned.keeps(&e.target));
    }
    let texts: Vec<&str> = doc
        .descendants()
        .filter(|e| e.has_tag_name("text"))
        .filter_map(|e| e.text())
        .collect();
    let kept = format!(
        "kept {} of {} nodes, {} of {} edges",
        pruned.nodes.len() - 1,
        a.nodes.len(),
        pruned.edges.len(),
        a.edges.len()
    );
    assert!(texts.iter().any(|t| t.starts_with(&kept)), "{kept}");
    assert!(!svg.contains("NaN"));

    let png = svg_to_png(&svg).unwrap();
    let img = Pixmap::decode_png(&png).unwrap();
    let size = tree.size();
    assert_eq!(img.width(), (size.width() * PNG_SCALE).ceil() as u32);
    assert_eq!(img.height(), (size.height() * PNG_SCALE).ceil() as u32);
    assert!(img.pixels().iter().any(|p| p.red() < 80 && p.blue() < 80));
}

#[test]
fn default_pruning_keeps_a_connected_part_and_draws_it() {
    for layers in [3, 28] {
        let a = synthetic(layers);
        let p = prune(&a, &PruneOptions::default());
        assert_eq!(p.nodes.last().map(String::as_str), Some("logits"));
        assert!(p.nodes.len() > 1, "something is kept");
        assert!(p.nodes.len() < a.nodes.len() + 1, "something is pruned");
        assert!(p.edges.len() < a.edges.len());
        assert_eq!(p.influence.len(), a.nodes.len() + 1);
        // Every kept node but the target has a kept edge out.
        for id in &p.nodes[..p.nodes.len() - 1] {
            assert!(p.edges.iter().any(|&i| &a.edges[i].source == id), "{id}");
        }
        check_drawing(&a, &p);
    }
}

#[test]
fn top_edges_and_full_thresholds_draw_too() {
    let a = synthetic(28);
    let top = prune(
        &a,
        &PruneOptions {
            top_edges: Some(40),
            ..PruneOptions::default()
        },
    );
    assert!(top.edges.len() <= 40);
    check_drawing(&a, &top);
    let all = prune(
        &a,
        &PruneOptions {
            node_threshold: 1.0,
            edge_threshold: 1.0,
            top_edges: None,
        },
    );
    assert_eq!(all.nodes.len(), a.nodes.len() + 1);
    check_drawing(&a, &all);
}

#[test]
fn an_empty_graph_draws_only_the_target() {
    let mut a = synthetic(3);
    a.edges.clear();
    let p = prune(&a, &PruneOptions::default());
    assert_eq!(p.nodes, ["logits"]);
    check_drawing(&a, &p);
}

#[test]
fn drawing_is_deterministic() {
    let a = synthetic(28);
    let p = prune(&a, &PruneOptions::default());
    assert_eq!(dag_svg(&a, &p), dag_svg(&a, &p));
}

/// `synthetic(layers)` with 6 heads a layer and head → node edges that split each attention
/// edge unevenly among them (head `h` of layer `l` gets a share growing with `(h + l) % 6`).
fn with_heads(layers: usize) -> Attribution {
    let mut a = synthetic(layers);
    for l in 0..layers {
        for h in 0..6 {
            a.heads.push(Head {
                id: format!("L{l}_H{h}"),
                layer: l,
                head: h,
                signed: 0.1 * h as f64,
                score: 0.05 * (1 + (h * 5 + l) % 6) as f64,
                per_position: vec![0.0; 4],
            });
        }
    }
    let total: f64 = (0..6).map(|k| k as f64).sum();
    let mut head_edges = Vec::new();
    for e in a.edges.iter().filter(|e| e.source.ends_with("_Attn")) {
        let l: usize = e.source[1..e.source.find('_').unwrap()].parse().unwrap();
        for h in 0..6 {
            let share = ((h + l) % 6) as f64 / total;
            head_edges.push(Edge {
                source: format!("L{l}_H{h}"),
                target: e.target.clone(),
                score: e.score * share,
                per_position: vec![e.score * share / 4.0; 4],
            });
        }
    }
    a.head_edges = head_edges;
    a
}

#[test]
fn heads_are_drawn_next_to_their_attention_box() {
    for layers in [3, 28] {
        let a = with_heads(layers);
        let p = prune(&a, &PruneOptions::default());
        let svg = dag_svg(&a, &p);
        check_drawing(&a, &p);
        let tree = parse_svg(&svg).unwrap();
        assert_eq!(tree.size().width() as f64, 900.0 + HEADS_W);
        let doc = roxmltree::Document::parse(&svg).unwrap();
        let rect = |id: &str| {
            doc.descendants()
                .find(|e| e.has_tag_name("rect") && e.attribute("id") == Some(id))
        };
        let x = |e: roxmltree::Node, k: &str| e.attribute(k).unwrap().parse::<f64>().unwrap();
        let mut drawn = 0;
        for l in 0..layers {
            let attn = format!("L{l}_Attn");
            let chosen = layer_heads(&a, &p, l);
            // Each head's weight is its share of the kept edges out of this attention, so the
            // order follows (h + l) % 6 and only heads with a non-zero share appear.
            let kept_out: f64 = p
                .edges
                .iter()
                .map(|&i| &a.edges[i])
                .filter(|e| e.source == attn)
                .map(|e| e.score.abs())
                .sum();
            if !p.keeps(&attn) || kept_out == 0.0 {
                assert!(rect(&format!("head-L{l}_H0")).is_none());
                continue;
            }
            assert_eq!(chosen.len(), MAX_HEADS);
            let total: f64 = (0..6).map(|k| k as f64).sum();
            for (k, c) in chosen.iter().enumerate() {
                assert_eq!((c.head + l) % 6, 5 - k, "{attn}: {chosen:?}");
                let want = kept_out * ((c.head + l) % 6) as f64 / total;
                assert!((c.weight - want).abs() <= 1e-9 * want, "{c:?} vs {want}");
            }
            // Chips sit left of the attention box, strongest nearest, without overlapping.
            let boxed = rect(&format!("node-{attn}")).unwrap();
            let mut right_edge = x(boxed, "x");
            for c in &chosen {
                let chip = rect(&format!("head-{}", c.id)).expect("chip drawn");
                let (cx, cw) = (x(chip, "x"), x(chip, "width"));
                assert!(cx + cw < right_edge, "{} overlaps", c.id);
                assert!(cx > 60.0, "{} runs into the layer labels", c.id);
                right_edge = cx;
                drawn += 1;
            }
            for h in 0..6 {
                let id = format!("head-L{l}_H{h}");
                assert_eq!(rect(&id).is_some(), chosen.iter().any(|c| c.head == h));
            }
        }
        assert!(drawn > 0);
        let heads_drawn = doc
            .descendants()
            .filter(|e| e.attribute("id").is_some_and(|id| id.starts_with("head-")))
            .count();
        assert_eq!(heads_drawn, drawn);
    }
}

#[test]
fn without_head_edges_no_heads_are_drawn() {
    let mut a = with_heads(3);
    a.head_edges.clear();
    let p = prune(&a, &PruneOptions::default());
    let svg = dag_svg(&a, &p);
    assert!(!svg.contains("head-"));
    assert_eq!(parse_svg(&svg).unwrap().size().width(), 900.0);
}

#[test]
fn verify_marks_the_nodes_whose_sign_differs() {
    let mut a = synthetic(28);
    let nodes: Vec<NodeCheck> = a
        .nodes
        .iter()
        .enumerate()
        .map(|(k, n)| NodeCheck {
            id: n.id.clone(),
            predicted: 1.0 + k as f64,
            actual: if k % 3 == 0 { -0.5 } else { 0.5 + k as f64 },
        })
        .collect();
    a.verification = Some(Verification {
        ablation: "zero".into(),
        corrupt_prompt: None,
        nodes,
        pearson: 0.0,
        spearman: 0.0,
        same_sign: 0.0,
        edges: vec![],
        seconds: Default::default(),
        faithfulness: None,
    });
    let p = prune(&a, &PruneOptions::default());
    check_drawing(&a, &p);
    let svg = dag_svg(&a, &p);
    let doc = roxmltree::Document::parse(&svg).unwrap();
    let marked: Vec<&str> = doc
        .descendants()
        .filter(|e| e.attribute("class") == Some("sign-differs"))
        .map(|e| e.attribute("data-node").unwrap())
        .collect();
    let mut expected = 0;
    for (k, n) in a.nodes.iter().enumerate() {
        let differs = k % 3 == 0;
        assert_eq!(sign_differs(&a, &n.id), differs, "{}", n.id);
        assert_eq!(
            marked.contains(&n.id.as_str()),
            differs && p.keeps(&n.id),
            "{}",
            n.id
        );
        expected += usize::from(differs && p.keeps(&n.id));
    }
    assert!(expected > 0, "some marked node is kept");
    assert_eq!(marked.len(), expected);
    assert!(svg.contains("dashed red outline"));
}
