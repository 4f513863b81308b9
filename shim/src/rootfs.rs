//! A container's root filesystem as containerd hands it over: mounts
//! (an overlay of the image's snapshots, or a bind) that the shim makes
//! on `<bundle>/rootfs` before the share binds that into the VM.
//!
//! Mounted here with mount(2) directly: containerd-shim's helper forks a
//! child per mount and waits for it through its reaper, which this shim
//! does not run (see `main`).

use std::ffi::CString;
use std::path::Path;

/// mount(2) flags by option name: (set, clear).
const FLAGS: &[(&str, libc::c_ulong, bool)] = &[
    ("ro", libc::MS_RDONLY, false),
    ("rw", libc::MS_RDONLY, true),
    ("bind", libc::MS_BIND, false),
    ("rbind", libc::MS_BIND | libc::MS_REC, false),
    ("nosuid", libc::MS_NOSUID, false),
    ("suid", libc::MS_NOSUID, true),
    ("nodev", libc::MS_NODEV, false),
    ("dev", libc::MS_NODEV, true),
    ("noexec", libc::MS_NOEXEC, false),
    ("exec", libc::MS_NOEXEC, true),
    ("noatime", libc::MS_NOATIME, false),
    ("atime", libc::MS_NOATIME, true),
    ("nodiratime", libc::MS_NODIRATIME, false),
    ("relatime", libc::MS_RELATIME, false),
    ("strictatime", libc::MS_STRICTATIME, false),
    ("sync", libc::MS_SYNCHRONOUS, false),
    ("async", libc::MS_SYNCHRONOUS, true),
    ("dirsync", libc::MS_DIRSYNC, false),
    ("remount", libc::MS_REMOUNT, false),
    ("mand", libc::MS_MANDLOCK, false),
    ("nomand", libc::MS_MANDLOCK, true),
];

/// mount(2)'s flags and data (what is not a flag) for `options`.
pub fn parse_options(options: &[String]) -> (libc::c_ulong, String) {
    let mut flags: libc::c_ulong = 0;
    let mut data = Vec::new();
    for option in options {
        match FLAGS.iter().find(|(name, _, _)| name == option) {
            Some((_, bits, true)) => flags &= !bits,
            Some((_, bits, false)) => flags |= bits,
            None => data.push(option.as_str()),
        }
    }
    (flags, data.join(","))
}

fn c_string(text: &str) -> Result<CString, String> {
    CString::new(text).map_err(|_| format!("{text:?} holds a NUL byte"))
}

/// Mounts `source` of type `kind` with `options` on `target`; a read-only
/// bind is made read-only by a remount, as mount(2) wants.
pub fn mount(kind: &str, source: &str, options: &[String], target: &Path) -> Result<(), String> {
    let (flags, data) = parse_options(options);
    let source_c = c_string(source)?;
    let kind_c = c_string(kind)?;
    let target_c = c_string(&target.display().to_string())?;
    let data_c = c_string(&data)?;
    let data_ptr = if data.is_empty() {
        std::ptr::null()
    } else {
        data_c.as_ptr().cast()
    };
    let call = |flags: libc::c_ulong, data: *const libc::c_void| {
        // SAFETY: NUL-terminated strings that outlive the call.
        let rc = unsafe {
            libc::mount(
                source_c.as_ptr(),
                target_c.as_ptr(),
                kind_c.as_ptr(),
                flags,
                data,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    };
    call(flags, data_ptr).map_err(|e| {
        format!(
            "cannot mount {source} ({kind}, {options:?}) on {}: {e}",
            target.display()
        )
    })?;
    let read_only_bind = libc::MS_BIND | libc::MS_RDONLY;
    if flags & read_only_bind == read_only_bind {
        if let Err(e) = call(flags | libc::MS_REMOUNT, std::ptr::null()) {
            unmount(target);
            return Err(format!("cannot make {} read-only: {e}", target.display()));
        }
    }
    Ok(())
}

/// Unmounts what is mounted on `path` (nothing if it is not a mount
/// point); lazily if it is busy.
pub fn unmount(path: &Path) {
    let Ok(c_path) = CString::new(path.as_os_str().as_encoded_bytes()) else {
        return;
    };
    loop {
        // SAFETY: umount2(2) on a NUL-terminated path.
        if unsafe { libc::umount2(c_path.as_ptr(), 0) } == 0 {
            // Stacked mounts (several rootfs mounts) come off one by one.
            continue;
        }
        if std::io::Error::last_os_error().raw_os_error() == Some(libc::EBUSY) {
            // SAFETY: as above; something still holds it.
            if unsafe { libc::umount2(c_path.as_ptr(), libc::MNT_DETACH) } == 0 {
                continue;
            }
        }
        return;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_are_split_from_data() {
        let options: Vec<String> = ["rbind", "ro", "lowerdir=/a:/b", "index=off", "rw"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let (flags, data) = parse_options(&options);
        assert_eq!(flags, libc::MS_BIND | libc::MS_REC);
        assert_eq!(data, "lowerdir=/a:/b,index=off");
    }
}
