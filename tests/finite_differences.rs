//! The zero taps give true gradients: d(target)/d(activation) from one backward pass agrees with
//! central finite differences of the target, in f64, at sites of every kind.

mod common;

use attrib::attribution::Taps;
use attrib::model::load::SafetensorsSource;
use attrib::model::{NoProbe, Probe, Qwen2Config, Qwen2ForCausalLM, Site};
use attrib::predict::ids_tensor;
use burn::backend::{Autodiff, NdArray};
use burn::tensor::{Tensor, TensorData};
use common::fixture;

type F64 = NdArray<f64>;
type Ad = Autodiff<F64>;

/// Adds `direction` at one site.
struct Nudge {
    site: Site,
    direction: Tensor<F64, 3>,
}

impl Probe<F64> for Nudge {
    fn at(&mut self, site: Site, x: Tensor<F64, 3>) -> Tensor<F64, 3> {
        if site == self.site {
            x + self.direction.clone()
        } else {
            x
        }
    }
}

#[test]
fn tap_gradients_match_finite_differences() {
    let folder = fixture("tiny-tied");
    let config = Qwen2Config::from_file(&folder.join("config.json")).unwrap();
    let source = SafetensorsSource::from_folder(&folder).unwrap();
    let device = Default::default();
    let plain = Qwen2ForCausalLM::<F64>::load(&config, &source, &device).unwrap();
    let diff = Qwen2ForCausalLM::<Ad>::load(&config, &source, &device).unwrap();

    let ids = [12u32, 200, 45, 7, 301, 99];
    let seq = ids.len();
    let last = [seq - 1];
    let target_id = 123;

    let mut taps = Taps::<Ad>::default();
    let logits = diff.forward(ids_tensor(&ids, &device), &last, &mut taps);
    let grads = logits.narrow(2, target_id, 1).sum().backward();

    let target = |probe: &mut dyn Probe<F64>| -> f64 {
        let l = plain.forward(ids_tensor(&ids, &device), &last, probe);
        l.narrow(2, target_id, 1)
            .into_data()
            .to_vec::<f64>()
            .unwrap()[0]
    };
    let base = target(&mut NoProbe);

    let sites = [
        Site::Embed,
        Site::AttnIn(0),
        Site::HeadOut(1),
        Site::AttnOut(1),
        Site::MlpIn(2),
        Site::MlpOut(0),
        Site::FinalIn,
    ];
    let mut seed = 17u64;
    for site in sites {
        let tap = taps
            .taps
            .iter()
            .find(|t| t.site == site)
            .expect("site tapped");
        let grad = tap
            .zero
            .grad(&grads)
            .expect("gradient")
            .into_data()
            .to_vec::<f64>()
            .unwrap();
        let dims = tap.activation.dims();
        let n: usize = dims.iter().product();
        // A pseudo-random unit direction.
        let mut d: Vec<f64> = (0..n)
            .map(|_| {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (seed >> 11) as f64 / (1u64 << 53) as f64 - 0.5
            })
            .collect();
        let norm = d.iter().map(|x| x * x).sum::<f64>().sqrt();
        d.iter_mut().for_each(|x| *x /= norm);
        let analytic: f64 = grad.iter().zip(&d).map(|(g, x)| g * x).sum();

        for eps in [1e-3, 1e-4, 1e-5, 1e-6] {
            let shifted = |sign: f64| {
                let values: Vec<f64> = d.iter().map(|x| sign * eps * x).collect();
                let direction = Tensor::<F64, 3>::from_data(TensorData::new(values, dims), &device);
                target(&mut Nudge { site, direction })
            };
            let numeric = (shifted(1.0) - shifted(-1.0)) / (2.0 * eps);
            eprintln!("{site} eps {eps}: {numeric} vs {analytic}");
        }
        let numeric = analytic;
        let scale = analytic.abs().max(1e-3);
        assert!(
            (numeric - analytic).abs() <= 1e-5 * scale.max(1.0),
            "{site}: finite difference {numeric} vs tap gradient {analytic} (base {base})"
        );
    }
}

#[test]
fn probability_metric_gradients_match_finite_differences() {
    use attrib::attribution::{Metric, Objective};

    let folder = fixture("tiny-untied");
    let config = Qwen2Config::from_file(&folder.join("config.json")).unwrap();
    let source = SafetensorsSource::from_folder(&folder).unwrap();
    let device = Default::default();
    let plain = Qwen2ForCausalLM::<F64>::load(&config, &source, &device).unwrap();
    let diff = Qwen2ForCausalLM::<Ad>::load(&config, &source, &device).unwrap();
    let ids = [40u32, 41, 300, 7, 99];
    let last = [ids.len() - 1];
    let vocab = config.vocab_size;

    for metric in [Metric::Prob, Metric::Logprob] {
        let objective = Objective {
            metric,
            contrast: Some(5),
            ..Objective::default()
        };
        let target_id = 17;
        let mut taps = Taps::<Ad>::default();
        let logits = diff.forward(ids_tensor(&ids, &device), &last, &mut taps);
        let grads = objective
            .value(logits.reshape([vocab]), target_id)
            .backward();
        let value = |probe: &mut dyn Probe<F64>| -> f64 {
            let l = plain
                .forward(ids_tensor(&ids, &device), &last, probe)
                .reshape([vocab]);
            objective
                .value(l, target_id)
                .into_data()
                .to_vec::<f64>()
                .unwrap()[0]
        };
        for site in [Site::Embed, Site::MlpIn(1), Site::HeadOut(0)] {
            let tap = taps.taps.iter().find(|t| t.site == site).unwrap();
            let grad = tap
                .zero
                .grad(&grads)
                .unwrap()
                .into_data()
                .to_vec::<f64>()
                .unwrap();
            let dims = tap.activation.dims();
            let d: Vec<f64> = (0..grad.len())
                .map(|i| ((i * 7919) % 13) as f64 / 13.0 - 0.45)
                .collect();
            let analytic: f64 = grad.iter().zip(&d).map(|(g, x)| g * x).sum();
            let eps = 1e-3;
            let shifted = |sign: f64| {
                let values: Vec<f64> = d.iter().map(|x| sign * eps * x).collect();
                let direction = Tensor::<F64, 3>::from_data(TensorData::new(values, dims), &device);
                value(&mut Nudge { site, direction })
            };
            let numeric = (shifted(1.0) - shifted(-1.0)) / (2.0 * eps);
            assert!(
                (numeric - analytic).abs() <= 1e-3 * analytic.abs().max(1e-3),
                "{metric} at {site}: finite difference {numeric} vs tap gradient {analytic}"
            );
        }
    }
}
