//! Named parameters and their gradients. A checkpoint is this map from name to tensor.

use crate::ops::elementwise::axpy;
use crate::ops::embedding::scatter_add;
use crate::tensor::Tensor;
use crate::{bail, Result};
use std::collections::BTreeMap;

/// Which part of a gradient may be non-zero: lets an embedding table of millions of rows be
/// cleared, clipped and updated at the cost of the rows a batch touched.
#[derive(Clone, Debug, PartialEq)]
pub enum GradState {
    /// No gradient since the last `zero_grads` (optimizers skip the parameter, as PyTorch does
    /// for a `None` grad).
    Zero,
    /// Any element may be non-zero.
    Dense,
    /// Only these rows (of a 2-D parameter) may be non-zero; may hold repeats.
    Rows(Vec<u32>),
}

#[derive(Clone, Debug)]
pub struct Param {
    pub value: Tensor,
    /// Same shape as `value`; accumulated by `Graph::accumulate_grads`, cleared by `zero_grads`.
    pub grad: Tensor,
    pub state: GradState,
}

impl Param {
    /// The touched rows, sorted and without repeats, when the gradient is row-sparse.
    pub fn touched_rows(&self) -> Option<Vec<u32>> {
        match &self.state {
            GradState::Rows(r) => {
                let mut r = r.clone();
                r.sort_unstable();
                r.dedup();
                Some(r)
            }
            _ => None,
        }
    }
}

/// Parameters by name, in name order (so iteration, checkpoints and norms are deterministic).
#[derive(Clone, Debug, Default)]
pub struct ParamStore {
    params: BTreeMap<String, Param>,
}

impl ParamStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Add a parameter; a name may be used once.
    pub fn insert(&mut self, name: &str, value: Tensor) -> Result<()> {
        if self.params.contains_key(name) {
            bail!(Invalid, "parameter {name:?} is already defined");
        }
        let grad = Tensor::zeros(value.shape());
        self.params.insert(name.to_string(), Param { value, grad, state: GradState::Zero });
        Ok(())
    }

    pub fn get(&self, name: &str) -> Result<&Tensor> {
        match self.params.get(name) {
            Some(p) => Ok(&p.value),
            None => bail!(Invalid, "no parameter named {name:?}"),
        }
    }

    pub fn param(&self, name: &str) -> Result<&Param> {
        match self.params.get(name) {
            Some(p) => Ok(p),
            None => bail!(Invalid, "no parameter named {name:?}"),
        }
    }

    pub fn param_mut(&mut self, name: &str) -> Result<&mut Param> {
        match self.params.get_mut(name) {
            Some(p) => Ok(p),
            None => bail!(Invalid, "no parameter named {name:?}"),
        }
    }

    /// Replace a value, keeping the shape (loading a checkpoint, swapping in a teacher).
    pub fn set(&mut self, name: &str, value: Tensor) -> Result<()> {
        let p = self.param_mut(name)?;
        value.expect_shape(&format!("parameter {name:?}"), p.value.shape())?;
        p.value = value;
        Ok(())
    }

    pub fn accumulate_grad(&mut self, name: &str, g: &Tensor) -> Result<()> {
        let p = self.param_mut(name)?;
        axpy(1.0, g, &mut p.grad)?;
        p.state = GradState::Dense;
        Ok(())
    }

    /// `grad[ids[i]] += rows[i]`: the embedding backward, without a dense temporary.
    pub fn accumulate_rows(&mut self, name: &str, ids: &Tensor, rows: &Tensor) -> Result<()> {
        let p = self.param_mut(name)?;
        scatter_add(rows, ids, &mut p.grad)?;
        match &mut p.state {
            GradState::Dense => {}
            GradState::Rows(r) => r.extend(ids.i32s()?.iter().map(|&i| i as u32)),
            st @ GradState::Zero => *st = GradState::Rows(ids.i32s()?.iter().map(|&i| i as u32).collect()),
        }
        Ok(())
    }

    /// Clear every gradient, touching only the rows a sparse gradient used.
    pub fn zero_grads(&mut self) {
        for p in self.params.values_mut() {
            let width = if p.grad.rank() == 2 { p.grad.dim(1) } else { 1 };
            let state = std::mem::replace(&mut p.state, GradState::Zero);
            let g = p.grad.f32s_mut().expect("gradients are f32 on the cpu");
            match state {
                GradState::Zero => {}
                GradState::Dense => g.fill(0.0),
                GradState::Rows(rows) => {
                    for r in rows {
                        g[r as usize * width..(r as usize + 1) * width].fill(0.0);
                    }
                }
            }
        }
    }

    /// The weights without gradient buffers (a teacher's copy: forward passes only). Values are
    /// shared, so this copies nothing until the original is updated; gradients are empty, so
    /// accumulating into a snapshot is a shape error rather than a silent copy.
    pub fn weights_only(&self) -> ParamStore {
        let params = self.params.iter().map(|(k, p)| (k.clone(), Param { value: p.value.clone(), grad: Tensor::zeros(&[0]), state: GradState::Zero })).collect();
        ParamStore { params }
    }

    /// Copy the weights of `src` (same names and shapes) into this store's own buffers, in place
    /// when no one else holds them: a publish into a reused standby buffer allocates nothing.
    pub fn copy_weights_from(&mut self, src: &ParamStore) -> Result<()> {
        for (name, p) in self.params.iter_mut() {
            let from = src.get(name)?;
            from.expect_shape(&format!("parameter {name:?}"), p.value.shape())?;
            p.value.f32s_mut()?.copy_from_slice(from.f32s()?);
        }
        Ok(())
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &Param)> {
        self.params.iter()
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&String, &mut Param)> {
        self.params.iter_mut()
    }

    pub fn names(&self) -> Vec<String> {
        self.params.keys().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.params.len()
    }

    pub fn is_empty(&self) -> bool {
        self.params.is_empty()
    }

    /// Total number of scalar parameters.
    pub fn num_elements(&self) -> usize {
        self.params.values().map(|p| p.value.numel()).sum()
    }
}
