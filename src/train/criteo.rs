//! The Criteo click-through trainer: per-field hashed embeddings and the dense features into an
//! MLP with ReLU, one logit, binary cross-entropy; evaluation by log-loss, AUC, calibration and
//! (between two models) prediction churn.

use super::metrics::{auc, calibration, churn, log_loss};
use super::{write_result, DeviceChoice, MetricsLog, OptimizerChoice, StepTimes, J};
use crate::autograd::{Graph, Var};
use crate::checkpoint::Checkpoint;
use crate::data::criteo::{cached, shard_range, CriteoCache, OnBadLine, DENSE_WIDTH, NUM_CATS};
use crate::data::synthetic::{write_criteo_tsv, ClickModel, ClickTruth};
use crate::hash::Hasher64;
use crate::nn::{Embedding, Linear, Mlp};
use crate::ops::elementwise::sigmoid;
use crate::optim::Optimizer;
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
        /// Steps of linear learning-rate warm-up: step t < warmup trains at lr * (t + 1) / warmup
        warmup: u64 = 0,
        /// Cosine learning-rate decay from the end of the warm-up to lr_min at the last step (instead of the step decay)
        cosine: bool = false,
        /// Cosine decay: the learning rate at the last step
        lr_min: f32 = 0.0,
        /// Weight decay: L2 for sgd and momentum, decoupled for adam (AdamW); applied to what a step updates (an embedding row decays when a batch touches it); not for adagrad
        weight_decay: f32 = 0.0,
        /// Clip the global gradient norm to this (0: no clipping)
        clip: f32 = 0.0,
        /// Validate every this many steps (0: at the end of each epoch only)
        eval_every: u64 = 0,
        /// Validate on at most this many rows (0: all)
        eval_rows: usize = 0,
        /// Log training metrics every this many steps
        log_every: u64 = 100,
        /// Write checkpoints every this many steps (0: at the end of each epoch only)
        checkpoint_every: u64 = 0,
        /// Resume from this checkpoint (weights, optimizer, step, position in the data); one model per process
        resume: Option<PathBuf> = None,
        /// Output directory: metrics.jsonl, checkpoint.safetensors, result.json
        out: PathBuf = PathBuf::from("runs/criteo"),
        /// Cache directory for preprocessed files and the synthetic log
        cache: PathBuf = PathBuf::from(".codistill-cache"),
        /// Random seed (initialisation and shuffling)
        seed: u64 = 1,
        /// Device: auto (GPU if available, else CPU), cpu or cuda
        device: DeviceChoice = DeviceChoice::Auto,
        /// GPU: f32 matrix products on the CUDA cores (exact, slower) instead of bf16 operands on the tensor cores
        matmul_f32: bool = false,
        /// GPU: bitwise-reproducible embedding gradients (a sorted plan instead of atomics)
        deterministic: bool = false,
        /// CPU threads for the products and the loss (0: every core); processes sharing a machine should split its cores
        threads: usize = 0,
        /// CPU: bf16 operands with f32 accumulation in the matrix products, the GPU's default numerics (AVX-512 BF16 dot products where the CPU has them, up to 2x the f32 rate; elsewhere rounded copies of the operands on the f32 kernel, slower than f32)
        cpu_bf16: bool = false,
        /// Split the training rows into this many disjoint shards...
        shards: usize = 1,
        /// ...and train on this one (0-based)
        shard: usize = 0,
        /// Label smoothing epsilon, the control baseline for codistillation (one model only)
        label_smoothing: f32 = 0.0,
        /// Models trained side by side in this process (1: one model; 2 or more: codistillation)
        models: usize = 1,
        /// Codistillation: steps with the distillation term off
        burn_in: u64 = 500,
        /// Codistillation: publish each model's checkpoint every this many steps
        exchange_every: u64 = 100,
        /// Codistillation: publish at most this many times (0: no limit; 1 freezes the teachers at the first exchange, the control run of the overlap measurement)
        max_publishes: u64 = 0,
        /// Weight lambda of the distillation term in the codistillation paper's form, task + lambda * distill (Anil et al. 2018; deep mutual learning), from burn_in on, toward the peers and fixed teachers (0: off; the task term keeps weight 1)
        distill_lambda: f32 = 1.0,
        /// Hinton's convex mix instead of the paper's form: (1 - alpha) * task + alpha * distill, alpha in (0, 1]; when above 0, distill_lambda is not used (0: the paper's form with distill_lambda)
        alpha: f32 = 0.0,
        /// The paper's form: lambda rises linearly from 0 to distill_lambda over this many steps after burn_in (0: at once)
        distill_ramp: u64 = 0,
        /// Deprecated name of alpha (the convex mix, the only form before 2026-12-02): a value given here is taken as alpha, with a note
        distill_weight: Option<f32> = None,
        /// Codistillation: every model trains on all rows (default: each on its own disjoint shard)
        same_data: bool = false,
        /// Feature hints (FitNets) with --teacher: add this weight times the mean squared difference between the first teacher's last hidden layer and a learned linear map (`ctr.hint`, trained with the model, kept in its checkpoints, ignored when one is loaded as a model) of the model's own, from burn_in on (0: off)
        hint_weight: f32 = 0.0,
        /// Offline distillation: checkpoints of trained click models, comma-separated, whose mean click probability the model distills toward from burn_in on, with the distillation weight (distill_lambda, or alpha); a teacher may have other embedding and MLP widths but must hash into the same number of buckets (with codistillation, these teachers and the peers are averaged together)
        teacher: crate::config::Paths = crate::config::Paths::default(),
        /// Experiment: also train the codistilled models without the term (the same shards and seeds, distill_lambda 0), the control for what the term does, into out/independent, and plot them
        independent_control: bool = false,
        /// Codistillation across processes: shared checkpoint directory (one process per model)
        exchange_dir: Option<PathBuf> = None,
        /// Codistillation across processes: at its first step that distills from peers (from burn_in, once peers have had exchange_every steps to publish), a model waits up to this many seconds for every peer's first checkpoint and stops with an error naming the missing ones (0: no wait; train on without them)
        peer_timeout: u64 = 600,
        /// Codistillation across processes: this process's model index (with world 0, the launcher's rank)
        rank: usize = 0,
        /// Codistillation across processes: number of processes (0: with --exchange-dir, from a launcher's variables, torchrun's WORLD_SIZE and RANK, Slurm's SLURM_NTASKS and SLURM_PROCID, Open MPI's OMPI_COMM_WORLD_SIZE and OMPI_COMM_WORLD_RANK or MPICH's PMI_SIZE and PMI_RANK, else 1)
        world: usize = 0,
        /// Write step_times.csv to the output directory: each step's compute seconds (all models here) and seconds in exchange calls, for the overlap measurement
        step_times: bool = false,
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
        .map(|w| {
            w.trim()
                .parse::<usize>()
                .ok()
                .filter(|&w| w > 0)
                .ok_or_else(|| Error::Invalid(format!("mlp widths must be positive integers separated by commas, got {s:?}")))
        })
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
        Ok(self.forward_hidden(g, s, ids, dense)?.0)
    }

    /// As [`forward`](Self::forward), with the last hidden layer `[n, width]` (after its ReLU, the
    /// output layer's input): what a feature hint compares.
    pub fn forward_hidden(&self, g: &mut Graph, s: &ParamStore, ids: &Tensor, dense: &Tensor) -> Result<(Var, Var)> {
        let n = dense.dim(0);
        let e = self.emb.forward(g, s, ids)?;
        let e = g.reshape(e, &[n, NUM_CATS * self.emb.dim])?;
        let first = self.mlp.layers[0].forward(g, s, e)?;
        let dv = g.constant(dense.clone());
        let d = self.dense.forward(g, s, dv)?;
        let mut h = g.add(first, d)?;
        let mut hidden = h;
        for layer in &self.mlp.layers[1..] {
            h = g.relu(h)?;
            hidden = h;
            h = layer.forward(g, s, h)?;
        }
        Ok((g.reshape(h, &[n])?, hidden))
    }

    /// The width of the last hidden layer.
    pub fn hidden_width(&self) -> usize {
        self.mlp.layers.last().map_or(0, |l| l.in_dim)
    }

    /// Click probabilities for rows `rows` of a cache, in batches, without a tape.
    pub fn predict(&self, s: &ParamStore, data: &CriteoCache, rows: Range<usize>) -> Result<Vec<f32>> {
        let idx: Vec<usize> = rows.collect();
        let mut out = Vec::with_capacity(idx.len());
        let dev = s.device();
        for chunk in idx.chunks(8192) {
            let (ids, dense, _) = data.batch(chunk)?;
            let (ids, dense) = (ids.to_device(dev)?, dense.to_device(dev)?);
            let mut g = Graph::no_grad();
            let l = self.forward(&mut g, s, &ids, &dense)?;
            out.extend(g.value(l).to_vec_f32()?.iter().map(|&x| sigmoid(x)));
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

pub fn save_checkpoint(path: &Path, cfg: &CriteoConfig, s: &ParamStore, step: u64) -> Result<()> {
    save_full(path, cfg, s, None, step, None, None)
}

/// A checkpoint with, when given, the optimizer state and the position in the data for resuming.
fn save_full(
    path: &Path,
    cfg: &CriteoConfig,
    s: &ParamStore,
    opt: Option<&Optimizer>,
    step: u64,
    position: Option<(u64, usize)>,
    data: Option<u64>,
) -> Result<()> {
    let mut c = Checkpoint::new();
    for (name, p) in s.iter() {
        c.tensors.insert(name.clone(), p.value.clone());
    }
    if let Some(opt) = opt {
        for (name, t) in opt.state_tensors() {
            c.tensors.insert(format!("optim/{name}"), t);
        }
        c.meta.insert("optimizer_steps".into(), opt.steps_taken().to_string());
    }
    if let Some((epoch, pos)) = position {
        c.meta.insert("epoch".into(), epoch.to_string());
        c.meta.insert("position".into(), pos.to_string());
    }
    if let Some(d) = data {
        c.meta.insert(super::DATA_KEY.into(), format!("{d:016x}"));
    }
    c.meta.insert("format".into(), FORMAT.into());
    c.meta.insert("step".into(), step.to_string());
    c.meta.insert("config".into(), cfg.to_toml());
    c.save(path)
}

/// A checkpoint's config and weights in a fresh model.
pub fn load_checkpoint(path: &Path) -> Result<(CriteoConfig, CtrModel, ParamStore)> {
    let (cfg, model, store, _) = load_with_meta(path)?;
    Ok((cfg, model, store))
}

fn load_with_meta(path: &Path) -> Result<(CriteoConfig, CtrModel, ParamStore, Checkpoint)> {
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
    Ok((cfg, model, store, ck))
}

/// Keys that fix the model and the data order: a resumed run must agree on them.
const RESUME_KEYS: &[&str] =
    &["buckets", "emb_dim", "mlp", "batch", "seed", "optimizer", "models", "world", "rank", "same_data", "shards", "shard", "valid_fraction"];

/// A fixed teacher of an offline distillation: a trained checkpoint's model and weights.
pub struct CtrTeacher {
    pub path: PathBuf,
    pub model: CtrModel,
    pub store: ParamStore,
}

/// Load `--teacher` checkpoints onto `dev`. A teacher must hash categories into `buckets` as the
/// run does (its embedding rows are indexed by the same ids); an error names the checkpoint.
pub fn load_teachers(paths: &[PathBuf], buckets: usize, dev: crate::tensor::Device) -> Result<Vec<CtrTeacher>> {
    paths
        .iter()
        .map(|path| {
            let (tcfg, model, mut store) = load_checkpoint(path)?;
            if tcfg.buckets != buckets {
                bail!(
                    Invalid,
                    "{}: the teacher hashes categories into {} buckets and this run into {buckets}; a teacher must use the same --buckets",
                    path.display(),
                    tcfg.buckets
                );
            }
            store.to_device(dev)?;
            Ok(CtrTeacher { path: path.clone(), model, store })
        })
        .collect()
}

/// One model of a (possibly codistilled) run.
struct Member {
    /// Global model index: shard and exchange rank.
    index: usize,
    store: ParamStore,
    opt: Optimizer,
    rows: Range<usize>,
    order: Vec<usize>,
    pos: usize,
    epoch: u64,
    rng: Rng,
    teachers: crate::distill::TeacherTracker,
    /// The fingerprint of this model's training rows (checkpoints record it; a resume checks it).
    data_key: u64,
    /// The last step with a finite training loss, and that loss.
    last_loss: Option<(u64, f64)>,
}

impl Member {
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

    fn checkpoint_name(&self, single: bool) -> String {
        if single {
            "checkpoint.safetensors".into()
        } else {
            format!("checkpoint-{}.safetensors", self.index)
        }
    }
}

/// Train as configured: one model, or `models` codistilling models in this process, or this
/// process's model of a `world`-process codistillation through `exchange_dir`.
pub fn train(cfg: &CriteoConfig) -> Result<CriteoSummary> {
    use crate::distill::exchange::timed;
    use crate::distill::{end_step, CodistillSchedule, Topology};
    let t0 = Instant::now();
    let dev = cfg.device.resolve()?;
    super::backend_settings(cfg.matmul_f32, cfg.deterministic, cfg.threads, cfg.cpu_bf16);
    if cfg.batch == 0 || cfg.epochs == 0 || cfg.emb_dim == 0 {
        bail!(Invalid, "batch, epochs and emb_dim must be positive (got {}, {} and {})", cfg.batch, cfg.epochs, cfg.emb_dim);
    }
    let widths = parse_widths(&cfg.mlp)?;
    {
        // Embeddings, the dense features' half of the first layer, the MLP (each layer with its bias).
        let (b, e) = (cfg.buckets as u128, cfg.emb_dim as u128);
        let mut dims = vec![NUM_CATS as u128 * e];
        dims.extend(widths.iter().map(|&w| w as u128));
        dims.push(1);
        let mlp: u128 = dims.windows(2).map(|w| w[0].saturating_mul(w[1]) + w[1]).sum();
        let params = (NUM_CATS as u128).saturating_mul(b).saturating_mul(e) + DENSE_WIDTH as u128 * widths[0] as u128 + mlp;
        super::check_model_memory(params, cfg.models, cfg.optimizer, dev, "--buckets, --emb-dim, --mlp")?;
    }
    let (world, rank) = super::process_world(cfg.world, cfg.rank, cfg.exchange_dir.is_some())?;
    // The run goes on, and its checkpoints record, the world and rank it took.
    let cfg = &CriteoConfig { world, rank, ..cfg.clone() };
    let topo = Topology { models: cfg.models, world: cfg.world, rank: cfg.rank, same_data: cfg.same_data, shards: cfg.shards, shard: cfg.shard };
    let form = crate::distill::DistillForm::from_options(cfg.distill_lambda, cfg.alpha, cfg.distill_ramp, cfg.distill_weight)?;
    topo.check(cfg.exchange_dir.as_deref(), form.weight(), cfg.exchange_every, cfg.label_smoothing)?;
    let (optimizer, mut lr_schedule, clip) = super::optimizer_settings(super::optim_args!(cfg, 0))?;
    let total_models = topo.total();
    if !cfg.teacher.is_empty() && cfg.label_smoothing > 0.0 {
        bail!(Invalid, "label_smoothing is the control for distillation; use it or --teacher, not both");
    }
    let data = prepare_data(cfg)?;
    let schedule = CodistillSchedule {
        burn_in: cfg.burn_in,
        exchange_every: cfg.exchange_every,
        max_publishes: cfg.max_publishes,
        weight: if total_models > 1 || !cfg.teacher.is_empty() { form.weight() } else { 0.0 },
    };
    // Peers exchange checkpoints only when there are peers and the term is on.
    let codistill = total_models > 1 && schedule.weight > 0.0;
    let fixed = load_teachers(&cfg.teacher.0, cfg.buckets, dev)?;
    let hints = super::check_hints(cfg.hint_weight, !fixed.is_empty(), "give --teacher")?;
    // A feature hint maps the model's last hidden layer to the first teacher's width.
    let hint_map = |store: &mut ParamStore, rng: &mut Rng| match (hints, fixed.first()) {
        (true, Some(t)) => {
            let width = *parse_widths(&cfg.mlp)?.last().unwrap_or(&0);
            Linear::new(store, "ctr.hint", width, t.model.hidden_width(), true, rng).map(Some)
        }
        _ => Ok(None),
    };
    let hint = hint_map(&mut ParamStore::new(), &mut Rng::new(0))?;
    let mut members = Vec::new();
    for local in 0..cfg.models {
        let index = topo.index(local);
        let (n, i) = topo.shard_of(index);
        let span = shard_range(data.train_rows.len(), n, i)?;
        let rows = data.train_rows.start + span.start..data.train_rows.start + span.end;
        if rows.is_empty() {
            bail!(Invalid, "{}: shard {i} of {n} has no training rows", data.train.source.display());
        }
        let data_key = data.train.fingerprint(rows.clone());
        let mut store = ParamStore::new();
        // Each model gets its own initialisation and shuffling.
        let mut rng = Rng::new(cfg.seed).fork(index as u64);
        CtrModel::new(&mut store, cfg, &mut rng)?;
        hint_map(&mut store, &mut rng)?;
        members.push(Member {
            index,
            store,
            opt: Optimizer::new(optimizer),
            rows,
            order: Vec::new(),
            pos: usize::MAX,
            epoch: 0,
            rng,
            teachers: crate::distill::TeacherTracker::new(total_models, cfg.exchange_every),
            data_key,
            last_loss: None,
        });
    }
    // Start calibrated: the output bias at the log-odds of the training click rate. With rare
    // clicks the bias gradient is small, and a model that starts off-rate stays miscalibrated.
    let rate = {
        let r = &data.train_rows;
        let clicks: f64 = r.clone().map(|i| data.train.label(i) as f64).sum();
        ((clicks + 1.0) / (r.len() as f64 + 2.0)).clamp(1e-6, 1.0 - 1e-6)
    };
    let out_bias = format!("ctr.mlp.{}.bias", parse_widths(&cfg.mlp)?.len());
    for m in members.iter_mut() {
        m.store.set(&out_bias, Tensor::full(&[1], (rate / (1.0 - rate)).ln() as f32))?;
    }
    let mut start_step = 0u64;
    if let Some(path) = &cfg.resume {
        if cfg.models != 1 {
            bail!(Invalid, "resume works for one model per process; run codistillation with --world and --exchange-dir to resume a model");
        }
        let (saved, _, store, ck) = load_with_meta(path)?;
        crate::config::require_same(path, RESUME_KEYS, &saved.entries(), &cfg.entries())?;
        super::check_same_data(path, &ck, Some(members[0].data_key), &data.train.source.display().to_string())?;
        let num = |k: &str| -> Result<u64> { ck.meta(k, path)?.parse().map_err(|_| Error::Invalid(format!("{}: {k} is not a number", path.display()))) };
        let m = &mut members[0];
        m.store = store;
        if let Some(h) = &hint {
            super::restore_hint(&mut m.store, h, &ck, path)?;
        }
        m.opt.load_state(
            ck.tensors.iter().filter_map(|(k, t)| k.strip_prefix("optim/").map(|n| (n.to_string(), t.clone()))).collect(),
            num("optimizer_steps")?,
        )?;
        start_step = num("step")?;
        m.epoch = num("epoch")?;
        m.pos = num("position")? as usize;
        if m.epoch > 0 {
            m.order = m.rows.clone().collect();
            m.rng.fork(m.epoch - 1).shuffle(&mut m.order);
        }
        eprintln!("resumed from {} at step {start_step}", path.display());
    }
    for m in members.iter_mut() {
        m.store.to_device(dev)?;
    }
    // The structure (parameter names) is the same for every model; weights come from each store.
    let model = CtrModel::new(&mut ParamStore::new(), cfg, &mut Rng::new(0))?;
    // What peers in other processes must agree on, written into every published checkpoint.
    let compat = format!(
        "buckets={};emb_dim={};mlp={};world={};burn_in={};exchange_every={};distill={};same_data={}",
        cfg.buckets,
        cfg.emb_dim,
        cfg.mlp,
        cfg.world,
        cfg.burn_in,
        cfg.exchange_every,
        form.describe(),
        cfg.same_data
    );
    let mut exchange = topo.exchange(cfg.exchange_dir.as_deref(), &members[0].store, &compat, cfg.resume.is_none())?;
    let mut exchange_said = std::collections::HashSet::new();
    if codistill {
        // The snapshot buffers are allocated now, not inside the first publishes.
        for m in &members {
            exchange.prepare(m.index, &m.store)?;
        }
    }
    let steps_per_epoch = members.iter().map(|m| m.rows.len().div_ceil(cfg.batch)).min().unwrap_or(0) as u64;
    let total_steps = steps_per_epoch * cfg.epochs as u64;
    // The cosine ends at the last step, known once the shards are read.
    lr_schedule.total = total_steps;
    super::check_burn_in(&schedule, total_models > 1 || !fixed.is_empty(), total_steps)?;
    if let Some(path) = cfg.resume.as_ref().filter(|_| start_step >= total_steps) {
        bail!(
            Invalid,
            "{}: the checkpoint is at step {start_step} and this run ends at step {total_steps} ({} epoch(s) of {steps_per_epoch} steps): nothing is left to train, and nothing was changed; raise --epochs to train on",
            path.display(),
            cfg.epochs
        );
    }
    let _out_lock = super::lock_out(&cfg.out)?;
    let mut log = MetricsLog::start(&cfg.out.join("metrics.jsonl"), cfg.resume.is_some().then_some(start_step))?;
    eprintln!(
        "criteo: {} model(s) here of {total_models}, {} parameters each, {} training rows each, {} validation rows, {total_steps} steps",
        cfg.models,
        members[0].store.num_elements(),
        members[0].rows.len(),
        data.valid_rows.len()
    );
    let bar = indicatif::ProgressBar::new(total_steps);
    bar.set_style(indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}").expect("static template").progress_chars("=> "));
    let valid_end = |r: &Range<usize>| if cfg.eval_rows > 0 { (r.start + cfg.eval_rows).min(r.end) } else { r.end };
    let evaluate_all = |members: &[Member]| -> Result<Vec<(ClickEval, Vec<f32>)>> {
        match data.valid() {
            Some((c, r)) => members.iter().map(|m| evaluate(&model, &m.store, c, r.start..valid_end(&r))).collect(),
            None => Ok(Vec::new()),
        }
    };
    let peers: Vec<usize> = (0..total_models).collect();
    if let Some((c, r)) = data.valid() {
        // What the students are pulled toward, scored as they will be.
        for (k, t) in fixed.iter().enumerate() {
            let v = evaluate(&t.model, &t.store, c, r.start..valid_end(&r))?.0;
            eprintln!("teacher {k} ({}): validation log-loss {:.5} AUC {}", t.path.display(), v.log_loss, super::metrics::show(v.auc, 4));
            log.write(&[
                ("event", J::S("teacher_valid")),
                ("teacher", J::I(k as u64)),
                ("step", J::I(start_step)),
                ("log_loss", J::N(v.log_loss)),
                ("auc", J::N(v.auc)),
            ])?;
        }
    }
    let (mut interval_loss, mut interval_n, mut interval_t) = (0.0, 0u64, Instant::now());
    // The feature hint's term (weighted) over the same interval: sum and count.
    let mut interval_hint = (0.0, 0u64);
    let (mut train_secs, mut train_rows, mut exchange_wait) = (0.0, 0usize, 0.0);
    let mut evals: Vec<(ClickEval, Vec<f32>)> = Vec::new();
    let mut step_times = StepTimes::new(cfg.step_times, start_step);
    bar.set_position(start_step);
    // Models trained in other processes, and whether their first checkpoints have been seen.
    let mut peer_wait = super::PeerWait::new(codistill, total_models, &members.iter().map(|m| m.index).collect::<Vec<_>>(), cfg.peer_timeout);
    for step in start_step..total_steps {
        exchange_wait += peer_wait.before_step(exchange.as_mut(), &schedule, step, &mut log)?;
        let lr = lr_schedule.at(step);
        let mut staleness_sum = (0u64, 0u64);
        step_times.begin(train_secs, exchange_wait);
        for m in members.iter_mut() {
            let (ts, mut waited_here) = (Instant::now(), 0.0);
            let chunk = m.next_batch(cfg.batch);
            let (ids, dense, labels) = data.train.batch(&chunk)?;
            // Labels stay on the host, where the soft targets are mixed; the targets move at the end.
            let (ids, dense) = (ids.to_device(dev)?, dense.to_device(dev)?);
            // Teachers: the newest snapshots of the other models, averaged as probabilities.
            let mut targets = if cfg.label_smoothing > 0.0 {
                let e = cfg.label_smoothing;
                Tensor::from_f32(labels.f32s()?.iter().map(|&y| (1.0 - e) * y + e * 0.5).collect(), labels.shape())?
            } else {
                labels.clone()
            };
            let mut hint_target = None;
            let mut loss_scale = 1.0f32;
            if schedule.distill_at(step) {
                let (teachers, waited) = timed(|| peers.iter().filter(|&&p| p != m.index).filter_map(|&p| exchange.latest(p)).collect::<Vec<_>>());
                waited_here += waited.as_secs_f64();
                let count = (teachers.len() + fixed.len()) as f32;
                if count > 0.0 {
                    let mut mean_p = vec![0f32; chunk.len()];
                    // Each teacher's click probabilities, added into the mean; with `hidden`, its
                    // last hidden layer too (a feature hint's target).
                    let mut add = |model: &CtrModel, store: &ParamStore, hidden: bool| -> Result<Option<Tensor>> {
                        let mut g = Graph::no_grad();
                        let (l, h) = model.forward_hidden(&mut g, store, &ids, &dense)?;
                        for (acc, &x) in mean_p.iter_mut().zip(&g.value(l).to_vec_f32()?) {
                            *acc += sigmoid(x) / count;
                        }
                        Ok(hidden.then(|| g.value(h).clone()))
                    };
                    for (k, t) in fixed.iter().enumerate() {
                        hint_target = add(&t.model, &t.store, k == 0 && hints)?.or(hint_target);
                    }
                    for t in &teachers {
                        add(&model, &t.params, false)?;
                        let u = m.teachers.observe(m.index, t, step);
                        staleness_sum = (staleness_sum.0 + u.staleness, staleness_sum.1 + 1);
                        if u.swapped {
                            super::log_teacher_swap(&mut log, step, m.index, t, u.staleness, waited)?;
                        }
                        if let Some(w) = u.warning {
                            bar.suspend(|| eprintln!("{w}"));
                        }
                    }
                    // Binary cross-entropy is linear in its target, so scale * BCE(z, (1 - mix) y + mix p) is
                    // the paper's BCE(z, y) + lambda * BCE(z, p), or the convex mix.
                    let (w, scale) = form.mix_at(step, cfg.burn_in);
                    loss_scale = scale;
                    let y = labels.f32s()?;
                    targets = Tensor::from_f32(y.iter().zip(&mean_p).map(|(&y, &p)| (1.0 - w) * y + w * p).collect(), labels.shape())?;
                }
            }
            let mut g = Graph::new();
            let (logit, last) = model.forward_hidden(&mut g, &m.store, &ids, &dense)?;
            let bce = g.bce_with_logits(logit, &targets.to_device(dev)?)?;
            let mut loss = super::scaled(&mut g, bce, loss_scale)?;
            let hint_term = match (&hint_target, &hint) {
                (Some(target), Some(map)) => Some(super::hint_loss(&mut g, &m.store, map, last, target, cfg.hint_weight)?),
                _ => None,
            };
            if let Some(term) = hint_term {
                loss = g.add(loss, term)?;
            }
            let lv = g.value(loss).item()? as f64;
            // Read after the loss, whose read already waited for the device.
            if let Some(term) = hint_term {
                interval_hint = (interval_hint.0 + g.value(term).item()? as f64, interval_hint.1 + 1);
            }
            super::check_loss(lv, step, m.index, &mut m.last_loss)?;
            let grads = g.backward(loss)?;
            m.store.zero_grads()?;
            g.accumulate_grads(&grads, &mut m.store)?;
            // The tape holds references to the weights; drop it so the update writes in place.
            drop(g);
            // Compute time excludes the time spent in exchange calls, which is accounted apart.
            train_secs += ts.elapsed().as_secs_f64() - waited_here;
            exchange_wait += waited_here;
            train_rows += chunk.len();
            interval_loss += lv;
            interval_n += 1;
        }
        // The updates come after every model's gradients, so that a publish's background copy of
        // a model's weights (which must end before that model's update) has the whole step.
        for m in members.iter_mut() {
            let (r, waited) = timed(|| exchange.settle(m.index));
            r?;
            exchange_wait += waited.as_secs_f64();
            let (r, took) = timed(|| m.opt.step(&mut m.store, lr, clip));
            r?;
            train_secs += took.as_secs_f64();
        }
        if codistill {
            exchange_wait += end_step(exchange.as_mut(), step + 1, schedule.publish_after(step), members.iter().map(|m| (m.index, &m.store)))?.as_secs_f64();
            super::exchange_health(exchange.as_mut(), &mut log, step + 1, &mut exchange_said, &bar)?;
        }
        step_times.end(train_secs, exchange_wait);
        let step1 = step + 1;
        bar.set_position(step1);
        if step1 % cfg.log_every.max(1) == 0 {
            let mean = interval_loss / interval_n as f64;
            let rps = interval_n as f64 * cfg.batch as f64 / interval_t.elapsed().as_secs_f64();
            bar.set_message(format!("loss {mean:.4} {rps:.0} rows/s"));
            let stale = if staleness_sum.1 > 0 { staleness_sum.0 as f64 / staleness_sum.1 as f64 } else { f64::NAN };
            log.write(&[
                ("event", J::S("train")),
                ("step", J::I(step1)),
                ("loss", J::N(mean)),
                ("lr", J::N(lr as f64)),
                ("rows_per_s", J::N(rps)),
                ("mean_staleness", J::N(stale)),
                ("exchange_wait_s", J::N(exchange_wait)),
                ("hint_loss", J::N(if interval_hint.1 > 0 { interval_hint.0 / interval_hint.1 as f64 } else { f64::NAN })),
            ])?;
            (interval_loss, interval_n, interval_t) = (0.0, 0, Instant::now());
            interval_hint = (0.0, 0);
        }
        let epoch_end = steps_per_epoch > 0 && step1 % steps_per_epoch == 0;
        if (cfg.eval_every > 0 && step1 % cfg.eval_every == 0) || (cfg.eval_every == 0 && epoch_end) || step1 == total_steps {
            evals = evaluate_all(&members)?;
            for (m, (v, _)) in members.iter().zip(&evals) {
                bar.suspend(|| {
                    eprintln!(
                        "step {step1}: model {} validation log-loss {:.5} AUC {} calibration {}",
                        m.index,
                        v.log_loss,
                        super::metrics::show(v.auc, 4),
                        super::metrics::show(v.calibration, 3)
                    )
                });
                log.write(&[
                    ("event", J::S("valid")),
                    ("step", J::I(step1)),
                    ("model", J::I(m.index as u64)),
                    ("log_loss", J::N(v.log_loss)),
                    ("auc", J::N(v.auc)),
                    ("calibration", J::N(v.calibration)),
                ])?;
            }
        }
        if epoch_end || step1 == total_steps || (cfg.checkpoint_every > 0 && step1 % cfg.checkpoint_every == 0) {
            for m in &members {
                save_full(&cfg.out.join(m.checkpoint_name(cfg.models == 1)), cfg, &m.store, Some(&m.opt), step1, Some((m.epoch, m.pos)), Some(m.data_key))?;
            }
        }
    }
    bar.finish_and_clear();
    drop(exchange);
    step_times.write(&cfg.out)?;
    let (ensemble, churn_01) = match (data.valid(), evals.len() > 1) {
        (Some((c, r)), true) => {
            let n = evals.len() as f32;
            let mut p = vec![0f32; evals[0].1.len()];
            for (_, q) in &evals {
                for (a, &b) in p.iter_mut().zip(q) {
                    *a += b / n;
                }
            }
            let y: Vec<f32> = (r.start..valid_end(&r)).map(|i| c.label(i)).collect();
            let e = ClickEval { rows: y.len(), log_loss: log_loss(&p, &y), auc: auc(&p, &y), calibration: calibration(&p, &y) };
            (Some(e), Some(churn(&evals[0].1, &evals[1].1)?))
        }
        _ => (None, None),
    };
    if let (Some(e), Some(ch)) = (ensemble, churn_01) {
        log.write(&[
            ("event", J::S("ensemble")),
            ("step", J::I(total_steps)),
            ("log_loss", J::N(e.log_loss)),
            ("auc", J::N(e.auc)),
            ("calibration", J::N(e.calibration)),
            ("churn", J::N(ch)),
        ])?;
    }
    let truth = data.valid_truth.filter(|_| cfg.eval_rows == 0);
    let valid: Vec<ClickEval> = evals.iter().map(|e| e.0).collect();
    let s = CriteoSummary {
        steps: total_steps,
        valid: valid.clone(),
        ensemble,
        churn: churn_01,
        valid_truth: truth,
        preprocess_rows_per_s: data.preprocess_rows_per_s,
        train_rows_per_s: train_rows as f64 / train_secs.max(1e-9),
        seconds: t0.elapsed().as_secs_f64(),
    };
    let nan = f64::NAN;
    let mean_ll = if valid.is_empty() { nan } else { valid.iter().map(|v| v.log_loss).sum::<f64>() / valid.len() as f64 };
    write_result(
        &cfg.out.join("result.json"),
        &[
            ("steps", J::I(total_steps)),
            ("models", J::I(members.len() as u64)),
            ("teachers", J::I(fixed.len() as u64)),
            ("valid_log_loss", J::N(mean_ll)),
            ("valid_auc", J::N(valid.first().map(|v| v.auc).unwrap_or(nan))),
            ("valid_calibration", J::N(valid.first().map(|v| v.calibration).unwrap_or(nan))),
            ("ensemble_log_loss", J::N(ensemble.map(|e| e.log_loss).unwrap_or(nan))),
            ("churn", J::N(churn_01.unwrap_or(nan))),
            ("bayes_log_loss", J::N(truth.map(|t| t.bayes_log_loss).unwrap_or(nan))),
            ("train_rows_per_s", J::N(s.train_rows_per_s)),
            ("preprocess_rows_per_s", J::N(s.preprocess_rows_per_s.unwrap_or(nan))),
            ("train_s", J::N(train_secs)),
            ("exchange_wait_s", J::N(exchange_wait)),
            ("seconds", J::N(s.seconds)),
            ("teacher_refreshes", J::A(members.iter().map(|m| m.teachers.refreshes as f64).collect())),
            ("mean_staleness", J::A(members.iter().map(|m| m.teachers.mean_staleness().unwrap_or(f64::NAN)).collect())),
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
