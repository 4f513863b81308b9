//! `runvm-rootfs-builder --agent PATH --output PATH [--busybox PATH] [--format cpio|ext4] [--compress none|gzip]`

use std::path::PathBuf;
use std::process::ExitCode;

use runvm_rootfs_builder::{build_to_file, Busybox, Compression, Format};

const USAGE: &str = "usage: runvm-rootfs-builder --agent PATH --output PATH [--busybox PATH]
                            [--format cpio|ext4] [--compress none|gzip]

Writes the runvm guest image with /dev /proc /sys /run /tmp and the static
agent as /init: an ext4 filesystem for the VMM's read-only root disk
(--format ext4, the default for an output named *.ext4), or a reproducible
cpio (newc) initramfs (the default otherwise; --compress applies to it).
--busybox adds a static busybox and its applets under /bin (development
and test images only).";

#[derive(Debug, PartialEq, Eq)]
struct Options {
    agent: PathBuf,
    output: PathBuf,
    busybox: Option<PathBuf>,
    compression: Compression,
    /// `--format`; else chosen by the output's name.
    ext4: Option<bool>,
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
    let mut ext4 = None;
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
            "--agent" | "--output" | "--busybox" | "--compress" | "--format"
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
            "--format" => {
                ext4 = Some(match value.to_str() {
                    Some("ext4") => true,
                    Some("cpio") => false,
                    _ => {
                        return Err(format!(
                            "unknown --format {value:?} (expected cpio or ext4)"
                        ))
                    }
                })
            }
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
        ext4,
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
    let format = match opts.ext4 {
        Some(true) => Format::Ext4,
        Some(false) => Format::Cpio(opts.compression),
        None => match Format::for_output(&opts.output) {
            Format::Cpio(_) => Format::Cpio(opts.compression),
            Format::Ext4 => Format::Ext4,
        },
    };
    if format == Format::Ext4 && opts.compression != Compression::None {
        eprintln!("runvm-rootfs-builder: --compress applies to cpio images only\n{USAGE}");
        return ExitCode::from(2);
    }
    match build_to_file(&opts.agent, busybox.as_ref(), &opts.output, format) {
        Ok(size) => {
            eprintln!(
                "runvm-rootfs-builder: wrote {} ({size} bytes, {format})",
                opts.output.display()
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
            ext4: None,
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
            ext4: Some(true),
        });
        assert_eq!(
            p(&["--output=o", "--agent=a", "--busybox", "b", "--format=ext4"]),
            Ok(want)
        );
    }

    #[test]
    fn errors() {
        assert!(p(&["--agent", "a"]).is_err());
        assert!(p(&["--output", "o"]).is_err());
        assert!(p(&["--agent"]).is_err());
        assert!(p(&["--agent", "a", "--output", "o", "--compress", "xz"]).is_err());
        assert!(p(&["--agent", "a", "--output", "o", "extra"]).is_err());
        assert!(p(&["--agent", "a", "--output", "o", "--format", "squashfs"]).is_err());
        assert_eq!(p(&["--help"]), Ok(Parsed::Help));
    }
}
