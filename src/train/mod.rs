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

/// What an adversarial discriminator reads of each output row (`--adversarial-input`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AdversarialInput {
    /// The raw outputs (a language model's logits, a click model's logit).
    #[default]
    Logits,
    /// The distribution: a softmax row (a click model's sigmoid), blind to a shift of the logits.
    Probs,
}

crate::named_choices!(AdversarialInput, "a discriminator input", { Logits => "logits", Probs => "probs" });

/// Adversarial distillation's discriminator: a two-layer MLP over a row of model outputs (a
/// language model's logits, a click model's logit) that tells the teachers' rows (label 1) from
/// the student's (label 0). It trains with the model (its parameters are in the model's store,
/// named `<prefix>.adv.*`, kept in checkpoints and ignored when one is loaded as a model), on its
/// own term; the student's term asks it to call the student's rows the teachers'.
pub struct Discriminator {
    pub layers: [Linear; 2],
}

impl Discriminator {
    pub fn new(store: &mut ParamStore, prefix: &str, width: usize, hidden: usize, rng: &mut crate::Rng) -> Result<Self> {
        Ok(Discriminator {
            layers: [
                Linear::new(store, &format!("{prefix}.adv.0"), width, hidden, true, rng)?,
                Linear::new(store, &format!("{prefix}.adv.1"), hidden, 1, true, rng)?,
            ],
        })
    }

    /// The logit `[N, 1]` of "a teacher's row" for `x [N, width]`; with `frozen` the weights are
    /// constants (the student's term must not train the discriminator).
    fn forward(&self, g: &mut Graph, store: &ParamStore, x: Var, frozen: bool) -> Result<Var> {
        let [first, second] = &self.layers;
        let h = if frozen { first.forward_frozen(g, store, x)? } else { first.forward(g, store, x)? };
        let h = g.unary(Unary::Relu, h)?;
        if frozen {
            second.forward_frozen(g, store, h)
        } else {
            second.forward(g, store, h)
        }
    }

    /// The two terms for a batch: the student's `weight * BCE(D(student), 1)` (through the
    /// student's outputs `out`, the discriminator frozen) and the discriminator's
    /// `BCE(D(teacher), 1) + BCE(D(student), 0)` (through its weights only).
    /// With `input` Probs each row is first turned into its distribution (softmax, or the sigmoid
    /// of a single logit), for both the student and the teacher.
    pub fn terms(&self, g: &mut Graph, store: &ParamStore, out: Var, teacher: &Tensor, weight: f32, input: AdversarialInput) -> Result<(Var, Var)> {
        let width = self.layers[0].in_dim;
        let n = g.value(out).numel() / width;
        let dev = teacher.device();
        let read = |g: &mut Graph, x: Var| -> Result<Var> {
            match (input, width) {
                (AdversarialInput::Logits, _) => Ok(x),
                (AdversarialInput::Probs, 1) => g.unary(Unary::Sigmoid, x),
                (AdversarialInput::Probs, _) => g.softmax(x),
            }
        };
        let rows = g.reshape(out, &[n, width])?;
        let rows = read(g, rows)?;
        let ones = Tensor::from_f32(vec![1.0; n], &[n, 1])?.to_device(dev)?;
        let zeros = Tensor::from_f32(vec![0.0; n], &[n, 1])?.to_device(dev)?;
        let fooled = self.forward(g, store, rows, true)?;
        let student = g.bce_with_logits(fooled, &ones)?;
        let student = g.unary(Unary::Scale(weight), student)?;
        let t = g.constant(teacher.reshape(&[n, width])?);
        let t = read(g, t)?;
        // The student's rows as the discriminator's own term sees them: the values read above, as
        // a constant (no gradient to the student through this term).
        let s = g.constant(g.value(rows).clone());
        let on_teacher = self.forward(g, store, t, false)?;
        let on_student = self.forward(g, store, s, false)?;
        let (a, b) = (g.bce_with_logits(on_teacher, &ones)?, g.bce_with_logits(on_student, &zeros)?);
        Ok((student, g.add(a, b)?))
    }

    /// Puts a checkpoint's discriminator back into `store` on resume.
    pub(crate) fn restore(&self, store: &mut ParamStore, ck: &Checkpoint, path: &Path) -> Result<()> {
        for l in &self.layers {
            restore_hint(store, l, ck, path, "a discriminator (adversarial_weight 0)")?;
        }
        Ok(())
    }
}

/// Puts a checkpoint's feature-hint map (no part of the model its loader builds) back into `store`
/// on resume; a checkpoint trained without hints lacks it, and the error says so.
pub(crate) fn restore_hint(store: &mut ParamStore, map: &Linear, ck: &Checkpoint, path: &Path, what: &str) -> Result<()> {
    for name in std::iter::once(&map.weight).chain(map.bias.as_ref()) {
        let t = ck.tensors.get(name).ok_or_else(|| Error::Invalid(format!("{}: checkpoint lacks {name:?}: it was trained without {what}", path.display())))?;
        store.insert(name, t.clone())?;
    }
    Ok(())
}

#[cfg(test)]
mod adversarial_tests {
    use super::*;

    /// On probabilities the discriminator's term ignores a shift of a row's logits, so its gradient
    /// with respect to each row sums to zero; on logits it does not.
    #[test]
    fn a_discriminator_on_probabilities_is_blind_to_a_row_shift() {
        let (n, w) = (6, 9);
        let mut rng = crate::Rng::new(5);
        let mut store = ParamStore::new();
        let d = Discriminator::new(&mut store, "t", w, 8, &mut rng).unwrap();
        let out = Tensor::randn(&[n, w], 2.0, &mut rng);
        let teacher = Tensor::randn(&[n, w], 2.0, &mut rng);
        let row_sums = |input| {
            let mut g = Graph::new();
            let x = g.leaf(out.clone());
            let (student, _) = d.terms(&mut g, &store, x, &teacher, 1.0, input).unwrap();
            let grads = g.backward(student).unwrap();
            let gx = grads.get(x).unwrap().to_vec_f32().unwrap();
            let scale = gx.iter().map(|v| v.abs()).fold(0f32, f32::max);
            (gx.chunks(w).map(|r| r.iter().sum::<f32>().abs()).fold(0f32, f32::max), scale)
        };
        let (probs, scale) = row_sums(AdversarialInput::Probs);
        assert!(scale > 0.0 && probs <= 1e-6 * scale.max(1.0), "row sums {probs:e} of a gradient of scale {scale:e}");
        let (logits, _) = row_sums(AdversarialInput::Logits);
        assert!(logits > 1e-4, "on logits a row's gradient sums to {logits:e}");
    }
}
