//! The tape rule of `matmul`: its [`Graph`] method, which runs the op forward and records how its
//! output's gradient reaches its inputs. Part of the autograd layer (see docs/ARCHITECTURE.md).

use crate::autograd::{Graph, Var};
use crate::ops::matmul;
use crate::Result;

impl Graph {
    /// `a @ b` for 2-D tensors.
    pub fn matmul(&mut self, a: Var, b: Var) -> Result<Var> {
        let (av, bv) = (self.value(a).clone(), self.value(b).clone());
        let be = *self.backend();
        let out = matmul::matmul(&be, &av, false, &bv, false)?;
        Ok(self.push(out, &[a, b], move |g, grads| {
            if grads.wants(a) {
                grads.add(a, matmul::matmul(&be, g, false, &bv, true)?)?;
            }
            if grads.wants(b) {
                grads.add(b, matmul::matmul(&be, &av, true, g, false)?)?;
            }
            Ok(())
        }))
    }
}
