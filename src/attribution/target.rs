//! What is attributed: a function of the logits at one position (by default the last): a
//! token's logit, log-probability or probability, optionally minus a contrast token's.

use std::fmt;
use std::str::FromStr;

use burn::tensor::activation::{log_softmax, softmax};
use burn::tensor::{backend::Backend, Tensor};

/// Which token's score is the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Target {
    /// The argmax next token (the model's prediction).
    #[default]
    Predicted,
    /// A given token id.
    Id(u32),
}

impl Target {
    /// The target token id, given the logits at the target position.
    pub fn resolve(self, logits: &[f32]) -> u32 {
        match self {
            Target::Predicted => argmax(logits),
            Target::Id(id) => id,
        }
    }
}

/// How a token is scored from the logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Metric {
    /// The raw logit (the seed's target).
    #[default]
    Logit,
    /// `log_softmax(logits)[token]`.
    Logprob,
    /// `softmax(logits)[token]`.
    Prob,
}

impl Metric {
    /// The name used by `--metric` and in the JSON.
    pub fn name(self) -> &'static str {
        match self {
            Metric::Logit => "logit",
            Metric::Logprob => "logprob",
            Metric::Prob => "prob",
        }
    }

    /// The metric of every token, from `[vocab]` logits (keeps the autodiff graph).
    pub fn apply<B: Backend>(self, logits: Tensor<B, 1>) -> Tensor<B, 1> {
        match self {
            Metric::Logit => logits,
            Metric::Logprob => log_softmax(logits, 0),
            Metric::Prob => softmax(logits, 0),
        }
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Metric {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "logit" => Ok(Metric::Logit),
            "logprob" => Ok(Metric::Logprob),
            "prob" => Ok(Metric::Prob),
            _ => Err(format!("--metric {s:?}: use logit, logprob or prob")),
        }
    }
}

/// The scalar whose gradient is attributed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Objective {
    /// The token scored.
    pub token: Target,
    /// A token whose score is subtracted (a logit difference with `Metric::Logit`).
    pub contrast: Option<u32>,
    /// How tokens are scored.
    pub metric: Metric,
    /// The position whose next-token logits are used (default: the last).
    pub position: Option<usize>,
}

impl Objective {
    /// The position of a prompt of `seq` tokens that the objective reads.
    pub fn position_in(&self, seq: usize) -> usize {
        self.position.unwrap_or(seq - 1)
    }

    /// `metric(logits)[target] − metric(logits)[contrast]`, a `[1]` tensor.
    ///
    /// # Shapes
    /// - `logits`: `[vocab]` at the objective's position
    pub fn value<B: Backend>(&self, logits: Tensor<B, 1>, target_id: u32) -> Tensor<B, 1> {
        let scored = self.metric.apply(logits);
        let target = scored.clone().narrow(0, target_id as usize, 1);
        match self.contrast {
            Some(c) => target - scored.narrow(0, c as usize, 1),
            None => target,
        }
    }
}

/// The index of the largest value; the first one on ties (as `torch.argmax`).
pub fn argmax(values: &[f32]) -> u32 {
    let mut best = 0;
    for (i, v) in values.iter().enumerate() {
        if *v > values[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_takes_the_first_maximum() {
        assert_eq!(argmax(&[0.0, 3.0, 1.0, 3.0]), 1);
        assert_eq!(Target::Id(7).resolve(&[1.0]), 7);
        assert_eq!(Target::Predicted.resolve(&[1.0, 2.0]), 1);
    }

    #[test]
    fn metrics_round_trip_their_names() {
        for m in [Metric::Logit, Metric::Logprob, Metric::Prob] {
            assert_eq!(m.name().parse::<Metric>(), Ok(m));
        }
        assert!("loss".parse::<Metric>().is_err());
    }

    #[test]
    fn objective_values_by_hand() {
        type B = burn::backend::NdArray<f32>;
        let logits = || Tensor::<B, 1>::from_floats([1.0, 2.0, 0.5], &Default::default());
        let value = |o: Objective| o.value(logits(), 1).into_scalar();
        let logit = Objective::default();
        assert_eq!(value(logit), 2.0);
        let diff = Objective {
            contrast: Some(0),
            ..logit
        };
        assert_eq!(value(diff), 1.0);
        let z: f32 = [1.0f32, 2.0, 0.5].iter().map(|x| x.exp()).sum();
        let prob = Objective {
            metric: Metric::Prob,
            ..logit
        };
        assert!((value(prob) - 2f32.exp() / z).abs() < 1e-6);
        let logprob = Objective {
            metric: Metric::Logprob,
            ..logit
        };
        assert!((value(logprob) - (2.0 - z.ln())).abs() < 1e-6);
    }
}
