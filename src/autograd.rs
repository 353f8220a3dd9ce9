//! A tape autograd in the spirit of micrograd, over coarse ops.
//!
//! `Graph` records each op's output value and, when any input needs a gradient, a closure that
//! pushes the output's gradient to its inputs. `backward(loss)` walks the tape once in reverse.
//! Parameters enter by name (`param`), and `accumulate_grads` adds their gradients into the
//! `ParamStore`. A graph made with `Graph::no_grad()` records no closures: teacher forward passes
//! cost only the forward.
//!
//! Coarse ops (a whole LSTM layer over a sequence, the fused distillation loss) are single tape
//! entries with hand-written backward, so the tape stays short.

use crate::ops::elementwise::{self, Binary, Unary};
use crate::ops::softmax_kl::{DistillLoss, DistillParams};
use crate::ops::{dropout, embedding, loss, lstm, matmul, reduce, softmax_kl};
use crate::params::ParamStore;
use crate::tensor::Tensor;
use crate::{bail, Result};

/// A value on the tape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Var(usize);

type BackwardFn = Box<dyn FnOnce(&Tensor, &mut Grads) -> Result<()>>;

/// Gradients after `backward`, indexed by `Var`.
#[derive(Debug)]
pub struct Grads {
    grads: Vec<Option<Tensor>>,
    /// Row-sparse contributions `(ids, rows)` to embedding tables, kept apart from the dense
    /// gradient so that a large table never gets a dense temporary.
    rows: Vec<Vec<(Tensor, Tensor)>>,
    shapes: Vec<Vec<usize>>,
    needs: Vec<bool>,
}

impl Grads {
    /// The dense part of `v`'s gradient (an embedding table's gradient is in `rows`).
    pub fn get(&self, v: Var) -> Option<&Tensor> {
        self.grads.get(v.0).and_then(|g| g.as_ref())
    }

    /// Row-sparse parts of `v`'s gradient: `(ids, rows)` pairs, `grad[ids[i]] += rows[i]`.
    pub fn rows(&self, v: Var) -> &[(Tensor, Tensor)] {
        &self.rows[v.0]
    }

    fn add_rows(&mut self, v: Var, ids: Tensor, rows: Tensor) {
        if self.needs[v.0] {
            self.rows[v.0].push((ids, rows));
        }
    }

    /// Fold row-sparse parts into the dense gradient (for the rare table that is not a leaf).
    fn densify(&mut self, i: usize) -> Result<()> {
        for (ids, r) in std::mem::take(&mut self.rows[i]) {
            let mut d = Tensor::zeros_on(&self.shapes[i], r.device())?;
            embedding::scatter_add(&r, &ids, &mut d)?;
            self.add(Var(i), d)?;
        }
        Ok(())
    }

    /// Whether anything upstream of `v` wants a gradient (lets backward skip work, e.g. dx of data).
    fn wants(&self, v: Var) -> bool {
        self.needs[v.0]
    }

    fn add(&mut self, v: Var, g: Tensor) -> Result<()> {
        if !self.needs[v.0] {
            return Ok(());
        }
        match &mut self.grads[v.0] {
            Some(acc) => elementwise::axpy(1.0, &g, acc),
            slot => {
                *slot = Some(g);
                Ok(())
            }
        }
    }
}

pub struct Graph {
    values: Vec<Tensor>,
    needs_grad: Vec<bool>,
    backward: Vec<Option<BackwardFn>>,
    params: Vec<(Var, String)>,
    recording: bool,
}

impl Default for Graph {
    fn default() -> Self {
        Self::new()
    }
}

fn scale(g: &Tensor, s: f32) -> Result<Tensor> {
    elementwise::unary(Unary::Scale(s), g)
}

impl Graph {
    /// A graph that records backward rules.
    pub fn new() -> Self {
        Graph { values: Vec::new(), needs_grad: Vec::new(), backward: Vec::new(), params: Vec::new(), recording: true }
    }

    /// A graph that records nothing: for evaluation and teachers' forward passes.
    pub fn no_grad() -> Self {
        Graph { recording: false, ..Self::new() }
    }

    pub fn is_recording(&self) -> bool {
        self.recording
    }

    pub fn value(&self, v: Var) -> &Tensor {
        &self.values[v.0]
    }

    fn push(&mut self, value: Tensor, inputs: &[Var], rule: impl FnOnce(&Tensor, &mut Grads) -> Result<()> + 'static) -> Var {
        let needs = self.recording && inputs.iter().any(|v| self.needs_grad[v.0]);
        self.values.push(value);
        self.needs_grad.push(needs);
        self.backward.push(if needs { Some(Box::new(rule)) } else { None });
        Var(self.values.len() - 1)
    }

    fn leaf_with(&mut self, value: Tensor, requires_grad: bool) -> Var {
        self.values.push(value);
        self.needs_grad.push(self.recording && requires_grad);
        self.backward.push(None);
        Var(self.values.len() - 1)
    }

    /// Data: never differentiated.
    pub fn constant(&mut self, value: Tensor) -> Var {
        self.leaf_with(value, false)
    }

    /// A leaf whose gradient `backward` reports (used by gradient checks and for state inputs).
    pub fn leaf(&mut self, value: Tensor) -> Var {
        self.leaf_with(value, true)
    }

    /// A named parameter from the store; its gradient goes back to the store by name.
    pub fn param(&mut self, store: &ParamStore, name: &str) -> Result<Var> {
        let v = self.leaf_with(store.get(name)?.clone(), true);
        self.params.push((v, name.to_string()));
        Ok(v)
    }

    /// `a @ b` for 2-D tensors.
    pub fn matmul(&mut self, a: Var, b: Var) -> Result<Var> {
        let (av, bv) = (self.value(a).clone(), self.value(b).clone());
        let out = matmul::matmul(&av, false, &bv, false)?;
        Ok(self.push(out, &[a, b], move |g, grads| {
            if grads.wants(a) {
                grads.add(a, matmul::matmul(g, false, &bv, true)?)?;
            }
            if grads.wants(b) {
                grads.add(b, matmul::matmul(&av, true, g, false)?)?;
            }
            Ok(())
        }))
    }

    /// `x [N, D] + bias [D]`.
    pub fn add_bias(&mut self, x: Var, bias: Var) -> Result<Var> {
        let out = elementwise::add_row_bias(self.value(x), self.value(bias))?;
        Ok(self.push(out, &[x, bias], move |g, grads| {
            if grads.wants(bias) {
                grads.add(bias, reduce::sum_rows(g)?)?;
            }
            grads.add(x, g.clone())
        }))
    }

    pub fn binary(&mut self, op: Binary, a: Var, b: Var) -> Result<Var> {
        let (av, bv) = (self.value(a).clone(), self.value(b).clone());
        let out = elementwise::binary(op, &av, &bv)?;
        Ok(self.push(out, &[a, b], move |g, grads| match op {
            Binary::Add => {
                grads.add(a, g.clone())?;
                grads.add(b, g.clone())
            }
            Binary::Sub => {
                grads.add(a, g.clone())?;
                if grads.wants(b) {
                    grads.add(b, scale(g, -1.0)?)?;
                }
                Ok(())
            }
            Binary::Mul => {
                if grads.wants(a) {
                    grads.add(a, elementwise::binary(Binary::Mul, g, &bv)?)?;
                }
                if grads.wants(b) {
                    grads.add(b, elementwise::binary(Binary::Mul, g, &av)?)?;
                }
                Ok(())
            }
        }))
    }

    pub fn add(&mut self, a: Var, b: Var) -> Result<Var> {
        self.binary(Binary::Add, a, b)
    }

    pub fn mul(&mut self, a: Var, b: Var) -> Result<Var> {
        self.binary(Binary::Mul, a, b)
    }

    pub fn unary(&mut self, op: Unary, x: Var) -> Result<Var> {
        let xv = self.value(x).clone();
        let out = elementwise::unary(op, &xv)?;
        let yv = out.clone();
        Ok(self.push(out, &[x], move |g, grads| grads.add(x, elementwise::unary_backward(op, &xv, &yv, g)?)))
    }

    pub fn relu(&mut self, x: Var) -> Result<Var> {
        self.unary(Unary::Relu, x)
    }

    pub fn sigmoid(&mut self, x: Var) -> Result<Var> {
        self.unary(Unary::Sigmoid, x)
    }

    pub fn tanh(&mut self, x: Var) -> Result<Var> {
        self.unary(Unary::Tanh, x)
    }

    /// Inverted dropout with a counter-based mask; backward applies the same mask to the gradient.
    pub fn dropout(&mut self, x: Var, p: f32, seed: u64) -> Result<Var> {
        if p == 0.0 {
            return Ok(x);
        }
        let out = dropout::dropout(self.value(x), p, seed)?;
        Ok(self.push(out, &[x], move |g, grads| grads.add(x, dropout::dropout(g, p, seed)?)))
    }

    pub fn reshape(&mut self, x: Var, shape: &[usize]) -> Result<Var> {
        let old = self.value(x).shape().to_vec();
        let out = self.value(x).reshape(shape)?;
        Ok(self.push(out, &[x], move |g, grads| grads.add(x, g.reshape(&old)?)))
    }

    /// Sum of all elements, a scalar.
    pub fn sum(&mut self, x: Var) -> Result<Var> {
        let (shape, dev) = (self.value(x).shape().to_vec(), self.value(x).device());
        let out = reduce::sum(self.value(x))?;
        Ok(self.push(out, &[x], move |g, grads| grads.add(x, Tensor::full_on(&shape, g.item()?, dev)?)))
    }

    pub fn mean(&mut self, x: Var) -> Result<Var> {
        let n = self.value(x).numel().max(1) as f32;
        let s = self.sum(x)?;
        self.unary(Unary::Scale(1.0 / n), s)
    }

    /// Rows of `table [V, D]` for `ids` (i32): `[ids.numel(), D]`.
    pub fn embedding(&mut self, table: Var, ids: &Tensor) -> Result<Var> {
        let out = embedding::gather(self.value(table), ids)?;
        let ids = ids.reshape(&[ids.numel()])?;
        Ok(self.push(out, &[table], move |g, grads| {
            grads.add_rows(table, ids, g.clone());
            Ok(())
        }))
    }

    /// One LSTM layer over `steps` time steps (see `ops::lstm` for the layout). Returns the
    /// outputs `[T*B, H]` on the tape and the final state as plain tensors: the state carried to
    /// the next window is detached, as truncated backpropagation through time requires.
    #[allow(clippy::too_many_arguments)]
    pub fn lstm(&mut self, x: Var, h0: Var, c0: Var, w_ih: Var, w_hh: Var, bias: Var, steps: usize) -> Result<(Var, Tensor, Tensor)> {
        let (xv, h0v) = (self.value(x).clone(), self.value(h0).clone());
        let (wih, whh) = (self.value(w_ih).clone(), self.value(w_hh).clone());
        let out = lstm::layer_forward(&xv, &h0v, self.value(c0), &wih, &whh, self.value(bias), steps)?;
        let (y, h_last, c_last) = (out.y.clone(), out.h_last.clone(), out.c_last.clone());
        let needs = self.recording && [x, h0, c0, w_ih, w_hh, bias].iter().any(|v| self.needs_grad[v.0]);
        // Without a gradient to compute, the cache (every gate of every step) is dropped at once.
        let saved = if needs { Some(out) } else { None };
        let yv = self.push(y, &[x, h0, c0, w_ih, w_hh, bias], move |g, grads| {
            let out = saved.expect("a recorded lstm keeps its cache");
            let d = lstm::layer_backward(&xv, &h0v, &wih, &whh, &out, g, None, None)?;
            grads.add(x, d.dx)?;
            grads.add(h0, d.dh0)?;
            grads.add(c0, d.dc0)?;
            grads.add(w_ih, d.dw_ih)?;
            grads.add(w_hh, d.dw_hh)?;
            grads.add(bias, d.db)
        });
        Ok((yv, h_last, c_last))
    }

    /// Mean softmax cross-entropy of `logits [N, V]` against labels `[N]`, a scalar.
    pub fn softmax_xent(&mut self, logits: Var, targets: &Tensor) -> Result<Var> {
        if !self.needs_grad[logits.0] {
            // Nothing to differentiate (evaluation): the loss alone.
            let l = loss::softmax_xent_value(self.value(logits), targets)?;
            return Ok(self.push(Tensor::scalar(l as f32), &[logits], |_, _| Ok(())));
        }
        let (l, grad) = loss::softmax_xent(self.value(logits), targets)?;
        Ok(self.push(Tensor::scalar(l as f32), &[logits], move |g, grads| grads.add(logits, scale(&grad, g.item()?)?)))
    }

    /// The fused distillation loss (see `ops::softmax_kl`): a scalar on the tape and its parts.
    /// Teachers are plain tensors: they are never differentiated.
    pub fn softmax_kl(&mut self, student: Var, teachers: &[Tensor], targets: Option<&Tensor>, p: DistillParams) -> Result<(Var, DistillLoss)> {
        let (l, grad) = softmax_kl::softmax_kl(self.value(student), teachers, targets, p)?;
        let v = self.push(Tensor::scalar(l.total as f32), &[student], move |g, grads| grads.add(student, scale(&grad, g.item()?)?));
        Ok((v, l))
    }

    /// Mean binary cross-entropy of logits against soft targets in [0, 1], a scalar.
    pub fn bce_with_logits(&mut self, logits: Var, targets: &Tensor) -> Result<Var> {
        let (l, grad) = loss::bce_with_logits(self.value(logits), targets)?;
        Ok(self.push(Tensor::scalar(l as f32), &[logits], move |g, grads| grads.add(logits, scale(&grad, g.item()?)?)))
    }

    /// Walk the tape backward from a scalar. Each rule runs once, so a graph is differentiated once.
    pub fn backward(&mut self, loss: Var) -> Result<Grads> {
        if self.value(loss).numel() != 1 {
            bail!(Shape, "backward needs a scalar loss, got shape {:?}", self.value(loss).shape());
        }
        if !self.recording {
            bail!(Invalid, "backward on a no_grad graph: nothing was recorded");
        }
        let n = self.values.len();
        let shapes = self.values.iter().map(|v| v.shape().to_vec()).collect();
        let mut grads = Grads { grads: vec![None; n], rows: vec![Vec::new(); n], shapes, needs: self.needs_grad.clone() };
        grads.add(loss, Tensor::full_on(self.value(loss).shape(), 1.0, self.value(loss).device())?)?;
        for i in (0..=loss.0).rev() {
            if let Some(rule) = self.backward[i].take() {
                grads.densify(i)?;
                if let Some(g) = grads.grads[i].take() {
                    rule(&g, &mut grads)?;
                }
            }
        }
        Ok(grads)
    }

    /// Add the gradients of the parameters used in this graph into the store.
    pub fn accumulate_grads(&self, grads: &Grads, store: &mut ParamStore) -> Result<()> {
        for (v, name) in &self.params {
            if let Some(g) = grads.get(*v) {
                store.accumulate_grad(name, g)?;
            }
            for (ids, rows) in grads.rows(*v) {
                store.accumulate_rows(name, ids, rows)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_rule_through_shared_input() {
        // y = sum(x * x + x)  => dy/dx = 2x + 1
        let mut g = Graph::new();
        let x = g.leaf(Tensor::from_f32(vec![1.0, -2.0, 3.0], &[3]).unwrap());
        let xx = g.mul(x, x).unwrap();
        let s = g.add(xx, x).unwrap();
        let y = g.sum(s).unwrap();
        let grads = g.backward(y).unwrap();
        assert_eq!(grads.get(x).unwrap().f32s().unwrap(), &[3.0, -3.0, 7.0]);
    }

    #[test]
    fn no_grad_records_nothing_and_refuses_backward() {
        let mut g = Graph::no_grad();
        let x = g.leaf(Tensor::full(&[2], 1.0));
        let y = g.sum(x).unwrap();
        assert!(g.backward.iter().all(|b| b.is_none()));
        assert!(g.backward(y).is_err());
    }

    #[test]
    fn constants_get_no_gradient() {
        let mut g = Graph::new();
        let x = g.constant(Tensor::full(&[2], 1.0));
        let w = g.leaf(Tensor::full(&[2], 3.0));
        let p = g.mul(x, w).unwrap();
        let y = g.sum(p).unwrap();
        let grads = g.backward(y).unwrap();
        assert!(grads.get(x).is_none());
        assert_eq!(grads.get(w).unwrap().f32s().unwrap(), &[1.0, 1.0]);
    }

    #[test]
    fn backward_of_non_scalar_names_shape() {
        let mut g = Graph::new();
        let x = g.leaf(Tensor::zeros(&[2, 2]));
        assert!(g.backward(x).unwrap_err().to_string().contains("[2, 2]"));
    }
}
