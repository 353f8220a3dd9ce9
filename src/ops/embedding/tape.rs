//! The tape rule of `embedding`: its [`Graph`] method, which runs the op forward and records how its
//! output's gradient reaches its inputs. Part of the autograd layer (see docs/ARCHITECTURE.md).

use crate::autograd::{Graph, Var};
use crate::ops::embedding;
use crate::tensor::Tensor;
use crate::Result;

impl Graph {
    /// Rows of `table [V, D]` for `ids` (i32): `[ids.numel(), D]`.
    pub fn embedding(&mut self, table: Var, ids: &Tensor) -> Result<Var> {
        let out = embedding::gather(self.value(table), ids)?;
        let ids = ids.reshape(&[ids.numel()])?;
        Ok(self.push(out, &[table], move |g, grads| {
            grads.add_rows(table, ids, g.clone());
            Ok(())
        }))
    }
}
