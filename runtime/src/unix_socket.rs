//! Binding and connecting to Unix sockets at paths of any length. A
//! socket address holds at most [`MAX_ADDRESS_PATH`] bytes of path
//! (sun_path is 108 bytes with its NUL), and runvm's sockets live below
//! `--root`, which may be much longer: containerd's default layout,
//! `/run/containerd/runc/k8s.io/<64-hex id>/vm/jail/vsock.sock_1023`, is
//! already 116 bytes. A path that does not fit is reached through a
//! descriptor of its directory, `/proc/self/fd/<n>/<name>`, which the
//! kernel resolves to the same directory; a path that fits is used as
//! it is. Every socket the runtime binds or connects to by path goes
//! through here.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// The longest path a socket address holds (sun_path less its NUL).
pub const MAX_ADDRESS_PATH: usize = 107;

/// A name for a socket path that fits a socket address, valid while it
/// lives (it holds the directory's descriptor when it needs one).
#[derive(Debug)]
pub struct AddressName {
    name: PathBuf,
    _dir: Option<File>,
}

impl AddressName {
    /// `socket` itself when it fits, else `/proc/self/fd/<n>/<file name>`
    /// with `<n>` a descriptor of its directory. Fails, naming `socket`,
    /// when even that does not fit (a file name of about 90 bytes or
    /// more) or the directory cannot be opened.
    pub fn of(socket: &Path) -> io::Result<AddressName> {
        if fits(socket.as_os_str()) {
            return Ok(AddressName {
                name: socket.to_owned(),
                _dir: None,
            });
        }
        let unusable = |reason: String| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("the socket path {} {reason}", socket.display()),
            )
        };
        let Some(file_name) = socket.file_name() else {
            return Err(unusable("does not end in a file name".into()));
        };
        let dir = match socket.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        let dir = File::options()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
            .open(dir)
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot open the directory of {}: {e}", socket.display()),
                )
            })?;
        let name = Path::new("/proc/self/fd")
            .join(dir.as_raw_fd().to_string())
            .join(file_name);
        if !fits(name.as_os_str()) {
            return Err(unusable(format!(
                "has a file name too long for a socket address (at most {} bytes \
                 through its directory)",
                MAX_ADDRESS_PATH - (name.as_os_str().len() - file_name.len())
            )));
        }
        Ok(AddressName {
            name,
            _dir: Some(dir),
        })
    }

    /// The name to hand bind(2) or connect(2).
    pub fn name(&self) -> &Path {
        &self.name
    }
}

fn fits(path: &OsStr) -> bool {
    path.len() <= MAX_ADDRESS_PATH
}

/// Listens on a new socket at `socket`.
pub fn bind(socket: &Path) -> io::Result<UnixListener> {
    UnixListener::bind(AddressName::of(socket)?.name())
}

/// Connects to the socket at `socket`.
pub fn connect(socket: &Path) -> io::Result<UnixStream> {
    UnixStream::connect(AddressName::of(socket)?.name())
}

/// [`connect`] for tokio.
pub async fn connect_async(socket: &Path) -> io::Result<tokio::net::UnixStream> {
    let address = AddressName::of(socket)?;
    tokio::net::UnixStream::connect(address.name()).await
}

/// [`bind`] for tokio (within a runtime).
pub fn bind_async(socket: &Path) -> io::Result<tokio::net::UnixListener> {
    let listener = bind(socket)?;
    listener.set_nonblocking(true)?;
    tokio::net::UnixListener::from_std(listener)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// A directory whose path is `length` bytes or more, removed on drop.
    struct DeepDir {
        top: PathBuf,
        path: PathBuf,
    }

    impl DeepDir {
        fn new(name: &str, length: usize) -> DeepDir {
            let top = std::env::temp_dir()
                .join(format!("runvm-unix-socket-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&top);
            let mut path = top.clone();
            while path.as_os_str().len() < length {
                path.push("d".repeat(60));
            }
            std::fs::create_dir_all(&path).expect("mkdir");
            DeepDir { top, path }
        }
    }

    impl Drop for DeepDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.top);
        }
    }

    #[test]
    fn a_socket_below_a_200_byte_directory_is_bound_and_reached() {
        let dir = DeepDir::new("deep", 200);
        let socket = dir.path.join("vsock.sock_1023");
        assert!(socket.as_os_str().len() > 200);
        let name = AddressName::of(&socket).expect("name");
        assert!(name.name().starts_with("/proc/self/fd/"), "{name:?}");
        assert!(name.name().as_os_str().len() <= MAX_ADDRESS_PATH);
        let listener = bind(&socket).expect("bind");
        // The socket is where its path says, not somewhere in /proc.
        assert!(std::fs::symlink_metadata(&socket).is_ok());
        let mut client = connect(&socket).expect("connect");
        client.write_all(b"hi").expect("write");
        let (mut served, _) = listener.accept().expect("accept");
        let mut got = [0u8; 2];
        served.read_exact(&mut got).expect("read");
        assert_eq!(&got, b"hi");
    }

    #[test]
    fn a_path_near_path_max_works_too() {
        let dir = DeepDir::new("max", 4000);
        let socket = dir.path.join("s");
        let _listener = bind(&socket).expect("bind");
        connect(&socket).expect("connect");
    }

    #[tokio::test]
    async fn the_async_forms_reach_each_other_through_a_long_path() {
        let dir = DeepDir::new("async", 250);
        let socket = dir.path.join("sandbox.sock");
        let listener = bind_async(&socket).expect("bind");
        let (client, served) = tokio::join!(connect_async(&socket), listener.accept());
        client.expect("connect");
        served.expect("accept");
    }

    #[test]
    fn a_short_path_is_used_as_it_is() {
        let dir = DeepDir::new("short", 0);
        let socket = dir.path.join("s.sock");
        let name = AddressName::of(&socket).expect("name");
        assert_eq!(name.name(), socket);
        assert!(name._dir.is_none());
        let exactly = PathBuf::from(format!("/{}", "a".repeat(MAX_ADDRESS_PATH - 1)));
        assert_eq!(AddressName::of(&exactly).expect("name").name(), exactly);
    }

    #[test]
    fn what_cannot_fit_is_refused_naming_the_path() {
        let dir = DeepDir::new("refused", 150);
        let socket = dir.path.join("n".repeat(120));
        let error = AddressName::of(&socket).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
        assert!(
            error.to_string().contains(&*socket.to_string_lossy()),
            "{error}"
        );
        assert!(error.to_string().contains("file name too long"), "{error}");

        let missing = dir.path.join("missing").join("s.sock");
        let error = bind(&missing).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::NotFound);
        assert!(
            error.to_string().contains(&*missing.to_string_lossy()),
            "{error}"
        );
    }
}
