//! The attribution equals the reference on every backend compiled into this test binary:
//! ndarray by default; CI adds `--features flex,wgpu,tch` (wgpu on Mesa's software Vulkan, tch
//! on CPU libtorch). As the binary runs it, the logit lens runs beside the backward pass, at
//! the same time: every backend must take both at once.

mod common;

use attrib::attribution::{attribute, Objective, Options, Request};
use attrib::backends::{compiled, Selection};
use attrib::progress::Silent;
use attrib::source::ModelFiles;
use common::{fixture, reference};

#[test]
fn attribution_equals_the_reference_on_every_compiled_backend() {
    let name = "tiny-untied";
    let files = ModelFiles::folder(name, fixture(name));
    let config = files.read_config().unwrap();
    let reference = reference(name);
    let cases: Vec<_> = reference.cases.iter().filter(|c| !c.chat).take(4).collect();
    for kind in compiled() {
        let selection = Selection::parse(Some(kind.name()), None, None).unwrap();
        for case in &cases {
            let request = Request {
                files: &files,
                config: &config,
                ids: &case.input_ids,
                objective: Objective::default(),
                options: Options {
                    lens: true,
                    ..Options::default()
                },
            };
            // In a pool, as the binary runs: the lens beside the backward pass.
            let out = common::in_a_pool(|| {
                attribute(&selection, &request, &mut Silent, &mut |_| {}).unwrap()
            });
            let label = format!("{kind} {:?}", case.prompt);
            assert_eq!(out.predicted_id, case.top5[0].id, "{label}");
            assert!(out.timings.lens_beside_backward, "{label}");
            common::check_lens(&label, &out.lens, &case.lens, 5e-5);
            assert!(
                (out.target_logit - case.top5[0].logit as f64).abs() < 1e-4,
                "{label}"
            );
            for ((site, got), want) in out.nodes.iter().zip(&case.nodes) {
                assert_eq!(site.to_string(), want.id);
                let rel = (got.score - want.score).abs() / want.score;
                assert!(
                    rel <= 1e-4,
                    "{label} {}: {} vs {}",
                    want.id,
                    got.score,
                    want.score
                );
                let signed_err =
                    (got.signed - want.signed).abs() / want.signed.abs().max(want.score);
                assert!(
                    signed_err <= 1e-4,
                    "{label} {}: signed {} vs {}",
                    want.id,
                    got.signed,
                    want.signed
                );
            }
        }
    }
}
