//! The harness of the GPU test binaries (`tests/gpu.rs`, `tests/gpu_training.rs`; `harness =
//! false` in Cargo.toml), on libtest-mimic: the same command-line options and output as the
//! built-in harness, but a test can be ignored at run time. Where no GPU is found, every test is
//! reported as *ignored* (the summary counts them) after one line on stderr that says why, so a
//! machine without a GPU never reports a GPU test as passed; with `REQUIRE_GPU=1` a missing GPU
//! fails the binary instead. `CODISTILL_GPU_TESTS_ON_CPU=1` (where `cpu_stand_in` is allowed) runs
//! the tests with the CPU standing in: a smoke run of the tests' own code, which compares the CPU
//! with itself and proves nothing about a GPU.
//!
//! Inputs are drawn from a fixed seed by default, so a run is replayable as it stands;
//! `CODISTILL_TEST_SEED=N` sets another, `CODISTILL_TEST_SEED=random` draws one from the clock.
//! Every test prints its seed.

/// Runs the listed tests and exits with the harness's status.
pub fn run(binary: &str, tests: &[(&'static str, fn())], cpu_stand_in: bool) -> ! {
    let args = libtest_mimic::Arguments::from_args();
    let stand_in = cpu_stand_in && std::env::var("CODISTILL_GPU_TESTS_ON_CPU").as_deref() == Ok("1");
    let ignored = match codistill::cuda::probe() {
        Ok(_) => false,
        Err(e) => {
            if std::env::var("REQUIRE_GPU").as_deref() == Ok("1") {
                eprintln!("{binary}: REQUIRE_GPU=1 but no usable GPU: {e}");
                std::process::exit(1);
            }
            if stand_in {
                eprintln!(
                    "{binary}: no usable GPU ({e}); CODISTILL_GPU_TESTS_ON_CPU=1: a smoke run with the CPU standing in, which proves nothing about a GPU"
                );
                false
            } else {
                eprintln!("{binary}: no usable GPU ({e}): its {} tests are reported as ignored", tests.len());
                true
            }
        }
    };
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
