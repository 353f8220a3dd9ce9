//! The tape rule of `relation`: its [`Graph`] method. Part of the autograd layer (see
//! docs/ARCHITECTURE.md).

use super::{covariance_gap, hidden_loss, HiddenLoss};
use crate::autograd::scale;
use crate::autograd::{Graph, Var};
use crate::tensor::Tensor;
use crate::Result;

impl Graph {
    /// A loss between the student's hidden states `h [N, D]` and the teacher's (a constant), a
    /// scalar (see [`crate::ops::relation`]).
    pub fn hidden_loss(&mut self, kind: HiddenLoss, h: Var, teacher: &Tensor) -> Result<Var> {
        let (l, grad) = hidden_loss(self.backend(), kind, self.value(h), teacher)?;
        Ok(self.push(Tensor::scalar(l as f32), &[h], move |g, grads| grads.add(h, scale(&grad, g.item()?)?)))
    }

    /// `|cov(h) - target|_F` over the batch `h [N, W]` against a recorded covariance (see
    /// [`crate::ops::relation::covariance_gap`]), a scalar.
    pub fn covariance_gap(&mut self, h: Var, target: &Tensor) -> Result<Var> {
        let (l, grad) = covariance_gap(self.value(h), target)?;
        Ok(self.push(Tensor::scalar(l as f32), &[h], move |g, grads| grads.add(h, scale(&grad, g.item()?)?)))
    }
}
