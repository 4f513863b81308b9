//! kill: a signal to a container's init, or to all its processes.

use crate::agent_client::AgentClient;
use crate::container_client::ContainerClient;
use crate::deadlines;
use crate::state::{HostProcess, Status};

use super::{block_on, ContainerError, Context, Result};

/// What `kill` is asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KillOptions {
    /// The signal's number (see [`parse_signal`]).
    pub signal: i32,
    /// Every process of the container, not only its init.
    pub all: bool,
}

/// Sends the signal in the guest. A guest that no longer answers still
/// goes with SIGKILL: its monitor, VMM and virtiofsd are killed on the
/// host.
pub fn kill(context: &Context, id: &str, options: KillOptions) -> Result {
    let KillOptions { signal, all } = options;
    let container = context.root()?.open_container(id)?;
    let record = container.load()?;
    if !matches!(
        record.status(),
        Status::Created | Status::Running | Status::Paused
    ) {
        return Err(ContainerError::NotRunning);
    }
    let socket = container.home(&record).vsock_socket();
    let sent = block_on(deadlines::within("kill", deadlines::KILL, async {
        let agent = AgentClient::connect(&socket).await?;
        ContainerClient::new(&agent).signal(id, signal, all).await
    }))?;
    if let Err(e) = sent {
        // The init ended after the record was read (its monitor has not
        // recorded it yet): as runc, "not running", which containerd's
        // shim takes for a process already finished.
        if e.is_conflict() {
            return Err(ContainerError::NotRunning);
        }
        // The monitor, and its VMM and virtiofsd, which may be stopped or
        // wedged where their parent's death cannot end them.
        if signal == libc::SIGKILL {
            if let Some(monitor) = record.monitor.filter(HostProcess::is_alive) {
                for process in std::iter::once(&monitor).chain(&record.helpers) {
                    if process.is_alive() {
                        // SAFETY: kill(2); the pid was matched with its
                        // start time.
                        unsafe { libc::kill(process.pid, libc::SIGKILL) };
                    }
                }
                return Ok(());
            }
        }
        return Err(e.into());
    }
    Ok(())
}

/// A signal by name (`TERM`, `SIGTERM`, any case) or number.
pub fn parse_signal(text: &str) -> Result<i32> {
    if let Ok(number) = text.parse::<i32>() {
        if (1..=64).contains(&number) {
            return Ok(number);
        }
        return Err(ContainerError::InvalidSignal(text.to_owned()));
    }
    let upper = text.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    let number = match name {
        "HUP" => libc::SIGHUP,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "ILL" => libc::SIGILL,
        "TRAP" => libc::SIGTRAP,
        "ABRT" | "IOT" => libc::SIGABRT,
        "BUS" => libc::SIGBUS,
        "FPE" => libc::SIGFPE,
        "KILL" => libc::SIGKILL,
        "USR1" => libc::SIGUSR1,
        "SEGV" => libc::SIGSEGV,
        "USR2" => libc::SIGUSR2,
        "PIPE" => libc::SIGPIPE,
        "ALRM" => libc::SIGALRM,
        "TERM" => libc::SIGTERM,
        "STKFLT" => libc::SIGSTKFLT,
        "CHLD" | "CLD" => libc::SIGCHLD,
        "CONT" => libc::SIGCONT,
        "STOP" => libc::SIGSTOP,
        "TSTP" => libc::SIGTSTP,
        "TTIN" => libc::SIGTTIN,
        "TTOU" => libc::SIGTTOU,
        "URG" => libc::SIGURG,
        "XCPU" => libc::SIGXCPU,
        "XFSZ" => libc::SIGXFSZ,
        "VTALRM" => libc::SIGVTALRM,
        "PROF" => libc::SIGPROF,
        "WINCH" => libc::SIGWINCH,
        "IO" | "POLL" => libc::SIGIO,
        "PWR" => libc::SIGPWR,
        "SYS" => libc::SIGSYS,
        _ => return Err(ContainerError::UnknownSignal(text.to_owned())),
    };
    Ok(number)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_by_name_and_number() {
        assert_eq!(parse_signal("9").ok(), Some(9));
        assert_eq!(parse_signal("KILL").ok(), Some(9));
        assert_eq!(parse_signal("sigterm").ok(), Some(15));
        assert_eq!(parse_signal("SIGWINCH").ok(), Some(28));
        assert_eq!(
            parse_signal("0").map_err(|e| e.to_string()),
            Err("invalid signal: 0".to_owned())
        );
        assert_eq!(
            parse_signal("NOPE").map_err(|e| e.to_string()),
            Err("unknown signal \"NOPE\"".to_owned())
        );
    }
}
