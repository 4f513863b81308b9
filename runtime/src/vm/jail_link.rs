//! The host's own name for a jailed VMM's vsock socket. The jail's
//! directory belongs to the VMM's id, so a compromised VMM could replace
//! its socket there with a symlink to any host socket, and the root
//! runtime would connect to that. Instead the socket the VMM bound is
//! opened without following a symlink, checked to be a socket and hard
//! linked into the VM's directory, which only root can write: later
//! connections go through that link, whatever the jail does.

use std::ffi::CString;
use std::fs::OpenOptions;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// Links the socket at `socket` (not a symlink) as `link`, replacing
/// whatever `link` was.
pub fn link_socket(socket: &Path, link: &Path) -> io::Result<()> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_NOFOLLOW)
        .open(socket)?;
    if !file.metadata()?.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "it is not a socket",
        ));
    }
    match std::fs::remove_file(link) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let target = CString::new(link.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: a valid descriptor, an empty C string and a NUL-terminated
    // path; linkat(2) with AT_EMPTY_PATH links the descriptor's inode.
    let rc = unsafe {
        libc::linkat(
            file.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            target.as_ptr(),
            libc::AT_EMPTY_PATH,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::{UnixListener, UnixStream};

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir =
            std::env::temp_dir().join(format!("runvm-jail-link-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        dir
    }

    #[test]
    fn the_link_reaches_the_listener_after_the_jail_s_name_is_gone() {
        let dir = scratch("ok");
        let listener = UnixListener::bind(dir.join("vsock.sock")).unwrap();
        // A stale link from before is replaced.
        std::fs::write(dir.join("link.sock"), b"stale").unwrap();
        link_socket(&dir.join("vsock.sock"), &dir.join("link.sock")).unwrap();
        std::fs::remove_file(dir.join("vsock.sock")).unwrap();
        let mut client = UnixStream::connect(dir.join("link.sock")).unwrap();
        client.write_all(b"hi").unwrap();
        let (mut served, _) = listener.accept().unwrap();
        let mut got = [0u8; 2];
        served.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hi");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_symlink_or_a_file_is_refused() {
        let dir = scratch("refused");
        let _listener = UnixListener::bind(dir.join("real.sock")).unwrap();
        std::os::unix::fs::symlink(dir.join("real.sock"), dir.join("vsock.sock")).unwrap();
        // O_PATH|O_NOFOLLOW opens the symlink itself, which is no socket.
        let error = link_socket(&dir.join("vsock.sock"), &dir.join("link.sock")).unwrap_err();
        assert!(error.to_string().contains("not a socket"), "{error}");
        std::fs::write(dir.join("file"), b"x").unwrap();
        let error = link_socket(&dir.join("file"), &dir.join("link.sock")).unwrap_err();
        assert!(error.to_string().contains("not a socket"), "{error}");
        assert!(!dir.join("link.sock").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
