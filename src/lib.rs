//! codistill: a training engine for knowledge distillation and online codistillation
//! (Anil et al., ICLR 2018).
//!
//! Layers, bottom up: `ops` (one file per op family: contract, CPU twin, device dispatch),
//! `tensor`, `autograd` (a tape over coarse ops), `nn` and `optim`, `data`. See `README.md`.

pub mod autograd;
pub mod checkpoint;
pub mod config;
pub mod cuda;
pub mod data;
pub mod distill;
mod error;
pub mod hash;
pub mod nn;
pub mod ops;
pub mod optim;
pub mod params;
mod rng;
pub mod tensor;
#[cfg(test)]
mod testdir;
pub mod train;

pub use autograd::{Grads, Graph, Var};
pub use error::{Error, Result};
pub use ops::softmax_kl::{DistillLoss, DistillParams};
pub use params::ParamStore;
pub use rng::{hash_uniform, Rng};
pub use tensor::{DType, Device, Tensor};

/// Tunes glibc's allocator for training loops: buffers freed at the end of a step are kept for the
/// next instead of being unmapped (glibc serves blocks over 128 KiB-32 MiB with `mmap` and returns
/// them on free, so every step's logits and gradients were fresh pages to fault in and zero:
/// a third of a Brown language-model step's CPU time was the kernel's). Call once at the start of
/// a process, before threads start; the `codistill` binary does. A no-op off glibc.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before other threads allocate.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}
