//! The worker count a user gets: the CPUs the process may use (its affinity mask, its cgroup's
//! CPU quota), unless `workers:` or `--workers` says otherwise, and logged at start.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::*;

/// The line a proxy started as `wrapper` + ringproxy + `args` logs about its workers, with the
/// configuration `extra` + one pool.
fn logged(wrapper: &[&str], extra: &str, args: &[&str]) -> String {
    let dir = TempDir::new("workers");
    let config = format!(
        "{extra}pools:\n  main:\n    listen: 127.0.0.1:{}\n    servers: [\"127.0.0.1:{}:1\"]\n",
        free_port(),
        free_port()
    );
    let path = dir.write("config.yaml", &config);
    let binary = env!("CARGO_BIN_EXE_ringproxy");
    let mut command = match wrapper {
        [] => Command::new(binary),
        [program, rest @ ..] => {
            let mut command = Command::new(program);
            command.args(rest).arg(binary);
            command
        }
    };
    let mut child = command
        .arg("--config")
        .arg(&path)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let line = lines
        .map_while(Result::ok)
        .find(|l| l.contains("worker threads"))
        .unwrap_or_default();
    child.kill().unwrap();
    child.wait().unwrap();
    line
}

fn cpus() -> usize {
    std::thread::available_parallelism().unwrap().get()
}

#[test]
fn the_default_is_the_cpus_the_process_may_use_and_settings_override_it() {
    let line = logged(&[], "", &[]);
    assert!(
        line.contains(&format!(
            "{} worker threads, from the CPUs this process may use",
            cpus()
        )),
        "{line}"
    );
    assert!(
        logged(&[], "workers: 3\n", &[])
            .contains("3 worker threads, from the configuration's workers")
    );
    let line = logged(&[], "workers: 3\n", &["--workers", "2"]);
    assert!(line.contains("2 worker threads, from --workers"), "{line}");
}

#[test]
fn an_affinity_mask_of_one_cpu_gives_one_worker() {
    let line = logged(&["taskset", "-c", "0"], "", &[]);
    assert!(
        line.contains("1 worker threads, from the CPUs this process may use"),
        "{line}"
    );
}

/// A cgroup whose CPU quota is one CPU, where the machine lets the tests make one (cgroup v2's
/// `cpu.max`, or v1's `cpu` controller).
#[test]
fn a_cgroup_quota_of_one_cpu_gives_one_worker() {
    let Some(cgroup) = QuotaCgroup::make() else {
        eprintln!("no cgroup with a CPU quota can be made here: not checked");
        return;
    };
    let procs = cgroup.0.join("cgroup.procs");
    let script = format!("echo $$ > {} && exec \"$@\"", procs.display());
    let line = logged(&["sh", "-c", &script, "sh"], "", &[]);
    assert!(
        line.contains("1 worker threads, from the CPUs this process may use"),
        "{line}"
    );
}

struct QuotaCgroup(std::path::PathBuf);

impl QuotaCgroup {
    fn make() -> Option<QuotaCgroup> {
        let name = format!("ringproxy-test-{}", std::process::id());
        let v2 = std::path::Path::new("/sys/fs/cgroup/cgroup.controllers");
        let (dir, files): (_, &[(&str, &str)]) = match v2.exists() {
            true => (
                std::path::Path::new("/sys/fs/cgroup").join(&name),
                &[("cpu.max", "100000 100000")],
            ),
            false => (
                std::path::Path::new("/sys/fs/cgroup/cpu").join(&name),
                &[
                    ("cpu.cfs_period_us", "100000"),
                    ("cpu.cfs_quota_us", "100000"),
                ],
            ),
        };
        std::fs::create_dir(&dir).ok()?;
        let cgroup = QuotaCgroup(dir);
        for (file, value) in files {
            std::fs::write(cgroup.0.join(file), value).ok()?;
        }
        Some(cgroup)
    }
}

impl Drop for QuotaCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}
