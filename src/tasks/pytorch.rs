//! Checkpoints to and from PyTorch (`codistill export`, `codistill import`): the weights under the
//! names and layouts of the PyTorch modules in `docs/pytorch.md`, as safetensors.
//!
//! - Language model: `embedding.weight [V, E]` (`nn.Embedding`), `lstm.weight_ih_l{k} [4H, in]`,
//!   `lstm.weight_hh_l{k} [4H, H]`, `lstm.bias_ih_l{k} [4H]`, `lstm.bias_hh_l{k} [4H]` (`nn.LSTM`,
//!   gates i, f, g, o; codistill's one bias exported as `bias_ih`, `bias_hh` zero; on import the two
//!   are summed), `output.weight [V, H]`, `output.bias [V]` (`nn.Linear`). The vocabulary is in the
//!   metadata (`vocab`: the tokenizer, then one token a line, in id order).
//! - Click model: `embedding.weight [26 * buckets, D]` (one joint table, field f's rows from
//!   `f * buckets`), `dense.weight [W0, 26]` (`nn.Linear`, no bias), `mlp.{i}.weight [out, in]` and
//!   `mlp.{i}.bias`, the first layer reading the 26 embeddings concatenated.
//!
//! codistill stores a linear layer's weight `[in, out]` (the forward is `x @ W`); PyTorch's is
//! `[out, in]`: both directions transpose it.

use super::ctr::{self, CriteoConfig, CtrModel};
use super::lm::{self, LmConfig, LmModel};
use crate::checkpoint::Checkpoint;
use crate::data::criteo::NUM_CATS;
use crate::data::text::Vocab;
use crate::params::ParamStore;
use crate::tensor::Tensor;
use crate::{bail, Error, Result, Rng};
use std::path::Path;

/// `[r, c]` as `[c, r]` (on the host).
fn transposed(t: &Tensor) -> Result<Tensor> {
    let t = t.to_device(crate::tensor::Device::Cpu)?;
    let (r, c) = (t.dim(0), t.dim(1));
    let x = t.f32s()?;
    Tensor::from_f32((0..c * r).map(|i| x[(i % r) * c + i / r]).collect(), &[c, r])
}

/// Write `checkpoint` (a language or click model) as a PyTorch state dict in `out`; returns which
/// model it was.
pub fn export(checkpoint: &Path, out: &Path) -> Result<&'static str> {
    let ck = Checkpoint::load(checkpoint)?;
    let mut e = Checkpoint::new();
    let what = match ck.meta("format", checkpoint)? {
        lm::config::FORMAT => {
            let l = lm::load_checkpoint(checkpoint)?;
            let w = |n: &str| l.store.get(n).cloned();
            e.tensors.insert("embedding.weight".into(), w(&l.model.emb.weight)?);
            for (k, layer) in l.model.lstm.layers().iter().enumerate() {
                e.tensors.insert(format!("lstm.weight_ih_l{k}"), transposed(&w(&layer.w_ih)?)?);
                e.tensors.insert(format!("lstm.weight_hh_l{k}"), transposed(&w(&layer.w_hh)?)?);
                let b = w(&layer.bias)?;
                e.tensors.insert(format!("lstm.bias_hh_l{k}"), Tensor::zeros(b.shape()));
                e.tensors.insert(format!("lstm.bias_ih_l{k}"), b);
            }
            e.tensors.insert("output.weight".into(), transposed(&w(&l.model.out.weight)?)?);
            e.tensors.insert("output.bias".into(), w(l.model.out.bias.as_ref().expect("the output layer has a bias"))?);
            e.meta.insert("vocab".into(), l.vocab.to_text());
            e.meta.insert("config".into(), l.cfg.to_toml());
            "language model"
        }
        ctr::config::FORMAT => {
            let (cfg, model, store) = ctr::load_checkpoint(checkpoint)?;
            e.tensors.insert("embedding.weight".into(), store.get(&model.emb.weight)?.clone());
            e.tensors.insert("dense.weight".into(), transposed(store.get(&model.dense.weight)?)?);
            for (i, layer) in model.mlp.layers.iter().enumerate() {
                e.tensors.insert(format!("mlp.{i}.weight"), transposed(store.get(&layer.weight)?)?);
                e.tensors.insert(format!("mlp.{i}.bias"), store.get(layer.bias.as_ref().expect("MLP layers have biases"))?.clone());
            }
            e.meta.insert("config".into(), cfg.to_toml());
            "click model"
        }
        other => bail!(Invalid, "{}: checkpoint format {other:?} is neither a language model nor a click model", checkpoint.display()),
    };
    e.meta.insert("format".into(), format!("codistill-pytorch-{}", if what == "click model" { "ctr" } else { "lm" }));
    e.save(out)?;
    Ok(what)
}

/// The config a codistill export recorded (its training options: window, batch, files), or the
/// defaults for a state dict from elsewhere; the shapes come from the tensors either way.
fn exported_config<C: crate::config::ConfigTable>(sd: &Checkpoint, path: &Path) -> Result<C> {
    let mut cfg = C::default();
    if let Some(text) = sd.meta.get("config") {
        cfg.apply_toml_str(text, path)?;
    }
    Ok(cfg)
}

/// A state dict's tensor, with the shape it must have, or an error naming it.
fn take(sd: &Checkpoint, path: &Path, name: &str, shape: Option<&[usize]>) -> Result<Tensor> {
    let t = sd.tensors.get(name).ok_or_else(|| Error::Invalid(format!("{}: no tensor {name:?} (see docs/pytorch.md for the names)", path.display())))?;
    if let Some(want) = shape.filter(|w| *w != t.shape()) {
        bail!(Shape, "{}: {name} has shape {:?}, the model needs {want:?}", path.display(), t.shape());
    }
    Ok(t.clone())
}

/// Build a model of `T`'s config from a state dict: every parameter of `store` set by `fill`, then
/// saved as a codistill checkpoint (step 0, no optimizer state) that loads as a model or teacher.
fn save_imported(out: &Path, format: &str, config: String, extra: &[(&str, String)], store: &ParamStore) -> Result<()> {
    let mut c = Checkpoint::new();
    for (name, p) in store.iter() {
        c.tensors.insert(name.clone(), p.value.clone());
    }
    c.meta.insert("format".into(), format.into());
    c.meta.insert("step".into(), "0".into());
    c.meta.insert("config".into(), config);
    for (k, v) in extra {
        c.meta.insert(k.to_string(), v.clone());
    }
    c.save(out)
}

/// A language model's PyTorch state dict (`state`, names as in the module doc) and its vocabulary
/// (`vocab`: the tokenizer `word` or `byte` on the first line, then one token a line in id order;
/// or none, to take the state dict's own `vocab` metadata) as a codistill checkpoint in `out`.
pub fn import_lm(state: &Path, vocab: Option<&Path>, out: &Path) -> Result<LmConfig> {
    let sd = Checkpoint::load_plain(state)?;
    let vocab = match vocab {
        Some(v) => Vocab::from_text(&std::fs::read_to_string(v).map_err(|e| Error::io(v, e))?)?,
        None => Vocab::from_text(sd.meta.get("vocab").ok_or_else(|| Error::Invalid(format!("{}: no vocabulary: give --vocab FILE", state.display())))?)?,
    };
    let emb = take(&sd, state, "embedding.weight", None)?;
    if emb.rank() != 2 || emb.dim(0) != vocab.len() {
        bail!(Shape, "{}: embedding.weight has shape {:?} and the vocabulary {} tokens", state.display(), emb.shape(), vocab.len());
    }
    let hh = take(&sd, state, "lstm.weight_hh_l0", None)?;
    let layers = (0..).take_while(|k| sd.tensors.contains_key(&format!("lstm.weight_ih_l{k}"))).count();
    let cfg = LmConfig { emb_dim: emb.dim(1), hidden: hh.dim(1), layers, tokenizer: vocab.tokenizer, ..exported_config(&sd, state)? };
    let mut store = ParamStore::new();
    let model = LmModel::new(&mut store, &cfg, vocab.len(), &mut Rng::new(0))?;
    let (v, e, h) = (vocab.len(), cfg.emb_dim, cfg.hidden);
    store.set(&model.emb.weight, emb)?;
    for (k, layer) in model.lstm.layers().iter().enumerate() {
        let input = if k == 0 { e } else { h };
        store.set(&layer.w_ih, transposed(&take(&sd, state, &format!("lstm.weight_ih_l{k}"), Some(&[4 * h, input]))?)?)?;
        store.set(&layer.w_hh, transposed(&take(&sd, state, &format!("lstm.weight_hh_l{k}"), Some(&[4 * h, h]))?)?)?;
        let (bi, bh) = (take(&sd, state, &format!("lstm.bias_ih_l{k}"), Some(&[4 * h]))?, take(&sd, state, &format!("lstm.bias_hh_l{k}"), Some(&[4 * h]))?);
        store.set(&layer.bias, Tensor::from_f32(bi.f32s()?.iter().zip(bh.f32s()?).map(|(a, b)| a + b).collect(), &[4 * h])?)?;
    }
    store.set(&model.out.weight, transposed(&take(&sd, state, "output.weight", Some(&[v, h]))?)?)?;
    store.set(model.out.bias.as_ref().expect("the output layer has a bias"), take(&sd, state, "output.bias", Some(&[v]))?)?;
    save_imported(out, lm::config::FORMAT, cfg.to_toml(), &[("vocab", vocab.to_text())], &store)?;
    Ok(cfg)
}

/// A click model's PyTorch state dict (names as in the module doc) as a codistill checkpoint.
pub fn import_ctr(state: &Path, out: &Path) -> Result<CriteoConfig> {
    let sd = Checkpoint::load_plain(state)?;
    let emb = take(&sd, state, "embedding.weight", None)?;
    if emb.rank() != 2 || emb.dim(0) % NUM_CATS != 0 {
        bail!(Shape, "{}: embedding.weight has shape {:?}; it must have 26 * buckets rows", state.display(), emb.shape());
    }
    let layers = (0..).take_while(|i| sd.tensors.contains_key(&format!("mlp.{i}.weight"))).count();
    if layers < 2 {
        bail!(Invalid, "{}: mlp.0.weight and mlp.1.weight at least (one hidden layer, then the output)", state.display());
    }
    let widths: Vec<String> = (0..layers - 1).map(|i| sd.tensors[&format!("mlp.{i}.weight")].dim(0).to_string()).collect();
    let cfg = CriteoConfig { buckets: emb.dim(0) / NUM_CATS, emb_dim: emb.dim(1), mlp: widths.join(","), ..exported_config(&sd, state)? };
    let mut store = ParamStore::new();
    let model = CtrModel::new(&mut store, &cfg, &mut Rng::new(0))?;
    store.set(&model.emb.weight, emb)?;
    let w0 = model.dense.out_dim;
    store.set(&model.dense.weight, transposed(&take(&sd, state, "dense.weight", Some(&[w0, crate::data::criteo::DENSE_WIDTH]))?)?)?;
    for (i, layer) in model.mlp.layers.iter().enumerate() {
        store.set(&layer.weight, transposed(&take(&sd, state, &format!("mlp.{i}.weight"), Some(&[layer.out_dim, layer.in_dim]))?)?)?;
        store.set(layer.bias.as_ref().expect("MLP layers have biases"), take(&sd, state, &format!("mlp.{i}.bias"), Some(&[layer.out_dim]))?)?;
    }
    save_imported(out, ctr::config::FORMAT, cfg.to_toml(), &[], &store)?;
    Ok(cfg)
}
