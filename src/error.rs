//! One error type for the whole crate. Every message names what disagreed: the shapes, the dtypes,
//! the file and line, so that a user can act on it without a debugger.

use std::fmt;
use std::path::PathBuf;

#[derive(Debug)]
pub enum Error {
    /// Shapes that do not fit together; the message names both.
    Shape(String),
    /// A dtype the operation does not accept.
    DType(String),
    /// A device that is missing, or tensors on different devices.
    Device(String),
    /// An argument outside its domain (an index past the vocabulary, a probability above 1, ...).
    Invalid(String),
    /// An I/O failure, with the path it happened on.
    Io { path: PathBuf, source: std::io::Error },
    /// Bad input data: the file, the 1-based line, the field and what was wrong with it.
    Data { path: PathBuf, line: usize, field: String, message: String },
}

pub type Result<T> = std::result::Result<T, Error>;

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Shape(m) => write!(f, "shape mismatch: {m}"),
            Error::DType(m) => write!(f, "dtype mismatch: {m}"),
            Error::Device(m) => write!(f, "device: {m}"),
            Error::Invalid(m) => write!(f, "invalid argument: {m}"),
            Error::Io { path, source } => write!(f, "{}: {source}", path.display()),
            Error::Data { path, line, field, message } => {
                write!(f, "{}:{line}: field {field}: {message}", path.display())
            }
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
}

/// Return early with an error built from a format string: `bail!(Shape, "a is {:?}", s)`.
#[macro_export]
macro_rules! bail {
    ($kind:ident, $($arg:tt)*) => {
        return Err($crate::Error::$kind(format!($($arg)*)))
    };
}

/// `FromStr` and `Display` for an enum of named choices (an option's values), and `NAMES`, the
/// names in the order of the variants: `named_choices!(Quant, "the weight precision", { None =>
/// "none", Int8 => "int8" })`; a variant may take aliases (`Rkd => "rkd" | "rkd-distance"`). An
/// unknown name is an error listing the choices.
#[macro_export]
macro_rules! named_choices {
    ($t:ident, $what:literal, { $($v:ident => $name:literal $(| $alias:literal)*),+ $(,)? }) => {
        impl $t {
            /// The option's values, in the order of the variants.
            pub const NAMES: &'static [&'static str] = &[$($name),+];
        }

        impl std::str::FromStr for $t {
            type Err = String;
            fn from_str(s: &str) -> std::result::Result<Self, String> {
                match s {
                    $($name $(| $alias)* => Ok($t::$v),)+
                    _ => {
                        let (last, rest) = $t::NAMES.split_last().expect("a choice");
                        Err(format!("{} must be {} or {last}, got {s:?}", $what, rest.join(", ")))
                    }
                }
            }
        }

        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(match self {
                    $($t::$v => $name,)+
                })
            }
        }
    };
}
