//! Named parameters and their gradients. A checkpoint is this map from name to tensor.

use crate::ops::elementwise::axpy;
use crate::tensor::Tensor;
use crate::{bail, Result};
use std::collections::BTreeMap;

#[derive(Clone, Debug)]
pub struct Param {
    pub value: Tensor,
    /// Same shape as `value`; accumulated by `Graph::accumulate_grads`, cleared by `zero_grads`.
    pub grad: Tensor,
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
        self.params.insert(name.to_string(), Param { value, grad });
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
        axpy(1.0, g, &mut p.grad)
    }

    pub fn zero_grads(&mut self) {
        for p in self.params.values_mut() {
            p.grad = Tensor::zeros(p.value.shape());
        }
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
