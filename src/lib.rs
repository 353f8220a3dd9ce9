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

static CPU_THREADS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Sets how many threads the CPU backend's products and losses use, for the whole process (0:
/// every core, the default). Results do not depend on it, only speed; several training processes
/// sharing one machine (one process per model) should split its cores between them. The trainers
/// set it from `--threads`.
pub fn set_cpu_threads(n: usize) {
    CPU_THREADS.store(n, std::sync::atomic::Ordering::Relaxed);
}

/// The CPU backend's thread count: as set by [`set_cpu_threads`], else the machine's cores.
pub fn cpu_threads() -> usize {
    match CPU_THREADS.load(std::sync::atomic::Ordering::Relaxed) {
        0 => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        n => n,
    }
}

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
