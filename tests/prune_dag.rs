//! Pruning a synthetic attribution graph and drawing what is kept.

mod common;

use attrib::graph::{Attribution, Edge};
use attrib::prune::{prune, PruneOptions, Pruned};
use attrib::render::{dag_svg, parse_svg, svg_to_png, PNG_SCALE};
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
