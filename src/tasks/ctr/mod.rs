//! The click-through task: per-field hashed embeddings and the dense features into an MLP, one
//! logit, binary cross-entropy; evaluation by log-loss, AUC, calibration and (between two models)
//! prediction churn. Its distillation term is the cross-entropy toward the teachers' mean click
//! probability. The loop that trains it is [`crate::train::train`]; this module holds only what is
//! the click model's own.

pub mod config;
pub mod dfkd;
pub mod model;
pub mod score;
pub mod stats;

pub use config::CriteoConfig;
pub use model::{evaluate, load_checkpoint, load_checkpoint_quantized, load_teachers, parse_widths, ClickEval, CtrModel, CtrTeacher};

use crate::autograd::{Graph, Var};
use crate::checkpoint::Checkpoint;
use crate::data::criteo::{cached, shard_range, CriteoCache, DENSE_WIDTH, NUM_CATS};
use crate::data::synthetic::{write_criteo_tsv, ClickModel, ClickTruth};
use crate::distill::Mix;
use crate::hash::Hasher64;
use crate::ops::elementwise::Unary;
use crate::ops::math::sigmoid;
use crate::ops::quant::Products;
use crate::ops::softmax_kl::mix::{mix_teachers, TeacherMix};
use crate::ops::softmax_kl::Divergence;
use crate::params::ParamStore;
use crate::tensor::{Device, Tensor};
use crate::train::{Finished, MetricsLog, Score, Setup, Task, TeacherRef};
use crate::{bail, Error, Result, Rng};
use score::churn;
use serde_json::{json, Value};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Train click models as configured (the loop: [`crate::train::train`]).
pub fn train(cfg: &CriteoConfig) -> Result<CriteoSummary> {
    crate::train::train::<CtrTask>(cfg)
}

/// The preprocessed training and validation data of a run.
pub struct CriteoData {
    pub train: CriteoCache,
    /// Rows of `train` used for training (before sharding).
    pub train_rows: Range<usize>,
    /// A separate validation file, if one was given.
    pub valid_file: Option<CriteoCache>,
    /// Validation rows: of `valid_file`, or else the held-out tail of `train`.
    pub valid_rows: Range<usize>,
    /// The hidden model's log-loss on the validation rows, when known.
    pub valid_truth: Option<ClickTruth>,
    pub preprocess_rows_per_s: Option<f64>,
}

impl CriteoData {
    /// The validation cache and rows, if there are any.
    pub fn valid(&self) -> Option<(&CriteoCache, Range<usize>)> {
        if self.valid_rows.is_empty() {
            return None;
        }
        Some((self.valid_file.as_ref().unwrap_or(&self.train), self.valid_rows.clone()))
    }
}

pub fn prepare_data(cfg: &CriteoConfig) -> Result<CriteoData> {
    let (train, valid) = match &cfg.train {
        Some(t) => (t.clone(), cfg.valid.clone()),
        None => {
            let mut h = Hasher64::new();
            h.update(format!("criteo-synth-v2/{}/{}/{}", cfg.synthetic_rows, cfg.synthetic_scale, cfg.seed).as_bytes());
            let dir = cfg.cache.join(format!("synthetic-criteo-{:016x}", h.finish()));
            let model = ClickModel::criteo_like(cfg.synthetic_scale as f64, cfg.seed ^ 0xC11C);
            let (tp, vp) = (dir.join("train.tsv"), dir.join("valid.tsv"));
            for (p, rows, seed) in [(&tp, cfg.synthetic_rows, cfg.seed), (&vp, (cfg.synthetic_rows / 10).max(1), cfg.seed ^ 0xFA11)] {
                if ClickTruth::for_file(p).map(|t| t.rows != rows).unwrap_or(true) || !p.exists() {
                    eprintln!("writing synthetic click log {} ({rows} rows)", p.display());
                    write_criteo_tsv(p, &model, rows, seed)?;
                }
            }
            (tp, Some(vp))
        }
    };
    for p in std::iter::once(&train).chain(valid.iter()) {
        if !p.exists() {
            return Err(Error::io(p, std::io::Error::new(std::io::ErrorKind::NotFound, "file not found")));
        }
    }
    let t0 = Instant::now();
    let (tc, built) = cached(&train, cfg.buckets, cfg.on_bad_line, &cfg.cache)?;
    let rate = if built { Some((tc.stats.rows + tc.stats.skipped) as f64 / t0.elapsed().as_secs_f64()) } else { None };
    if tc.stats.skipped > 0 {
        eprintln!("{}: skipped {} bad lines of {}", train.display(), tc.stats.skipped, tc.stats.rows + tc.stats.skipped);
        for e in &tc.stats.examples {
            eprintln!("  {e}");
        }
    }
    let n = tc.rows();
    Ok(match valid {
        Some(v) => {
            let (vc, _) = cached(&v, cfg.buckets, cfg.on_bad_line, &cfg.cache)?;
            let rows = vc.rows();
            let truth = ClickTruth::for_file(&v).filter(|t| t.rows == rows);
            CriteoData { train: tc, train_rows: 0..n, valid_file: Some(vc), valid_rows: 0..rows, valid_truth: truth, preprocess_rows_per_s: rate }
        }
        None => {
            if !(0.0..1.0).contains(&cfg.valid_fraction) {
                bail!(Invalid, "valid_fraction must be in [0, 1), got {}", cfg.valid_fraction);
            }
            let held = (n as f64 * cfg.valid_fraction as f64) as usize;
            CriteoData { train: tc, train_rows: 0..n - held, valid_file: None, valid_rows: n - held..n, valid_truth: None, preprocess_rows_per_s: rate }
        }
    })
}

#[derive(Clone, Debug)]
pub struct CriteoSummary {
    pub steps: u64,
    /// Final validation of each model (one entry for a single model).
    pub valid: Vec<ClickEval>,
    /// The models' averaged predictions, when there are several.
    pub ensemble: Option<ClickEval>,
    /// Prediction churn between the first two models, when there are several.
    pub churn: Option<f64>,
    pub valid_truth: Option<ClickTruth>,
    pub preprocess_rows_per_s: Option<f64>,
    /// Training rows per second, over all models.
    pub train_rows_per_s: f64,
    pub seconds: f64,
}

/// Validation figures of a click model, with its predicted probabilities (for the ensemble and
/// the churn at the end of a run).
#[derive(Clone, Debug)]
pub struct ClickScore {
    pub eval: ClickEval,
    pub p: Vec<f32>,
}

impl Score for ClickScore {
    const KEY: &'static str = "log_loss";
    fn loss(&self) -> f64 {
        self.eval.log_loss
    }
    fn fields(&self) -> Value {
        json!({"log_loss": self.eval.log_loss, "auc": self.eval.auc, "calibration": self.eval.calibration})
    }
    fn describe(&self) -> String {
        format!("log-loss {:.5} AUC {} calibration {}", self.eval.log_loss, score::show(self.eval.auc, 4), score::show(self.eval.calibration, 3))
    }
}

/// The click model as a [`Task`]: the preprocessed log, the fixed teachers, the model's structure.
pub struct CtrTask {
    cfg: CriteoConfig,
    data: CriteoData,
    teachers: Vec<CtrTeacher>,
    model: CtrModel,
    /// The output bias a model starts with: the log-odds of the training click rate.
    start_bias: f32,
    dev: Device,
    /// The run's backend context.
    be: crate::Backend,
    /// A data-free run's teacher statistics (its checkpoint's).
    dfkd_stats: Option<stats::FeatureStats>,
}

/// One model's rows, shuffled each epoch.
pub struct CtrStream {
    rows: Range<usize>,
    order: Vec<usize>,
    pos: usize,
    epoch: u64,
    rng: Rng,
    /// The shard's category counts, for the statistics each checkpoint records (counted once).
    ids: std::cell::OnceCell<stats::IdCounts>,
    /// A data-free run's synthesizer and bank (its batches come from the bank).
    pub synth: Option<dfkd::Synthesizer>,
}

impl CtrStream {
    fn next_batch(&mut self, batch: usize) -> Vec<usize> {
        if self.pos >= self.order.len() {
            self.order = self.rows.clone().collect();
            self.rng.fork(self.epoch).shuffle(&mut self.order);
            self.epoch += 1;
            self.pos = 0;
        }
        let end = (self.pos + batch).min(self.order.len());
        let b = self.order[self.pos..end].to_vec();
        self.pos = end;
        b
    }
}

/// A batch: hashed ids and dense features on the device, labels on the host (where the soft
/// targets are mixed).
pub struct CtrBatch {
    rows: usize,
    ids: Tensor,
    dense: Tensor,
    labels: Tensor,
    /// The rows' places in the shard (a teacher cache's items).
    keys: Vec<usize>,
}

impl CtrTask {
    fn valid_end(&self, r: &Range<usize>) -> usize {
        if self.cfg.eval_rows > 0 {
            (r.start + self.cfg.eval_rows).min(r.end)
        } else {
            r.end
        }
    }
}

impl Task for CtrTask {
    type Config = CriteoConfig;
    type Model = CtrModel;
    type Batch = CtrBatch;
    type Stream = CtrStream;
    type Carry = ();
    type Eval = ClickScore;
    type Summary = CriteoSummary;
    const NAME: &'static str = "criteo";
    const TITLE: &'static str = "Criteo";
    const WHAT: &'static str = "a click model";
    const FORMAT: &'static str = config::FORMAT;
    const PREFIX: &'static str = "ctr";
    const UNIT: &'static str = "rows";
    const RESUME_KEYS: &'static [&'static str] =
        &["buckets", "emb_dim", "mlp", "batch", "valid_fraction", "data_free", "dfkd_latent", "dfkd_hidden", "dfkd_candidates"];

    fn prepare(cfg: &CriteoConfig, setup: &Setup) -> Result<Self> {
        if cfg.batch == 0 || cfg.epochs == 0 || cfg.emb_dim == 0 {
            bail!(Invalid, "batch, epochs and emb_dim must be positive (got {}, {} and {})", cfg.batch, cfg.epochs, cfg.emb_dim);
        }
        let widths = parse_widths(&cfg.mlp)?;
        // Embeddings, the dense features' half of the first layer, the MLP (each layer with its bias).
        let (b, e) = (cfg.buckets as u128, cfg.emb_dim as u128);
        let mut dims = vec![NUM_CATS as u128 * e];
        dims.extend(widths.iter().map(|&w| w as u128));
        dims.push(1);
        let mlp: u128 = dims.windows(2).map(|w| w[0].saturating_mul(w[1]) + w[1]).sum();
        let params = (NUM_CATS as u128).saturating_mul(b).saturating_mul(e) + DENSE_WIDTH as u128 * widths[0] as u128 + mlp;
        crate::train::options::check_model_memory(params, cfg.models, cfg.optimizer, setup.dev, "--buckets, --emb-dim, --mlp")?;
        let data = prepare_data(cfg)?;
        let teachers = load_teachers(&cfg.teacher.0, cfg.buckets, setup.dev)?;
        // Start calibrated: the output bias at the log-odds of the training click rate. With rare
        // clicks the bias gradient is small, and a model that starts off-rate stays miscalibrated.
        let rate = {
            let r = &data.train_rows;
            let clicks: f64 = r.clone().map(|i| data.train.label(i) as f64).sum();
            ((clicks + 1.0) / (r.len() as f64 + 2.0)).clamp(1e-6, 1.0 - 1e-6)
        };
        let model = CtrModel::new(&mut ParamStore::new(), cfg, &mut Rng::new(0))?;
        let dfkd_stats = match cfg.data_free {
            dfkd::DataFree::Off => None,
            method => {
                let o = setup.run;
                if teachers.len() != 1 {
                    bail!(Invalid, "data_free {method} inverts one teacher: give exactly one --teacher (got {})", teachers.len());
                }
                if setup.total_models > 1 || o.teacher_logits.is_some() {
                    bail!(Invalid, "data_free {method}: one model, distilled from --teacher (no codistillation, no --teacher-logits)");
                }
                settings(cfg).check()?;
                let t = &teachers[0];
                let ck = Checkpoint::load(&t.path)?;
                let st = stats::FeatureStats::read(&ck, &t.path, t.model.hidden_widths().len())?.ok_or_else(|| {
                    Error::Invalid(format!(
                        "{}: the teacher records no feature statistics (stats.* tensors), which data_free needs (click checkpoints record them since data-free distillation was added): write them with `codistill criteo record-stats --checkpoint {} --train <its training file> --out <new checkpoint>`, where the training data is, or resume its last checkpoint for more steps (--resume with a larger --steps or --epochs)",
                        t.path.display(),
                        t.path.display()
                    ))
                })?;
                Some(st)
            }
        };
        Ok(CtrTask {
            cfg: cfg.clone(),
            data,
            teachers,
            model,
            start_bias: (rate / (1.0 - rate)).ln() as f32,
            dev: setup.dev,
            be: setup.run.backend()?,
            dfkd_stats,
        })
    }

    fn config(&self) -> &CriteoConfig {
        &self.cfg
    }

    fn model(&self) -> &CtrModel {
        &self.model
    }

    fn teachers(&self) -> Vec<TeacherRef<'_, CtrModel>> {
        self.teachers.iter().map(|t| TeacherRef { path: &t.path, model: &t.model, store: &t.store }).collect()
    }

    fn teacher_states(&self) -> std::result::Result<(), &'static str> {
        if self.teachers.is_empty() {
            Err("give --teacher")
        } else {
            Ok(())
        }
    }

    fn layer_widths(&self) -> Option<(Vec<usize>, Vec<usize>)> {
        self.teachers.first().map(|t| (self.model.hidden_widths(), t.model.hidden_widths()))
    }

    fn init(&self, store: &mut ParamStore, rng: &mut Rng) -> Result<()> {
        CtrModel::new(store, &self.cfg, rng)?;
        store.set(&format!("ctr.mlp.{}.bias", self.model.mlp.layers.len() - 1), Tensor::full(&[1], self.start_bias))
    }

    fn stream(&self, shards: usize, shard: usize) -> Result<(CtrStream, Option<u64>)> {
        let span = shard_range(self.data.train_rows.len(), shards, shard)?;
        let rows = self.data.train_rows.start + span.start..self.data.train_rows.start + span.end;
        if rows.is_empty() {
            bail!(Invalid, "{}: shard {shard} of {shards} has no training rows", self.data.train.source.display());
        }
        let key = self.data.train.fingerprint(rows.clone());
        let synth = match &self.dfkd_stats {
            Some(st) => {
                let t = &self.teachers[0];
                Some(dfkd::Synthesizer::new(settings(&self.cfg), &t.model, &t.store, st, self.be)?)
            }
            None => None,
        };
        Ok((CtrStream { rows, order: Vec::new(), pos: usize::MAX, epoch: 0, rng: Rng::new(0), ids: std::cell::OnceCell::new(), synth }, Some(key)))
    }

    /// Each model shuffles with its own stream, the one its initialisation drew from.
    fn seed_stream(&self, stream: &mut CtrStream, rng: &Rng) {
        stream.rng = rng.clone();
    }

    fn epoch_steps(&self, stream: &CtrStream) -> u64 {
        stream.rows.len().div_ceil(self.cfg.batch) as u64
    }

    fn total_steps(&self, epoch_steps: u64) -> u64 {
        if self.cfg.steps > 0 {
            self.cfg.steps
        } else {
            epoch_steps * self.cfg.epochs as u64
        }
    }

    fn length_help(&self, epoch_steps: u64) -> (String, &'static str) {
        if self.cfg.steps > 0 {
            return (String::new(), "--steps");
        }
        (format!(" ({} epoch(s) of {epoch_steps} steps)", self.cfg.epochs), "--epochs (or --steps)")
    }

    fn start(&self, s: &mut CtrStream, _carry: &mut (), _step: u64, ck: Option<(&Checkpoint, &Path)>) -> Result<()> {
        if let Some((ck, path)) = ck {
            let num = |k: &str| -> Result<u64> { ck.meta(k, path)?.parse().map_err(|_| Error::Invalid(format!("{}: {k} is not a number", path.display()))) };
            s.epoch = num("epoch")?;
            s.pos = num("position")? as usize;
            if let Some(synth) = s.synth.as_mut() {
                synth.restore(ck, path)?;
            }
            if s.epoch > 0 {
                s.order = s.rows.clone().collect();
                s.rng.fork(s.epoch - 1).shuffle(&mut s.order);
            }
        }
        Ok(())
    }

    fn save_extra(&self, c: &mut Checkpoint, s: &CtrStream, _carry: &(), store: &ParamStore, resumable: bool) -> Result<()> {
        c.meta.insert("epoch".into(), s.epoch.to_string());
        c.meta.insert("position".into(), s.pos.to_string());
        match &s.synth {
            // A data-free student saw no real rows: it records its synthesis (the generator and
            // the bank, what a resume reads), not their statistics.
            Some(synth) if resumable => synth.save(c),
            Some(_) => Ok(()),
            None => {
                let ids = s.ids.get_or_init(|| stats::IdCounts::of(&self.data.train, s.rows.clone()));
                stats::FeatureStats::measure(&self.be, &self.model, store, &self.data.train, s.rows.clone(), ids)?.write(c)
            }
        }
    }

    fn before_batch(&self, model: &CtrModel, s: &mut CtrStream, store: &ParamStore, step: u64) -> Result<()> {
        if let Some(synth) = s.synth.as_mut() {
            if synth.bank.is_empty() || step.is_multiple_of(self.cfg.dfkd_every) {
                let t = &self.teachers[0];
                synth.synthesize(&t.model, &t.store, model, store, step)?;
            }
        }
        Ok(())
    }

    fn data_name(&self) -> String {
        self.data.train.source.display().to_string()
    }

    fn batch(&self, stream: &mut CtrStream, step: u64, _epoch_steps: u64) -> Result<(CtrBatch, bool)> {
        if let Some(synth) = &stream.synth {
            // Rows drawn from the bank (with replacement), a function of the step.
            let mut rng = Rng::new(self.cfg.seed).fork(0xBA4C).fork(step);
            let idx: Vec<usize> = (0..self.cfg.batch).map(|_| rng.below(synth.bank.len())).collect();
            let (ids, dense, labels) = synth.bank.batch(&idx)?;
            return Ok((CtrBatch { rows: idx.len(), ids: ids.to_device(self.dev)?, dense: dense.to_device(self.dev)?, labels, keys: idx }, false));
        }
        let chunk = stream.next_batch(self.cfg.batch);
        let (ids, dense, labels) = self.data.train.batch(&chunk)?;
        let keys = chunk.iter().map(|r| r - stream.rows.start).collect();
        Ok((CtrBatch { rows: chunk.len(), ids: ids.to_device(self.dev)?, dense: dense.to_device(self.dev)?, labels, keys }, false))
    }

    /// A cache's items are the shard's rows in file order: one logit each, whatever the shuffle.
    fn cache_shape(&self) -> Option<(String, usize)> {
        Some(("rows".into(), 1))
    }

    fn cache_items(&self, stream: &CtrStream, _epoch_steps: u64) -> usize {
        stream.rows.len()
    }

    fn cache_keys(&self, b: &CtrBatch) -> Vec<usize> {
        b.keys.clone()
    }

    fn batch_items(&self, b: &CtrBatch) -> usize {
        b.rows
    }

    fn forward(
        &self,
        model: &CtrModel,
        g: &mut Graph,
        store: &ParamStore,
        b: &CtrBatch,
        _carry: &(),
        _train: Option<(u64, usize)>,
    ) -> Result<(Var, Vec<Var>, ())> {
        let (logit, hidden) = model.forward_layers(g, store, &b.ids, &b.dense)?;
        Ok((logit, hidden, ()))
    }

    fn loss(&self, g: &mut Graph, logit: Var, b: &CtrBatch, peers: &[Tensor], fixed: &[Tensor], mix: Option<Mix>) -> Result<Var> {
        let mix = mix.map(|m| (m.mix, m.scale));
        let (labels, e) = (&b.labels, self.cfg.label_smoothing);
        let count = (peers.len() + fixed.len()) as f32;
        let div = self.cfg.distill_loss;
        if let (Some((w, scale)), true) = (mix, count > 0.0 && div != Divergence::ForwardKl) {
            // Another divergence than the soft-target cross-entropy: (1 - mix) BCE(z, y) + mix
            // D(teachers, z), scaled as the forward form is; D takes the teachers' mean probability
            // (the logit match: their mean logit), fixed teachers first.
            let mut stat = vec![0f32; b.rows];
            for t in fixed.iter().chain(peers) {
                for (acc, &x) in stat.iter_mut().zip(&t.to_vec_f32()?) {
                    *acc += if div == Divergence::Mse { x } else { sigmoid(x) } / count;
                }
            }
            let teacher = Tensor::from_f32(stat, labels.shape())?.to_device(self.dev)?;
            let task = g.bce_with_logits(logit, &labels.to_device(self.dev)?)?;
            let soft = g.binary_divergence(logit, &teacher, div)?;
            let (task, soft) = (g.unary(Unary::Scale(1.0 - w), task)?, g.unary(Unary::Scale(w), soft)?);
            let l = g.add(task, soft)?;
            return crate::train::scaled(g, l, scale);
        }
        let (targets, scale) = match mix {
            Some((w, scale)) if count > 0.0 => {
                // The teachers' mean click probability, fixed teachers first.
                let mut mean_p = vec![0f32; b.rows];
                for t in fixed.iter().chain(peers) {
                    for (acc, &x) in mean_p.iter_mut().zip(&t.to_vec_f32()?) {
                        *acc += sigmoid(x) / count;
                    }
                }
                // Binary cross-entropy is linear in its target, so scale * BCE(z, (1 - mix) y + mix p) is
                // the paper's BCE(z, y) + lambda * BCE(z, p), or the convex mix.
                let y = labels.f32s()?;
                (Tensor::from_f32(y.iter().zip(&mean_p).map(|(&y, &p)| (1.0 - w) * y + w * p).collect(), labels.shape())?, scale)
            }
            _ if e > 0.0 => (Tensor::from_f32(labels.f32s()?.iter().map(|&y| (1.0 - e) * y + e * 0.5).collect(), labels.shape())?, 1.0),
            _ => (labels.clone(), 1.0),
        };
        let bce = g.bce_with_logits(logit, &targets.to_device(self.dev)?)?;
        crate::train::scaled(g, bce, scale)
    }

    fn mix_teachers(&self, teachers: &[Tensor], weights: &[f32], confidence: bool, _progress: f32) -> Option<Result<Tensor>> {
        let how = TeacherMix { binary: true, logits: self.cfg.distill_loss == Divergence::Mse, temperature: 1.0, confidence };
        Some(mix_teachers(&self.be, teachers, weights, how))
    }

    fn init_from(&self, store: &mut ParamStore, ck: &Checkpoint, path: &Path) -> Option<Result<String>> {
        Some((|| {
            use crate::tasks::init::{layer_of, take};
            let t = config::checkpoint_config(ck, path)?;
            let c = &self.cfg;
            if t.buckets != c.buckets {
                bail!(
                    Invalid,
                    "{}: init_from: the checkpoint hashes into {} buckets and this run into {}: the same --buckets needed",
                    path.display(),
                    t.buckets,
                    c.buckets
                );
            }
            let (wt, ws) = (parse_widths(&t.mlp)?, parse_widths(&c.mlp)?);
            let map: Vec<usize> = (0..ws.len()).map(|i| layer_of(i, ws.len(), wt.len())).collect();
            if t.emb_dim < c.emb_dim || wt.len() < ws.len() || map.iter().zip(&ws).any(|(&j, &w)| wt[j] < w) {
                bail!(
                    Invalid,
                    "{}: init_from: the checkpoint (embedding {}, MLP {}) is smaller than this model (embedding {}, MLP {}): it must be at least as deep and as wide",
                    path.display(),
                    t.emb_dim,
                    t.mlp,
                    c.emb_dim,
                    c.mlp
                );
            }
            let upto = |n: usize| (0..n).collect::<Vec<usize>>();
            take(store, "ctr.embedding.weight", ck, "ctr.embedding.weight", Some(&upto(NUM_CATS * c.buckets)), &upto(c.emb_dim), path)?;
            take(store, "ctr.dense.weight", ck, "ctr.dense.weight", Some(&upto(DENSE_WIDTH)), &upto(ws[0]), path)?;
            // The first layer's rows are the fields' embeddings side by side: field f's first
            // emb_dim of the checkpoint's.
            let first: Vec<usize> = (0..NUM_CATS).flat_map(|f| (0..c.emb_dim).map(move |e| f * t.emb_dim + e)).collect();
            for (i, &j) in map.iter().enumerate() {
                let rows = if i == 0 { first.clone() } else { upto(ws[i - 1]) };
                take(store, &format!("ctr.mlp.{i}.weight"), ck, &format!("ctr.mlp.{j}.weight"), Some(&rows), &upto(ws[i]), path)?;
                take(store, &format!("ctr.mlp.{i}.bias"), ck, &format!("ctr.mlp.{j}.bias"), None, &upto(ws[i]), path)?;
            }
            let (out, from) = (ws.len(), wt.len());
            take(store, &format!("ctr.mlp.{out}.weight"), ck, &format!("ctr.mlp.{from}.weight"), Some(&upto(ws[out - 1])), &[0], path)?;
            take(store, &format!("ctr.mlp.{out}.bias"), ck, &format!("ctr.mlp.{from}.bias"), None, &[0], path)?;
            Ok(format!(
                "its hidden layer(s) {map:?} of {} and output layer, their first units, {} of its {} embedding dimensions",
                wt.len(),
                c.emb_dim,
                t.emb_dim
            ))
        })())
    }

    fn chance_loss(&self) -> Option<f64> {
        let (c, r) = self.data.valid()?;
        let r = r.start..self.valid_end(&r);
        let n = r.len().max(1) as f64;
        let rate = (r.clone().map(|i| c.label(i) as f64).sum::<f64>() / n).clamp(1e-12, 1.0 - 1e-12);
        Some(-(rate * rate.ln() + (1.0 - rate) * (1.0 - rate).ln()))
    }

    fn validate(&self, model: &CtrModel, store: &ParamStore) -> Result<Option<ClickScore>> {
        let Some((c, r)) = self.data.valid() else { return Ok(None) };
        let (eval, p) = evaluate(&self.be, model, store, c, r.start..self.valid_end(&r))?;
        Ok(Some(ClickScore { eval, p }))
    }

    fn ensemble(&self, members: &[(&ParamStore, Option<&ClickScore>)]) -> Result<Option<(ClickScore, Option<f64>)>> {
        let (Some((c, r)), Some(evals)) = (self.data.valid(), members.iter().map(|m| m.1).collect::<Option<Vec<_>>>()) else { return Ok(None) };
        let n = evals.len() as f32;
        let mut p = vec![0f32; evals[0].p.len()];
        for e in &evals {
            for (a, &b) in p.iter_mut().zip(&e.p) {
                *a += b / n;
            }
        }
        let y: Vec<f32> = (r.start..self.valid_end(&r)).map(|i| c.label(i)).collect();
        let eval = ClickEval::of(&p, &y);
        let ch = churn(&evals[0].p, &evals[1].p)?;
        Ok(Some((ClickScore { eval, p }, Some(ch))))
    }

    fn compat(&self) -> (String, String) {
        (format!("buckets={};emb_dim={};mlp={}", self.cfg.buckets, self.cfg.emb_dim, self.cfg.mlp), String::new())
    }

    fn pair_config(cfg: &mut CriteoConfig, models: usize) {
        cfg.epochs *= models;
    }

    fn floor(&self) -> Option<(&'static str, f64)> {
        self.data.valid_truth.filter(|_| self.cfg.eval_rows == 0).map(|t| ("hidden model", t.bayes_log_loss))
    }

    fn describe(&self, first: &CtrStream, _epoch_steps: u64, total: u64) -> String {
        if let Some(s) = &first.synth {
            let c = &s.settings;
            return format!(
                "data-free ({}, k = {}): {} rows synthesised every {} steps from {} candidate rows per field, click rate {:.4}, bank of {}; {} validation rows, {total} steps",
                c.method,
                c.steps,
                c.rows,
                c.every,
                s.candidates(),
                s.click_rate(),
                c.bank,
                self.data.valid_rows.len()
            );
        }
        format!("{} training rows each, {} validation rows, {total} steps", first.rows.len(), self.data.valid_rows.len())
    }

    fn checkpoint_path(&self, out: &Path, index: usize, several: bool, best: bool) -> PathBuf {
        let stem = if best { "best" } else { "checkpoint" };
        out.join(if several { format!("{stem}-{index}.safetensors") } else { format!("{stem}.safetensors") })
    }

    fn progress(&self, mean: f64, rate: f64) -> String {
        format!("loss {mean:.4} {rate:.0} rows/s")
    }

    fn finish(&self, _log: &mut MetricsLog, run: &Finished<Self>) -> Result<(CriteoSummary, Value)> {
        let truth = self.data.valid_truth.filter(|_| self.cfg.eval_rows == 0);
        let valid: Vec<ClickEval> = run.members.iter().filter_map(|m| m.last.as_ref().map(|e| e.eval)).collect();
        let (ensemble, churn) = match &run.ensemble {
            Some((e, c)) => (Some(e.eval), *c),
            None => (None, None),
        };
        let s = CriteoSummary {
            steps: run.steps,
            valid: valid.clone(),
            ensemble,
            churn,
            valid_truth: truth,
            preprocess_rows_per_s: self.data.preprocess_rows_per_s,
            train_rows_per_s: run.rate(),
            seconds: run.started.elapsed().as_secs_f64(),
        };
        let nan = f64::NAN;
        let mean_ll = if valid.is_empty() { nan } else { valid.iter().map(|v| v.log_loss).sum::<f64>() / valid.len() as f64 };
        let fields = json!({
            "valid_log_loss": mean_ll,
            "valid_auc": valid.first().map(|v| v.auc).unwrap_or(nan),
            "valid_calibration": valid.first().map(|v| v.calibration).unwrap_or(nan),
            "ensemble_log_loss": ensemble.map(|e| e.log_loss).unwrap_or(nan),
            "churn": churn.unwrap_or(nan),
            "bayes_log_loss": truth.map(|t| t.bayes_log_loss).unwrap_or(nan),
            "train_rows_per_s": s.train_rows_per_s,
            "preprocess_rows_per_s": s.preprocess_rows_per_s.unwrap_or(nan),
        });
        let fields = match run.members.first().and_then(|m| m.stream.synth.as_ref()) {
            Some(synth) => {
                let t = synth.totals;
                let per_1000 = t.seconds / (t.rows.max(1) as f64 / 1000.0);
                eprintln!(
                    "data-free ({}): {} batches, {} rows synthesised in {:.1} s ({per_1000:.3} s per 1,000 rows); bank {} rows",
                    synth.settings.method,
                    t.batches,
                    t.rows,
                    t.seconds,
                    synth.bank.len()
                );
                let mut f = fields;
                f["data_free"] = json!(synth.settings.method.to_string());
                f["dfkd_steps"] = json!(synth.settings.steps);
                f["synthesis_batches"] = json!(t.batches);
                f["synthesised_rows"] = json!(t.rows);
                f["synthesis_s"] = json!(t.seconds);
                f["synthesis_s_per_1000_rows"] = json!(per_1000);
                f["bank_rows"] = json!(synth.bank.len());
                f["synthesis_last_terms"] =
                    json!({"stats": t.last[0], "class": t.last[1], "student_teacher_kl": t.last[2], "total": t.last[3], "teacher_mean_p": t.last[4]});
                f
            }
            None => fields,
        };
        Ok((s, fields))
    }
}

/// The synthesis settings of a config's `dfkd_*` keys.
pub fn settings(cfg: &CriteoConfig) -> dfkd::Settings {
    dfkd::Settings {
        method: cfg.data_free,
        steps: cfg.dfkd_steps,
        rows: cfg.dfkd_rows,
        every: cfg.dfkd_every,
        bank: cfg.dfkd_bank,
        lr: cfg.dfkd_lr,
        lr_z: cfg.dfkd_lr_z,
        meta_lr: cfg.dfkd_meta_lr,
        bn: cfg.dfkd_bn,
        oh: cfg.dfkd_oh,
        adv: cfg.dfkd_adv,
        cov: cfg.dfkd_cov,
        click_rate: cfg.dfkd_click_rate,
        candidates: cfg.dfkd_candidates,
        temperature: cfg.dfkd_temperature,
        latent: cfg.dfkd_latent,
        hidden: cfg.dfkd_hidden,
        seed: cfg.seed,
    }
}

/// Evaluate a checkpoint on a file; with `against`, also the churn between the two models.
pub fn eval_checkpoint(path: &Path, file: &Path, against: Option<&Path>, cache: &Path) -> Result<(ClickEval, Option<f64>)> {
    eval_checkpoints(std::slice::from_ref(&path.to_path_buf()), file, against, cache)
}

/// Evaluate a checkpoint, or the ensemble of several (their mean click probability), on a file;
/// with `against`, also the churn between it (or the ensemble) and that model.
pub fn eval_checkpoints(paths: &[PathBuf], file: &Path, against: Option<&Path>, cache: &Path) -> Result<(ClickEval, Option<f64>)> {
    eval_checkpoints_with(paths, file, against, cache, Products::F32)
}

/// As [`eval_checkpoints`], each model's products in `products`' arithmetic: with
/// [`Products::Int8`] a quantized checkpoint runs on its own levels with int8 activations, an f32
/// one quantized to int8 first (post-training W8A8).
pub fn eval_checkpoints_with(paths: &[PathBuf], file: &Path, against: Option<&Path>, cache: &Path, products: Products) -> Result<(ClickEval, Option<f64>)> {
    let be = crate::Backend::from_env()?;
    if paths.is_empty() {
        bail!(Invalid, "no checkpoint to evaluate");
    }
    if !file.exists() {
        return Err(Error::io(file, std::io::Error::new(std::io::ErrorKind::NotFound, "file not found")));
    }
    // Each model's probabilities on the file, hashed into its own buckets.
    let predict = |path: &Path| -> Result<(Vec<f32>, CriteoCache)> {
        let (cfg, model, store, bits) = load_checkpoint_quantized(path)?;
        let (data, _) = cached(file, cfg.buckets, cfg.on_bad_line, cache)?;
        let p = match (products, bits) {
            (Products::F32, _) => model.predict(&be, &store, &data, 0..data.rows())?,
            (Products::Int8, Some(bits)) => model.predict_int8(&be, &store, bits, &data, 0..data.rows())?,
            (Products::Int8, None) => model.predict_int8(&be, &store.quantized_copy(8)?, 8, &data, 0..data.rows())?,
        };
        Ok((p, data))
    };
    let mut p = Vec::new();
    let mut data = None;
    for path in paths {
        let (q, d) = predict(path)?;
        if p.is_empty() {
            p = vec![0f32; q.len()];
        }
        for (a, b) in p.iter_mut().zip(&q) {
            *a += b / paths.len() as f32;
        }
        data = Some(d);
    }
    let data = data.expect("at least one checkpoint");
    let y: Vec<f32> = (0..data.rows()).map(|i| data.label(i)).collect();
    let ev = ClickEval::of(&p, &y);
    let ch = match against {
        Some(other) => Some(churn(&p, &predict(other)?.0)?),
        None => None,
    };
    Ok((ev, ch))
}
