//! The real `orderd` binary as a child process: start it on a data directory, read the address
//! it bound from its JSON log, stop it with SIGTERM or SIGKILL, and run its offline tools
//! (`check`, `audit verify`) with a deadline.

use anyhow::{anyhow, bail, Context};
use std::collections::VecDeque;
use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// From spawn to the "orderd listening" line. Generous: a debug build on a busy 2-core machine
/// rebuilds state from a large journal slowly.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
/// From SIGTERM to exit. Above the daemon's own default drain grace (10 s).
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an offline tool may run.
pub const TOOL_TIMEOUT: Duration = Duration::from_secs(120);
/// Interval between checks whether a child has exited.
const EXIT_POLL_INTERVAL: Duration = Duration::from_millis(20);
/// Daemon log lines kept for failure messages (the rest is read and dropped so the pipe never
/// fills up and blocks the daemon's logging).
pub const LOG_TAIL_LINES_MAX: usize = 300;
/// Longest single log line kept, in bytes.
const LOG_LINE_BYTES_MAX: usize = 4_096;
/// The log message that carries the bound address in `fields.addr`.
pub const LISTENING_MESSAGE: &str = "orderd listening";
/// Inherited variables that are passed through although they start with `ORDERD_`.
const PASSED_THROUGH_ENV: &[&str] = &["ORDERD_LOG"];

/// How to run `orderd` on one data directory.
#[derive(Debug, Clone)]
pub struct DaemonSpec {
    pub bin: PathBuf,
    pub data_dir: PathBuf,
    /// Extra environment, e.g. `("ORDERD_LIMITS__ACCOUNT_INFLIGHT_MAX", "1")`.
    pub env: Vec<(String, String)>,
    /// Extra `serve` arguments, e.g. `--no-demo`.
    pub serve_args: Vec<String>,
    /// A command line that `serve` runs through, with the binary and its arguments after it
    /// (e.g. a shell that sets a resource limit and `exec`s them); empty: run directly. The
    /// offline tools always run directly.
    pub launcher: Vec<String>,
}

/// What an offline tool printed and how it exited.
#[derive(Debug)]
pub struct ToolOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl ToolOutput {
    /// The exit code; `None` when a signal ended the tool.
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }
}

impl std::fmt::Display for ToolOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}\n--- stdout ---\n{}--- stderr ---\n{}",
            self.status, self.stdout, self.stderr
        )
    }
}

impl DaemonSpec {
    pub fn new(bin: impl Into<PathBuf>, data_dir: impl Into<PathBuf>) -> DaemonSpec {
        DaemonSpec {
            bin: bin.into(),
            data_dir: data_dir.into(),
            env: vec![],
            serve_args: vec![],
            launcher: vec![],
        }
    }

    /// Adds one environment variable for every process started from this spec.
    pub fn with_env(mut self, name: &str, value: &str) -> DaemonSpec {
        self.env.push((name.to_owned(), value.to_owned()));
        self
    }

    /// A command for the binary (through `launcher`, if any) with this spec's environment. Inherited
    /// `ORDERD_*` settings are removed so a developer's shell cannot change what a test runs.
    fn command(&self, launcher: &[String]) -> Command {
        let mut cmd = match launcher.split_first() {
            Some((program, args)) => {
                let mut cmd = Command::new(program);
                cmd.args(args).arg(&self.bin);
                cmd
            }
            None => Command::new(&self.bin),
        };
        for (name, _) in std::env::vars_os() {
            let n = name.to_string_lossy();
            if n.starts_with("ORDERD_") && !PASSED_THROUGH_ENV.contains(&n.as_ref()) {
                cmd.env_remove(&name);
            }
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    /// Starts `orderd serve` on a free port and waits for it to listen.
    ///
    /// Fails, with the log tail in the message, when the binary cannot be spawned, exits during
    /// startup, or does not log its address within [`STARTUP_TIMEOUT`].
    pub fn start(&self) -> anyhow::Result<Daemon> {
        let mut cmd = self.command(&self.launcher);
        cmd.arg("serve")
            .arg("--data")
            .arg(&self.data_dir)
            .args(["--listen", "127.0.0.1:0", "--log-json"])
            .args(&self.serve_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("spawning {}", self.bin.display()))?;
        let stderr = child
            .stderr
            .take()
            .ok_or_else(|| anyhow!("the child's stderr was not piped"))?;
        let log: LogTail = Arc::default();
        let (addr_tx, addr_rx) = mpsc::channel();
        let pump_log = log.clone();
        let pump = std::thread::Builder::new()
            .name("orderd-stderr".into())
            .spawn(move || pump_stderr(stderr, &pump_log, &addr_tx));
        let mut daemon = Daemon {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            log,
        };
        pump.context("starting the log reader thread")?;
        match addr_rx.recv_timeout(STARTUP_TIMEOUT) {
            Ok(addr) => {
                daemon.addr = addr;
                Ok(daemon)
            }
            Err(mpsc::RecvTimeoutError::Timeout) => bail!(
                "orderd did not log {LISTENING_MESSAGE:?} within {STARTUP_TIMEOUT:?}; log:\n{}",
                daemon.log_tail()
            ),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                // stderr closed: the process ended. Reap it for the exit status.
                let status = daemon.wait_until(Instant::now() + SHUTDOWN_TIMEOUT);
                bail!(
                    "orderd exited during startup ({status:?}); log:\n{}",
                    daemon.log_tail()
                )
            }
        }
    }

    /// Runs `orderd ARGS... --data DIR` to completion within `timeout` (killing it after).
    pub fn run<I, S>(&self, args: I, timeout: Duration) -> anyhow::Result<ToolOutput>
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        let mut cmd = self.command(&[]);
        let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
        cmd.args(&args)
            .arg("--data")
            .arg(&self.data_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        run_to_end(cmd, timeout).with_context(|| format!("running orderd {args:?}"))
    }

    /// `orderd check`: exit 0 and "all invariants hold", or exit 1 and "BROKEN: ..." lines.
    pub fn check(&self) -> anyhow::Result<ToolOutput> {
        self.run(["check"], TOOL_TIMEOUT)
    }

    /// `orderd check --expect-head SEQ:HASH`: also broken when the chain no longer reaches that
    /// head.
    pub fn check_expecting(&self, head: &str) -> anyhow::Result<ToolOutput> {
        self.run(["check", "--expect-head", head], TOOL_TIMEOUT)
    }

    /// `orderd import KIND FILE`: exit 0 and "imported N KIND rows", or 1 and the refusal on
    /// stderr.
    pub fn import(&self, kind: &str, file: &Path) -> anyhow::Result<ToolOutput> {
        self.run(
            [OsString::from("import"), kind.into(), file.into()],
            TOOL_TIMEOUT,
        )
    }

    /// `orderd audit verify`: exit 0 on an intact chain, 1 naming the first bad seq.
    pub fn audit_verify(&self) -> anyhow::Result<ToolOutput> {
        self.run(["audit", "verify"], TOOL_TIMEOUT)
    }

    /// `orderd audit verify --expect-head SEQ:HASH`: also exit 1 when the chain no longer
    /// reaches that head.
    pub fn audit_verify_expecting(&self, head: &str) -> anyhow::Result<ToolOutput> {
        self.run(["audit", "verify", "--expect-head", head], TOOL_TIMEOUT)
    }
}

type LogTail = Arc<Mutex<VecDeque<String>>>;

/// Reads the daemon's stderr to its end: keeps a bounded tail and reports the bound address.
fn pump_stderr(stderr: ChildStderr, log: &LogTail, addr_tx: &mpsc::Sender<SocketAddr>) {
    let mut reader = BufReader::new(stderr);
    let mut buf = Vec::new();
    let mut addr_sent = false;
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let end = buf.len().min(LOG_LINE_BYTES_MAX);
        let line = String::from_utf8_lossy(&buf[..end]).trim_end().to_owned();
        if !addr_sent {
            if let Some(addr) = listening_addr(&line) {
                // The receiver may be gone when startup already gave up; nothing to do then.
                let _ = addr_tx.send(addr);
                addr_sent = true;
            }
        }
        let mut tail = log.lock().unwrap_or_else(PoisonError::into_inner);
        if tail.len() >= LOG_TAIL_LINES_MAX {
            tail.pop_front();
        }
        tail.push_back(line);
    }
}

/// The address of a JSON "orderd listening" log line.
pub fn listening_addr(line: &str) -> Option<SocketAddr> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    let fields = v.get("fields")?;
    if fields.get("message")?.as_str()? != LISTENING_MESSAGE {
        return None;
    }
    fields.get("addr")?.as_str()?.parse().ok()
}

/// Runs `cmd` (stdout and stderr piped) to completion, killing it after `timeout`.
fn run_to_end(mut cmd: Command, timeout: Duration) -> anyhow::Result<ToolOutput> {
    let mut child = cmd.spawn().context("spawning")?;
    let out = child.stdout.take().map(read_in_thread);
    let err = child.stderr.take().map(read_in_thread);
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("still running after {timeout:?}; killed");
        }
        std::thread::sleep(EXIT_POLL_INTERVAL);
    };
    let collect = |h: Option<std::thread::JoinHandle<Vec<u8>>>| {
        h.and_then(|h| h.join().ok())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    };
    Ok(ToolOutput {
        status,
        stdout: collect(out),
        stderr: collect(err),
    })
}

fn read_in_thread(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        // A read error only shortens what a failure message shows.
        let _ = r.read_to_end(&mut buf);
        buf
    })
}

/// A running `orderd serve`. Dropping it kills the process (SIGKILL) and reaps it.
pub struct Daemon {
    child: Child,
    addr: SocketAddr,
    log: LogTail,
}

impl Daemon {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last [`LOG_TAIL_LINES_MAX`] log lines.
    pub fn log_tail(&self) -> String {
        let tail = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        tail.iter().map(|l| format!("{l}\n")).collect()
    }

    /// Whether the log so far has a line containing `needle`.
    pub fn log_contains(&self, needle: &str) -> bool {
        let tail = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        tail.iter().any(|l| l.contains(needle))
    }

    /// SIGKILL (what `kill -9` does: no chance to flush or clean up), then reap.
    pub fn kill(mut self) -> anyhow::Result<()> {
        self.child.kill().context("sending SIGKILL")?;
        self.child.wait().context("reaping orderd")?;
        Ok(())
    }

    /// SIGTERM, then wait up to [`SHUTDOWN_TIMEOUT`] for the exit status. A daemon that does
    /// not stop in time is killed and reported as an error.
    pub fn terminate(mut self) -> anyhow::Result<ExitStatus> {
        self.signal("TERM")?;
        self.wait_until(Instant::now() + SHUTDOWN_TIMEOUT)
            .ok_or_else(|| {
                anyhow!(
                    "orderd did not exit within {SHUTDOWN_TIMEOUT:?} of SIGTERM; log:\n{}",
                    self.log_tail()
                )
            })
    }

    /// The exit status of a daemon that stops on its own, or `None` after `timeout`.
    pub fn wait_for_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.wait_until(Instant::now() + timeout)
    }

    /// Sends a signal by name with the `kill` utility: the workspace forbids `unsafe`, so no
    /// direct libc call. The child is not reaped before this, so its pid cannot be reused yet.
    fn signal(&self, name: &str) -> anyhow::Result<()> {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .context("running kill")?;
        if !status.success() {
            bail!("kill -{name} {} failed: {status}", self.child.id());
        }
        Ok(())
    }

    /// The exit status once the process exits, or `None` at `deadline`.
    fn wait_until(&mut self, deadline: Instant) -> Option<ExitStatus> {
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if Instant::now() < deadline => std::thread::sleep(EXIT_POLL_INTERVAL),
                _ => return None,
            }
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Copies a directory tree (a stopped daemon's data directory) to `to`, which must not exist.
pub fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir(to).with_context(|| format!("creating {}", to.display()))?;
    for entry in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)
                .with_context(|| format!("copying {}", entry.path().display()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    // The address comes only from the listening line, whatever else the log holds.
    #[test]
    fn listening_line_is_recognised() {
        let line = r#"{"timestamp":"t","level":"INFO","fields":{"message":"orderd listening","addr":"127.0.0.1:4321","data_dir":"/x"},"target":"orderd"}"#;
        assert_eq!(
            listening_addr(line),
            Some(SocketAddr::from(([127, 0, 0, 1], 4321)))
        );
        let other = r#"{"fields":{"message":"demo data loaded","addr":"127.0.0.1:1"}}"#;
        assert_eq!(listening_addr(other), None);
        assert_eq!(listening_addr("orderd listening addr=1.2.3.4:5"), None);
        assert_eq!(
            listening_addr(r#"{"fields":{"message":"orderd listening","addr":"nope"}}"#),
            None
        );
    }
}
