//! What happens when a thread makes a call its filter forbids: the filter
//! answers SECCOMP_RET_TRAP, the kernel raises SIGSYS in that thread, and
//! the handler here reports the call on stderr and ends the process with
//! [`EXIT_STATUS`](super::EXIT_STATUS).
//!
//! The handler is async-signal-safe: it formats into a stack buffer, then
//! calls only write(2) and _exit(2), which every filter allows. SIGSYS
//! must stay unblocked in every thread: a blocked SIGSYS from seccomp
//! kills the process without running the handler.

use std::cell::Cell;

use super::{names, ThreadKind, EXIT_STATUS, REPORT_PREFIX};

/// `si_code` of a SIGSYS raised by seccomp.
const SYS_SECCOMP: libc::c_int = 1;

/// The SIGSYS part of `siginfo_t` on 64-bit Linux: after signo, errno and
/// code (and padding) come the caller's address, the call's number and
/// its audit architecture. The `libc` crate has no accessor for it.
#[repr(C)]
struct SigsysInfo {
    signo: libc::c_int,
    errno: libc::c_int,
    code: libc::c_int,
    _pad: libc::c_int,
    call_addr: *mut libc::c_void,
    syscall: libc::c_int,
    arch: libc::c_uint,
}

thread_local! {
    /// The calling thread's kind, for the report; `None` until it applies
    /// a filter. Const-initialised without a destructor, so reading it in
    /// the handler takes no lock and allocates nothing.
    static KIND: Cell<Option<ThreadKind>> = const { Cell::new(None) };
}

pub fn set_thread_kind(kind: ThreadKind) {
    KIND.set(Some(kind));
}

pub fn install_handler() -> std::io::Result<()> {
    // SAFETY: a zeroed sigaction with a valid handler and flags; the
    // handler only does what a signal handler may.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_sigsys as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut action.sa_mask);
        if libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

extern "C" fn on_sigsys(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: with SA_SIGINFO the kernel passes a valid siginfo_t, whose
    // SIGSYS fields are laid out as `SigsysInfo`.
    let (code, nr) = unsafe {
        let info = &*(info as *const SigsysInfo);
        (info.code, info.syscall)
    };
    let mut line = Line::default();
    if code == SYS_SECCOMP {
        report(&mut line, libc::c_long::from(nr), KIND.get());
    } else {
        line.push(b"runvm-vmm: received a SIGSYS that seccomp did not raise\n");
    }
    // SAFETY: write(2) of a stack buffer, then _exit(2): both
    // async-signal-safe, both allowed by every filter.
    unsafe {
        libc::write(libc::STDERR_FILENO, line.bytes().as_ptr().cast(), line.len);
        libc::_exit(EXIT_STATUS);
    }
}

/// `runvm-vmm: killed by seccomp: syscall N (name) in the KIND thread\n`.
fn report(line: &mut Line, nr: libc::c_long, kind: Option<ThreadKind>) {
    line.push(REPORT_PREFIX.as_bytes());
    line.push(b"syscall ");
    line.push_decimal(nr);
    if let Some(name) = names::name(nr) {
        line.push(b" (");
        line.push(name.as_bytes());
        line.push(b")");
    }
    if let Some(kind) = kind {
        line.push(b" in the ");
        line.push(kind.name().as_bytes());
        line.push(b" thread");
    }
    line.push(b"\n");
}

/// A line built without allocating; what does not fit is cut.
struct Line {
    buf: [u8; 160],
    len: usize,
}

impl Default for Line {
    fn default() -> Line {
        Line {
            buf: [0; 160],
            len: 0,
        }
    }
}

impl Line {
    fn push(&mut self, bytes: &[u8]) {
        let room = self.buf.len() - self.len;
        let take = bytes.len().min(room);
        self.buf[self.len..self.len + take].copy_from_slice(&bytes[..take]);
        self.len += take;
    }

    fn push_decimal(&mut self, value: libc::c_long) {
        if value < 0 {
            self.push(b"-");
        }
        let mut digits = [0u8; 20];
        let mut at = digits.len();
        let mut rest = value.unsigned_abs();
        loop {
            at -= 1;
            digits[at] = b'0' + (rest % 10) as u8;
            rest /= 10;
            if rest == 0 {
                break;
            }
        }
        self.push(&digits[at..]);
    }

    fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(nr: libc::c_long, kind: Option<ThreadKind>) -> String {
        let mut line = Line::default();
        report(&mut line, nr, kind);
        String::from_utf8(line.bytes().to_vec()).unwrap()
    }

    #[test]
    fn the_report_names_the_call_and_the_thread() {
        assert_eq!(
            line(41, Some(ThreadKind::Vcpu)),
            "runvm-vmm: killed by seccomp: syscall 41 (socket) in the vCPU thread\n"
        );
        assert_eq!(
            line(99_999, None),
            "runvm-vmm: killed by seccomp: syscall 99999\n"
        );
        assert_eq!(
            line(0, None),
            "runvm-vmm: killed by seccomp: syscall 0 (read)\n"
        );
        assert!(line(-5, None).contains("syscall -5\n"));
    }

    #[test]
    fn a_line_too_long_is_cut_not_overrun() {
        let mut line = Line::default();
        for _ in 0..100 {
            line.push(b"0123456789");
        }
        assert_eq!(line.len, 160);
    }
}
