//! The tape rule of `elementwise`: its [`Graph`] method, which runs the op forward and records how its
//! output's gradient reaches its inputs. Part of the autograd layer (see docs/ARCHITECTURE.md).

use super::{Binary, Unary};
use crate::autograd::{scale, Graph, Var};
use crate::ops::{elementwise, reduce};
use crate::Result;

impl Graph {
    /// `x [N, D] + bias [D]`.
    pub fn add_bias(&mut self, x: Var, bias: Var) -> Result<Var> {
        let out = elementwise::add_row_bias(self.value(x), self.value(bias))?;
        Ok(self.push(out, &[x, bias], move |g, grads| {
            if grads.wants(bias) {
                grads.add(bias, reduce::sum_rows(g)?)?;
            }
            grads.add(x, g.clone())
        }))
    }

    pub fn binary(&mut self, op: Binary, a: Var, b: Var) -> Result<Var> {
        let (av, bv) = (self.value(a).clone(), self.value(b).clone());
        let out = elementwise::binary(op, &av, &bv)?;
        Ok(self.push(out, &[a, b], move |g, grads| match op {
            Binary::Add => {
                grads.add(a, g.clone())?;
                grads.add(b, g.clone())
            }
            Binary::Sub => {
                grads.add(a, g.clone())?;
                if grads.wants(b) {
                    grads.add(b, scale(g, -1.0)?)?;
                }
                Ok(())
            }
            Binary::Mul => {
                if grads.wants(a) {
                    grads.add(a, elementwise::binary(Binary::Mul, g, &bv)?)?;
                }
                if grads.wants(b) {
                    grads.add(b, elementwise::binary(Binary::Mul, g, &av)?)?;
                }
                Ok(())
            }
        }))
    }

    pub fn add(&mut self, a: Var, b: Var) -> Result<Var> {
        self.binary(Binary::Add, a, b)
    }

    pub fn mul(&mut self, a: Var, b: Var) -> Result<Var> {
        self.binary(Binary::Mul, a, b)
    }

    pub fn unary(&mut self, op: Unary, x: Var) -> Result<Var> {
        let xv = self.value(x).clone();
        let out = elementwise::unary(op, &xv)?;
        let yv = out.clone();
        Ok(self.push(out, &[x], move |g, grads| grads.add(x, elementwise::unary_backward(op, &xv, &yv, g)?)))
    }

    pub fn relu(&mut self, x: Var) -> Result<Var> {
        self.unary(Unary::Relu, x)
    }

    pub fn sigmoid(&mut self, x: Var) -> Result<Var> {
        self.unary(Unary::Sigmoid, x)
    }

    pub fn tanh(&mut self, x: Var) -> Result<Var> {
        self.unary(Unary::Tanh, x)
    }
}
