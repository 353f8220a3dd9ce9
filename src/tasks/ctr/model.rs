//! The click model: per-field hashed embeddings and the dense features into an MLP with ReLU,
//! one logit; its evaluation (log-loss, AUC, calibration) and its checkpoints loaded as models.

use super::config::{checkpoint_config, CriteoConfig};
use super::score::{auc, calibration, log_loss};
use crate::autograd::{Graph, Var};
use crate::backend::Backend;
use crate::checkpoint::Checkpoint;
use crate::data::criteo::{CriteoCache, DENSE_WIDTH, NUM_CATS, NUM_INTS};
use crate::nn::{Embedding, Linear, Mlp};
use crate::ops::math::sigmoid;
use crate::ops::quant::QuantMatrix;
use crate::params::ParamStore;
use crate::tensor::Tensor;
use crate::{bail, Error, Result, Rng};
use std::ops::Range;
use std::path::{Path, PathBuf};

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
        let (logits, mut layers) = self.forward_layers(g, s, ids, dense)?;
        Ok((logits, layers.pop().expect("an MLP has a hidden layer")))
    }

    /// As [`forward`](Self::forward), with every hidden layer (after its ReLU), first to last.
    pub fn forward_layers(&self, g: &mut Graph, s: &ParamStore, ids: &Tensor, dense: &Tensor) -> Result<(Var, Vec<Var>)> {
        let n = dense.dim(0);
        let e = self.emb.forward(g, s, ids)?;
        let e = g.reshape(e, &[n, NUM_CATS * self.emb.dim])?;
        let first = self.mlp.layers[0].forward(g, s, e)?;
        let dv = g.constant(dense.clone());
        let d = self.dense.forward(g, s, dv)?;
        let h = g.add(first, d)?;
        self.above_first(g, s, h, n, false)
    }

    /// The layers above the first from its output `h [n, h0]` (before its ReLU): the logits and
    /// every hidden layer; with `frozen` the weights are constants.
    fn above_first(&self, g: &mut Graph, s: &ParamStore, mut h: Var, n: usize, frozen: bool) -> Result<(Var, Vec<Var>)> {
        let mut hidden = Vec::new();
        for layer in &self.mlp.layers[1..] {
            h = g.relu(h)?;
            hidden.push(h);
            h = if frozen { layer.forward_frozen(g, s, h)? } else { layer.forward(g, s, h)? };
        }
        Ok((g.reshape(h, &[n])?, hidden))
    }

    /// The first layer's rows of chosen category rows, for rows given as distributions over a few
    /// candidates per field (data-free synthesis): for field `f` and its candidates `cand[f]`
    /// (global embedding rows, each field the same count `p`), row `f * p + j` is the embedding row
    /// `cand[f][j]` through field `f`'s block of the first layer, `E[c] W0[f E..(f + 1) E, :]`.
    /// `[NUM_CATS * p, h0]` on the store's device.
    pub fn candidate_rows(&self, s: &ParamStore, cand: &[Vec<i32>]) -> Result<Tensor> {
        let p = cand.first().map_or(0, |c| c.len());
        if cand.len() != NUM_CATS || p == 0 || cand.iter().any(|c| c.len() != p) {
            bail!(Invalid, "candidate_rows: {NUM_CATS} fields of the same positive count of candidates needed");
        }
        let (e, w0) = (self.emb.dim, &self.mlp.layers[0]);
        let h0 = w0.out_dim;
        let rows = self.embedding_rows(s, cand)?;
        let w = s.get(&w0.weight)?.to_vec_f32()?;
        let mut out = vec![0f32; NUM_CATS * p * h0];
        for f in 0..NUM_CATS {
            for j in 0..p {
                let er = &rows[(f * p + j) * e..(f * p + j + 1) * e];
                let o = &mut out[(f * p + j) * h0..(f * p + j + 1) * h0];
                for (k, &x) in er.iter().enumerate() {
                    for (acc, &wk) in o.iter_mut().zip(&w[(f * e + k) * h0..(f * e + k + 1) * h0]) {
                        *acc += x * wk;
                    }
                }
            }
        }
        Tensor::from_f32(out, &[NUM_CATS * p, h0])?.to_device(s.device())
    }

    /// The embedding rows `cand` names (global rows, field after field), gathered on the store's
    /// device and brought to the host: `[cand rows * emb]`, without copying the whole table.
    pub fn embedding_rows(&self, s: &ParamStore, cand: &[Vec<i32>]) -> Result<Vec<f32>> {
        let ids: Vec<i32> = cand.iter().flatten().copied().collect();
        if let Some(&row) = ids.iter().find(|&&r| r < 0 || r as usize >= self.emb.vocab) {
            bail!(Invalid, "candidate rows: row {row} is outside the embedding table's {}", self.emb.vocab);
        }
        let n = ids.len();
        let ids = Tensor::from_i32(ids, &[n])?.to_device(s.device())?;
        crate::ops::embedding::gather(s.get(&self.emb.weight)?, &ids)?.to_vec_f32()
    }

    /// The model on relaxed rows, its weights as constants (gradients reach the inputs only):
    /// `choice [n, NUM_CATS * p]` each field's weights over its candidates (one-hot for a real
    /// row), `rows` from [`candidate_rows`](Self::candidate_rows), `values [n, NUM_INTS]` the
    /// integer features (as preprocessed) and `flags [n, NUM_INTS]` their missing flags. The
    /// logits `[n]` and every hidden layer, as [`forward_layers`](Self::forward_layers) gives them
    /// for the same rows.
    pub fn forward_relaxed(&self, g: &mut Graph, s: &ParamStore, choice: Var, rows: &Tensor, values: Var, flags: Var) -> Result<(Var, Vec<Var>)> {
        let n = g.value(choice).dim(0);
        let first = &self.mlp.layers[0];
        let rv = g.constant(rows.clone());
        let mut h = g.matmul(choice, rv)?;
        if let Some(b) = &first.bias {
            let bv = g.constant(s.get(b)?.clone());
            h = g.add_bias(h, bv)?;
        }
        // The dense half of the first layer, split: the values' rows, then the flags'.
        let wd = s.get(&self.dense.weight)?.to_vec_f32()?;
        let h0 = first.out_dim;
        let dev = s.device();
        for (k, x) in [values, flags].into_iter().enumerate() {
            let part = Tensor::from_f32(wd[k * NUM_INTS * h0..(k + 1) * NUM_INTS * h0].to_vec(), &[NUM_INTS, h0])?.to_device(dev)?;
            let pv = g.constant(part);
            let d = g.matmul(x, pv)?;
            h = g.add(h, d)?;
        }
        self.above_first(g, s, h, n, true)
    }

    /// The width of the last hidden layer.
    pub fn hidden_width(&self) -> usize {
        self.mlp.layers.last().map_or(0, |l| l.in_dim)
    }

    /// The widths of the hidden layers, first to last.
    pub fn hidden_widths(&self) -> Vec<usize> {
        self.mlp.layers[1..].iter().map(|l| l.in_dim).collect()
    }

    /// Click probabilities for rows `rows` of a cache computed with int8 products (W8A8, see
    /// [`crate::ops::quant::int8`]), on the host: the store's every weight matrix must already be
    /// quantized at `bits` (a quantized checkpoint, or [`ParamStore::quantized_copy`]), so that its
    /// levels come back exactly; embedding rows are gathered as they are (a gather has no product),
    /// each layer's input quantized per row to int8, summed in i32, scaled, biased in f32.
    pub fn predict_int8(&self, be: &Backend, s: &ParamStore, bits: u32, data: &CriteoCache, rows: Range<usize>) -> Result<Vec<f32>> {
        let host = |name: &str| s.get(name)?.to_device(crate::tensor::Device::Cpu);
        let table = host(&self.emb.weight)?;
        let (table, e) = (table.f32s()?, self.emb.dim);
        let quant = |l: &Linear| -> Result<(QuantMatrix, Option<Vec<f32>>)> {
            let bias = l.bias.as_deref().map(|b| host(b)?.to_vec_f32()).transpose()?;
            Ok((QuantMatrix::of(host(&l.weight)?.f32s()?, l.in_dim, l.out_dim, bits)?, bias))
        };
        let (dense, _) = quant(&self.dense)?;
        let threads = be.cpu_threads();
        let layers = self.mlp.layers.iter().map(quant).collect::<Result<Vec<_>>>()?;
        let idx: Vec<usize> = rows.collect();
        let mut out = Vec::with_capacity(idx.len());
        let bar = crate::progress::bar(idx.len() as u64, 0, "predicting with int8 products (rows) ");
        for chunk in idx.chunks(8192) {
            bar.inc(chunk.len() as u64);
            let n = chunk.len();
            let (ids, dense_x, _) = data.batch(chunk)?;
            let mut x = vec![0f32; n * NUM_CATS * e];
            for (r, &id) in ids.i32s()?.iter().enumerate() {
                let id = id as usize;
                x[r * e..(r + 1) * e].copy_from_slice(&table[id * e..(id + 1) * e]);
            }
            let mut h = layers[0].0.product(&x, n, threads)?;
            for (a, b) in h.iter_mut().zip(dense.product(dense_x.f32s()?, n, threads)?) {
                *a += b;
            }
            for (l, (m, bias)) in layers.iter().enumerate() {
                if l > 0 {
                    h.iter_mut().for_each(|v| *v = v.max(0.0));
                    h = m.product(&h, n, threads)?;
                }
                if let Some(b) = bias {
                    for row in h.chunks_mut(b.len()) {
                        row.iter_mut().zip(b).for_each(|(v, b)| *v += b);
                    }
                }
            }
            out.extend(h.iter().map(|&z| sigmoid(z)));
        }
        bar.finish_and_clear();
        Ok(out)
    }

    /// Click probabilities for rows `rows` of a cache, in batches, without a tape.
    pub fn predict(&self, be: &Backend, s: &ParamStore, data: &CriteoCache, rows: Range<usize>) -> Result<Vec<f32>> {
        let idx: Vec<usize> = rows.collect();
        let mut out = Vec::with_capacity(idx.len());
        let dev = s.device();
        let bar = crate::progress::bar(idx.len() as u64, 0, "predicting (rows) ");
        for chunk in idx.chunks(8192) {
            bar.inc(chunk.len() as u64);
            let (ids, dense, _) = data.batch(chunk)?;
            let (ids, dense) = (ids.to_device(dev)?, dense.to_device(dev)?);
            let mut g = Graph::no_grad().with_backend(*be);
            let l = self.forward(&mut g, s, &ids, &dense)?;
            out.extend(g.value(l).to_vec_f32()?.iter().map(|&x| sigmoid(x)));
        }
        bar.finish_and_clear();
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

impl ClickEval {
    /// The figures of probabilities `p` against labels `y`.
    pub fn of(p: &[f32], y: &[f32]) -> Self {
        ClickEval { rows: y.len(), log_loss: log_loss(p, y), auc: auc(p, y), calibration: calibration(p, y) }
    }
}

pub fn evaluate(be: &Backend, model: &CtrModel, s: &ParamStore, data: &CriteoCache, rows: Range<usize>) -> Result<(ClickEval, Vec<f32>)> {
    let p = model.predict(be, s, data, rows.clone())?;
    let y: Vec<f32> = rows.map(|i| data.label(i)).collect();
    Ok((ClickEval::of(&p, &y), p))
}

/// A checkpoint's config and weights in a fresh model (on the CPU).
pub fn load_checkpoint(path: &Path) -> Result<(CriteoConfig, CtrModel, ParamStore)> {
    load_checkpoint_quantized(path).map(|(cfg, model, store, _)| (cfg, model, store))
}

/// As [`load_checkpoint`], with the bit width of a quantized checkpoint's weights (None: f32).
pub fn load_checkpoint_quantized(path: &Path) -> Result<(CriteoConfig, CtrModel, ParamStore, Option<u32>)> {
    let ck = Checkpoint::load(path)?;
    let cfg = checkpoint_config(&ck, path)?;
    let mut store = ParamStore::new();
    let model = CtrModel::new(&mut store, &cfg, &mut Rng::new(0))?;
    crate::train::load_weights(&mut store, &ck, path)?;
    Ok((cfg, model, store, ck.quantized_bits(path)?))
}

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
