//! The tape rule of `softmax_kl`: its [`Graph`] method, which runs the op forward and records how its
//! output's gradient reaches its inputs. Part of the autograd layer (see docs/ARCHITECTURE.md).

use super::{DistillLoss, DistillParams};
use crate::autograd::scale;
use crate::autograd::{Graph, Var};
use crate::ops::softmax_kl;
use crate::tensor::Tensor;
use crate::Result;

impl Graph {
    /// The fused distillation loss (see `ops::softmax_kl`): a scalar on the tape and its parts.
    /// Teachers are plain tensors: they are never differentiated.
    pub fn softmax_kl(&mut self, student: Var, teachers: &[Tensor], targets: Option<&Tensor>, p: DistillParams) -> Result<(Var, DistillLoss)> {
        let (l, grad) = softmax_kl::softmax_kl(self.backend(), self.value(student), teachers, targets, p)?;
        let v = self.push(Tensor::scalar(l.total as f32), &[student], move |g, grads| grads.add(student, scale(&grad, g.item()?)?));
        Ok((v, l))
    }
}
