//! The tape rule of `lstm`: its [`Graph`] method, which runs the op forward and records how its
//! output's gradient reaches its inputs. Part of the autograd layer (see docs/ARCHITECTURE.md).

use crate::autograd::{Graph, Var};
use crate::ops::lstm;
use crate::tensor::Tensor;
use crate::Result;

impl Graph {
    /// One LSTM layer over `steps` time steps (see `ops::lstm` for the layout). Returns the
    /// outputs `[T*B, H]` on the tape and the final state as plain tensors: the state carried to
    /// the next window is detached, as truncated backpropagation through time requires.
    #[allow(clippy::too_many_arguments)]
    pub fn lstm(&mut self, x: Var, h0: Var, c0: Var, w_ih: Var, w_hh: Var, bias: Var, steps: usize) -> Result<(Var, Tensor, Tensor)> {
        let (xv, h0v) = (self.value(x).clone(), self.value(h0).clone());
        let (wih, whh) = (self.value(w_ih).clone(), self.value(w_hh).clone());
        let be = *self.backend();
        let out = lstm::layer_forward(&be, &xv, &h0v, self.value(c0), &wih, &whh, self.value(bias), steps)?;
        let (y, h_last, c_last) = (out.y.clone(), out.h_last.clone(), out.c_last.clone());
        let needs = [x, h0, c0, w_ih, w_hh, bias].iter().any(|&v| self.needs_grad(v));
        // Without a gradient to compute, the cache (every gate of every step) is dropped at once.
        let saved = if needs { Some(out) } else { None };
        let yv = self.push(y, &[x, h0, c0, w_ih, w_hh, bias], move |g, grads| {
            let out = saved.expect("a recorded lstm keeps its cache");
            let d = lstm::layer_backward(&be, &xv, &h0v, &wih, &whh, &out, g, None, None)?;
            grads.add(x, d.dx)?;
            grads.add(h0, d.dh0)?;
            grads.add(c0, d.dc0)?;
            grads.add(w_ih, d.dw_ih)?;
            grads.add(w_hh, d.dw_hh)?;
            grads.add(bias, d.db)
        });
        Ok((yv, h_last, c_last))
    }
}
