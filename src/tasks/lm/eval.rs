//! Scoring text under language models: cross-entropy over lanes with the state carried, the
//! ensemble of several models, each token's log-probability, and checkpoints scored on a file.

use super::config::split_file;
use super::model::{load_checkpoints, Int8Lm, LmModel};
use crate::autograd::Graph;
use crate::backend::Backend;
use crate::data::lm::TokenLanes;
use crate::data::text::{cached_tokens, Vocab};
use crate::nn::LstmState;
use crate::ops::quant::Products;
use crate::params::ParamStore;
use crate::tensor::Tensor;
use crate::{bail, Error, Result};
use std::path::{Path, PathBuf};

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
pub fn evaluate(be: &Backend, model: &LmModel, s: &ParamStore, tokens: &[u32], batch: usize, bptt: usize, max_tokens: usize) -> Result<(f64, usize)> {
    let (data, windows, steps) = eval_layout(tokens, batch, bptt, max_tokens)?;
    let lanes = data.batch;
    let dev = s.device();
    let mut state = LstmState::zeros_on(model.lstm.num_layers(), lanes, model.lstm.hidden, dev)?;
    let (mut total, mut count) = (0.0, 0usize);
    let windows = eval_windows(&data, windows, steps, max_tokens)?;
    let bar = crate::progress::bar(windows.len() as u64, 0, "evaluating (windows) ");
    for (x, y, steps) in windows {
        bar.inc(1);
        let (x, y) = (x.to_device(dev)?, y.to_device(dev)?);
        let mut g = Graph::no_grad().with_backend(*be);
        let (logits, next) = model.forward(&mut g, s, &x, &state, steps, None)?;
        let loss = g.softmax_xent(logits, &y)?;
        // The loss is a mean over the window's rows: weighted by them, as the tail has fewer.
        total += g.value(loss).item()? as f64 * (steps * lanes) as f64;
        count += steps * lanes;
        state = next;
    }
    bar.finish_and_clear();
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

/// Mean cross-entropy of the models' averaged next-token distributions (an ensemble): the mean
/// over tokens of `-ln((1/n) sum_i p_i)`, over the same lanes and windows as `evaluate`. Each
/// model may have its own width and depth; all share one vocabulary. Returns the loss and the
/// number of tokens scored.
pub fn evaluate_ensemble(
    be: &Backend,
    models: &[(&LmModel, &ParamStore)],
    tokens: &[u32],
    batch: usize,
    bptt: usize,
    max_tokens: usize,
) -> Result<(f64, usize)> {
    Ok(ensemble_loss(&token_log_probs(be, models, tokens, batch, bptt, max_tokens)?))
}

/// Each model's natural-log probability (in f64) of every token that `evaluate_ensemble` scores,
/// in the order it scores them (window by window, lane by lane within a time step); one vector per
/// model, all of one length.
pub fn token_log_probs(
    be: &Backend,
    models: &[(&LmModel, &ParamStore)],
    tokens: &[u32],
    batch: usize,
    bptt: usize,
    max_tokens: usize,
) -> Result<Vec<Vec<f64>>> {
    let dev = models.first().map_or(crate::tensor::Device::Cpu, |m| m.1.device());
    score_windows(
        models.len(),
        tokens,
        batch,
        bptt,
        max_tokens,
        |lanes| models.iter().map(|(m, _)| LstmState::zeros_on(m.lstm.num_layers(), lanes, m.lstm.hidden, dev)).collect::<Result<Vec<_>>>(),
        |states, k, x, _lanes, steps| {
            let (model, s) = models[k];
            let mut g = Graph::no_grad().with_backend(*be);
            let (logits, next) = model.forward(&mut g, s, &x.to_device(dev)?, &states[k], steps, None)?;
            states[k] = next;
            g.value(logits).to_vec_f32()
        },
    )
}

/// As [`token_log_probs`], each model run with int8 products ([`Int8Lm`]).
pub fn token_log_probs_int8(models: &[Int8Lm], tokens: &[u32], batch: usize, bptt: usize, max_tokens: usize) -> Result<Vec<Vec<f64>>> {
    score_windows(
        models.len(),
        tokens,
        batch,
        bptt,
        max_tokens,
        |lanes| Ok(models.iter().map(|m| m.zero_state(lanes)).collect::<Vec<_>>()),
        |states, k, x, lanes, steps| models[k].forward(x.i32s()?, lanes, steps, &mut states[k]),
    )
}

/// The scoring loop of [`token_log_probs`]: the models' carried state from `start(lanes)` once the
/// layout is known, then for each window and model `k`, `logits(state, k, inputs, lanes, steps)`
/// gives `[steps * lanes, vocab]`; each target's natural-log probability in f64, one vector per
/// model.
fn score_windows<S>(
    models: usize,
    tokens: &[u32],
    batch: usize,
    bptt: usize,
    max_tokens: usize,
    start: impl FnOnce(usize) -> Result<S>,
    mut logits: impl FnMut(&mut S, usize, &Tensor, usize, usize) -> Result<Vec<f32>>,
) -> Result<Vec<Vec<f64>>> {
    let (data, windows, steps) = eval_layout(tokens, batch, bptt, max_tokens)?;
    let lanes = data.batch;
    let mut state = start(lanes)?;
    let mut logps: Vec<Vec<f64>> = vec![Vec::new(); models];
    let windows = eval_windows(&data, windows, steps, max_tokens)?;
    let bar = crate::progress::bar(windows.len() as u64, 0, "scoring (windows) ");
    for (x, y, steps) in windows {
        bar.inc(1);
        let yv = y.i32s()?;
        for (k, out) in logps.iter_mut().enumerate() {
            let l = logits(&mut state, k, &x, lanes, steps)?;
            let v = l.len() / yv.len().max(1);
            out.extend((0..yv.len()).map(|r| {
                let row = &l[r * v..(r + 1) * v];
                let m = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
                let lse = m + row.iter().map(|&z| (z as f64 - m).exp()).sum::<f64>().ln();
                row[yv[r] as usize] as f64 - lse
            }));
        }
    }
    bar.finish_and_clear();
    Ok(logps)
}

/// The ensemble's mean cross-entropy from each model's token log-probabilities: the mean over
/// tokens of `-ln((1/n) sum_i p_i)` (one model: its own), and the number of tokens.
fn ensemble_loss(logps: &[Vec<f64>]) -> (f64, usize) {
    let count = logps.first().map_or(0, Vec::len);
    let mut total = 0.0;
    for r in 0..count {
        // log of the mean probability, shifted by the largest log-probability for range.
        let m = logps.iter().map(|lp| lp[r]).fold(f64::NEG_INFINITY, f64::max);
        let mean = logps.iter().map(|lp| (lp[r] - m).exp()).sum::<f64>() / logps.len() as f64;
        total -= m + mean.ln();
    }
    (total / count.max(1) as f64, count)
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
    eval_checkpoints_with(paths, file, cache, max_tokens, lanes, Products::F32)
}

/// As [`eval_checkpoints`], each model's products in `products`' arithmetic: with
/// [`Products::Int8`] a quantized checkpoint runs on its own levels with int8 activations
/// ([`Int8Lm`]), an f32 one quantized to int8 first (post-training W8A8).
pub fn eval_checkpoints_with(paths: &[PathBuf], file: Option<&Path>, cache: &Path, max_tokens: usize, lanes: usize, products: Products) -> Result<EvalReport> {
    let be = Backend::from_env()?;
    let (loaded, tokens) = load_with_text(paths, file, cache)?;
    let l = &loaded[0];
    let lanes = if lanes == 0 { l.cfg.batch } else { lanes };
    let (loss, n) = if products == Products::Int8 {
        ensemble_loss(&token_log_probs_int8(&int8_models(&be, &loaded, paths)?, tokens.as_slice(), lanes, l.cfg.bptt, max_tokens)?)
    } else if loaded.len() == 1 {
        evaluate(&be, &l.model, &l.store, tokens.as_slice(), lanes, l.cfg.bptt, max_tokens)?
    } else {
        let models: Vec<(&LmModel, &ParamStore)> = loaded.iter().map(|m| (&m.model, &m.store)).collect();
        evaluate_ensemble(&be, &models, tokens.as_slice(), lanes, l.cfg.bptt, max_tokens)?
    };
    let used = eval_layout(tokens.as_slice(), lanes, l.cfg.bptt, max_tokens)?.0.batch;
    Ok(EvalReport { loss, tokens: n, file_tokens: tokens.len(), lanes: used, oov_rate: oov_rate(tokens.as_slice(), &l.vocab) })
}

/// Checkpoints (sharing a vocabulary) and the text they are scored on: `file`, or the first
/// checkpoint's test file.
fn load_with_text(paths: &[PathBuf], file: Option<&Path>, cache: &Path) -> Result<(Vec<super::LoadedLm>, crate::data::text::Tokens)> {
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
    Ok((loaded, tokens))
}

/// Prediction churn between two language models (the codistillation paper's section 4, for a
/// language model): the mean over the scored tokens of `|p_a(t) - p_b(t)|`, the probabilities the
/// two models give each token that comes, scored as [`eval_checkpoints`] scores (`lanes` 0: the
/// first checkpoint's batch).
pub fn churn_checkpoints(a: &Path, b: &Path, file: Option<&Path>, cache: &Path, max_tokens: usize, lanes: usize) -> Result<f64> {
    churn_checkpoints_with(a, b, file, cache, max_tokens, lanes, Products::F32)
}

/// As [`churn_checkpoints`], the two models' products in `products`' arithmetic (as
/// [`eval_checkpoints_with`]).
pub fn churn_checkpoints_with(a: &Path, b: &Path, file: Option<&Path>, cache: &Path, max_tokens: usize, lanes: usize, products: Products) -> Result<f64> {
    let be = Backend::from_env()?;
    let paths = [a.to_path_buf(), b.to_path_buf()];
    let (loaded, tokens) = load_with_text(&paths, file, cache)?;
    let lanes = if lanes == 0 { loaded[0].cfg.batch } else { lanes };
    let lp = match products {
        Products::Int8 => token_log_probs_int8(&int8_models(&be, &loaded, &paths)?, tokens.as_slice(), lanes, loaded[0].cfg.bptt, max_tokens)?,
        Products::F32 => {
            let models: Vec<(&LmModel, &ParamStore)> = loaded.iter().map(|m| (&m.model, &m.store)).collect();
            token_log_probs(&be, &models, tokens.as_slice(), lanes, loaded[0].cfg.bptt, max_tokens)?
        }
    };
    Ok(lp[0].iter().zip(&lp[1]).map(|(x, y)| (x.exp() - y.exp()).abs()).sum::<f64>() / lp[0].len().max(1) as f64)
}

/// Loaded checkpoints as [`Int8Lm`]s: a quantized one on its own levels, an f32 one quantized to
/// int8 first.
fn int8_models(be: &Backend, loaded: &[super::LoadedLm], paths: &[PathBuf]) -> Result<Vec<Int8Lm>> {
    loaded
        .iter()
        .zip(paths)
        .map(|(m, path)| match m.ckpt.quantized_bits(path)? {
            Some(bits) => m.model.int8(&m.store, bits, be.cpu_threads()),
            None => m.model.int8(&m.store.quantized_copy(8)?, 8, be.cpu_threads()),
        })
        .collect()
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
