//! Text drawn from trained language models: lanes of tokens sampled one step at a time from the
//! models' averaged next-token distribution, each model's LSTM state carried. `codistill lm
//! sample` prints it; data-free distillation (`--data-free true`) trains a student on it, with the
//! logits the teachers computed while sampling as its soft targets.

use super::model::LoadedLm;
use crate::autograd::Graph;
use crate::data::text::{Tokenizer, Vocab, EOS};
use crate::nn::LstmState;
use crate::tensor::{Device, Tensor};
use crate::{bail, Result, Rng};

/// Samples `lanes` independent streams from the average of `models` (which share a vocabulary):
/// borrowed (`&[LoadedLm]`, `&Vec<LoadedLm>`) or shared (`Arc<[LoadedLm]>`).
pub struct Sampler<M: AsRef<[LoadedLm]>> {
    models: M,
    states: Vec<LstmState>,
    /// Each lane's last token: the input of the next step.
    current: Vec<u32>,
    rng: Rng,
    temperature: f32,
    dev: Device,
    backend: crate::Backend,
}

/// The token a stream starts after: the end of a line (`<eos>`, or the byte `\n`).
pub fn start_token(vocab: &Vocab) -> u32 {
    match vocab.tokenizer {
        Tokenizer::Byte => b'\n' as u32,
        Tokenizer::Word => vocab.words.iter().position(|w| w == EOS).unwrap_or(0) as u32,
    }
}

impl<M: AsRef<[LoadedLm]>> Sampler<M> {
    /// `temperature` divides the logits before the softmax (1: the models' own distribution).
    pub fn new(models: M, lanes: usize, temperature: f32, seed: u64, dev: Device) -> Result<Self> {
        let Some(first) = models.as_ref().first() else { bail!(Invalid, "sampling needs at least one model") };
        if let Some(k) = models.as_ref().iter().position(|m| m.vocab != first.vocab) {
            bail!(Invalid, "model {k} has another vocabulary than model 0; sampled text needs one vocabulary");
        }
        if !(temperature > 0.0 && temperature.is_finite()) {
            bail!(Invalid, "sampling temperature must be positive and finite, got {temperature}");
        }
        if lanes == 0 {
            bail!(Invalid, "sampling needs at least one lane");
        }
        let states = models.as_ref().iter().map(|m| LstmState::zeros_on(m.cfg.layers, lanes, m.cfg.hidden, dev)).collect::<Result<_>>()?;
        let current = vec![start_token(&first.vocab); lanes];
        Ok(Sampler { models, states, current, rng: Rng::new(seed), temperature, dev, backend: crate::Backend::default() })
    }

    /// The same sampler, its models' forward passes run with `backend`.
    pub fn with_backend(mut self, backend: crate::Backend) -> Self {
        self.backend = backend;
        self
    }

    pub fn vocab(&self) -> &Vocab {
        &self.models.as_ref()[0].vocab
    }

    /// Run every model one step on `input` (one token per lane); returns each model's logits
    /// `[lanes, V]` on the host (where the draw happens).
    fn step(&mut self, input: &[u32]) -> Result<Vec<Vec<f32>>> {
        let lanes = input.len();
        let x = Tensor::from_i32(input.iter().map(|&t| t as i32).collect(), &[lanes])?.to_device(self.dev)?;
        let mut out = Vec::with_capacity(self.models.as_ref().len());
        for (m, st) in self.models.as_ref().iter().zip(self.states.iter_mut()) {
            let mut g = Graph::no_grad().with_backend(self.backend);
            let (l, next) = m.model.forward(&mut g, &m.store, &x, st, 1, None)?;
            *st = next;
            out.push(g.value(l).to_vec_f32()?);
        }
        Ok(out)
    }

    /// Feed `tokens` to every lane as if they had been sampled (a prompt); nothing is drawn.
    pub fn feed(&mut self, tokens: &[u32]) -> Result<()> {
        let v = self.vocab().len() as u32;
        if let Some(&bad) = tokens.iter().find(|&&t| t >= v) {
            bail!(Invalid, "token {bad} is outside the vocabulary of {v}");
        }
        for &t in tokens {
            let input = self.current.clone();
            self.step(&input)?;
            self.current.iter_mut().for_each(|c| *c = t);
        }
        Ok(())
    }

    /// Draw one token per lane from the averaged distribution of `logits` (each `[lanes, V]`).
    fn draw(&mut self, logits: &[Vec<f32>]) -> Vec<u32> {
        let lanes = self.current.len();
        let v = logits[0].len() / lanes;
        let (mut p, mut e) = (vec![0f32; v], vec![0f32; v]);
        (0..lanes)
            .map(|b| {
                p.iter_mut().for_each(|x| *x = 0.0);
                for l in logits {
                    let (_, sum) = crate::ops::math::exp_row(&l[b * v..(b + 1) * v], 1.0 / self.temperature, &mut e);
                    let inv = (1.0 / sum) as f32;
                    p.iter_mut().zip(&e).for_each(|(a, &x)| *a += x * inv);
                }
                let total: f64 = p.iter().map(|&x| x as f64).sum();
                let mut u = self.rng.uniform() * total;
                for (i, &q) in p.iter().enumerate() {
                    if u < q as f64 {
                        return i as u32;
                    }
                    u -= q as f64;
                }
                // Rounding left u past the last bucket: the last token with mass.
                p.iter().rposition(|&q| q > 0.0).unwrap_or(0) as u32
            })
            .collect()
    }

    /// One sampled token per lane: returns the step's inputs and every model's logits
    /// (`[lanes, V]`, host); the drawn tokens are the new `current`.
    fn advance(&mut self) -> Result<(Vec<u32>, Vec<Vec<f32>>)> {
        let input = self.current.clone();
        let logits = self.step(&input)?;
        self.current = self.draw(&logits);
        Ok((input, logits))
    }

    /// `n` sampled tokens of every lane, lane-major (`[lane][t]`).
    pub fn tokens(&mut self, n: usize) -> Result<Vec<Vec<u32>>> {
        let mut out = vec![Vec::with_capacity(n); self.current.len()];
        for _ in 0..n {
            self.advance()?;
            for (o, &t) in out.iter_mut().zip(&self.current) {
                o.push(t);
            }
        }
        Ok(out)
    }

    /// A training window of `steps` sampled tokens per lane, laid out as `TokenLanes::window`
    /// (time-major, row `t * lanes + b`): inputs, targets (the drawn tokens), and each model's
    /// logits `[steps * lanes, V]` on the device, the distributions the targets were drawn from.
    pub fn window(&mut self, steps: usize) -> Result<(Tensor, Tensor, Vec<Tensor>)> {
        let lanes = self.current.len();
        let (mut x, mut y) = (Vec::with_capacity(steps * lanes), Vec::with_capacity(steps * lanes));
        let v = self.vocab().len();
        let mut per_model: Vec<Vec<f32>> = vec![Vec::with_capacity(steps * lanes * v); self.models.as_ref().len()];
        for _ in 0..steps {
            let (input, logits) = self.advance()?;
            x.extend(input.iter().map(|&t| t as i32));
            y.extend(self.current.iter().map(|&t| t as i32));
            for (acc, l) in per_model.iter_mut().zip(logits) {
                acc.extend_from_slice(&l);
            }
        }
        let n = steps * lanes;
        let logits = per_model.into_iter().map(|l| Tensor::from_f32(l, &[n, v])?.to_device(self.dev)).collect::<Result<Vec<_>>>()?;
        Ok((Tensor::from_i32(x, &[n])?.to_device(self.dev)?, Tensor::from_i32(y, &[n])?.to_device(self.dev)?, logits))
    }
}

/// Text of sampled tokens: words separated by spaces with `<eos>` as a line end, or the bytes
/// themselves (invalid UTF-8 replaced).
pub fn render(vocab: &Vocab, tokens: &[u32]) -> String {
    match vocab.tokenizer {
        Tokenizer::Byte => String::from_utf8_lossy(&tokens.iter().map(|&t| t as u8).collect::<Vec<_>>()).into_owned(),
        Tokenizer::Word => {
            let mut s = String::new();
            for &t in tokens {
                let w = vocab.words.get(t as usize).map(String::as_str).unwrap_or("<unk>");
                if w == EOS {
                    s.push('\n');
                } else {
                    if !s.is_empty() && !s.ends_with('\n') {
                        s.push(' ');
                    }
                    s.push_str(w);
                }
            }
            s
        }
    }
}
