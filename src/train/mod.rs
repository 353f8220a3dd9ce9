//! Training: one loop for every task ([`train`], over a [`Task`]), the options every task shares
//! ([`RunOptions`]), what a run reports ([`report`]), experiments and plots. The tasks themselves
//! (a language model, a click model) are in [`crate::tasks`]; `train::lm` and `train::criteo` are
//! their trainers' names from before the loop was one.

pub mod experiment;
pub mod generations;
pub mod noise;
pub mod options;
pub mod plot;
pub mod report;
mod run;
pub mod teacher_cache;
pub mod tensorboard;

pub use crate::tasks::ctr as criteo;
pub use crate::tasks::lm;
pub use crate::tasks::lm::sample;
pub use options::{DeviceChoice, OptimizerChoice, RunConfig, RunOptions};
pub use report::{write_result, MetricsLog, StepTimes};
pub use run::scaled;
pub(crate) use run::{checkpoint_config, load_weights};
pub use run::{train, Finished, Member, Score, Setup, Task, TeacherRef};

use crate::autograd::{Graph, Var};
use crate::checkpoint::Checkpoint;
use crate::nn::Linear;
use crate::ops::elementwise::{Binary, Unary};
use crate::params::ParamStore;
use crate::tensor::Tensor;
use crate::{Error, Result};
use std::path::Path;

/// A feature hint (FitNets): `weight` times the mean squared difference between `map(h)`, the
/// model's top hidden states mapped to the teacher's width, and the teacher's, `target`.
/// With `kind` [`HiddenLoss::Cosine`](crate::ops::relation::HiddenLoss), 1 minus their cosine
/// similarity per row, averaged.
pub fn hint_loss(g: &mut Graph, store: &ParamStore, map: &Linear, h: Var, target: &Tensor, weight: f32, kind: crate::ops::relation::HiddenLoss) -> Result<Var> {
    let p = map.forward(g, store, h)?;
    if kind != crate::ops::relation::HiddenLoss::Mse {
        let l = g.hidden_loss(kind, p, target)?;
        return g.unary(Unary::Scale(weight), l);
    }
    let t = g.constant(target.clone());
    let d = g.binary(Binary::Sub, p, t)?;
    let sq = g.mul(d, d)?;
    let mse = g.mean(sq)?;
    g.unary(Unary::Scale(weight), mse)
}

/// Puts a checkpoint's feature-hint map (no part of the model its loader builds) back into `store`
/// on resume; a checkpoint trained without hints lacks it, and the error says so.
pub(crate) fn restore_hint(store: &mut ParamStore, map: &Linear, ck: &Checkpoint, path: &Path) -> Result<()> {
    for name in std::iter::once(&map.weight).chain(map.bias.as_ref()) {
        let t = ck
            .tensors
            .get(name)
            .ok_or_else(|| Error::Invalid(format!("{}: checkpoint lacks {name:?}: it was trained without feature hints (hint_weight 0)", path.display())))?;
        store.insert(name, t.clone())?;
    }
    Ok(())
}
