//! The harness of the GPU and device-generic test binaries (`tests/gpu.rs`,
//! `tests/gpu_training.rs`, `tests/ops.rs`, `tests/gradcheck.rs`; `harness = false` in Cargo.toml), on libtest-mimic: the same command-line options and output as the
//! built-in harness, but a test can be ignored at run time. Where no GPU is found, every test is
//! reported as *ignored* (the summary counts them) after one line on stderr that says why, so a
//! machine without a GPU never reports a GPU test as passed; with `REQUIRE_GPU=1` a missing GPU
//! fails the binary instead.
//!
//! Inputs are drawn from a fixed seed by default, so a run is replayable as it stands;
//! `CODISTILL_TEST_SEED=N` sets another, `CODISTILL_TEST_SEED=random` draws one from the clock.
//! Every test prints its seed.

/// Whether the GPU tests are to be ignored: no usable GPU (said once on stderr, `what` naming the
/// tests ignored), and `REQUIRE_GPU=1` not set (with it, a missing GPU ends the binary with status 1).
fn no_gpu(binary: &str, what: &str) -> bool {
    match codistill::cuda::probe() {
        Ok(_) => false,
        Err(e) => {
            if std::env::var("REQUIRE_GPU").as_deref() == Ok("1") {
                eprintln!("{binary}: REQUIRE_GPU=1 but no usable GPU: {e}");
                std::process::exit(1);
            }
            eprintln!("{binary}: no usable GPU ({e}): {what} reported as ignored");
            true
        }
    }
}

/// Runs the listed tests and exits with the harness's status.
pub fn run(binary: &str, tests: &[(&'static str, fn())]) -> ! {
    let args = libtest_mimic::Arguments::from_args();
    let ignored = no_gpu(binary, &format!("its {} tests are", tests.len()));
    let trials = tests
        .iter()
        .map(|&(name, f)| {
            libtest_mimic::Trial::test(name, move || {
                f();
                Ok(())
            })
            .with_ignored_flag(ignored)
        })
        .collect();
    libtest_mimic::run(&args, trials).exit()
}

/// The seed of a test's random inputs (see the module doc), printed with the test's name.
pub fn seed(test: &str) -> u64 {
    let seed = match std::env::var("CODISTILL_TEST_SEED").as_deref() {
        Ok("random") => std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64,
        Ok(s) => s.parse().unwrap_or_else(|_| panic!("CODISTILL_TEST_SEED={s:?} is neither a number nor \"random\"")),
        Err(_) => 20_261_202,
    };
    eprintln!("{test}: seed {seed} (replay: CODISTILL_TEST_SEED={seed})");
    seed
}

/// A device-generic test: its name and its body.
#[allow(dead_code)]
pub type DeviceTest = (&'static str, fn(codistill::Device));

/// Runs each listed body once per device, as the trials `<name>::cpu` and `<name>::cuda`: one test
/// body per device. The CPU leg always runs; where no GPU is found the CUDA legs are reported as
/// ignored after one line on stderr that says why (`REQUIRE_GPU=1` fails the binary instead), so
/// a machine without a GPU never reports a GPU leg as passed.
#[allow(dead_code)] // not every binary on this harness has device-generic bodies
pub fn run_on_devices(binary: &str, tests: &[DeviceTest]) -> ! {
    let args = libtest_mimic::Arguments::from_args();
    let no_gpu = no_gpu(binary, &format!("the {} cuda legs are", tests.len()));
    let mut trials = Vec::new();
    for &(name, f) in tests {
        trials.push(libtest_mimic::Trial::test(format!("{name}::cpu"), move || {
            f(codistill::Device::Cpu);
            Ok(())
        }));
        trials.push(
            libtest_mimic::Trial::test(format!("{name}::cuda"), move || {
                f(codistill::Device::Cuda(0));
                Ok(())
            })
            .with_ignored_flag(no_gpu),
        );
    }
    libtest_mimic::run(&args, trials).exit()
}
