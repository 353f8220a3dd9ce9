//! The tape rule of `softmax`: its [`Graph`] method. Part of the autograd layer (see
//! docs/ARCHITECTURE.md).

use super::{softmax_rows, softmax_rows_backward};
use crate::autograd::{Graph, Var};
use crate::Result;

impl Graph {
    /// The softmax of each row of `x` over its last dimension (see [`crate::ops::softmax`]).
    pub fn softmax(&mut self, x: Var) -> Result<Var> {
        let y = softmax_rows(self.value(x))?;
        let saved = y.clone();
        Ok(self.push(y, &[x], move |g, grads| grads.add(x, softmax_rows_backward(&saved, g)?)))
    }
}
