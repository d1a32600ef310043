//! The error every validation step returns: which flag, and what is wrong with it.

use crate::{breaker::InvalidPolicy, retry::InvalidRetryPolicy};

/// A configuration that cannot work; the message names the flag and what to do.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A flag has a value outside its range.
    #[error("--{flag}: {problem}")]
    Invalid {
        /// The flag.
        flag: &'static str,
        /// What is wrong and what is expected.
        problem: String,
    },
    /// The retry flags do not form a usable policy.
    #[error("retry flags: {0}")]
    Retry(#[from] InvalidRetryPolicy),
    /// The circuit breaker flags do not form a usable policy.
    #[error("--breaker-* flags: {0}")]
    Breaker(#[from] InvalidPolicy),
}

/// The error of `--{flag}`: `problem` says what is wrong and what is expected.
pub(super) fn invalid(flag: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { flag, problem: problem.into() }
}
