//! The Criteo click-through trainer: per-field hashed embeddings and the dense features into an
//! MLP with ReLU, one logit, binary cross-entropy; evaluation by log-loss, AUC, calibration and
//! (between two models) prediction churn.

use super::metrics::{auc, calibration, churn, log_loss};
use super::{write_result, DeviceChoice, MetricsLog, OptimizerChoice, J};
use crate::autograd::{Graph, Var};
use crate::checkpoint::Checkpoint;
use crate::data::criteo::{cached, shard_range, CriteoCache, OnBadLine, DENSE_WIDTH, NUM_CATS};
use crate::data::synthetic::{write_criteo_tsv, ClickModel, ClickTruth};
use crate::hash::Hasher64;
use crate::nn::{Embedding, Linear, Mlp};
use crate::ops::elementwise::sigmoid;
use crate::optim::{LrSchedule, Optimizer};
use crate::params::ParamStore;
use crate::tensor::Tensor;
use crate::{bail, Error, Result, Rng};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Instant;

crate::config_table! {
    /// Options of `codistill criteo train`. Every key can be set in a TOML file (`--config`) and
    /// overridden on the command line.
    pub struct CriteoConfig {
        /// Training file in the Criteo TSV format, plain or gzip (none: the built-in synthetic log)
        train: Option<PathBuf> = None,
        /// Validation file (none: hold out the last valid_fraction of the training rows)
        valid: Option<PathBuf> = None,
        /// Without a validation file, the fraction of training rows held out (the last ones)
        valid_fraction: f32 = 0.1,
        /// Bad lines: stop (error naming file, line and column) or skip (counted and reported)
        on_bad_line: OnBadLine = OnBadLine::Stop,
        /// Hash buckets per categorical field
        buckets: usize = 65536,
        /// Embedding width per field
        emb_dim: usize = 8,
        /// Hidden layer widths of the MLP, comma-separated
        mlp: String = "128,64".to_string(),
        /// Examples per batch
        batch: usize = 512,
        /// Passes over the training rows (shuffled each epoch)
        epochs: usize = 1,
        /// Optimizer: sgd, momentum, adagrad or adam (embeddings are updated sparsely)
        optimizer: OptimizerChoice = OptimizerChoice::Adam,
        /// Learning rate
        lr: f32 = 0.002,
        /// Multiply the learning rate by this every lr_decay_every steps after lr_decay_start
        lr_decay: f32 = 0.5,
        /// Steps between learning-rate decays (0: never decay)
        lr_decay_every: u64 = 0,
        /// Step of the first decay
        lr_decay_start: u64 = 0,
        /// Clip the global gradient norm to this (0: no clipping)
        clip: f32 = 0.0,
        /// Validate every this many steps (0: at the end of each epoch only)
        eval_every: u64 = 0,
        /// Validate on at most this many rows (0: all)
        eval_rows: usize = 0,
        /// Log training metrics every this many steps
        log_every: u64 = 100,
        /// Output directory: metrics.jsonl, checkpoint.safetensors, result.json
        out: PathBuf = PathBuf::from("runs/criteo"),
        /// Cache directory for preprocessed files and the synthetic log
        cache: PathBuf = PathBuf::from(".codistill-cache"),
        /// Random seed (initialisation and shuffling)
        seed: u64 = 1,
        /// Device: auto (GPU if available, else CPU), cpu or cuda
        device: DeviceChoice = DeviceChoice::Auto,
        /// Split the training rows into this many disjoint shards...
        shards: usize = 1,
        /// ...and train on this one (0-based)
        shard: usize = 0,
        /// Synthetic log: training rows (the validation file gets a tenth)
        synthetic_rows: usize = 1000000,
        /// Synthetic log: multiplier of the Criteo-like field cardinalities
        synthetic_scale: f32 = 0.1,
    }
}

const FORMAT: &str = "codistill-criteo-v1";

/// Hashed per-field embeddings and the dense features into an MLP; one logit.
pub struct CtrModel {
    pub emb: Embedding,
    pub dense: Linear,
    pub mlp: Mlp,
}

pub fn parse_widths(s: &str) -> Result<Vec<usize>> {
    s.split(',')
        .map(|w| w.trim().parse::<usize>().ok().filter(|&w| w > 0).ok_or_else(|| Error::Invalid(format!("mlp widths must be positive integers separated by commas, got {s:?}"))))
        .collect()
}

impl CtrModel {
    pub fn new(store: &mut ParamStore, cfg: &CriteoConfig, rng: &mut Rng) -> Result<Self> {
        let widths = parse_widths(&cfg.mlp)?;
        let mut dims = vec![NUM_CATS * cfg.emb_dim];
        dims.extend(&widths);
        dims.push(1);
        Ok(CtrModel {
            emb: Embedding::new(store, "ctr.embedding", NUM_CATS * cfg.buckets, cfg.emb_dim, 0.05, rng)?,
            // The dense half of the first layer: [embeddings | dense] W = emb W_e + dense W_d.
            dense: Linear::new(store, "ctr.dense", DENSE_WIDTH, widths[0], false, rng)?,
            mlp: Mlp::new(store, "ctr.mlp", &dims, rng)?,
        })
    }

    /// Logits `[n]` for a batch from `CriteoCache::batch`.
    pub fn forward(&self, g: &mut Graph, s: &ParamStore, ids: &Tensor, dense: &Tensor) -> Result<Var> {
        let n = dense.dim(0);
        let e = self.emb.forward(g, s, ids)?;
        let e = g.reshape(e, &[n, NUM_CATS * self.emb.dim])?;
        let first = self.mlp.layers[0].forward(g, s, e)?;
        let dv = g.constant(dense.clone());
        let d = self.dense.forward(g, s, dv)?;
        let mut h = g.add(first, d)?;
        for layer in &self.mlp.layers[1..] {
            h = g.relu(h)?;
            h = layer.forward(g, s, h)?;
        }
        g.reshape(h, &[n])
    }

    /// Click probabilities for rows `rows` of a cache, in batches, without a tape.
    pub fn predict(&self, s: &ParamStore, data: &CriteoCache, rows: Range<usize>) -> Result<Vec<f32>> {
        let idx: Vec<usize> = rows.collect();
        let mut out = Vec::with_capacity(idx.len());
        for chunk in idx.chunks(8192) {
            let (ids, dense, _) = data.batch(chunk)?;
            let mut g = Graph::no_grad();
            let l = self.forward(&mut g, s, &ids, &dense)?;
            out.extend(g.value(l).f32s()?.iter().map(|&x| sigmoid(x)));
        }
        Ok(out)
    }
}

/// Validation figures.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ClickEval {
    pub rows: usize,
    pub log_loss: f64,
    pub auc: f64,
    pub calibration: f64,
}

pub fn evaluate(model: &CtrModel, s: &ParamStore, data: &CriteoCache, rows: Range<usize>) -> Result<(ClickEval, Vec<f32>)> {
    let p = model.predict(s, data, rows.clone())?;
    let y: Vec<f32> = rows.map(|i| data.label(i)).collect();
    Ok((ClickEval { rows: y.len(), log_loss: log_loss(&p, &y), auc: auc(&p, &y), calibration: calibration(&p, &y) }, p))
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
            h.update(format!("criteo-synth-v1/{}/{}/{}", cfg.synthetic_rows, cfg.synthetic_scale, cfg.seed).as_bytes());
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
    pub valid: Option<ClickEval>,
    pub valid_truth: Option<ClickTruth>,
    pub preprocess_rows_per_s: Option<f64>,
    pub train_rows_per_s: f64,
    pub seconds: f64,
}

pub fn save_checkpoint(path: &Path, cfg: &CriteoConfig, s: &ParamStore, step: u64) -> Result<()> {
    let mut c = Checkpoint::new();
    for (name, p) in s.iter() {
        c.tensors.insert(name.clone(), p.value.clone());
    }
    c.meta.insert("format".into(), FORMAT.into());
    c.meta.insert("step".into(), step.to_string());
    c.meta.insert("config".into(), cfg.to_toml());
    c.save(path)
}

/// A checkpoint's config and weights in a fresh model.
pub fn load_checkpoint(path: &Path) -> Result<(CriteoConfig, CtrModel, ParamStore)> {
    let ck = Checkpoint::load(path)?;
    let format = ck.meta("format", path)?;
    if format != FORMAT {
        bail!(Invalid, "{}: checkpoint format {format:?} is not a click model ({FORMAT})", path.display());
    }
    let mut cfg = CriteoConfig::default();
    cfg.apply_toml_str(ck.meta("config", path)?, path)?;
    let mut store = ParamStore::new();
    let model = CtrModel::new(&mut store, &cfg, &mut Rng::new(0))?;
    for name in store.names() {
        let t = ck.tensors.get(&name).ok_or_else(|| Error::Invalid(format!("{}: checkpoint lacks parameter {name:?}", path.display())))?;
        store.set(&name, t.clone()).map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
    }
    Ok((cfg, model, store))
}

pub fn train(cfg: &CriteoConfig) -> Result<CriteoSummary> {
    let t0 = Instant::now();
    cfg.device.resolve()?;
    if cfg.batch == 0 || cfg.epochs == 0 {
        bail!(Invalid, "batch and epochs must be positive (got {} and {})", cfg.batch, cfg.epochs);
    }
    let data = prepare_data(cfg)?;
    let span = shard_range(data.train_rows.len(), cfg.shards, cfg.shard)?;
    let rows: Range<usize> = data.train_rows.start + span.start..data.train_rows.start + span.end;
    if rows.is_empty() {
        bail!(Invalid, "{}: shard {} of {} has no training rows", data.train.source.display(), cfg.shard, cfg.shards);
    }
    let mut store = ParamStore::new();
    let mut rng = Rng::new(cfg.seed);
    let model = CtrModel::new(&mut store, cfg, &mut rng)?;
    let mut opt = Optimizer::new(cfg.optimizer.kind());
    let clip = if cfg.clip > 0.0 { Some(cfg.clip) } else { None };
    let steps_per_epoch = rows.len().div_ceil(cfg.batch) as u64;
    let schedule = LrSchedule { base: cfg.lr, factor: cfg.lr_decay, every: cfg.lr_decay_every, start: cfg.lr_decay_start };
    std::fs::create_dir_all(&cfg.out).map_err(|e| Error::io(&cfg.out, e))?;
    let mut log = MetricsLog::open(&cfg.out.join("metrics.jsonl"))?;
    eprintln!(
        "criteo: {} parameters, {} training rows (shard {} of {}), {} validation rows",
        store.num_elements(),
        rows.len(),
        cfg.shard,
        cfg.shards,
        data.valid_rows.len()
    );
    let bar = indicatif::ProgressBar::new(steps_per_epoch * cfg.epochs as u64);
    bar.set_style(indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}").expect("static template").progress_chars("=> "));
    let validate = |store: &ParamStore| -> Result<Option<ClickEval>> {
        match data.valid() {
            Some((c, r)) => {
                let end = if cfg.eval_rows > 0 { (r.start + cfg.eval_rows).min(r.end) } else { r.end };
                Ok(Some(evaluate(&model, store, c, r.start..end)?.0))
            }
            None => Ok(None),
        }
    };
    let (mut step, mut last) = (0u64, None);
    let (mut interval_loss, mut interval_n, mut interval_t) = (0.0, 0u64, Instant::now());
    let (mut train_secs, mut train_rows) = (0.0, 0usize);
    for epoch in 0..cfg.epochs {
        let mut order: Vec<usize> = rows.clone().collect();
        rng.fork(epoch as u64).shuffle(&mut order);
        for chunk in order.chunks(cfg.batch) {
            let ts = Instant::now();
            let (ids, dense, labels) = data.train.batch(chunk)?;
            let mut g = Graph::new();
            let logit = model.forward(&mut g, &store, &ids, &dense)?;
            let loss = g.bce_with_logits(logit, &labels)?;
            let lv = g.value(loss).item()? as f64;
            if !lv.is_finite() {
                bail!(Invalid, "training loss is {lv} at step {step}; lower --lr or set --clip");
            }
            let grads = g.backward(loss)?;
            store.zero_grads();
            g.accumulate_grads(&grads, &mut store)?;
            // The tape holds references to the weights; drop it so the update writes in place
            // instead of copying every parameter.
            drop(g);
            let lr = schedule.at(step);
            let norm = opt.step(&mut store, lr, clip)?;
            step += 1;
            train_secs += ts.elapsed().as_secs_f64();
            train_rows += chunk.len();
            interval_loss += lv;
            interval_n += 1;
            bar.set_position(step);
            if step % cfg.log_every.max(1) == 0 {
                let mean = interval_loss / interval_n as f64;
                let rps = interval_n as f64 * cfg.batch as f64 / interval_t.elapsed().as_secs_f64();
                bar.set_message(format!("loss {mean:.4} {rps:.0} rows/s"));
                log.write(&[("event", J::S("train")), ("step", J::I(step)), ("epoch", J::I(epoch as u64)), ("loss", J::N(mean)), ("lr", J::N(lr as f64)), ("grad_norm", J::N(norm)), ("rows_per_s", J::N(rps))])?;
                (interval_loss, interval_n, interval_t) = (0.0, 0, Instant::now());
            }
            if cfg.eval_every > 0 && step % cfg.eval_every == 0 {
                if let Some(v) = validate(&store)? {
                    bar.suspend(|| eprintln!("step {step}: validation log-loss {:.5} AUC {:.4} calibration {:.3}", v.log_loss, v.auc, v.calibration));
                    log.write(&[("event", J::S("valid")), ("step", J::I(step)), ("log_loss", J::N(v.log_loss)), ("auc", J::N(v.auc)), ("calibration", J::N(v.calibration))])?;
                    last = Some(v);
                }
            }
        }
        if cfg.eval_every == 0 || step % cfg.eval_every != 0 {
            if let Some(v) = validate(&store)? {
                bar.suspend(|| eprintln!("epoch {}: validation log-loss {:.5} AUC {:.4} calibration {:.3}", epoch + 1, v.log_loss, v.auc, v.calibration));
                log.write(&[("event", J::S("valid")), ("step", J::I(step)), ("log_loss", J::N(v.log_loss)), ("auc", J::N(v.auc)), ("calibration", J::N(v.calibration))])?;
                last = Some(v);
            }
        }
        save_checkpoint(&cfg.out.join("checkpoint.safetensors"), cfg, &store, step)?;
    }
    bar.finish_and_clear();
    let truth = data.valid_truth.filter(|_| cfg.eval_rows == 0);
    let s = CriteoSummary { steps: step, valid: last, valid_truth: truth, preprocess_rows_per_s: data.preprocess_rows_per_s, train_rows_per_s: train_rows as f64 / train_secs.max(1e-9), seconds: t0.elapsed().as_secs_f64() };
    let nan = f64::NAN;
    write_result(
        &cfg.out.join("result.json"),
        &[
            ("steps", J::I(step)),
            ("valid_log_loss", J::N(last.map(|v| v.log_loss).unwrap_or(nan))),
            ("valid_auc", J::N(last.map(|v| v.auc).unwrap_or(nan))),
            ("valid_calibration", J::N(last.map(|v| v.calibration).unwrap_or(nan))),
            ("bayes_log_loss", J::N(truth.map(|t| t.bayes_log_loss).unwrap_or(nan))),
            ("train_rows_per_s", J::N(s.train_rows_per_s)),
            ("preprocess_rows_per_s", J::N(s.preprocess_rows_per_s.unwrap_or(nan))),
            ("seconds", J::N(s.seconds)),
        ],
    )?;
    Ok(s)
}

/// Evaluate a checkpoint on a file; with `against`, also the churn between the two models.
pub fn eval_checkpoint(path: &Path, file: &Path, against: Option<&Path>, cache: &Path) -> Result<(ClickEval, Option<f64>)> {
    let (cfg, model, store) = load_checkpoint(path)?;
    if !file.exists() {
        return Err(Error::io(file, std::io::Error::new(std::io::ErrorKind::NotFound, "file not found")));
    }
    let (data, _) = cached(file, cfg.buckets, cfg.on_bad_line, cache)?;
    let (ev, p) = evaluate(&model, &store, &data, 0..data.rows())?;
    let ch = match against {
        Some(other) => {
            let (ocfg, om, os) = load_checkpoint(other)?;
            let (odata, _) = cached(file, ocfg.buckets, ocfg.on_bad_line, cache)?;
            Some(churn(&p, &om.predict(&os, &odata, 0..odata.rows())?)?)
        }
        None => None,
    };
    Ok((ev, ch))
}
