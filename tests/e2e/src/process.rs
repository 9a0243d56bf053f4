//! Processes the cluster starts, recorded by PID and start time so that ending them later
//! never hits an unrelated process that reused the PID.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::Error;

/// How often a waiting loop looks at `/proc` again.
const POLL: Duration = Duration::from_millis(50);

/// How long a process gets to exit after SIGKILL before `stop` reports it as stuck.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// One started process.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessRecord {
    /// What it is (`etcd`, `kube-apiserver`, ...).
    pub name: String,
    /// Its PID.
    pub pid: u32,
    /// Its start time in clock ticks since boot (field 22 of `/proc/<pid>/stat`).
    pub start_time: u64,
    /// The file its stdout and stderr go to.
    pub log: PathBuf,
}

/// What `stop` had to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stopped {
    /// It was gone already (or the PID now belongs to another process).
    AlreadyGone,
    /// It exited after SIGTERM.
    Terminated,
    /// It had to be killed.
    Killed,
}

/// Starts `command` in its own process group with stdout and stderr appended to `log`.
pub fn spawn(name: &str, mut command: Command, log: &Path) -> Result<ProcessRecord, Error> {
    let out = File::options()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|source| Error::io(log, source))?;
    let err = out.try_clone().map_err(|source| Error::io(log, source))?;
    command
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        // Its own group: a Ctrl-C meant for the caller does not reach the control plane.
        .process_group(0);

    let mut child = command.spawn().map_err(|source| Error::Spawn {
        program: command.get_program().to_string_lossy().into_owned(),
        source,
    })?;
    let pid = child.id();
    let start_time = read_stat(pid)
        .map(|stat| stat.start_time)
        .ok_or(Error::Spawn {
            program: command.get_program().to_string_lossy().into_owned(),
            source: std::io::Error::other("the process exited before its start time was read"),
        })?;

    // Reap it when it exits, so it does not linger as a zombie while this process lives.
    std::thread::spawn(move || child.wait());

    Ok(ProcessRecord {
        name: name.to_string(),
        pid,
        start_time,
        log: log.to_path_buf(),
    })
}

impl ProcessRecord {
    /// True while the recorded process runs: same PID, same start time, not a zombie.
    pub fn is_running(&self) -> bool {
        read_stat(self.pid)
            .is_some_and(|stat| stat.start_time == self.start_time && stat.state != 'Z')
    }

    /// Sends SIGTERM, waits up to `grace` for the process to exit, then sends SIGKILL.
    ///
    /// Known limitation: between checking the start time and sending a signal the process
    /// could exit and its PID be reused; the window is a few microseconds.
    pub fn stop(&self, grace: Duration) -> Result<Stopped, Error> {
        if !self.is_running() {
            return Ok(Stopped::AlreadyGone);
        }
        self.signal(rustix::process::Signal::TERM)?;
        if self.wait_exit(grace) {
            return Ok(Stopped::Terminated);
        }
        self.signal(rustix::process::Signal::KILL)?;
        if self.wait_exit(KILL_WAIT) {
            return Ok(Stopped::Killed);
        }
        Err(Error::Stuck {
            name: self.name.clone(),
            pid: self.pid,
        })
    }

    /// The last `lines` lines of the log, for error messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    fn signal(&self, signal: rustix::process::Signal) -> Result<(), Error> {
        let pid = i32::try_from(self.pid)
            .ok()
            .and_then(rustix::process::Pid::from_raw)
            .ok_or(Error::Stuck {
                name: self.name.clone(),
                pid: self.pid,
            })?;
        match rustix::process::kill_process(pid, signal) {
            Ok(()) | Err(rustix::io::Errno::SRCH) => Ok(()),
            Err(errno) => Err(Error::Signal {
                name: self.name.clone(),
                pid: self.pid,
                source: errno.into(),
            }),
        }
    }

    fn wait_exit(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.is_running() {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(POLL);
        }
        true
    }
}

struct Stat {
    state: char,
    start_time: u64,
}

fn read_stat(pid: u32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses; fields after its closing
    // parenthesis are plain. State is field 3, start time field 22.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    let start_time = fields.get(19)?.parse().ok()?;
    Some(Stat { state, start_time })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_started_process_is_seen_running_and_is_stopped() {
        let dir = std::env::temp_dir().join(format!("tortie-process-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir is writable");
        let mut command = Command::new("sleep");
        command.arg("60");
        let record = spawn("sleep", command, &dir.join("sleep.log")).expect("sleep starts");
        assert!(record.is_running());

        let reused = ProcessRecord {
            start_time: record.start_time + 1,
            ..record.clone()
        };
        assert!(
            !reused.is_running(),
            "a different start time means a different process"
        );
        assert_eq!(
            reused.stop(Duration::from_secs(1)).expect("no signal sent"),
            Stopped::AlreadyGone
        );
        assert!(
            record.is_running(),
            "the mismatched record must not have touched it"
        );

        assert_eq!(
            record.stop(Duration::from_secs(5)).expect("sleep stops"),
            Stopped::Terminated
        );
        assert!(!record.is_running());
        assert_eq!(
            record.stop(Duration::from_secs(1)).expect("idempotent"),
            Stopped::AlreadyGone
        );
        std::fs::remove_dir_all(&dir).expect("temp dir is removable");
    }
}
