//! The `codistill` command line, thin over the library.

use clap::{Arg, ArgMatches, Command};
use codistill::config::{ConfigTable, ConfigValue};
use codistill::data::synthetic::{write_criteo_tsv, ClickModel};
use codistill::tasks::ctr::score::show;
use codistill::train::criteo::{self, CriteoConfig};
use codistill::train::lm::{self, LmConfig};
use codistill::Result;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

fn config_arg() -> Arg {
    Arg::new("config").long("config").value_name("FILE").help("TOML file of options; flags given here override it")
}

/// `--products` of the eval commands.
fn products_arg() -> Arg {
    Arg::new("products").long("products").value_name("f32|int8").default_value("f32").help(
        "The products' arithmetic: f32 (a quantized checkpoint's levels times its scales), or int8 (each product's input quantized per row to int8, times the weights' levels, summed in i32, on the CPU; an f32 checkpoint is quantized to int8 first)",
    )
}

fn products(a: &clap::ArgMatches) -> codistill::Result<codistill::ops::quant::Products> {
    a.get_one::<String>("products").expect("defaulted").parse().map_err(|e: String| codistill::Error::Invalid(format!("--products: {e}")))
}

/// `noise-scale`: the gradient noise scale of checkpoints (the same for every task).
fn noise_scale_command(task: &str) -> Command {
    Command::new("noise-scale")
        .about(format!(
            "The gradient noise scale B_simple (McCandlish et al. 2018) of {task} checkpoints: the critical batch, in items (tokens or rows), one JSON line each"
        ))
        .arg(Arg::new("checkpoint").long("checkpoint").value_name("FILE[,FILE...]").required(true).help("Checkpoints written by train (several: one line each, e.g. a run's snapshots)"))
        .arg(Arg::new("batches").long("batches").value_name("K").default_value("16").help("Batches whose mean is the big batch (at least 2; more: a steadier estimate)"))
        .arg(Arg::new("device").long("device").value_name("auto|cpu|cuda").default_value("auto").help("Device for the gradients"))
}

/// Print the noise scale of each checkpoint given to `noise-scale`.
fn run_noise_scale<T: codistill::train::Task>(a: &ArgMatches) -> Result<()> {
    let paths = codistill::config::Paths::parse_value(a.get_one::<String>("checkpoint").expect("required")).map_err(codistill::Error::Invalid)?;
    let dev = a.get_one::<String>("device").expect("defaulted").parse::<codistill::train::DeviceChoice>().map_err(codistill::Error::Invalid)?.resolve()?;
    for path in &paths.0 {
        let n = codistill::train::noise::noise_scale::<T>(path, num(a, "batches")?, dev)?;
        let out = json!({
            "checkpoint": path.display().to_string(),
            "step": n.step,
            "batch_items": n.batch_items,
            "batches": n.batches,
            "grad_sq_small": n.small_sq,
            "grad_sq_big": n.big_sq,
            "grad_sq": n.grad_sq,
            "trace": n.trace,
            "b_simple": n.b_simple,
            "b_simple_batches": n.b_simple / n.batch_items as f64,
        });
        println!("{out}");
    }
    Ok(())
}

fn cli() -> Command {
    Command::new("codistill")
        .version(env!("CARGO_PKG_VERSION"))
        .about("A training engine for knowledge distillation and online codistillation")
        .subcommand_required(true)
        .arg_required_else_help(true)
        .subcommand(Command::new("info").about("Print the build: version, backends and CPU threads"))
        .subcommand(
            Command::new("completions")
                .about("Print a shell completion script (e.g. codistill completions bash > /etc/bash_completion.d/codistill)")
                .arg(Arg::new("shell").value_name("bash|zsh|fish|elvish|powershell").required(true).help("The shell")),
        )
        .subcommand(
            Command::new("export")
                .about("Write a checkpoint's weights as a PyTorch state dict (safetensors; the names and layouts of docs/pytorch.md)")
                .arg(Arg::new("checkpoint").long("checkpoint").value_name("FILE").required(true).help("A language- or click-model checkpoint"))
                .arg(Arg::new("out").long("out").value_name("FILE").required(true).help("The state dict to write (.safetensors)")),
        )
        .subcommand(
            Command::new("quantize")
                .about("Quantize a trained checkpoint's weight matrices after training (per output channel, int8 or int4) into a weights-only checkpoint every command takes as a model: the post-training baseline of quantized distillation")
                .arg(Arg::new("checkpoint").long("checkpoint").value_name("FILE").required(true).help("A language- or click-model checkpoint"))
                .arg(Arg::new("bits").long("bits").value_name("8|4").default_value("8").help("Bits per weight"))
                .arg(Arg::new("out").long("out").value_name("FILE").required(true).help("The quantized checkpoint to write")),
        )
        .subcommand(
            Command::new("import")
                .about("Turn a PyTorch state dict (safetensors, the names and layouts of docs/pytorch.md) into a checkpoint every command takes as a model or teacher")
                .arg(Arg::new("task").long("task").value_name("lm|criteo").required(true).help("What the state dict is: a language model or a click model"))
                .arg(Arg::new("state").long("state").value_name("FILE").required(true).help("The state dict (.safetensors)"))
                .arg(Arg::new("vocab").long("vocab").value_name("FILE").help("Language models: the vocabulary, the tokenizer (word or byte) on the first line, then one token a line in id order [default: the state dict's vocab metadata]"))
                .arg(Arg::new("out").long("out").value_name("FILE").required(true).help("The checkpoint to write")),
        )
        .subcommand(
            Command::new("lm")
                .about("LSTM language models")
                .subcommand_required(true)
                .subcommand(
                    Command::new("train")
                        .about("Train a language model (on the synthetic corpus unless --data or --train is given); --teacher distills it from trained checkpoints")
                        .arg(config_arg())
                        .args(LmConfig::args())
                        // experiment's alone: train refuses it
                        .mut_arg("independent_control", |a| a.hide(true)),
                )
                .subcommand(
                    Command::new("codistill")
                        .about("Codistill language models: lm train with --models 2 unless --models or --world says otherwise")
                        .arg(config_arg())
                        .args(LmConfig::args())
                        // experiment's alone: train refuses it
                        .mut_arg("independent_control", |a| a.hide(true)),
                )
                .subcommand(
                    Command::new("experiment")
                        .about("Baseline and codistillation side by side (same steps per model): curves.jsonl, curves.png, curves.svg, report.txt in --out")
                        .arg(config_arg())
                        .args(LmConfig::args()),
                )
                .subcommand(
                    Command::new("eval")
                        .about("Report cross-entropy and perplexity of a checkpoint, or of the ensemble of several, on a text file")
                        .arg(
                            Arg::new("checkpoint")
                                .long("checkpoint")
                                .value_name("FILE[,FILE...]")
                                .required(true)
                                .help("A checkpoint written by lm train; several, comma-separated: their ensemble (averaged next-token distributions)"),
                        )
                        .arg(Arg::new("file").long("file").value_name("FILE").help("Text to score [default: the test file of the checkpoint's config]"))
                        .arg(
                            Arg::new("against")
                                .long("against")
                                .value_name("FILE")
                                .help("A second checkpoint (same vocabulary): also report the churn, the mean absolute difference of the probabilities the two give each token"),
                        )
                        .arg(products_arg())
                        .arg(Arg::new("cache").long("cache").value_name("DIR").default_value(".codistill-cache").help("Cache directory for token files"))
                        .arg(
                            Arg::new("max_tokens")
                                .long("max-tokens")
                                .value_name("N")
                                .default_value("0")
                                .help("Score about N tokens, from places spread over the file (0: all)"),
                        )
                        .arg(
                            Arg::new("lanes")
                                .long("lanes")
                                .value_name("N")
                                .default_value("1")
                                .help("1: the file as one stream from a zero state, every token after the first scored (as a PyTorch loop over the file); N: N lanes, faster, each from a zero state with its first token unscored (0: the checkpoint's batch)"),
                        ),
                )
                .subcommand(
                    Command::new("teacher-cache")
                        .about("Run the --teacher checkpoints once over the training stream that train with the same options reads, and write their top-k logits of every token position to the --teacher-logits file; train --teacher-logits FILE (without --teacher) then distills from it without running them")
                        .arg(config_arg())
                        .args(LmConfig::args())
                        .mut_arg("independent_control", |a| a.hide(true))
                        .arg(
                            Arg::new("top_k")
                                .long("top-k")
                                .value_name("K")
                                .default_value("32")
                                .help("Logits kept per token position, the largest, with the log-sum-exp of the whole row; read back, the rest of the probability is spread evenly over the other classes or dropped (--teacher-logits-rest) (K at least the classes: every logit, and training from the cache is training from the teachers)"),
                        ),
                )
                .subcommand(noise_scale_command("language-model"))
                .subcommand(
                    Command::new("sample")
                        .about("Print text sampled from checkpoints (several: from their averaged distribution), after an optional prompt")
                        .arg(Arg::new("checkpoint").long("checkpoint").value_name("FILE[,FILE...]").required(true).help("Checkpoints written by lm train, sharing a vocabulary"))
                        .arg(Arg::new("tokens").long("tokens").value_name("N").default_value("100").help("Tokens to sample"))
                        .arg(Arg::new("temperature").long("temperature").value_name("T").default_value("1").help("Divide the logits by T before the softmax (below 1: safer, above: more varied)"))
                        .arg(Arg::new("seed").long("seed").value_name("S").default_value("1").help("Random seed"))
                        .arg(Arg::new("prompt").long("prompt").value_name("TEXT").help("Text the samples continue [default: the start of a line]"))
                        .arg(Arg::new("device").long("device").value_name("auto|cpu|cuda").default_value("cpu").help("Device for the forward passes")),
                ),
        )
        .subcommand(
            Command::new("criteo")
                .about("Click-through models on Criteo-format logs")
                .subcommand_required(true)
                .subcommand(
                    Command::new("train")
                        .about("Train a click model (on a synthetic log unless --train is given); --teacher distills it from trained checkpoints")
                        .arg(config_arg())
                        .args(CriteoConfig::args())
                        // experiment's alone: train refuses it
                        .mut_arg("independent_control", |a| a.hide(true)),
                )
                .subcommand(
                    Command::new("codistill")
                        .about("Codistill click models: criteo train with --models 2 unless --models or --world says otherwise")
                        .arg(config_arg())
                        .args(CriteoConfig::args())
                        // experiment's alone: train refuses it
                        .mut_arg("independent_control", |a| a.hide(true)),
                )
                .subcommand(
                    Command::new("experiment")
                        .about("Baseline and codistillation side by side (same steps per model): curves.jsonl, curves.png, curves.svg, report.txt in --out")
                        .arg(config_arg())
                        .args(CriteoConfig::args()),
                )
                .subcommand(
                    Command::new("eval")
                        .about("Log-loss, AUC and calibration of a checkpoint, or of the ensemble of several, on a file; with --against, the prediction churn against another model")
                        .arg(
                            Arg::new("checkpoint")
                                .long("checkpoint")
                                .value_name("FILE[,FILE...]")
                                .required(true)
                                .help("A checkpoint written by criteo train; several, comma-separated: their ensemble (mean click probability)"),
                        )
                        .arg(Arg::new("file").long("file").value_name("FILE").required(true).help("A Criteo TSV file, plain or gzip"))
                        .arg(
                            Arg::new("against")
                                .long("against")
                                .value_name("FILE")
                                .help("A second checkpoint: report the mean absolute difference of predictions"),
                        )
                        .arg(products_arg())
                        .arg(
                            Arg::new("cache").long("cache").value_name("DIR").default_value(".codistill-cache").help("Cache directory for preprocessed files"),
                        ),
                )
                .subcommand(
                    Command::new("teacher-cache")
                        .about("Run the --teacher checkpoints once over the training stream that train with the same options reads, and write their top-k logits of every row to the --teacher-logits file; train --teacher-logits FILE (without --teacher) then distills from it without running them")
                        .arg(config_arg())
                        .args(CriteoConfig::args())
                        .mut_arg("independent_control", |a| a.hide(true))
                        .arg(
                            Arg::new("top_k")
                                .long("top-k")
                                .value_name("K")
                                .default_value("1")
                                .help("Logits kept per row, the largest, with the log-sum-exp of the whole row; read back, the rest of the probability is spread evenly over the other classes or dropped (--teacher-logits-rest) (K at least the classes: every logit, and training from the cache is training from the teachers)"),
                        ),
                )
                .subcommand(noise_scale_command("click-model"))
                .subcommand(
                    Command::new("record-stats")
                        .about("Record into a click checkpoint the feature statistics data-free distillation reads (`train --data-free`), measured on its training file, without training it: for checkpoints written before every click checkpoint recorded them (docs/data-free-click.md)")
                        .arg(Arg::new("checkpoint").long("checkpoint").value_name("FILE").required(true).help("A click-model checkpoint"))
                        .arg(Arg::new("train").long("train").value_name("FILE").required(true).help("The rows it was trained on (Criteo format, plain or gzip)"))
                        .arg(Arg::new("cache").long("cache").value_name("DIR").default_value("cache").help("Where the preprocessed log is cached"))
                        .arg(Arg::new("out").long("out").value_name("FILE").required(true).help("The checkpoint to write (the same weights, with the statistics)")),
                )
                .subcommand(
                    Command::new("generate")
                        .about("Write a synthetic log in the Criteo format from a hidden model, and FILE.truth with its true log-loss")
                        .arg(Arg::new("out").long("out").value_name("FILE").required(true).help("Output file (gzip when it ends in .gz)"))
                        .arg(Arg::new("rows").long("rows").value_name("N").default_value("1000000").help("Number of rows"))
                        .arg(Arg::new("scale").long("scale").value_name("S").default_value("0.1").help("Multiplier of the Criteo-like field cardinalities"))
                        .arg(
                            Arg::new("model_seed")
                                .long("model-seed")
                                .value_name("N")
                                .default_value("1")
                                .help("Seed of the hidden model (files with the same model seed share it)"),
                        )
                        .arg(Arg::new("seed").long("seed").value_name("N").default_value("1").help("Seed of the rows drawn"))
                        .arg(
                            Arg::new("clusters")
                                .long("clusters")
                                .value_name("K")
                                .default_value("0")
                                .help("Latent clusters that correlate the fields (each row draws one, which shifts every field's categories and scales its integers; the click logit is the same function of the features); 0: every field drawn independently, so the fields' marginals are the rows' distribution"),
                        ),
                ),
        )
}

fn num<T: std::str::FromStr>(m: &ArgMatches, key: &str) -> Result<T> {
    let v = m.get_one::<String>(key).expect("defaulted or required");
    v.parse().map_err(|_| codistill::Error::Invalid(format!("--{}: {v:?} is not a valid number", key.replace('_', "-"))))
}

/// A trainer's config: defaults (two models for `codistill`), then the `--config` file, then the
/// flags given. One model per process when the run has several processes (`--world`, or a
/// launcher's variables with `--exchange-dir`) and `--models` is not given.
fn load_config<C: ConfigTable>(m: &ArgMatches, codistill: bool) -> Result<C> {
    let mut cfg = C::default();
    if codistill {
        cfg.set("models", "2").map_err(codistill::Error::Invalid)?;
    }
    if let Some(path) = m.get_one::<String>("config") {
        cfg.apply_toml_file(&PathBuf::from(path))?;
    }
    cfg.apply_matches(m)?;
    let entries = cfg.entries();
    let get = |k: &str| entries.iter().find(|e| e.0 == k).map(|e| e.1.clone()).unwrap_or_default();
    let (world, rank) = (get("world").parse().unwrap_or(1), get("rank").parse().unwrap_or(0));
    let (world, _, _) = codistill::distill::resolve_world(world, rank, !get("exchange_dir").is_empty(), |k| std::env::var(k).ok())?;
    if world > 1 && m.get_one::<String>("models").is_none() {
        cfg.set("models", "1").map_err(codistill::Error::Invalid)?;
    }
    Ok(cfg)
}

fn print_cache(w: &codistill::train::teacher_cache::CacheWritten) {
    let kept = if w.k == w.classes { format!("all {} logits", w.classes) } else { format!("the top {} of {} logits", w.k, w.classes) };
    println!("wrote {kept} of {} teacher(s) for {} items to {} ({:.1} MB) in {:.1} s", w.teachers, w.items, w.path.display(), w.bytes as f64 / 1e6, w.seconds);
}

fn run_criteo(sub: &ArgMatches) -> Result<()> {
    match sub.subcommand() {
        Some((cmd @ ("train" | "codistill"), a)) => {
            let cfg: CriteoConfig = load_config(a, cmd == "codistill")?;
            let s = criteo::train(&cfg)?;
            if let Some(r) = s.preprocess_rows_per_s {
                println!("preprocessed at {r:.0} rows/s");
            }
            println!("trained {} steps; {:.1} s in all with data preparation; training ran at {:.0} rows/s", s.steps, s.seconds, s.train_rows_per_s);
            for (i, v) in s.valid.iter().enumerate() {
                let who = if s.valid.len() > 1 { format!("model {i} ") } else { String::new() };
                println!("{who}validation ({} rows): log-loss {:.5}, AUC {}, calibration {}", v.rows, v.log_loss, show(v.auc, 4), show(v.calibration, 3));
                if let Some(t) = s.valid_truth {
                    println!(
                        "{who}is {:+.2}% above the hidden model's log-loss on the same rows ({:.5})",
                        100.0 * (v.log_loss / t.bayes_log_loss - 1.0),
                        t.bayes_log_loss
                    );
                }
            }
            if let (Some(e), Some(c)) = (s.ensemble, s.churn) {
                println!("ensemble of the models: log-loss {:.5}, AUC {}; churn between models 0 and 1: {c:.5}", e.log_loss, show(e.auc, 4));
            }
            println!("outputs in {}", cfg.out.display());
            Ok(())
        }
        Some(("eval", a)) => {
            let ckpts = codistill::config::Paths::parse_value(a.get_one::<String>("checkpoint").expect("required")).map_err(codistill::Error::Invalid)?;
            let file = PathBuf::from(a.get_one::<String>("file").expect("required"));
            let against = a.get_one::<String>("against").map(PathBuf::from);
            let cache = PathBuf::from(a.get_one::<String>("cache").expect("defaulted"));
            let products = products(a)?;
            let (e, ch) = criteo::eval_checkpoints_with(&ckpts.0, &file, against.as_deref(), &cache, products)?;
            let mut out = json!({"rows": e.rows, "log_loss": e.log_loss, "auc": e.auc, "calibration": e.calibration, "products": products.to_string()});
            if let Some(c) = ch {
                out["churn"] = json!(c);
            }
            // Undefined metrics (one class in the labels) are null: JSON has no NaN.
            println!("{out}");
            Ok(())
        }
        Some(("experiment", a)) => {
            let cfg: CriteoConfig = load_config(a, false)?;
            print!("{}", codistill::train::experiment::criteo_experiment(&cfg)?);
            println!("curves, plots and report in {}", cfg.out.display());
            Ok(())
        }
        Some(("teacher-cache", a)) => {
            let cfg: CriteoConfig = load_config(a, false)?;
            print_cache(&codistill::train::teacher_cache::write_teacher_cache::<codistill::tasks::ctr::CtrTask>(&cfg, num(a, "top_k")?)?);
            Ok(())
        }
        Some(("noise-scale", a)) => run_noise_scale::<codistill::tasks::ctr::CtrTask>(a),
        Some(("record-stats", a)) => {
            let path = |k: &str| PathBuf::from(a.get_one::<String>(k).expect("required or defaulted"));
            let (ckpt, out) = (path("checkpoint"), path("out"));
            let st = codistill::tasks::ctr::stats::record_into(&ckpt, &path("train"), &path("cache"), &out)?;
            println!(
                "wrote {} with feature statistics of {} rows (moments of the first {}, click rate {:.5}) to {}",
                ckpt.display(),
                st.counted,
                st.stats.rows,
                st.stats.click_rate,
                out.display()
            );
            Ok(())
        }
        Some(("generate", a)) => {
            let out = PathBuf::from(a.get_one::<String>("out").expect("required"));
            let seed = num::<u64>(a, "model_seed")? ^ 0xC11C;
            let model = ClickModel::criteo_like(num(a, "scale")?, seed).with_clusters(num(a, "clusters")?, seed);
            let t0 = std::time::Instant::now();
            let t = write_criteo_tsv(&out, &model, num(a, "rows")?, num(a, "seed")?)?;
            println!(
                "wrote {} rows to {} in {:.1} s; hidden model's log-loss {:.5} (expected {:.5}), in {}",
                t.rows,
                out.display(),
                t0.elapsed().as_secs_f64(),
                t.bayes_log_loss,
                t.expected_log_loss,
                codistill::data::synthetic::truth_path(&out).display()
            );
            Ok(())
        }
        _ => unreachable!("clap requires a subcommand"),
    }
}

fn run(m: &ArgMatches) -> Result<()> {
    match m.subcommand() {
        Some(("info", _)) => {
            let threads = codistill::backend::machine_cores();
            println!("codistill {}", env!("CARGO_PKG_VERSION"));
            #[cfg(target_arch = "x86_64")]
            let simd = if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") { "AVX2/FMA kernels" } else { "portable kernels (no AVX2/FMA)" };
            #[cfg(not(target_arch = "x86_64"))]
            let simd = "portable kernels";
            println!("backends: cpu ({threads} threads, {simd}; --threads sets how many a run uses)");
            let bf16 = if codistill::ops::matmul::bf16gemm::available() {
                "AVX-512 BF16 dot products"
            } else {
                "no AVX-512 BF16 here: rounded copies of the operands on the f32 kernels, slower than f32"
            };
            println!("cpu bf16 products (--cpu-bf16 true): {bf16}");
            match codistill::cuda::probe() {
                Err(e) => println!("cuda: kernels built in (ptx/), no GPU here: {e}"),
                Ok(n) => {
                    let name = codistill::cuda::gpu(0).and_then(|g| g.name()).unwrap_or_default();
                    println!("cuda: kernels built in (ptx/), {n} device(s), cuda:0 = {name}; the trainers use it with --device auto (the default) or cuda");
                }
            }
            Ok(())
        }
        Some(("completions", a)) => {
            let shell: clap_complete::Shell =
                a.get_one::<String>("shell").expect("required").parse().map_err(|e: String| codistill::Error::Invalid(format!("completions: {e}")))?;
            clap_complete::generate(shell, &mut cli(), "codistill", &mut std::io::stdout());
            Ok(())
        }
        Some(("export", a)) => {
            let (ckpt, out) =
                (PathBuf::from(a.get_one::<String>("checkpoint").expect("required")), PathBuf::from(a.get_one::<String>("out").expect("required")));
            let what = codistill::tasks::pytorch::export(&ckpt, &out)?;
            println!("wrote {} as a PyTorch state dict ({what}) to {}", ckpt.display(), out.display());
            Ok(())
        }
        Some(("quantize", a)) => {
            let (ckpt, out) =
                (PathBuf::from(a.get_one::<String>("checkpoint").expect("required")), PathBuf::from(a.get_one::<String>("out").expect("required")));
            let bits: u32 = num(a, "bits")?;
            codistill::ops::quant::Quant::of_bits(bits)?;
            let mut c = codistill::checkpoint::Checkpoint::load(&ckpt)?;
            let format = c.meta("format", &ckpt)?;
            if format != codistill::tasks::lm::config::FORMAT && format != codistill::tasks::ctr::config::FORMAT {
                return Err(codistill::Error::Invalid(format!("{}: format {format:?} is not a model checkpoint (a language or click model)", ckpt.display())));
            }
            // Weights only: the optimizer's moments and the resume position go.
            c.tensors.retain(|k, _| !k.starts_with("optim/"));
            c.meta.remove("optimizer_steps");
            c.quantize_weights(bits)?;
            c.save(&out)?;
            println!("wrote {} quantized to int{bits} ({} matrices) to {}", ckpt.display(), c.int8.len(), out.display());
            Ok(())
        }
        Some(("import", a)) => {
            let state = PathBuf::from(a.get_one::<String>("state").expect("required"));
            let out = PathBuf::from(a.get_one::<String>("out").expect("required"));
            let shape = match a.get_one::<String>("task").map(String::as_str) {
                Some("lm") => {
                    let c = codistill::tasks::pytorch::import_lm(&state, a.get_one::<String>("vocab").map(Path::new), &out)?;
                    format!("language model: embedding {}, {} LSTM layer(s) of {}", c.emb_dim, c.layers, c.hidden)
                }
                Some("criteo") => {
                    let c = codistill::tasks::pytorch::import_ctr(&state, &out)?;
                    format!("click model: {} buckets, embedding {}, MLP {}", c.buckets, c.emb_dim, c.mlp)
                }
                other => return Err(codistill::Error::Invalid(format!("--task must be lm or criteo, got {other:?}"))),
            };
            println!("wrote {} ({shape}) from {}", out.display(), state.display());
            Ok(())
        }
        Some(("lm", sub)) => match sub.subcommand() {
            Some((cmd @ ("train" | "codistill"), a)) => {
                let cfg: LmConfig = load_config(a, cmd == "codistill")?;
                let s = lm::train(&cfg)?;
                println!("trained {} steps; {:.1} s in all with data preparation; training ran at {:.0} tokens/s", s.steps, s.seconds, s.tokens_per_s);
                for (i, (v, t)) in s.per_model.iter().enumerate() {
                    let who = if s.per_model.len() > 1 { format!("model {i} ") } else { String::new() };
                    if let Some(v) = v {
                        println!("{who}best validation: loss {v:.4} nats/token, perplexity {:.2}", v.exp());
                    }
                    if let Some(t) = t {
                        println!("{who}test: loss {t:.4} nats/token, perplexity {:.2}", t.exp());
                    }
                }
                if let Some(e) = s.ensemble_valid {
                    println!("ensemble validation: loss {e:.4} nats/token, perplexity {:.2}", e.exp());
                }
                if let Some(f) = s.floors {
                    println!("synthetic source entropy (the floor): validation {:.4}, test {:.4} nats/token", f.valid, f.test);
                }
                println!("outputs in {}", cfg.out.display());
                Ok(())
            }
            Some(("experiment", a)) => {
                let cfg: LmConfig = load_config(a, false)?;
                print!("{}", codistill::train::experiment::lm_experiment(&cfg)?);
                println!("curves, plots and report in {}", cfg.out.display());
                Ok(())
            }
            Some(("eval", a)) => {
                let ckpts = codistill::config::Paths::parse_value(a.get_one::<String>("checkpoint").expect("required")).map_err(codistill::Error::Invalid)?;
                let file = a.get_one::<String>("file").map(PathBuf::from);
                let cache = PathBuf::from(a.get_one::<String>("cache").expect("defaulted"));
                let max: usize = a
                    .get_one::<String>("max_tokens")
                    .expect("defaulted")
                    .parse()
                    .map_err(|_| codistill::Error::Invalid("--max-tokens must be a whole number".into()))?;
                let lanes: usize =
                    a.get_one::<String>("lanes").expect("defaulted").parse().map_err(|_| codistill::Error::Invalid("--lanes must be a whole number".into()))?;
                let products = products(a)?;
                let r = lm::eval_checkpoints_with(&ckpts.0, file.as_deref(), &cache, max, lanes, products)?;
                let mut out = json!({
                    "loss": r.loss,
                    "ppl": r.loss.exp(),
                    "tokens": r.tokens,
                    "file_tokens": r.file_tokens,
                    "lanes": r.lanes,
                    "oov_rate": r.oov_rate.unwrap_or(f64::NAN),
                    "products": products.to_string(),
                });
                if let Some(other) = a.get_one::<String>("against") {
                    out["churn"] = json!(lm::churn_checkpoints_with(&ckpts.0[0], Path::new(other), file.as_deref(), &cache, max, lanes, products)?);
                }
                println!("{out}");
                Ok(())
            }
            Some(("teacher-cache", a)) => {
                let cfg: LmConfig = load_config(a, false)?;
                print_cache(&codistill::train::teacher_cache::write_teacher_cache::<codistill::tasks::lm::LmTask>(&cfg, num(a, "top_k")?)?);
                Ok(())
            }
            Some(("noise-scale", a)) => run_noise_scale::<codistill::tasks::lm::LmTask>(a),
            Some(("sample", a)) => {
                let paths = codistill::config::Paths::parse_value(a.get_one::<String>("checkpoint").expect("required")).map_err(codistill::Error::Invalid)?;
                let dev = a
                    .get_one::<String>("device")
                    .expect("defaulted")
                    .parse::<codistill::train::DeviceChoice>()
                    .map_err(codistill::Error::Invalid)?
                    .resolve()?;
                let models = lm::load_checkpoints(&paths.0, dev)?;
                let mut s = codistill::train::sample::Sampler::new(&models, 1, num(a, "temperature")?, num(a, "seed")?, dev)?;
                let prompt = a.get_one::<String>("prompt").map(|p| s.vocab().encode_text(p)).unwrap_or_default();
                s.feed(&prompt)?;
                let out = s.tokens(num(a, "tokens")?)?.remove(0);
                let vocab = s.vocab();
                let shown = codistill::train::sample::render(vocab, &prompt);
                let sep = if shown.is_empty() || vocab.tokenizer == codistill::data::text::Tokenizer::Byte { "" } else { " " };
                println!("{shown}{sep}{}", codistill::train::sample::render(vocab, &out));
                Ok(())
            }
            _ => unreachable!("clap requires a subcommand"),
        },
        Some(("criteo", sub)) => run_criteo(sub),
        _ => unreachable!("clap requires a subcommand"),
    }
}

fn main() -> ExitCode {
    // Output piped into a reader that stops early (`codistill info | head -1`) ends the process
    // quietly, as with other command-line tools, instead of a panic in println!.
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of SIGPIPE before any other thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    codistill::tune_allocator();
    let m = cli().get_matches();
    match run(&m) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
