//! Child processes that can never outlive the harness.
//!
//! Every child is spawned from one long-lived "spawner" thread with `PR_SET_PDEATHSIG=SIGKILL`.
//! The kernel delivers that signal when the *spawning thread* dies, so spawning from a test's
//! own thread (which ends with the test) would kill shared processes too early; the spawner
//! thread lives as long as the process, so children die with the process however it ends
//! (normal exit, panic, `SIGKILL` from a timeout). `Drop` kills and reaps them earlier.

use std::fs::File;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

type SpawnRequest = (Command, mpsc::Sender<std::io::Result<Child>>);

fn spawner() -> &'static Mutex<mpsc::Sender<SpawnRequest>> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("feip-testenv-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(spawn_with_death_signal(&mut cmd));
                }
                // The sender lives in a static and is never dropped, so this thread lives
                // as long as the process; park it just in case.
                loop {
                    std::thread::park();
                }
            })
            .expect("spawn the testenv spawner thread");
        Mutex::new(tx)
    })
}

// The test harness needs prctl(PR_SET_PDEATHSIG) so no child outlives a failed test; the
// product crate forbids unsafe code (lib.rs) when the harness is not compiled in.
#[allow(unsafe_code)]
fn spawn_with_death_signal(cmd: &mut Command) -> std::io::Result<Child> {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl and getppid are async-signal-safe; the closure only calls them.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died between fork and prctl.
            if libc::getppid() == 1 {
                return Err(std::io::Error::other("parent died before exec"));
            }
            Ok(())
        });
    }
    cmd.spawn()
}

/// A child process with its output in a log file; killed and reaped on drop.
pub struct ManagedProcess {
    name: String,
    program: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
}

impl ManagedProcess {
    /// Starts `program args...`, appending stdout and stderr to `log`.
    pub fn start(
        name: &str,
        program: &Path,
        args: Vec<String>,
        log: PathBuf,
    ) -> anyhow::Result<Self> {
        let mut p = Self {
            name: name.to_string(),
            program: program.to_path_buf(),
            args,
            log,
            child: None,
        };
        p.spawn()?;
        Ok(p)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let out = File::options().create(true).append(true).open(&self.log)?;
        let err = out.try_clone()?;
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err));
        let (tx, rx) = mpsc::channel();
        spawner()
            .lock()
            .map_err(|_| anyhow::anyhow!("spawner lock poisoned"))?
            .send((cmd, tx))
            .map_err(|_| anyhow::anyhow!("spawner thread is gone"))?;
        let child = rx
            .recv()
            .map_err(|_| anyhow::anyhow!("spawner thread is gone"))?
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot start {} ({}): {e}",
                    self.name,
                    self.program.display()
                )
            })?;
        self.child = Some(child);
        Ok(())
    }

    /// Kills the process (SIGKILL) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the same command again (after `kill`).
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        self.spawn()
    }

    /// Starts the same command again after a [`kill`](Self::kill).
    pub fn start_again(&mut self) -> anyhow::Result<()> {
        self.spawn()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Fails if the process has exited, with the tail of its log.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        if let Some(child) = self.child.as_mut()
            && let Some(status) = child.try_wait()?
        {
            anyhow::bail!(
                "{} exited with {status}; log tail:\n{}",
                self.name,
                self.log_tail(40)
            );
        }
        Ok(())
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The last `lines` lines of the process log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for ManagedProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

/// Polls `check` until it returns `Ok(Some(v))`, or fails with the last error after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    let mut last = String::from("condition not met");
    let mut pause = Duration::from_millis(20);
    loop {
        match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last = format!("{e:#}"),
        }
        if Instant::now() >= deadline {
            anyhow::bail!("timed out after {timeout:?} waiting for {what}: {last}");
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(250));
    }
}
