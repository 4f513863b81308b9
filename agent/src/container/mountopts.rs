//! OCI mount options: flags for mount(2), propagation changes applied
//! after it, recursive attributes (mount_setattr(2)), tmpcopyup, and the
//! rest passed to the filesystem as data. `runvm features` lists what is
//! handled here (`runvm_agent_api::features::MOUNT_OPTIONS`).

use std::os::fd::AsRawFd;

use nix::mount::MsFlags;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountOptions {
    /// Flags for the mount itself (a bind mount takes only MS_BIND/MS_REC
    /// here; the others come with the remount that follows it).
    pub flags: MsFlags,
    /// Flags to clear (`rw`, `suid`, `dev`, ... undo a default).
    pub cleared: MsFlags,
    /// Propagation changes, applied one by one after the mount.
    pub propagation: Vec<MsFlags>,
    /// Filesystem-specific options, comma-separated.
    pub data: String,
    pub bind: bool,
    /// Recursive attributes (`rro`, `rnosuid`, ...), applied to the mount
    /// and every mount below it after it is made.
    pub recursive: MountAttr,
    /// A tmpfs gets what the image had at its destination.
    pub tmpcopyup: bool,
}

impl Default for MountOptions {
    fn default() -> MountOptions {
        MountOptions {
            flags: MsFlags::empty(),
            cleared: MsFlags::empty(),
            propagation: Vec::new(),
            data: String::new(),
            bind: false,
            recursive: MountAttr::default(),
            tmpcopyup: false,
        }
    }
}

// MOUNT_ATTR_* of <linux/mount.h>.
pub const MOUNT_ATTR_RDONLY: u64 = 0x1;
pub const MOUNT_ATTR_NOSUID: u64 = 0x2;
pub const MOUNT_ATTR_NODEV: u64 = 0x4;
pub const MOUNT_ATTR_NOEXEC: u64 = 0x8;
pub const MOUNT_ATTR_ATIME_MASK: u64 = 0x70;
pub const MOUNT_ATTR_RELATIME: u64 = 0x0;
pub const MOUNT_ATTR_NOATIME: u64 = 0x10;
pub const MOUNT_ATTR_STRICTATIME: u64 = 0x20;
pub const MOUNT_ATTR_NODIRATIME: u64 = 0x80;
pub const MOUNT_ATTR_NOSYMFOLLOW: u64 = 0x0020_0000;

/// `struct mount_attr` of mount_setattr(2), without propagation and user
/// namespace (propagation has its own options; id maps are refused).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MountAttr {
    pub set: u64,
    pub clear: u64,
}

impl MountAttr {
    pub fn is_empty(&self) -> bool {
        self.set == 0 && self.clear == 0
    }

    /// Applies the attributes to the mount at `target` (a descriptor of
    /// the mount's root) and every mount below it.
    pub fn apply(&self, target: &impl AsRawFd) -> std::io::Result<()> {
        self.apply_to(target, libc::AT_RECURSIVE)
    }

    /// Applies the attributes to the mount at `target` only.
    pub fn apply_top(&self, target: &impl AsRawFd) -> std::io::Result<()> {
        self.apply_to(target, 0)
    }

    fn apply_to(&self, target: &impl AsRawFd, recursive: libc::c_int) -> std::io::Result<()> {
        #[repr(C)]
        struct Attr {
            attr_set: u64,
            attr_clr: u64,
            propagation: u64,
            userns_fd: u64,
        }
        let attr = Attr {
            attr_set: self.set,
            attr_clr: self.clear,
            propagation: 0,
            userns_fd: 0,
        };
        // SAFETY: mount_setattr(2) reads the empty path and `attr`, whose
        // size we pass.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_mount_setattr,
                target.as_raw_fd(),
                c"".as_ptr(),
                libc::AT_EMPTY_PATH | recursive,
                &attr as *const Attr,
                std::mem::size_of::<Attr>(),
            )
        };
        if ret < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

/// A recursive attribute option: (set it, attribute); `r`-less atime
/// settings replace the whole access-time mode.
fn recursive_attr(option: &str) -> Option<(bool, u64)> {
    Some(match option {
        "rro" => (true, MOUNT_ATTR_RDONLY),
        "rrw" => (false, MOUNT_ATTR_RDONLY),
        "rnosuid" => (true, MOUNT_ATTR_NOSUID),
        "rsuid" => (false, MOUNT_ATTR_NOSUID),
        "rnodev" => (true, MOUNT_ATTR_NODEV),
        "rdev" => (false, MOUNT_ATTR_NODEV),
        "rnoexec" => (true, MOUNT_ATTR_NOEXEC),
        "rexec" => (false, MOUNT_ATTR_NOEXEC),
        "rnodiratime" => (true, MOUNT_ATTR_NODIRATIME),
        "rdiratime" => (false, MOUNT_ATTR_NODIRATIME),
        "rrelatime" => (true, MOUNT_ATTR_RELATIME),
        "rnorelatime" => (false, MOUNT_ATTR_RELATIME),
        "rnoatime" => (true, MOUNT_ATTR_NOATIME),
        "ratime" => (false, MOUNT_ATTR_NOATIME),
        "rstrictatime" => (true, MOUNT_ATTR_STRICTATIME),
        "rnostrictatime" => (false, MOUNT_ATTR_STRICTATIME),
        "rnosymfollow" => (true, MOUNT_ATTR_NOSYMFOLLOW),
        "rsymfollow" => (false, MOUNT_ATTR_NOSYMFOLLOW),
        _ => return None,
    })
}

/// MS_NOSYMFOLLOW (Linux 5.10), which nix does not name.
const NOSYMFOLLOW: MsFlags = MsFlags::from_bits_retain(libc::MS_NOSYMFOLLOW);

/// Flags that a remount of a bind mount may change.
pub const REMOUNT_FLAGS: MsFlags = MsFlags::MS_RDONLY
    .union(MsFlags::MS_NOSUID)
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC)
    .union(MsFlags::MS_NOATIME)
    .union(MsFlags::MS_NODIRATIME)
    .union(MsFlags::MS_RELATIME)
    .union(MsFlags::MS_STRICTATIME)
    .union(NOSYMFOLLOW);

impl MountOptions {
    /// Whether a bind mount needs a remount to apply `flags`.
    pub fn bind_remount_flags(&self) -> MsFlags {
        self.flags & REMOUNT_FLAGS
    }
}

/// Parses `options` as runc does. Options that runc handles itself but
/// runvm cannot (id-mapped mounts) are refused by name.
pub fn parse(options: &[String]) -> Result<MountOptions, String> {
    let mut o = MountOptions::default();
    let mut data: Vec<&str> = Vec::new();
    for option in options {
        if let Some((set, attr)) = recursive_attr(option) {
            let r = &mut o.recursive;
            if set {
                r.set |= attr;
                r.clear &= !attr;
                if attr & MOUNT_ATTR_ATIME_MASK == attr {
                    // An access-time mode is set by clearing the field
                    // and setting the mode (mount_setattr(2)).
                    r.set = (r.set & !MOUNT_ATTR_ATIME_MASK) | attr;
                    r.clear |= MOUNT_ATTR_ATIME_MASK;
                }
            } else {
                r.clear |= attr;
                r.set &= !attr;
            }
            continue;
        }
        let (set, clear) = match option.as_str() {
            "defaults" => (MsFlags::empty(), MsFlags::empty()),
            "ro" => (MsFlags::MS_RDONLY, MsFlags::empty()),
            "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY),
            "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID),
            "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty()),
            "dev" => (MsFlags::empty(), MsFlags::MS_NODEV),
            "nodev" => (MsFlags::MS_NODEV, MsFlags::empty()),
            "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC),
            "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty()),
            "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
            "async" => (MsFlags::empty(), MsFlags::MS_SYNCHRONOUS),
            "dirsync" => (MsFlags::MS_DIRSYNC, MsFlags::empty()),
            "remount" => (MsFlags::MS_REMOUNT, MsFlags::empty()),
            "mand" => (MsFlags::MS_MANDLOCK, MsFlags::empty()),
            "nomand" => (MsFlags::empty(), MsFlags::MS_MANDLOCK),
            "atime" => (MsFlags::empty(), MsFlags::MS_NOATIME),
            "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty()),
            "diratime" => (MsFlags::empty(), MsFlags::MS_NODIRATIME),
            "nodiratime" => (MsFlags::MS_NODIRATIME, MsFlags::empty()),
            "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty()),
            "norelatime" => (MsFlags::empty(), MsFlags::MS_RELATIME),
            "strictatime" => (MsFlags::MS_STRICTATIME, MsFlags::empty()),
            "nostrictatime" => (MsFlags::empty(), MsFlags::MS_STRICTATIME),
            "iversion" => (MsFlags::MS_I_VERSION, MsFlags::empty()),
            "noiversion" => (MsFlags::empty(), MsFlags::MS_I_VERSION),
            "lazytime" => (MsFlags::MS_LAZYTIME, MsFlags::empty()),
            "nolazytime" => (MsFlags::empty(), MsFlags::MS_LAZYTIME),
            "silent" => (MsFlags::MS_SILENT, MsFlags::empty()),
            "loud" => (MsFlags::empty(), MsFlags::MS_SILENT),
            "nosymfollow" => (NOSYMFOLLOW, MsFlags::empty()),
            "symfollow" => (MsFlags::empty(), NOSYMFOLLOW),
            "bind" => {
                o.bind = true;
                (MsFlags::MS_BIND, MsFlags::empty())
            }
            "rbind" => {
                o.bind = true;
                (MsFlags::MS_BIND | MsFlags::MS_REC, MsFlags::empty())
            }
            "private" | "rprivate" | "shared" | "rshared" | "slave" | "rslave" | "unbindable"
            | "runbindable" => {
                let (name, rec) = match option.strip_prefix('r') {
                    Some(name) => (name, MsFlags::MS_REC),
                    None => (option.as_str(), MsFlags::empty()),
                };
                let kind = match name {
                    "private" => MsFlags::MS_PRIVATE,
                    "shared" => MsFlags::MS_SHARED,
                    "slave" => MsFlags::MS_SLAVE,
                    _ => MsFlags::MS_UNBINDABLE,
                };
                o.propagation.push(kind | rec);
                continue;
            }
            // Acted on for tmpfs only, and ignored elsewhere, as by runc.
            "tmpcopyup" => {
                o.tmpcopyup = true;
                continue;
            }
            "idmap" | "ridmap" => {
                return Err(format!(
                    "mount option {option:?} is not supported by runvm \
                     (id-mapped mounts: the guest's virtio-fs cannot map ids)"
                ))
            }
            other => {
                data.push(other);
                continue;
            }
        };
        o.flags = (o.flags - clear) | set;
        o.cleared = (o.cleared - set) | clear;
    }
    o.data = data.join(",");
    Ok(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(list: &[&str]) -> MountOptions {
        parse(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn flags_data_and_later_options_win() {
        let o = opts(&[
            "nosuid",
            "strictatime",
            "mode=755",
            "size=65536k",
            "ro",
            "rw",
        ]);
        assert_eq!(o.flags, MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME);
        assert!(o.cleared.contains(MsFlags::MS_RDONLY));
        assert_eq!(o.data, "mode=755,size=65536k");
        assert!(!o.bind);
    }

    #[test]
    fn binds_and_their_remount_flags() {
        let o = opts(&["rbind", "ro", "nosuid"]);
        assert!(o.bind);
        assert!(o.flags.contains(MsFlags::MS_BIND | MsFlags::MS_REC));
        assert_eq!(
            o.bind_remount_flags(),
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID
        );
        let plain = opts(&["bind"]);
        assert!(!plain.flags.contains(MsFlags::MS_REC));
        assert!(plain.bind_remount_flags().is_empty());
    }

    #[test]
    fn propagation_is_kept_apart() {
        let o = opts(&[
            "rprivate",
            "shared",
            "rslave",
            "unbindable",
            "runbindable",
            "slave",
        ]);
        assert_eq!(
            o.propagation,
            vec![
                MsFlags::MS_PRIVATE | MsFlags::MS_REC,
                MsFlags::MS_SHARED,
                MsFlags::MS_SLAVE | MsFlags::MS_REC,
                MsFlags::MS_UNBINDABLE,
                MsFlags::MS_UNBINDABLE | MsFlags::MS_REC,
                MsFlags::MS_SLAVE,
            ]
        );
        assert!(o.flags.is_empty());
    }

    #[test]
    fn unsupported_options_are_named() {
        for option in ["idmap", "ridmap"] {
            let err = parse(&[option.to_string()]).unwrap_err();
            assert!(err.contains(option), "{err}");
        }
    }

    /// `runvm features` lists exactly what is handled here: every option
    /// it names is acted on (not passed to the filesystem as data).
    #[test]
    fn every_featured_option_is_handled() {
        for option in runvm_agent_api::features::MOUNT_OPTIONS {
            let o = parse(&[option.to_string()]).unwrap();
            assert!(o.data.is_empty(), "{option} went to the filesystem");
        }
        assert_eq!(opts(&["size=1m", "mode=755"]).data, "size=1m,mode=755");
    }

    #[test]
    fn flags_runc_knows_map_to_the_kernels() {
        let o = opts(&["lazytime", "iversion", "silent", "nosymfollow"]);
        assert_eq!(
            o.flags,
            MsFlags::MS_LAZYTIME | MsFlags::MS_I_VERSION | MsFlags::MS_SILENT | NOSYMFOLLOW
        );
        let o = opts(&["lazytime", "nolazytime", "loud", "symfollow"]);
        assert!(o.flags.is_empty());
        assert!(o
            .cleared
            .contains(MsFlags::MS_LAZYTIME | MsFlags::MS_SILENT | NOSYMFOLLOW));
    }

    #[test]
    fn recursive_attributes_set_and_clear() {
        let o = opts(&["rro", "rnosuid", "rnodev", "rsuid"]);
        assert_eq!(o.recursive.set, MOUNT_ATTR_RDONLY | MOUNT_ATTR_NODEV);
        assert_eq!(o.recursive.clear, MOUNT_ATTR_NOSUID);
        assert!(o.flags.is_empty() && o.data.is_empty());
        // An access-time mode clears the field and sets the mode.
        let o = opts(&["rnoatime", "rstrictatime"]);
        assert_eq!(o.recursive.set, MOUNT_ATTR_STRICTATIME);
        assert_eq!(o.recursive.clear, MOUNT_ATTR_ATIME_MASK);
        let o = opts(&["rrelatime"]);
        assert_eq!(o.recursive.set, MOUNT_ATTR_RELATIME);
        assert_eq!(o.recursive.clear, MOUNT_ATTR_ATIME_MASK);
        assert!(opts(&["rw"]).recursive.is_empty());
    }

    #[test]
    fn tmpcopyup_is_an_extension_not_data() {
        let o = opts(&["rw", "rprivate", "nosuid", "nodev", "tmpcopyup"]);
        assert!(o.tmpcopyup);
        assert!(o.data.is_empty());
    }
}
