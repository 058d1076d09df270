//! The graph beyond its nodes, from one pass's activations and gradients: the residual-stream
//! edges, the attention heads and (on request) the head → node edges.

use std::collections::HashMap;

use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use rayon::prelude::*;

use super::edges::{self, EdgeScore, LOGITS};
use super::heads::{self, HeadScore};
use crate::model::{ModelError, Qwen2ForCausalLM, Site};

/// Residual edges between the nodes, every head's scores and, with `head_edges`, the edges
/// from every head to every node downstream of its layer's attention.
///
/// `node_data`: each node's activation (or its difference from a baseline) on the host;
/// `gradients`: every tapped site's gradient, on the host and as a tensor; `head_activation`:
/// a layer's `HeadOut` activation (or its difference from a baseline).
#[allow(clippy::type_complexity)]
pub(super) fn edges_and_heads<B: Backend>(
    model: &Qwen2ForCausalLM<Autodiff<B>>,
    node_sites: &[Site],
    node_data: &[(Site, &[f32])],
    (gradients, grad_tensors): (&HashMap<Site, Vec<f32>>, &HashMap<Site, Tensor<B, 3>>),
    head_activation: &(dyn Fn(usize) -> Tensor<B, 3> + Sync),
    head_edges: bool,
    seq: usize,
) -> Result<(Vec<EdgeScore>, Vec<HeadScore>, Vec<EdgeScore>), ModelError> {
    let heads_per_layer = model.config.num_attention_heads;
    // Each layer's o_proj weight, taken here: only the backend's own tensors go to other
    // threads, nothing of the autodiff graph.
    let o_projs: Vec<_> = (model.model.layers.iter())
        .map(|block| {
            let weight = block.self_attn.o_proj.weight.val().inner();
            (weight, block.self_attn.head_parts())
        })
        .collect();
    // The edges and the layers' heads side by side (each layer's heads are a few small
    // products and reductions, most of them on one thread).
    let (edges, heads) = rayon::join(
        || edges::residual_edges(node_data, |s| gradients[&s].as_slice(), seq),
        || {
            (o_projs.par_iter().enumerate())
                .map(|(layer, (o_proj, parts))| {
                    heads::layer_heads(
                        layer,
                        heads_per_layer,
                        head_activation(layer),
                        grad_tensors[&Site::HeadOut(layer)].clone(),
                        (o_proj.clone(), Some(*parts)),
                        grad_tensors[&Site::AttnOut(layer)].clone(),
                    )
                })
                .collect::<Result<Vec<_>, String>>()
        },
    );
    let heads: Vec<HeadScore> = heads
        .map_err(ModelError::Source)?
        .into_iter()
        .flatten()
        .collect();

    // Layer by layer on every core too.
    let from_heads = match head_edges {
        true => (o_projs.par_iter().enumerate())
            .map(|(layer, (o_proj, _))| {
                // Every node after this layer's attention reads what its heads wrote.
                let downstream: Vec<(String, Tensor<B, 3>)> = node_sites
                    .iter()
                    .skip_while(|s| **s != Site::AttnOut(layer))
                    .skip(1)
                    .filter_map(|s| edges::input_site(*s).map(|input| (s.to_string(), input)))
                    .chain(std::iter::once((LOGITS.to_string(), Site::FinalIn)))
                    .map(|(id, input)| (id, grad_tensors[&input].clone()))
                    .collect();
                let z = head_activation(layer);
                // In the activations' precision: the model may keep its linear weights in
                // bf16 while it computes in f32 (see `qwen2_burn::matmul`).
                let o_proj = crate::model::matmul::weight_as(o_proj.clone(), z.dtype());
                heads::layer_head_edges(layer, heads_per_layer, z, o_proj, &downstream)
            })
            .collect::<Result<Vec<_>, String>>()
            .map_err(ModelError::Source)?
            .into_iter()
            .flatten()
            .collect(),
        false => Vec::new(),
    };
    Ok((edges, heads, from_heads))
}
