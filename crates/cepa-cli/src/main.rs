//! The `cepa` binary: the command line of [`cepa_cli::main_with`].

use std::process::ExitCode;

fn main() -> ExitCode {
    cepa::runtime::tune_allocator();
    ExitCode::from(cepa_cli::main_with(std::env::args_os()))
}
