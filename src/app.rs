//! The attribution run, from validated arguments to the files in `--out`: shared by the binary
//! and `examples/seed.rs`. Human-readable progress goes to a `say` callback; nothing prints.

use std::time::Instant;

use anyhow::{bail, Context};

use crate::attribution::{self, Ablation, Event, Objective, Outcome, Request, Target};
use crate::backends::{Selection, BURN_VERSION};
use crate::cli::AttributeArgs;
use crate::graph::{
    Attribution, Edge, EdgeCheck, Head, IntegratedGradients, LensRow, LensToken, Node, NodeCheck,
    NodeKind, Verification, VerificationSeconds,
};
use crate::model::{Qwen2Config, Site};
use crate::output::{prepare_dir, write_atomic};
use crate::progress::Progress;
use crate::prompt::PromptTokenizer;
use crate::prune::{prune, PruneOptions};
use crate::{neuronpedia, render, source};

/// Runs Grad×Activation attribution as `args` asks and writes into `args.out`:
/// `attribution.json`, `graph.neuronpedia.json`, `graph.html`, and the pathway
/// (`graph`), pruned DAG (`graph-dag`) and heatmap pictures as SVG and PNG.
///
/// Everything a user can get wrong (backend, output folder, model, prompt, target) is checked
/// before the weights are loaded.
pub fn attribute_command(
    args: &AttributeArgs,
    progress: &mut dyn Progress,
    say: &mut dyn FnMut(String),
) -> anyhow::Result<Attribution> {
    let m = &args.model;
    let selection = Selection::parse(
        m.backend.as_deref(),
        m.device.as_deref(),
        m.dtype.as_deref(),
    )?;
    say(format!(
        "Backend: {} (device {}), dtype {}, burn {BURN_VERSION}",
        selection.kind, selection.device, selection.dtype
    ));
    let out = prepare_dir(&args.out)?;

    let started = Instant::now();
    let files = source::resolve(&m.model, progress)?;
    let config = files.read_config()?;
    let tokenizer = files.tokenizer()?;
    let resolve_s = started.elapsed().as_secs_f64();

    let started = Instant::now();
    let encoded = tokenizer.encode(m.prompt(), m.chat)?;
    let tokenize_s = started.elapsed().as_secs_f64();
    if encoded.ids.len() > config.max_position_embeddings {
        bail!(
            "--prompt is {} tokens long, but {} takes at most max_position_embeddings = {}; shorten it",
            encoded.ids.len(),
            files.name,
            config.max_position_embeddings
        );
    }
    let objective = objective_of(args, &tokenizer, &config, encoded.ids.len())?;
    let corrupt = match &args.corrupt {
        Some(text) => {
            let ids = tokenizer.encode(text, m.chat)?.ids;
            if ids.len() != encoded.ids.len() {
                bail!(
                    "--corrupt is {} tokens long but --prompt is {}; patching needs prompts of the same length",
                    ids.len(),
                    encoded.ids.len()
                );
            }
            Some(ids)
        }
        None if args.verify && args.ablation() == Ablation::Patch => {
            bail!("--ablate patch needs --corrupt, a prompt of the same token length")
        }
        None => None,
    };
    if corrupt.is_some() && !args.verify && args.ig_steps.is_none() {
        bail!("--corrupt is used by --verify and --ig-steps; give one of them (or drop --corrupt)");
    }
    let prune_options = PruneOptions {
        node_threshold: args.node_threshold,
        edge_threshold: args.edge_threshold,
        top_edges: args.top_edges,
    };

    say(format!(
        "Loading {} ({} layers, hidden {}) …",
        files.name, config.num_hidden_layers, config.hidden_size
    ));
    let request = Request {
        files: &files,
        config: &config,
        ids: &encoded.ids,
        objective,
        options: attribution::Options {
            head_edges: args.heads,
            nodes_only: args.nodes_only,
            lens: args.lens,
            verify: args.verify.then_some(args.ablation()),
            corrupt,
            verify_edges: args.verify_edges,
            verify_batch: args.verify_batch.map(|n| n as usize),
            circuit: Some(prune_options),
            checkpoint: args.checkpoint,
            ig_steps: args.ig_steps.map(|m| m as usize),
        },
    };
    let mut on_event = |event: Event| {
        say(match event {
            Event::Loaded { seconds } => format!("Model loaded ({seconds:.2} s)"),
            Event::TapsRegistered { taps, nodes } => format!(
                "Registered {taps} taps ({nodes} nodes: embeddings, {} attention and {} MLP outputs; the rest feed edges)",
                config.num_hidden_layers, config.num_hidden_layers
            ),
            Event::Forward {
                predicted_id,
                seconds,
            } => format!(
                "Forward pass done ({seconds:.2} s): predicted {:?} (id {predicted_id})",
                tokenizer.token_text(predicted_id)
            ),
            Event::Backward { seconds } => format!("Backward pass done ({seconds:.2} s)"),
            Event::Integrated { steps, seconds } => format!(
                "EAP-IG: {} more points on the path from the baseline done ({seconds:.2} s)",
                steps - 1
            ),
            Event::Verified {
                interventions,
                seconds,
            } => format!("Verification: {interventions} interventions done ({seconds:.2} s)"),
        })
    };
    let outcome = attribution::attribute(&selection, &request, progress, &mut on_event)?;
    let t = &outcome.timings;
    say(format!(
        "Attribution calculation finished ({:.2} s)",
        t.forward_s + t.backward_s + t.ig_s + t.scores_s
    ));

    let mut graph = to_graph(&files.name, args, &selection, &encoded, &tokenizer, outcome);
    graph.timings.load_s += resolve_s;
    graph.timings.tokenize_s = tokenize_s;

    let started = Instant::now();
    let pruned = prune(&graph, &prune_options);
    let pictures = [
        ("graph", render::pathway_svg(&graph)),
        ("graph-dag", render::dag_svg(&graph, &pruned)),
        ("heatmap", render::heatmap_svg(&graph)),
    ];
    // Each picture rendered and encoded on its own thread.
    let pngs: Vec<_> = std::thread::scope(|scope| {
        let workers: Vec<_> = pictures
            .iter()
            .map(|(_, svg)| scope.spawn(|| render::svg_to_png(svg)))
            .collect();
        workers.into_iter().map(|w| w.join()).collect()
    });
    let mut files = Vec::new();
    for ((name, svg), png) in pictures.into_iter().zip(pngs) {
        let png = png
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            .with_context(|| format!("rendering {name}.png"))?;
        files.push((format!("{name}.svg"), svg.into_bytes()));
        files.push((format!("{name}.png"), png));
    }
    let page = render::graph_html(&graph, &pruned);
    files.push(("graph.html".into(), page.into_bytes()));
    graph.timings.render_s = started.elapsed().as_secs_f64();
    let json = serde_json::to_string_pretty(&graph)? + "\n";
    files.push(("attribution.json".into(), json.into_bytes()));
    let slug = match &args.slug {
        Some(slug) => slug.clone(),
        None => neuronpedia::default_slug(&graph),
    };
    let viewer = neuronpedia::neuronpedia_graph(&graph, &pruned, &slug);
    let viewer = serde_json::to_string(&viewer)? + "\n";
    files.push(("graph.neuronpedia.json".into(), viewer.into_bytes()));
    for (name, bytes) in &files {
        write_atomic(&args.out.join(name), bytes)?;
    }
    out.keep();
    say(format!(
        "Wrote {}: attribution.json, graph.html, graph.neuronpedia.json, graph, graph-dag (kept {} of {} nodes, {} of {} edges) and heatmap as SVG and PNG",
        args.out.display(),
        pruned.nodes.len().saturating_sub(1),
        graph.nodes.len(),
        pruned.edges.len(),
        graph.edges.len()
    ));
    Ok(graph)
}

/// The objective the flags describe, checked against the tokenizer, vocabulary and prompt.
fn objective_of(
    args: &AttributeArgs,
    tokenizer: &PromptTokenizer,
    config: &Qwen2Config,
    seq: usize,
) -> anyhow::Result<Objective> {
    let token = match (&args.target, args.target_id) {
        (Some(text), _) => Target::Id(single_token("--target", text, tokenizer)?),
        (None, Some(id)) => Target::Id(check_id("--target-id", id, config)?),
        (None, None) => Target::Predicted,
    };
    let contrast = match (&args.contrast, args.contrast_id) {
        (Some(text), _) => Some(single_token("--contrast", text, tokenizer)?),
        (None, Some(id)) => Some(check_id("--contrast-id", id, config)?),
        (None, None) => None,
    };
    if let Some(p) = args.position {
        if p >= seq {
            bail!(
                "--position {p} is beyond the prompt, which has {seq} tokens (0..{})",
                seq - 1
            );
        }
    }
    Ok(Objective {
        token,
        contrast,
        metric: args.metric,
        position: args.position,
    })
}

/// The id of `text`, which must be exactly one token.
fn single_token(flag: &str, text: &str, tokenizer: &PromptTokenizer) -> anyhow::Result<u32> {
    let encoding = tokenizer
        .tokenizer()
        .encode(text, false)
        .map_err(|e| anyhow::anyhow!("{flag} {text:?}: cannot tokenize it ({e})"))?;
    let ids = encoding.get_ids();
    if ids.len() != 1 {
        let pieces: Vec<String> = ids
            .iter()
            .map(|&id| format!("{:?} (id {id})", tokenizer.token_text(id)))
            .collect();
        bail!(
            "{flag} {text:?} is {} tokens, not one: {}; pass a single token's text or {flag}-id",
            ids.len(),
            if pieces.is_empty() {
                "nothing".to_string()
            } else {
                pieces.join(", ")
            }
        );
    }
    Ok(ids[0])
}

/// `id`, if it is inside the vocabulary.
fn check_id(flag: &str, id: u32, config: &Qwen2Config) -> anyhow::Result<u32> {
    if id as usize >= config.vocab_size {
        bail!(
            "{flag} {id} is outside the vocabulary (0..{})",
            config.vocab_size
        );
    }
    Ok(id)
}

/// Attaches names and token texts to an outcome.
fn to_graph(
    model: &str,
    args: &AttributeArgs,
    selection: &Selection,
    encoded: &crate::prompt::Encoded,
    tokenizer: &PromptTokenizer,
    outcome: Outcome,
) -> Attribution {
    let nodes = outcome
        .nodes
        .into_iter()
        .map(|(site, s)| {
            let (kind, layer) = match site {
                Site::Embed => (NodeKind::Embeddings, None),
                Site::AttnOut(l) => (NodeKind::Attn, Some(l)),
                _ => (NodeKind::Mlp, site_layer(site)),
            };
            Node {
                id: site.to_string(),
                kind,
                layer,
                score: s.score,
                signed: s.signed,
                per_position: s.per_position,
            }
        })
        .collect();
    let text = |id: u32| tokenizer.token_text(id);
    let to_edges = |edges: Vec<attribution::EdgeScore>| -> Vec<Edge> {
        edges
            .into_iter()
            .map(|e| Edge {
                source: e.source,
                target: e.target,
                score: e.score,
                per_position: e.per_position,
            })
            .collect()
    };
    let edges = to_edges(outcome.edges);
    let heads = outcome
        .heads
        .into_iter()
        .map(|h| Head {
            id: h.id(),
            layer: h.layer,
            head: h.head,
            signed: h.signed,
            score: h.score,
            per_position: h.per_position,
        })
        .collect();
    let head_edges = to_edges(outcome.head_edges);
    let verification = args.verify.then(|| {
        let agreement = attribution::agreement(&outcome.checks);
        Verification {
            ablation: args.ablation().name().into(),
            corrupt_prompt: args.corrupt.clone(),
            nodes: outcome
                .checks
                .iter()
                .map(|c| NodeCheck {
                    id: c.site.to_string(),
                    predicted: c.predicted,
                    actual: c.actual,
                })
                .collect(),
            pearson: agreement.pearson,
            spearman: agreement.spearman,
            same_sign: agreement.same_sign,
            edges: outcome
                .edge_checks
                .iter()
                .map(|c| EdgeCheck {
                    source: c.source.clone(),
                    target: c.target.clone(),
                    predicted: c.predicted,
                    actual: c.actual,
                })
                .collect(),
            seconds: VerificationSeconds {
                nodes: outcome.verify_seconds.nodes_s,
                edges: outcome.verify_seconds.edges_s,
                circuit: outcome.verify_seconds.circuit_s,
            },
            faithfulness: outcome.faithfulness.clone(),
        }
    });
    let integrated_gradients =
        args.ig_steps
            .zip(outcome.baseline_value)
            .map(|(steps, baseline_value)| IntegratedGradients {
                steps: steps as usize,
                baseline_prompt: args.corrupt.clone(),
                baseline_value,
            });
    let lens = outcome
        .lens
        .into_iter()
        .map(|l| LensRow {
            after: l.after,
            target_rank: l.target_rank,
            target_logit: l.target_logit,
            top: l
                .top
                .into_iter()
                .map(|(id, logit)| LensToken {
                    id,
                    token: text(id),
                    logit,
                })
                .collect(),
        })
        .collect();
    Attribution {
        model: model.to_string(),
        prompt: args.model.prompt().to_string(),
        chat: args.model.chat,
        input_ids: encoded.ids.clone(),
        tokens: encoded
            .ids
            .iter()
            .map(|&id| tokenizer.token_text(id))
            .collect(),
        predicted_id: outcome.predicted_id,
        predicted_token: tokenizer.token_text(outcome.predicted_id),
        target_id: outcome.target_id,
        target_token: tokenizer.token_text(outcome.target_id),
        target_logit: outcome.target_logit,
        contrast_id: outcome.contrast_id,
        contrast_token: outcome.contrast_id.map(text),
        metric: args.metric.name().into(),
        target_position: outcome.position,
        target_value: outcome.value,
        method: if integrated_gradients.is_some() {
            "eap_ig"
        } else {
            "grad_x_activation"
        }
        .into(),
        backend: selection.kind.to_string(),
        device: selection.device.clone(),
        dtype: selection.dtype.to_string(),
        timings: outcome.timings,
        nodes,
        edges,
        heads,
        lens,
        head_edges,
        integrated_gradients,
        verification,
    }
}

fn site_layer(site: Site) -> Option<usize> {
    match site {
        Site::AttnIn(l)
        | Site::HeadOut(l)
        | Site::AttnOut(l)
        | Site::MlpIn(l)
        | Site::MlpOut(l) => Some(l),
        Site::Embed | Site::FinalIn => None,
    }
}
