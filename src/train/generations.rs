//! Born-again networks (Furlanello et al. 2018), `--generations N`: generation 0 trains as
//! configured (on the labels, or with its `--teacher`s); each later generation is a fresh model of
//! the same shape, with the next seed, distilled from the previous generation's best checkpoint
//! alone, with the run's distillation settings. Each generation trains into `out/gen-<g>`;
//! `out/generations.json` and the terminal give each one's best validation.

use super::run::{train, Score, Task};
use super::RunConfig;
use crate::config::{Paths, Weights};
use crate::{bail, Error, Result};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// One generation's outcome.
#[derive(Clone, Debug, PartialEq)]
pub struct Generation {
    pub generation: usize,
    pub out: PathBuf,
    /// The checkpoint it distilled from (None for generation 0 without teachers of its own).
    pub teacher: Option<PathBuf>,
    /// Its best validation loss (the task's loss: a language model's nats per token, a click
    /// model's log-loss), None without validation data.
    pub best_valid: Option<f64>,
}

/// The lowest `key` of model 0's validation events in `metrics`.
fn best_of(metrics: &Path, key: &str) -> Result<Option<f64>> {
    let text = std::fs::read_to_string(metrics).map_err(|e| Error::io(metrics, e))?;
    let mut best: Option<f64> = None;
    for line in text.lines() {
        let v: Value = serde_json::from_str(line).map_err(|e| Error::Invalid(format!("{}: {e}", metrics.display())))?;
        if v["event"] == "valid" && v["model"] == 0 {
            if let Some(x) = v[key].as_f64() {
                best = Some(best.map_or(x, |b| b.min(x)));
            }
        }
    }
    Ok(best)
}

/// Train `generations` born-again generations of `cfg` (see the module's documentation) and
/// return each one's outcome with the last generation's summary.
pub fn train_generations<T: Task>(cfg: &T::Config, generations: usize) -> Result<(Vec<Generation>, T::Summary)> {
    let o = cfg.run_options();
    if generations < 2 {
        bail!(Invalid, "generations must be at least 2 to train born-again generations (got {generations}); 1 is a plain run");
    }
    if o.models > 1 || o.world > 1 || o.exchange_dir.is_some() || o.resume.is_some() {
        bail!(Invalid, "generations trains one model a generation in this process: not with --models, --world, --exchange-dir or --resume");
    }
    let mut done: Vec<Generation> = Vec::new();
    let mut last = None;
    for g in 0..generations {
        let mut c = cfg.clone();
        let mut r = o.clone();
        r.generations = 1;
        r.out = o.out.join(format!("gen-{g}"));
        r.seed = o.seed.wrapping_add(g as u64);
        let teacher = match done.last() {
            None => o.teacher.0.first().cloned().filter(|_| o.teacher.0.len() == 1),
            Some(prev) => {
                let best = prev.out.join("best.safetensors");
                let ck = if best.exists() { best } else { prev.out.join("checkpoint.safetensors") };
                (r.teacher, r.teacher_logits, r.teacher_weights, r.teacher_confidence) = (Paths(vec![ck.clone()]), None, Weights::default(), false);
                Some(ck)
            }
        };
        c.set_run_options(&r);
        eprintln!("generation {g} of {generations}{}", teacher.as_ref().map(|t| format!(", distilled from {}", t.display())).unwrap_or_default());
        let summary = train::<T>(&c)?;
        let best_valid = best_of(&r.out.join("metrics.jsonl"), <T::Eval as Score>::KEY)?;
        done.push(Generation { generation: g, out: r.out.clone(), teacher, best_valid });
        last = Some(summary);
    }
    let table: Vec<Value> = done
        .iter()
        .map(|g| {
            json!({
                "generation": g.generation,
                "out": g.out.display().to_string(),
                "teacher": g.teacher.as_ref().map(|t| t.display().to_string()),
                "best_valid": g.best_valid,
            })
        })
        .collect();
    let text = serde_json::to_string_pretty(&json!({ "task": T::NAME, "key": <T::Eval as Score>::KEY, "generations": table }))
        .map_err(|e| Error::Invalid(format!("generations.json: {e}")))?;
    crate::data::text::write_atomic(&o.out.join("generations.json"), text.as_bytes())?;
    for g in &done {
        eprintln!("generation {}: best validation {}", g.generation, g.best_valid.map_or("none (no validation data)".into(), |v| format!("{v:.5}")));
    }
    Ok((done, last.expect("at least two generations ran")))
}
