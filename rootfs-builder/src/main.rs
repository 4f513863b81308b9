//! `runvm-rootfs-builder --agent PATH --output PATH [--busybox PATH] [--compress none|gzip]`

use std::path::PathBuf;
use std::process::ExitCode;

use runvm_rootfs_builder::{build_to_file, Busybox, Compression};

const USAGE: &str =
    "usage: runvm-rootfs-builder --agent PATH --output PATH [--busybox PATH] [--compress none|gzip]

Writes the runvm guest image: a reproducible cpio (newc) initramfs with
/dev /proc /sys /run /tmp, /dev/console and the static agent as /init.
--busybox adds a static busybox and its applets under /bin (development
and test images only).";

#[derive(Debug, PartialEq, Eq)]
struct Options {
    agent: PathBuf,
    output: PathBuf,
    busybox: Option<PathBuf>,
    compression: Compression,
}

#[derive(Debug, PartialEq, Eq)]
enum Parsed {
    Run(Options),
    Help,
}

fn parse(args: impl IntoIterator<Item = std::ffi::OsString>) -> Result<Parsed, String> {
    let mut agent = None;
    let mut output = None;
    let mut busybox = None;
    let mut compression = Compression::None;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let arg = arg
            .into_string()
            .map_err(|a| format!("unexpected argument {a:?}"))?;
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
            _ => (arg, None),
        };
        if flag == "-h" || flag == "--help" {
            return Ok(Parsed::Help);
        }
        if !matches!(
            flag.as_str(),
            "--agent" | "--output" | "--busybox" | "--compress"
        ) {
            return Err(format!("unexpected argument {flag:?}"));
        }
        let value = match inline {
            Some(v) => v.into(),
            None => args.next().ok_or_else(|| format!("{flag} needs a value"))?,
        };
        match flag.as_str() {
            "--agent" => agent = Some(PathBuf::from(value)),
            "--output" => output = Some(PathBuf::from(value)),
            "--busybox" => busybox = Some(PathBuf::from(value)),
            _ => {
                compression = value
                    .to_str()
                    .ok_or_else(|| format!("bad --compress value {value:?}"))?
                    .parse()?
            }
        }
    }
    Ok(Parsed::Run(Options {
        agent: agent.ok_or("--agent is required")?,
        output: output.ok_or("--output is required")?,
        busybox,
        compression,
    }))
}

fn main() -> ExitCode {
    let opts = match parse(std::env::args_os().skip(1)) {
        Ok(Parsed::Run(opts)) => opts,
        Ok(Parsed::Help) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(msg) => {
            eprintln!("runvm-rootfs-builder: {msg}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let busybox = match opts.busybox.as_deref().map(Busybox::load).transpose() {
        Ok(busybox) => busybox,
        Err(e) => {
            eprintln!("runvm-rootfs-builder: {e}");
            return ExitCode::FAILURE;
        }
    };
    match build_to_file(
        &opts.agent,
        busybox.as_ref(),
        &opts.output,
        opts.compression,
    ) {
        Ok(size) => {
            eprintln!(
                "runvm-rootfs-builder: wrote {} ({size} bytes, compression {})",
                opts.output.display(),
                opts.compression
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("runvm-rootfs-builder: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Parsed, String> {
        parse(args.iter().map(std::ffi::OsString::from))
    }

    #[test]
    fn full_and_inline_forms() {
        let want = Parsed::Run(Options {
            agent: "a".into(),
            output: "o".into(),
            busybox: None,
            compression: Compression::Gzip,
        });
        assert_eq!(
            p(&["--agent", "a", "--output", "o", "--compress", "gzip"]),
            Ok(want)
        );
        let want = Parsed::Run(Options {
            agent: "a".into(),
            output: "o".into(),
            busybox: Some("b".into()),
            compression: Compression::None,
        });
        assert_eq!(p(&["--output=o", "--agent=a", "--busybox", "b"]), Ok(want));
    }

    #[test]
    fn errors() {
        assert!(p(&["--agent", "a"]).is_err());
        assert!(p(&["--output", "o"]).is_err());
        assert!(p(&["--agent"]).is_err());
        assert!(p(&["--agent", "a", "--output", "o", "--compress", "xz"]).is_err());
        assert!(p(&["--agent", "a", "--output", "o", "extra"]).is_err());
        assert_eq!(p(&["--help"]), Ok(Parsed::Help));
    }
}
