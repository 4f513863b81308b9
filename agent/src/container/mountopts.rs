//! OCI mount options: flags for mount(2), propagation changes applied
//! after it, and the rest passed to the filesystem as data.

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
}

impl Default for MountOptions {
    fn default() -> MountOptions {
        MountOptions {
            flags: MsFlags::empty(),
            cleared: MsFlags::empty(),
            propagation: Vec::new(),
            data: String::new(),
            bind: false,
        }
    }
}

/// Flags that a remount of a bind mount may change.
pub const REMOUNT_FLAGS: MsFlags = MsFlags::MS_RDONLY
    .union(MsFlags::MS_NOSUID)
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC)
    .union(MsFlags::MS_NOATIME)
    .union(MsFlags::MS_NODIRATIME)
    .union(MsFlags::MS_RELATIME)
    .union(MsFlags::MS_STRICTATIME);

impl MountOptions {
    /// Whether a bind mount needs a remount to apply `flags`.
    pub fn bind_remount_flags(&self) -> MsFlags {
        self.flags & REMOUNT_FLAGS
    }
}

/// Parses `options` as runc does. Options that runc handles itself but
/// runvm cannot (id-mapped mounts, tmpcopyup) are refused by name.
pub fn parse(options: &[String]) -> Result<MountOptions, String> {
    let mut o = MountOptions::default();
    let mut data: Vec<&str> = Vec::new();
    for option in options {
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
            "tmpcopyup" | "idmap" | "ridmap" | "copy-symlink" | "src-nofollow" => {
                return Err(format!("mount option {option:?} is not supported by runvm"))
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
        let err = parse(&["idmap".to_string()]).unwrap_err();
        assert!(err.contains("idmap"));
    }
}
