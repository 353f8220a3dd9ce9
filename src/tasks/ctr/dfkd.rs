//! Data-free distillation of a click model: FastDFKD (Fang et al., AAAI 2022, "Up to 100x Faster
//! Data-free Knowledge Distillation") and the baselines of its ablation, in one synthesizer.
//!
//! A click model cannot be sampled as a language model can: it maps rows to a probability. The
//! transfer set is synthesised from the teacher alone, by inverting it:
//!
//! - **Rows.** A synthetic row is 26 category rows and 13 integer features with their missing
//!   flags. Each field's category is a choice among its `dfkd_candidates` most used rows (the
//!   teacher's recorded usage, [`super::stats`]), relaxed by a straight-through Gumbel-softmax
//!   (the forward pass sees the hard choice, a real row of the table; the gradient flows through
//!   the soft one). The choice's logits are a query per field against the candidates' teacher
//!   embeddings (unit length) plus the log of their recorded shares, so a zero query draws each
//!   field from its marginal. Missing flags are relaxed Bernoulli variables (straight-through
//!   too); a missing value is 0, as preprocessing writes it. Choosing among rows the teacher was
//!   trained on keeps every synthetic row one the student can embed; a continuous embedding
//!   could not be given to a student with its own table.
//! - **Loss** (the paper's, adapted): `bn * L_stats + oh * L_class + adv * L_adv`. `L_stats`: for
//!   the dense inputs and each hidden layer, `|mean_batch - mean_recorded|_2 + |var_batch -
//!   var_recorded|_2` (DeepInversion's batch-norm prior, over the moments this model records in
//!   place of batch-norm statistics). `L_class`: the teacher's binary cross-entropy toward labels
//!   drawn at `dfkd_click_rate` (the paper's one-hot term). `L_adv`: minus the KL divergence of
//!   the student's click probability from the teacher's (the teacher's side held constant), so the
//!   rows go where the student still disagrees.
//! - **Methods** (`data_free`): `fast` adapts a copy of the meta-generator and the batch's latents
//!   for `dfkd_steps` steps, then moves the meta-generator toward the adapted one (Reptile: Adam on
//!   `theta_meta - theta_adapted`, as the authors' code); `sequential` starts each batch from the
//!   last batch's adapted generator (the ablation without meta-learning); `generator` trains one
//!   generator on, `dfkd_steps` updates a batch with fresh latents each step and no latent
//!   optimisation (DAFL/DFAD-style); `inversion` optimises each batch's rows directly from noise for
//!   `dfkd_steps` steps (DeepInversion-style, no generator).
//! - **Bank.** Each synthesis keeps the rows of its lowest-loss step (as the authors' code keeps
//!   its best inputs) in a memory bank of at most `dfkd_bank` rows (the oldest dropped); the
//!   student trains on batches drawn from the bank, each row labelled by a draw from the teacher's
//!   probability (the click analogue of the language model's sampled text), beside the
//!   distillation term toward the teacher, which the loop runs on each batch. A synthesis every
//!   `dfkd_every` student steps.

use super::model::CtrModel;
use super::stats::FeatureStats;
use crate::autograd::{Graph, Var};
use crate::checkpoint::Checkpoint;
use crate::data::criteo::{DENSE_WIDTH, NUM_CATS, NUM_INTS};
use crate::nn::Linear;
use crate::ops::elementwise::{Binary, Unary};
use crate::ops::softmax_kl::Divergence;
use crate::optim::{Optimizer, OptimizerKind};
use crate::params::ParamStore;
use crate::tensor::{Device, Tensor};
use crate::{bail, Error, Result, Rng};
use std::path::Path;
use std::time::Instant;

/// How a data-free run synthesises its rows (`off`: it trains on data).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DataFree {
    #[default]
    Off,
    Fast,
    Sequential,
    Generator,
    Inversion,
}

crate::named_choices!(DataFree, "a data-free method", { Off => "off", Fast => "fast", Sequential => "sequential", Generator => "generator", Inversion => "inversion" });
crate::config_enum!(DataFree);

/// The synthesis settings (the `dfkd_*` options).
#[derive(Clone, Debug)]
pub struct Settings {
    pub method: DataFree,
    /// Adaptation steps per synthesised batch (k).
    pub steps: usize,
    /// Rows per synthesised batch.
    pub rows: usize,
    /// Student steps per synthesis.
    pub every: u64,
    /// The bank's size in rows.
    pub bank: usize,
    /// Adam's learning rate for the generator (or, in inversion, the rows).
    pub lr: f32,
    /// Adam's learning rate for the latents.
    pub lr_z: f32,
    /// The meta-generator's learning rate (fast).
    pub meta_lr: f32,
    pub bn: f32,
    pub oh: f32,
    pub adv: f32,
    /// Weight of the covariance term (each hidden layer's batch covariance against the recorded one).
    pub cov: f32,
    /// The class term's click rate (0: the teacher's recorded training rate).
    pub click_rate: f32,
    /// Category rows per field the generator chooses among.
    pub candidates: usize,
    /// The Gumbel-softmax temperature.
    pub temperature: f32,
    /// Latent width and the generator's hidden width.
    pub latent: usize,
    pub hidden: usize,
    pub seed: u64,
}

impl Settings {
    /// Errors naming the option for settings that cannot run.
    pub fn check(&self) -> Result<()> {
        let named = |ok: bool, what: &str| if ok { Ok(()) } else { Err(Error::Invalid(format!("data_free {}: {what}", self.method))) };
        named(self.steps > 0, "dfkd_steps must be at least 1 (k adaptation steps per synthesised batch)")?;
        named(self.rows > 0, "dfkd_rows must be at least 1")?;
        named(self.every > 0, "dfkd_every must be at least 1 (student steps per synthesis)")?;
        named(self.bank > 0, "dfkd_bank is the memory bank's size in rows and must be at least 1 (an empty bank gives the student nothing to train on)")?;
        named(self.candidates > 0, "dfkd_candidates must be at least 1")?;
        named(self.latent > 0 && self.hidden > 0, "dfkd_latent and dfkd_hidden must be at least 1")?;
        for (name, v) in [("dfkd_lr", self.lr), ("dfkd_lr_z", self.lr_z), ("dfkd_meta_lr", self.meta_lr), ("dfkd_temperature", self.temperature)] {
            named(v > 0.0 && v.is_finite(), &format!("{name} must be a finite number above 0, got {v}"))?;
        }
        for (name, v) in [("dfkd_bn", self.bn), ("dfkd_oh", self.oh), ("dfkd_adv", self.adv), ("dfkd_cov", self.cov)] {
            named(v >= 0.0 && v.is_finite(), &format!("{name} must be a finite number >= 0, got {v}"))?;
        }
        named((0.0..1.0).contains(&self.click_rate), &format!("dfkd_click_rate must be in [0, 1) (0: the teacher's), got {}", self.click_rate))
    }
}

/// Synthesised rows, at most `cap`, the oldest replaced first.
#[derive(Clone, Debug, Default)]
pub struct Bank {
    pub cap: usize,
    /// `[len * 26]` global category rows.
    pub ids: Vec<i32>,
    /// `[len * 26]` dense inputs (13 values, 13 flags).
    pub dense: Vec<f32>,
    pub labels: Vec<f32>,
    /// Where the next row goes once full.
    pub next: usize,
}

impl Bank {
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    fn push(&mut self, ids: &[i32], dense: &[f32], label: f32) {
        if self.len() < self.cap {
            self.ids.extend_from_slice(ids);
            self.dense.extend_from_slice(dense);
            self.labels.push(label);
        } else {
            let i = self.next;
            self.ids[i * NUM_CATS..(i + 1) * NUM_CATS].copy_from_slice(ids);
            self.dense[i * DENSE_WIDTH..(i + 1) * DENSE_WIDTH].copy_from_slice(dense);
            self.labels[i] = label;
        }
        self.next = (self.next + 1) % self.cap;
    }

    /// Rows `idx` as a batch: ids `[n * 26]`, dense `[n, 26]`, labels `[n]`.
    pub fn batch(&self, idx: &[usize]) -> Result<(Tensor, Tensor, Tensor)> {
        if self.is_empty() {
            bail!(Invalid, "data_free: the memory bank is empty: nothing to train the student on");
        }
        let n = idx.len();
        let (mut ids, mut dense, mut labels) = (Vec::with_capacity(n * NUM_CATS), Vec::with_capacity(n * DENSE_WIDTH), Vec::with_capacity(n));
        for &i in idx {
            ids.extend_from_slice(&self.ids[i * NUM_CATS..(i + 1) * NUM_CATS]);
            dense.extend_from_slice(&self.dense[i * DENSE_WIDTH..(i + 1) * DENSE_WIDTH]);
            labels.push(self.labels[i]);
        }
        Ok((Tensor::from_i32(ids, &[n * NUM_CATS])?, Tensor::from_f32(dense, &[n, DENSE_WIDTH])?, Tensor::from_f32(labels, &[n])?))
    }
}

/// The generator: latents through two ReLU layers, then three heads: each field's query
/// `[n, 26 * emb]`, the integer values `[n, 13]` and the missing flags' logits `[n, 13]`.
struct Generator {
    body: [Linear; 2],
    query: Linear,
    values: Linear,
    flags: Linear,
}

impl Generator {
    fn new(store: &mut ParamStore, s: &Settings, emb: usize, rng: &mut Rng) -> Result<Self> {
        Ok(Generator {
            body: [Linear::new(store, "gen.0", s.latent, s.hidden, true, rng)?, Linear::new(store, "gen.1", s.hidden, s.hidden, true, rng)?],
            query: Linear::new(store, "gen.query", s.hidden, NUM_CATS * emb, true, rng)?,
            values: Linear::new(store, "gen.values", s.hidden, NUM_INTS, true, rng)?,
            flags: Linear::new(store, "gen.flags", s.hidden, NUM_INTS, true, rng)?,
        })
    }

    fn forward(&self, g: &mut Graph, store: &ParamStore, z: Var) -> Result<[Var; 3]> {
        let mut h = z;
        for l in &self.body {
            h = l.forward(g, store, h)?;
            h = g.relu(h)?;
        }
        Ok([self.query.forward(g, store, h)?, self.values.forward(g, store, h)?, self.flags.forward(g, store, h)?])
    }
}

/// What a synthesis did, for the run's report.
#[derive(Clone, Copy, Debug, Default)]
pub struct SynthesisTotals {
    pub batches: u64,
    pub rows: u64,
    pub seconds: f64,
    /// The last batch's kept step: its three terms (unweighted), its total, and the teacher's mean
    /// click probability on its rows.
    pub last: [f64; 5],
}

/// A data-free run's synthesizer: the teacher's side (candidates, recorded moments), the
/// generator (meta or persistent) with its optimizer, and the bank.
pub struct Synthesizer {
    pub settings: Settings,
    /// Per field `p` candidate rows (global), padded with the field's first where it has fewer.
    cand: Vec<Vec<i32>>,
    p: usize,
    emb: usize,
    /// The log prior `[26 p]`: each candidate's log share within its field (padding far below).
    prior: Tensor,
    /// Block-diagonal keys `[26 emb, 26 p]`: field `f`'s candidates' unit teacher embeddings.
    keys: Tensor,
    /// The teacher's first-layer rows of the candidates.
    teacher_rows: Tensor,
    /// Recorded mean and variance `[1, w]` of the values, the flags and each hidden layer.
    targets: Vec<(Tensor, Tensor)>,
    /// Each hidden layer's recorded covariance `[w, w]` (with a covariance weight).
    covs: Vec<Tensor>,
    click_rate: f32,
    /// The recorded dense moments (mean, variance) `[26]`.
    dense: (Vec<f32>, Vec<f32>),
    gen: Generator,
    /// The generator the batches start from: the meta-generator (fast), the last adapted one
    /// (sequential), the one trained on (generator); unused in inversion.
    pub store: ParamStore,
    /// The meta-generator's Adam (fast), the generator's (generator).
    pub opt: Optimizer,
    pub bank: Bank,
    pub totals: SynthesisTotals,
    dev: Device,
    be: crate::Backend,
}

/// Adam with the paper's generator betas (0.5, 0.999).
fn adam() -> Optimizer {
    Optimizer::new(OptimizerKind::Adam { beta1: 0.5, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 })
}

/// `[1, w]` on `dev`.
fn row(v: &[f32], dev: Device) -> Result<Tensor> {
    Tensor::from_f32(v.to_vec(), &[1, v.len()])?.to_device(dev)
}

impl Synthesizer {
    /// A synthesizer for `teacher` (its model and weights, and the statistics its checkpoint
    /// recorded).
    pub fn new(settings: Settings, teacher: &CtrModel, tstore: &ParamStore, stats: &FeatureStats, be: crate::Backend) -> Result<Self> {
        settings.check()?;
        let dev = tstore.device();
        let emb = teacher.emb.dim;
        let p = settings.candidates.min(stats.ids.ids.iter().map(Vec::len).max().unwrap_or(0));
        if p == 0 || stats.ids.ids.iter().any(Vec::is_empty) {
            bail!(Invalid, "data_free: the teacher's statistics record no category rows for some field");
        }
        // Each field's rows lie in its own block of the table (a corrupted file's would not).
        let buckets = teacher.emb.vocab / NUM_CATS;
        for (f, ids) in stats.ids.ids.iter().enumerate() {
            if let Some(&r) = ids.iter().find(|&&r| r < (f * buckets) as i32 || r >= ((f + 1) * buckets) as i32) {
                bail!(Invalid, "data_free: the teacher's statistics name row {r} for field {f}, outside its rows {}..{}", f * buckets, (f + 1) * buckets);
            }
        }
        let (mut cand, mut prior) = (Vec::new(), Vec::new());
        for (ids, share) in stats.ids.ids.iter().zip(&stats.ids.share) {
            let k = ids.len().min(p);
            let total: f64 = share[..k].iter().map(|&s| s as f64).sum::<f64>().max(1e-30);
            let mut c = ids[..k].to_vec();
            c.resize(p, ids[0]);
            cand.push(c);
            prior.extend((0..p).map(|j| if j < k { ((share[j] as f64 / total).max(1e-30).ln()) as f32 } else { -1e4 }));
        }
        let rows = teacher.embedding_rows(tstore, &cand)?;
        let mut keys = vec![0f32; NUM_CATS * emb * NUM_CATS * p];
        for f in 0..NUM_CATS {
            for j in 0..p {
                let e = &rows[(f * p + j) * emb..(f * p + j + 1) * emb];
                let norm = e.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
                for (d, &x) in e.iter().enumerate() {
                    keys[(f * emb + d) * NUM_CATS * p + f * p + j] = x / norm;
                }
            }
        }
        let widths = teacher.hidden_widths();
        if stats.hidden.len() != widths.len() || stats.hidden.iter().zip(&widths).any(|(h, &w)| h.0.len() != w) || stats.dense.0.len() != DENSE_WIDTH {
            bail!(Invalid, "data_free: the teacher's recorded statistics do not match its layers ({widths:?})");
        }
        let (dm, dv) = &stats.dense;
        let mut targets = vec![(row(&dm[..NUM_INTS], dev)?, row(&dv[..NUM_INTS], dev)?), (row(&dm[NUM_INTS..], dev)?, row(&dv[NUM_INTS..], dev)?)];
        for (m, v) in &stats.hidden {
            targets.push((row(m, dev)?, row(v, dev)?));
        }
        let mut covs = Vec::new();
        if settings.cov > 0.0 {
            for (l, (c, &w)) in stats.cov.iter().zip(&widths).enumerate() {
                if c.len() != w * w {
                    bail!(Invalid, "dfkd_cov: the teacher records no covariance of hidden layer {l} (statistics written before it was recorded: `codistill criteo record-stats` writes them)");
                }
                covs.push(Tensor::from_f32(c.clone(), &[w, w])?.to_device(dev)?);
            }
        }
        let click_rate = if settings.click_rate > 0.0 { settings.click_rate } else { stats.click_rate as f32 };
        let mut store = ParamStore::new();
        let gen = Generator::new(&mut store, &settings, emb, &mut Rng::new(settings.seed).fork(0x6E4))?;
        // The heads start at the recorded marginals: the values' means, the flags' log-odds.
        let (values0, flags0) = marginals(&stats.dense);
        store.set("gen.values.bias", Tensor::from_f32(values0, &[NUM_INTS])?)?;
        store.set("gen.flags.bias", Tensor::from_f32(flags0, &[NUM_INTS])?)?;
        store.to_device(dev)?;
        Ok(Synthesizer {
            teacher_rows: teacher.candidate_rows(tstore, &cand)?,
            cand,
            p,
            emb,
            prior: Tensor::from_f32(prior, &[NUM_CATS * p])?.to_device(dev)?,
            keys: Tensor::from_f32(keys, &[NUM_CATS * emb, NUM_CATS * p])?.to_device(dev)?,
            targets,
            covs,
            click_rate,
            dense: stats.dense.clone(),
            gen,
            store,
            opt: adam(),
            bank: Bank { cap: settings.bank, ..Bank::default() },
            totals: SynthesisTotals::default(),
            settings,
            dev,
            be,
        })
    }

    /// The candidates per field the generator chooses among.
    pub fn candidates(&self) -> usize {
        self.p
    }

    /// The class term's click rate.
    pub fn click_rate(&self) -> f32 {
        self.click_rate
    }

    /// The batch's rows from the generator's (or the rows') outputs `[query, values, flag logits]`
    /// and the batch's noise: each field's choice by a straight-through Gumbel-softmax over its
    /// candidates, the flags by a straight-through relaxed Bernoulli, a missing value 0.
    fn relax(&self, g: &mut Graph, [q, v, fl]: [Var; 3], noise: &(Tensor, Tensor), n: usize) -> Result<Relaxed> {
        let (fp, p, dev, tau) = (NUM_CATS * self.p, self.p, self.dev, self.settings.temperature);
        let kv = g.constant(self.keys.clone());
        let logits = g.matmul(q, kv)?;
        let pv = g.constant(self.prior.clone());
        let logits = g.add_bias(logits, pv)?;
        let gv = g.constant(noise.0.clone());
        let perturbed = g.add(logits, gv)?;
        // The hard choice: each field's largest perturbed logit (the Gumbel-max draw).
        let x = g.value(perturbed).to_vec_f32()?;
        let mut hot = vec![0f32; n * fp];
        let mut ids = vec![0i32; n * NUM_CATS];
        for r in 0..n {
            for f in 0..NUM_CATS {
                let seg = &x[r * fp + f * p..r * fp + (f + 1) * p];
                let j = seg.iter().enumerate().fold(0, |b, (j, &y)| if y > seg[b] { j } else { b });
                hot[r * fp + f * p + j] = 1.0;
                ids[r * NUM_CATS + f] = self.cand[f][j];
            }
        }
        let scaled = g.unary(Unary::Scale(1.0 / tau), perturbed)?;
        let flat = g.reshape(scaled, &[n * NUM_CATS, p])?;
        let soft = g.softmax(flat)?;
        let soft = g.reshape(soft, &[n, fp])?;
        let choice = straight_through(g, soft, &Tensor::from_f32(hot, &[n, fp])?.to_device(dev)?)?;
        let lv = g.constant(noise.1.clone());
        let fl = g.add(fl, lv)?;
        let hard_flags: Vec<f32> = g.value(fl).to_vec_f32()?.iter().map(|&x| if x > 0.0 { 1.0 } else { 0.0 }).collect();
        let fs = g.unary(Unary::Scale(1.0 / tau), fl)?;
        let fs = g.sigmoid(fs)?;
        let flags = straight_through(g, fs, &Tensor::from_f32(hard_flags.clone(), &[n, NUM_INTS])?.to_device(dev)?)?;
        let present = g.constant(Tensor::from_f32(hard_flags.iter().map(|f| 1.0 - f).collect(), &[n, NUM_INTS])?.to_device(dev)?);
        let values = g.mul(v, present)?;
        Ok(Relaxed { choice, values, flags, ids, hard_flags })
    }

    /// Synthesise one batch into the bank, against `student` (weights `sstore`, for the
    /// adversarial term); `round` seeds its draws (the same round draws the same noise).
    pub fn synthesize(&mut self, teacher: &CtrModel, tstore: &ParamStore, student: &CtrModel, sstore: &ParamStore, round: u64) -> Result<()> {
        let t0 = Instant::now();
        let s = self.settings.clone();
        let n = s.rows;
        let (fp, dev) = (NUM_CATS * self.p, self.dev);
        let mut rng = Rng::new(s.seed).fork(0xDF0 + round);
        let student_rows = if s.adv > 0.0 { Some(student.candidate_rows(sstore, &self.cand)?) } else { None };
        // What is adapted: a copy of the generator (fast, sequential), the generator itself
        // (generator), or the rows (inversion); and the latents.
        let mut inputs = ParamStore::new();
        match s.method {
            DataFree::Inversion => {
                // Noise around the recorded marginals: each value from its mean and deviation,
                // the flags' logits at their log-odds, the queries from zero (each field its
                // marginal).
                let (values0, flags0) = marginals(&self.dense);
                let sd: Vec<f32> = self.dense.1[..NUM_INTS].iter().map(|v| v.sqrt()).collect();
                let noise = Tensor::randn(&[n, NUM_INTS], 1.0, &mut rng).to_vec_f32()?;
                let values: Vec<f32> = noise.iter().enumerate().map(|(i, z)| values0[i % NUM_INTS] + sd[i % NUM_INTS] * z).collect();
                let flags: Vec<f32> = (0..n * NUM_INTS).map(|i| flags0[i % NUM_INTS]).collect();
                inputs.insert("rows.query", Tensor::randn(&[n, NUM_CATS * self.emb], 0.1, &mut rng))?;
                inputs.insert("rows.values", Tensor::from_f32(values, &[n, NUM_INTS])?)?;
                inputs.insert("rows.flags", Tensor::from_f32(flags, &[n, NUM_INTS])?)?;
                inputs.to_device(dev)?;
            }
            DataFree::Generator => {}
            _ => inputs = trainable_copy(&self.store)?,
        }
        let mut z = Tensor::randn(&[n, s.latent], 1.0, &mut rng).to_device(dev)?;
        let (mut opt, mut opt_z) = (adam(), adam());
        let mut zstore = ParamStore::new();
        zstore.insert("z", z.clone())?;
        zstore.to_device(dev)?;
        // The batch's noise, drawn once (fresh each step for the generator method, whose latents
        // are fresh each step too): Gumbel for the categories, logistic for the flags.
        let draw = |rng: &mut Rng| -> Result<(Tensor, Tensor)> {
            let gumbel: Vec<f32> = (0..n * fp).map(|_| -(-(rng.uniform().max(1e-12)).ln()).max(1e-12).ln() as f32).collect();
            let logistic: Vec<f32> = (0..n * NUM_INTS)
                .map(|_| {
                    let u = rng.uniform().clamp(1e-12, 1.0 - 1e-12);
                    (u / (1.0 - u)).ln() as f32
                })
                .collect();
            Ok((Tensor::from_f32(gumbel, &[n, fp])?.to_device(dev)?, Tensor::from_f32(logistic, &[n, NUM_INTS])?.to_device(dev)?))
        };
        let mut noise = draw(&mut rng)?;
        let targets: Vec<f32> = (0..n).map(|_| if rng.uniform() < self.click_rate as f64 { 1.0 } else { 0.0 }).collect();
        let targets = Tensor::from_f32(targets, &[n])?.to_device(dev)?;
        let mut best: Option<Kept> = None;
        for it in 0..s.steps {
            if s.method == DataFree::Generator && it > 0 {
                z = Tensor::randn(&[n, s.latent], 1.0, &mut rng).to_device(dev)?;
                noise = draw(&mut rng)?;
            }
            let mut g = Graph::new().with_backend(self.be);
            // The latents are a leaf of their own (their gradient read from the tape by hand).
            let mut zleaf = None;
            let [q, v, fl] = match s.method {
                DataFree::Inversion => [g.param(&inputs, "rows.query")?, g.param(&inputs, "rows.values")?, g.param(&inputs, "rows.flags")?],
                DataFree::Generator => {
                    let zv = g.constant(z.clone());
                    self.gen.forward(&mut g, &self.store, zv)?
                }
                _ => {
                    let zv = g.leaf(zstore.get("z")?.clone());
                    zleaf = Some(zv);
                    self.gen.forward(&mut g, &inputs, zv)?
                }
            };
            let Relaxed { choice, values, flags, ids, hard_flags } = self.relax(&mut g, [q, v, fl], &noise, n)?;
            let (tl, hidden) = teacher.forward_relaxed(&mut g, tstore, choice, &self.teacher_rows, values, flags)?;
            // The recorded moments of the dense inputs and each hidden layer.
            let ones = g.constant(Tensor::full_on(&[1, n], 1.0 / n as f32, dev)?);
            let mut stats = None;
            for (x, (m, var)) in [values, flags].into_iter().chain(hidden.iter().copied()).zip(&self.targets) {
                let t = moment_gap(&mut g, ones, x, m, var)?;
                stats = Some(match stats {
                    Some(a) => g.add(a, t)?,
                    None => t,
                });
            }
            let stats = stats.expect("the dense inputs at least");
            // The joint statistics: each hidden layer's covariance against the recorded one.
            let mut joint = None;
            for (&h, c) in hidden.iter().zip(&self.covs) {
                let gap = g.covariance_gap(h, c)?;
                joint = Some(match joint {
                    Some(a) => g.add(a, gap)?,
                    None => gap,
                });
            }
            let class = g.bce_with_logits(tl, &targets)?;
            let adv = match &student_rows {
                Some(rows) => {
                    let (sl, _) = student.forward_relaxed(&mut g, sstore, choice, rows, values, flags)?;
                    let pt: Vec<f32> = g.value(tl).to_vec_f32()?.iter().map(|&x| crate::ops::math::sigmoid(x)).collect();
                    let d = g.binary_divergence(sl, &Tensor::from_f32(pt, &[n])?.to_device(dev)?, Divergence::ForwardKl)?;
                    Some(d)
                }
                None => None,
            };
            let mut total = g.unary(Unary::Scale(s.bn), stats)?;
            let c = g.unary(Unary::Scale(s.oh), class)?;
            total = g.add(total, c)?;
            if let Some(a) = adv {
                let a = g.unary(Unary::Scale(-s.adv), a)?;
                total = g.add(total, a)?;
            }
            if let Some(j) = joint {
                let j = g.unary(Unary::Scale(s.cov), j)?;
                total = g.add(total, j)?;
            }
            let lv = g.value(total).item()? as f64;
            if !lv.is_finite() {
                bail!(Invalid, "data_free: the synthesis loss is {lv} at step {it} of batch {round} (lower dfkd_lr or dfkd_lr_z)");
            }
            let mean_p = g.value(tl).to_vec_f32()?.iter().map(|&x| crate::ops::math::sigmoid(x) as f64).sum::<f64>() / n as f64;
            let terms = [g.value(stats).item()? as f64, g.value(class).item()? as f64, adv.map_or(Ok(0.0), |a| g.value(a).item())? as f64, lv, mean_p];
            if best.as_ref().is_none_or(|b| lv < b.loss) {
                let dense: Vec<f32> = {
                    let vals = g.value(values).to_vec_f32()?;
                    (0..n)
                        .flat_map(|r| {
                            vals[r * NUM_INTS..(r + 1) * NUM_INTS]
                                .iter()
                                .copied()
                                .chain(hard_flags[r * NUM_INTS..(r + 1) * NUM_INTS].iter().copied())
                                .collect::<Vec<_>>()
                        })
                        .collect()
                };
                best = Some(Kept { loss: lv, ids, dense, logits: g.value(tl).to_vec_f32()?, terms });
            }
            let grads = g.backward(total)?;
            match s.method {
                DataFree::Generator => {
                    self.store.zero_grads()?;
                    g.accumulate_grads(&grads, &mut self.store)?;
                    drop(g);
                    self.opt.step(&mut self.store, s.lr, None)?;
                }
                _ => {
                    inputs.zero_grads()?;
                    g.accumulate_grads(&grads, &mut inputs)?;
                    if let Some(gz) = zleaf.and_then(|zv| grads.get(zv)) {
                        zstore.zero_grads()?;
                        zstore.accumulate_grad("z", gz)?;
                        opt_z.step(&mut zstore, s.lr_z, None)?;
                    }
                    drop(g);
                    opt.step(&mut inputs, s.lr, None)?;
                }
            }
        }
        match s.method {
            DataFree::Fast => reptile_step(&mut self.store, &inputs, &mut self.opt, s.meta_lr)?,
            DataFree::Sequential => self.store.copy_weights_from(&inputs)?,
            _ => {}
        }
        let Kept { ids, dense, logits: tl, terms, .. } = best.expect("at least one step");
        for r in 0..n {
            // The row's label: a draw from the teacher's probability.
            let label = if rng.uniform() < crate::ops::math::sigmoid(tl[r]) as f64 { 1.0 } else { 0.0 };
            self.bank.push(&ids[r * NUM_CATS..(r + 1) * NUM_CATS], &dense[r * DENSE_WIDTH..(r + 1) * DENSE_WIDTH], label);
        }
        self.totals.batches += 1;
        self.totals.rows += n as u64;
        self.totals.seconds += t0.elapsed().as_secs_f64();
        self.totals.last = terms;
        Ok(())
    }

    /// Into a checkpoint: the generator, its optimizer, the bank and the totals (`dfkd.*`).
    pub fn save(&self, c: &mut Checkpoint) -> Result<()> {
        for (name, p) in self.store.iter() {
            c.tensors.insert(format!("dfkd.{name}"), p.value.clone());
        }
        for (name, t) in self.opt.state_tensors() {
            c.tensors.insert(format!("dfkd.optim/{name}"), t);
        }
        let b = &self.bank;
        if !b.is_empty() {
            c.tensors.insert("dfkd.bank.ids".into(), Tensor::from_i32(b.ids.clone(), &[b.len(), NUM_CATS])?);
            c.tensors.insert("dfkd.bank.dense".into(), Tensor::from_f32(b.dense.clone(), &[b.len(), DENSE_WIDTH])?);
            c.tensors.insert("dfkd.bank.labels".into(), Tensor::from_f32(b.labels.clone(), &[b.len()])?);
        }
        let t = &self.totals;
        for (k, v) in [
            ("dfkd_optimizer_steps", self.opt.steps_taken().to_string()),
            ("dfkd_bank_next", b.next.to_string()),
            ("dfkd_batches", t.batches.to_string()),
            ("dfkd_rows", t.rows.to_string()),
            ("dfkd_seconds", t.seconds.to_string()),
        ] {
            c.meta.insert(k.into(), v);
        }
        Ok(())
    }

    /// Back from a checkpoint [`save`](Self::save) wrote.
    pub fn restore(&mut self, ck: &Checkpoint, path: &Path) -> Result<()> {
        let lacks = |what: &str| Error::Invalid(format!("{}: checkpoint lacks {what}: it was not written by a data-free run (data_free off)", path.display()));
        let num = |k: &str| -> Result<f64> {
            ck.meta.get(k).ok_or_else(|| lacks(k))?.parse().map_err(|_| Error::Invalid(format!("{}: {k} is not a number", path.display())))
        };
        for name in self.store.names() {
            let t = ck.tensors.get(&format!("dfkd.{name}")).ok_or_else(|| lacks(&format!("dfkd.{name}")))?;
            self.store.set(&name, t.clone()).map_err(|e| Error::Invalid(format!("{}: {e} (another dfkd_hidden or dfkd_latent?)", path.display())))?;
        }
        let state = ck.tensors.iter().filter_map(|(k, t)| k.strip_prefix("dfkd.optim/").map(|n| (n.to_string(), t.clone()))).collect();
        self.opt.load_state(state, num("dfkd_optimizer_steps")? as u64)?;
        let mut bank = Bank { cap: self.settings.bank, ..Bank::default() };
        if let Some(ids) = ck.tensors.get("dfkd.bank.ids") {
            let dense = ck.tensors.get("dfkd.bank.dense").ok_or_else(|| lacks("dfkd.bank.dense"))?;
            let labels = ck.tensors.get("dfkd.bank.labels").ok_or_else(|| lacks("dfkd.bank.labels"))?;
            bank.ids = ids.i32s()?.to_vec();
            bank.dense = dense.to_vec_f32()?;
            bank.labels = labels.to_vec_f32()?;
            if bank.len() > bank.cap || bank.ids.len() != bank.len() * NUM_CATS || bank.dense.len() != bank.len() * DENSE_WIDTH {
                bail!(
                    Invalid,
                    "{}: the checkpoint's bank holds {} rows, more than dfkd_bank {} (or its tensors disagree)",
                    path.display(),
                    bank.len(),
                    bank.cap
                );
            }
        }
        bank.next = num("dfkd_bank_next")? as usize;
        self.bank = bank;
        self.totals =
            SynthesisTotals { batches: num("dfkd_batches")? as u64, rows: num("dfkd_rows")? as u64, seconds: num("dfkd_seconds")?, last: [f64::NAN; 5] };
        Ok(())
    }
}

/// The recorded marginals of the dense inputs as starting points: the values' means, the missing
/// flags' log-odds.
fn marginals(dense: &(Vec<f32>, Vec<f32>)) -> (Vec<f32>, Vec<f32>) {
    let values = dense.0[..NUM_INTS].to_vec();
    let flags = dense.0[NUM_INTS..].iter().map(|&r| (r.clamp(1e-4, 1.0 - 1e-4) / (1.0 - r.clamp(1e-4, 1.0 - 1e-4))).ln()).collect();
    (values, flags)
}

/// A batch's relaxed rows on the tape (`choice [n, 26 p]`, `values`, `flags [n, 13]`; their
/// forward values are the hard rows) and the hard rows' category rows `[n * 26]` and flags.
struct Relaxed {
    choice: Var,
    values: Var,
    flags: Var,
    ids: Vec<i32>,
    hard_flags: Vec<f32>,
}

/// The rows of a synthesis's lowest-loss step: their loss, category rows `[n * 26]`, dense inputs
/// `[n * 26]`, the teacher's logits, and the terms for the report.
struct Kept {
    loss: f64,
    ids: Vec<i32>,
    dense: Vec<f32>,
    logits: Vec<f32>,
    terms: [f64; 5],
}

/// The first-order meta update (Reptile, as the authors' code does it): `opt` steps `meta` with
/// `theta_meta - theta_adapted` as its gradient, so each weight moves toward the adapted one.
fn reptile_step(meta: &mut ParamStore, adapted: &ParamStore, opt: &mut Optimizer, lr: f32) -> Result<()> {
    meta.zero_grads()?;
    for name in meta.names() {
        let (a, b) = (meta.get(&name)?.to_vec_f32()?, adapted.get(&name)?.to_vec_f32()?);
        let d: Vec<f32> = a.iter().zip(&b).map(|(x, y)| x - y).collect();
        let shape = meta.get(&name)?.shape().to_vec();
        let dev = meta.device();
        meta.accumulate_grad(&name, &Tensor::from_f32(d, &shape)?.to_device(dev)?)?;
    }
    opt.step(meta, lr, None)?;
    Ok(())
}

/// A deep copy of a store's weights with gradient buffers of their own (one that trains apart).
fn trainable_copy(store: &ParamStore) -> Result<ParamStore> {
    let mut out = ParamStore::new();
    for (name, p) in store.iter() {
        out.insert(name, Tensor::from_f32(p.value.to_vec_f32()?, p.value.shape())?)?;
    }
    out.to_device(store.device())?;
    Ok(out)
}

/// `soft + (hard - soft)` with the difference a constant: the forward value is `hard`, the
/// gradient `soft`'s (the straight-through estimator).
fn straight_through(g: &mut Graph, soft: Var, hard: &Tensor) -> Result<Var> {
    let h = g.constant(hard.clone());
    let s = g.constant(g.value(soft).clone());
    let d = g.binary(Binary::Sub, h, s)?;
    g.add(soft, d)
}

/// `|mean(x) - m|_2 + |var(x) - v|_2` over `x [n, w]`'s columns, `ones` the row `[1, n]` of `1/n`.
fn moment_gap(g: &mut Graph, ones: Var, x: Var, m: &Tensor, v: &Tensor) -> Result<Var> {
    let mean = g.matmul(ones, x)?;
    let xx = g.mul(x, x)?;
    let sq = g.matmul(ones, xx)?;
    let mm = g.mul(mean, mean)?;
    let var = g.binary(Binary::Sub, sq, mm)?;
    let a = distance(g, mean, m)?;
    let b = distance(g, var, v)?;
    g.add(a, b)
}

/// `|x - t|_2` (as `exp(ln(sum + 1e-12) / 2)`).
fn distance(g: &mut Graph, x: Var, t: &Tensor) -> Result<Var> {
    let tv = g.constant(t.clone());
    let d = g.binary(Binary::Sub, x, tv)?;
    let dd = g.mul(d, d)?;
    let s = g.sum(dd)?;
    let eps = g.constant(Tensor::full_on(g.value(s).shape(), 1e-12, g.value(s).device())?);
    let s = g.add(s, eps)?;
    let l = g.unary(Unary::Log, s)?;
    let h = g.unary(Unary::Scale(0.5), l)?;
    g.unary(Unary::Exp, h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_bank_replaces_its_oldest_rows_first() {
        let mut b = Bank { cap: 3, ..Bank::default() };
        for r in 0..5 {
            b.push(&[r; NUM_CATS], &[r as f32; DENSE_WIDTH], r as f32);
        }
        // Rows 0 and 1 were replaced by 3 and 4, in their places.
        assert_eq!(b.labels, vec![3.0, 4.0, 2.0]);
        assert_eq!(b.ids[..NUM_CATS], [3; NUM_CATS]);
        assert_eq!(b.next, 2);
        let (ids, dense, labels) = b.batch(&[2, 0]).unwrap();
        assert_eq!(labels.to_vec_f32().unwrap(), vec![2.0, 3.0]);
        assert_eq!(ids.i32s().unwrap()[NUM_CATS], 3);
        assert_eq!(dense.shape(), &[2, DENSE_WIDTH]);
        let e = Bank { cap: 3, ..Bank::default() }.batch(&[0]).unwrap_err().to_string();
        assert!(e.contains("bank is empty"), "{e}");
    }

    #[test]
    fn the_meta_step_moves_every_weight_toward_the_adapted_one() {
        let mut rng = Rng::new(3);
        let mut meta = ParamStore::new();
        meta.insert("a", Tensor::randn(&[3, 4], 1.0, &mut rng)).unwrap();
        meta.insert("b", Tensor::randn(&[5], 1.0, &mut rng)).unwrap();
        let mut adapted = trainable_copy(&meta).unwrap();
        for name in ["a", "b"] {
            let v: Vec<f32> = adapted.get(name).unwrap().to_vec_f32().unwrap().iter().map(|x| x + rng.normal() as f32).collect();
            let shape = adapted.get(name).unwrap().shape().to_vec();
            adapted.set(name, Tensor::from_f32(v, &shape).unwrap()).unwrap();
        }
        let before = trainable_copy(&meta).unwrap();
        reptile_step(&mut meta, &adapted, &mut adam(), 0.01).unwrap();
        for name in ["a", "b"] {
            let (m0, m1, t) = (
                before.get(name).unwrap().to_vec_f32().unwrap(),
                meta.get(name).unwrap().to_vec_f32().unwrap(),
                adapted.get(name).unwrap().to_vec_f32().unwrap(),
            );
            for ((x0, x1), y) in m0.iter().zip(&m1).zip(&t) {
                // Adam's first step: lr in the direction of the adapted weight.
                assert!((x1 - x0 - 0.01 * (y - x0).signum()).abs() < 1e-4, "{name}: {x0} -> {x1}, adapted {y}");
            }
        }
    }

    #[test]
    fn the_straight_through_choice_is_hard_forward_and_soft_backward() {
        let mut g = Graph::new();
        let x = g.leaf(Tensor::from_f32(vec![0.2, 0.5, 0.3], &[1, 3]).unwrap());
        let hard = Tensor::from_f32(vec![0.0, 1.0, 0.0], &[1, 3]).unwrap();
        let y = straight_through(&mut g, x, &hard).unwrap();
        assert_eq!(g.value(y).to_vec_f32().unwrap(), vec![0.0, 1.0, 0.0]);
        let w = g.constant(Tensor::from_f32(vec![1.0, 2.0, 3.0], &[1, 3]).unwrap());
        let p = g.mul(y, w).unwrap();
        let l = g.sum(p).unwrap();
        let grads = g.backward(l).unwrap();
        assert_eq!(grads.get(x).unwrap().to_vec_f32().unwrap(), vec![1.0, 2.0, 3.0]);
    }

    #[test]
    fn settings_that_cannot_run_name_their_option() {
        let ok = Settings {
            method: DataFree::Fast,
            steps: 2,
            rows: 8,
            every: 1,
            bank: 10,
            lr: 0.01,
            lr_z: 0.01,
            meta_lr: 0.01,
            bn: 1.0,
            oh: 1.0,
            adv: 1.0,
            cov: 0.0,
            click_rate: 0.0,
            candidates: 4,
            temperature: 1.0,
            latent: 4,
            hidden: 4,
            seed: 1,
        };
        ok.check().unwrap();
        for (s, name) in [
            (Settings { steps: 0, ..ok.clone() }, "dfkd_steps"),
            (Settings { bank: 0, ..ok.clone() }, "dfkd_bank"),
            (Settings { every: 0, ..ok.clone() }, "dfkd_every"),
            (Settings { lr: f32::NAN, ..ok.clone() }, "dfkd_lr"),
            (Settings { adv: -1.0, ..ok.clone() }, "dfkd_adv"),
            (Settings { temperature: 0.0, ..ok.clone() }, "dfkd_temperature"),
        ] {
            let e = s.check().unwrap_err().to_string();
            assert!(e.contains(name), "{name}: {e}");
        }
    }
}
