//! The Python package, for real: build the wheel with maturin from this checkout, install it into
//! a fresh virtual environment, and run its pytest suite (python/tests) there, with the `cepa`
//! command the wheel put on that environment's PATH.
//!
//! Needs python3 with venv, and PyPI for maturin, numpy and pytest. Without them the test says why
//! and passes, unless CEPA_REQUIRE_PYTHON=1 (as `.ci/run` sets), where it fails.

use std::path::{Path, PathBuf};
use std::process::Command;

/// maturin, pinned: the wheel is built the same way every time.
const MATURIN: &str = "maturin==1.16.0";

fn required() -> bool {
    std::env::var("CEPA_REQUIRE_PYTHON").is_ok_and(|v| v == "1")
}

/// Run `cmd`; `Err` with its output when it cannot start or fails.
fn run(cmd: &mut Command) -> Result<String, String> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {shown}: {e}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(format!("{shown} failed ({}):\n{text}", out.status))
    }
}

/// A missing piece of the environment: fail when Python is required, else say so and skip.
fn unavailable(why: &str) {
    assert!(!required(), "CEPA_REQUIRE_PYTHON=1 but {why}");
    eprintln!("skipped: {why} (set CEPA_REQUIRE_PYTHON=1 to make this a failure)");
}

fn venv(python: &str, dir: &Path) -> Result<PathBuf, String> {
    run(Command::new(python).args(["-m", "venv"]).arg(dir))?;
    Ok(dir.join("bin"))
}

fn pip_install(bin: &Path, what: &[&str]) -> Result<String, String> {
    run(Command::new(bin.join("python"))
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .args(what))
}

#[test]
fn wheel_installs_the_cli_and_the_api_and_passes_pytest() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let repo = crate_dir.join("../..").canonicalize().expect("repo root");
    let target = repo.join("target");
    let python = std::env::var("CEPA_PYTHON").unwrap_or_else(|_| "python3".into());
    if run(Command::new(&python).arg("--version")).is_err() {
        return unavailable(&format!("{python} is not available"));
    }

    // maturin lives in its own environment, kept between runs.
    let tools = target.join("python-tools");
    let tools_bin = tools.join("bin");
    if !tools_bin.join("maturin").exists() {
        let made = venv(&python, &tools).and_then(|bin| pip_install(&bin, &[MATURIN]));
        if let Err(e) = made {
            let _ = std::fs::remove_dir_all(&tools);
            return unavailable(&format!("maturin could not be installed: {e}"));
        }
    }

    // The wheel, from this checkout, with the profile `cargo test` builds (dependencies are
    // shared with it, so only the extension itself is compiled).
    let wheels = target.join("wheels");
    for old in std::fs::read_dir(&wheels).into_iter().flatten().flatten() {
        if old.file_name().to_string_lossy().starts_with("cepa-") {
            let _ = std::fs::remove_file(old.path());
        }
    }
    run(Command::new(tools_bin.join("maturin"))
        .args(["build", "--profile", "dev", "--interpreter"])
        .arg(&python)
        .arg("--manifest-path")
        .arg(crate_dir.join("Cargo.toml"))
        .arg("--out")
        .arg(&wheels)
        .current_dir(&repo))
    .unwrap_or_else(|e| panic!("the wheel did not build: {e}"));
    let wheel: Vec<PathBuf> = std::fs::read_dir(&wheels)
        .expect("target/wheels")
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("cepa-"))
                && p.extension().is_some_and(|x| x == "whl")
        })
        .collect();
    assert_eq!(wheel.len(), 1, "one wheel expected in {}", wheels.display());
    let name = wheel[0].file_name().unwrap().to_string_lossy().to_string();
    assert!(name.contains("abi3"), "{name} is not an abi3 wheel");

    // A fresh environment with the wheel, numpy and pytest (no torch: its test is skipped).
    let env_dir = target.join("python-test-venv");
    let _ = std::fs::remove_dir_all(&env_dir);
    let bin = venv(&python, &env_dir).expect("a fresh virtual environment");
    if let Err(e) = pip_install(&bin, &["numpy", "pytest"]) {
        return unavailable(&format!("numpy and pytest could not be installed: {e}"));
    }
    pip_install(&bin, &[wheel[0].to_str().unwrap()])
        .unwrap_or_else(|e| panic!("the wheel did not install: {e}"));
    assert!(
        bin.join("cepa").exists(),
        "the wheel installed no `cepa` command"
    );

    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new(bin.join("python"))
        .args(["-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider"])
        .arg(crate_dir.join("python/tests"))
        .env("PATH", path)
        .env("CEPA_REPO", &repo)
        .env_remove("PYTHONPATH")
        .current_dir(&env_dir)
        .output()
        .expect("pytest runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    assert!(out.status.success(), "pytest failed:\n{text}");
    assert!(text.contains("passed"), "pytest ran no test:\n{text}");
}
