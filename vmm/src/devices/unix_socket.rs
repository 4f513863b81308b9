//! Names for the VM's Unix sockets that fit a socket address. sun_path
//! holds at most [`MAX_ADDRESS_PATH`] bytes of path, and runvm puts the
//! sockets below its `--root`, which can be longer (containerd's layout:
//! `/run/containerd/runc/k8s.io/<64-hex id>/vm/vsock.sock_1023`, 111
//! bytes, for an unjailed VMM). A longer path is reached as `/proc/self/fd/<n>/<file name>`,
//! `<n>` a descriptor of its directory, held as long as the name is used
//! (the vsock device dials `<name>_<port>` for as long as the VM runs).
//! Jailed, the VMM names its sockets below the jail's root (`/vsock.sock`),
//! which fit; the jail has no /proc, so a longer name fails there, saying
//! why.

use std::ffi::OsString;
use std::fs::File;
use std::io::{Error, ErrorKind};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The longest path a socket address holds (sun_path less its NUL).
pub const MAX_ADDRESS_PATH: usize = 107;

/// What the VMM hands bind(2) and connect(2) for one socket path.
#[derive(Debug)]
pub struct SocketName {
    name: PathBuf,
    /// The directory `name` goes through, when it does.
    _dir: Option<File>,
}

impl SocketName {
    /// `path` itself when it fits a socket address with `room` bytes to
    /// spare (for `_<port>` suffixes), else a name through a descriptor
    /// of its directory (or still `path` if it fits without the room and
    /// there is no /proc). Fails naming `path` when no name fits.
    pub fn of(path: &Path, room: usize) -> std::io::Result<SocketName> {
        let plain = || SocketName {
            name: path.to_owned(),
            _dir: None,
        };
        let length = path.as_os_str().len();
        if length + room <= MAX_ADDRESS_PATH {
            return Ok(plain());
        }
        let too_long = |why: String| {
            Error::new(
                ErrorKind::InvalidInput,
                format!(
                    "the socket path {} is too long for a socket address \
                     ({MAX_ADDRESS_PATH} bytes) {why}",
                    path.display()
                ),
            )
        };
        if !Path::new("/proc/self/fd").is_dir() {
            if length <= MAX_ADDRESS_PATH {
                return Ok(plain());
            }
            return Err(too_long(
                "and /proc is not mounted to reach it by its directory".into(),
            ));
        }
        let (Some(dir), Some(file_name)) = (path.parent(), path.file_name()) else {
            return Err(too_long("and does not end in a file name".into()));
        };
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        let dir = File::options()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(dir)
            .map_err(|e| too_long(format!("and its directory cannot be opened: {e}")))?;
        let name = Path::new("/proc/self/fd")
            .join(dir.as_raw_fd().to_string())
            .join(file_name);
        if name.as_os_str().len() + room > MAX_ADDRESS_PATH {
            return Err(too_long(
                "even through its directory: its file name is too long".into(),
            ));
        }
        Ok(SocketName {
            name,
            _dir: Some(dir),
        })
    }

    pub fn name(&self) -> &Path {
        &self.name
    }

    /// The name of the socket at the same path plus `suffix`.
    pub fn with_suffix(&self, suffix: &str) -> OsString {
        let mut name = self.name.clone().into_os_string();
        name.push(suffix);
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::{UnixListener, UnixStream};

    fn deep_dir(name: &str, length: usize) -> (PathBuf, PathBuf) {
        let top =
            std::env::temp_dir().join(format!("runvm-vmm-socket-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&top);
        let mut dir = top.clone();
        while dir.as_os_str().len() < length {
            dir.push("d".repeat(50));
        }
        std::fs::create_dir_all(&dir).unwrap();
        (top, dir)
    }

    #[test]
    fn a_long_path_is_reached_through_its_directory() {
        let (top, dir) = deep_dir("long", 220);
        let path = dir.join("vsock.sock");
        let socket = SocketName::of(&path, 11).unwrap();
        assert!(socket.name().starts_with("/proc/self/fd"), "{socket:?}");
        let _listener = UnixListener::bind(socket.name()).unwrap();
        assert!(path.exists());
        let mut port = path.into_os_string();
        port.push("_1023");
        let _port_listener = UnixListener::bind(socket.with_suffix("_1023")).unwrap();
        assert!(Path::new(&port).exists());
        UnixStream::connect(socket.with_suffix("_1023")).unwrap();
        std::fs::remove_dir_all(top).unwrap();
    }

    #[test]
    fn a_short_path_is_itself_and_an_impossible_one_is_refused() {
        let short = Path::new("/run/x/vsock.sock");
        assert_eq!(SocketName::of(short, 11).unwrap().name(), short);
        let (top, dir) = deep_dir("refused", 120);
        let path = dir.join("f".repeat(100));
        let message = SocketName::of(&path, 0).unwrap_err().to_string();
        assert!(message.contains(&*path.to_string_lossy()), "{message}");
        assert!(message.contains("file name is too long"), "{message}");
        std::fs::remove_dir_all(top).unwrap();
    }
}
