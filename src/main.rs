//! The `attrib` binary: parse arguments, run, turn the result into an exit code.

use std::io::Write;
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use attrib::backends::Selection;
use attrib::cli::{AttributeArgs, Cli, Command, PredictArgs};
use attrib::predict::{last_logits, top_k, TopToken};
use attrib::progress::Progress;
use attrib::source;

fn main() -> ExitCode {
    // This thread is the first of rayon's pool: parallel work started here runs on it too,
    // and the attribution's backward pass, run here, shares the pool with the logit lens
    // beside it (`attribution::pass::attribute`).
    let _ = rayon::ThreadPoolBuilder::new()
        .use_current_thread()
        .build_global();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.into_command() {
        Command::Attribute(args) => attribute(args),
        Command::Predict(args) => predict(args),
    }
}

fn attribute(args: AttributeArgs) -> anyhow::Result<()> {
    let mut bar = Bar(None);
    let graph = attrib::app::attribute_command(&args, &mut bar, &mut |line| eprintln!("{line}"))?;
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &graph)?;
        writeln!(out)?;
    } else {
        eprintln!();
        let contrast = match &graph.contrast_token {
            Some(c) => format!(" − {c:?}"),
            None => String::new(),
        };
        eprintln!(
            "{:?} → {} of {:?}{contrast} at position {} = {:.4} (logit {:.4})",
            graph.prompt,
            graph.metric,
            graph.target_token,
            graph.target_position,
            graph.target_value,
            graph.target_logit
        );
        if let Some(ig) = &graph.integrated_gradients {
            eprintln!(
                "EAP-IG over {} points from {} (value there {:.4}): scores are (a − a_baseline) ⊙ mean gradient",
                ig.steps,
                match &ig.baseline_prompt {
                    Some(p) => format!("{p:?}"),
                    None => "zero embeddings".into(),
                },
                ig.baseline_value
            );
        }
        write!(out, "{}", attrib::report::score_table(&graph))?;
        if args.heads {
            writeln!(out)?;
            write!(out, "{}", attrib::report::heads_table(&graph, 20))?;
        }
        if args.lens {
            writeln!(out)?;
            write!(out, "{}", attrib::report::lens_table(&graph))?;
        }
        if args.verify {
            writeln!(out)?;
            write!(out, "{}", attrib::report::verification_table(&graph))?;
        }
    }
    eprintln!("{}", attrib::report::timing_line(&graph.timings));
    Ok(())
}

/// Draws progress on stderr (hidden when stderr is not a terminal).
struct Bar(Option<ProgressBar>);

impl Progress for Bar {
    fn start(&mut self, what: &str, total: Option<u64>) {
        let bar = match total {
            Some(n) => ProgressBar::new(n),
            None => ProgressBar::new_spinner(),
        };
        bar.set_style(
            ProgressStyle::with_template("{msg:>24} [{bar:30}] {pos}/{len} ({elapsed})")
                .expect("static template")
                .progress_chars("=> "),
        );
        bar.set_message(what.to_string());
        self.0 = Some(bar);
    }
    fn set(&mut self, done: u64) {
        if let Some(bar) = &self.0 {
            bar.set_position(done);
        }
    }
    fn finish(&mut self) {
        if let Some(bar) = self.0.take() {
            bar.finish_and_clear();
        }
    }
}

#[derive(Serialize)]
struct PredictJson<'a> {
    model: &'a str,
    backend: String,
    device: &'a str,
    prompt: &'a str,
    chat: bool,
    text: &'a str,
    input_ids: &'a [u32],
    tokens: &'a [String],
    top_k: Vec<TopToken>,
}

fn predict(args: PredictArgs) -> anyhow::Result<()> {
    let m = &args.model;
    let selection = Selection::parse(
        m.backend.as_deref(),
        m.device.as_deref(),
        m.dtype.as_deref(),
    )?;
    let mut bar = Bar(None);
    let files = source::resolve(&m.model, &mut bar)?;
    let config = files.read_config()?;
    let tokenizer = files.tokenizer()?;
    let encoded = tokenizer.encode(m.prompt(), m.chat)?;
    if encoded.ids.len() > config.max_position_embeddings {
        anyhow::bail!(
            "--prompt is {} tokens long, but {} takes at most max_position_embeddings = {}; shorten it",
            encoded.ids.len(),
            files.name,
            config.max_position_embeddings
        );
    }
    let started = Instant::now();
    let logits = last_logits(&selection, &files, &config, &encoded.ids, &mut bar)?;
    let elapsed = started.elapsed();
    let top: Vec<TopToken> = top_k(&logits, args.top_k as usize)
        .into_iter()
        .map(|(id, logit, prob)| TopToken {
            id,
            token: tokenizer.token_text(id),
            logit,
            prob,
        })
        .collect();

    let mut out = std::io::stdout().lock();
    if args.json {
        let json = PredictJson {
            model: &files.name,
            backend: selection.kind.to_string(),
            device: &selection.device,
            prompt: m.prompt(),
            chat: m.chat,
            text: &encoded.text,
            input_ids: &encoded.ids,
            tokens: &encoded.tokens,
            top_k: top,
        };
        serde_json::to_writer_pretty(&mut out, &json)?;
        writeln!(out)?;
    } else {
        eprintln!(
            "{} on {} ({}), {} tokens, {:.2} s",
            files.name,
            selection.kind,
            selection.device,
            encoded.ids.len(),
            elapsed.as_secs_f64()
        );
        writeln!(
            out,
            "{:>4}  {:>8}  {:>10}  {:>8}  token",
            "rank", "id", "logit", "prob"
        )?;
        for (rank, t) in top.iter().enumerate() {
            writeln!(
                out,
                "{:>4}  {:>8}  {:>10.4}  {:>8.4}  {:?}",
                rank + 1,
                t.id,
                t.logit,
                t.prob,
                t.token
            )?;
        }
    }
    Ok(())
}
