//! Logging the way runc's `--log`, `--log-format` and `--debug` ask:
//! one line per message appended to the log file, as logfmt text or JSON.

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl LogFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

/// Where errors, warnings and debug messages go.
#[derive(Clone, Debug, Default)]
pub struct Logger {
    file: Option<PathBuf>,
    format: LogFormat,
    debug: bool,
}

impl Logger {
    /// No file: errors and warnings reach stderr only.
    pub fn new(file: Option<PathBuf>, format: LogFormat, debug: bool) -> Logger {
        Logger {
            file,
            format,
            debug,
        }
    }

    fn write(&self, level: &str, message: &str) {
        let Some(path) = &self.file else {
            return;
        };
        let time = crate::state::rfc3339_now();
        let line = match self.format {
            LogFormat::Json => {
                serde_json::json!({"level": level, "msg": message, "time": time}).to_string()
            }
            LogFormat::Text => format!("time={time:?} level={level} msg={message:?}"),
        };
        if let Ok(mut file) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(file, "{line}");
        }
    }

    pub fn error(&self, message: &str) {
        self.write("error", message);
    }

    pub fn warn(&self, message: &str) {
        self.write("warning", message);
        if self.file.is_none() {
            eprintln!("runvm: warning: {message}");
        }
    }

    pub fn debug(&self, message: &str) {
        if self.debug {
            self.write("debug", message);
        }
    }

    /// The same logging as options of a monitor's command line (the file
    /// made absolute: a monitor may outlive the caller's directory).
    pub(super) fn monitor_args(&self) -> Vec<OsString> {
        let mut args = Vec::new();
        if let Some(file) = &self.file {
            args.push("--log".into());
            args.push(super::absolute(file).into());
            args.push("--log-format".into());
            args.push(self.format.as_str().into());
        }
        if self.debug {
            args.push("--debug".into());
        }
        args
    }
}
