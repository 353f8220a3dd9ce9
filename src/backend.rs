//! The backend context: how ops run, passed down by the caller instead of read from process-wide
//! switches. A [`Graph`](crate::Graph) carries one and hands it to every op it records (forward
//! and backward); a trainer builds its run's from the run options (`--threads`, `--cpu-bf16`,
//! `--matmul-f32`, `--deterministic`) and the environment's kernel choices
//! ([`Backend::from_env`]). Two graphs in one process may run with different contexts at the same
//! time: nothing is shared but the devices.

use crate::cuda::{Gemm, MatmulPrecision};

/// Options of the CPU and GPU backends for the ops of one graph or run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backend {
    /// CPU threads for the products and the losses (0: every core). Results do not depend on it,
    /// only speed; processes sharing one machine should split its cores between them.
    pub threads: usize,
    /// The CPU's matrix products on operands rounded to bf16 with f32 accumulation (the GPU's
    /// default numerics; see [`crate::ops::matmul::bf16gemm`]), instead of f32.
    pub cpu_bf16: bool,
    /// GPU results bitwise identical run to run: the embedding backward adds rows that share an id
    /// in position order (a host-sorted plan, bitwise the CPU twin) instead of with atomics.
    pub deterministic: bool,
    /// How f32 matrix products run on the GPU.
    pub matmul: MatmulPrecision,
    /// Which GPU kernel runs a bf16 product, and its options.
    pub gemm: Gemm,
}

impl Default for Backend {
    /// Every core, f32 CPU products, GPU products on bf16 operands, atomics in the embedding
    /// backward, the automatic kernel choice.
    fn default() -> Self {
        Backend { threads: 0, cpu_bf16: false, deterministic: false, matmul: MatmulPrecision::Bf16, gemm: Gemm::default() }
    }
}

impl Backend {
    /// The defaults with the GPU kernel choices of the environment (`CODISTILL_MATMUL_KERNEL`,
    /// `CODISTILL_SPLIT_K=0`, `CODISTILL_WGMMA_MN=0`; see [`Gemm::from_env`]), as the CLI runs; a
    /// value those variables do not take is an error naming it.
    pub fn from_env() -> crate::Result<Self> {
        Ok(Backend { gemm: Gemm::from_env()?, ..Backend::default() })
    }

    /// The CPU thread count: `threads`, or the machine's cores for 0.
    pub fn cpu_threads(&self) -> usize {
        match self.threads {
            0 => machine_cores(),
            n => n,
        }
    }
}

/// The cores this process may run on (asked of the OS once: `available_parallelism` reads the
/// affinity mask and cgroup files on Linux, too slow for every product).
pub fn machine_cores() -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))
}
