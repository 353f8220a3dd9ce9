//! One file per op family, named as its kernel in `kernels/` will be (`lstm.rs` and `lstm.cu`):
//! the op's contract, the tensor-level entry that checks shapes and dispatches on the device, and
//! the CPU twin that is the reference for the GPU kernel. Backward rules for the tape live in
//! `autograd.rs`; the heavy ones (LSTM, softmax-KL) call the backward functions here.

pub mod dropout;
pub mod elementwise;
pub mod embedding;
pub mod loss;
pub mod lstm;
pub mod math;
pub mod matmul;
pub mod optim;
pub mod quant;

pub mod reduce;
pub mod relation;
pub mod softmax;
pub mod softmax_kl;

use crate::tensor::{Device, Tensor};
use crate::{bail, Result};

/// All tensors on one device, or an error naming the two that differ.
pub(crate) fn same_device(ts: &[(&str, &Tensor)]) -> Result<Device> {
    let d = ts[0].1.device();
    for (name, t) in &ts[1..] {
        if t.device() != d {
            bail!(Device, "{} is on {} but {name} is on {}", ts[0].0, d, t.device());
        }
    }
    Ok(d)
}

/// A raw pointer to an output buffer that threads write disjoint parts of (the CPU product
/// kernels split their output between scoped threads).
#[derive(Clone, Copy)]
pub(crate) struct SendPtr(pub(crate) *mut f32);
// SAFETY: only handed to threads that write disjoint parts of the buffer, inside a scope that ends
// before the buffer's borrow does (`packed::PackedB::gemm_scaled`, `bf16gemm::Bf16B::gemm`).
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}
impl SendPtr {
    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }
}
