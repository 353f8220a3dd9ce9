//! Codistillation (Anil et al. 2018): n models train on their own shards; after `burn_in` steps
//! each adds a distillation term toward the average prediction of the others' most recently
//! exchanged (stale) checkpoints. `exchange` holds the checkpoint exchange.

pub mod cache;
pub mod exchange;

use crate::params::ParamStore;
use crate::{bail, Result};
use exchange::{timed, DirExchange, Exchange, InProcess};
use std::path::Path;
use std::time::Duration;

/// The launchers whose variables tell a process its rank and the number of processes, in the order
/// they are looked for: (size variable, rank variable, launcher).
pub const LAUNCHERS: &[(&str, &str, &str)] = &[
    ("WORLD_SIZE", "RANK", "torchrun"),
    ("SLURM_NTASKS", "SLURM_PROCID", "Slurm"),
    ("OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "Open MPI"),
    ("PMI_SIZE", "PMI_RANK", "MPICH"),
];

/// This process's `(world, rank)` and, when they came from a launcher, a line saying which. A
/// `world` above 0 is the options' own. `world` 0 (the trainers' default) takes them from the first
/// launcher of [`LAUNCHERS`] whose size variable `env` holds, when there is an exchange directory to
/// share (a launcher's variables mean nothing to a run that exchanges in memory); otherwise one
/// process. A variable that is not a number, a rank not below the size, or a `rank` option that
/// contradicts the launcher's is an error naming the variable.
pub fn resolve_world(world: usize, rank: usize, exchange_dir: bool, env: impl Fn(&str) -> Option<String>) -> Result<(usize, usize, Option<String>)> {
    if world > 0 || !exchange_dir {
        return Ok((world.max(1), rank, None));
    }
    for &(size_var, rank_var, launcher) in LAUNCHERS {
        let Some(size) = env(size_var) else { continue };
        let number =
            |var: &str, v: &str| v.trim().parse::<usize>().map_err(|_| crate::Error::Invalid(format!("{var}={v:?} is not a number ({launcher}'s variable)")));
        let n = number(size_var, &size)?;
        let Some(r) = env(rank_var) else {
            bail!(Invalid, "{size_var} is set ({launcher}) but {rank_var} is not; give --world and --rank");
        };
        let r = number(rank_var, &r)?;
        if n == 0 || r >= n {
            bail!(Invalid, "{rank_var}={r} with {size_var}={n} ({launcher}): the rank must be below the size");
        }
        if rank != 0 && rank != r {
            bail!(Invalid, "--rank {rank} contradicts {rank_var}={r} ({launcher}); give --world too, or leave --rank out");
        }
        return Ok((n, r, Some(format!("rank {r} of {n} from {launcher}'s {size_var} and {rank_var}"))));
    }
    Ok((1, rank, None))
}

/// Where a process's models sit in a codistillation: `models` here, `world` processes, this one
/// `rank`; global model `rank * models + local` trains on its own shard of the data (or on all
/// of it with `same_data`). A single model keeps the trainer's own `shards`/`shard` split.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Topology {
    pub models: usize,
    pub world: usize,
    pub rank: usize,
    pub same_data: bool,
    pub shards: usize,
    pub shard: usize,
}

impl Topology {
    /// Models in the whole codistillation, over every process.
    pub fn total(&self) -> usize {
        self.models * self.world
    }

    /// Check the options against each other (and the weights against their ranges).
    pub fn check(&self, exchange_dir: Option<&Path>, distill_weight: f32, exchange_every: u64, label_smoothing: f32) -> Result<()> {
        // (`distill_weight`: the term's weight in its form, checked by `DistillForm::from_options`.)
        if self.models == 0 || self.world == 0 {
            bail!(Invalid, "models and world must be positive (got {} and {})", self.models, self.world);
        }
        if self.world > 1 && (exchange_dir.is_none() || self.models != 1 || self.rank >= self.world) {
            bail!(Invalid, "a {}-process run needs --exchange-dir, --models 1 and a rank below the world (rank {})", self.world, self.rank);
        }
        if self.total() > 1 && self.shards != 1 {
            bail!(Invalid, "in codistillation each model takes its own shard; leave shards at 1 (got {})", self.shards);
        }
        if self.total() > 1 && distill_weight > 0.0 && exchange_every == 0 {
            bail!(Invalid, "exchange_every must be positive in codistillation: at 0 no model would publish, and the distillation term would never turn on");
        }
        if !(0.0..1.0).contains(&label_smoothing) || (label_smoothing > 0.0 && self.total() > 1) {
            bail!(
                Invalid,
                "label_smoothing must be in [0, 1) and is for a single model (the control baseline), got {label_smoothing} with {} models",
                self.total()
            );
        }
        Ok(())
    }

    /// Global index of local model `local`.
    pub fn index(&self, local: usize) -> usize {
        self.rank * self.models + local
    }

    /// `(n, i)`: model `index` trains on shard `i` of `n`.
    pub fn shard_of(&self, index: usize) -> (usize, usize) {
        match (self.total() > 1, self.same_data) {
            (false, _) => (self.shards, self.shard),
            (true, true) => (1, 0),
            (true, false) => (self.total(), index),
        }
    }

    /// The exchange for this process: a shared directory across processes, else in memory.
    /// `template` gives the parameter names and shapes.
    /// Across processes, `compat` (`key=value` pairs joined by `;`: what peers must agree on) is
    /// written into every published file and a peer's file with other values is refused; a
    /// `fresh` run (not resumed) refuses a directory that already holds its own rank's file.
    pub fn exchange(&self, exchange_dir: Option<&Path>, template: &ParamStore, compat: &str, fresh: bool) -> Result<Box<dyn Exchange>> {
        Ok(match exchange_dir {
            Some(dir) if self.world > 1 => Box::new(DirExchange::new(dir, self.rank, self.world, template, Duration::from_millis(50), compat, fresh)?),
            _ => Box::new(InProcess::new(self.total())),
        })
    }
}

/// The end of a step of every local model: swap in the snapshots published at an earlier step
/// boundary (`Exchange::advance`), then, when `publish`, publish every local model's weights as of
/// `step` (the number of steps done). Returns the time the compute path spent here. The protocol
/// of a step, per model: `latest` for its teachers, forward and backward, `settle` (the exchange
/// stops reading its weights), the optimizer update; then `end_step` once. The trainers do every
/// model's forward and backward before the first `settle`, which gives a publish's background copy
/// the whole step.
pub fn end_step<'a>(exchange: &mut dyn Exchange, step: u64, publish: bool, models: impl Iterator<Item = (usize, &'a ParamStore)>) -> Result<Duration> {
    let (r, mut spent) = timed(|| exchange.advance());
    r?;
    if publish {
        for (index, store) in models {
            let (r, waited) = timed(|| exchange.publish(index, step, store));
            r?;
            spent += waited;
        }
    }
    Ok(spent)
}

/// How the distillation term joins the task loss.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum DistillForm {
    /// The codistillation paper's form (Anil et al. 2018, Algorithm 1; deep mutual learning; the
    /// authors' reference code): `task + lambda * distill`, lambda reached linearly over `ramp`
    /// steps after the burn-in (0: at once). The task term keeps its weight when the term turns
    /// on, so an optimizer's running statistics (Adam's second moment) see no drop in the gradient.
    Additive { lambda: f32, ramp: u64 },
    /// Hinton et al.'s convex mix, `(1 - alpha) * task + alpha * distill` (alpha in (0, 1]):
    /// offline distillation as torchdistill and TextBrewer users know it. When the term turns on,
    /// the task gradient shrinks to `1 - alpha` of itself.
    Convex { alpha: f32 },
}

impl DistillForm {
    /// From the options: `alpha` > 0 selects the convex mix, else the paper's form with
    /// `distill_lambda`; `distill_weight`, the convex weight of the form used before 2026-12-02, is
    /// taken as alpha (its meaning kept), with a message that says so.
    pub fn from_options(lambda: f32, alpha: f32, ramp: u64, distill_weight: Option<f32>) -> Result<DistillForm> {
        let alpha = match distill_weight {
            Some(w) if alpha > 0.0 && w != alpha => {
                bail!(Invalid, "distill_weight {w} and alpha {alpha} disagree: distill_weight is the old name of alpha (the convex mix); give alpha alone")
            }
            Some(w) => {
                eprintln!(
                    "note: distill_weight {w} is the convex mix (1 - w) * task + w * distill, now named alpha; the default is now the paper's task + distill_lambda * distill (lambda {} keeps the terms' ratio; 1 is the paper's)",
                    if w < 1.0 { format!("{:.4}", w / (1.0 - w)) } else { "infinite".into() }
                );
                w
            }
            None => alpha,
        };
        if distill_weight == Some(0.0) {
            // The old way to turn the term off keeps meaning off.
            return Ok(DistillForm::Additive { lambda: 0.0, ramp });
        }
        if !(0.0..=1.0).contains(&alpha) {
            bail!(Invalid, "alpha (the convex mix, formerly distill_weight) must be in [0, 1], got {alpha}");
        }
        if alpha > 0.0 {
            return Ok(DistillForm::Convex { alpha });
        }
        if !(lambda >= 0.0 && lambda.is_finite()) {
            bail!(Invalid, "distill_lambda must be finite and at least 0, got {lambda}");
        }
        Ok(DistillForm::Additive { lambda, ramp })
    }

    /// The term's full weight (0: the term is off).
    pub fn weight(&self) -> f32 {
        match *self {
            DistillForm::Additive { lambda, .. } => lambda,
            DistillForm::Convex { alpha } => alpha,
        }
    }

    /// `(mix, scale)` at `step` (the term on from `burn_in`): the loss is
    /// `scale * ((1 - mix) * task + mix * distill)`, the form the fused kernels take.
    pub fn mix_at(&self, step: u64, burn_in: u64) -> (f32, f32) {
        let m = self.scheduled(step, burn_in, u64::MAX, Anneal::Constant, None);
        (m.mix, m.scale)
    }

    /// The term's weight (lambda or alpha) at `step` of a run of `total` steps: the full weight,
    /// reached over the ramp, moved toward `end` by `anneal` from the burn-in to the last step.
    pub fn weight_at(&self, step: u64, burn_in: u64, total: u64, anneal: Anneal, end: Option<f32>) -> f32 {
        let w = anneal.value(self.weight(), end.unwrap_or(0.0), Anneal::progress(step, burn_in, total));
        match *self {
            DistillForm::Additive { ramp, .. } if ramp > 0 => w * ((step.saturating_sub(burn_in) + 1) as f32 / ramp as f32).min(1.0),
            _ => w,
        }
    }

    /// [`Mix`] at `step` of a run of `total` steps, the weight scheduled by `anneal` toward `end`
    /// (default 0).
    pub fn scheduled(&self, step: u64, burn_in: u64, total: u64, anneal: Anneal, end: Option<f32>) -> Mix {
        let w = self.weight_at(step, burn_in, total, anneal, end);
        let progress = Anneal::progress(step, burn_in, total);
        match *self {
            DistillForm::Convex { .. } => Mix { mix: w, scale: 1.0, progress },
            DistillForm::Additive { .. } => Mix { mix: w / (1.0 + w), scale: 1.0 + w, progress },
        }
    }

    /// For logs and the exchange's compatibility record.
    pub fn describe(&self) -> String {
        match *self {
            DistillForm::Additive { lambda, ramp } => format!("task+{lambda}*distill(ramp {ramp})"),
            DistillForm::Convex { alpha } => format!("(1-{alpha})*task+{alpha}*distill"),
        }
    }
}

/// How a distillation setting moves from its value at the burn-in to a final value at the run's
/// last step: kept (constant), along a straight line, or along a half cosine (slow at both ends),
/// as TextBrewer's weight and temperature schedulers and torchdistill's do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Anneal {
    #[default]
    Constant,
    Linear,
    Cosine,
}

crate::named_choices!(Anneal, "a schedule", { Constant => "constant", Linear => "linear", Cosine => "cosine" });

impl Anneal {
    /// The share of the way from the start value to the final one at `progress` in [0, 1].
    pub fn share(self, progress: f32) -> f32 {
        let p = progress.clamp(0.0, 1.0);
        match self {
            Anneal::Constant => 0.0,
            Anneal::Linear => p,
            Anneal::Cosine => 0.5 * (1.0 - (std::f32::consts::PI * p).cos()),
        }
    }

    /// `start` moved toward `end` by [`share`](Self::share)`(progress)`.
    pub fn value(self, start: f32, end: f32, progress: f32) -> f32 {
        match self {
            Anneal::Constant => start,
            _ => start + (end - start) * self.share(progress),
        }
    }

    /// How far a step is through the distilling part of a run: 0 at `burn_in`, 1 at the last step
    /// (`total - 1`).
    pub fn progress(step: u64, burn_in: u64, total: u64) -> f32 {
        let span = total.saturating_sub(1).saturating_sub(burn_in);
        if span == 0 {
            return 1.0;
        }
        (step.saturating_sub(burn_in) as f64 / span as f64).min(1.0) as f32
    }

    /// A final value for a setting with this schedule: `end` given with a constant schedule, or an
    /// end outside `range`, is an error naming `what`'s options.
    pub fn check(self, what: &str, end: Option<f32>, range: std::ops::RangeInclusive<f32>) -> Result<()> {
        match (self, end) {
            (Anneal::Constant, Some(e)) => {
                bail!(Invalid, "{what}_final {e} is given but {what}_schedule is constant: give {what}_schedule linear or cosine, or no {what}_final")
            }
            (_, Some(e)) if !(e.is_finite() && range.contains(&e)) => {
                bail!(Invalid, "{what}_final must be in [{}, {}], got {e}", range.start(), range.end())
            }
            _ => Ok(()),
        }
    }
}

/// The distillation term's settings at one step, as a task's loss takes them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Mix {
    /// The loss is `scale * ((1 - mix) * task + mix * distill)`, the form the fused kernels take.
    pub mix: f32,
    pub scale: f32,
    /// How far the step is through the distilling part of the run (0 at the burn-in, 1 at the last
    /// step), for a task's own schedules (a language model's temperature).
    pub progress: f32,
}

/// When and how strongly models distill from each other.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CodistillSchedule {
    /// Steps with the distillation term off.
    pub burn_in: u64,
    /// Publish a checkpoint every this many steps.
    pub exchange_every: u64,
    /// Publish at most this many times (0: no limit).
    pub max_publishes: u64,
    /// Weight of the distillation term in its form (0: off); see [`DistillForm`].
    pub weight: f32,
}

impl CodistillSchedule {
    /// Whether step `step` (0-based) uses the teachers.
    pub fn distill_at(&self, step: u64) -> bool {
        self.weight > 0.0 && step >= self.burn_in
    }

    /// Whether a checkpoint is published after step `step` (0-based) completes.
    pub fn publish_after(&self, step: u64) -> bool {
        self.exchange_every > 0
            && (step + 1).is_multiple_of(self.exchange_every)
            && (self.max_publishes == 0 || (step + 1) / self.exchange_every <= self.max_publishes)
    }
}

/// Per model: which teacher snapshots it has used, and which silent peers it has warned about.
#[derive(Clone, Debug)]
pub struct TeacherTracker {
    seen: Vec<Option<u64>>,
    warned: Vec<bool>,
    exchange_every: u64,
    /// Teacher snapshots swapped in (first uses), over the run.
    pub refreshes: u64,
    staleness_sum: u64,
    uses: u64,
}

/// What using a teacher snapshot at a step means for the logs.
#[derive(Clone, Debug, PartialEq)]
pub struct TeacherUse {
    /// Steps since the teacher's snapshot was taken.
    pub staleness: u64,
    /// The first use of this snapshot (a swap): worth a metrics line.
    pub swapped: bool,
    /// Set once when the peer has been silent for more than three exchange periods.
    pub warning: Option<String>,
}

impl TeacherTracker {
    pub fn new(world: usize, exchange_every: u64) -> Self {
        TeacherTracker { seen: vec![None; world], warned: vec![false; world], exchange_every, refreshes: 0, staleness_sum: 0, uses: 0 }
    }

    /// Mean staleness (steps) over every use of a teacher snapshot, if there was one.
    pub fn mean_staleness(&self) -> Option<f64> {
        (self.uses > 0).then(|| self.staleness_sum as f64 / self.uses as f64)
    }

    /// Record that `model` used `teacher` at `step`.
    pub fn observe(&mut self, model: usize, teacher: &exchange::Snapshot, step: u64) -> TeacherUse {
        let staleness = step.saturating_sub(teacher.step);
        let swapped = self.seen[teacher.rank] != Some(teacher.step);
        self.seen[teacher.rank] = Some(teacher.step);
        (self.refreshes, self.staleness_sum, self.uses) = (self.refreshes + swapped as u64, self.staleness_sum + staleness, self.uses + 1);
        let mut warning = None;
        if self.exchange_every > 0 && staleness > 3 * self.exchange_every && !self.warned[teacher.rank] {
            self.warned[teacher.rank] = true;
            warning = Some(format!(
                "warning: model {} has not published for {staleness} steps; model {model} keeps training on its checkpoint of step {}",
                teacher.rank, teacher.step
            ));
        }
        TeacherUse { staleness, swapped, warning }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hidden learning-rate cut of the convex form, pinned: Adam on a task gradient for a
    /// burn-in, then the distillation term on (its own gradient zero here: a peer that agrees).
    /// In the convex mix the total gradient drops to 1 - alpha of the task's and Adam's second
    /// moment, which remembers the larger gradients, makes the next steps that much smaller than
    /// an uninterrupted run's; in the paper's form the task term keeps weight 1 and the steps do
    /// not change.
    #[test]
    fn the_convex_form_cuts_adams_step_after_burn_in_and_the_papers_does_not() {
        use crate::optim::{Optimizer, OptimizerKind};
        use crate::tensor::Tensor;
        let (burn_in, n) = (200u64, 16);
        // Step sizes of steps burn_in..burn_in+20, with the term's (mix, scale) applied from burn_in.
        let steps_after = |form: Option<DistillForm>| -> Vec<f64> {
            let mut rng = crate::Rng::new(3);
            let mut s = ParamStore::new();
            s.insert("w", Tensor::zeros(&[n])).unwrap();
            let mut opt = Optimizer::new(OptimizerKind::adam());
            let mut sizes = Vec::new();
            for step in 0..burn_in + 60 {
                let task: Vec<f32> = (0..n).map(|_| 1.0 + 0.3 * rng.normal() as f32).collect();
                let (mix, scale) = match form {
                    Some(f) if step >= burn_in => f.mix_at(step, burn_in),
                    _ => (0.0, 1.0),
                };
                // scale * ((1 - mix) * task + mix * distill), the distill gradient 0.
                let g: Vec<f32> = task.iter().map(|&t| scale * (1.0 - mix) * t).collect();
                let before = s.get("w").unwrap().f32s().unwrap().to_vec();
                s.zero_grads().unwrap();
                s.accumulate_grad("w", &Tensor::from_f32(g, &[n]).unwrap()).unwrap();
                opt.step(&mut s, 1e-3, None).unwrap();
                if step >= burn_in {
                    let after = s.get("w").unwrap().f32s().unwrap();
                    sizes.push(before.iter().zip(after).map(|(a, b)| ((a - b) as f64).powi(2)).sum::<f64>().sqrt());
                }
            }
            sizes
        };
        let plain = steps_after(None);
        let convex = steps_after(Some(DistillForm::Convex { alpha: 0.5 }));
        let paper = steps_after(Some(DistillForm::Additive { lambda: 1.0, ramp: 0 }));
        // Adam's first moment carries the old gradient for a few steps; from about ten steps on the
        // convex run's updates are clearly smaller, and they stay so (the second moment forgets
        // over about 1 / (1 - beta2) = 1,000 steps).
        for k in [0, 10, 20, 59] {
            let (c, p) = (convex[k] / plain[k], paper[k] / plain[k]);
            eprintln!("step {k} after the switch: convex {c:.3}, paper {p:.5}");
            assert!(k < 20 || c < 0.6, "step {k} after the switch: the convex mix's update is {c:.3} of the uninterrupted run's");
            assert!((p - 1.0).abs() < 1e-4, "step {k} after the switch: the paper's form's update is {p:.5} of the uninterrupted run's");
        }
        // A ramp reaches lambda linearly; the form's loss is scale * ((1 - mix) task + mix distill).
        let f = DistillForm::Additive { lambda: 2.0, ramp: 4 };
        let weights: Vec<f32> = (10..16).map(|t| f.mix_at(t, 10)).map(|(m, s)| m * s).collect();
        assert_eq!(weights, vec![0.5, 1.0, 1.5, 2.0, 2.0, 2.0]);
        assert!(f.mix_at(10, 10).0 * f.mix_at(10, 10).1 - 0.5 < 1e-6 && ((1.0 - f.mix_at(12, 10).0) * f.mix_at(12, 10).1 - 1.0).abs() < 1e-6);
        // The old key keeps its meaning: the convex weight, 0 is off.
        assert_eq!(DistillForm::from_options(1.0, 0.0, 0, Some(0.7)).unwrap(), DistillForm::Convex { alpha: 0.7 });
        assert_eq!(DistillForm::from_options(1.0, 0.0, 0, Some(0.0)).unwrap().weight(), 0.0);
        assert!(DistillForm::from_options(1.0, 0.3, 0, Some(0.7)).is_err());
    }
    use crate::params::ParamStore;

    #[test]
    fn schedules_move_the_weight_from_the_burn_in_to_the_last_step() {
        let (burn_in, total) = (100, 201); // distilling steps 100..=200
        let lin = DistillForm::Additive { lambda: 2.0, ramp: 0 };
        assert_eq!(lin.weight_at(100, burn_in, total, Anneal::Linear, None), 2.0);
        assert!((lin.weight_at(150, burn_in, total, Anneal::Linear, None) - 1.0).abs() < 1e-6);
        assert_eq!(lin.weight_at(200, burn_in, total, Anneal::Linear, None), 0.0);
        assert!((lin.weight_at(150, burn_in, total, Anneal::Linear, Some(4.0)) - 3.0).abs() < 1e-6);
        // The half cosine: slow at both ends, half way at the middle.
        let c = |step| lin.weight_at(step, burn_in, total, Anneal::Cosine, None);
        assert!((c(150) - 1.0).abs() < 1e-6 && c(110) > 1.95 && c(190) < 0.05, "{} {} {}", c(110), c(150), c(190));
        // Constant: the form's own weight, and mix_at's figures unchanged.
        assert_eq!(lin.scheduled(170, burn_in, total, Anneal::Constant, None), Mix { mix: 2.0 / 3.0, scale: 3.0, progress: 0.7 });
        assert_eq!(lin.mix_at(170, burn_in), (2.0 / 3.0, 3.0));
        // A ramp multiplies the schedule.
        let ramped = DistillForm::Additive { lambda: 2.0, ramp: 10 };
        assert!((ramped.weight_at(104, burn_in, total, Anneal::Linear, Some(2.0)) - 1.0).abs() < 1e-6);
        // The convex mix keeps scale 1 and moves alpha.
        let convex = DistillForm::Convex { alpha: 0.8 };
        let m = convex.scheduled(200, burn_in, total, Anneal::Linear, Some(0.2));
        assert!((m.mix - 0.2).abs() < 1e-6 && m.scale == 1.0);
        // A final value with a constant schedule, or outside the form's range, is refused.
        assert!(Anneal::Constant.check("distill", Some(0.5), 0.0..=1.0).unwrap_err().to_string().contains("distill_schedule"));
        assert!(Anneal::Linear.check("distill", Some(1.5), 0.0..=1.0).unwrap_err().to_string().contains("distill_final"));
        assert!(Anneal::Linear.check("distill", None, 0.0..=1.0).is_ok());
        assert!("quadratic".parse::<Anneal>().unwrap_err().contains("constant, linear or cosine"));
    }

    #[test]
    fn topology_assigns_shards_and_rejects_inconsistent_options() {
        let t = Topology { models: 1, world: 3, rank: 2, same_data: false, shards: 1, shard: 0 };
        assert_eq!((t.total(), t.index(0), t.shard_of(t.index(0))), (3, 2, (3, 2)));
        assert_eq!(Topology { same_data: true, ..t }.shard_of(2), (1, 0));
        let single = Topology { models: 1, world: 1, rank: 0, same_data: false, shards: 4, shard: 1 };
        assert_eq!(single.shard_of(0), (4, 1));
        assert!(t.check(None, 0.5, 50, 0.0).unwrap_err().to_string().contains("--exchange-dir"));
        assert!(t.check(Some(Path::new("x")), 0.5, 50, 0.1).unwrap_err().to_string().contains("single model"));
        assert!(DistillForm::from_options(1.0, 1.5, 0, None).unwrap_err().to_string().contains("alpha"));
        assert!(DistillForm::from_options(-1.0, 0.0, 0, None).unwrap_err().to_string().contains("distill_lambda"));
        assert!(Topology { models: 2, ..single }.check(None, 0.5, 50, 0.0).unwrap_err().to_string().contains("shards"));
        // Exchanging every 0 steps would never turn the term on: refused where there is a term.
        let pair = Topology { models: 2, shards: 1, shard: 0, ..single };
        assert!(pair.check(None, 0.5, 0, 0.0).unwrap_err().to_string().contains("exchange_every"));
        assert!(pair.check(None, 0.0, 0, 0.0).is_ok() && single.check(None, 0.5, 0, 0.0).is_ok());
    }

    #[test]
    fn rank_and_world_come_from_the_options_or_a_launchers_variables() {
        let env = |vars: &'static [(&'static str, &'static str)]| move |k: &str| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string());
        let torchrun = env(&[("WORLD_SIZE", "4"), ("RANK", "3"), ("SLURM_NTASKS", "2"), ("SLURM_PROCID", "1")]);
        // Options win; without an exchange directory the variables mean nothing.
        assert_eq!(resolve_world(2, 1, true, torchrun).unwrap(), (2, 1, None));
        assert_eq!(resolve_world(0, 0, false, torchrun).unwrap(), (1, 0, None));
        let (w, r, why) = resolve_world(0, 0, true, torchrun).unwrap();
        assert_eq!((w, r), (4, 3), "torchrun's variables come first");
        assert!(why.unwrap().contains("torchrun's WORLD_SIZE and RANK"));
        assert_eq!(resolve_world(0, 0, true, env(&[("SLURM_NTASKS", "2"), ("SLURM_PROCID", "1")])).unwrap().0, 2);
        assert_eq!(resolve_world(0, 0, true, env(&[("OMPI_COMM_WORLD_SIZE", "3"), ("OMPI_COMM_WORLD_RANK", "2")])).unwrap().1, 2);
        assert_eq!(resolve_world(0, 0, true, env(&[("PMI_SIZE", "2"), ("PMI_RANK", "0")])).unwrap().0, 2);
        assert_eq!(resolve_world(0, 0, true, env(&[])).unwrap(), (1, 0, None), "no launcher: one process");
        for (vars, what) in [
            (&[("WORLD_SIZE", "two"), ("RANK", "0")][..], "WORLD_SIZE=\"two\" is not a number"),
            (&[("WORLD_SIZE", "2")][..], "RANK is not"),
            (&[("WORLD_SIZE", "2"), ("RANK", "2")][..], "RANK=2 with WORLD_SIZE=2"),
        ] {
            let e = resolve_world(0, 0, true, |k: &str| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())).unwrap_err().to_string();
            assert!(e.contains(what), "{e}");
        }
        let e = resolve_world(0, 1, true, torchrun).unwrap_err().to_string();
        assert!(e.contains("--rank 1 contradicts RANK=3"), "{e}");
    }

    #[test]
    fn schedule_publishes_every_period_up_to_the_limit() {
        let s = CodistillSchedule { burn_in: 10, exchange_every: 50, max_publishes: 0, weight: 0.5 };
        let at = |s: CodistillSchedule| (0..500).filter(|&t| s.publish_after(t)).collect::<Vec<_>>();
        assert_eq!(at(s), (1..=10).map(|k| 50 * k - 1).collect::<Vec<_>>());
        assert_eq!(at(CodistillSchedule { max_publishes: 2, ..s }), vec![49, 99]);
        assert!(!s.distill_at(9) && s.distill_at(10) && !CodistillSchedule { weight: 0.0, ..s }.distill_at(10));
    }

    #[test]
    fn tracker_reports_swaps_once_and_warns_once_about_a_silent_peer() {
        let mut t = TeacherTracker::new(2, 10);
        let snap = exchange::Snapshot { rank: 1, step: 20, params: ParamStore::new() };
        assert_eq!(t.observe(0, &snap, 25), TeacherUse { staleness: 5, swapped: true, warning: None });
        assert!(!t.observe(0, &snap, 26).swapped);
        // Three periods stale is not yet silent; one step more is.
        assert!(t.observe(0, &snap, 50).warning.is_none());
        let w = t.observe(0, &snap, 51).warning.unwrap();
        assert!(w.contains("model 1 has not published for 31 steps"), "{w}");
        assert!(t.observe(0, &snap, 60).warning.is_none());
        // What result.json reports: snapshots swapped in, and the mean staleness of every use.
        let newer = exchange::Snapshot { rank: 1, step: 60, params: ParamStore::new() };
        t.observe(0, &newer, 64);
        assert_eq!(t.refreshes, 2);
        let uses = [5u64, 6, 30, 31, 40, 4];
        assert_eq!(t.mean_staleness(), Some(uses.iter().sum::<u64>() as f64 / uses.len() as f64));
        assert_eq!(TeacherTracker::new(2, 10).mean_staleness(), None, "no use, no mean");
        // Without an exchange period there is no silence to warn about.
        let mut never = TeacherTracker::new(2, 0);
        assert!(never.observe(0, &snap, 5000).warning.is_none());
    }
}
