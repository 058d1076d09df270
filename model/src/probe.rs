//! The one seam between the model and whatever observes it: [`Probe`], called at every [`Site`].

use std::fmt;
use std::str::FromStr;

use burn::tensor::{backend::Backend, Tensor};

/// A place in the forward pass where the model hands an activation to the probe.
///
/// All sites carry `[batch, seq, width]` tensors. `*In` sites sit on the branch going into a
/// sublayer (before its norm) and never on the residual skip, so what a probe adds there reaches
/// only that sublayer: this is what makes edge scores exact.
///
/// | variant | name | TransformerLens | width | taken |
/// |---|---|---|---|---|
/// | `Embed` | `embeddings` | `hook_embed` | hidden | output of the token embedding |
/// | `AttnIn(l)` | `L{l}_Attn.in` | `blocks.{l}.hook_resid_pre` | hidden | branch into layer l's input norm |
/// | `HeadOut(l)` | `L{l}_Heads` | `blocks.{l}.attn.hook_z` (flattened) | heads·head_dim | input of o_proj |
/// | `AttnOut(l)` | `L{l}_Attn` | `blocks.{l}.hook_attn_out` | hidden | after o_proj, before the residual add |
/// | `MlpIn(l)` | `L{l}_MLP.in` | `blocks.{l}.hook_resid_mid` | hidden | branch into the post-attention norm |
/// | `MlpOut(l)` | `L{l}_MLP` | `blocks.{l}.hook_mlp_out` | hidden | after down_proj, before the residual add |
/// | `FinalIn` | `logits.in` | `ln_final.hook_scale` input | hidden | residual stream entering the final norm |
///
/// `HeadOut` holds every head side by side: head h in columns `h·head_dim..(h+1)·head_dim`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Site {
    /// Output of the token embedding.
    Embed,
    /// Residual stream entering layer l's attention branch (before its norm).
    AttnIn(usize),
    /// Every head's output side by side, the input of o_proj.
    HeadOut(usize),
    /// Output of layer l's self-attention (after o_proj).
    AttnOut(usize),
    /// Residual stream entering layer l's MLP branch (before its norm).
    MlpIn(usize),
    /// Output of layer l's MLP.
    MlpOut(usize),
    /// Residual stream entering the final norm.
    FinalIn,
}

impl Site {
    /// Every site of a model with `layers` layers, in the order the forward visits them.
    pub fn all(layers: usize) -> Vec<Site> {
        let mut sites = vec![Site::Embed];
        for l in 0..layers {
            sites.extend([
                Site::AttnIn(l),
                Site::HeadOut(l),
                Site::AttnOut(l),
                Site::MlpIn(l),
                Site::MlpOut(l),
            ]);
        }
        sites.push(Site::FinalIn);
        sites
    }
}

impl fmt::Display for Site {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Site::Embed => write!(f, "embeddings"),
            Site::AttnIn(l) => write!(f, "L{l}_Attn.in"),
            Site::HeadOut(l) => write!(f, "L{l}_Heads"),
            Site::AttnOut(l) => write!(f, "L{l}_Attn"),
            Site::MlpIn(l) => write!(f, "L{l}_MLP.in"),
            Site::MlpOut(l) => write!(f, "L{l}_MLP"),
            Site::FinalIn => write!(f, "logits.in"),
        }
    }
}

/// A site name that [`Site::from_str`] does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown site {0:?} (expected embeddings, L<i>_Attn, L<i>_MLP, L<i>_Heads, L<i>_Attn.in, L<i>_MLP.in or logits.in)")]
pub struct UnknownSite(pub String);

impl FromStr for Site {
    type Err = UnknownSite;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let unknown = || UnknownSite(s.to_string());
        match s {
            "embeddings" => return Ok(Site::Embed),
            "logits.in" => return Ok(Site::FinalIn),
            _ => {}
        }
        let rest = s.strip_prefix('L').ok_or_else(unknown)?;
        let (layer, kind) = rest.split_once('_').ok_or_else(unknown)?;
        if layer.is_empty() || !layer.bytes().all(|b| b.is_ascii_digit()) {
            return Err(unknown());
        }
        let l: usize = layer.parse().map_err(|_| unknown())?;
        match kind {
            "Attn.in" => Ok(Site::AttnIn(l)),
            "Heads" => Ok(Site::HeadOut(l)),
            "Attn" => Ok(Site::AttnOut(l)),
            "MLP.in" => Ok(Site::MlpIn(l)),
            "MLP" => Ok(Site::MlpOut(l)),
            _ => Err(unknown()),
        }
    }
}

/// Observes or changes activations during a forward pass.
///
/// The model calls [`Probe::at`] exactly once per site and forward, and continues with the
/// tensor it returns, so a probe may record `x`, replace it (ablation, patching) or add to it
/// (the zero taps that attribution differentiates through).
pub trait Probe<B: Backend> {
    /// Called with the activation at `site`; returns the activation the model continues with.
    ///
    /// # Shapes
    /// - `x`: `[batch, seq, width]`, width = hidden size, or heads·head_dim at `HeadOut`.
    fn at(&mut self, site: Site, x: Tensor<B, 3>) -> Tensor<B, 3>;
}

/// The probe that does nothing: plain inference.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProbe;

impl<B: Backend> Probe<B> for NoProbe {
    #[inline]
    fn at(&mut self, _site: Site, x: Tensor<B, 3>) -> Tensor<B, 3> {
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_of_a_two_layer_model_in_forward_order() {
        let names: Vec<String> = Site::all(2).iter().map(Site::to_string).collect();
        assert_eq!(
            names,
            [
                "embeddings",
                "L0_Attn.in",
                "L0_Heads",
                "L0_Attn",
                "L0_MLP.in",
                "L0_MLP",
                "L1_Attn.in",
                "L1_Heads",
                "L1_Attn",
                "L1_MLP.in",
                "L1_MLP",
                "logits.in"
            ]
        );
    }

    #[test]
    fn display_and_from_str_round_trip() {
        for site in Site::all(12) {
            assert_eq!(site.to_string().parse::<Site>(), Ok(site));
        }
    }

    #[test]
    fn bad_names_are_refused() {
        for bad in [
            "",
            "L",
            "L_Attn",
            "Lx_MLP",
            "L1_Foo",
            "L-1_MLP",
            "embedding",
            "L1MLP",
        ] {
            assert!(bad.parse::<Site>().is_err(), "{bad:?} parsed");
        }
    }
}
