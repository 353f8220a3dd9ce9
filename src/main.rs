//! The `codistill` command line, thin over the library.

use clap::{Arg, ArgMatches, Command};
use codistill::train::lm::{self, LmConfig};
use codistill::Result;
use std::path::PathBuf;
use std::process::ExitCode;

fn config_arg() -> Arg {
    Arg::new("config").long("config").value_name("FILE").help("TOML file of options; flags given here override it")
}

fn cli() -> Command {
    Command::new("codistill")
        .version(env!("CARGO_PKG_VERSION"))
        .about("A training engine for knowledge distillation and online codistillation")
        .subcommand_required(true)
        .arg_required_else_help(true)
        .subcommand(Command::new("info").about("Print the build: version, backends and CPU threads"))
        .subcommand(
            Command::new("lm")
                .about("LSTM language models")
                .subcommand_required(true)
                .subcommand(Command::new("train").about("Train a language model (on the synthetic corpus unless --data or --train is given)").arg(config_arg()).args(LmConfig::args()))
                .subcommand(
                    Command::new("eval")
                        .about("Report cross-entropy and perplexity of a checkpoint on a text file")
                        .arg(Arg::new("checkpoint").long("checkpoint").value_name("FILE").required(true).help("A checkpoint written by lm train"))
                        .arg(Arg::new("file").long("file").value_name("FILE").help("Text to score [default: the test file of the checkpoint's config]"))
                        .arg(Arg::new("cache").long("cache").value_name("DIR").default_value(".codistill-cache").help("Cache directory for token files"))
                        .arg(Arg::new("max_tokens").long("max-tokens").value_name("N").default_value("0").help("Score at most N tokens (0: all)")),
                ),
        )
}

fn lm_config(m: &ArgMatches) -> Result<LmConfig> {
    let mut cfg = LmConfig::default();
    if let Some(path) = m.get_one::<String>("config") {
        cfg.apply_toml_file(&PathBuf::from(path))?;
    }
    cfg.apply_matches(m)?;
    Ok(cfg)
}

fn run(m: &ArgMatches) -> Result<()> {
    match m.subcommand() {
        Some(("info", _)) => {
            let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
            println!("codistill {}", env!("CARGO_PKG_VERSION"));
            println!("backends: cpu ({threads} threads)");
            println!("cuda: not in this build (the CUDA backend is not implemented yet)");
            Ok(())
        }
        Some(("lm", sub)) => match sub.subcommand() {
            Some(("train", a)) => {
                let cfg = lm_config(a)?;
                let s = lm::train(&cfg)?;
                println!("trained {} steps in {:.1} s ({:.0} tokens/s)", s.steps, s.seconds, s.tokens_per_s);
                if let Some(v) = s.best_valid {
                    println!("best validation: loss {v:.4} nats/token, perplexity {:.2}", v.exp());
                }
                if let Some(t) = s.test {
                    println!("test: loss {t:.4} nats/token, perplexity {:.2}", t.exp());
                }
                if let Some(f) = s.floors {
                    println!("synthetic source entropy (the floor): validation {:.4}, test {:.4} nats/token", f.valid, f.test);
                }
                println!("outputs in {}", cfg.out.display());
                Ok(())
            }
            Some(("eval", a)) => {
                let ckpt = PathBuf::from(a.get_one::<String>("checkpoint").expect("required"));
                let file = a.get_one::<String>("file").map(PathBuf::from);
                let cache = PathBuf::from(a.get_one::<String>("cache").expect("defaulted"));
                let max: usize = a.get_one::<String>("max_tokens").expect("defaulted").parse().map_err(|_| codistill::Error::Invalid("--max-tokens must be a whole number".into()))?;
                let (ce, n) = lm::eval_checkpoint(&ckpt, file.as_deref(), &cache, max)?;
                println!("{{\"loss\":{ce},\"ppl\":{},\"tokens\":{n}}}", ce.exp());
                Ok(())
            }
            _ => unreachable!("clap requires a subcommand"),
        },
        _ => unreachable!("clap requires a subcommand"),
    }
}

fn main() -> ExitCode {
    let m = cli().get_matches();
    match run(&m) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
