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
    /// Zero leaves made ahead of the forward pass ([`Taps::prepare`]), by site.
    prepared: Vec<(Site, Tensor<B, 3>)>,
}

impl<B: AutodiffBackend> Default for Taps<B> {
    fn default() -> Self {
        Self {
            taps: Vec::new(),
            filter: None,
            prepared: Vec::new(),
        }
    }
}

impl<B: AutodiffBackend> Taps<B> {
    /// A probe that taps only the sites `keep` accepts and passes the others through.
    pub fn only(keep: fn(Site) -> bool) -> Self {
        Self {
            filter: Some(keep),
            ..Self::default()
        }
    }

    /// Makes the zero leaves of the sites the forward pass will tap (each with its
    /// activation's dims) before it runs, in one autodiff graph.
    ///
    /// burn gives each new leaf a graph of its own and merges two graphs when an operation
    /// joins them, moving every node of one into the other, whichever it picks (a hash map's
    /// order): a leaf made at its site joins the forward pass's graph, which by then holds the
    /// whole model so far, and half the time that whole graph was moved. On the 1.5B model at 5
    /// tokens the 142 taps of a full run took 12 ms that way (up to 0.5 ms each in the last
    /// layers); joined here while the graph is small, each costs microseconds. A site without
    /// a prepared leaf of its activation's dims gets one made where it is tapped.
    pub fn prepare(&mut self, sites: &[(Site, [usize; 3])], device: &B::Device) {
        let wanted = |site: Site| self.filter.is_none_or(|keep| keep(site));
        self.prepared = sites
            .iter()
            .filter(|(site, _)| wanted(*site))
            .map(|&(site, dims)| (site, zero_leaf::<B>(dims, device)))
            .collect();
        // One operation whose inputs are every leaf (a value of each, discarded) puts them
        // all in one graph; it is no ancestor of any output, so no backward pass visits it.
        let corners: Vec<Tensor<B, 1>> = self
            .prepared
            .iter()
            .filter(|(_, z)| z.dims().iter().all(|&d| d > 0))
            .map(|(_, z)| z.clone().slice([0..1, 0..1, 0..1]).reshape([1]))
            .collect();
        if corners.len() > 1 {
            drop(Tensor::cat(corners, 0));
        }
    }
}

/// A zero leaf that requires grad, of `dims`: one zero seen at every index (a broadcast view),
/// its value never read for more than "zero"; a full-size buffer per tap (hundreds of them)
/// would be written and first touched for nothing.
fn zero_leaf<B: AutodiffBackend>(dims: [usize; 3], device: &B::Device) -> Tensor<B, 3> {
    let one = Tensor::<B::InnerBackend, 3>::zeros([1, 1, 1], device);
    Tensor::<B, 3>::from_inner(one.expand(dims)).require_grad()
}

impl<B: AutodiffBackend> Probe<B> for Taps<B> {
    fn at(&mut self, site: Site, x: Tensor<B, 3>) -> Tensor<B, 3> {
        if self.filter.is_some_and(|keep| !keep(site)) {
            return x;
        }
        let dims = x.dims();
        let zero = match self
            .prepared
            .iter()
            .position(|(s, z)| *s == site && z.dims() == dims)
        {
            Some(at) => self.prepared.swap_remove(at).1,
            None => zero_leaf::<B>(dims, &x.device()),
        };
        self.taps.push(Tap {
            site,
            activation: x.clone().inner(),
            zero: zero.clone(),
        });
        qwen2_burn::fused::add_zero(x, zero)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, NdArray};
    use burn::tensor::TensorData;

    type B = Autodiff<NdArray<f32>>;

    /// A prepared leaf is taken by its site at its dims, once; any other tap makes its own;
    /// both give the activation's gradient.
    #[test]
    fn prepared_leaves_are_taken_by_site_and_dims_and_give_the_gradient() {
        let device = Default::default();
        let mut taps = Taps::<B>::default();
        let sites = [
            (Site::Embed, [1, 2, 3]),
            (Site::AttnIn(0), [1, 2, 3]),
            (Site::HeadOut(0), [1, 2, 4]),
        ];
        taps.prepare(&sites, &device);
        assert_eq!(taps.prepared.len(), 3);

        let tensor = |values: Vec<f32>, dims: [usize; 3]| {
            Tensor::<B, 3>::from_data(TensorData::new(values, dims), &device)
        };
        let x = tensor((0..6).map(|i| i as f32).collect(), [1, 2, 3]).require_grad();
        let a = taps.at(Site::Embed, x.clone() * 2.0);
        assert_eq!(taps.prepared.len(), 2);
        // Not the prepared dims: a leaf of its own, the prepared one left.
        let b = taps.at(Site::HeadOut(0), tensor(vec![1.0; 3], [1, 1, 3]));
        assert_eq!(taps.prepared.len(), 2);
        // A site filtered out is not tapped and takes nothing.
        let mut only = Taps::<B>::only(|s| s == Site::Embed);
        only.prepare(&sites, &device);
        assert_eq!(only.prepared.len(), 1);

        let w = tensor(vec![3.0, -1.0, 0.5, 2.0, 0.0, 1.5], [1, 2, 3]);
        let grads = ((a * w.clone()).sum() + (b * 4.0).sum()).backward();
        let g = |t: &Tap<B>| t.zero.grad(&grads).unwrap().into_data();
        assert_eq!(g(&taps.taps[0]), w.inner().into_data());
        assert_eq!(
            g(&taps.taps[1]),
            TensorData::new(vec![4.0f32; 3], [1, 1, 3])
        );
        // The activation: the tapped value.
        let want: Vec<f32> = (0..6).map(|i| 2.0 * i as f32).collect();
        assert_eq!(
            taps.taps[0].activation.clone().into_data(),
            TensorData::new(want, [1, 2, 3])
        );
    }
}
