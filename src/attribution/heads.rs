//! Attention heads as nodes, from the `HeadOut` site (the input of o_proj).
//!
//! Head h's slice `z_h` of o_proj's input reaches the residual stream as `c_h = z_h · W_o[h]`
//! (o_proj has no bias), so the attention output is `Σ_h c_h`. Two scores per head:
//! - signed: `Σ z_h ⊙ g(z_h)`, its first-order effect; the heads of a layer sum to the
//!   attention node's signed sum, since `Σ z ⊙ g(z) = Σ (z W) ⊙ g(a)`;
//! - score: `‖c_h ⊙ g(a)‖₂`, the seed's norm applied to the head's contribution.

use burn::tensor::{backend::Backend, Tensor};

use crate::model::matmul::HeadParts;

/// One head's scores.
#[derive(Debug, Clone, PartialEq)]
pub struct HeadScore {
    /// Layer.
    pub layer: usize,
    /// Head within the layer.
    pub head: usize,
    /// `Σ z_h ⊙ g(z_h)`.
    pub signed: f64,
    /// `‖c_h ⊙ g(a)‖₂` over positions and hidden dims.
    pub score: f64,
    /// `‖c_h ⊙ g(a)‖₂` at each position.
    pub per_position: Vec<f64>,
}

impl HeadScore {
    /// `L{layer}_H{head}`.
    pub fn id(&self) -> String {
        format!("L{}_H{}", self.layer, self.head)
    }
}

/// The scores of a layer's heads.
///
/// # Shapes
/// - `z`, `grad_z`: `[1, seq, heads·head_dim]` (the `HeadOut` activation and its gradient)
/// - `o_proj`: `[hidden, heads·head_dim]` (PyTorch's `[d_out, d_in]` layout, in any
///   precision the model keeps its weights in)
/// - `grad_out`: `[1, seq, hidden]`, the gradient at the attention output
pub fn layer_heads<B: Backend>(
    layer: usize,
    heads: usize,
    z: Tensor<B, 3>,
    grad_z: Tensor<B, 3>,
    (o_proj, parts): (Tensor<B, 2>, Option<&HeadParts>),
    grad_out: Tensor<B, 3>,
) -> Result<Vec<HeadScore>, String> {
    let [_, seq, width] = z.dims();
    let hidden = o_proj.dims()[0];
    let head_dim = width / heads;
    // Signed effects: Σ over positions and the head's columns.
    let signed = to_vec(
        (z.clone() * grad_z)
            .reshape([seq, heads, head_dim])
            .sum_dim(2)
            .sum_dim(0)
            .reshape([heads]),
    )?;
    // Each head's contribution `z_h · W_o[:, h]ᵀ`, times the gradient, squared and summed
    // over the hidden dims: from the contributions the forward pass noted in `parts` for this
    // `z`, or in one pass over o_proj, where the backend has kernels for them (which read a
    // bf16 or f16 o_proj as stored); else as one 2-D product of column blocks (views, read in
    // place) per head, in the activations' precision.
    let z = z.reshape([seq, width]);
    let grad_out = grad_out.reshape([seq, hidden]);
    let squares = match crate::model::matmul::head_squares(
        z.clone(),
        grad_out.clone(),
        heads,
        o_proj.clone(),
        parts,
    ) {
        Some(squares) => squares,
        None => {
            let o_proj = crate::model::matmul::weight_as(o_proj, z.dtype());
            let per_position: Vec<Tensor<B, 2>> = (0..heads)
                .map(|h| {
                    let columns = h * head_dim..(h + 1) * head_dim;
                    let z_h = z.clone().slice([0..seq, columns.clone()]);
                    let w_h = o_proj.clone().slice([0..hidden, columns]);
                    (z_h.matmul(w_h.transpose()) * grad_out.clone())
                        .square()
                        .sum_dim(1)
                        .reshape([1, seq])
                })
                .collect();
            to_vec(Tensor::cat(per_position, 0))?
        }
    };
    Ok((0..heads)
        .map(|h| {
            let row = &squares[h * seq..(h + 1) * seq];
            HeadScore {
                layer,
                head: h,
                signed: signed[h] as f64,
                score: row.iter().map(|&s| s as f64).sum::<f64>().sqrt(),
                per_position: row.iter().map(|&s| (s as f64).sqrt()).collect(),
            }
        })
        .collect())
}

/// Edges from each head of a layer to the nodes downstream of its attention output:
/// `Σ c_h ⊙ g_in(v)`, per position too. A layer's head edges into v sum to the edge
/// `L{layer}_Attn → v`, since the heads' contributions sum to the attention output.
///
/// # Shapes
/// - `z`: `[1, seq, heads·head_dim]`, `o_proj`: `[hidden, heads·head_dim]`
/// - `targets`: `(node id, g_in)` with `g_in` `[1, seq, hidden]`
pub fn layer_head_edges<B: Backend>(
    layer: usize,
    heads: usize,
    z: Tensor<B, 3>,
    o_proj: Tensor<B, 2>,
    targets: &[(String, Tensor<B, 3>)],
) -> Result<Vec<crate::attribution::EdgeScore>, String> {
    let [_, seq, width] = z.dims();
    let hidden = o_proj.dims()[0];
    let head_dim = width / heads;
    let z = z.reshape([seq, heads, head_dim]).swap_dims(0, 1);
    // [heads, seq, hidden]: each head's contribution to the residual stream.
    let contribution = z.matmul(per_head(o_proj, heads, head_dim));
    let mut edges = Vec::with_capacity(heads * targets.len());
    if targets.is_empty() {
        return Ok(edges);
    }
    // dots[s, h, t] = Σ_d c_h[s, d] · g_t[s, d]: one batched matmul over positions,
    // [seq, heads, hidden] · [seq, hidden, targets].
    let grads: Vec<Tensor<B, 3>> = targets
        .iter()
        .map(|(_, g)| g.clone().reshape([1, seq, hidden]))
        .collect();
    let grads = Tensor::cat(grads, 0).permute([1, 2, 0]);
    let dots = to_vec(contribution.swap_dims(0, 1).matmul(grads))?;
    let n = targets.len();
    let per_target: Vec<Vec<f32>> = (0..n)
        .map(|t| {
            let mut v = Vec::with_capacity(heads * seq);
            for h in 0..heads {
                for p in 0..seq {
                    v.push(dots[(p * heads + h) * n + t]);
                }
            }
            v
        })
        .collect();
    for h in 0..heads {
        for ((target, _), dots) in targets.iter().zip(&per_target) {
            let per_position: Vec<f64> = dots[h * seq..(h + 1) * seq]
                .iter()
                .map(|&d| d as f64)
                .collect();
            edges.push(crate::attribution::EdgeScore {
                source: format!("L{layer}_H{h}"),
                target: target.clone(),
                score: per_position.iter().sum(),
                per_position,
            });
        }
    }
    Ok(edges)
}

/// o_proj's `[hidden, heads·head_dim]` weight as `[heads, head_dim, hidden]`: head h's block
/// of `W_oᵀ`. A reshape of the contiguous weight and a permutation, both views, so a backend
/// with strided matmul never copies the weight.
fn per_head<B: Backend>(o_proj: Tensor<B, 2>, heads: usize, head_dim: usize) -> Tensor<B, 3> {
    let hidden = o_proj.dims()[0];
    o_proj.reshape([hidden, heads, head_dim]).permute([1, 2, 0])
}

fn to_vec<B: Backend, const D: usize>(t: Tensor<B, D>) -> Result<Vec<f32>, String> {
    t.into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .map_err(|e| format!("cannot read head scores back: {e:?}"))
}
