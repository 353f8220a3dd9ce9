//! The LSTM language-model trainer: embedding, multi-layer LSTM, output projection; truncated
//! backpropagation through time with the state carried between windows; dropout on the
//! non-recurrent connections (Zaremba et al. 2014); global-norm clipping; step learning-rate decay;
//! periodic validation; JSON-lines metrics; safetensors checkpoints and exact resume.

use super::{write_result, DeviceChoice, MetricsLog, OptimizerChoice, StepTimes, J};
use crate::autograd::{Graph, Var};
use crate::checkpoint::Checkpoint;
use crate::data::lm::TokenLanes;
use crate::data::synthetic::{write_markov_corpus, CorpusFloors, MarkovSource};
use crate::data::text::{cached_tokens, cached_vocab, shard_blocks, Tokenizer, Tokens, Vocab};
use crate::hash::Hasher64;
use crate::nn::{Embedding, Linear, Lstm, LstmState};
use crate::optim::Optimizer;
use crate::params::ParamStore;
use crate::tensor::Tensor;
use crate::{bail, Error, Result, Rng};
use std::path::{Path, PathBuf};
use std::time::Instant;

crate::config_table! {
    /// Options of `codistill lm train`. Every key can be set in a TOML file (`--config`) and
    /// overridden on the command line (`--hidden 650` for `hidden`).
    pub struct LmConfig {
        /// Directory with train.txt, valid.txt and test.txt (none: the built-in synthetic corpus)
        data: Option<PathBuf> = None,
        /// Training text file (overrides DATA/train.txt)
        train: Option<PathBuf> = None,
        /// Validation text file (overrides DATA/valid.txt)
        valid: Option<PathBuf> = None,
        /// Test text file (overrides DATA/test.txt)
        test: Option<PathBuf> = None,
        /// Tokenizer: word (whitespace words, `<unk>`, `<eos>` per line) or byte (any text)
        tokenizer: Tokenizer = Tokenizer::Word,
        /// Words seen fewer times than this in training become `<unk>` (4: Bengio et al.'s "3 or fewer" rule)
        min_count: usize = 4,
        /// Embedding width
        emb_dim: usize = 128,
        /// LSTM hidden units per layer
        hidden: usize = 256,
        /// LSTM layers
        layers: usize = 2,
        /// Dropout on embeddings, between layers and before the output projection
        dropout: f32 = 0.2,
        /// Sequences per batch (parallel lanes of the token stream)
        batch: usize = 32,
        /// Steps of truncated backpropagation through time per window
        bptt: usize = 35,
        /// Total training steps (windows), counting those before a resume
        steps: u64 = 3000,
        /// Optimizer: sgd, momentum, adagrad or adam
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
        clip: f32 = 5.0,
        /// Validate every this many steps (and at the end)
        eval_every: u64 = 500,
        /// Validate on about this many tokens, the first windows of `batch` lanes spread over the validation file (0: the whole file)
        eval_tokens: usize = 0,
        /// Lanes of the test evaluation at the end: 1 scores the test file as one stream from a zero state, every token after the first (as a PyTorch loop over the file does); more are faster, each lane from a zero state and its first token unscored (0: batch)
        eval_lanes: usize = 1,
        /// Log training metrics every this many steps
        log_every: u64 = 50,
        /// Write a checkpoint every this many steps (and at the end)
        checkpoint_every: u64 = 1000,
        /// Output directory: metrics.jsonl, checkpoint.safetensors, best.safetensors, result.json
        out: PathBuf = PathBuf::from("runs/lm"),
        /// Cache directory for vocabularies, token files and the synthetic corpus
        cache: PathBuf = PathBuf::from(".codistill-cache"),
        /// Random seed (initialisation and dropout)
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
        /// Split the training stream into this many disjoint shards...
        shards: usize = 1,
        /// ...and train on this one (0-based)
        shard: usize = 0,
        /// Shards: 0 cuts the stream into contiguous pieces; B > 0 deals it out in blocks of B tokens, block b to shard b mod n, so that each shard samples the whole corpus
        shard_block: usize = 0,
        /// Resume from this checkpoint (weights, optimizer, step, carried state)
        resume: Option<PathBuf> = None,
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
        /// Codistillation: softmax temperature of the distillation term
        temperature: f32 = 1.0,
        /// Codistillation: every model trains on the whole stream (default: each on its own disjoint shard)
        same_data: bool = false,
        /// Offline distillation: checkpoints of trained language models, comma-separated, whose averaged prediction the model distills toward from burn_in on, with the distillation weight (distill_lambda, or alpha) and temperature; a teacher may have another width or depth but must have the same vocabulary (with codistillation, these teachers and the peers are averaged together)
        teacher: crate::config::Paths = crate::config::Paths::default(),
        /// Feature hints (FitNets) with --teacher: add this weight times the mean squared difference between the first teacher's top LSTM hidden states and a learned linear map (`lm.hint`, trained with the model, kept in its checkpoints, ignored when one is loaded as a model) of the model's own, from burn_in on (0: off)
        hint_weight: f32 = 0.0,
        /// Data-free distillation: train on text sampled from the teachers (their averaged distribution, one token at a time, batch lanes) instead of a training file, with the teachers' logits as the soft targets; the vocabulary is the teachers', validation and test files are optional; one model; a resume continues on a fresh sample stream (seeded by the step), the weights, optimizer and step restored
        data_free: bool = false,
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
        /// Synthetic corpus: vocabulary size of the Markov source
        synthetic_vocab: usize = 500,
        /// Synthetic corpus: order of the Markov source
        synthetic_order: usize = 2,
        /// Synthetic corpus: successors per context
        synthetic_branching: usize = 4,
        /// Synthetic corpus: training tokens (validation and test get a tenth each)
        synthetic_tokens: usize = 500000,
    }
}

/// Keys that fix the model and the data stream: a resumed run must agree on them.
const RESUME_KEYS: &[&str] = &[
    "tokenizer",
    "min_count",
    "emb_dim",
    "hidden",
    "layers",
    "batch",
    "bptt",
    "shards",
    "shard",
    "shard_block",
    "seed",
    "optimizer",
    "models",
    "world",
    "rank",
    "same_data",
];
const FORMAT: &str = "codistill-lm-v1";

/// Embedding, LSTM, output projection.
pub struct LmModel {
    pub emb: Embedding,
    pub lstm: Lstm,
    pub out: Linear,
}

impl LmModel {
    pub fn new(store: &mut ParamStore, cfg: &LmConfig, vocab: usize, rng: &mut Rng) -> Result<Self> {
        if cfg.layers == 0 || cfg.hidden == 0 || cfg.emb_dim == 0 {
            bail!(Invalid, "layers, hidden and emb_dim must be positive (got {}, {}, {})", cfg.layers, cfg.hidden, cfg.emb_dim);
        }
        Ok(LmModel {
            emb: Embedding::new(store, "lm.embedding", vocab, cfg.emb_dim, 0.1, rng)?,
            lstm: Lstm::new(store, "lm.lstm", cfg.emb_dim, cfg.hidden, cfg.layers, rng)?,
            out: Linear::new(store, "lm.output", cfg.hidden, vocab, true, rng)?,
        })
    }

    /// Logits `[steps * batch, vocab]` for a window of ids (time-major) and the carried state.
    /// `dropout` is (probability, seed) in training, None in evaluation.
    pub fn forward(&self, g: &mut Graph, s: &ParamStore, x: &Tensor, state: &LstmState, steps: usize, dropout: Option<(f32, u64)>) -> Result<(Var, LstmState)> {
        let (logits, _, next) = self.forward_hidden(g, s, x, state, steps, dropout)?;
        Ok((logits, next))
    }

    /// As [`forward`](Self::forward), with the top LSTM layer's outputs `[steps * batch, hidden]`
    /// (before the output dropout): what a feature hint compares.
    pub fn forward_hidden(
        &self,
        g: &mut Graph,
        s: &ParamStore,
        x: &Tensor,
        state: &LstmState,
        steps: usize,
        dropout: Option<(f32, u64)>,
    ) -> Result<(Var, Var, LstmState)> {
        let mut e = self.emb.forward(g, s, x)?;
        if let Some((p, seed)) = dropout {
            e = g.dropout(e, p, seed)?;
        }
        let (top, next) = self.lstm.forward(g, s, e, state, steps, dropout.map(|(p, seed)| (p, seed ^ 0x5EED)))?;
        let h = match dropout {
            Some((p, seed)) => g.dropout(top, p, seed ^ 0xD0)?,
            None => top,
        };
        Ok((self.out.forward(g, s, h)?, top, next))
    }
}

/// The corpus a run trains on.
pub struct LmData {
    pub vocab: Vocab,
    /// None in a data-free distillation, which samples its training text from the teachers.
    pub train: Option<Tokens>,
    pub valid: Option<Tokens>,
    pub test: Option<Tokens>,
    /// Entropy floors when the corpus is the synthetic one.
    pub floors: Option<CorpusFloors>,
}

fn split_file(cfg: &LmConfig, explicit: &Option<PathBuf>, name: &str) -> Option<PathBuf> {
    explicit.clone().or_else(|| cfg.data.as_ref().map(|d| d.join(name)))
}

/// An optional file that, when named, must exist.
fn existing(p: Option<PathBuf>) -> Result<Option<PathBuf>> {
    match p {
        Some(p) if !p.exists() => Err(Error::io(&p, std::io::Error::new(std::io::ErrorKind::NotFound, "file not found"))),
        p => Ok(p),
    }
}

/// Resolve the corpus files (writing the synthetic corpus on first use) and tokenize through the cache.
pub fn prepare_data(cfg: &LmConfig) -> Result<LmData> {
    let (train, valid, test, floors) = match split_file(cfg, &cfg.train, "train.txt") {
        Some(train) => {
            if !train.exists() {
                return Err(Error::io(&train, std::io::Error::new(std::io::ErrorKind::NotFound, "training file not found")));
            }
            (train, existing(split_file(cfg, &cfg.valid, "valid.txt"))?, existing(split_file(cfg, &cfg.test, "test.txt"))?, None)
        }
        None => {
            let src = MarkovSource::new(cfg.synthetic_vocab, cfg.synthetic_order, cfg.synthetic_branching, cfg.seed ^ 0xC0D1);
            let n = cfg.synthetic_tokens;
            let mut h = Hasher64::new();
            h.update(format!("markov-v2/{}/{}/{}/{}/{}", cfg.synthetic_vocab, cfg.synthetic_order, cfg.synthetic_branching, n, cfg.seed).as_bytes());
            let dir = cfg.cache.join(format!("synthetic-lm-{:016x}", h.finish()));
            let floors = write_markov_corpus(&dir, &src, [n, n / 10, n / 10], cfg.seed)?;
            (dir.join("train.txt"), Some(dir.join("valid.txt")), Some(dir.join("test.txt")), Some(floors))
        }
    };
    let vocab = cached_vocab(&train, cfg.tokenizer, cfg.min_count, &cfg.cache)?;
    let tok = |p: &Option<PathBuf>| p.as_ref().map(|p| cached_tokens(p, &vocab, &cfg.cache)).transpose();
    Ok(LmData { train: Some(cached_tokens(&train, &vocab, &cfg.cache)?), valid: tok(&valid)?, test: tok(&test)?, vocab, floors })
}

/// A data-free distillation's data: the teachers' vocabulary (`load_checkpoints` saw that they
/// share one), and the validation and test files when the config names them (no training text,
/// no synthetic corpus).
fn prepare_data_free(cfg: &LmConfig, teachers: &[LoadedLm]) -> Result<LmData> {
    let Some(first) = teachers.first() else {
        bail!(Invalid, "data_free distillation samples its text from the teachers: give at least one --teacher");
    };
    let tok = |p: Option<PathBuf>| existing(p)?.map(|p| cached_tokens(&p, &first.vocab, &cfg.cache)).transpose();
    Ok(LmData {
        vocab: first.vocab.clone(),
        train: None,
        valid: tok(split_file(cfg, &cfg.valid, "valid.txt"))?,
        test: tok(split_file(cfg, &cfg.test, "test.txt"))?,
        floors: None,
    })
}

/// What an evaluation scores: `batch` lanes laid over the whole text (as in training), and of each
/// lane its first windows, as many as `max_tokens` allows (0: all). A capped evaluation thus
/// samples `batch` places spread over the file, not its first `max_tokens` tokens: in a corpus
/// ordered by genre, as Brown is, the first 30,000 validation tokens are one genre, and a model's
/// score on them swung by 0.7 nats with which half of the training text it had seen.
/// Returns the lanes, the number of windows scored and the window length.
fn eval_layout(tokens: &[u32], batch: usize, bptt: usize, max_tokens: usize) -> Result<(TokenLanes, usize, usize)> {
    if tokens.len() < 2 {
        bail!(Invalid, "evaluation needs at least 2 tokens, got {}", tokens.len());
    }
    let lanes = batch.min((tokens.len() - 1) / (bptt + 1)).max(1);
    let steps = bptt.min(tokens.len() / lanes - 1).max(1);
    let data = TokenLanes::new(tokens, lanes, steps)?;
    let windows = match max_tokens {
        0 => data.windows(),
        n => data.windows().min(n.div_ceil(lanes * steps)).max(1),
    };
    Ok((data, windows, steps))
}

/// The windows an evaluation scores: `windows` whole ones of `steps`, then, when the whole text is
/// scored (`max_tokens` 0), the partial window after them. Each item is (inputs, targets, steps).
fn eval_windows(data: &TokenLanes, windows: usize, steps: usize, max_tokens: usize) -> Result<Vec<(Tensor, Tensor, usize)>> {
    let mut out = Vec::with_capacity(windows + 1);
    for w in 0..windows {
        let (x, y) = data.window(w)?;
        out.push((x, y, steps));
    }
    if max_tokens == 0 {
        if let Some((x, y)) = data.tail()? {
            out.push((x, y, data.tail_steps()));
        }
    }
    Ok(out)
}

/// Mean cross-entropy (nats per token) of `tokens` under the model, and the number of tokens
/// scored. The text is cut into `batch` lanes, each scored from a zero state with the state carried
/// between windows, no dropout; with `max_tokens` 0 every token of a lane after its first is scored
/// (with one lane: every token of the text after the first), else about `max_tokens` tokens from
/// places spread over the text (see `eval_layout`).
pub fn evaluate(model: &LmModel, s: &ParamStore, tokens: &[u32], batch: usize, bptt: usize, max_tokens: usize) -> Result<(f64, usize)> {
    let (data, windows, steps) = eval_layout(tokens, batch, bptt, max_tokens)?;
    let lanes = data.batch;
    let dev = s.device();
    let mut state = LstmState::zeros_on(model.lstm.num_layers(), lanes, model.lstm.hidden, dev)?;
    let (mut total, mut count) = (0.0, 0usize);
    for (x, y, steps) in eval_windows(&data, windows, steps, max_tokens)? {
        let (x, y) = (x.to_device(dev)?, y.to_device(dev)?);
        let mut g = Graph::no_grad();
        let (logits, next) = model.forward(&mut g, s, &x, &state, steps, None)?;
        let loss = g.softmax_xent(logits, &y)?;
        // The loss is a mean over the window's rows: weighted by them, as the tail has fewer.
        total += g.value(loss).item()? as f64 * (steps * lanes) as f64;
        count += steps * lanes;
        state = next;
    }
    Ok((total / count as f64, count))
}

/// The fraction of `tokens` after the first (the ones an evaluation predicts) that are `<unk>`:
/// a text of unseen words scores a perplexity that looks better than real text, so it is reported
/// beside it. None at byte level (no `<unk>`).
pub fn oov_rate(tokens: &[u32], vocab: &Vocab) -> Option<f64> {
    let unk = vocab.unk_id()?;
    let t = tokens.get(1..).filter(|t| !t.is_empty())?;
    Some(t.iter().filter(|&&x| x == unk).count() as f64 / t.len() as f64)
}

/// What a finished run reports.
#[derive(Clone, Debug)]
pub struct LmSummary {
    pub steps: u64,
    /// Best validation loss of the first model here.
    pub best_valid: Option<f64>,
    /// Test loss of the first model here (with its best validated weights).
    pub test: Option<f64>,
    /// Per model here: (best validation, test).
    pub per_model: Vec<(Option<f64>, Option<f64>)>,
    /// Validation loss of the models' averaged predictions at the end, when there are several.
    pub ensemble_valid: Option<f64>,
    pub tokens_per_s: f64,
    pub floors: Option<CorpusFloors>,
    pub seconds: f64,
}

#[allow(clippy::too_many_arguments)]
fn save_checkpoint(
    path: &Path,
    cfg: &LmConfig,
    vocab: &Vocab,
    s: &ParamStore,
    opt: &Optimizer,
    state: &LstmState,
    step: u64,
    best: Option<f64>,
    data: Option<u64>,
) -> Result<()> {
    let mut c = Checkpoint::new();
    for (name, p) in s.iter() {
        c.tensors.insert(name.clone(), p.value.clone());
    }
    for (name, t) in opt.state_tensors() {
        c.tensors.insert(format!("optim/{name}"), t);
    }
    for (l, (h, cc)) in state.h.iter().zip(&state.c).enumerate() {
        c.tensors.insert(format!("state/h{l}"), h.clone());
        c.tensors.insert(format!("state/c{l}"), cc.clone());
    }
    c.meta.insert("format".into(), FORMAT.into());
    c.meta.insert("step".into(), step.to_string());
    c.meta.insert("optimizer_steps".into(), opt.steps_taken().to_string());
    c.meta.insert("config".into(), cfg.to_toml());
    c.meta.insert("vocab".into(), vocab.to_text());
    if let Some(b) = best {
        c.meta.insert("best_valid".into(), b.to_string());
    }
    if let Some(d) = data {
        c.meta.insert(super::DATA_KEY.into(), format!("{d:016x}"));
    }
    c.save(path)
}

/// A checkpoint's config, vocabulary, and weights loaded into a fresh model.
pub struct LoadedLm {
    pub cfg: LmConfig,
    pub vocab: Vocab,
    pub model: LmModel,
    pub store: ParamStore,
    pub ckpt: Checkpoint,
}

pub fn load_checkpoint(path: &Path) -> Result<LoadedLm> {
    let ckpt = Checkpoint::load(path)?;
    let format = ckpt.meta("format", path)?;
    if format != FORMAT {
        bail!(Invalid, "{}: checkpoint format {format:?} is not a language model ({FORMAT})", path.display());
    }
    let mut cfg = LmConfig::default();
    cfg.apply_toml_str(ckpt.meta("config", path)?, path)?;
    let vocab = Vocab::from_text(ckpt.meta("vocab", path)?)?;
    let mut store = ParamStore::new();
    let model = LmModel::new(&mut store, &cfg, vocab.len(), &mut Rng::new(0))?;
    for name in store.names() {
        let t = ckpt.tensors.get(&name).ok_or_else(|| Error::Invalid(format!("{}: checkpoint lacks parameter {name:?}", path.display())))?;
        store.set(&name, t.clone()).map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
    }
    Ok(LoadedLm { cfg, vocab, model, store, ckpt })
}

/// Mean cross-entropy of the models' averaged next-token distributions (an ensemble): the mean
/// over tokens of `-ln((1/n) sum_i p_i)`, over the same lanes and windows as `evaluate`. Each
/// model may have its own width and depth; all share one vocabulary. Returns the loss and the
/// number of tokens scored.
pub fn evaluate_ensemble(models: &[(&LmModel, &ParamStore)], tokens: &[u32], batch: usize, bptt: usize, max_tokens: usize) -> Result<(f64, usize)> {
    let logps = token_log_probs(models, tokens, batch, bptt, max_tokens)?;
    let count = logps.first().map_or(0, Vec::len);
    let mut total = 0.0;
    for r in 0..count {
        // log of the mean probability, shifted by the largest log-probability for range.
        let m = logps.iter().map(|lp| lp[r]).fold(f64::NEG_INFINITY, f64::max);
        let mean = logps.iter().map(|lp| (lp[r] - m).exp()).sum::<f64>() / logps.len() as f64;
        total -= m + mean.ln();
    }
    Ok((total / count.max(1) as f64, count))
}

/// Each model's natural-log probability (in f64) of every token that `evaluate_ensemble` scores,
/// in the order it scores them (window by window, lane by lane within a time step); one vector per
/// model, all of one length.
pub fn token_log_probs(models: &[(&LmModel, &ParamStore)], tokens: &[u32], batch: usize, bptt: usize, max_tokens: usize) -> Result<Vec<Vec<f64>>> {
    let (data, windows, steps) = eval_layout(tokens, batch, bptt, max_tokens)?;
    let lanes = data.batch;
    let dev = models.first().map_or(crate::tensor::Device::Cpu, |m| m.1.device());
    let mut states: Vec<LstmState> = models.iter().map(|(m, _)| LstmState::zeros_on(m.lstm.num_layers(), lanes, m.lstm.hidden, dev)).collect::<Result<_>>()?;
    let mut logps: Vec<Vec<f64>> = vec![Vec::new(); models.len()];
    for (x, y, steps) in eval_windows(&data, windows, steps, max_tokens)? {
        let x = x.to_device(dev)?;
        for (((model, s), st), out) in models.iter().zip(states.iter_mut()).zip(logps.iter_mut()) {
            let mut g = Graph::no_grad();
            let (logits, next) = model.forward(&mut g, s, &x, st, steps, None)?;
            *st = next;
            let lv = g.value(logits);
            let v = lv.dim(1);
            let (l, yv) = (lv.to_vec_f32()?, y.i32s()?);
            out.extend((0..yv.len()).map(|r| {
                let row = &l[r * v..(r + 1) * v];
                let m = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
                let lse = m + row.iter().map(|&z| (z as f64 - m).exp()).sum::<f64>().ln();
                row[yv[r] as usize] as f64 - lse
            }));
        }
    }
    Ok(logps)
}

/// Checkpoints, each with its own architecture, loaded onto `dev`; they must share one vocabulary
/// (an ensemble, a set of teachers), and an error names the first that does not.
pub fn load_checkpoints(paths: &[PathBuf], dev: crate::tensor::Device) -> Result<Vec<LoadedLm>> {
    let mut loaded: Vec<LoadedLm> = Vec::with_capacity(paths.len());
    for path in paths {
        let mut l = load_checkpoint(path)?;
        if let Some(first) = loaded.first().filter(|f| f.vocab != l.vocab) {
            bail!(
                Invalid,
                "{}: its vocabulary ({} tokens) differs from that of {} ({} tokens); these checkpoints must share one",
                path.display(),
                l.vocab.len(),
                paths[0].display(),
                first.vocab.len()
            );
        }
        l.store.to_device(dev)?;
        loaded.push(l);
    }
    Ok(loaded)
}

/// Fixed teachers of an offline distillation on `dev`. Errors name a checkpoint that does not fit
/// the run's vocabulary.
pub fn load_teachers(paths: &[PathBuf], vocab: &Vocab, dev: crate::tensor::Device) -> Result<Vec<LoadedLm>> {
    let teachers = load_checkpoints(paths, dev)?;
    if let Some(t) = teachers.first().filter(|t| t.vocab != *vocab) {
        bail!(
            Invalid,
            "{}: the teacher's vocabulary ({} tokens) differs from this run's ({} tokens); a teacher must be trained on the same corpus with the same tokenizer and min_count",
            paths[0].display(),
            t.vocab.len(),
            vocab.len()
        );
    }
    Ok(teachers)
}

/// A teacher's logits for window `x`, its LSTM state carried in `slot` (zeros when empty: the
/// first window, or the first after an epoch boundary), and with `hidden` its top LSTM layer's
/// outputs (a feature hint's target).
fn teacher_forward(
    model: &LmModel,
    store: &ParamStore,
    x: &Tensor,
    slot: &mut Option<LstmState>,
    steps: usize,
    dev: crate::tensor::Device,
    hidden: bool,
) -> Result<(Tensor, Option<Tensor>)> {
    let state = match slot.take() {
        Some(s) => s,
        None => LstmState::zeros_on(model.lstm.num_layers(), x.numel() / steps, model.lstm.hidden, dev)?,
    };
    let mut g = Graph::no_grad();
    let (l, h, next) = model.forward_hidden(&mut g, store, x, &state, steps, None)?;
    *slot = Some(next);
    Ok((g.value(l).clone(), hidden.then(|| g.value(h).clone())))
}

/// One model of a (possibly codistilled) run.
struct LmMember {
    index: usize,
    store: ParamStore,
    opt: Optimizer,
    /// The training stream's lanes (none in a data-free distillation).
    lanes: Option<TokenLanes>,
    state: LstmState,
    /// The carried state of each peer's teacher model on this member's lanes.
    teacher_state: Vec<Option<LstmState>>,
    /// The same for each fixed teacher (`--teacher`).
    fixed_state: Vec<Option<LstmState>>,
    teachers: crate::distill::TeacherTracker,
    best: Option<f64>,
    out: PathBuf,
    /// The fingerprint of this model's training stream (checkpoints record it; a resume checks it).
    data_key: Option<u64>,
    /// The last step with a finite training loss, and that loss.
    last_loss: Option<(u64, f64)>,
}

/// Train as configured: one model, or `models` codistilling models in this process, or this
/// process's model of a `world`-process codistillation through `exchange_dir`. Prints progress
/// on stderr (a bar on a terminal), writes metrics, checkpoints and `result.json` under `cfg.out`
/// (per model `model-<i>/` when there are several here).
pub fn train(cfg: &LmConfig) -> Result<LmSummary> {
    use crate::distill::exchange::timed;
    use crate::distill::{end_step, CodistillSchedule, Topology};
    use crate::ops::softmax_kl::DistillParams;
    let t0 = Instant::now();
    let dev = cfg.device.resolve()?;
    super::backend_settings(cfg.matmul_f32, cfg.deterministic, cfg.threads, cfg.cpu_bf16);
    if cfg.batch == 0 || cfg.bptt == 0 {
        bail!(Invalid, "batch and bptt must be positive (got {} and {})", cfg.batch, cfg.bptt);
    }
    if !(0.0..1.0).contains(&cfg.dropout) {
        bail!(Invalid, "dropout must be in [0, 1), got {}", cfg.dropout);
    }
    let (world, rank) = super::process_world(cfg.world, cfg.rank, cfg.exchange_dir.is_some())?;
    // The run goes on, and its checkpoints record, the world and rank it took.
    let cfg = &LmConfig { world, rank, ..cfg.clone() };
    let topo = Topology { models: cfg.models, world: cfg.world, rank: cfg.rank, same_data: cfg.same_data, shards: cfg.shards, shard: cfg.shard };
    let form = crate::distill::DistillForm::from_options(cfg.distill_lambda, cfg.alpha, cfg.distill_ramp, cfg.distill_weight)?;
    topo.check(cfg.exchange_dir.as_deref(), form.weight(), cfg.exchange_every, cfg.label_smoothing)?;
    let (optimizer, lr_schedule, clip) = super::optimizer_settings(super::optim_args!(cfg, cfg.steps))?;
    let total_models = topo.total();
    if cfg.data_free && (cfg.teacher.is_empty() || total_models > 1) {
        bail!(Invalid, "data_free distillation needs --teacher and one model (no codistillation)");
    }
    let hints = super::check_hints(cfg.hint_weight, !cfg.teacher.is_empty() && !cfg.data_free, "give --teacher (and not --data-free)")?;
    if !cfg.teacher.is_empty() && cfg.label_smoothing > 0.0 {
        bail!(Invalid, "label_smoothing is the control for distillation; use it or --teacher, not both");
    }
    if cfg.models > 1 && cfg.resume.is_some() {
        bail!(Invalid, "resume works for one model per process; run codistillation with --world and --exchange-dir to resume a model");
    }
    let schedule = CodistillSchedule {
        burn_in: cfg.burn_in,
        exchange_every: cfg.exchange_every,
        max_publishes: cfg.max_publishes,
        weight: if total_models > 1 || !cfg.teacher.is_empty() { form.weight() } else { 0.0 },
    };
    // Peers exchange checkpoints only when there are peers and the term is on.
    let codistill = total_models > 1 && schedule.weight > 0.0;

    let (data, fixed) = if cfg.data_free {
        let fixed = load_checkpoints(&cfg.teacher.0, dev)?;
        (prepare_data_free(cfg, &fixed)?, fixed)
    } else {
        let data = prepare_data(cfg)?;
        let fixed = load_teachers(&cfg.teacher.0, &data.vocab, dev)?;
        (data, fixed)
    };
    super::check_burn_in(&schedule, total_models > 1 || !cfg.teacher.is_empty(), cfg.steps)?;
    {
        // Embedding, LSTM layers (one bias each), output projection.
        let (v, e, h, l) = (data.vocab.len() as u128, cfg.emb_dim as u128, cfg.hidden as u128, cfg.layers as u128);
        let lstm = |input: u128| 4u128.saturating_mul(h).saturating_mul(input.saturating_add(h)) + 4 * h;
        let params = v.saturating_mul(e) + lstm(e) + l.saturating_sub(1).saturating_mul(lstm(h)) + h.saturating_mul(v) + v;
        super::check_model_memory(params, cfg.models, cfg.optimizer, dev, "--hidden, --emb-dim, --layers, or a smaller vocabulary with --min-count")?;
    }
    let model = LmModel::new(&mut ParamStore::new(), cfg, data.vocab.len(), &mut Rng::new(0))?;
    // A feature hint maps the model's top hidden states to the first teacher's width.
    let hint_map = |store: &mut ParamStore, rng: &mut Rng| match (hints, fixed.first()) {
        (true, Some(t)) => Linear::new(store, "lm.hint", cfg.hidden, t.model.lstm.hidden, true, rng).map(Some),
        _ => Ok(None),
    };
    let hint = hint_map(&mut ParamStore::new(), &mut Rng::new(0))?;
    let mut members = Vec::new();
    for local in 0..cfg.models {
        let index = topo.index(local);
        let (n, i) = topo.shard_of(index);
        let (lanes, data_key) = match &data.train {
            Some(train) => {
                let stream = shard_blocks(train.as_slice(), n, i, cfg.shard_block)?;
                let key = xxhash_rust::xxh3::xxh3_64(bytemuck::cast_slice(&stream));
                (
                    Some(
                        TokenLanes::new(&stream, cfg.batch, cfg.bptt)
                            .map_err(|e| Error::Invalid(format!("{}: shard {i} of {n}: {e}", train.path.display())))?,
                    ),
                    Some(key),
                )
            }
            None => (None, None),
        };
        let mut store = ParamStore::new();
        // A single model keeps the seed's own stream; codistilling models get one each.
        let mut rng = if total_models > 1 { Rng::new(cfg.seed).fork(index as u64) } else { Rng::new(cfg.seed) };
        LmModel::new(&mut store, cfg, data.vocab.len(), &mut rng)?;
        hint_map(&mut store, &mut rng)?;
        store.to_device(dev)?;
        let out = if cfg.models > 1 { cfg.out.join(format!("model-{index}")) } else { cfg.out.clone() };
        members.push(LmMember {
            index,
            store,
            opt: Optimizer::new(optimizer),
            lanes,
            state: LstmState::zeros_on(cfg.layers, cfg.batch, cfg.hidden, dev)?,
            teacher_state: vec![None; total_models],
            fixed_state: vec![None; fixed.len()],
            teachers: crate::distill::TeacherTracker::new(total_models, cfg.exchange_every),
            best: None,
            out,
            data_key,
            last_loss: None,
        });
    }
    let mut step = 0u64;
    if let Some(path) = &cfg.resume {
        let m = &mut members[0];
        let loaded = load_checkpoint(path)?;
        crate::config::require_same(path, RESUME_KEYS, &loaded.cfg.entries(), &cfg.entries())?;
        if loaded.vocab != data.vocab {
            bail!(
                Invalid,
                "{}: checkpoint vocabulary ({} tokens) differs from the vocabulary of {} ({} tokens); the checkpoint belongs to another corpus",
                path.display(),
                loaded.vocab.len(),
                data.train.as_ref().map_or_else(|| "the teachers".to_string(), |t| t.path.display().to_string()),
                data.vocab.len()
            );
        }
        m.store = loaded.store;
        let ck = loaded.ckpt;
        let what = data.train.as_ref().map_or_else(|| "the teachers' samples".to_string(), |t| t.path.display().to_string());
        super::check_same_data(path, &ck, m.data_key, &what)?;
        // The hint map is no part of the model that load_checkpoint builds: restored apart.
        if let Some(h) = &hint {
            super::restore_hint(&mut m.store, h, &ck, path)?;
        }
        m.store.to_device(dev)?;
        step = ck.meta("step", path)?.parse().map_err(|_| Error::Invalid(format!("{}: step is not a number", path.display())))?;
        let opt_steps: u64 =
            ck.meta("optimizer_steps", path)?.parse().map_err(|_| Error::Invalid(format!("{}: optimizer_steps is not a number", path.display())))?;
        m.opt.load_state(ck.tensors.iter().filter_map(|(k, t)| k.strip_prefix("optim/").map(|n| (n.to_string(), t.clone()))).collect(), opt_steps)?;
        for l in 0..cfg.layers {
            let get = |k: String| ck.tensors.get(&k).cloned().ok_or_else(|| Error::Invalid(format!("{}: checkpoint lacks {k}", path.display())));
            m.state.h[l] = get(format!("state/h{l}"))?.to_device(dev)?;
            m.state.c[l] = get(format!("state/c{l}"))?.to_device(dev)?;
        }
        m.best = ck.meta.get("best_valid").and_then(|b| b.parse().ok());
        if cfg.data_free {
            // The carried state read text that is gone: sampling starts new lanes (below).
            m.state = LstmState::zeros_on(cfg.layers, cfg.batch, cfg.hidden, dev)?;
        }
        if step >= cfg.steps {
            bail!(
                Invalid,
                "{}: the checkpoint is at step {step} and this run ends at step {}: nothing is left to train, and nothing was changed; raise --steps to train on",
                path.display(),
                cfg.steps
            );
        }
        eprintln!("resumed from {} at step {step}", path.display());
    }
    // What peers in other processes must agree on, written into every published checkpoint.
    let compat = format!(
        "vocab={:016x};emb_dim={};hidden={};layers={};world={};burn_in={};exchange_every={};distill={};temperature={};same_data={}",
        data.vocab.fingerprint(),
        cfg.emb_dim,
        cfg.hidden,
        cfg.layers,
        cfg.world,
        cfg.burn_in,
        cfg.exchange_every,
        form.describe(),
        cfg.temperature,
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
    let _out_lock = super::lock_out(&cfg.out)?;
    let mut log = MetricsLog::start(&cfg.out.join("metrics.jsonl"), cfg.resume.is_some().then_some(step))?;
    // Sampled text has no epochs: one endless pass.
    let per_epoch = members.iter().filter_map(|m| m.lanes.as_ref().map(|l| l.windows() as u64)).min().unwrap_or(u64::MAX);
    // A resumed data-free run samples a stream of its own (the step is in its seed), not the
    // beginning of the first run's again.
    let sample_seed = cfg.seed ^ 0x5A3F1E ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut sampler = if cfg.data_free { Some(super::sample::Sampler::new(&fixed, cfg.batch, 1.0, sample_seed, dev)?) } else { None };
    let bar = indicatif::ProgressBar::new(cfg.steps);
    bar.set_style(indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}").expect("static template").progress_chars("=> "));
    bar.set_position(step);
    eprintln!(
        "lm: {} model(s) here of {total_models}, {} parameters each, vocabulary {}, {}",
        cfg.models,
        members[0].store.num_elements(),
        data.vocab.len(),
        if cfg.data_free { format!("text sampled from {} teacher(s)", fixed.len()) } else { format!("{per_epoch} windows per epoch each") }
    );
    let tokens_per_step = (cfg.batch * cfg.bptt) as f64;
    let (mut interval_loss, mut interval_n, mut interval_t) = (0.0, 0u64, Instant::now());
    // The feature hint's term (weighted) over the same interval: sum and count.
    let mut interval_hint = (0.0, 0u64);
    let (mut train_tokens, mut train_secs, mut exchange_wait) = (0.0, 0.0, 0.0);
    let valid_tokens = data.valid.as_ref().map(|v| v.as_slice());
    let peers: Vec<usize> = (0..total_models).collect();
    if let Some(vt) = valid_tokens {
        // What the students are pulled toward, scored as they will be.
        for (k, t) in fixed.iter().enumerate() {
            let v = evaluate(&t.model, &t.store, vt, cfg.batch, cfg.bptt, cfg.eval_tokens)?.0;
            eprintln!("teacher {k} ({}): validation loss {v:.4} ppl {:.2}", cfg.teacher.0[k].display(), v.exp());
            log.write(&[("event", J::S("teacher_valid")), ("teacher", J::I(k as u64)), ("step", J::I(step)), ("loss", J::N(v)), ("ppl", J::N(v.exp()))])?;
        }
    }
    let mut step_times = StepTimes::new(cfg.step_times, step);
    // Models trained in other processes, and whether their first checkpoints have been seen.
    let mut peer_wait = super::PeerWait::new(codistill, total_models, &members.iter().map(|m| m.index).collect::<Vec<_>>(), cfg.peer_timeout);
    while step < cfg.steps {
        exchange_wait += peer_wait.before_step(exchange.as_mut(), &schedule, step, &mut log)?;
        step_times.begin(train_secs, exchange_wait);
        let w = (step % per_epoch) as usize;
        let lr = lr_schedule.at(step);
        let mut staleness_sum = (0u64, 0u64);
        let mut last_norm = 0.0;
        for m in members.iter_mut() {
            if w == 0 {
                m.state = LstmState::zeros_on(cfg.layers, cfg.batch, cfg.hidden, dev)?;
                m.teacher_state = vec![None; total_models];
                m.fixed_state = vec![None; fixed.len()];
            }
            let (ts, mut waited_here) = (Instant::now(), 0.0);
            let (x, y, sampled) = match (&mut sampler, &m.lanes) {
                (Some(s), _) => {
                    let (x, y, l) = s.window(cfg.bptt)?;
                    (x, y, Some(l))
                }
                (None, Some(lanes)) => {
                    let (x, y) = lanes.window(w)?;
                    (x.to_device(dev)?, y.to_device(dev)?, None)
                }
                (None, None) => unreachable!("a model without training text samples it"),
            };
            let mut teacher_logits = Vec::new();
            let mut hint_target = None;
            if schedule.distill_at(step) {
                let (teachers, waited) = timed(|| peers.iter().filter(|&&p| p != m.index).filter_map(|&p| exchange.latest(p)).collect::<Vec<_>>());
                waited_here += waited.as_secs_f64();
                for t in &teachers {
                    teacher_logits.push(teacher_forward(&model, &t.params, &x, &mut m.teacher_state[t.rank], cfg.bptt, dev, false)?.0);
                    let u = m.teachers.observe(m.index, t, step);
                    staleness_sum = (staleness_sum.0 + u.staleness, staleness_sum.1 + 1);
                    if u.swapped {
                        super::log_teacher_swap(&mut log, step, m.index, t, u.staleness, waited)?;
                    }
                    if let Some(w) = u.warning {
                        bar.suspend(|| eprintln!("{w}"));
                    }
                }
                // Sampled text comes with the teachers' logits; on a training file they are computed.
                if let Some(l) = sampled {
                    teacher_logits.extend(l);
                }
                for (k, (t, slot)) in fixed.iter().zip(m.fixed_state.iter_mut()).enumerate().filter(|_| !cfg.data_free) {
                    let (l, h) = teacher_forward(&t.model, &t.store, &x, slot, cfg.bptt, dev, k == 0 && hints)?;
                    teacher_logits.push(l);
                    hint_target = h.or(hint_target);
                }
            }
            let mut g = Graph::new();
            let dropout =
                if cfg.dropout > 0.0 { Some((cfg.dropout, cfg.seed.wrapping_mul(0x9E37_79B9).wrapping_add(step) ^ ((m.index as u64) << 40))) } else { None };
            let (logits, top, next) = model.forward_hidden(&mut g, &m.store, &x, &m.state, cfg.bptt, dropout)?;
            let loss = if !teacher_logits.is_empty() {
                // scale * ((1 - mix) * task + mix * distill): the paper's task + lambda * distill, or the convex mix.
                let (mix, scale) = form.mix_at(step, cfg.burn_in);
                let l = g.softmax_kl(logits, &teacher_logits, Some(&y), DistillParams { temperature: cfg.temperature, alpha: mix })?.0;
                super::scaled(&mut g, l, scale)?
            } else if cfg.label_smoothing > 0.0 {
                // Label smoothing is distillation from a uniform teacher (all-zero logits).
                let uniform = Tensor::zeros_on(g.value(logits).shape(), dev)?;
                g.softmax_kl(logits, &[uniform], Some(&y), DistillParams { temperature: 1.0, alpha: cfg.label_smoothing })?.0
            } else {
                g.softmax_xent(logits, &y)?
            };
            let hint_term = match (&hint_target, &hint) {
                (Some(target), Some(map)) => Some(super::hint_loss(&mut g, &m.store, map, top, target, cfg.hint_weight)?),
                _ => None,
            };
            let loss = match hint_term {
                Some(term) => g.add(loss, term)?,
                None => loss,
            };
            let lv = g.value(loss).item()? as f64;
            // Read after the loss, whose read already waited for the device.
            if let Some(term) = hint_term {
                interval_hint = (interval_hint.0 + g.value(term).item()? as f64, interval_hint.1 + 1);
            }
            super::check_loss(lv, step, m.index, &mut m.last_loss)?;
            let grads = g.backward(loss)?;
            m.store.zero_grads()?;
            g.accumulate_grads(&grads, &mut m.store)?;
            // The tape holds references to the weights; drop it so the update writes in place
            // instead of copying every parameter.
            drop(g);
            m.state = next;
            // Compute time excludes the time spent in exchange calls, which is accounted apart.
            train_secs += ts.elapsed().as_secs_f64() - waited_here;
            exchange_wait += waited_here;
            train_tokens += tokens_per_step;
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
            last_norm = r?;
            train_secs += took.as_secs_f64();
        }
        if codistill {
            exchange_wait += end_step(exchange.as_mut(), step + 1, schedule.publish_after(step), members.iter().map(|m| (m.index, &m.store)))?.as_secs_f64();
            super::exchange_health(exchange.as_mut(), &mut log, step + 1, &mut exchange_said, &bar)?;
        }
        step_times.end(train_secs, exchange_wait);
        step += 1;
        bar.set_position(step);
        if step.is_multiple_of(cfg.log_every.max(1)) || step == cfg.steps {
            let mean = interval_loss / interval_n as f64;
            let tps = interval_n as f64 * tokens_per_step / interval_t.elapsed().as_secs_f64();
            let stale = if staleness_sum.1 > 0 { staleness_sum.0 as f64 / staleness_sum.1 as f64 } else { f64::NAN };
            bar.set_message(format!("loss {mean:.3} ppl {:.1} {tps:.0} tok/s", mean.exp()));
            log.write(&[
                ("event", J::S("train")),
                ("step", J::I(step)),
                ("loss", J::N(mean)),
                ("ppl", J::N(mean.exp())),
                ("lr", J::N(lr as f64)),
                ("grad_norm", J::N(last_norm)),
                ("tokens_per_s", J::N(tps)),
                ("mean_staleness", J::N(stale)),
                ("exchange_wait_s", J::N(exchange_wait)),
                ("hint_loss", J::N(if interval_hint.1 > 0 { interval_hint.0 / interval_hint.1 as f64 } else { f64::NAN })),
            ])?;
            (interval_loss, interval_n, interval_t) = (0.0, 0, Instant::now());
            interval_hint = (0.0, 0);
        }
        if step.is_multiple_of(cfg.eval_every.max(1)) || step == cfg.steps {
            if let Some(vt) = valid_tokens {
                for m in members.iter_mut() {
                    let v = evaluate(&model, &m.store, vt, cfg.batch, cfg.bptt, cfg.eval_tokens)?.0;
                    let improved = m.best.map(|b| v < b).unwrap_or(true);
                    if improved {
                        m.best = Some(v);
                    }
                    bar.suspend(|| {
                        eprintln!("step {step}: model {} validation loss {v:.4} ppl {:.2}{}", m.index, v.exp(), if improved { " (best)" } else { "" })
                    });
                    log.write(&[("event", J::S("valid")), ("step", J::I(step)), ("model", J::I(m.index as u64)), ("loss", J::N(v)), ("ppl", J::N(v.exp()))])?;
                    if improved {
                        save_checkpoint(&m.out.join("best.safetensors"), cfg, &data.vocab, &m.store, &m.opt, &m.state, step, m.best, m.data_key)?;
                    }
                }
            }
        }
        if step.is_multiple_of(cfg.checkpoint_every.max(1)) || step == cfg.steps {
            for m in &members {
                save_checkpoint(&m.out.join("checkpoint.safetensors"), cfg, &data.vocab, &m.store, &m.opt, &m.state, step, m.best, m.data_key)?;
            }
        }
    }
    bar.finish_and_clear();
    drop(exchange);
    step_times.write(&cfg.out)?;
    let ensemble_valid = match valid_tokens {
        Some(vt) if members.len() > 1 => {
            let models: Vec<(&LmModel, &ParamStore)> = members.iter().map(|m| (&model, &m.store)).collect();
            let e = evaluate_ensemble(&models, vt, cfg.batch, cfg.bptt, cfg.eval_tokens)?.0;
            eprintln!("ensemble of {} models: validation loss {e:.4} ppl {:.2}", members.len(), e.exp());
            log.write(&[("event", J::S("ensemble")), ("step", J::I(step)), ("loss", J::N(e)), ("ppl", J::N(e.exp()))])?;
            Some(e)
        }
        _ => None,
    };
    let refreshes: Vec<f64> = members.iter().map(|m| m.teachers.refreshes as f64).collect();
    let staleness: Vec<f64> = members.iter().map(|m| m.teachers.mean_staleness().unwrap_or(f64::NAN)).collect();
    // Test each model with its best validated weights when there are some, else the last.
    let mut per_model = Vec::new();
    for m in members {
        let test = match &data.test {
            Some(t) => {
                let best_path = m.out.join("best.safetensors");
                let (tm, ts) = if m.best.is_some() && best_path.exists() {
                    let mut l = load_checkpoint(&best_path)?;
                    l.store.to_device(dev)?;
                    (l.model, l.store)
                } else {
                    (LmModel::new(&mut ParamStore::new(), cfg, data.vocab.len(), &mut Rng::new(0))?, m.store)
                };
                let lanes = if cfg.eval_lanes == 0 { cfg.batch } else { cfg.eval_lanes };
                let (ce, n) = evaluate(&tm, &ts, t.as_slice(), lanes, cfg.bptt, 0)?;
                let oov = oov_rate(t.as_slice(), &data.vocab);
                eprintln!(
                    "model {}: test loss {ce:.4} ppl {:.2} over {n} of the file's {} tokens ({}){}",
                    m.index,
                    ce.exp(),
                    t.len(),
                    if lanes == 1 { "one stream".to_string() } else { format!("{lanes} lanes, each from a zero state") },
                    oov.map(|r| format!(", {:.2}% of them <unk>", 100.0 * r)).unwrap_or_default()
                );
                log.write(&[
                    ("event", J::S("test")),
                    ("step", J::I(step)),
                    ("model", J::I(m.index as u64)),
                    ("loss", J::N(ce)),
                    ("ppl", J::N(ce.exp())),
                    ("tokens", J::I(n as u64)),
                    ("file_tokens", J::I(t.len() as u64)),
                    ("lanes", J::I(lanes as u64)),
                    ("oov_rate", J::N(oov.unwrap_or(f64::NAN))),
                ])?;
                Some(ce)
            }
            None => None,
        };
        per_model.push((m.best, test));
    }
    let (best, test) = per_model[0];
    let summary = LmSummary {
        steps: step,
        best_valid: best,
        test,
        per_model: per_model.clone(),
        ensemble_valid,
        tokens_per_s: train_tokens / train_secs.max(1e-9),
        floors: data.floors,
        seconds: t0.elapsed().as_secs_f64(),
    };
    let nan = f64::NAN;
    write_result(
        &cfg.out.join("result.json"),
        &[
            ("steps", J::I(step)),
            ("models", J::I(per_model.len() as u64)),
            ("teachers", J::I(fixed.len() as u64)),
            ("best_valid_loss", J::N(best.unwrap_or(nan))),
            ("best_valid_ppl", J::N(best.map(f64::exp).unwrap_or(nan))),
            ("test_loss", J::N(test.unwrap_or(nan))),
            ("test_ppl", J::N(test.map(f64::exp).unwrap_or(nan))),
            ("ensemble_valid_loss", J::N(ensemble_valid.unwrap_or(nan))),
            ("tokens_per_s", J::N(summary.tokens_per_s)),
            ("train_s", J::N(train_secs)),
            ("exchange_wait_s", J::N(exchange_wait)),
            ("seconds", J::N(summary.seconds)),
            ("valid_entropy_floor", J::N(data.floors.map(|f| f.valid).unwrap_or(nan))),
            ("teacher_refreshes", J::A(refreshes)),
            ("mean_staleness", J::A(staleness)),
        ],
    )?;
    Ok(summary)
}

/// What an evaluation of a text file scored.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EvalReport {
    /// Mean cross-entropy, nats per token.
    pub loss: f64,
    /// Tokens scored (with one lane and no cap: every token of the file after the first).
    pub tokens: usize,
    /// Tokens in the file.
    pub file_tokens: usize,
    /// Lanes the file was cut into (each scored from a zero state).
    pub lanes: usize,
    /// Fraction of the predicted tokens that are `<unk>` (None at byte level).
    pub oov_rate: Option<f64>,
}

/// Perplexity of a checkpoint on a text file (or on its own config's test file): as
/// [`eval_checkpoints`].
pub fn eval_checkpoint(path: &Path, file: Option<&Path>, cache: &Path, max_tokens: usize, lanes: usize) -> Result<EvalReport> {
    eval_checkpoints(std::slice::from_ref(&path.to_path_buf()), file, cache, max_tokens, lanes)
}

/// Cross-entropy of one checkpoint, or of the ensemble of several (their averaged next-token
/// distributions: what a multi-teacher distillation pulls toward), on a text file or on the first
/// checkpoint's test file, in windows of the first checkpoint's `bptt`. `lanes` 1 scores the file
/// as one stream from a zero state, every token after the first (as a PyTorch loop over the file
/// does); more lanes run faster, each from a zero state, its first token unscored; 0 takes the
/// checkpoint's batch.
pub fn eval_checkpoints(paths: &[PathBuf], file: Option<&Path>, cache: &Path, max_tokens: usize, lanes: usize) -> Result<EvalReport> {
    let Some(first) = paths.first() else { bail!(Invalid, "no checkpoint to evaluate") };
    let loaded = load_checkpoints(paths, crate::tensor::Device::Cpu)?;
    let l = &loaded[0];
    let file = match file {
        Some(f) => f.to_path_buf(),
        None => split_file(&l.cfg, &l.cfg.test, "test.txt")
            .ok_or_else(|| Error::Invalid(format!("{}: no test file given and the checkpoint's config names none; pass --file", first.display())))?,
    };
    if !file.exists() {
        return Err(Error::io(&file, std::io::Error::new(std::io::ErrorKind::NotFound, "file not found")));
    }
    let tokens = cached_tokens(&file, &l.vocab, cache)?;
    let lanes = if lanes == 0 { l.cfg.batch } else { lanes };
    let (loss, n) = if loaded.len() == 1 {
        evaluate(&l.model, &l.store, tokens.as_slice(), lanes, l.cfg.bptt, max_tokens)?
    } else {
        let models: Vec<(&LmModel, &ParamStore)> = loaded.iter().map(|m| (&m.model, &m.store)).collect();
        evaluate_ensemble(&models, tokens.as_slice(), lanes, l.cfg.bptt, max_tokens)?
    };
    let used = eval_layout(tokens.as_slice(), lanes, l.cfg.bptt, max_tokens)?.0.batch;
    Ok(EvalReport { loss, tokens: n, file_tokens: tokens.len(), lanes: used, oov_rate: oov_rate(tokens.as_slice(), &l.vocab) })
}

#[cfg(test)]
mod tests {
    use super::eval_layout;

    /// A capped evaluation scores the first windows of lanes laid over the whole text, so what it
    /// sees is spread over the file (a genre-ordered corpus is not scored on its first genre).
    #[test]
    fn capped_evaluation_samples_the_whole_text() {
        let tokens: Vec<u32> = (0..10_001).collect();
        let (data, windows, steps) = eval_layout(&tokens, 4, 5, 40).unwrap();
        assert_eq!((data.batch, windows, steps), (4, 2, 5));
        let (x, _) = data.window(0).unwrap();
        let firsts: Vec<i32> = x.i32s().unwrap()[..4].to_vec();
        assert_eq!(firsts, vec![0, 2500, 5000, 7500], "lanes start across the whole text");
        // Uncapped: every window; a cap above the text: every window too.
        assert_eq!(eval_layout(&tokens, 4, 5, 0).unwrap().1, data.windows());
        assert_eq!(eval_layout(&tokens, 4, 5, 1_000_000).unwrap().1, data.windows());
        assert_eq!(eval_layout(&tokens, 4, 5, 1).unwrap().1, 1);
        assert!(eval_layout(&tokens[..1], 4, 5, 0).is_err());
    }
}
