//! Configs: one table per trainer is the single source of every option's name, type, default and
//! help. From it come the struct, TOML loading (an unknown key is an error naming the file and
//! line), command-line flags (`--hidden-size 650` for `hidden_size`), and `--help` text that shows
//! each default. Precedence: defaults < config file < command line.

use crate::{Error, Result};
use std::path::{Path, PathBuf};

/// A config field's text form: parsed from TOML and the command line alike, printed for
/// `--help` and for the effective config stored in checkpoints.
pub trait ConfigValue: Sized {
    fn parse_value(s: &str) -> std::result::Result<Self, String>;
    fn show(&self) -> String;
}

macro_rules! via_fromstr {
    ($($t:ty),*) => {$(
        impl ConfigValue for $t {
            fn parse_value(s: &str) -> std::result::Result<Self, String> {
                s.trim().parse::<$t>().map_err(|e| format!("{s:?} is not a valid {}: {e}", stringify!($t)))
            }
            fn show(&self) -> String {
                self.to_string()
            }
        }
    )*};
}
via_fromstr!(u64, usize, f32, bool, String);

impl ConfigValue for PathBuf {
    fn parse_value(s: &str) -> std::result::Result<Self, String> {
        Ok(PathBuf::from(s))
    }
    fn show(&self) -> String {
        self.display().to_string()
    }
}

/// Optional paths: the empty string means none.
impl ConfigValue for Option<PathBuf> {
    fn parse_value(s: &str) -> std::result::Result<Self, String> {
        Ok(if s.is_empty() { None } else { Some(PathBuf::from(s)) })
    }
    fn show(&self) -> String {
        self.as_ref().map(|p| p.display().to_string()).unwrap_or_default()
    }
}

/// An optional number: the empty string means none.
impl ConfigValue for Option<f32> {
    fn parse_value(s: &str) -> std::result::Result<Self, String> {
        if s.trim().is_empty() {
            return Ok(None);
        }
        s.trim().parse::<f32>().map(Some).map_err(|e| format!("{s:?} is not a valid f32: {e}"))
    }
    fn show(&self) -> String {
        self.map(|v| v.to_string()).unwrap_or_default()
    }
}

/// A list of paths: comma-separated in its text form (the empty string is none), a TOML array of
/// strings or one comma-separated string in a config file.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Paths(pub Vec<PathBuf>);

impl Paths {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl ConfigValue for Paths {
    fn parse_value(s: &str) -> std::result::Result<Self, String> {
        if s.trim().is_empty() {
            return Ok(Paths(Vec::new()));
        }
        s.split(',')
            .map(|p| match p.trim() {
                "" => Err(format!("{s:?} has an empty path in its comma-separated list")),
                p => Ok(PathBuf::from(p)),
            })
            .collect::<std::result::Result<_, _>>()
            .map(Paths)
    }
    fn show(&self) -> String {
        self.0.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(",")
    }
}

/// What every config table offers, so that code can load any of them the same way.
pub trait ConfigTable: Default {
    fn set(&mut self, key: &str, value: &str) -> std::result::Result<(), String>;
    fn entries(&self) -> Vec<(&'static str, String)>;
    fn apply_matches(&mut self, m: &clap::ArgMatches) -> Result<()>;
    fn apply_toml_file(&mut self, path: &Path) -> Result<()>;
}

/// Error unless `saved` and `now` agree on every key in `keys` (resuming from a checkpoint).
pub fn require_same(origin: &Path, keys: &[&str], saved: &[(&str, String)], now: &[(&str, String)]) -> Result<()> {
    for key in keys {
        let find = |e: &[(&str, String)]| e.iter().find(|x| x.0 == *key).map(|x| x.1.clone()).unwrap_or_default();
        let (a, b) = (find(saved), find(now));
        if a != b {
            return Err(Error::Invalid(format!("{}: checkpoint has {key} = {a:?} but this run has {b:?}; resuming needs the same value", origin.display())));
        }
    }
    Ok(())
}

/// Implement `ConfigValue` for an enum that has `FromStr<Err = String>` and `Display`.
#[macro_export]
macro_rules! config_enum {
    ($($t:ty),*) => {$(
        impl $crate::config::ConfigValue for $t {
            fn parse_value(s: &str) -> std::result::Result<Self, String> {
                s.trim().parse::<$t>()
            }
            fn show(&self) -> String {
                self.to_string()
            }
        }
    )*};
}

/// Declare a config table: `config_table! { pub struct LmConfig { /// help\n field: Type = default, ... } }`.
#[macro_export]
macro_rules! config_table {
    ($(#[$meta:meta])* pub struct $name:ident { $( #[doc = $doc:literal] $field:ident : $ty:ty = $default:expr, )* }) => {
        $(#[$meta])*
        #[derive(Clone, Debug, PartialEq)]
        pub struct $name { $( #[doc = $doc] pub $field: $ty, )* }

        impl Default for $name {
            fn default() -> Self {
                $name { $( $field: $default, )* }
            }
        }

        impl $name {
            /// Every key, in declaration order.
            pub const KEYS: &'static [&'static str] = &[$(stringify!($field)),*];
            const HELP: &'static [&'static str] = &[$($doc.trim_ascii()),*];

            /// Set one field from its text form.
            pub fn set(&mut self, key: &str, value: &str) -> std::result::Result<(), String> {
                use $crate::config::ConfigValue;
                match key {
                    $( stringify!($field) => {
                        self.$field = <$ty>::parse_value(value).map_err(|e| format!("{key}: {e}"))?;
                        Ok(())
                    } )*
                    _ => Err(format!("unknown key {key:?} (known keys: {})", Self::KEYS.join(", "))),
                }
            }

            /// `(key, value as text)` for every field.
            pub fn entries(&self) -> Vec<(&'static str, String)> {
                use $crate::config::ConfigValue;
                vec![$( (stringify!($field), self.$field.show()) ),*]
            }

            /// Command-line flags for every field, with the default in the help.
            pub fn args() -> Vec<clap::Arg> {
                let d = Self::default().entries();
                Self::KEYS.iter().zip(Self::HELP).zip(d).map(|((k, h), (_, dv))| {
                    let shown = if dv.is_empty() { "none".to_string() } else { dv };
                    clap::Arg::new(*k)
                        .long(k.replace('_', "-"))
                        .value_name("VALUE")
                        .help(format!("{h} [default: {shown}]"))
                }).collect()
            }

            /// Apply the flags that were given on the command line.
            pub fn apply_matches(&mut self, m: &clap::ArgMatches) -> $crate::Result<()> {
                for k in Self::KEYS {
                    if let Some(v) = m.get_one::<String>(k) {
                        self.set(k, v).map_err(|e| $crate::Error::Invalid(format!("--{}: {e}", k.replace('_', "-"))))?;
                    }
                }
                Ok(())
            }

            /// Apply a TOML file's keys over the current values.
            pub fn apply_toml_file(&mut self, path: &std::path::Path) -> $crate::Result<()> {
                let text = std::fs::read_to_string(path).map_err(|e| $crate::Error::io(path, e))?;
                $crate::config::apply_toml(&text, path, |k, v| self.set(k, v))
            }

            /// Apply TOML text (a config stored in a checkpoint).
            pub fn apply_toml_str(&mut self, text: &str, origin: &std::path::Path) -> $crate::Result<()> {
                $crate::config::apply_toml(text, origin, |k, v| self.set(k, v))
            }

            /// The effective config as TOML.
            pub fn to_toml(&self) -> String {
                $crate::config::to_toml(&self.entries())
            }
        }

        impl $crate::config::ConfigTable for $name {
            fn set(&mut self, key: &str, value: &str) -> std::result::Result<(), String> {
                $name::set(self, key, value)
            }
            fn entries(&self) -> Vec<(&'static str, String)> {
                $name::entries(self)
            }
            fn apply_matches(&mut self, m: &clap::ArgMatches) -> $crate::Result<()> {
                $name::apply_matches(self, m)
            }
            fn apply_toml_file(&mut self, path: &std::path::Path) -> $crate::Result<()> {
                $name::apply_toml_file(self, path)
            }
        }
    };
}

/// 1-based line of the first `key = ...` in a TOML text, for error messages.
fn key_line(text: &str, key: &str) -> usize {
    text.lines()
        .position(|l| {
            let l = l.trim_start();
            l.strip_prefix(key).map(|r| r.trim_start().starts_with('=')).unwrap_or(false)
        })
        .map(|i| i + 1)
        .unwrap_or(0)
}

pub fn apply_toml(text: &str, path: &Path, mut set: impl FnMut(&str, &str) -> std::result::Result<(), String>) -> Result<()> {
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| Error::Data {
        path: path.to_path_buf(),
        line: e.span().map(|s| text[..s.start].lines().count().max(1)).unwrap_or(0),
        field: "toml".into(),
        message: e.message().to_string(),
    })?;
    for (k, v) in &table {
        let s = match v {
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Float(f) => f.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            // A list of paths; a string inside that is not one is the error below.
            toml::Value::Array(a) if a.iter().all(|x| x.is_str()) => a.iter().filter_map(|x| x.as_str()).collect::<Vec<_>>().join(","),
            other => {
                return Err(Error::Data {
                    path: path.to_path_buf(),
                    line: key_line(text, k),
                    field: k.clone(),
                    message: format!("expected a string, number, boolean or array of strings, got {}", other.type_str()),
                })
            }
        };
        set(k, &s).map_err(|message| Error::Data { path: path.to_path_buf(), line: key_line(text, k), field: k.clone(), message })?;
    }
    Ok(())
}

pub fn to_toml(entries: &[(&str, String)]) -> String {
    let mut t = toml::Table::new();
    for (k, v) in entries {
        t.insert(k.to_string(), toml::Value::String(v.clone()));
    }
    toml::to_string(&t).expect("a table of strings serialises")
}

#[cfg(test)]
#[allow(dead_code)]
mod tests {
    use std::path::Path;

    crate::config_table! {
        pub struct Demo {
            /// Hidden units
            hidden_size: usize = 200,
            /// Learning rate
            lr: f32 = 0.5,
            /// Where to write
            out: std::path::PathBuf = "runs/x".into(),
            /// Optional file
            resume: Option<std::path::PathBuf> = None,
            /// Files
            teacher: super::Paths = Default::default(),
        }
    }

    #[test]
    fn path_lists_from_the_command_line_and_toml() {
        use std::path::PathBuf;
        let mut c = Demo::default();
        c.set("teacher", "a.safetensors, b/c.safetensors").unwrap();
        assert_eq!(c.teacher.0, vec![PathBuf::from("a.safetensors"), PathBuf::from("b/c.safetensors")]);
        let mut d = Demo::default();
        d.apply_toml_str(&c.to_toml(), Path::new("saved")).unwrap();
        assert_eq!(c, d);
        let mut e = Demo::default();
        e.apply_toml_str("teacher = [\"x\", \"y\"]\n", Path::new("t.toml")).unwrap();
        assert_eq!(e.teacher.0.len(), 2);
        assert!(e.set("teacher", "a,,b").unwrap_err().contains("empty path"));
        e.set("teacher", "").unwrap();
        assert!(e.teacher.is_empty());
        let err = e.apply_toml_str("teacher = [1, 2]\n", Path::new("t.toml")).unwrap_err().to_string();
        assert!(err.contains("t.toml:1") && err.contains("array"), "{err}");
    }

    #[test]
    fn toml_overrides_defaults_and_round_trips() {
        let mut c = Demo::default();
        c.apply_toml_str("hidden_size = 650\nlr = 1e-3\nresume = \"a.safetensors\"\n", Path::new("x.toml")).unwrap();
        assert_eq!((c.hidden_size, c.lr), (650, 1e-3));
        let mut d = Demo::default();
        d.apply_toml_str(&c.to_toml(), Path::new("saved")).unwrap();
        assert_eq!(c, d);
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let e = Demo::default().apply_toml_str("lr = 1.0\nhiden_size = 3\n", Path::new("cfg.toml")).unwrap_err().to_string();
        assert!(e.contains("cfg.toml:2") && e.contains("hiden_size") && e.contains("hidden_size"), "{e}");
    }

    #[test]
    fn bad_value_and_bad_syntax_are_errors() {
        let e = Demo::default().apply_toml_str("hidden_size = -3\n", Path::new("c.toml")).unwrap_err().to_string();
        assert!(e.contains("hidden_size") && e.contains("-3"), "{e}");
        assert!(Demo::default().apply_toml_str("lr = = 2\n", Path::new("c.toml")).is_err());
    }

    #[test]
    fn command_line_overrides_and_help_shows_defaults() {
        let cmd = clap::Command::new("t").args(Demo::args());
        let help = cmd.clone().render_help().to_string();
        assert!(help.contains("--hidden-size") && help.contains("[default: 200]"), "{help}");
        let m = cmd.try_get_matches_from(["t", "--lr", "0.25"]).unwrap();
        let mut c = Demo::default();
        c.apply_matches(&m).unwrap();
        assert_eq!(c.lr, 0.25);
    }
}
