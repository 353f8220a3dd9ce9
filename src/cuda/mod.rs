//! The CUDA backend: the driver loaded at run time, our PTX embedded in the binary, a caching
//! device allocator, and what the launchers share (`launch.rs`; each op's launcher is in its folder,
//! `ops/<op>/cuda.rs`, with the contract of its CPU twin in `ops/<op>/mod.rs`).
//!
//! `cudarc` is built with dynamic loading, so this crate builds and runs its CPU tests on machines
//! with no CUDA at all. [`probe`] checks for the driver library first (cudarc would panic without
//! it) and then for a device; every entry point goes through it, so a missing GPU is an `Error`
//! that says why, never a panic.
//!
//! One compute stream per device, and a copy stream for the checkpoint exchange's transfers
//! ([`HostMirror`], [`Gpu::upload_on_copy_stream`]), ordered against compute by events. The allocator hands freed blocks back to later allocations of
//! the same size class on that stream, so a training step that repeats its shapes calls
//! `cuMemAlloc` only in its first step ([`Gpu::stats`] counts both).

pub mod launch;

use crate::{bail, Error, Result};
use cudarc::driver::{result, sys, CudaContext, CudaEvent, CudaFunction, CudaModule, CudaStream};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// Our kernels' PTX (built by `tools/ptx.py` from `kernels/`), embedded at compile time.
/// A kernel of the embedded PTX: its module (`ptx/<module>.ptx`) and its entry name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Kernel {
    pub module: &'static str,
    pub name: &'static str,
}

/// Every kernel of `ptx/`, named at build time from the PTX itself (build.rs): a launcher that
/// names a kernel the PTX lacks does not compile.
pub mod k {
    use super::Kernel;
    include!(concat!(env!("OUT_DIR"), "/kernel_names.rs"));
}

const MODULES: &[(&str, &str)] = &[
    ("dropout", include_str!("../../ptx/dropout.ptx")),
    ("elementwise", include_str!("../../ptx/elementwise.ptx")),
    ("embedding", include_str!("../../ptx/embedding.ptx")),
    ("lstm", include_str!("../../ptx/lstm.ptx")),
    ("matmul", include_str!("../../ptx/matmul.ptx")),
    ("matmul_sm90a", include_str!("../../ptx/matmul_sm90a.ptx")),
    ("optim", include_str!("../../ptx/optim.ptx")),
    ("reduce", include_str!("../../ptx/reduce.ptx")),
    ("softmax_kl", include_str!("../../ptx/softmax_kl.ptx")),
];

impl From<result::DriverError> for Error {
    fn from(e: result::DriverError) -> Self {
        Error::Device(format!("CUDA driver: {e:?}"))
    }
}

/// Whether the CUDA driver library can be loaded. Safe to call anywhere.
pub fn driver_present() -> bool {
    // SAFETY: only tries to open the library by name.
    unsafe { sys::is_culib_present() }
}

/// The number of CUDA devices, or an error that says why there is none usable.
pub fn probe() -> Result<usize> {
    static PROBE: OnceLock<std::result::Result<usize, String>> = OnceLock::new();
    PROBE
        .get_or_init(|| {
            if !driver_present() {
                return Err("no CUDA driver (libcuda.so) was found on this machine".into());
            }
            result::init().map_err(|e| format!("the CUDA driver failed to initialise: {e:?}"))?;
            let n = result::device::get_count().map_err(|e| format!("cannot count CUDA devices: {e:?}"))?;
            if n <= 0 {
                return Err("the CUDA driver is present but reports no device".into());
            }
            Ok(n as usize)
        })
        .clone()
        .map_err(Error::Device)
}

/// How f32 matrix products run on the GPU ([`crate::Backend::matmul`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatmulPrecision {
    /// Operands rounded to bf16, products on the tensor cores, fp32 accumulation (the default;
    /// about 1e-2 relative to the fp32 product, like TF32 or bf16 autocast in PyTorch).
    Bf16,
    /// fp32 on the CUDA cores: the exact path, for checking (several times slower).
    F32,
}

/// Which tensor-core kernel runs a bf16 matrix product on the GPU ([`Gemm::kernel`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatmulKernel {
    /// The default: on Hopper (compute capability 9.0) the `WgmmaTma` kernel for products of at
    /// least 128 x 128 x 64 whose inner dimension is a multiple of 8, `mma.sync` (split-K where its
    /// output tiles alone would leave the device idle) for the rest and on other GPUs. Measured on
    /// an H100 (BENCHMARKS.md): the TMA kernel is the fastest of ours on every large trainer
    /// product, `mma.sync` with split-K on the LSTM's 64-row step products.
    Auto,
    /// Always `mma.sync` (`kernels/matmul.cu`), on any GPU from sm_80.
    MmaSync,
    /// Always the `wgmma` kernel fed by the tensor copy engine with a producer warpgroup
    /// (`kernels/matmul_sm90a.cu`, `gemm_wgmma_tma`): an error where it cannot run (not a Hopper
    /// GPU, or an inner dimension that is not a multiple of 8). For tests and benchmarks.
    ///
    /// The cp.async `wgmma` kernel that preceded it (once `wgmma` and `auto-wgmma` here) is in the
    /// kernel lab (`dev/`, with its own validation and benchmark), not in the library.
    WgmmaTma,
    /// The same kernel made persistent (`gemm_wgmma_tma_persistent*`: one block per multiprocessor
    /// looping over output tiles, the next tile's loads overlapping the last one's stores; issue
    /// 28); the same conditions. Written 2026-12-02 and not yet run on a GPU: opt-in only.
    WgmmaTmaPersistent,
}

/// Kernel names `CODISTILL_MATMUL_KERNEL` took once and refuses now, with where each went.
const RETIRED: [(&str, &str); 3] = [
    ("auto-wgmma-tma", "it is `auto` now"),
    ("wgmma", "the cp.async wgmma kernel moved to the kernel lab (dev/README.md)"),
    ("auto-wgmma", "the cp.async wgmma kernel moved to the kernel lab (dev/README.md); `auto` takes the TMA kernel"),
];

impl MatmulKernel {
    const ALL: [(MatmulKernel, &'static str); 4] = [
        (MatmulKernel::Auto, "auto"),
        (MatmulKernel::MmaSync, "mma"),
        (MatmulKernel::WgmmaTma, "wgmma-tma"),
        (MatmulKernel::WgmmaTmaPersistent, "wgmma-tma-persistent"),
    ];

    /// The name `CODISTILL_MATMUL_KERNEL` takes.
    pub fn name(self) -> &'static str {
        Self::ALL.iter().find(|(k, _)| *k == self).map(|(_, n)| *n).unwrap_or("auto")
    }

    /// The kernel of a name [`MatmulKernel::name`] gives.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.iter().find(|(_, n)| *n == name).map(|(k, _)| *k)
    }
}

/// The GPU's bf16 matrix-product choices ([`crate::Backend::gemm`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gemm {
    /// The kernel.
    pub kernel: MatmulKernel,
    /// Split-K for the mma.sync kernel where its output tiles alone would leave the device idle
    /// (off: the product runs as one grid of output tiles, as before split-K existed).
    pub split_k: bool,
    /// `wgmma` reads an operand stored MN-major as it lies where its rows are 16-byte aligned
    /// (off: such an operand is transposed into a K-major copy first).
    pub mn_major: bool,
}

impl Default for Gemm {
    fn default() -> Self {
        Gemm { kernel: MatmulKernel::Auto, split_k: true, mn_major: true }
    }
}

impl Gemm {
    /// The defaults, changed by `CODISTILL_MATMUL_KERNEL` (`auto`, `mma`, `wgmma-tma`, `wgmma-tma-persistent`),
    /// `CODISTILL_SPLIT_K=0` and `CODISTILL_WGMMA_MN=0`; any other value of these variables is an
    /// error that names it (a retired kernel name also says where that kernel went).
    pub fn from_env() -> Result<Self> {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    /// [`Gemm::from_env`] on the variables `get` returns.
    fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let kernel = match get("CODISTILL_MATMUL_KERNEL") {
            None => MatmulKernel::Auto,
            Some(v) => MatmulKernel::parse(&v).ok_or_else(|| {
                let names: Vec<&str> = MatmulKernel::ALL.iter().map(|(_, n)| *n).collect();
                let why = RETIRED.iter().find(|(n, _)| *n == v).map(|(_, w)| format!(" ({w})")).unwrap_or_default();
                Error::Invalid(format!("CODISTILL_MATMUL_KERNEL={v:?} is none of {}{why}", names.join(", ")))
            })?,
        };
        let on = |var: &str| -> Result<bool> {
            match get(var).as_deref() {
                None | Some("1") => Ok(true),
                Some("0") => Ok(false),
                Some(v) => bail!(Invalid, "{var}={v:?}: expected 0 (off) or 1 (on, the default)"),
            }
        };
        Ok(Gemm { kernel, split_k: on("CODISTILL_SPLIT_K")?, mn_major: on("CODISTILL_WGMMA_MN")? })
    }
}

/// Allocator counters: device allocations made, and requests served from the cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AllocStats {
    pub device_allocs: u64,
    pub cache_hits: u64,
    pub bytes_reserved: u64,
}

struct Pool {
    free: HashMap<usize, Vec<sys::CUdeviceptr>>,
    stats: AllocStats,
}

/// Size classes: 512-byte steps up to 64 KiB, then powers of two up to 64 MiB, then 2 MiB steps.
fn size_class(bytes: usize) -> usize {
    let b = bytes.max(1);
    if b <= 64 << 10 {
        b.div_ceil(512) * 512
    } else if b <= 64 << 20 {
        b.next_power_of_two()
    } else {
        b.div_ceil(2 << 20) * (2 << 20)
    }
}

/// One CUDA device: its context, compute stream, loaded kernels and allocator.
pub struct Gpu {
    ordinal: usize,
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    /// Transfers that overlap compute (the checkpoint exchange), created on first use.
    copy_stream: OnceLock<Arc<CudaStream>>,
    modules: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
    funcs: Mutex<HashMap<&'static str, CudaFunction>>,
    pool: Mutex<Pool>,
    sm90: OnceLock<bool>,
    sms: OnceLock<usize>,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Gpu(cuda:{})", self.ordinal)
    }
}

/// The device with this ordinal, created on first use and shared after.
pub fn gpu(ordinal: usize) -> Result<Arc<Gpu>> {
    static GPUS: OnceLock<Mutex<HashMap<usize, Arc<Gpu>>>> = OnceLock::new();
    let n = probe()?;
    if ordinal >= n {
        bail!(Device, "cuda:{ordinal} does not exist: the driver reports {n} device(s)");
    }
    let mut map = GPUS.get_or_init(Default::default).lock().unwrap();
    if let Some(g) = map.get(&ordinal) {
        return Ok(g.clone());
    }
    let ctx = CudaContext::new(ordinal)?;
    let stream = ctx.new_stream()?;
    let g = Arc::new(Gpu {
        ordinal,
        ctx,
        stream,
        copy_stream: OnceLock::new(),
        modules: Mutex::new(HashMap::new()),
        funcs: Mutex::new(HashMap::new()),
        pool: Mutex::new(Pool { free: HashMap::new(), stats: AllocStats::default() }),
        sm90: OnceLock::new(),
        sms: OnceLock::new(),
    });
    map.insert(ordinal, g.clone());
    Ok(g)
}

impl Gpu {
    pub fn ordinal(&self) -> usize {
        self.ordinal
    }

    pub fn name(&self) -> Result<String> {
        Ok(self.ctx.name()?)
    }

    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// Free and total device memory, in bytes.
    pub fn memory(&self) -> Result<(usize, usize)> {
        Ok(self.ctx.mem_get_info()?)
    }

    /// Whether the device runs our compute_90a code (`wgmma`): compute capability 9.0.
    pub fn has_wgmma(&self) -> bool {
        *self.sm90.get_or_init(|| matches!(self.ctx.compute_capability(), Ok((9, 0))))
    }

    /// The number of multiprocessors (for choosing tile sizes that fill the device).
    pub fn sm_count(&self) -> usize {
        *self
            .sms
            .get_or_init(|| self.ctx.attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT).map(|n| n.max(1) as usize).unwrap_or(132))
    }

    /// The copy stream: transfers on it overlap the compute stream's kernels. Work on it is
    /// ordered against the compute stream only through events (see [`HostMirror`] and
    /// [`Gpu::upload_on_copy_stream`]).
    pub fn copy_stream(&self) -> Result<&Arc<CudaStream>> {
        if let Some(s) = self.copy_stream.get() {
            return Ok(s);
        }
        let s = self.ctx.new_stream()?;
        Ok(self.copy_stream.get_or_init(|| s))
    }

    /// The compute stream waits, on the device, for `event` (the host does not block).
    fn compute_waits_for(&self, event: &CudaEvent) -> Result<()> {
        Ok(self.stream.wait(event)?)
    }

    /// A buffer holding a copy of `data`, uploaded on the copy stream, for a thread other than the
    /// trainer's (the exchange's reader): the calling thread waits for the copy; the compute
    /// stream never does. The copy is ordered after the compute work queued so far, since the
    /// allocator may hand back a block that queued kernels still read.
    pub fn upload_on_copy_stream(self: &Arc<Self>, data: &[f32]) -> Result<GpuBuf<f32>> {
        let b = self.alloc::<f32>(data.len())?;
        if !data.is_empty() {
            let copy = self.copy_stream()?;
            copy.wait(&self.stream.record_event(None)?)?;
            self.ctx.bind_to_thread()?;
            // SAFETY: the buffer holds data.len() elements; the copy stream is synchronised
            // before `data` can be dropped.
            unsafe { result::memcpy_htod_async(b.ptr, data, copy.cu_stream())? };
            copy.synchronize()?;
        }
        Ok(b)
    }

    /// Waits for all work queued on the compute stream; reports any asynchronous kernel fault.
    pub fn sync(&self) -> Result<()> {
        Ok(self.stream.synchronize()?)
    }

    pub fn stats(&self) -> AllocStats {
        self.pool.lock().unwrap().stats
    }

    /// A kernel of the embedded PTX ([`k`]), from the module that defines it (loaded on first use).
    pub fn function(&self, kernel: Kernel) -> Result<CudaFunction> {
        let Kernel { module, name } = kernel;
        if let Some(f) = self.funcs.lock().unwrap().get(name) {
            return Ok(f.clone());
        }
        let m = {
            let mut mods = self.modules.lock().unwrap();
            match mods.get(module) {
                Some(m) => m.clone(),
                None => {
                    let src = MODULES.iter().find(|(n, _)| *n == module).ok_or_else(|| Error::Device(format!("no PTX module named {module}")))?.1;
                    let m = self
                        .ctx
                        .load_module(cudarc::nvrtc::Ptx::from_src(src))
                        .map_err(|e| Error::Device(format!("loading ptx/{module}.ptx on cuda:{}: {e:?}", self.ordinal)))?;
                    mods.insert(module, m.clone());
                    m
                }
            }
        };
        let f = m.load_function(name).map_err(|e| Error::Device(format!("kernel {name} in ptx/{module}.ptx: {e:?}")))?;
        self.funcs.lock().unwrap().insert(name, f.clone());
        Ok(f)
    }

    fn alloc_raw(&self, bytes: usize) -> Result<(sys::CUdeviceptr, usize)> {
        let class = size_class(bytes);
        let mut pool = self.pool.lock().unwrap();
        if let Some(p) = pool.free.get_mut(&class).and_then(|v| v.pop()) {
            pool.stats.cache_hits += 1;
            return Ok((p, class));
        }
        self.ctx.bind_to_thread()?;
        // SAFETY: a plain device allocation; freed in `release` or on a retry below.
        let p = match unsafe { result::malloc_sync(class) } {
            Ok(p) => p,
            Err(_) => {
                // Out of memory: give the cache back to the driver and try once more.
                self.stream.synchronize()?;
                let cached: Vec<(usize, Vec<sys::CUdeviceptr>)> = pool.free.drain().collect();
                for (c, v) in cached {
                    for p in v {
                        unsafe { result::free_sync(p)? };
                        pool.stats.bytes_reserved = pool.stats.bytes_reserved.saturating_sub(c as u64);
                    }
                }
                unsafe { result::malloc_sync(class) }.map_err(|e| Error::Device(format!("cuda:{} cannot allocate {bytes} bytes: {e:?}", self.ordinal)))?
            }
        };
        pool.stats.device_allocs += 1;
        pool.stats.bytes_reserved += class as u64;
        Ok((p, class))
    }

    fn release(&self, ptr: sys::CUdeviceptr, class: usize) {
        // Reuse is ordered by the single compute stream: work queued later runs after the last use.
        self.pool.lock().unwrap().free.entry(class).or_default().push(ptr);
    }

    /// An uninitialised buffer of `len` elements.
    pub fn alloc<T: Copy>(self: &Arc<Self>, len: usize) -> Result<GpuBuf<T>> {
        let (ptr, class) = self.alloc_raw(len * std::mem::size_of::<T>())?;
        Ok(GpuBuf { ptr, len, class, gpu: self.clone(), _t: std::marker::PhantomData })
    }

    /// A buffer holding a copy of `data`.
    pub fn upload<T: Copy>(self: &Arc<Self>, data: &[T]) -> Result<GpuBuf<T>> {
        let b = self.alloc::<T>(data.len())?;
        if !data.is_empty() {
            // SAFETY: the buffer holds at least data.len() elements; pageable source memory is
            // staged by the driver before the call returns.
            self.ctx.bind_to_thread()?;
            unsafe { result::memcpy_htod_async(b.ptr, data, self.stream.cu_stream())? };
        }
        Ok(b)
    }

    /// A buffer of `len` copies of `v` (filled on the device).
    pub fn full(self: &Arc<Self>, len: usize, v: f32) -> Result<GpuBuf<f32>> {
        let mut b = self.alloc::<f32>(len)?;
        fill(&mut b, v)?;
        Ok(b)
    }
}

/// A device range a kernel reads or writes: a whole [`GpuBuf`] or a [`Slice`] of one. Launchers
/// take `&impl GpuRange<T>` for inputs and `&mut impl GpuRange<T>` for outputs and check `len` against what
/// the kernel touches.
pub trait GpuRange<T: Copy> {
    /// The device address of the first element.
    fn ptr(&self) -> u64;
    fn len(&self) -> usize;
    fn gpu(&self) -> &Arc<Gpu>;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Elements `start .. start + len` of this range.
    fn range(&self, start: usize, len: usize) -> Result<View<'_, T>>
    where
        Self: Sized,
    {
        if start + len > self.len() {
            bail!(Shape, "device range {start}..{} of a range of {}", start + len, self.len());
        }
        Ok(View { ptr: self.ptr() + (start * std::mem::size_of::<T>()) as u64, len, gpu: self.gpu(), _t: std::marker::PhantomData })
    }
}

/// A sub-range of any [`GpuRange`] range (see [`GpuRange::range`]).
pub struct View<'a, T> {
    ptr: u64,
    len: usize,
    gpu: &'a Arc<Gpu>,
    _t: std::marker::PhantomData<T>,
}

impl<T: Copy> GpuRange<T> for View<'_, T> {
    fn ptr(&self) -> u64 {
        self.ptr
    }
    fn len(&self) -> usize {
        self.len
    }
    fn gpu(&self) -> &Arc<Gpu> {
        self.gpu
    }
}

impl<T: Copy> GpuRange<T> for GpuBuf<T> {
    fn ptr(&self) -> u64 {
        self.ptr
    }
    fn len(&self) -> usize {
        self.len
    }
    fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }
}

/// Elements `start .. start + len` of a buffer, as a kernel argument. Made from a shared borrow so
/// that an op can hand disjoint ranges of one buffer to a kernel as input and output (the LSTM
/// reads h_{t-1} and writes h_t in the same output buffer); the op keeps writes disjoint from
/// every other range it passes at the same time.
pub struct Slice<'a, T> {
    buf: &'a GpuBuf<T>,
    start: usize,
    len: usize,
}

impl<T: Copy> GpuRange<T> for Slice<'_, T> {
    fn ptr(&self) -> u64 {
        self.buf.ptr + (self.start * std::mem::size_of::<T>()) as u64
    }
    fn len(&self) -> usize {
        self.len
    }
    fn gpu(&self) -> &Arc<Gpu> {
        &self.buf.gpu
    }
}

/// Page-locked host memory for `f32` values: device-to-host copies into it run asynchronously.
struct Pinned {
    ptr: *mut f32,
    len: usize,
    ctx: Arc<CudaContext>,
}

// SAFETY: a plain host allocation; access goes through `HostMirror`, which orders it with the
// copies by an event.
unsafe impl Send for Pinned {}
unsafe impl Sync for Pinned {}

impl Drop for Pinned {
    fn drop(&mut self) {
        if self.len > 0 && self.ctx.bind_to_thread().is_ok() {
            // SAFETY: allocated by malloc_host in HostMirror::new; no copy is in flight (HostMirror
            // waits for its copies before dropping its parts).
            let _ = unsafe { result::free_host(self.ptr as *mut std::ffi::c_void) };
        }
    }
}

/// The end of a [`HostMirror::start`]'s copies: the source buffers may be written again once the
/// compute stream waits for it.
pub struct CopyDone {
    gpu: Arc<Gpu>,
    event: Arc<CudaEvent>,
}

impl CopyDone {
    /// Orders the compute stream after the copies, on the device (the host does not block).
    pub fn compute_waits(&self) -> Result<()> {
        self.gpu.compute_waits_for(&self.event)
    }
}

/// Host copies of device buffers in page-locked memory, filled on the copy stream while the
/// compute stream goes on: how a GPU model's weights are published to a checkpoint writer
/// without the compute path waiting for the bus.
pub struct HostMirror {
    gpu: Arc<Gpu>,
    parts: Vec<Pinned>,
    done: Option<Arc<CudaEvent>>,
}

impl HostMirror {
    /// Page-locked buffers of these lengths (allocated once, reused by every copy).
    pub fn new(gpu: &Arc<Gpu>, lens: &[usize]) -> Result<Self> {
        gpu.ctx.bind_to_thread()?;
        let mut parts = Vec::with_capacity(lens.len());
        for &len in lens {
            let ptr = if len == 0 {
                std::ptr::NonNull::<f32>::dangling().as_ptr()
            } else {
                // SAFETY: a plain page-locked allocation (default flags: cached, fast to read).
                unsafe { result::malloc_host(len * 4, 0)? as *mut f32 }
            };
            parts.push(Pinned { ptr, len, ctx: gpu.ctx.clone() });
        }
        Ok(HostMirror { gpu: gpu.clone(), parts, done: None })
    }

    /// The lengths of the buffers.
    pub fn lens(&self) -> Vec<usize> {
        self.parts.iter().map(|p| p.len).collect()
    }

    /// Starts copying `srcs` (one per buffer, same lengths) on the copy stream, after the compute
    /// work queued so far; returns the event that marks the copies' end. The caller must not
    /// write or free `srcs` until the compute stream waits for that event
    /// ([`CopyDone::compute_waits`]).
    pub fn start(&mut self, srcs: &[&GpuBuf<f32>]) -> Result<CopyDone> {
        if srcs.len() != self.parts.len() || srcs.iter().zip(&self.parts).any(|(s, p)| s.len != p.len) {
            bail!(Shape, "host mirror of {:?} elements asked to copy {:?}", self.lens(), srcs.iter().map(|s| s.len).collect::<Vec<_>>());
        }
        if let Some(d) = self.done.take() {
            d.synchronize()?; // a previous copy into these buffers must be finished
        }
        let copy = self.gpu.copy_stream()?;
        copy.wait(&self.gpu.stream.record_event(None)?)?;
        self.gpu.ctx.bind_to_thread()?;
        for (src, part) in srcs.iter().zip(&mut self.parts) {
            if part.len > 0 {
                // SAFETY: the destination is page-locked and holds part.len elements; it is read
                // only after `wait`, which synchronises on the event recorded below.
                let dst = unsafe { std::slice::from_raw_parts_mut(part.ptr, part.len) };
                unsafe { result::memcpy_dtoh_async(dst, src.ptr, copy.cu_stream())? };
            }
        }
        let done = Arc::new(copy.record_event(Some(sys::CUevent_flags::CU_EVENT_BLOCKING_SYNC))?);
        self.done = Some(done.clone());
        Ok(CopyDone { gpu: self.gpu.clone(), event: done })
    }

    /// Waits for the last copies, then the host data (one slice per buffer).
    pub fn wait(&self) -> Result<Vec<&[f32]>> {
        if let Some(d) = &self.done {
            d.synchronize()?;
        }
        // SAFETY: the copies into the buffers have completed (or none was started).
        Ok(self.parts.iter().map(|p| unsafe { std::slice::from_raw_parts(p.ptr as *const f32, p.len) }).collect())
    }
}

impl Drop for HostMirror {
    fn drop(&mut self) {
        if let Some(d) = self.done.take() {
            let _ = d.synchronize();
        }
    }
}

/// `dst = src` on the compute stream (equal lengths, one device).
pub fn copy<T: Copy>(src: &impl GpuRange<T>, dst: &mut impl GpuRange<T>) -> Result<()> {
    if src.len() != dst.len() {
        bail!(Shape, "device copy of {} elements into a range of {}", src.len(), dst.len());
    }
    if !Arc::ptr_eq(src.gpu(), dst.gpu()) {
        bail!(Device, "device copy from cuda:{} to cuda:{}", src.gpu().ordinal, dst.gpu().ordinal);
    }
    let bytes = src.len() * std::mem::size_of::<T>();
    if bytes > 0 {
        // SAFETY: both ranges hold `bytes` bytes (lengths checked by their constructors).
        dst.gpu().ctx.bind_to_thread()?;
        unsafe { result::memcpy_dtod_async(dst.ptr(), src.ptr(), bytes, dst.gpu().stream.cu_stream())? };
    }
    Ok(())
}

/// A typed device buffer from the caching allocator; returned to the cache when dropped.
pub struct GpuBuf<T> {
    ptr: sys::CUdeviceptr,
    len: usize,
    class: usize,
    gpu: Arc<Gpu>,
    _t: std::marker::PhantomData<T>,
}

impl<T> std::fmt::Debug for GpuBuf<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GpuBuf(cuda:{}, {} x {})", self.gpu.ordinal, self.len, std::any::type_name::<T>())
    }
}

impl<T> Drop for GpuBuf<T> {
    fn drop(&mut self) {
        self.gpu.release(self.ptr, self.class);
    }
}

impl<T: Copy> GpuBuf<T> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The raw device address (kernel argument).
    pub fn ptr(&self) -> u64 {
        self.ptr
    }

    /// The device address of element `i` (a sub-slice's start).
    pub fn ptr_at(&self, i: usize) -> u64 {
        assert!(i <= self.len, "device offset {i} past a buffer of {}", self.len);
        self.ptr + (i * std::mem::size_of::<T>()) as u64
    }

    pub fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }

    /// Copies the buffer to the host (waits for the stream).
    pub fn download(&self) -> Result<Vec<T>> {
        let mut v: Vec<T> = Vec::with_capacity(self.len);
        if self.len > 0 {
            self.gpu.ctx.bind_to_thread()?;
            // SAFETY: the destination is the vector's spare capacity of len elements; the copy into
            // pageable memory returns when it is done, and the stream is synchronised below before
            // the length is set.
            unsafe {
                sys::cuMemcpyDtoHAsync_v2(v.as_mut_ptr() as *mut std::ffi::c_void, self.ptr, self.len * std::mem::size_of::<T>(), self.gpu.stream.cu_stream())
                    .result()?;
            }
        }
        self.gpu.sync()?;
        // SAFETY: T is plain data and all len elements were written by the completed copy.
        unsafe { v.set_len(self.len) };
        Ok(v)
    }

    /// Overwrites the buffer with `data` (same length).
    pub fn copy_from_host(&mut self, data: &[T]) -> Result<()> {
        if data.len() != self.len {
            bail!(Shape, "copy of {} elements into a device buffer of {}", data.len(), self.len);
        }
        if !data.is_empty() {
            self.gpu.ctx.bind_to_thread()?;
            unsafe { result::memcpy_htod_async(self.ptr, data, self.gpu.stream.cu_stream())? };
        }
        Ok(())
    }

    /// Elements `start .. start + len` as a kernel argument (see [`Slice`]).
    pub fn slice(&self, start: usize, len: usize) -> Result<Slice<'_, T>> {
        if start + len > self.len {
            bail!(Shape, "device range {start}..{} of a buffer of {}", start + len, self.len);
        }
        Ok(Slice { buf: self, start, len })
    }

    /// A device-side copy.
    pub fn try_clone(&self) -> Result<GpuBuf<T>> {
        let b = self.gpu.alloc::<T>(self.len)?;
        let bytes = self.len * std::mem::size_of::<T>();
        if bytes > 0 {
            self.gpu.ctx.bind_to_thread()?;
            unsafe { result::memcpy_dtod_async(b.ptr, self.ptr, bytes, self.gpu.stream.cu_stream())? };
        }
        Ok(b)
    }

    /// Fills every byte with `byte` (0xFF poisons f32 buffers with NaN).
    pub fn memset(&mut self, byte: u8) -> Result<()> {
        let bytes = self.len * std::mem::size_of::<T>();
        if bytes > 0 {
            self.gpu.ctx.bind_to_thread()?;
            unsafe { result::memset_d8_async(self.ptr, byte, bytes, self.gpu.stream.cu_stream())? };
        }
        Ok(())
    }
}

/// `y = x` rounded to bf16 (nearest even): the tensor cores' operand format.
pub fn f32_to_bf16(x: &impl GpuRange<f32>, y: &mut impl GpuRange<half::bf16>) -> Result<()> {
    launch::need("y", y, x.len())?;
    let (px, py, n) = (x.ptr(), y.ptr(), x.len() as i64);
    launch::launch!(x.gpu(), k::elementwise::f32_to_bf16, launch::elems(x.len()); px, py, n);
    Ok(())
}

/// `y = x` widened exactly.
pub fn bf16_to_f32(x: &impl GpuRange<half::bf16>, y: &mut impl GpuRange<f32>) -> Result<()> {
    launch::need("y", y, x.len())?;
    let (px, py, n) = (x.ptr(), y.ptr(), x.len() as i64);
    launch::launch!(x.gpu(), k::elementwise::bf16_to_f32, launch::elems(x.len()); px, py, n);
    Ok(())
}

/// Sets every element to `v` (the device-side fill behind [`Gpu::full`]).
fn fill(x: &mut impl GpuRange<f32>, v: f32) -> Result<()> {
    let (p, n) = (x.ptr(), x.len() as i64);
    launch::launch!(x.gpu(), k::elementwise::fill_f32, launch::elems(x.len()); p, v, n);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_classes_cover_the_request() {
        for b in [1, 511, 512, 513, 70_000, 1 << 20, (64 << 20) + 1, 300 << 20] {
            let c = size_class(b);
            assert!(c >= b, "{b} -> {c}");
            assert!(c < 2 * b + 1024, "{b} -> {c} wastes too much");
        }
    }

    #[test]
    fn matmul_kernel_names_round_trip() {
        for (k, name) in MatmulKernel::ALL {
            assert_eq!(k.name(), name);
            assert_eq!(MatmulKernel::parse(name), Some(k));
        }
        assert_eq!(MatmulKernel::parse("tf32"), None);
    }

    #[test]
    fn kernel_choices_from_the_environment_and_their_errors() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string());
        assert_eq!(Gemm::from_vars(vars(&[])).unwrap(), Gemm::default());
        let g = Gemm::from_vars(vars(&[("CODISTILL_MATMUL_KERNEL", "mma"), ("CODISTILL_SPLIT_K", "0")])).unwrap();
        assert_eq!(g, Gemm { kernel: MatmulKernel::MmaSync, split_k: false, mn_major: true });
        let e = Gemm::from_vars(vars(&[("CODISTILL_MATMUL_KERNEL", "tf32")])).unwrap_err().to_string();
        assert!(e.contains("CODISTILL_MATMUL_KERNEL=\"tf32\"") && e.contains("wgmma-tma"), "{e}");
        // The cp.async kernel's names, retired to the kernel lab, say so.
        for old in ["wgmma", "auto-wgmma"] {
            let e = Gemm::from_vars(move |k: &str| (k == "CODISTILL_MATMUL_KERNEL").then(|| old.to_string())).unwrap_err().to_string();
            assert!(e.contains("kernel lab") && e.contains("dev/README.md"), "{e}");
        }
        let e = Gemm::from_vars(vars(&[("CODISTILL_WGMMA_MN", "off")])).unwrap_err().to_string();
        assert!(e.contains("CODISTILL_WGMMA_MN=\"off\""), "{e}");
    }

    #[test]
    fn probe_never_panics() {
        // On a machine without a GPU this is an error that says why; with one, a count.
        match probe() {
            Ok(n) => assert!(n > 0),
            Err(e) => assert!(e.to_string().contains("CUDA"), "{e}"),
        }
    }
}
