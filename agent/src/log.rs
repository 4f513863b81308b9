//! Diagnostics on stderr (the console), prefixed `runvm-agent:`.
//!
//! stderr is unbuffered, so `eprintln!` would issue one write(2) per
//! formatting piece. Each line is formatted first and written once.

use std::fmt::{self, Write as _};
#[cfg(not(test))]
use std::io::{self, Write as _};

/// Write one diagnostic line to stderr. Errors are ignored: there is nowhere
/// else to report them.
pub fn line(args: fmt::Arguments<'_>) {
    let mut buf = String::with_capacity(128);
    buf.push_str("runvm-agent: ");
    let _ = buf.write_fmt(args);
    buf.push('\n');
    // The test harness captures `eprint!` but not raw stderr writes.
    #[cfg(test)]
    eprint!("{buf}");
    #[cfg(not(test))]
    let _ = io::stderr().write_all(buf.as_bytes());
}

/// `agent_log!("...", args)`: one prefixed line on stderr.
macro_rules! agent_log {
    ($($arg:tt)*) => {
        $crate::log::line(format_args!($($arg)*))
    };
}
