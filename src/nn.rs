//! Modules: each owns parameter *names* and shapes; the values live in a `ParamStore`, so a model
//! is a store plus a small description, and a checkpoint is the store. Initialisation follows
//! PyTorch's defaults unless a comment says otherwise. Weight layouts are `[in, out]` (the forward
//! is `x @ W`); `codistill export` (tasks::pytorch) transposes where PyTorch's layout differs.

use crate::autograd::{Graph, Var};
use crate::params::ParamStore;
use crate::tensor::Tensor;
use crate::{Result, Rng};

/// `y = x W + b`, `W [in, out]`, initialised uniform in `+-1/sqrt(in)`.
#[derive(Clone, Debug)]
pub struct Linear {
    pub weight: String,
    pub bias: Option<String>,
    pub in_dim: usize,
    pub out_dim: usize,
}

impl Linear {
    pub fn new(store: &mut ParamStore, name: &str, in_dim: usize, out_dim: usize, bias: bool, rng: &mut Rng) -> Result<Self> {
        let k = 1.0 / (in_dim as f32).sqrt();
        let weight = format!("{name}.weight");
        store.insert(&weight, Tensor::uniform(&[in_dim, out_dim], -k, k, rng))?;
        let bias = if bias {
            let b = format!("{name}.bias");
            store.insert(&b, Tensor::uniform(&[out_dim], -k, k, rng))?;
            Some(b)
        } else {
            None
        };
        Ok(Linear { weight, bias, in_dim, out_dim })
    }

    pub fn forward(&self, g: &mut Graph, store: &ParamStore, x: Var) -> Result<Var> {
        self.apply(g, store, x, false)
    }

    /// As [`forward`](Self::forward) with the weights as constants: gradients reach `x` only (a
    /// term that must not train this layer).
    pub fn forward_frozen(&self, g: &mut Graph, store: &ParamStore, x: Var) -> Result<Var> {
        self.apply(g, store, x, true)
    }

    fn apply(&self, g: &mut Graph, store: &ParamStore, x: Var, frozen: bool) -> Result<Var> {
        let mut get = |name: &str| -> Result<Var> {
            if frozen {
                Ok(g.constant(store.get(name)?.clone()))
            } else {
                g.param(store, name)
            }
        };
        let w = get(&self.weight)?;
        let b = self.bias.as_deref().map(&mut get).transpose()?;
        let y = g.matmul(x, w)?;
        match b {
            Some(bv) => g.add_bias(y, bv),
            None => Ok(y),
        }
    }
}

/// A table of `vocab` rows of `dim`, initialised uniform in `+-init_scale`.
#[derive(Clone, Debug)]
pub struct Embedding {
    pub weight: String,
    pub vocab: usize,
    pub dim: usize,
}

impl Embedding {
    pub fn new(store: &mut ParamStore, name: &str, vocab: usize, dim: usize, init_scale: f32, rng: &mut Rng) -> Result<Self> {
        let weight = format!("{name}.weight");
        store.insert(&weight, Tensor::uniform(&[vocab, dim], -init_scale, init_scale, rng))?;
        Ok(Embedding { weight, vocab, dim })
    }

    /// `[ids.numel(), dim]`.
    pub fn forward(&self, g: &mut Graph, store: &ParamStore, ids: &Tensor) -> Result<Var> {
        let w = g.param(store, &self.weight)?;
        g.embedding(w, ids)
    }
}

/// The recurrent state of every layer, carried between windows (`Default`: no layers).
#[derive(Clone, Debug, Default)]
pub struct LstmState {
    pub h: Vec<Tensor>,
    pub c: Vec<Tensor>,
}

impl LstmState {
    pub fn zeros(layers: usize, batch: usize, hidden: usize) -> Self {
        LstmState { h: vec![Tensor::zeros(&[batch, hidden]); layers], c: vec![Tensor::zeros(&[batch, hidden]); layers] }
    }

    /// Zeros on `device`.
    pub fn zeros_on(layers: usize, batch: usize, hidden: usize, device: crate::tensor::Device) -> Result<Self> {
        let z = Tensor::zeros_on(&[batch, hidden], device)?;
        Ok(LstmState { h: vec![z.clone(); layers], c: vec![z; layers] })
    }
}

/// One LSTM layer's parameter names: `w_ih [in, 4H]`, `w_hh [H, 4H]`, one bias `[4H]`, gates
/// i, f, g, o.
#[derive(Clone, Debug)]
pub struct LstmLayer {
    pub w_ih: String,
    pub w_hh: String,
    pub bias: String,
}

/// A multi-layer LSTM over whole sequences, with dropout between layers. Weights uniform in
/// `+-1/sqrt(H)` (PyTorch); the forget-gate bias starts at 1 (Jozefowicz et al. 2015), which
/// lets gradients through early in training.
#[derive(Clone, Debug)]
pub struct Lstm {
    layers: Vec<LstmLayer>,
    pub input: usize,
    pub hidden: usize,
}

impl Lstm {
    pub fn new(store: &mut ParamStore, name: &str, input: usize, hidden: usize, num_layers: usize, rng: &mut Rng) -> Result<Self> {
        let k = 1.0 / (hidden as f32).sqrt();
        let mut layers = Vec::with_capacity(num_layers);
        for l in 0..num_layers {
            let in_dim = if l == 0 { input } else { hidden };
            let layer = LstmLayer { w_ih: format!("{name}.l{l}.w_ih"), w_hh: format!("{name}.l{l}.w_hh"), bias: format!("{name}.l{l}.bias") };
            store.insert(&layer.w_ih, Tensor::uniform(&[in_dim, 4 * hidden], -k, k, rng))?;
            store.insert(&layer.w_hh, Tensor::uniform(&[hidden, 4 * hidden], -k, k, rng))?;
            let mut b = vec![0f32; 4 * hidden];
            b[hidden..2 * hidden].iter_mut().for_each(|v| *v = 1.0);
            store.insert(&layer.bias, Tensor::from_f32(b, &[4 * hidden])?)?;
            layers.push(layer);
        }
        Ok(Lstm { layers, input, hidden })
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Each layer's parameter names, bottom up.
    pub fn layers(&self) -> &[LstmLayer] {
        &self.layers
    }

    /// `x [T*B, input]` time-major; returns the top layer's outputs `[T*B, H]` and the new state.
    /// `dropout` is (probability, seed) applied to each layer's output below the top one.
    pub fn forward(&self, g: &mut Graph, store: &ParamStore, x: Var, state: &LstmState, steps: usize, dropout: Option<(f32, u64)>) -> Result<(Var, LstmState)> {
        let (mut ys, next) = self.forward_all(g, store, x, state, steps, dropout)?;
        Ok((ys.pop().expect("an LSTM has a layer"), next))
    }

    /// As [`forward`](Self::forward), with every layer's outputs, bottom to top.
    pub fn forward_all(
        &self,
        g: &mut Graph,
        store: &ParamStore,
        x: Var,
        state: &LstmState,
        steps: usize,
        dropout: Option<(f32, u64)>,
    ) -> Result<(Vec<Var>, LstmState)> {
        let mut ys = Vec::with_capacity(self.layers.len());
        let mut h = x;
        let mut next = LstmState { h: Vec::new(), c: Vec::new() };
        for (l, layer) in self.layers.iter().enumerate() {
            if l > 0 {
                if let Some((p, seed)) = dropout {
                    h = g.dropout(h, p, seed.wrapping_add(l as u64))?;
                }
            }
            let h0 = g.constant(state.h[l].clone());
            let c0 = g.constant(state.c[l].clone());
            let (w_ih, w_hh, b) = (g.param(store, &layer.w_ih)?, g.param(store, &layer.w_hh)?, g.param(store, &layer.bias)?);
            let (y, hl, cl) = g.lstm(h, h0, c0, w_ih, w_hh, b, steps)?;
            next.h.push(hl);
            next.c.push(cl);
            h = y;
            ys.push(y);
        }
        Ok((ys, next))
    }
}

/// Linear layers with ReLU between them (none after the last).
#[derive(Clone, Debug)]
pub struct Mlp {
    pub layers: Vec<Linear>,
}

impl Mlp {
    /// `dims = [in, hidden..., out]`.
    pub fn new(store: &mut ParamStore, name: &str, dims: &[usize], rng: &mut Rng) -> Result<Self> {
        let layers = dims.windows(2).enumerate().map(|(i, w)| Linear::new(store, &format!("{name}.{i}"), w[0], w[1], true, rng)).collect::<Result<_>>()?;
        Ok(Mlp { layers })
    }

    pub fn forward(&self, g: &mut Graph, store: &ParamStore, x: Var) -> Result<Var> {
        let mut h = x;
        for (i, layer) in self.layers.iter().enumerate() {
            h = layer.forward(g, store, h)?;
            if i + 1 < self.layers.len() {
                h = g.relu(h)?;
            }
        }
        Ok(h)
    }
}
