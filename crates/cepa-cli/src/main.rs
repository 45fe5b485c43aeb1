//! The `cepa` command line: parse, run, map the result to an exit code.

mod args;
mod eval;
mod inspect;
mod invert;
mod report;
mod scan;
mod zoo;

use std::process::ExitCode;

use clap::Parser;

/// Exit codes: 0 clean / success, 1 backdoor suspected, 2 error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitStatus {
    Success = 0,
    Backdoor = 1,
    Error = 2,
}

fn main() -> ExitCode {
    cepa::runtime::tune_allocator();
    let cli = args::Cli::parse();
    init_logging(cli.verbose, cli.quiet);
    let status = match run(cli) {
        Ok(s) => s,
        Err(e) => {
            let chain: Vec<String> = e.chain().map(ToString::to_string).collect();
            eprintln!("error: {}", dedup_chain(&chain).join(": "));
            ExitStatus::Error
        }
    };
    ExitCode::from(status as u8)
}

fn run(cli: args::Cli) -> anyhow::Result<ExitStatus> {
    let quiet = cli.quiet;
    match cli.command {
        args::Command::Inspect(a) => inspect::run(a),
        args::Command::Scan(a) => scan::run(a, quiet),
        args::Command::Invert(a) => invert::run(a),
        args::Command::Zoo(c) => zoo::run(c, quiet),
        args::Command::Eval(a) => eval::run(a, quiet),
    }
}

/// Drop chain entries already contained in the previous one (anyhow contexts often repeat).
fn dedup_chain(chain: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for c in chain {
        if out.last().is_some_and(|l| l.contains(c.as_str())) {
            continue;
        }
        out.push(c.replace('\n', " "));
    }
    out
}

fn init_logging(verbose: u8, quiet: bool) {
    use tracing_subscriber::EnvFilter;
    let default = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, _) => "debug",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .without_time()
        .init();
}

/// Print to stdout; a closed pipe (e.g. `| head`) ends the program quietly instead of panicking.
pub fn out(text: &str) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        && e.kind() == std::io::ErrorKind::BrokenPipe
    {
        std::process::exit(0);
    }
}
