//! The language model: embedding, multi-layer LSTM, output projection, with dropout on the
//! non-recurrent connections (Zaremba et al. 2014); and its checkpoints loaded as models.

use super::config::{checkpoint_config, LmConfig};
use crate::autograd::{Graph, Var};
use crate::checkpoint::Checkpoint;
use crate::data::text::Vocab;
use crate::nn::{Embedding, Linear, Lstm, LstmState};
use crate::params::ParamStore;
use crate::tensor::Tensor;
use crate::{bail, Result, Rng};
use std::path::{Path, PathBuf};

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
        let (logits, mut layers, next) = self.forward_layers(g, s, x, state, steps, dropout)?;
        Ok((logits, layers.pop().expect("an LSTM has a layer"), next))
    }

    /// As [`forward`](Self::forward), with every LSTM layer's outputs, bottom to top.
    pub fn forward_layers(
        &self,
        g: &mut Graph,
        s: &ParamStore,
        x: &Tensor,
        state: &LstmState,
        steps: usize,
        dropout: Option<(f32, u64)>,
    ) -> Result<(Var, Vec<Var>, LstmState)> {
        let mut e = self.emb.forward(g, s, x)?;
        if let Some((p, seed)) = dropout {
            e = g.dropout(e, p, seed)?;
        }
        let (layers, next) = self.lstm.forward_all(g, s, e, state, steps, dropout.map(|(p, seed)| (p, seed ^ 0x5EED)))?;
        let top = *layers.last().expect("an LSTM has a layer");
        let h = match dropout {
            Some((p, seed)) => g.dropout(top, p, seed ^ 0xD0)?,
            None => top,
        };
        Ok((self.out.forward(g, s, h)?, layers, next))
    }
}

/// A checkpoint's config, vocabulary, and weights loaded into a fresh model.
pub struct LoadedLm {
    pub cfg: LmConfig,
    pub vocab: Vocab,
    pub model: LmModel,
    pub store: ParamStore,
    pub ckpt: Checkpoint,
}

/// A language model's checkpoint loaded as a model (on the CPU).
pub fn load_checkpoint(path: &Path) -> Result<LoadedLm> {
    let ckpt = Checkpoint::load(path)?;
    let cfg = checkpoint_config(&ckpt, path)?;
    let vocab = Vocab::from_text(ckpt.meta("vocab", path)?)?;
    let mut store = ParamStore::new();
    let model = LmModel::new(&mut store, &cfg, vocab.len(), &mut Rng::new(0))?;
    crate::train::load_weights(&mut store, &ckpt, path)?;
    Ok(LoadedLm { cfg, vocab, model, store, ckpt })
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
