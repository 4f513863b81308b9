//! The jail's view of files: new mount (and network, IPC, UTS) namespaces
//! in which the jail directory is the root and the host's tree is gone.

use std::os::unix::fs::{lchown, FileTypeExt, PermissionsExt};
use std::path::Path;

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::unistd::{chdir, pivot_root};

use super::Jail;
use crate::error::Error;

/// Gives the jail directory, and the sockets in it, to the jail's id:
/// mode 0700 for the directory, 0600 for each socket. Nothing else in it
/// changes hands. Runs as root, before anything of the VM's runs.
pub fn hand_over(jail: &Jail) -> Result<(), Error> {
    let step = "hand the jail directory over";
    let dir = jail.dir();
    let meta = std::fs::symlink_metadata(dir).map_err(Error::jail(step))?;
    if !meta.is_dir() {
        return Err(Error::Jail {
            step,
            reason: format!("{} is not a directory", dir.display()),
        });
    }
    give(dir, jail.id(), 0o700).map_err(Error::jail(step))?;
    for entry in std::fs::read_dir(dir).map_err(Error::jail(step))? {
        let entry = entry.map_err(Error::jail(step))?;
        // The entry's own type: a symbolic link is not followed.
        if entry.file_type().map_err(Error::jail(step))?.is_socket() {
            give(&entry.path(), jail.id(), 0o600).map_err(Error::jail(step))?;
        }
    }
    Ok(())
}

fn give(path: &Path, id: u32, mode: u32) -> std::io::Result<()> {
    lchown(path, Some(id), Some(id))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

/// Enters new mount, network, IPC and UTS namespaces and makes the jail
/// directory the root (nosuid, nodev, noexec), the old root detached.
pub fn enter(jail: &Jail) -> Result<(), Error> {
    let dir = jail.dir();
    unshare(
        CloneFlags::CLONE_NEWNS
            | CloneFlags::CLONE_NEWNET
            | CloneFlags::CLONE_NEWIPC
            | CloneFlags::CLONE_NEWUTS,
    )
    .map_err(Error::jail("create the namespaces"))?;
    // Nothing done here may reach the host's mount table.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(Error::jail("make the mounts private"))?;
    // pivot_root needs the new root to be a mount point.
    mount(Some(dir), dir, None::<&str>, MsFlags::MS_BIND, None::<&str>)
        .map_err(Error::jail("bind the jail directory"))?;
    mount(
        None::<&str>,
        dir,
        None::<&str>,
        MsFlags::MS_BIND
            | MsFlags::MS_REMOUNT
            | MsFlags::MS_NOSUID
            | MsFlags::MS_NODEV
            | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(Error::jail("restrict the jail's root mount"))?;
    chdir(dir).map_err(Error::jail("enter the jail directory"))?;
    // The old root is stacked on the new one at `.`, then detached: no
    // directory for it is needed, none is left (pivot_root(2)).
    pivot_root(".", ".").map_err(Error::jail("pivot_root into the jail"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(Error::jail("detach the old root"))?;
    chdir("/").map_err(Error::jail("enter the new root"))?;
    Ok(())
}
