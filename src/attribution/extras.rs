//! The graph beyond its nodes, from one pass's activations and gradients: the residual-stream
//! edges, the attention heads and (on request) the head → node edges.

use std::collections::HashMap;

use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor};

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
    let edges = edges::residual_edges(node_data, |s| gradients[&s].as_slice(), seq);

    let mut heads = Vec::new();
    for (layer, block) in model.model.layers.iter().enumerate() {
        heads.extend(
            heads::layer_heads(
                layer,
                heads_per_layer,
                head_activation(layer),
                grad_tensors[&Site::HeadOut(layer)].clone(),
                (
                    block.self_attn.o_proj.weight.val().inner(),
                    Some(block.self_attn.head_parts()),
                ),
                grad_tensors[&Site::AttnOut(layer)].clone(),
            )
            .map_err(ModelError::Source)?,
        );
    }

    let mut from_heads = Vec::new();
    if head_edges {
        for (layer, block) in model.model.layers.iter().enumerate() {
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
            let o_proj = o_proj_for_heads(block, z.dtype());
            from_heads.extend(
                heads::layer_head_edges(layer, heads_per_layer, z, o_proj, &downstream)
                    .map_err(ModelError::Source)?,
            );
        }
    }
    Ok((edges, heads, from_heads))
}

/// A layer's o_proj weight for the head→node edges, in the activations' precision `dtype` (the
/// model may keep its linear weights in bf16 while it computes in f32, see
/// `qwen2_burn::matmul`).
fn o_proj_for_heads<B: Backend>(
    block: &crate::model::block::DecoderLayer<Autodiff<B>>,
    dtype: DType,
) -> Tensor<B, 2> {
    crate::model::matmul::weight_as(block.self_attn.o_proj.weight.val().inner(), dtype)
}
