//! What is attributed: a logit at the last position.

/// Which token's logit is the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Target {
    /// The argmax next token (the model's prediction).
    #[default]
    Predicted,
    /// A given token id.
    Id(u32),
}

impl Target {
    /// The target token id, given the logits at the last position.
    pub fn resolve(self, logits: &[f32]) -> u32 {
        match self {
            Target::Predicted => argmax(logits),
            Target::Id(id) => id,
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
}
