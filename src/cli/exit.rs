//! How a command ends: the exit code cron and supervisors read, and the one place an error is
//! printed.
//!
//! Every command returns `Result<Code, Failure>`. A `Failure` carries its error and its code;
//! [`report`] prints the error once, with its whole chain (`error: what: because: because`),
//! and gives the code back to `main`. Commands that print a report of their own (a backfill that
//! stopped short, a verify with findings) return the code without a `Failure`.

use std::fmt;
use std::process::ExitCode;

/// The exit codes, one meaning each (the README lists them per command).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Code {
    /// 0: the command did what it was asked.
    Ok,
    /// 1: running it again will not help until something is fixed: bad configuration or
    /// credentials, a bad flag. For `verify` and `validate`: problems found.
    Fix,
    /// 2: running it again later can succeed: interrupted, partial, a service unreachable. For
    /// `verify`: the check could not run. For `transform`: an event failed a transform.
    Again,
}

impl From<Code> for ExitCode {
    fn from(code: Code) -> ExitCode {
        match code {
            Code::Ok => ExitCode::SUCCESS,
            Code::Fix => ExitCode::from(1),
            Code::Again => ExitCode::from(2),
        }
    }
}

impl Code {
    /// [`Code::Again`] when retrying helps, else [`Code::Fix`].
    pub fn retry_if(retryable: bool) -> Code {
        if retryable {
            Code::Again
        } else {
            Code::Fix
        }
    }
}

/// A command that failed: the error (printed once, with its chain), the exit code, and a line
/// saying what to do next, if there is one (`resume with: …`).
pub struct Failure {
    /// The exit code.
    pub code: Code,
    /// What went wrong.
    pub error: anyhow::Error,
    /// Printed after the error.
    pub hint: Option<String>,
}

impl Failure {
    /// This failure, followed by `hint` when printed.
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

impl fmt::Debug for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} ({:?})", self.error, self.code)
    }
}

/// Any error becomes a [`Code::Fix`] failure; give another code with [`OrExit::or_exit`].
impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(error: E) -> Self {
        Failure {
            code: Code::Fix,
            error: error.into(),
            hint: None,
        }
    }
}

/// A failure with this code, from a message.
pub fn fail(code: Code, message: impl fmt::Display) -> Failure {
    Failure {
        code,
        error: anyhow::anyhow!("{message}"),
        hint: None,
    }
}

/// Give a result's error an exit code.
pub trait OrExit<T> {
    /// The error, if any, as a failure with `code`.
    fn or_exit(self, code: Code) -> Result<T, Failure>;
}

impl<T, E: Into<anyhow::Error>> OrExit<T> for Result<T, E> {
    fn or_exit(self, code: Code) -> Result<T, Failure> {
        self.map_err(|e| Failure {
            code,
            error: e.into(),
            hint: None,
        })
    }
}

/// Errors of the library that say whether running again later can help.
pub trait RetryHint {
    /// Whether the same operation can succeed later without a change of configuration.
    fn retry_helps(&self) -> bool;
}

impl RetryHint for auditship::pipeline::PipelineError {
    fn retry_helps(&self) -> bool {
        self.is_retryable()
    }
}

impl RetryHint for auditship::store::StoreError {
    fn retry_helps(&self) -> bool {
        self.is_retryable()
    }
}

impl RetryHint for auditship::ops::backfill::BackfillError {
    fn retry_helps(&self) -> bool {
        self.is_retryable()
    }
}

/// A library error as a failure with the exit code its [`RetryHint`] says, under `context`.
pub fn retry_failure<E>(e: E, context: impl fmt::Display) -> Failure
where
    E: RetryHint + std::error::Error + Send + Sync + 'static,
{
    Failure {
        code: Code::retry_if(e.retry_helps()),
        error: anyhow::Error::from(e).context(context.to_string()),
        hint: None,
    }
}

/// Give a library error the exit code its [`RetryHint`] says, under `context`.
pub trait OrRetry<T> {
    /// [`Code::Again`] if retrying helps, else [`Code::Fix`]; the message starts with `context`.
    fn or_retry(self, context: impl fmt::Display) -> Result<T, Failure>;
}

impl<T, E> OrRetry<T> for Result<T, E>
where
    E: RetryHint + std::error::Error + Send + Sync + 'static,
{
    fn or_retry(self, context: impl fmt::Display) -> Result<T, Failure> {
        self.map_err(|e| retry_failure(e, context))
    }
}

/// What a command returns.
pub type CommandResult = Result<Code, Failure>;

/// Print a failure once, with its chain, and give its exit code.
pub fn report(result: CommandResult) -> ExitCode {
    match result {
        Ok(code) => code.into(),
        Err(f) => {
            eprintln!("error: {:#}", f.error);
            if let Some(hint) = f.hint {
                eprintln!("{hint}");
            }
            f.code.into()
        }
    }
}
