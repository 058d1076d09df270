//! The fused operations as [`FlexOp`]s: forward and backward on flex's memory.

use std::sync::Arc;

use burn::backend::flex::FlexTensor;
use burn::tensor::{backend::Backend, Tensor};

use super::kernels;
use crate::flex_ops::{
    dense, dense_constant, dense_grad, dims, elems, from_vec, primitive, run, tensor, FlexOp,
};

/// Runs a one-input op, handing back the input when it does not apply.
fn run1<B: Backend, Op: FlexOp<1>, const D: usize, const E: usize>(
    op: Option<Op>,
    x: Tensor<B, D>,
) -> Result<Tensor<B, E>, Tensor<B, D>> {
    let Some(op) = op else { return Err(x) };
    run::<B, Op, 1>(op, [primitive(x)])
        .map(tensor)
        .map_err(|[x]| tensor(x))
}

/// Runs a two-input op, handing back the inputs when it does not apply.
#[allow(clippy::result_large_err)]
fn run2<B: Backend, Op: FlexOp<2>, const D: usize>(
    op: Op,
    a: Tensor<B, D>,
    b: Tensor<B, D>,
) -> Result<Tensor<B, D>, (Tensor<B, D>, Tensor<B, D>)> {
    run::<B, Op, 2>(op, [primitive(a), primitive(b)])
        .map(tensor)
        .map_err(|[a, b]| (tensor(a), tensor(b)))
}

/// See [`super::swiglu`].
#[allow(clippy::result_large_err)]
pub fn swiglu<B: Backend, const D: usize>(
    gate: Tensor<B, D>,
    up: Tensor<B, D>,
) -> Result<Tensor<B, D>, (Tensor<B, D>, Tensor<B, D>)> {
    run2(SwiGlu, gate, up)
}

#[derive(Debug)]
struct SwiGlu;

impl FlexOp<2> for SwiGlu {
    /// The gate and up projections.
    type Saved = (FlexTensor, FlexTensor);

    fn forward(&self, [g, u]: [&FlexTensor; 2]) -> Option<(FlexTensor, Self::Saved)> {
        let shape = dims(g);
        if shape != dims(u) {
            return None;
        }
        let (g, u) = (dense(g)?, dense(u)?);
        let y = kernels::swiglu(elems(&g), elems(&u));
        Some((from_vec(y, &shape), (g, u)))
    }

    fn backward(
        &self,
        (g, u): &Self::Saved,
        grad: &FlexTensor,
        _: [bool; 2],
    ) -> [Option<FlexTensor>; 2] {
        let d = dense_grad(grad);
        let (dg, du) = kernels::swiglu_backward(elems(g), elems(u), elems(&d));
        let shape = dims(g);
        [Some(from_vec(dg, &shape)), Some(from_vec(du, &shape))]
    }
}

/// See [`super::masked_softmax`].
pub fn masked_softmax<B: Backend>(
    scores: Tensor<B, 4>,
    scale: f64,
    mask: &Tensor<B, 2>,
) -> Result<Tensor<B, 4>, Tensor<B, 4>> {
    let mask = dense_constant::<B>(&primitive(mask.clone()));
    let op = mask.map(|mask| MaskedSoftmax {
        scale: scale as f32,
        mask,
    });
    run1(op, scores)
}

#[derive(Debug)]
struct MaskedSoftmax {
    scale: f32,
    /// `[mask_rows, cols]`, added to row `r` of the scores at row `r % mask_rows`.
    mask: FlexTensor,
}

impl FlexOp<1> for MaskedSoftmax {
    /// The output, the probabilities.
    type Saved = FlexTensor;

    fn forward(&self, [s]: [&FlexTensor; 1]) -> Option<(FlexTensor, FlexTensor)> {
        let shape = dims(s);
        let (&cols, rows) = shape.split_last()?;
        let mask = dims(&self.mask);
        let rows: usize = rows.iter().product();
        if mask.len() != 2 || mask[1] != cols || mask[0] == 0 || !rows.is_multiple_of(mask[0]) {
            return None;
        }
        let s = dense(s)?;
        let p = kernels::masked_softmax(elems(&s), cols, self.scale, elems(&self.mask));
        let p = from_vec(p, &shape);
        Some((p.clone(), p))
    }

    fn backward(&self, p: &FlexTensor, grad: &FlexTensor, _: [bool; 1]) -> [Option<FlexTensor>; 1] {
        let shape = dims(p);
        let dp = dense_grad(grad);
        let cols = shape[shape.len() - 1];
        let ds = kernels::masked_softmax_backward(elems(p), elems(&dp), cols, self.scale);
        [Some(from_vec(ds, &shape))]
    }
}

/// See [`super::rms_norm`].
pub fn rms_norm<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    weight: Tensor<B, 1>,
    eps: f64,
) -> Result<Tensor<B, D>, Tensor<B, D>> {
    let weight = dense_constant::<B>(&primitive(weight));
    let op = weight.map(|weight| RmsNorm {
        weight,
        eps: eps as f32,
    });
    run1(op, x)
}

#[derive(Debug)]
struct RmsNorm {
    /// `[cols]`.
    weight: FlexTensor,
    eps: f32,
}

impl FlexOp<1> for RmsNorm {
    /// The input and each row's `1 / rms`.
    type Saved = (FlexTensor, Arc<Vec<f32>>);

    fn forward(&self, [x]: [&FlexTensor; 1]) -> Option<(FlexTensor, Self::Saved)> {
        let shape = dims(x);
        if shape.last() != Some(&elems(&self.weight).len()) {
            return None;
        }
        let x = dense(x)?;
        let (y, rstd) = kernels::rms_norm(elems(&x), elems(&self.weight), self.eps);
        Some((from_vec(y, &shape), (x, Arc::new(rstd))))
    }

    fn backward(
        &self,
        (x, rstd): &Self::Saved,
        grad: &FlexTensor,
        _: [bool; 1],
    ) -> [Option<FlexTensor>; 1] {
        let dy = dense_grad(grad);
        let dx = kernels::rms_norm_backward(elems(x), elems(&self.weight), rstd, elems(&dy));
        [Some(from_vec(dx, &dims(x)))]
    }
}

/// See [`super::rope_heads`].
pub fn rope_heads<B: Backend>(
    x: Tensor<B, 3>,
    heads: usize,
    cos: Tensor<B, 2>,
    sin: Tensor<B, 2>,
) -> Result<Tensor<B, 4>, Tensor<B, 3>> {
    let table = |t: Tensor<B, 2>| dense_constant::<B>(&primitive(t));
    let op = table(cos)
        .zip(table(sin))
        .map(|(cos, sin)| RopeHeads { heads, cos, sin });
    run1(op, x)
}

#[derive(Debug)]
struct RopeHeads {
    heads: usize,
    /// `[seq, head_dim]`.
    cos: FlexTensor,
    /// `[seq, head_dim]`.
    sin: FlexTensor,
}

impl RopeHeads {
    /// `[batch, seq, heads, head_dim]` for an input of `[batch, seq, heads · head_dim]`.
    fn dims(&self, x: &FlexTensor) -> Option<[usize; 4]> {
        let [batch, seq, width] = dims(x)[..] else {
            return None;
        };
        let table = dims(&self.cos);
        let d = width / self.heads.max(1);
        let fits = self.heads > 0
            && d.is_multiple_of(2)
            && width == self.heads * d
            && table == [seq, d]
            && dims(&self.sin) == table;
        fits.then_some([batch, seq, self.heads, d])
    }
}

impl FlexOp<1> for RopeHeads {
    /// The input's dimensions, split by head.
    type Saved = [usize; 4];

    fn forward(&self, [x]: [&FlexTensor; 1]) -> Option<(FlexTensor, [usize; 4])> {
        let shape = self.dims(x)?;
        let [batch, seq, heads, d] = shape;
        let x = dense(x)?;
        let y = kernels::rope_heads(elems(&x), shape, elems(&self.cos), elems(&self.sin));
        Some((from_vec(y, &[batch, heads, seq, d]), shape))
    }

    fn backward(
        &self,
        shape: &[usize; 4],
        grad: &FlexTensor,
        _: [bool; 1],
    ) -> [Option<FlexTensor>; 1] {
        let [batch, seq, heads, d] = *shape;
        let dy = dense_grad(grad);
        let dx =
            kernels::rope_heads_backward(elems(&dy), *shape, elems(&self.cos), elems(&self.sin));
        [Some(from_vec(dx, &[batch, seq, heads * d]))]
    }
}

/// See [`super::merge_heads`].
pub fn merge_heads<B: Backend>(x: Tensor<B, 4>) -> Result<Tensor<B, 3>, Tensor<B, 4>> {
    run1(Some(MergeHeads), x)
}

#[derive(Debug)]
struct MergeHeads;

impl FlexOp<1> for MergeHeads {
    /// The input's dimensions, `[batch, heads, seq, head_dim]`.
    type Saved = [usize; 4];

    fn forward(&self, [x]: [&FlexTensor; 1]) -> Option<(FlexTensor, [usize; 4])> {
        let shape: [usize; 4] = dims(x).try_into().ok()?;
        let [batch, heads, seq, d] = shape;
        let x = dense(x)?;
        let y = kernels::permute_heads(elems(&x), shape, false);
        Some((from_vec(y, &[batch, seq, heads * d]), shape))
    }

    fn backward(
        &self,
        shape: &[usize; 4],
        grad: &FlexTensor,
        _: [bool; 1],
    ) -> [Option<FlexTensor>; 1] {
        let dy = dense_grad(grad);
        let dx = kernels::permute_heads(elems(&dy), *shape, true);
        [Some(from_vec(dx, shape))]
    }
}

/// See [`super::add_zero`].
#[allow(clippy::result_large_err)]
pub fn add_zero<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    zero: Tensor<B, D>,
) -> Result<Tensor<B, D>, (Tensor<B, D>, Tensor<B, D>)> {
    run2(AddZero, x, zero)
}

#[derive(Debug)]
struct AddZero;

impl FlexOp<2> for AddZero {
    type Saved = ();

    fn forward(&self, [x, zero]: [&FlexTensor; 2]) -> Option<(FlexTensor, ())> {
        (dims(x) == dims(zero) && x.dtype() == zero.dtype()).then(|| (x.clone(), ()))
    }

    fn backward(&self, _: &(), grad: &FlexTensor, wanted: [bool; 2]) -> [Option<FlexTensor>; 2] {
        wanted.map(|w| w.then(|| grad.clone()))
    }
}
