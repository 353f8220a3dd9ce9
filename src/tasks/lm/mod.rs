//! The language-model task: an LSTM over a token stream (word or byte level), truncated
//! backpropagation through time with the state carried between windows, cross-entropy, and
//! perplexity; its distillation term is the fused softmax-KL toward the teachers' averaged
//! next-token distribution (temperature T). The loop that trains it is [`crate::train::train`];
//! this module holds only what is the language model's own.

pub mod config;
pub mod eval;
pub mod model;
pub mod sample;

pub use config::{LmConfig, SyntheticSource};
pub use eval::{
    churn_checkpoints, churn_checkpoints_with, eval_checkpoint, eval_checkpoints, eval_checkpoints_with, evaluate, evaluate_ensemble, oov_rate,
    token_log_probs, token_log_probs_int8, EvalReport,
};
pub use model::{load_checkpoint, load_checkpoints, load_teachers, Int8Lm, Int8State, LmModel, LoadedLm};

use crate::autograd::{Graph, Var};
use crate::checkpoint::Checkpoint;
use crate::data::lm::TokenLanes;
use crate::data::ngram::NgramSource;
use crate::data::synthetic::{write_markov_corpus, write_ngram_corpus, CorpusFloors, MarkovSource};
use crate::data::text::{cached_tokens, cached_vocab, shard_blocks, Tokens, Vocab};
use crate::distill::Mix;
use crate::hash::Hasher64;
use crate::nn::LstmState;
use crate::ops::softmax_kl::mix::{mix_teachers, TeacherMix};
use crate::ops::softmax_kl::{DistillParams, Divergence};
use crate::params::ParamStore;
use crate::tensor::{Device, Tensor};
use crate::train::{Finished, MetricsLog, Score, Setup, Task, TeacherRef};
use crate::{bail, Error, Result, Rng};
use config::split_file;
use sample::Sampler;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Train a language model as configured (the loop: [`crate::train::train`]).
pub fn train(cfg: &LmConfig) -> Result<LmSummary> {
    crate::train::train::<LmTask>(cfg)
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
            if cfg.synthetic_source != SyntheticSource::Markov || cfg.synthetic_fit.is_some() {
                bail!(
                    Invalid,
                    "synthetic_source and synthetic_fit choose the built-in corpus, and {} is given as the training text: drop one or the other",
                    train.display()
                );
            }
            if !train.exists() {
                return Err(Error::io(&train, std::io::Error::new(std::io::ErrorKind::NotFound, "training file not found")));
            }
            (train, existing(split_file(cfg, &cfg.valid, "valid.txt"))?, existing(split_file(cfg, &cfg.test, "test.txt"))?, None)
        }
        None => {
            let n = cfg.synthetic_tokens;
            if n < 2 {
                bail!(Invalid, "synthetic_tokens must be at least 2, got {n}");
            }
            let (dir, floors) = match cfg.synthetic_source {
                SyntheticSource::Markov => {
                    if let Some(fit) = &cfg.synthetic_fit {
                        bail!(Invalid, "synthetic_fit ({}) is read by the ngram source only: add --synthetic-source ngram", fit.display());
                    }
                    if cfg.synthetic_vocab < 2 || cfg.synthetic_order == 0 || cfg.synthetic_branching == 0 {
                        bail!(
                            Invalid,
                            "the Markov source needs synthetic_vocab >= 2, synthetic_order >= 1 and synthetic_branching >= 1 (got {}, {}, {})",
                            cfg.synthetic_vocab,
                            cfg.synthetic_order,
                            cfg.synthetic_branching
                        );
                    }
                    let src = MarkovSource::new(cfg.synthetic_vocab, cfg.synthetic_order, cfg.synthetic_branching, cfg.seed ^ 0xC0D1);
                    let mut h = Hasher64::new();
                    h.update(format!("markov-v2/{}/{}/{}/{}/{}", cfg.synthetic_vocab, cfg.synthetic_order, cfg.synthetic_branching, n, cfg.seed).as_bytes());
                    let dir = cfg.cache.join(format!("synthetic-lm-{:016x}", h.finish()));
                    let floors = write_markov_corpus(&dir, &src, [n, n / 10, n / 10], cfg.seed)?;
                    (dir, floors)
                }
                SyntheticSource::Ngram => {
                    let Some(fit) = &cfg.synthetic_fit else {
                        bail!(Invalid, "synthetic_source ngram fits its model on a text: give --synthetic-fit FILE (e.g. Brown's train.txt)");
                    };
                    let bytes = std::fs::read(fit).map_err(|e| Error::io(fit, e))?;
                    // The corpus is a function of the fitted text's bytes, not its name.
                    let mut h = Hasher64::new();
                    h.update(
                        format!("ngram-v1/{:016x}/{}/{}/{}/{}", crate::hash::hash64(&bytes), cfg.synthetic_vocab, cfg.synthetic_order, n, cfg.seed).as_bytes(),
                    );
                    let dir = cfg.cache.join(format!("synthetic-lm-{:016x}", h.finish()));
                    let floors = write_ngram_corpus(&dir, || NgramSource::fit(fit, cfg.synthetic_order, cfg.synthetic_vocab), [n, n / 10, n / 10], cfg.seed)?;
                    (dir, floors)
                }
            };
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

/// Validation cross-entropy (nats per token).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LmScore(pub f64);

impl Score for LmScore {
    fn loss(&self) -> f64 {
        self.0
    }
    fn fields(&self) -> Value {
        json!({"loss": self.0, "ppl": self.0.exp()})
    }
    fn describe(&self) -> String {
        format!("loss {:.4} ppl {:.2}", self.0, self.0.exp())
    }
}

impl LmTask {
    /// The distillation temperature at `progress` through the distilling steps (its schedule).
    fn temperature_at(&self, progress: f32) -> f32 {
        self.cfg.temperature_schedule.value(self.cfg.temperature, self.cfg.temperature_final.unwrap_or(1.0), progress)
    }
}

/// The language model as a [`Task`]: the corpus, the fixed teachers, the model's structure.
pub struct LmTask {
    cfg: LmConfig,
    data: LmData,
    /// Shared with a data-free run's sampler.
    teachers: Arc<[LoadedLm]>,
    model: LmModel,
    dev: Device,
    /// The run's backend context (`--threads`, `--cpu-bf16`, `--matmul-f32`, `--deterministic`).
    be: crate::Backend,
}

/// One model's training text: lanes of its shard, or (data-free) text sampled from the teachers.
pub struct LmStream {
    lanes: Option<TokenLanes>,
    sampler: Option<Sampler<Arc<[LoadedLm]>>>,
}

/// A window: inputs and targets `[bptt * batch]`, time-major, and in a data-free run the
/// teachers' logits of it.
pub struct LmBatch {
    x: Tensor,
    y: Tensor,
    sampled: Option<Vec<Tensor>>,
    /// The window's place in a pass (a teacher cache's items `window * rows ..`).
    window: usize,
}

impl Task for LmTask {
    type Config = LmConfig;
    type Model = LmModel;
    type Batch = LmBatch;
    type Stream = LmStream;
    type Carry = LstmState;
    type Eval = LmScore;
    type Summary = LmSummary;
    const NAME: &'static str = "lm";
    const TITLE: &'static str = "Language model";
    const WHAT: &'static str = "a language model";
    const FORMAT: &'static str = config::FORMAT;
    const PREFIX: &'static str = "lm";
    const UNIT: &'static str = "tokens";
    const RESUME_KEYS: &'static [&'static str] = &["tokenizer", "min_count", "emb_dim", "hidden", "layers", "batch", "bptt", "shard_block"];

    fn prepare(cfg: &LmConfig, setup: &Setup) -> Result<Self> {
        if cfg.batch == 0 || cfg.bptt == 0 {
            bail!(Invalid, "batch and bptt must be positive (got {} and {})", cfg.batch, cfg.bptt);
        }
        if !(0.0..1.0).contains(&cfg.dropout) {
            bail!(Invalid, "dropout must be in [0, 1), got {}", cfg.dropout);
        }
        cfg.temperature_schedule.check("temperature", cfg.temperature_final, 1e-3..=1e3)?;
        if cfg.data_free && (!cfg.teacher_weights.is_empty() || cfg.teacher_confidence) {
            bail!(Invalid, "data_free distillation samples from the teachers' average: teacher_weights and teacher_confidence do not apply");
        }
        if cfg.data_free && (cfg.teacher.is_empty() || setup.total_models > 1) {
            bail!(Invalid, "data_free distillation needs --teacher and one model (no codistillation)");
        }
        let dev = setup.dev;
        let (data, teachers) = if cfg.data_free {
            let teachers = load_checkpoints(&cfg.teacher.0, dev)?;
            (prepare_data_free(cfg, &teachers)?, teachers)
        } else {
            let data = prepare_data(cfg)?;
            let teachers = load_teachers(&cfg.teacher.0, &data.vocab, dev)?;
            (data, teachers)
        };
        // Embedding, LSTM layers (one bias each), output projection.
        let (v, e, h, l) = (data.vocab.len() as u128, cfg.emb_dim as u128, cfg.hidden as u128, cfg.layers as u128);
        let lstm = |input: u128| 4u128.saturating_mul(h).saturating_mul(input.saturating_add(h)) + 4 * h;
        let params = v.saturating_mul(e) + lstm(e) + l.saturating_sub(1).saturating_mul(lstm(h)) + h.saturating_mul(v) + v;
        crate::train::options::check_model_memory(
            params,
            cfg.models,
            cfg.optimizer,
            dev,
            "--hidden, --emb-dim, --layers, or a smaller vocabulary with --min-count",
        )?;
        let model = LmModel::new(&mut ParamStore::new(), cfg, data.vocab.len(), &mut Rng::new(0))?;
        Ok(LmTask { cfg: cfg.clone(), data, teachers: teachers.into(), model, dev, be: setup.run.backend()? })
    }

    fn config(&self) -> &LmConfig {
        &self.cfg
    }

    fn model(&self) -> &LmModel {
        &self.model
    }

    fn teachers(&self) -> Vec<TeacherRef<'_, LmModel>> {
        self.teachers.iter().zip(&self.cfg.teacher.0).map(|(t, path)| TeacherRef { path, model: &t.model, store: &t.store }).collect()
    }

    fn forward_teachers(&self) -> bool {
        !self.cfg.data_free
    }

    fn teacher_states(&self) -> std::result::Result<(), &'static str> {
        if self.cfg.teacher.is_empty() || self.cfg.data_free {
            Err("give --teacher (and not --data-free)")
        } else {
            Ok(())
        }
    }

    fn layer_widths(&self) -> Option<(Vec<usize>, Vec<usize>)> {
        self.teachers.first().map(|t| (vec![self.cfg.hidden; self.cfg.layers], vec![t.model.lstm.hidden; t.model.lstm.num_layers()]))
    }

    /// A cache's items are the windows' rows in order (time-major, as the trainer's logits), so it
    /// holds for one batch and bptt.
    fn cache_shape(&self) -> Option<(String, usize)> {
        Some((format!("batch={};bptt={}", self.cfg.batch, self.cfg.bptt), self.data.vocab.len()))
    }

    fn cache_items(&self, _stream: &LmStream, epoch_steps: u64) -> usize {
        epoch_steps as usize * self.cfg.batch * self.cfg.bptt
    }

    fn cache_keys(&self, b: &LmBatch) -> Vec<usize> {
        let rows = self.cfg.batch * self.cfg.bptt;
        (b.window * rows..(b.window + 1) * rows).collect()
    }

    fn member_rng(&self, index: usize, total: usize) -> Rng {
        // A single model keeps the seed's own stream; codistilling models get one each.
        if total > 1 {
            Rng::new(self.cfg.seed).fork(index as u64)
        } else {
            Rng::new(self.cfg.seed)
        }
    }

    fn init(&self, store: &mut ParamStore, rng: &mut Rng) -> Result<()> {
        LmModel::new(store, &self.cfg, self.data.vocab.len(), rng).map(|_| ())
    }

    fn stream(&self, shards: usize, shard: usize) -> Result<(LmStream, Option<u64>)> {
        let Some(train) = &self.data.train else { return Ok((LmStream { lanes: None, sampler: None }, None)) };
        let stream = shard_blocks(train.as_slice(), shards, shard, self.cfg.shard_block)?;
        let key = xxhash_rust::xxh3::xxh3_64(bytemuck::cast_slice(&stream));
        let lanes = TokenLanes::new(&stream, self.cfg.batch, self.cfg.bptt)
            .map_err(|e| Error::Invalid(format!("{}: shard {shard} of {shards}: {e}", train.path.display())))?;
        Ok((LmStream { lanes: Some(lanes), sampler: None }, Some(key)))
    }

    fn epoch_steps(&self, stream: &LmStream) -> u64 {
        // Sampled text has no epochs: one endless pass.
        stream.lanes.as_ref().map_or(u64::MAX, |l| l.windows() as u64)
    }

    fn total_steps(&self, _epoch_steps: u64) -> u64 {
        self.cfg.steps
    }

    fn length_help(&self, _epoch_steps: u64) -> (String, &'static str) {
        (String::new(), "--steps")
    }

    fn start(&self, stream: &mut LmStream, carry: &mut LstmState, step: u64, ck: Option<(&Checkpoint, &Path)>) -> Result<()> {
        if let Some((ck, path)) = ck {
            for l in 0..self.cfg.layers {
                let get = |k: String| ck.tensors.get(&k).cloned().ok_or_else(|| Error::Invalid(format!("{}: checkpoint lacks {k}", path.display())));
                carry.h[l] = get(format!("state/h{l}"))?.to_device(self.dev)?;
                carry.c[l] = get(format!("state/c{l}"))?.to_device(self.dev)?;
            }
        }
        if self.cfg.data_free {
            // The carried state read text that is gone: sampling starts new lanes. A resumed run
            // samples a stream of its own (the step is in its seed), not the first run's again.
            *carry = self.zero_carry(&self.model)?;
            let seed = self.cfg.seed ^ 0x5A3F1E ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            stream.sampler = Some(Sampler::new(self.teachers.clone(), self.cfg.batch, 1.0, seed, self.dev)?.with_backend(self.be));
        }
        Ok(())
    }

    fn save_extra(&self, c: &mut Checkpoint, _stream: &LmStream, carry: &LstmState, _store: &ParamStore, _resumable: bool) -> Result<()> {
        c.meta.insert("vocab".into(), self.data.vocab.to_text());
        for (l, (h, cc)) in carry.h.iter().zip(&carry.c).enumerate() {
            c.tensors.insert(format!("state/h{l}"), h.clone());
            c.tensors.insert(format!("state/c{l}"), cc.clone());
        }
        Ok(())
    }

    fn check_resume(&self, _saved: &LmConfig, ck: &Checkpoint, path: &Path) -> Result<()> {
        let vocab = Vocab::from_text(ck.meta("vocab", path)?)?;
        if vocab != self.data.vocab {
            bail!(
                Invalid,
                "{}: checkpoint vocabulary ({} tokens) differs from the vocabulary of {} ({} tokens); the checkpoint belongs to another corpus",
                path.display(),
                vocab.len(),
                self.data.train.as_ref().map_or_else(|| "the teachers".to_string(), |t| t.path.display().to_string()),
                self.data.vocab.len()
            );
        }
        Ok(())
    }

    fn data_name(&self) -> String {
        self.data.train.as_ref().map_or_else(|| "the teachers' samples".to_string(), |t| t.path.display().to_string())
    }

    fn zero_carry(&self, model: &LmModel) -> Result<LstmState> {
        LstmState::zeros_on(model.lstm.num_layers(), self.cfg.batch, model.lstm.hidden, self.dev)
    }

    fn batch(&self, stream: &mut LmStream, step: u64, epoch_steps: u64) -> Result<(LmBatch, bool)> {
        let w = (step % epoch_steps) as usize;
        let batch = match (&mut stream.sampler, &stream.lanes) {
            (Some(s), _) => {
                let (x, y, l) = s.window(self.cfg.bptt)?;
                LmBatch { x, y, sampled: Some(l), window: w }
            }
            (None, Some(lanes)) => {
                let (x, y) = lanes.window(w)?;
                LmBatch { x: x.to_device(self.dev)?, y: y.to_device(self.dev)?, sampled: None, window: w }
            }
            (None, None) => unreachable!("a model without training text samples it"),
        };
        Ok((batch, w == 0))
    }

    fn batch_items(&self, _batch: &LmBatch) -> usize {
        self.cfg.batch * self.cfg.bptt
    }

    fn forward(
        &self,
        model: &LmModel,
        g: &mut Graph,
        store: &ParamStore,
        b: &LmBatch,
        carry: &LstmState,
        train: Option<(u64, usize)>,
    ) -> Result<(Var, Vec<Var>, LstmState)> {
        let p = self.cfg.dropout;
        let dropout = train.filter(|_| p > 0.0).map(|(step, index)| (p, self.cfg.seed.wrapping_mul(0x9E37_79B9).wrapping_add(step) ^ ((index as u64) << 40)));
        model.forward_layers(g, store, &b.x, carry, self.cfg.bptt, dropout)
    }

    fn loss(&self, g: &mut Graph, logits: Var, b: &LmBatch, peers: &[Tensor], fixed: &[Tensor], mix: Option<Mix>) -> Result<Var> {
        // Peers, then (data-free) the sampled text's teachers, then the fixed teachers.
        let mut teachers = peers.to_vec();
        teachers.extend(mix.and(b.sampled.as_ref()).into_iter().flatten().cloned());
        teachers.extend(fixed.iter().cloned());
        match mix {
            Some(m) if !teachers.is_empty() => {
                // scale * ((1 - mix) * task + mix * distill): the paper's task + lambda * distill, or the convex mix.
                let l = g
                    .softmax_kl(
                        logits,
                        &teachers,
                        Some(&b.y),
                        DistillParams { temperature: self.temperature_at(m.progress), alpha: m.mix, divergence: self.cfg.distill_loss },
                    )?
                    .0;
                crate::train::scaled(g, l, m.scale)
            }
            _ if self.cfg.label_smoothing > 0.0 => {
                // Label smoothing is distillation from a uniform teacher (all-zero logits).
                let uniform = Tensor::zeros_on(g.value(logits).shape(), self.dev)?;
                Ok(g.softmax_kl(logits, &[uniform], Some(&b.y), DistillParams { temperature: 1.0, alpha: self.cfg.label_smoothing, ..Default::default() })?.0)
            }
            _ => g.softmax_xent(logits, &b.y),
        }
    }

    fn mix_teachers(&self, teachers: &[Tensor], weights: &[f32], confidence: bool, progress: f32) -> Option<Result<Tensor>> {
        let how = TeacherMix { binary: false, logits: self.cfg.distill_loss == Divergence::Mse, temperature: self.temperature_at(progress), confidence };
        Some(mix_teachers(&self.be, teachers, weights, how))
    }

    fn init_from(&self, store: &mut ParamStore, ck: &Checkpoint, path: &Path) -> Option<Result<String>> {
        Some((|| {
            use crate::tasks::init::{gate_columns, layer_of, take};
            let t = config::checkpoint_config(ck, path)?;
            if Vocab::from_text(ck.meta("vocab", path)?)? != self.data.vocab {
                bail!(
                    Invalid,
                    "{}: init_from: the checkpoint's vocabulary differs from this run's (the same corpus, tokenizer and min_count needed)",
                    path.display()
                );
            }
            let c = &self.cfg;
            if t.layers < c.layers || t.hidden < c.hidden || t.emb_dim < c.emb_dim {
                bail!(
                    Invalid,
                    "{}: init_from: the checkpoint ({} layer(s) of {}, embedding {}) is smaller than this model ({} of {}, embedding {}): it must be at least as deep and as wide",
                    path.display(),
                    t.layers,
                    t.hidden,
                    t.emb_dim,
                    c.layers,
                    c.hidden,
                    c.emb_dim
                );
            }
            let v: Vec<usize> = (0..self.data.vocab.len()).collect();
            let upto = |n: usize| (0..n).collect::<Vec<usize>>();
            take(store, "lm.embedding.weight", ck, "lm.embedding.weight", Some(&v), &upto(c.emb_dim), path)?;
            let gates = gate_columns(c.hidden, t.hidden);
            let mut layers = Vec::new();
            for i in 0..c.layers {
                let j = layer_of(i, c.layers, t.layers);
                layers.push(j);
                let input = if i == 0 { c.emb_dim } else { c.hidden };
                let (own, from) = (format!("lm.lstm.l{i}"), format!("lm.lstm.l{j}"));
                take(store, &format!("{own}.w_ih"), ck, &format!("{from}.w_ih"), Some(&upto(input)), &gates, path)?;
                take(store, &format!("{own}.w_hh"), ck, &format!("{from}.w_hh"), Some(&upto(c.hidden)), &gates, path)?;
                take(store, &format!("{own}.bias"), ck, &format!("{from}.bias"), None, &gates, path)?;
            }
            take(store, "lm.output.weight", ck, "lm.output.weight", Some(&upto(c.hidden)), &v, path)?;
            take(store, "lm.output.bias", ck, "lm.output.bias", None, &v, path)?;
            Ok(format!(
                "its LSTM layer(s) {layers:?} of {}, the first {} of its {} units and {} of its {} embedding dimensions",
                t.layers, c.hidden, t.hidden, c.emb_dim, t.emb_dim
            ))
        })())
    }

    fn schedule_fields(&self, progress: f32) -> Vec<(&'static str, f64)> {
        vec![("temperature", self.temperature_at(progress) as f64)]
    }

    fn chance_loss(&self) -> Option<f64> {
        Some((self.data.vocab.len() as f64).ln())
    }

    fn validate(&self, model: &LmModel, store: &ParamStore) -> Result<Option<LmScore>> {
        let Some(v) = &self.data.valid else { return Ok(None) };
        Ok(Some(LmScore(evaluate(&self.be, model, store, v.as_slice(), self.cfg.batch, self.cfg.bptt, self.cfg.eval_tokens)?.0)))
    }

    fn ensemble(&self, members: &[(&ParamStore, Option<&LmScore>)]) -> Result<Option<(LmScore, Option<f64>)>> {
        let Some(v) = &self.data.valid else { return Ok(None) };
        let models: Vec<(&LmModel, &ParamStore)> = members.iter().map(|(s, _)| (&self.model, *s)).collect();
        Ok(Some((LmScore(evaluate_ensemble(&self.be, &models, v.as_slice(), self.cfg.batch, self.cfg.bptt, self.cfg.eval_tokens)?.0), None)))
    }

    fn compat(&self) -> (String, String) {
        let c = &self.cfg;
        (
            format!("vocab={:016x};emb_dim={};hidden={};layers={}", self.data.vocab.fingerprint(), c.emb_dim, c.hidden, c.layers),
            match c.temperature_schedule {
                crate::distill::Anneal::Constant => format!(";temperature={}", c.temperature),
                a => format!(";temperature={}({a} to {})", c.temperature, c.temperature_final.unwrap_or(1.0)),
            },
        )
    }

    fn floor(&self) -> Option<(&'static str, f64)> {
        self.data.floors.map(|f| ("source entropy", f.valid))
    }

    fn describe(&self, _first: &LmStream, epoch_steps: u64, _total: u64) -> String {
        let text =
            if self.cfg.data_free { format!("text sampled from {} teacher(s)", self.teachers.len()) } else { format!("{epoch_steps} windows per epoch each") };
        format!("vocabulary {}, {text}", self.data.vocab.len())
    }

    fn train_fields(&self, mean: f64) -> Value {
        json!({ "ppl": mean.exp() })
    }

    fn progress(&self, mean: f64, rate: f64) -> String {
        format!("loss {mean:.3} ppl {:.1} {rate:.0} tok/s", mean.exp())
    }

    /// Tests each model with its best validated weights when there are some, else the last.
    fn finish(&self, log: &mut MetricsLog, run: &Finished<Self>) -> Result<(LmSummary, Value)> {
        let mut per_model = Vec::new();
        for m in &run.members {
            let test = match &self.data.test {
                Some(t) => {
                    let best_path = self.checkpoint_path(&self.cfg.out, m.index, run.members.len() > 1, true);
                    let loaded = match m.best.is_some() && best_path.exists() {
                        true => {
                            let mut l = load_checkpoint(&best_path)?;
                            l.store.to_device(self.dev)?;
                            Some(l)
                        }
                        false => None,
                    };
                    let (tm, ts) = match &loaded {
                        Some(l) => (&l.model, &l.store),
                        None => (&self.model, &m.store),
                    };
                    let lanes = if self.cfg.eval_lanes == 0 { self.cfg.batch } else { self.cfg.eval_lanes };
                    let (ce, n) = evaluate(&self.be, tm, ts, t.as_slice(), lanes, self.cfg.bptt, 0)?;
                    let oov = oov_rate(t.as_slice(), &self.data.vocab);
                    eprintln!(
                        "model {}: test loss {ce:.4} ppl {:.2} over {n} of the file's {} tokens ({}){}",
                        m.index,
                        ce.exp(),
                        t.len(),
                        if lanes == 1 { "one stream".to_string() } else { format!("{lanes} lanes, each from a zero state") },
                        oov.map(|r| format!(", {:.2}% of them <unk>", 100.0 * r)).unwrap_or_default()
                    );
                    log.write(json!({
                        "event": "test",
                        "step": run.steps,
                        "model": m.index,
                        "loss": ce,
                        "ppl": ce.exp(),
                        "tokens": n,
                        "file_tokens": t.len(),
                        "lanes": lanes,
                        "oov_rate": oov.unwrap_or(f64::NAN),
                    }))?;
                    Some(ce)
                }
                None => None,
            };
            per_model.push((m.best, test));
        }
        let (best, test) = per_model[0];
        let ensemble_valid = run.ensemble.as_ref().map(|e| e.0 .0);
        let summary = LmSummary {
            steps: run.steps,
            best_valid: best,
            test,
            per_model,
            ensemble_valid,
            tokens_per_s: run.rate(),
            floors: self.data.floors,
            seconds: run.started.elapsed().as_secs_f64(),
        };
        let nan = f64::NAN;
        let fields = json!({
            "best_valid_loss": best.unwrap_or(nan),
            "best_valid_ppl": best.map(f64::exp).unwrap_or(nan),
            "test_loss": test.unwrap_or(nan),
            "test_ppl": test.map(f64::exp).unwrap_or(nan),
            "ensemble_valid_loss": ensemble_valid.unwrap_or(nan),
            "tokens_per_s": summary.tokens_per_s,
            "valid_entropy_floor": self.data.floors.map(|f| f.valid).unwrap_or(nan),
        });
        Ok((summary, fields))
    }
}
