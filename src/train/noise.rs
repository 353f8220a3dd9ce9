//! The gradient noise scale of a trained model (McCandlish et al. 2018, "An Empirical Model of
//! Large-Batch Training", appendix A): from the squared norms of gradients at two batch sizes,
//! `B_small` (one batch) and `B_big = K * B_small` (the mean of K batches at the same weights),
//!
//! ```text
//! |G|^2   ~ (B_big |G_big|^2 - B_small |G_small|^2) / (B_big - B_small)
//! tr(S)   ~ (|G_small|^2 - |G_big|^2) / (1 / B_small - 1 / B_big)
//! B_simple = tr(S) / |G|^2
//! ```
//!
//! `B_simple` estimates the critical batch: below it a batch twice as large takes about half the
//! steps; well above it a larger batch buys little, and extra compute is better spent otherwise
//! (on a codistilled peer, in the codistillation paper's argument). The task loss only (no
//! distillation term), with dropout as in training, on the checkpoint's own training data from the
//! position it reached.

use super::run::{checkpoint_config, load_weights, Setup, Task};
use super::RunConfig;
use crate::autograd::Graph;
use crate::checkpoint::Checkpoint;
use crate::optim::grad_norm;
use crate::params::ParamStore;
use crate::tensor::Device;
use crate::{bail, Result, Rng};
use std::path::Path;

/// What [`noise_scale`] measured at one checkpoint.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NoiseScale {
    /// The checkpoint's step.
    pub step: u64,
    /// Items (tokens, rows) in one batch: `B_small`.
    pub batch_items: usize,
    /// Batches averaged for the big batch: `K`.
    pub batches: usize,
    /// Mean squared norm of one batch's gradient, and the squared norm of the K batches' mean.
    pub small_sq: f64,
    pub big_sq: f64,
    /// The estimates of |G|^2 and tr(S), and B_simple in items (infinite where |G|^2 <= 0: the
    /// noise hides the gradient at K batches; measure with more).
    pub grad_sq: f64,
    pub trace: f64,
    pub b_simple: f64,
}

/// The noise scale of the model in `checkpoint` (of task `T`, trained with the config it records)
/// over `batches` consecutive training batches from the step it reached, on `dev`.
pub fn noise_scale<T: Task>(checkpoint: &Path, batches: usize, dev: Device) -> Result<NoiseScale> {
    if batches < 2 {
        bail!(Invalid, "--batches must be at least 2 (the big batch is their mean), got {batches}");
    }
    let ck = Checkpoint::load(checkpoint)?;
    let mut cfg: T::Config = checkpoint_config(&ck, checkpoint, T::FORMAT, T::WHAT)?;
    let mut o = cfg.run_options();
    // One model on the whole training data; no teachers, no exchange.
    (o.models, o.world, o.rank, o.shards, o.shard) = (1, 1, 0, 1, 0);
    (o.teacher, o.exchange_dir, o.resume) = (Default::default(), None, None);
    cfg.set_run_options(&o);
    let be = o.backend()?;
    let task = T::prepare(&cfg, &Setup { dev, total_models: 1, run: &o })?;
    let mut store = ParamStore::new();
    task.init(&mut store, &mut Rng::new(0))?;
    load_weights(&mut store, &ck, checkpoint)?;
    store.to_device(dev)?;
    let step: u64 = ck.meta("step", checkpoint)?.parse().unwrap_or(0);
    let model = task.model();
    // Each pass walks the same K batches from the same state: once for each batch's norm, once for
    // the norm of their sum.
    let pass = |store: &mut ParamStore, each: bool| -> Result<(Vec<f64>, usize)> {
        let (mut stream, _) = task.stream(1, 0)?;
        task.seed_stream(&mut stream, &Rng::new(o.seed));
        let mut carry = task.zero_carry(model)?;
        // A last checkpoint restores the stream's position and carried state; a best one has none.
        let resumable = ck.meta.contains_key("optimizer_steps").then_some((&ck, checkpoint));
        task.start(&mut stream, &mut carry, step, resumable)?;
        let epoch_steps = task.epoch_steps(&stream).max(1);
        let (mut norms, mut items) = (Vec::new(), 0);
        store.zero_grads()?;
        for s in step..step + batches as u64 {
            let (batch, fresh) = task.batch(&mut stream, s, epoch_steps)?;
            if fresh {
                carry = task.zero_carry(model)?;
            }
            let mut g = Graph::new().with_backend(be);
            let (out, _, next) = task.forward(model, &mut g, store, &batch, &carry, Some((s, 0)))?;
            let loss = task.loss(&mut g, out, &batch, &[], &[], None)?;
            let grads = g.backward(loss)?;
            if each {
                store.zero_grads()?;
            }
            g.accumulate_grads(&grads, store)?;
            drop(g);
            carry = next;
            items = task.batch_items(&batch);
            if each {
                norms.push(grad_norm(store)?.powi(2));
            }
        }
        if !each {
            norms.push(grad_norm(store)?.powi(2) / (batches * batches) as f64);
        }
        Ok((norms, items))
    };
    let (small, items) = pass(&mut store, true)?;
    let (big, _) = pass(&mut store, false)?;
    let small_sq = small.iter().sum::<f64>() / small.len() as f64;
    let (grad_sq, trace, b_simple) = estimate(small_sq, big[0], items, batches);
    Ok(NoiseScale { step, batch_items: items, batches, small_sq, big_sq: big[0], grad_sq, trace, b_simple })
}

/// |G|^2, tr(S) and B_simple from the mean squared norm of one batch's gradient (`small_sq`, batches
/// of `items`) and the squared norm of the mean of `batches` of them (`big_sq`).
pub fn estimate(small_sq: f64, big_sq: f64, items: usize, batches: usize) -> (f64, f64, f64) {
    let (b, k) = (items as f64, batches as f64);
    let grad_sq = (k * big_sq - small_sq) / (k - 1.0);
    let trace = (small_sq - big_sq) / (1.0 / b - 1.0 / (k * b));
    (grad_sq, trace, if grad_sq > 0.0 { trace / grad_sq } else { f64::INFINITY })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With E|G_B|^2 = |G|^2 + tr(S) / B exactly, the estimates return |G|^2 and tr(S).
    #[test]
    fn the_estimates_invert_the_two_batch_norms() {
        let (g2, tr, b, k) = (4.0, 100.0, 10usize, 8usize);
        let small = g2 + tr / b as f64;
        let big = g2 + tr / (b * k) as f64;
        let (eg, et, bs) = estimate(small, big, b, k);
        assert!((eg - g2).abs() < 1e-12 && (et - tr).abs() < 1e-9 && (bs - 25.0).abs() < 1e-9, "{eg} {et} {bs}");
        // Noise that hides the gradient: no finite estimate.
        assert_eq!(estimate(10.0, 1.0, 10, 8).2, f64::INFINITY);
    }
}
