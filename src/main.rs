//! The `auditship` command line: parse flags, build the real objects, call into the library,
//! print errors once, here, with their whole chain.

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    cli::main()
}
