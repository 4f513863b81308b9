//! Command-line handling.
//!
//! The kernel passes everything after ` -- ` on its command line to init as
//! argv. It also passes every kernel parameter it did not recognise and that
//! has no `=` (on Linux 6.1, `noxsave` is one), ahead of them. Unknown
//! switches (starting with `-`) are reported and ignored, never fatal. Bare
//! words are such kernel leftovers: they are ignored without a log line,
//! since each console character costs an I/O exit on every boot.

use std::ffi::OsString;

/// What PID 1 does once the guest is up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Stay up as init, reaping children (the vsock server will go here).
    Serve,
    /// `--poweroff`: power the guest off right after the ready line.
    PowerOff,
    /// `--reboot`: reboot the guest right after the ready line.
    Reboot,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub action: Action,
    /// Unknown switches (arguments starting with `-`), lossily decoded for
    /// logging.
    pub unknown: Vec<String>,
    /// Bare words passed through from the kernel command line, ignored.
    pub kernel_leftovers: usize,
    /// Set when more than one action switch was given (the last one wins).
    pub conflict: Option<String>,
    /// `--template`: the VM is saved at its ready point and restored for
    /// many pods, so do before the ready line the work every VM's first
    /// container would otherwise repeat (see `container::warm_up`).
    pub template: bool,
}

/// Parse the arguments after argv[0].
pub fn parse<I>(args: I) -> Config
where
    I: IntoIterator<Item = OsString>,
{
    let mut config = Config {
        action: Action::Serve,
        unknown: Vec::new(),
        kernel_leftovers: 0,
        conflict: None,
        template: false,
    };
    let mut seen: Option<&'static str> = None;
    for arg in args {
        let (action, name) = match arg.to_str() {
            Some("--poweroff") => (Action::PowerOff, "--poweroff"),
            Some("--reboot") => (Action::Reboot, "--reboot"),
            Some("--template") => {
                config.template = true;
                continue;
            }
            _ if arg.as_encoded_bytes().starts_with(b"-") => {
                config.unknown.push(arg.to_string_lossy().into_owned());
                continue;
            }
            _ => {
                config.kernel_leftovers += 1;
                continue;
            }
        };
        if let Some(previous) = seen {
            if previous != name {
                config.conflict = Some(format!(
                    "both {previous} and {name} given; the last one ({name}) wins"
                ));
            }
        }
        seen = Some(name);
        config.action = action;
    }
    config
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_strs(args: &[&str]) -> Config {
        parse(args.iter().map(OsString::from))
    }

    #[test]
    fn no_arguments_serve() {
        let c = parse_strs(&[]);
        assert_eq!(c.action, Action::Serve);
        assert!(c.unknown.is_empty());
        assert!(c.conflict.is_none());
    }

    #[test]
    fn poweroff_and_reboot() {
        assert_eq!(parse_strs(&["--poweroff"]).action, Action::PowerOff);
        assert_eq!(parse_strs(&["--reboot"]).action, Action::Reboot);
    }

    #[test]
    fn template_is_a_flag_beside_the_action() {
        let c = parse_strs(&["--template"]);
        assert!(c.template);
        assert_eq!(c.action, Action::Serve);
        assert!(c.unknown.is_empty());
        assert!(!parse_strs(&["--poweroff"]).template);
    }

    #[test]
    fn repeated_switch_is_not_a_conflict() {
        let c = parse_strs(&["--poweroff", "--poweroff"]);
        assert_eq!(c.action, Action::PowerOff);
        assert!(c.conflict.is_none());
    }

    #[test]
    fn last_switch_wins_and_conflict_is_reported() {
        let c = parse_strs(&["--poweroff", "--reboot"]);
        assert_eq!(c.action, Action::Reboot);
        let msg = c.conflict.expect("conflict reported");
        assert!(msg.contains("--poweroff") && msg.contains("--reboot"));
    }

    #[test]
    fn unknown_switches_are_kept_and_ignored() {
        let c = parse_strs(&["--poweroff", "--frobnicate", "-x"]);
        assert_eq!(c.action, Action::PowerOff);
        assert_eq!(c.unknown, vec!["--frobnicate", "-x"]);
        assert_eq!(c.kernel_leftovers, 0);
    }

    #[test]
    fn kernel_leftovers_are_ignored_quietly() {
        let c = parse_strs(&["noxsave", "--poweroff", "", "poweroff"]);
        assert_eq!(c.action, Action::PowerOff);
        assert!(c.unknown.is_empty());
        assert_eq!(c.kernel_leftovers, 3);
    }

    #[test]
    fn switches_match_exactly() {
        let c = parse_strs(&["--poweroff=1", "--POWEROFF", "-poweroff"]);
        assert_eq!(c.action, Action::Serve);
        assert_eq!(c.unknown.len(), 3);
    }

    #[test]
    fn non_utf8_argument_does_not_panic() {
        use std::os::unix::ffi::OsStringExt;
        let c = parse(vec![
            OsString::from_vec(vec![b'-', 0xff, 0xfe]),
            OsString::from_vec(vec![0xff]),
            OsString::from("--reboot"),
        ]);
        assert_eq!(c.action, Action::Reboot);
        assert_eq!(c.unknown, vec!["-\u{fffd}\u{fffd}"]);
        assert_eq!(c.kernel_leftovers, 1);
    }
}
