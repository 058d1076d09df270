//! The token heatmap: SVG structure, colours, escaping, and the PNG drawn from it.

mod common;

use attrib::graph::Attribution;
use attrib::render::{heatmap_layout, heatmap_svg, parse_svg, svg_to_png, PNG_SCALE};
use common::synthetic::{attribution, by_id, nodes, texts, NASTY};
use resvg::tiny_skia::Pixmap;
use resvg::usvg::{self, roxmltree};

/// Token texts for `n` positions: the awkward ones first, then plain words.
fn tokens(n: usize) -> Vec<String> {
    let awkward = [
        "<|im_start|>",
        "user",
        "\n",
        " &",
        "\"q\"",
        "'s",
        "  two",
        "<b>",
    ];
    (0..n)
        .map(|i| match awkward.get(i) {
            Some(t) => (*t).to_owned(),
            None => format!(" word{i}"),
        })
        .collect()
}

/// An attribution with `layers` layers and `n` tokens whose per-position scores are all
/// distinct, with the smallest (0) at node 0 position 0 and the largest at the last node's last
/// position.
fn synthetic(layers: usize, n: usize, prompt: &str) -> Attribution {
    let nodes = nodes(layers, |k| {
        let per_position: Vec<f64> = (0..n).map(|p| (k * n + p) as f64 * 0.01).collect();
        let score = per_position.iter().map(|v| v * v).sum::<f64>().sqrt();
        (score, 0.5, per_position)
    });
    attribution(prompt, tokens(n), n.saturating_sub(1), nodes)
}

fn cases() -> Vec<Attribution> {
    vec![synthetic(3, 5, NASTY), synthetic(28, 64, NASTY)]
}

#[test]
fn heatmap_svg_parses_at_its_declared_size() {
    for a in cases() {
        let svg = heatmap_svg(&a);
        let tree = parse_svg(&svg).expect("usvg parses the heatmap");
        let lay = heatmap_layout(&a);
        assert_eq!(tree.size().width() as f64, lay.width);
        assert_eq!(tree.size().height() as f64, lay.height);
        let doc = roxmltree::Document::parse(&svg).unwrap();
        let root = doc.root_element();
        assert_eq!(
            root.attribute("width"),
            Some(lay.width.to_string().as_str())
        );
        assert_eq!(
            root.attribute("height"),
            Some(lay.height.to_string().as_str())
        );
        assert_eq!(
            root.attribute("viewBox"),
            Some(format!("0 0 {} {}", lay.width, lay.height).as_str())
        );
    }
}

#[test]
fn heatmap_has_one_cell_per_node_and_position() {
    for a in cases() {
        let svg = heatmap_svg(&a);
        let doc = roxmltree::Document::parse(&svg).unwrap();
        let cells = doc
            .descendants()
            .filter(|e| e.attribute("id").is_some_and(|i| i.starts_with("cell-")))
            .count();
        assert_eq!(cells, a.nodes.len() * a.tokens.len());
        assert_eq!(a.nodes.len(), 2 * (a.nodes.len() / 2) + 1);
        let texts = texts(&doc);
        for node in &a.nodes {
            assert!(texts.contains(&node.id), "row {} is not labelled", node.id);
            for p in 0..a.tokens.len() {
                let cell = by_id(&doc, &format!("cell-{}-{p}", node.id));
                assert!(cell.has_tag_name("rect"));
            }
        }
    }
    assert_eq!(synthetic(28, 64, "x").nodes.len(), 57);
}

#[test]
fn heatmap_grid_and_text_stay_on_the_canvas() {
    let a = synthetic(28, 64, NASTY);
    let lay = heatmap_layout(&a);
    assert_eq!((lay.rows, lay.columns), (57, 64));
    let (x0, y0) = lay.cell(0, 0);
    let (x1, y1) = lay.cell(lay.rows - 1, lay.columns - 1);
    assert!(x0 > 0.0 && y0 > 0.0);
    assert!(x1 + lay.cell_w <= lay.width && y1 + lay.cell_h <= lay.height);
    // Rotated column headers end above the grid and stay on the canvas.
    let tree = parse_svg(&heatmap_svg(&a)).unwrap();
    fn check(group: &usvg::Group, w: f32, h: f32) {
        for node in group.children() {
            match node {
                usvg::Node::Group(g) => check(g, w, h),
                usvg::Node::Text(t) => {
                    let b = t.abs_bounding_box();
                    assert!(
                        b.left() >= 0.0 && b.right() <= w && b.top() >= 0.0 && b.bottom() <= h,
                        "{b:?} leaves the canvas"
                    );
                }
                _ => {}
            }
        }
    }
    check(tree.root(), lay.width as f32, lay.height as f32);
}

#[test]
fn heatmap_hottest_cell_differs_from_the_coldest() {
    for a in cases() {
        let svg = heatmap_svg(&a);
        let doc = roxmltree::Document::parse(&svg).unwrap();
        let fill = |node: &str, p: usize| {
            by_id(&doc, &format!("cell-{node}-{p}"))
                .attribute("fill")
                .unwrap()
                .to_owned()
        };
        let last = a.nodes.last().unwrap();
        let hot = fill(&last.id, a.tokens.len() - 1);
        let cold = fill("embeddings", 0);
        assert_ne!(hot, cold);
        assert_eq!(cold, "#ffffcc", "zero is the scale's lowest colour");
        assert_eq!(hot, "#800026", "the max is the scale's highest colour");
        let max = format!("{:.4}", last.per_position.last().unwrap());
        assert!(texts(&doc).contains(&max), "legend shows the max {max}");
        assert!(texts(&doc).contains(&"0".to_owned()), "legend shows 0");
    }
}

#[test]
fn heatmap_token_text_is_escaped_and_made_visible() {
    let a = synthetic(3, 8, NASTY);
    let svg = heatmap_svg(&a);
    assert!(!svg.contains("<|im_start|>"));
    assert!(!svg.contains("<b>"));
    let doc = roxmltree::Document::parse(&svg).unwrap();
    let header = |p: usize| {
        by_id(&doc, &format!("token-{p}"))
            .text()
            .unwrap()
            .to_owned()
    };
    assert_eq!(header(0), "0 <|im_start|>");
    assert_eq!(header(2), "2 ⏎");
    assert_eq!(header(3), "3 ␣&");
    assert_eq!(header(4), "4 \"q\"");
    assert_eq!(header(5), "5 's");
    assert_eq!(header(6), "6 ␣␣two");
    assert_eq!(header(7), "7 <b>");
    assert_eq!(
        texts(&doc)[0],
        "\"<|im_start|>user⏎\"a & b\"\" → \" Paris\" (logit 14.59)"
    );
}

#[test]
fn heatmap_long_tokens_are_cut() {
    let mut a = synthetic(3, 5, NASTY);
    a.tokens[1] = "W".repeat(100);
    let svg = heatmap_svg(&a);
    let doc = roxmltree::Document::parse(&svg).unwrap();
    let h = by_id(&doc, "token-1").text().unwrap().to_owned();
    assert!(h.starts_with("1 WWW") && h.ends_with('…'), "{h}");
    assert!(h.chars().count() < 40);
}

#[test]
fn heatmap_png_has_the_scaled_size_and_colours_the_cells() {
    for a in cases() {
        let png = svg_to_png(&heatmap_svg(&a)).unwrap();
        let img = Pixmap::decode_png(&png).unwrap();
        let lay = heatmap_layout(&a);
        let s = PNG_SCALE as f64;
        assert_eq!(img.width(), (lay.width * s).ceil() as u32);
        assert_eq!(img.height(), (lay.height * s).ceil() as u32);
        let px = |x: f64, y: f64| {
            let p = img.pixel((x * s) as u32, (y * s) as u32).unwrap();
            [p.red(), p.green(), p.blue()]
        };
        let centre = |r: usize, p: usize| {
            let (x, y) = lay.cell(r, p);
            px(x + lay.cell_w / 2.0, y + lay.cell_h / 2.0)
        };
        assert_eq!(px(1.0, 1.0), [255; 3], "the background is white");
        assert_eq!(centre(0, 0), [0xff, 0xff, 0xcc]);
        assert_eq!(centre(lay.rows - 1, lay.columns - 1), [0x80, 0x00, 0x26]);
    }
}

#[test]
fn heatmap_renders_deterministically() {
    let a = synthetic(28, 64, NASTY);
    let (svg1, svg2) = (heatmap_svg(&a), heatmap_svg(&a));
    assert_eq!(svg1, svg2);
    assert_eq!(svg_to_png(&svg1).unwrap(), svg_to_png(&svg2).unwrap());
}

#[test]
fn heatmap_with_zero_scores_or_ragged_rows_still_renders() {
    let mut a = synthetic(3, 5, "x");
    a.nodes
        .iter_mut()
        .for_each(|n| n.per_position.iter_mut().for_each(|v| *v = 0.0));
    a.nodes[1].per_position.truncate(2);
    let svg = heatmap_svg(&a);
    assert!(!svg.contains("NaN"));
    assert!(svg.contains(r#"id="cell-L0_Attn-4""#));
    assert!(svg_to_png(&svg).is_ok());
}
