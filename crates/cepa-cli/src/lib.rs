//! The `cepa` command line as a library: [`main_with`] parses arguments, runs the command and
//! returns the exit code. The `cepa` binary and the Python package's `cepa` command both call it;
//! the pipeline itself is `cepa::pipeline`.

mod args;
mod eval;
mod inspect;
mod invert;
mod report;
mod scan;
mod zoo;

use std::ffi::OsString;
use std::path::Path;

use anyhow::Context;
use cepa::model::Classifier;
use cepa::pipeline::{InvertRun, ScanRun};
use clap::Parser;

pub use scan::{against_references as scan_against_references, report_json as scan_report_json};

/// Exit codes: 0 clean / success, 1 backdoor suspected, 2 error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitStatus {
    Success = 0,
    Backdoor = 1,
    Error = 2,
}

/// Run the command line `args` (the program name first) and return its exit code: 0 clean or
/// success, 1 backdoor suspected, 2 error (printed on stderr as one line).
pub fn main_with<I, T>(args: I) -> u8
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match args::Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            // Help and version go to stdout with 0, usage errors to stderr with 2 (as clap's
            // own `parse`).
            let _ = e.print();
            return e.exit_code().clamp(0, 255) as u8;
        }
    };
    init_logging(cli.verbose, cli.quiet);
    let status = match run(cli) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {}", error_line(&e));
            ExitStatus::Error
        }
    };
    status as u8
}

/// The one line an error is printed as (`error: ` and this): its chain of causes, each given once.
pub fn error_line(e: &anyhow::Error) -> String {
    let chain: Vec<String> = e.chain().map(ToString::to_string).collect();
    dedup_chain(&chain).join(": ")
}

/// What `cepa scan --out DIR` writes for `run` (of `model`, read from `path`): report.json,
/// report.html, the most anomalous class's perturbations and, after stage 2, the trigger; with
/// `reference`, the comparison with reference scans ([`scan_against_references`]) in both.
pub fn write_scan_report(
    dir: &Path,
    run: &ScanRun,
    reference: Option<&cepa::detect::reference::ReferenceComparison>,
    model: &Classifier,
    path: &Path,
) -> anyhow::Result<()> {
    let json = scan::report_json(run, reference)?;
    scan::write_out(dir, run, &json, reference, model, path)
        .with_context(|| format!("cannot write {}", dir.display()))
}

/// What `cepa invert --out DIR` writes for `run`: report.json, report.html, trigger.png (and
/// mask.png).
pub fn write_invert_report(
    dir: &Path,
    run: &InvertRun,
    model: &Classifier,
    path: &Path,
) -> anyhow::Result<()> {
    invert::write_out(dir, run, &run.to_json(model, path), model, path)
        .with_context(|| format!("cannot write {}", dir.display()))
}

fn run(cli: args::Cli) -> anyhow::Result<ExitStatus> {
    let (quiet, device) = (cli.quiet, cli.device);
    // A device that cannot be used fails before any file is read or anything computed.
    device.device(false)?;
    match cli.command {
        args::Command::Inspect(a) => inspect::run(a, device),
        args::Command::Scan(a) => scan::run(a, quiet, device),
        args::Command::Invert(a) => invert::run(a, device),
        args::Command::Zoo(c) => zoo::run(c, quiet, device),
        args::Command::Eval(a) => eval::run(a, quiet, device),
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
        // A second command in the same process (the Python module) keeps the first's logger.
        .try_init()
        .ok();
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
