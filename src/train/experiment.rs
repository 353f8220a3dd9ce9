//! Baseline and codistillation side by side, from one config: the same model and steps per
//! model, one model on all the data against n models on disjoint shards. Writes each run under
//! `out/baseline` and `out/codistill` (and with `independent_control`, the same models without the
//! term under `out/independent`), the validation curves as `out/curves.jsonl`, a plot as
//! `out/curves.png` and `out/curves.svg`, and `out/report.txt`.

use super::plot::{plot_curves, Reference, Series};
use super::{criteo, lm, RunConfig, RunOptions, Score, Task};
use crate::data::text::write_atomic;
use crate::{Error, Result};
use serde_json::{json, Value};
use std::path::Path;

/// One validation point of one model of one run.
#[derive(Clone, Debug, PartialEq)]
pub struct CurvePoint {
    pub run: String,
    pub model: usize,
    pub step: u64,
    pub loss: f64,
}

/// The validation curve(s) in a run's metrics file.
pub fn read_curves(metrics: &Path, run: &str, loss_key: &str) -> Result<Vec<CurvePoint>> {
    let text = std::fs::read_to_string(metrics).map_err(|e| Error::io(metrics, e))?;
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["event"] == "valid")
        .filter_map(|e| {
            Some(CurvePoint { run: run.to_string(), model: e["model"].as_u64().unwrap_or(0) as usize, step: e["step"].as_u64()?, loss: e[loss_key].as_f64()? })
        })
        .collect())
}

/// The runs beside the baseline: a label ("codistilled", "independent"), their validation
/// curves, their ensemble's loss at the end and (click models) the churn between models 0 and 1.
struct Group<'a> {
    label: &'a str,
    curves: Vec<CurvePoint>,
    ensemble: Option<f64>,
    churn: Option<f64>,
}

/// Write curves, plot and report; return the report.
fn finish(out: &Path, title: &str, y_label: &str, base: &[CurvePoint], groups: &[Group], mut refs: Vec<Reference>) -> Result<String> {
    let mut lines = String::new();
    for p in base.iter().chain(groups.iter().flat_map(|g| &g.curves)) {
        lines.push_str(&json!({"run": p.run, "model": p.model, "step": p.step, "loss": p.loss}).to_string());
        lines.push('\n');
    }
    write_atomic(&out.join("curves.jsonl"), lines.as_bytes())?;
    let Some(best) = base.iter().min_by(|a, b| a.loss.total_cmp(&b.loss)) else {
        return Err(Error::Invalid(format!("{}: the baseline recorded no validation loss", out.display())));
    };
    let mut series = vec![Series { name: "baseline (1 model, all data)".into(), points: base.iter().map(|p| (p.step as f64, p.loss)).collect() }];
    let mut report =
        format!("{title}\nbaseline: best validation loss {:.5} at step {} of {}\n", best.loss, best.step, base.last().map(|p| p.step).unwrap_or(0));
    // What no model can beat (the hidden click model, the source's entropy).
    for r in &refs {
        report.push_str(&format!("{}: {:.5} (the floor: the baseline's best is {:+.2}% above it)\n", r.name, r.y, 100.0 * (best.loss / r.y - 1.0)));
    }
    for g in groups {
        let models: std::collections::BTreeSet<usize> = g.curves.iter().map(|p| p.model).collect();
        for m in &models {
            let c: Vec<&CurvePoint> = g.curves.iter().filter(|p| p.model == *m).collect();
            series.push(Series { name: format!("{} model {m}", g.label), points: c.iter().map(|p| (p.step as f64, p.loss)).collect() });
            let reach = c.iter().find(|p| p.loss <= best.loss).map(|p| p.step);
            let fin = c.last().map(|p| p.loss).unwrap_or(f64::NAN);
            report.push_str(&format!(
                "{} model {m}: final {fin:.5}, best {:.5}; reaches the baseline's best {}\n",
                g.label,
                c.iter().map(|p| p.loss).fold(f64::INFINITY, f64::min),
                match reach {
                    Some(s) => format!("at step {s} ({:.2} of the baseline's {} steps)", s as f64 / best.step as f64, best.step),
                    None => "never".into(),
                }
            ));
        }
    }
    for g in groups {
        if let Some(e) = g.ensemble {
            report.push_str(&format!("ensemble of the {} models at the end: {e:.5}\n", g.label));
            refs.push(Reference { name: format!("{} ensemble (end)", g.label), y: e });
        }
    }
    for g in groups {
        if let Some(ch) = g.churn {
            report.push_str(&format!("churn between {} models 0 and 1: {ch:.5}\n", g.label));
        }
    }
    report.push_str(&summary(best, groups));
    plot_curves(&out.join("curves"), title, "steps per model", y_label, &series, &refs)?;
    write_atomic(&out.join("report.txt"), report.as_bytes())?;
    Ok(report)
}

/// The report's last line: what the run found, in one sentence.
fn summary(best: &CurvePoint, groups: &[Group]) -> String {
    let mut parts = Vec::new();
    for g in groups {
        let models: std::collections::BTreeSet<usize> = g.curves.iter().map(|p| p.model).collect();
        let reached: Vec<f64> = models
            .iter()
            .filter_map(|m| g.curves.iter().filter(|p| p.model == *m).find(|p| p.loss <= best.loss).map(|p| p.step as f64 / best.step as f64))
            .collect();
        let at = match (reached.iter().cloned().reduce(f64::min), reached.iter().cloned().reduce(f64::max)) {
            (Some(lo), Some(hi)) if lo == hi => format!(" (at {lo:.2} of its steps)"),
            (Some(lo), Some(hi)) => format!(" (at {lo:.2}-{hi:.2} of its steps)"),
            _ => String::new(),
        };
        parts.push(format!("{} of {} {} models reached the baseline's best{at}", reached.len(), models.len(), g.label));
    }
    let mut text = format!("In short: {}", parts.join(", "));
    if let [co, ind, ..] = groups {
        if let (Some(a), Some(b)) = (co.churn, ind.churn) {
            text.push_str(&format!("; churn within the pair {a:.4} {} against {b:.4} {} ({:+.0}%)", co.label, ind.label, 100.0 * (a / b - 1.0)));
        }
        if let (Some(a), Some(b)) = (co.ensemble, ind.ensemble) {
            text.push_str(&format!("; ensembles {a:.5} and {b:.5}"));
        }
    }
    text + ".\n"
}

/// Baseline and codistillation of task `T` from one config: the baseline on all the data, `max(2,
/// models)` codistilled models on disjoint shards (each taking the baseline's steps: see
/// [`Task::pair_config`]), and with `independent_control` the same models without the term. The
/// curves are each run's validation `T::Eval`'s loss ([`Score::KEY`]); the floor (the hidden click
/// model, the source's entropy) is the baseline's, from its `result.json`.
pub fn experiment<T: Task>(cfg: &T::Config) -> Result<String> {
    let o = cfg.run_options();
    // The baseline is a model trained on the labels alone; fixed teachers would make it a
    // distilled model and the comparison something else.
    if !o.teacher.is_empty() || o.teacher_logits.is_some() || o.generations != 1 {
        return Err(Error::Invalid(
            "experiment compares codistillation with a baseline trained on the labels alone; --teacher, --teacher-logits and --generations are for train and codistill".into(),
        ));
    }
    let with = |f: &dyn Fn(&mut RunOptions)| {
        let mut c = cfg.clone();
        // The runs themselves are trainings: the control is this function's to train.
        let mut r = RunOptions { independent_control: false, ..o.clone() };
        f(&mut r);
        c.set_run_options(&r);
        c
    };
    // A curve needs points: without eval_every, every 200 steps.
    let eval_every = if o.eval_every == 0 { 200 } else { o.eval_every };
    let base = with(&|r| (r.models, r.world, r.out, r.eval_every) = (1, 1, o.out.join("baseline"), eval_every));
    let models = o.models.max(2);
    let mut co = with(&|r| (r.models, r.world, r.out, r.eval_every) = (models, 1, o.out.join("codistill"), eval_every));
    T::pair_config(&mut co, models);
    let ind = o.independent_control.then(|| {
        let mut c = co.clone();
        let mut r = c.run_options();
        (r.distill_lambda, r.alpha, r.distill_weight, r.out) = (0.0, 0.0, None, o.out.join("independent"));
        c.set_run_options(&r);
        c
    });
    let key = <T::Eval as Score>::KEY;
    eprintln!("experiment: baseline");
    super::train::<T>(&base)?;
    eprintln!("experiment: codistillation of {models} models");
    super::train::<T>(&co)?;
    let mut groups = vec![group::<T>(&co, "codistilled", "codistill")?];
    if let Some(ind) = &ind {
        eprintln!("experiment: the same {models} models without the term (the control)");
        super::train::<T>(ind)?;
        groups.push(group::<T>(ind, "independent", "independent")?);
    }
    let path = o.out.join("baseline/result.json");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let result: Value = serde_json::from_str(&text).map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
    let refs = match (result["floor_name"].as_str(), result["floor"].as_f64()) {
        (Some(name), Some(y)) => vec![Reference { name: name.into(), y }],
        _ => Vec::new(),
    };
    let what = key.replace('_', "-");
    finish(
        &o.out,
        &format!("{}: validation {what}, baseline vs codistillation", T::TITLE),
        &format!("validation {what}"),
        &read_curves(&o.out.join("baseline/metrics.jsonl"), "baseline", key)?,
        &groups,
        refs,
    )
}

/// A run's curves, and its ensemble and churn (the `ensemble` event at the end).
fn group<T: Task>(cfg: &T::Config, label: &'static str, run: &str) -> Result<Group<'static>> {
    let metrics = cfg.run_options().out.join("metrics.jsonl");
    let key = <T::Eval as Score>::KEY;
    let text = std::fs::read_to_string(&metrics).map_err(|e| Error::io(&metrics, e))?;
    let end = text.lines().rev().filter_map(|l| serde_json::from_str::<Value>(l).ok()).find(|e| e["event"] == "ensemble");
    Ok(Group {
        label,
        curves: read_curves(&metrics, run, key)?,
        ensemble: end.as_ref().and_then(|e| e[key].as_f64()),
        churn: end.as_ref().and_then(|e| e["churn"].as_f64()),
    })
}

/// Click models: [`experiment`] of [`criteo::CtrTask`].
pub fn criteo_experiment(cfg: &criteo::CriteoConfig) -> Result<String> {
    experiment::<criteo::CtrTask>(cfg)
}

/// Language models: [`experiment`] of [`lm::LmTask`].
pub fn lm_experiment(cfg: &lm::LmConfig) -> Result<String> {
    experiment::<lm::LmTask>(cfg)
}
