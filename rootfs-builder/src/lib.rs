//! runvm-rootfs-builder: writes the guest image, which holds nothing but
//! the mount points, `/dev/console` and the agent as `/init`: an ext4
//! filesystem the guest mounts as its root from a read-only disk (see
//! [`ext4`]; what runvm boots), or a reproducible cpio "newc" initramfs
//! (kept for comparison: the guest kernel unpacks it on every boot).
//!
//! Development and test images may add a static busybox (see [`Busybox`]) so
//! that there is something to run in the guest before containers bring
//! their own root filesystems.
//!
//! Same inputs give the same bytes: every member is owned by root with
//! mtime 0, inode numbers follow the (sorted) member order, and gzip output
//! carries no timestamp or file name.

pub mod elf;
pub mod ext4;
pub mod newc;

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use flate2::{Compression as Level, GzBuilder};

use newc::{Entry, Kind};

/// How the archive is stored. The guest kernel's decompressor may be
/// emulated instruction by instruction, so `None` is the default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    #[default]
    None,
    Gzip,
}

impl FromStr for Compression {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(Compression::None),
            "gzip" => Ok(Compression::Gzip),
            other => Err(format!(
                "unknown compression {other:?} (expected none or gzip)"
            )),
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
        })
    }
}

/// What kind of image to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Cpio(Compression),
    Ext4,
}

impl Format {
    /// `ext4` for an output named `*.ext4`, else an uncompressed cpio.
    pub fn for_output(path: &Path) -> Format {
        if path.extension().is_some_and(|e| e == "ext4") {
            Format::Ext4
        } else {
            Format::Cpio(Compression::None)
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Format::Cpio(compression) => write!(f, "cpio, compression {compression}"),
            Format::Ext4 => f.write_str("ext4"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read agent {}: {source}", path.display())]
    ReadAgent { path: PathBuf, source: io::Error },
    #[error("agent {} is empty", path.display())]
    EmptyAgent { path: PathBuf },
    #[error("agent {} cannot be the guest's /init: {source}", path.display())]
    BadAgent {
        path: PathBuf,
        source: elf::ElfError,
    },
    #[error("cannot read busybox {}: {source}", path.display())]
    ReadBusybox { path: PathBuf, source: io::Error },
    #[error("busybox {} cannot run in the guest: {source}", path.display())]
    BadBusybox {
        path: PathBuf,
        source: elf::ElfError,
    },
    #[error("cannot list the applets of busybox {}: {reason}", path.display())]
    BusyboxApplets { path: PathBuf, reason: String },
    #[error("output path {} has no file name", path.display())]
    BadOutput { path: PathBuf },
    #[error("cannot build the archive: {0}")]
    Archive(#[from] newc::Error),
    #[error("cannot build the filesystem image: {0}")]
    Ext4(#[from] ext4::Ext4Error),
    #[error("cannot write {}: {source}", path.display())]
    Write { path: PathBuf, source: io::Error },
}

/// Mode of the member `/tmp`: world-writable with the sticky bit.
const TMP_PERM: u32 = 0o1777;

/// A static busybox for development and test images: `/bin/busybox` plus a
/// `/bin/<applet>` symlink for every applet it has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Busybox {
    pub binary: Vec<u8>,
    /// `bin/<applet>` for each applet, sorted.
    pub applet_paths: Vec<String>,
}

impl Busybox {
    /// Read the busybox at `path`, check that it is a static executable and
    /// ask it (`busybox --list`) which applets it has.
    pub fn load(path: &Path) -> Result<Busybox, Error> {
        let binary = fs::read(path).map_err(|source| Error::ReadBusybox {
            path: path.to_owned(),
            source,
        })?;
        elf::check_static_executable(&binary).map_err(|source| Error::BadBusybox {
            path: path.to_owned(),
            source,
        })?;
        let applets_error = |reason: String| Error::BusyboxApplets {
            path: path.to_owned(),
            reason,
        };
        let listing = std::process::Command::new(path)
            .arg("--list")
            .output()
            .map_err(|e| applets_error(e.to_string()))?;
        if !listing.status.success() {
            return Err(applets_error(format!(
                "`--list` failed: {}",
                listing.status
            )));
        }
        let listing = String::from_utf8(listing.stdout)
            .map_err(|_| applets_error("`--list` printed non-UTF-8 names".into()))?;
        Busybox::from_listing(binary, &listing).map_err(applets_error)
    }

    fn from_listing(binary: Vec<u8>, listing: &str) -> Result<Busybox, String> {
        let mut applet_paths = Vec::new();
        // Debian's busybox lists itself too; /bin/busybox is the binary.
        let names = listing.lines().map(str::trim);
        for name in names.filter(|n| !n.is_empty() && *n != "busybox") {
            if name.contains('/') || name == "." || name == ".." {
                return Err(format!("unexpected applet name {name:?}"));
            }
            applet_paths.push(format!("bin/{name}"));
        }
        if applet_paths.is_empty() {
            return Err("it lists no applets".into());
        }
        applet_paths.sort();
        applet_paths.dedup();
        Ok(Busybox {
            binary,
            applet_paths,
        })
    }
}

/// Every member of the guest image, sorted by name (so parents come first).
pub fn image_entries<'a>(agent: &'a [u8], busybox: Option<&'a Busybox>) -> Vec<Entry<'a>> {
    let mut entries = vec![
        Entry::new("dev", Kind::Directory, 0o755),
        // The kernel opens /dev/console for init's stdin/stdout/stderr
        // before running /init, i.e. before devtmpfs is mounted.
        Entry::new(
            "dev/console",
            Kind::CharDevice { major: 5, minor: 1 },
            0o600,
        ),
        Entry::new("init", Kind::File(agent), 0o755),
        Entry::new("proc", Kind::Directory, 0o755),
        Entry::new("run", Kind::Directory, 0o755),
        Entry::new("sys", Kind::Directory, 0o755),
        Entry::new("tmp", Kind::Directory, TMP_PERM),
    ];
    if let Some(busybox) = busybox {
        entries.push(Entry::new("bin", Kind::Directory, 0o755));
        entries.push(Entry::new(
            "bin/busybox",
            Kind::File(&busybox.binary),
            0o755,
        ));
        entries.extend(
            busybox
                .applet_paths
                .iter()
                .map(|path| Entry::new(path, Kind::Symlink("busybox"), 0o777)),
        );
    }
    entries.sort_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()));
    entries
}

/// The uncompressed cpio archive for `agent` (and `busybox`, if given).
pub fn build_image(agent: &[u8], busybox: Option<&Busybox>) -> Result<Vec<u8>, newc::Error> {
    let tools_len = busybox.map_or(0, |b| b.binary.len() + 128 * b.applet_paths.len());
    let mut w = newc::Writer::new(Vec::with_capacity(agent.len() + tools_len + 4096));
    for entry in image_entries(agent, busybox) {
        w.append(&entry)?;
    }
    w.finish()
}

/// Apply `compression` to an archive. gzip output has mtime 0, no file name
/// and the "unknown" OS byte, so it is reproducible.
pub fn compress(archive: Vec<u8>, compression: Compression) -> io::Result<Vec<u8>> {
    match compression {
        Compression::None => Ok(archive),
        Compression::Gzip => {
            let mut gz = GzBuilder::new()
                .mtime(0)
                .operating_system(255)
                .write(Vec::with_capacity(archive.len() / 2), Level::best());
            gz.write_all(&archive)?;
            gz.finish()
        }
    }
}

/// Read the agent at `agent_path`, check it, and write the image to
/// `output` atomically (a temporary file in the same directory, renamed).
/// Returns the number of bytes written.
pub fn build_to_file(
    agent_path: &Path,
    busybox: Option<&Busybox>,
    output: &Path,
    format: Format,
) -> Result<u64, Error> {
    let agent = fs::read(agent_path).map_err(|source| Error::ReadAgent {
        path: agent_path.to_owned(),
        source,
    })?;
    if agent.is_empty() {
        return Err(Error::EmptyAgent {
            path: agent_path.to_owned(),
        });
    }
    elf::check_static_executable(&agent).map_err(|source| Error::BadAgent {
        path: agent_path.to_owned(),
        source,
    })?;
    let compression = match format {
        Format::Cpio(compression) => compression,
        Format::Ext4 => return build_ext4_file(&agent, busybox, output),
    };
    let image = build_image(&agent, busybox)?;
    drop(agent);
    let image = compress(image, compression).map_err(|source| Error::Write {
        path: output.to_owned(),
        source,
    })?;
    write_atomically(output, &image)?;
    Ok(image.len() as u64)
}

/// The ext4 image, built beside `output` and renamed over it.
fn build_ext4_file(agent: &[u8], busybox: Option<&Busybox>, output: &Path) -> Result<u64, Error> {
    let tmp = temporary_beside(output)?;
    let work = tmp.with_extension("work");
    let _ = fs::remove_dir_all(&work);
    let result = fs::create_dir(&work)
        .map_err(|source| Error::Write {
            path: work.clone(),
            source,
        })
        .and_then(|()| {
            Ok(ext4::write_image(
                &image_entries(agent, busybox),
                &work,
                &tmp,
            )?)
        });
    let _ = fs::remove_dir_all(&work);
    let renamed = result.and_then(|()| {
        fs::rename(&tmp, output).map_err(|source| Error::Write {
            path: output.to_owned(),
            source,
        })
    });
    if let Err(e) = renamed {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    fs::metadata(output)
        .map(|m| m.len())
        .map_err(|source| Error::Write {
            path: output.to_owned(),
            source,
        })
}

/// `.<name>.tmp.<pid>` in `path`'s directory.
fn temporary_beside(path: &Path) -> Result<PathBuf, Error> {
    let name = path.file_name().ok_or_else(|| Error::BadOutput {
        path: path.to_owned(),
    })?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp.{}", std::process::id()));
    Ok(path.with_file_name(tmp_name))
}

/// Write `bytes` to `path` through a temporary file and a rename, so readers
/// never see a partial image.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let tmp = temporary_beside(path)?;
    let write_err = |source| Error::Write {
        path: tmp.clone(),
        source,
    };
    let result = (|| -> io::Result<()> {
        let mut f: File = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(write_err(e));
    }
    fs::rename(&tmp, path).map_err(|source| {
        let _ = fs::remove_file(&tmp);
        Error::Write {
            path: path.to_owned(),
            source,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_sorted_and_complete() {
        let e = image_entries(b"x", None);
        let names: Vec<_> = e.iter().map(|e| e.name).collect();
        assert_eq!(
            names,
            ["dev", "dev/console", "init", "proc", "run", "sys", "tmp"]
        );
        let mode = |n: &str| e.iter().find(|e| e.name == n).map(|e| e.mode());
        assert_eq!(mode("tmp"), Some(0o041777));
        assert_eq!(mode("init"), Some(0o100755));
        assert_eq!(mode("dev/console"), Some(0o020600));
        assert_eq!(mode("dev"), Some(0o040755));
    }

    #[test]
    fn image_is_deterministic_and_ends_with_trailer() {
        let agent: Vec<u8> = (0..10_001u32).map(|i| (i * 7) as u8).collect();
        let a = build_image(&agent, None).expect("build a");
        let b = build_image(&agent, None).expect("build b");
        assert_eq!(a, b);
        assert_eq!(a.len() % 4, 0);
        assert!(a.starts_with(newc::MAGIC));
        let tail = &a[a.len() - 124..];
        assert_eq!(&tail[..6], newc::MAGIC);
        assert_eq!(&tail[110..120], newc::TRAILER.as_bytes());
        // The agent's bytes are in the archive verbatim.
        assert!(a.windows(agent.len()).any(|w| w == agent.as_slice()));
    }

    #[test]
    fn gzip_is_deterministic_and_round_trips() {
        use std::io::Read;
        let image = build_image(b"agent", None).expect("build");
        let a = compress(image.clone(), Compression::Gzip).expect("gzip a");
        let b = compress(image.clone(), Compression::Gzip).expect("gzip b");
        assert_eq!(a, b);
        assert_eq!(&a[..3], &[0x1f, 0x8b, 8]);
        assert_eq!(a[3], 0, "no FNAME or other optional fields");
        assert_eq!(&a[4..8], &[0, 0, 0, 0], "mtime 0");
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(a.as_slice())
            .read_to_end(&mut back)
            .expect("gunzip");
        assert_eq!(back, image);
    }

    #[test]
    fn busybox_adds_its_binary_and_applet_links() {
        let busybox = Busybox::from_listing(b"bb".to_vec(), "sh\n[\ncat\n\nbusybox\ncat\n")
            .expect("valid listing");
        assert_eq!(busybox.applet_paths, ["bin/[", "bin/cat", "bin/sh"]);
        let e = image_entries(b"x", Some(&busybox));
        let names: Vec<_> = e.iter().map(|e| e.name).collect();
        assert_eq!(
            names,
            [
                "bin",
                "bin/[",
                "bin/busybox",
                "bin/cat",
                "bin/sh",
                "dev",
                "dev/console",
                "init",
                "proc",
                "run",
                "sys",
                "tmp"
            ]
        );
        let sh = e.iter().find(|e| e.name == "bin/sh").expect("sh");
        assert_eq!(sh.kind, Kind::Symlink("busybox"));
        assert_eq!(sh.mode(), 0o120777);
    }

    #[test]
    fn busybox_listing_with_paths_or_nothing_is_refused() {
        assert!(Busybox::from_listing(Vec::new(), "sh\n../init\n").is_err());
        assert!(Busybox::from_listing(Vec::new(), "..\n").is_err());
        assert!(Busybox::from_listing(Vec::new(), "\n").is_err());
    }

    #[test]
    fn compression_parses() {
        assert_eq!("none".parse(), Ok(Compression::None));
        assert_eq!("gzip".parse(), Ok(Compression::Gzip));
        assert!("zstd".parse::<Compression>().is_err());
    }
}
