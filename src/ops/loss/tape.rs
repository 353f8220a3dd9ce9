//! The tape rule of `loss`: its [`Graph`] method, which runs the op forward and records how its
//! output's gradient reaches its inputs. Part of the autograd layer (see docs/ARCHITECTURE.md).

use crate::autograd::scale;
use crate::autograd::{Graph, Var};
use crate::ops::loss;
use crate::tensor::Tensor;
use crate::Result;

impl Graph {
    /// Mean softmax cross-entropy of `logits [N, V]` against labels `[N]`, a scalar.
    pub fn softmax_xent(&mut self, logits: Var, targets: &Tensor) -> Result<Var> {
        if !self.needs_grad(logits) {
            // Nothing to differentiate (evaluation): the loss alone.
            let l = loss::softmax_xent_value(self.backend(), self.value(logits), targets)?;
            return Ok(self.push(Tensor::scalar(l as f32), &[logits], |_, _| Ok(())));
        }
        let (l, grad) = loss::softmax_xent(self.backend(), self.value(logits), targets)?;
        Ok(self.push(Tensor::scalar(l as f32), &[logits], move |g, grads| grads.add(logits, scale(&grad, g.item()?)?)))
    }

    /// Mean binary cross-entropy of logits against soft targets in [0, 1], a scalar.
    pub fn bce_with_logits(&mut self, logits: Var, targets: &Tensor) -> Result<Var> {
        let (l, grad) = loss::bce_with_logits(self.value(logits), targets)?;
        Ok(self.push(Tensor::scalar(l as f32), &[logits], move |g, grads| grads.add(logits, scale(&grad, g.item()?)?)))
    }

    /// A click model's distillation term (see `ops::loss::binary_divergence`), a scalar. The
    /// teachers' predictions are a plain tensor: never differentiated.
    pub fn binary_divergence(&mut self, logits: Var, teacher: &Tensor, div: crate::ops::softmax_kl::Divergence) -> Result<Var> {
        let (l, grad) = loss::binary_divergence(self.value(logits), teacher, div)?;
        Ok(self.push(Tensor::scalar(l as f32), &[logits], move |g, grads| grads.add(logits, scale(&grad, g.item()?)?)))
    }
}
