//! Batching a token stream for truncated backpropagation through time.
//!
//! The stream is cut into `batch` contiguous lanes (the standard layout of Zaremba et al.), so that
//! window w of lane b continues window w - 1 of the same lane and the LSTM state can be carried.
//! Windows are time-major to match the LSTM layout: row `t * batch + b`.

use crate::tensor::Tensor;
use crate::{bail, Result};

#[derive(Clone, Debug)]
pub struct TokenLanes {
    lanes: Vec<Vec<u32>>,
    pub batch: usize,
    pub steps: usize,
}

impl TokenLanes {
    pub fn new(tokens: &[u32], batch: usize, steps: usize) -> Result<Self> {
        let per = tokens.len() / batch.max(1);
        if batch == 0 || steps == 0 || per < steps + 1 {
            bail!(Invalid, "{} tokens are too few for batch {batch} and {steps} steps (need at least {})", tokens.len(), batch * (steps + 1));
        }
        let lanes = (0..batch).map(|b| tokens[b * per..(b + 1) * per].to_vec()).collect();
        Ok(TokenLanes { lanes, batch, steps })
    }

    /// Number of whole windows in one pass over the lanes.
    pub fn windows(&self) -> usize {
        (self.lanes[0].len() - 1) / self.steps
    }

    /// Steps of the partial window after the whole ones (0: the lanes end on a window boundary).
    pub fn tail_steps(&self) -> usize {
        (self.lanes[0].len() - 1) % self.steps
    }

    /// Inputs and targets of the partial window after the whole ones, `[tail_steps * batch]`
    /// (none when `tail_steps` is 0): with it, every token of a lane after its first is a target.
    pub fn tail(&self) -> Result<Option<(Tensor, Tensor)>> {
        let r = self.tail_steps();
        if r == 0 {
            return Ok(None);
        }
        let start = self.windows() * self.steps;
        let (mut x, mut y) = (Vec::with_capacity(r * self.batch), Vec::with_capacity(r * self.batch));
        for t in 0..r {
            for lane in &self.lanes {
                x.push(lane[start + t] as i32);
                y.push(lane[start + t + 1] as i32);
            }
        }
        Ok(Some((Tensor::from_i32(x, &[r * self.batch])?, Tensor::from_i32(y, &[r * self.batch])?)))
    }

    /// Inputs and next-token targets of window `w`, each `[steps * batch]` (i32, time-major).
    pub fn window(&self, w: usize) -> Result<(Tensor, Tensor)> {
        if w >= self.windows() {
            bail!(Invalid, "window {w} is past the last of {} windows", self.windows());
        }
        let (n, start) = (self.steps * self.batch, w * self.steps);
        let (mut x, mut y) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for t in 0..self.steps {
            for lane in &self.lanes {
                x.push(lane[start + t] as i32);
                y.push(lane[start + t + 1] as i32);
            }
        }
        Ok((Tensor::from_i32(x, &[n])?, Tensor::from_i32(y, &[n])?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_time_major_and_continue_each_lane() {
        let toks: Vec<u32> = (0..20).collect();
        let l = TokenLanes::new(&toks, 2, 3).unwrap(); // lanes 0..10 and 10..20
        assert_eq!(l.windows(), 3);
        let (x, y) = l.window(1).unwrap();
        assert_eq!(x.i32s().unwrap(), &[3, 13, 4, 14, 5, 15]);
        assert_eq!(y.i32s().unwrap(), &[4, 14, 5, 15, 6, 16]);
        // Lanes of 10 tokens hold 9 targets: three windows of 3, no tail; with 4 steps, two
        // windows and a tail of one step (targets 9 and 19).
        assert!(l.tail().unwrap().is_none());
        let l4 = TokenLanes::new(&toks, 2, 4).unwrap();
        assert_eq!((l4.windows(), l4.tail_steps()), (2, 1));
        let (x, y) = l4.tail().unwrap().unwrap();
        assert_eq!((x.i32s().unwrap(), y.i32s().unwrap()), (&[8, 18][..], &[9, 19][..]));
        assert!(l.window(3).is_err());
        assert!(TokenLanes::new(&toks, 8, 3).is_err());
    }
}
