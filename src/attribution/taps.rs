//! Zero taps: the probe that makes activations differentiable.
//!
//! burn keeps gradients only for leaves, so the gradient at an intermediate activation `a`
//! cannot be asked for directly. At every site the probe returns `a + z`, with `z` a zero leaf
//! that requires grad: the forward is unchanged, and after `backward` the gradient of `z` is
//! exactly d(target)/d(a).

use burn::tensor::backend::AutodiffBackend;
use burn::tensor::Tensor;

use crate::model::{Probe, Site};

/// One tapped site: the activation's value and the zero leaf added to it.
pub struct Tap<B: AutodiffBackend> {
    /// Where.
    pub site: Site,
    /// The activation, outside the autodiff graph. `[batch, seq, width]`.
    pub activation: Tensor<B::InnerBackend, 3>,
    /// The zero leaf whose gradient is d(target)/d(activation).
    pub zero: Tensor<B, 3>,
}

/// A probe that taps every site it is called at, or only those a filter accepts.
pub struct Taps<B: AutodiffBackend> {
    /// The taps, in the order the forward visited them.
    pub taps: Vec<Tap<B>>,
    /// Which sites to tap (all when `None`).
    filter: Option<fn(Site) -> bool>,
}

impl<B: AutodiffBackend> Default for Taps<B> {
    fn default() -> Self {
        Self {
            taps: Vec::new(),
            filter: None,
        }
    }
}

impl<B: AutodiffBackend> Taps<B> {
    /// A probe that taps only the sites `keep` accepts and passes the others through.
    pub fn only(keep: fn(Site) -> bool) -> Self {
        Self {
            taps: Vec::new(),
            filter: Some(keep),
        }
    }
}

impl<B: AutodiffBackend> Probe<B> for Taps<B> {
    fn at(&mut self, site: Site, x: Tensor<B, 3>) -> Tensor<B, 3> {
        if self.filter.is_some_and(|keep| !keep(site)) {
            return x;
        }
        // One zero seen at every index (a broadcast view): its value is never read for more
        // than "zero", and a full-size buffer per tap (hundreds of them) would be written and
        // first touched for nothing.
        let one = Tensor::<B::InnerBackend, 3>::zeros([1, 1, 1], &x.device());
        let zero = Tensor::<B, 3>::from_inner(one.expand(x.dims())).require_grad();
        self.taps.push(Tap {
            site,
            activation: x.clone().inner(),
            zero: zero.clone(),
        });
        qwen2_burn::fused::add_zero(x, zero)
    }
}
