//! Why a command failed, and its exit code.

use std::fmt;

/// A failed command: one line for stderr and the exit code.
#[derive(Debug)]
pub struct Failure {
    /// 1 for operational failures, 2 for usage and settings errors.
    pub code: u8,
    /// What went wrong, in one line.
    pub message: String,
}

impl Failure {
    /// Exit code 1: a server unreachable, a purge not taken...
    pub fn operational(message: impl fmt::Display) -> Self {
        Self {
            code: 1,
            message: one_line(message),
        }
    }

    /// Exit code 2: bad arguments or settings.
    pub fn usage(message: impl fmt::Display) -> Self {
        Self {
            code: 2,
            message: one_line(message),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

fn one_line(message: impl fmt::Display) -> String {
    message
        .to_string()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(": ")
}

impl From<cachette::Error> for Failure {
    fn from(error: cachette::Error) -> Self {
        match error {
            cachette::Error::Settings(_)
            | cachette::Error::UnknownCache { .. }
            | cachette::Error::MissingFeature { .. }
            | cachette::Error::UnknownKeyFunction { .. } => Self::usage(error),
            _ => Self::operational(error),
        }
    }
}

/// The result of a command.
pub type Outcome = Result<(), Failure>;
