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

use crate::backend::Backend;
use crate::ops::elementwise::{self, Unary};
use crate::ops::embedding;
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
    backend: Backend,
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

    pub(crate) fn add_rows(&mut self, v: Var, ids: Tensor, rows: Tensor) {
        if self.needs[v.0] {
            self.rows[v.0].push((ids, rows));
        }
    }

    /// Fold row-sparse parts into the dense gradient (for the rare table that is not a leaf).
    fn densify(&mut self, i: usize) -> Result<()> {
        for (ids, r) in std::mem::take(&mut self.rows[i]) {
            let mut d = Tensor::zeros_on(&self.shapes[i], r.device())?;
            embedding::scatter_add(&self.backend, &r, &ids, &mut d)?;
            self.add(Var(i), d)?;
        }
        Ok(())
    }

    /// Whether anything upstream of `v` wants a gradient (lets backward skip work, e.g. dx of data).
    pub(crate) fn wants(&self, v: Var) -> bool {
        self.needs[v.0]
    }

    pub(crate) fn add(&mut self, v: Var, g: Tensor) -> Result<()> {
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
    backend: Backend,
}

impl Default for Graph {
    fn default() -> Self {
        Self::new()
    }
}

/// `g * s`, for rules that scale a saved gradient by the incoming scalar one.
pub(crate) fn scale(g: &Tensor, s: f32) -> Result<Tensor> {
    elementwise::unary(Unary::Scale(s), g)
}

impl Graph {
    /// A graph that records backward rules, its ops run with the default [`Backend`].
    pub fn new() -> Self {
        Graph { values: Vec::new(), needs_grad: Vec::new(), backward: Vec::new(), params: Vec::new(), recording: true, backend: Backend::default() }
    }

    /// The same graph with its ops (forward and backward) run with `backend`.
    pub fn with_backend(mut self, backend: Backend) -> Self {
        self.backend = backend;
        self
    }

    /// The backend context the graph's ops run with.
    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// A graph that records nothing: for evaluation and teachers' forward passes.
    pub fn no_grad() -> Self {
        Graph { recording: false, ..Self::new() }
    }

    pub fn is_recording(&self) -> bool {
        self.recording
    }

    /// Whether `v` is recorded with a gradient to compute.
    pub(crate) fn needs_grad(&self, v: Var) -> bool {
        self.recording && self.needs_grad[v.0]
    }

    pub fn value(&self, v: Var) -> &Tensor {
        &self.values[v.0]
    }

    pub(crate) fn push(&mut self, value: Tensor, inputs: &[Var], rule: impl FnOnce(&Tensor, &mut Grads) -> Result<()> + 'static) -> Var {
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

    pub fn reshape(&mut self, x: Var, shape: &[usize]) -> Result<Var> {
        let old = self.value(x).shape().to_vec();
        let out = self.value(x).reshape(shape)?;
        Ok(self.push(out, &[x], move |g, grads| grads.add(x, g.reshape(&old)?)))
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
        let mut grads = Grads { grads: vec![None; n], rows: vec![Vec::new(); n], shapes, needs: self.needs_grad.clone(), backend: self.backend };
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
                store.accumulate_rows(&self.backend, name, ids, rows)?;
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
