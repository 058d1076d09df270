//! The pathway drawing: SVG structure, and the PNG drawn from it with the embedded font.

mod common;

use attrib::graph::Attribution;
use attrib::render::{layout, parse_svg, pathway_svg, svg_to_png, PNG_SCALE, TARGET_ID};
use common::synthetic::{attribution, by_id, nodes, permuted_score, texts, NASTY};
use resvg::tiny_skia::Pixmap;
use resvg::usvg::{self, roxmltree};

/// An attribution with `layers` layers whose node scores are a permutation of
/// `0, 0.25, …, 0.25·2L` (all distinct, one of them zero).
fn synthetic(layers: usize, prompt: &str) -> Attribution {
    let n = 2 * layers + 1;
    let nodes = nodes(layers, |k| {
        let score = permuted_score(k, n);
        let signed = if k % 3 == 0 { -score } else { score };
        (score, signed, vec![score / 2.0; 4])
    });
    let tokens = vec![
        "<|im_start|>".into(),
        "user".into(),
        "\n".into(),
        " &".into(),
    ];
    attribution(prompt, tokens, 0, nodes)
}

fn cases() -> Vec<Attribution> {
    vec![
        synthetic(3, NASTY),
        synthetic(28, NASTY),
        synthetic(24, "The capital of France is"),
    ]
}

#[test]
fn svg_parses_with_the_embedded_font_at_the_layout_size() {
    for a in cases() {
        let tree = parse_svg(&pathway_svg(&a)).expect("usvg parses the SVG");
        let lay = layout(&a);
        assert_eq!(tree.size().width() as f64, lay.width);
        assert_eq!(tree.size().height() as f64, lay.height);
        assert_eq!(lay.boxes.len(), a.nodes.len() + 1);
    }
}

#[test]
fn every_node_has_a_box_and_its_name_as_text() {
    for a in cases() {
        let svg = pathway_svg(&a);
        let doc = roxmltree::Document::parse(&svg).unwrap();
        let texts = texts(&doc);
        for node in &a.nodes {
            assert!(by_id(&doc, &format!("node-{}", node.id)).has_tag_name("rect"));
            assert!(texts.contains(&node.id), "{} is not shown", node.id);
            assert!(texts.contains(&format!("{:.4}", node.score)));
        }
        assert!(by_id(&doc, &format!("node-{TARGET_ID}")).has_tag_name("rect"));
        assert!(texts.contains(&"logits \" Paris\"".to_owned()));
        for i in 0..a.nodes.len() / 2 {
            assert!(texts.contains(&format!("L{i}")));
        }
    }
}

#[test]
fn prompt_markup_is_escaped_and_line_breaks_shown() {
    let svg = pathway_svg(&synthetic(3, NASTY));
    assert!(!svg.contains("<|im_start|>"));
    let doc = roxmltree::Document::parse(&svg).unwrap();
    let title = &texts(&doc)[0];
    assert_eq!(
        title,
        "\"<|im_start|>user⏎\"a & b\"\" → \" Paris\" (logit 14.59)"
    );
}

#[test]
fn box_colour_follows_the_score() {
    let a = synthetic(28, NASTY);
    let svg = pathway_svg(&a);
    let doc = roxmltree::Document::parse(&svg).unwrap();
    let fill = |id: &str| {
        by_id(&doc, &format!("node-{id}"))
            .attribute("fill")
            .unwrap()
    };
    let by_score = |pick: fn(f64, f64) -> bool| {
        let n = a
            .nodes
            .iter()
            .reduce(|x, y| if pick(y.score, x.score) { y } else { x });
        n.unwrap().id.clone()
    };
    let (max, min) = (by_score(|y, x| y > x), by_score(|y, x| y < x));
    assert_ne!(fill(&max), fill(&min));
    assert_ne!(fill(&max), "#ffffff");
    assert_ne!(fill(&min), "#ffffff");
}

#[test]
fn edge_width_grows_with_the_source_score() {
    for a in cases() {
        let svg = pathway_svg(&a);
        let doc = roxmltree::Document::parse(&svg).unwrap();
        let mut edges: Vec<(f64, f64)> = doc
            .descendants()
            .filter_map(|e| {
                let id = e.attribute("id")?.strip_prefix("edge-")?;
                let source = id.split('-').next().unwrap();
                let width: f64 = e.attribute("stroke-width")?.parse().unwrap();
                Some((a.node(source).unwrap().score, width))
            })
            .collect();
        assert_eq!(edges.len(), a.nodes.len(), "one edge out of every node");
        edges.sort_by(|x, y| x.0.total_cmp(&y.0));
        assert!(edges[0].1 >= 1.0, "the thinnest edge stays visible");
        for pair in edges.windows(2) {
            assert!(pair[1].1 > pair[0].1, "{pair:?}");
        }
    }
}

#[test]
fn long_text_is_cut_to_fit_the_canvas() {
    let mut a = synthetic(3, &"A rather long prompt, WWW MMM. ".repeat(30));
    a.target_token = "W".repeat(80);
    a.model = "some-org/".to_owned() + &"W".repeat(120);
    let svg = pathway_svg(&a);
    let doc = roxmltree::Document::parse(&svg).unwrap();
    assert!(texts(&doc)[0].contains('…'));
    let tree = parse_svg(&svg).unwrap();
    let width = tree.size().width();
    fn check(group: &usvg::Group, width: f32) {
        for node in group.children() {
            match node {
                usvg::Node::Group(g) => check(g, width),
                usvg::Node::Text(t) => {
                    let b = t.abs_bounding_box();
                    assert!(
                        b.left() >= 0.0 && b.right() <= width,
                        "{b:?} leaves the canvas"
                    );
                }
                _ => {}
            }
        }
    }
    check(tree.root(), width);
}

#[test]
fn png_has_the_scaled_size_and_draws_every_box_and_the_text() {
    for a in [synthetic(3, NASTY), synthetic(28, NASTY)] {
        let png = svg_to_png(&pathway_svg(&a)).unwrap();
        let img = Pixmap::decode_png(&png).unwrap();
        let lay = layout(&a);
        assert_eq!(img.width(), (lay.width * PNG_SCALE as f64).ceil() as u32);
        assert_eq!(img.height(), (lay.height * PNG_SCALE as f64).ceil() as u32);
        let s = PNG_SCALE as f64;
        // Pixels in a rectangle given in SVG units whose colour passes `keep`.
        let count = |x: f64, y: f64, w: f64, h: f64, keep: fn([u8; 3]) -> bool| {
            let (x0, y0) = ((x * s) as u32, (y * s) as u32);
            let (x1, y1) = (((x + w) * s) as u32, ((y + h) * s) as u32);
            (y0..y1)
                .flat_map(|py| (x0..x1).map(move |px| (px, py)))
                .filter(|&(px, py)| {
                    let p = img.pixel(px, py).unwrap();
                    keep([p.red(), p.green(), p.blue()])
                })
                .count()
        };
        let not_white: fn([u8; 3]) -> bool = |c| c != [255; 3];
        let dark: fn([u8; 3]) -> bool = |c| c.iter().all(|&v| v < 80);
        assert_eq!(
            count(0.0, 0.0, 4.0, 4.0, not_white),
            0,
            "the background is white"
        );
        for b in &lay.boxes {
            // White label glyphs on dark boxes aside, the box is filled.
            let inner = count(b.x + 2.0, b.y + 2.0, b.w - 4.0, b.h - 4.0, not_white);
            let area = (b.w - 4.0) * s * (b.h - 4.0) * s;
            assert!(inner as f64 > 0.8 * area, "{} is not filled", b.id);
        }
        // The title's glyphs are drawn, so the embedded font was found.
        assert!(
            count(20.0, 14.0, 300.0, 20.0, dark) > 200,
            "no title text drawn"
        );
        let first = &lay.boxes[0];
        let label = count(first.x + 4.0, first.y + 3.0, 80.0, first.h - 6.0, dark);
        assert!(label > 30, "no label text drawn in {}", first.id);
    }
}

#[test]
fn rendering_twice_gives_identical_bytes() {
    let a = synthetic(28, NASTY);
    let (svg1, svg2) = (pathway_svg(&a), pathway_svg(&a));
    assert_eq!(svg1, svg2);
    assert_eq!(svg_to_png(&svg1).unwrap(), svg_to_png(&svg2).unwrap());
}

#[test]
fn the_png_holds_exactly_the_rendered_pixels_as_rgb() {
    for a in cases() {
        let svg = pathway_svg(&a);
        let png = svg_to_png(&svg).unwrap();
        // IHDR follows the 8-byte signature: length, type, width, height, depth, colour type.
        assert_eq!(&png[12..16], b"IHDR");
        assert_eq!((png[24], png[25]), (8, 2), "8-bit RGB");
        // The same drawing made directly, over white, as premultiplied RGBA.
        let tree = parse_svg(&svg).unwrap();
        let size = tree.size();
        let (w, h) = (
            (size.width() * PNG_SCALE).ceil() as u32,
            (size.height() * PNG_SCALE).ceil() as u32,
        );
        let mut direct = Pixmap::new(w, h).unwrap();
        direct.fill(resvg::tiny_skia::Color::WHITE);
        let scale = resvg::tiny_skia::Transform::from_scale(PNG_SCALE, PNG_SCALE);
        resvg::render(&tree, scale, &mut direct.as_mut());
        let decoded = Pixmap::decode_png(&png).unwrap();
        assert_eq!((decoded.width(), decoded.height()), (w, h));
        assert!(
            decoded.data() == direct.data(),
            "the PNG differs from the drawing"
        );
        assert!(direct.data().chunks_exact(4).any(|p| p[..3] != [255; 3]));
    }
}

#[test]
fn all_zero_scores_still_render() {
    let mut a = synthetic(3, "x");
    a.nodes.iter_mut().for_each(|n| n.score = 0.0);
    let svg = pathway_svg(&a);
    assert!(!svg.contains("NaN"));
    assert!(svg_to_png(&svg).is_ok());
}

#[test]
fn invalid_svg_is_an_error() {
    assert!(svg_to_png("<svg").is_err());
}
