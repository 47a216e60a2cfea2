//! Who a process is, across hosts: the host name, a pid's start time and whether a
//! pid is still the same live process. The run-state file (`vssl runs`) and the
//! run-directory lock both record a process this way and judge it later, possibly
//! from another machine of a cluster.

use std::time::{SystemTime, UNIX_EPOCH};

/// Unix time in seconds.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// This machine's host name (`localhost` when it cannot be read).
pub fn host() -> String {
    #[cfg(unix)]
    {
        let mut buf = [0u8; 256];
        // SAFETY: the buffer is valid for its length; gethostname NUL-terminates
        // within it or truncates.
        let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
        if rc == 0 {
            let n = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
            if n > 0 {
                return String::from_utf8_lossy(&buf[..n]).into_owned();
            }
        }
    }
    "localhost".into()
}

/// `/proc/<pid>/stat`: (state letter, start time); None where there is no such
/// process (or no `/proc`).
fn proc_stat(pid: &str) -> Option<(char, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (in parentheses, which may itself hold spaces):
    // field 3 is the state, field 22 the start time.
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some((f.first()?.chars().next()?, f.get(19)?.parse().ok()?))
}

/// Whether `pid` (started at `start`, when known) is a live process here.
pub fn alive(pid: u32, start: Option<u64>) -> bool {
    if std::path::Path::new("/proc/self/stat").exists() {
        return match proc_stat(&pid.to_string()) {
            Some((s, t)) => !matches!(s, 'Z' | 'X') && start.is_none_or(|want| want == t),
            None => false,
        };
    }
    #[cfg(unix)]
    {
        // SAFETY: signal 0 only checks that the process exists.
        let rc = unsafe { libc::kill(pid as libc::pid_t, 0) };
        rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
    }
    #[cfg(not(unix))]
    {
        true
    }
}

/// This process's start time (`/proc/self/stat`), where there is a `/proc`.
pub fn proc_start() -> Option<u64> {
    proc_stat("self").map(|(_, s)| s)
}
