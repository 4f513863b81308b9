//! The guest image as an ext4 filesystem: the VMM hands it to the guest as
//! a read-only virtio-blk disk that the kernel mounts as its root, so
//! nothing is unpacked at boot and only the pages a process touches are
//! ever read (by the host, straight into guest memory). On an emulating
//! host, unpacking the 2.2 MB cpio cost the guest kernel about 1.5 M
//! emulated instructions per boot, and the test image's ~400 busybox links
//! another 6 M (see bench/RESULTS.md).
//!
//! e2fsprogs' `mke2fs -d` fills the filesystem from a staging directory;
//! `debugfs` then sets every inode's ctime to 0 (the staging files' ctimes
//! are the build's time), and fixed UUID, hash seed and
//! `E2FSPROGS_FAKE_TIME` make the same inputs give the same bytes.
//!
//! No journal (the guest mounts it read-only) and no metadata checksums:
//! the guest kernel would compute crc32c over every metadata block it
//! reads, instruction by instruction on an emulating host.

use std::fs;
use std::io;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::newc::{Entry, Kind};

/// Fixed so that the image is reproducible; names nothing but this build.
const UUID: &str = "72756e76-6d00-4a00-8000-726f6f746673";
const BLOCK_SIZE: u64 = 4096;
/// Room for the superblock, group descriptors, bitmaps, inode table and
/// directories beyond the files' own blocks.
const OVERHEAD_BLOCKS: u64 = 512;
const INODE_SIZE: u64 = 256;

#[derive(Debug, thiserror::Error)]
pub enum Ext4Error {
    #[error("cannot stage the image in {}: {source}", path.display())]
    Stage { path: PathBuf, source: io::Error },
    #[error("cannot run {tool} (install e2fsprogs): {source}")]
    Spawn {
        tool: &'static str,
        source: io::Error,
    },
    #[error("{tool} failed ({status}): {stderr}")]
    Tool {
        tool: &'static str,
        status: std::process::ExitStatus,
        stderr: String,
    },
}

/// Writes `entries` as an ext4 filesystem image at `output` (replaced if
/// it exists). `work` is an empty scratch directory the caller removes.
/// Character devices are left out: the kernel mounts devtmpfs on `/dev`
/// before it runs `/init` from a disk root.
pub fn write_image(entries: &[Entry<'_>], work: &Path, output: &Path) -> Result<(), Ext4Error> {
    let staging = work.join("root");
    stage(entries, &staging).map_err(|source| Ext4Error::Stage {
        path: staging.clone(),
        source,
    })?;
    let (blocks, inodes) = size_for(entries);
    let _ = fs::remove_file(output);
    let mut mkfs = Command::new("mke2fs");
    mkfs.env("E2FSPROGS_FAKE_TIME", "1")
        .args([
            "-q",
            "-F",
            "-t",
            "ext4",
            "-b",
            "4096",
            "-m",
            "0",
            "-L",
            "runvm-root",
        ])
        .args(["-I", &INODE_SIZE.to_string(), "-N", &inodes.to_string()])
        .args(["-O", "^has_journal,^metadata_csum,^resize_inode"])
        .args(["-U", UUID, "-E"])
        .arg(format!("hash_seed={UUID},root_owner=0:0"))
        .arg("-d")
        .arg(&staging)
        .arg(output)
        .arg(blocks.to_string());
    run("mke2fs", &mut mkfs)?;
    // The staged inodes' ctimes are now; the image's should not be.
    let script = work.join("debugfs.cmds");
    let mut commands = String::from("set_inode_field / ctime 0\n");
    for entry in entries.iter().filter(|e| staged(e)) {
        commands.push_str(&format!("set_inode_field /{} ctime 0\n", entry.name));
    }
    fs::write(&script, commands).map_err(|source| Ext4Error::Stage {
        path: script.clone(),
        source,
    })?;
    let mut debugfs = Command::new("debugfs");
    debugfs
        .env("E2FSPROGS_FAKE_TIME", "1")
        .arg("-w")
        .arg("-f")
        .arg(&script)
        .arg(output);
    run("debugfs", &mut debugfs)
}

fn staged(entry: &Entry<'_>) -> bool {
    !matches!(entry.kind, Kind::CharDevice { .. })
}

/// Blocks and inodes for `entries`: their data plus fixed overhead.
fn size_for(entries: &[Entry<'_>]) -> (u64, u64) {
    let data: u64 = entries
        .iter()
        .map(|e| match e.kind {
            Kind::File(bytes) => (bytes.len() as u64).div_ceil(BLOCK_SIZE),
            // A directory of a few hundred names fits in a few blocks.
            Kind::Directory => 4,
            // Targets under 60 bytes live in the inode.
            Kind::Symlink(target) if target.len() < 60 => 0,
            Kind::Symlink(_) => 1,
            Kind::CharDevice { .. } => 0,
        })
        .sum();
    // Inodes: ours, the root, lost+found and ext4's reserved first ten.
    (data + OVERHEAD_BLOCKS, entries.len() as u64 + 16)
}

/// Creates `entries` under `root` (which must not exist), all with mtime 0.
fn stage(entries: &[Entry<'_>], root: &Path) -> io::Result<()> {
    fs::create_dir(root)?;
    for entry in entries.iter().filter(|e| staged(e)) {
        let path = root.join(entry.name);
        match entry.kind {
            Kind::Directory => fs::create_dir(&path)?,
            Kind::File(bytes) => fs::write(&path, bytes)?,
            Kind::Symlink(target) => symlink(target, &path)?,
            Kind::CharDevice { .. } => continue,
        }
        if !matches!(entry.kind, Kind::Symlink(_)) {
            fs::set_permissions(&path, fs::Permissions::from_mode(entry.perm))?;
        }
    }
    // Only once every entry exists: adding a name changes its directory's
    // mtime.
    for entry in entries.iter().filter(|e| staged(e)) {
        zero_mtime(&root.join(entry.name))?;
    }
    zero_mtime(root)
}

fn zero_mtime(path: &Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))?;
    let times = [libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    }; 2];
    // SAFETY: a valid C string and two timespecs.
    let ret = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c_path.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if ret != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn run(tool: &'static str, command: &mut Command) -> Result<(), Ext4Error> {
    let output = command
        .output()
        .map_err(|source| Ext4Error::Spawn { tool, source })?;
    if !output.status.success() {
        return Err(Ext4Error::Tool {
            tool,
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_counts_file_blocks_and_overhead() {
        let data = vec![0u8; 4097];
        let entries = [
            Entry::new("bin", Kind::Directory, 0o755),
            Entry::new("init", Kind::File(&data), 0o755),
            Entry::new("bin/sh", Kind::Symlink("busybox"), 0o777),
        ];
        assert_eq!(size_for(&entries), (4 + 2 + OVERHEAD_BLOCKS, 3 + 16));
    }
}
