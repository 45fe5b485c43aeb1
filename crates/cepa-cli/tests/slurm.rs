//! Sharded evaluation on a real Slurm: `deploy/slurm/test.sh` starts a one-node slurmctld and
//! slurmd, runs a 3-task `cepa eval` array through sbatch and the merge as a dependent job,
//! kills a task with SIGKILL and resubmits it, and compares the merged tables with a
//! single-process run. It needs Debian's slurmctld, slurmd and munge and root; `.ci/run`
//! installs them and sets CEPA_REQUIRE_SLURM=1, which turns a missing Slurm into a failure.

use std::path::Path;
use std::process::Command;

#[test]
fn a_slurm_job_array_and_its_merge_equal_the_single_run_even_after_a_kill() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let required = std::env::var("CEPA_REQUIRE_SLURM").is_ok_and(|v| v == "1");
    let have = [
        "/usr/sbin/slurmctld",
        "/usr/sbin/slurmd",
        "/usr/sbin/munged",
    ]
    .iter()
    .all(|p| Path::new(p).is_file())
        && Command::new("sbatch").arg("--version").output().is_ok();
    // The daemons run as root here (SlurmUser=root).
    let root_user = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if !(have && root_user) {
        assert!(
            !required,
            "CEPA_REQUIRE_SLURM=1 but slurmctld, slurmd, munged or sbatch is missing, or not root"
        );
        eprintln!(
            "skipped: no Slurm here (apt-get install slurmctld slurmd munge slurm-client, as \
             root, or CEPA_REQUIRE_SLURM=1 to make this a failure)"
        );
        return;
    }
    let out = Command::new(root.join("deploy/slurm/test.sh"))
        .env("CEPA", env!("CARGO_BIN_EXE_cepa"))
        .output()
        .expect("run deploy/slurm/test.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("equal the single run") && stdout.contains("no torn line"),
        "{stdout}"
    );
}
