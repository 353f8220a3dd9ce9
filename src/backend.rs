//! The backend context: how ops run, passed down by the caller instead of read from process-wide
//! switches. A [`Graph`](crate::Graph) carries one and hands it to every op it records (forward
//! and backward); a trainer builds its run's from the run options (`--threads`, `--cpu-bf16`,
//! `--matmul-f32`, `--deterministic`) and the environment's kernel choices
//! ([`Backend::from_env`]: `CODISTILL_MATMUL_KERNEL`, `CODISTILL_SPLIT_K`, `CODISTILL_WGMMA_MN`,
//! `CODISTILL_LSTM`). Two graphs in one process may run with different contexts at the same
//! time: nothing is shared but the devices.

use crate::cuda::{Gemm, MatmulPrecision};
use crate::{bail, Result};

/// How an LSTM layer runs its recurrence on the GPU ([`Backend::lstm`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LstmKernel {
    /// One product and one cell kernel per time step (the default; measured on an H100).
    #[default]
    Steps,
    /// One cooperative launch per layer and window, each block holding its slice of `W_hh` on
    /// chip for every step (`ops::lstm::persistent`), where it fits (bf16 products, the hidden size
    /// and batch, the GPU's multiprocessors and shared memory); the step layer elsewhere, said once
    /// on stderr per shape. Opt-in (`CODISTILL_LSTM=persistent`) until it has passed on a GPU.
    Persistent,
}

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
    /// How an LSTM layer runs its recurrence on the GPU.
    pub lstm: LstmKernel,
}

impl Default for Backend {
    /// Every core, f32 CPU products, GPU products on bf16 operands, atomics in the embedding
    /// backward, the automatic kernel choice.
    fn default() -> Self {
        Backend { threads: 0, cpu_bf16: false, deterministic: false, matmul: MatmulPrecision::Bf16, gemm: Gemm::default(), lstm: LstmKernel::Steps }
    }
}

impl Backend {
    /// The defaults with the GPU kernel choices of the environment (`CODISTILL_MATMUL_KERNEL`,
    /// `CODISTILL_SPLIT_K=0`, `CODISTILL_WGMMA_MN=0`; see [`Gemm::from_env`]; `CODISTILL_LSTM=steps`
    /// or `persistent`), as the CLI runs; a value those variables do not take is an error naming it.
    pub fn from_env() -> Result<Self> {
        Ok(Backend { gemm: Gemm::from_env()?, lstm: lstm_kernel(std::env::var("CODISTILL_LSTM").ok().as_deref())?, ..Backend::default() })
    }

    /// The CPU thread count: `threads`, or the machine's cores for 0.
    pub fn cpu_threads(&self) -> usize {
        match self.threads {
            0 => machine_cores(),
            n => n,
        }
    }
}

/// The LSTM kernel a `CODISTILL_LSTM` value names (unset: the default).
fn lstm_kernel(v: Option<&str>) -> Result<LstmKernel> {
    match v {
        None | Some("steps") => Ok(LstmKernel::Steps),
        Some("persistent") => Ok(LstmKernel::Persistent),
        Some(v) => bail!(Invalid, "CODISTILL_LSTM={v:?}: expected steps (the default) or persistent"),
    }
}

/// The cores this process may run on (asked of the OS once: `available_parallelism` reads the
/// affinity mask and cgroup files on Linux, too slow for every product).
pub fn machine_cores() -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lstm_kernel_from_the_environment_and_its_error() {
        assert_eq!(lstm_kernel(None).unwrap(), LstmKernel::Steps);
        assert_eq!(lstm_kernel(Some("steps")).unwrap(), LstmKernel::Steps);
        assert_eq!(lstm_kernel(Some("persistent")).unwrap(), LstmKernel::Persistent);
        let e = lstm_kernel(Some("cudnn")).unwrap_err().to_string();
        assert!(e.contains("CODISTILL_LSTM=\"cudnn\"") && e.contains("persistent"), "{e}");
    }
}
