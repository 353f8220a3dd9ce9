//! The language model: embedding, multi-layer LSTM, output projection, with dropout on the
//! non-recurrent connections (Zaremba et al. 2014); and its checkpoints loaded as models.

use super::config::{checkpoint_config, LmConfig};
use crate::autograd::{Graph, Var};
use crate::checkpoint::Checkpoint;
use crate::data::text::Vocab;
use crate::nn::{Embedding, Linear, Lstm, LstmState};
use crate::ops::quant::QuantMatrix;
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

/// A language model whose products run in int8 on the host (see [`crate::ops::quant::int8`]): each
/// weight matrix's levels at `bits` (per output channel; the store's weights must already be
/// quantized at `bits`, a quantized checkpoint's or [`ParamStore::quantized_copy`]'s, so that the
/// levels come back exactly), each product's input quantized per row to int8, summed in i32;
/// embedding rows gathered as they are (no product), gates and biases in f32, the engine's LSTM
/// cell ([`crate::ops::lstm::cell_forward_cpu`]).
pub struct Int8Lm {
    emb: Vec<f32>,
    emb_dim: usize,
    hidden: usize,
    /// Per layer: W_ih, W_hh, the bias.
    layers: Vec<(QuantMatrix, QuantMatrix, Vec<f32>)>,
    out: QuantMatrix,
    out_bias: Vec<f32>,
    threads: usize,
}

/// The carried state of an [`Int8Lm`]: per layer `h` and `c`, `[lanes, hidden]` each.
pub type Int8State = Vec<(Vec<f32>, Vec<f32>)>;

impl LmModel {
    /// This model's weights in `s` as an [`Int8Lm`] (on the host, `threads` for its products).
    pub fn int8(&self, s: &ParamStore, bits: u32, threads: usize) -> Result<Int8Lm> {
        let host = |name: &str| s.get(name)?.to_device(crate::tensor::Device::Cpu)?.to_vec_f32();
        let h = self.lstm.hidden;
        let mut layers = Vec::with_capacity(self.lstm.num_layers());
        for (l, layer) in self.lstm.layers().iter().enumerate() {
            let input = if l == 0 { self.lstm.input } else { h };
            layers.push((QuantMatrix::of(&host(&layer.w_ih)?, input, 4 * h, bits)?, QuantMatrix::of(&host(&layer.w_hh)?, h, 4 * h, bits)?, host(&layer.bias)?));
        }
        let out_bias = match &self.out.bias {
            Some(b) => host(b)?,
            None => vec![0.0; self.out.out_dim],
        };
        Ok(Int8Lm {
            emb: host(&self.emb.weight)?,
            emb_dim: self.emb.dim,
            hidden: h,
            layers,
            out: QuantMatrix::of(&host(&self.out.weight)?, self.out.in_dim, self.out.out_dim, bits)?,
            out_bias,
            threads,
        })
    }
}

impl Int8Lm {
    /// A zero state for `lanes` lanes.
    pub fn zero_state(&self, lanes: usize) -> Int8State {
        vec![(vec![0.0; lanes * self.hidden], vec![0.0; lanes * self.hidden]); self.layers.len()]
    }

    /// Logits `[steps * lanes, vocab]` for a window of ids (time-major, `[steps * lanes]`), the
    /// state carried in `state`.
    pub fn forward(&self, ids: &[i32], lanes: usize, steps: usize, state: &mut Int8State) -> Result<Vec<f32>> {
        let (e, h, rows) = (self.emb_dim, self.hidden, steps * lanes);
        if ids.len() != rows {
            bail!(Invalid, "Int8Lm::forward: {} ids for {steps} steps of {lanes} lanes", ids.len());
        }
        let vocab = self.emb.len() / e;
        let mut x = vec![0f32; rows * e];
        for (r, &id) in ids.iter().enumerate() {
            let id = usize::try_from(id)
                .ok()
                .filter(|&i| i < vocab)
                .ok_or_else(|| crate::Error::Invalid(format!("token {id} is outside the vocabulary of {vocab}")))?;
            x[r * e..(r + 1) * e].copy_from_slice(&self.emb[id * e..(id + 1) * e]);
        }
        for ((w_ih, w_hh, bias), (hs, cs)) in self.layers.iter().zip(state.iter_mut()) {
            let mut pre = w_ih.product(&x, rows, self.threads)?;
            for row in pre.chunks_mut(4 * h) {
                row.iter_mut().zip(bias).for_each(|(v, b)| *v += b);
            }
            let mut y = vec![0f32; rows * h];
            let mut c_prev = vec![0f32; cs.len()];
            for t in 0..steps {
                let gates = &mut pre[t * lanes * 4 * h..(t + 1) * lanes * 4 * h];
                for (g, r) in gates.iter_mut().zip(w_hh.product(hs, lanes, self.threads)?) {
                    *g += r;
                }
                std::mem::swap(&mut c_prev, cs);
                crate::ops::lstm::cell_forward_cpu(gates, &c_prev, cs, hs, h);
                y[t * lanes * h..(t + 1) * lanes * h].copy_from_slice(hs);
            }
            x = y;
        }
        let mut logits = self.out.product(&x, rows, self.threads)?;
        for row in logits.chunks_mut(self.out_bias.len()) {
            row.iter_mut().zip(&self.out_bias).for_each(|(v, b)| *v += b);
        }
        Ok(logits)
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
