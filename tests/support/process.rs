//! Run the real worker binaries as child processes.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
};

/// A built binary of the workspace (`scripts/test` builds them before the tests run).
pub fn binary(name: &str) -> PathBuf {
    // target/<profile>/deps/<test-exe> → target/<profile>/<name>
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().and_then(|deps| deps.parent()).expect("target/<profile> directory");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (scripts/test does)",
        path.display()
    );
    path
}

/// Run the `courier` CLI with `args` to completion (no `COURIER_BROKER` from the
/// environment): (exit code, stdout, stderr).
pub fn courier(args: &[String]) -> (i32, String, String) {
    let output = Command::new(binary("courier")).args(args).env_remove("COURIER_BROKER").output().expect("run courier");
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    (output.status.code().unwrap_or(-1), text(&output.stdout), text(&output.stderr))
}

/// A running worker process; killed when dropped.
#[derive(Debug)]
pub struct Process {
    /// The child process.
    child: Child,
    /// Where its output goes (kept for post-mortems).
    pub log: PathBuf,
}

impl Process {
    /// Start `binary` with `args`; output goes to `target/test-logs/<label>.log`.
    pub fn start(binary_name: &str, label: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::start_under(&[], binary_name, label, args, env)
    }

    /// [`Self::start`] under `wrapper` (a profiler's command line, say; none when empty). The
    /// wrapper must run the binary in its own process, as valgrind does: the pid measured and
    /// signalled is the wrapper's.
    pub fn start_under(wrapper: &[&str], binary_name: &str, label: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        let dir = binary(binary_name).parent().and_then(|p| p.parent()).expect("target dir").join("test-logs");
        std::fs::create_dir_all(&dir).expect("log dir");
        let log = dir.join(format!("{label}.log"));
        let file = std::fs::File::create(&log).expect("log file");
        let mut command = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut command = Command::new(program);
                command.args(rest).arg(binary(binary_name));
                // Under valgrind each byte of a `rep movsb` counts as an instruction, and
                // glibc's memcpy takes it for copies above 8 KiB: a future of that size
                // moved once read as 8,000 instructions instead of 800, depending on
                // where it was copied from. Vector copies at any size keep counts fair.
                command.env("GLIBC_TUNABLES", "glibc.cpu.x86_rep_movsb_threshold=1000000000");
                command
            }
            None => Command::new(binary(binary_name)),
        };
        command.args(args).stdin(Stdio::null()).stdout(file.try_clone().expect("log handle")).stderr(file);
        command.env("RUST_LOG", "info").env_remove("COURIER_BROKER");
        for (k, v) in env {
            command.env(k, v);
        }
        let child = command.spawn().expect("start worker process");
        Self { child, log }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no chance to clean up.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait for the exit; returns whether it exited successfully.
    pub fn terminate(&mut self) -> bool {
        let _ = Command::new("kill").args(["-TERM", &self.pid().to_string()]).status();
        self.child.wait().map(|s| s.success()).unwrap_or(false)
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Wait until its log contains `text`; panics with the log tail after `patience`.
    pub fn wait_for_log(&mut self, text: &str, patience: std::time::Duration) {
        let deadline = std::time::Instant::now() + patience;
        while !std::fs::read_to_string(&self.log).unwrap_or_default().contains(text) {
            assert!(self.running(), "the process exited:\n{}", self.tail());
            assert!(std::time::Instant::now() < deadline, "no {text:?} in the log:\n{}", self.tail());
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// The last lines of its log.
    pub fn tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill9();
    }
}
