//! The tape rule of `dropout`: its [`Graph`] method, which runs the op forward and records how its
//! output's gradient reaches its inputs. Part of the autograd layer (see docs/ARCHITECTURE.md).

use crate::autograd::{Graph, Var};
use crate::ops::dropout;
use crate::Result;

impl Graph {
    /// Inverted dropout with a counter-based mask; backward applies the same mask to the gradient.
    pub fn dropout(&mut self, x: Var, p: f32, seed: u64) -> Result<Var> {
        if p == 0.0 {
            return Ok(x);
        }
        let out = dropout::dropout(self.value(x), p, seed)?;
        Ok(self.push(out, &[x], move |g, grads| grads.add(x, dropout::dropout(g, p, seed)?)))
    }
}
