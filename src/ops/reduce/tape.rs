//! The tape rule of `reduce`: its [`Graph`] method, which runs the op forward and records how its
//! output's gradient reaches its inputs. Part of the autograd layer (see docs/ARCHITECTURE.md).

use crate::autograd::{Graph, Var};
use crate::ops::elementwise::Unary;
use crate::ops::reduce;
use crate::tensor::Tensor;
use crate::Result;

impl Graph {
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
}
