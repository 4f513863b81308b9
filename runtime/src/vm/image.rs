//! Which kind of guest image a file is, by content.

use std::fs;
use std::io::Read;
use std::path::Path;

use super::VmError;

/// How the VMM hands the guest its image, told apart by content.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageKind {
    /// An ext4 filesystem: a read-only root disk, read on demand.
    RootDisk,
    /// A cpio archive (or a compressed one), unpacked by the guest kernel.
    Initramfs,
    /// The agent itself, a static executable: runvm-vmm preloads it in
    /// guest memory and boots its own loader, which maps it (no page of it
    /// goes through the guest's page cache).
    InitProgram,
}

impl ImageKind {
    /// Looks at the first bytes of `path`.
    pub fn of(path: &Path) -> Result<ImageKind, VmError> {
        let error = |reason: String| VmError::Image {
            path: path.to_owned(),
            reason,
        };
        let mut head = Vec::with_capacity(EXT4_MAGIC_OFFSET + 2);
        fs::File::open(path)
            .and_then(|f| f.take(EXT4_MAGIC_OFFSET as u64 + 2).read_to_end(&mut head))
            .map_err(|e| error(e.to_string()))?;
        Self::from_head(&head).ok_or_else(|| {
            error("neither an executable, an ext4 filesystem nor a cpio initramfs".to_owned())
        })
    }

    fn from_head(head: &[u8]) -> Option<ImageKind> {
        const CPIO: [&[u8]; 3] = [b"070701", b"070702", b"070707"];
        // gzip, xz, zstd, lz4, bzip2: compressed initramfs archives.
        const COMPRESSED: [&[u8]; 5] = [
            &[0x1f, 0x8b],
            &[0xfd, b'7', b'z', b'X', b'Z'],
            &[0x28, 0xb5, 0x2f, 0xfd],
            &[0x02, 0x21, 0x4c, 0x18],
            b"BZh",
        ];
        if head.starts_with(b"\x7fELF") {
            Some(ImageKind::InitProgram)
        } else if head.get(EXT4_MAGIC_OFFSET..EXT4_MAGIC_OFFSET + 2) == Some(&[0x53, 0xef][..]) {
            Some(ImageKind::RootDisk)
        } else if CPIO.iter().chain(&COMPRESSED).any(|m| head.starts_with(m)) {
            Some(ImageKind::Initramfs)
        } else {
            None
        }
    }

    /// The runvm-vmm option that takes such an image.
    pub fn vmm_flag(self) -> &'static str {
        match self {
            ImageKind::RootDisk => "--root-disk",
            ImageKind::Initramfs => "--initrd",
            ImageKind::InitProgram => "--init-program",
        }
    }
}

/// Where the ext2/3/4 superblock's magic number sits.
const EXT4_MAGIC_OFFSET: usize = 1024 + 0x38;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_are_told_apart_by_content() {
        let mut ext4 = vec![0u8; 2048];
        ext4[EXT4_MAGIC_OFFSET] = 0x53;
        ext4[EXT4_MAGIC_OFFSET + 1] = 0xef;
        assert_eq!(ImageKind::from_head(&ext4), Some(ImageKind::RootDisk));
        assert_eq!(
            ImageKind::from_head(b"070701000000"),
            Some(ImageKind::Initramfs)
        );
        assert_eq!(
            ImageKind::from_head(&[0x1f, 0x8b, 8]),
            Some(ImageKind::Initramfs)
        );
        assert_eq!(
            ImageKind::from_head(b"\x7fELF\x02\x01"),
            Some(ImageKind::InitProgram)
        );
        assert_eq!(ImageKind::from_head(b"MZ\x90\0"), None);
        assert_eq!(ImageKind::from_head(b""), None);
    }

    #[test]
    fn a_missing_image_is_named() {
        let err = ImageKind::of(Path::new("/nonexistent/rootfs.ext4")).unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/rootfs.ext4"),
            "{err}"
        );
    }
}
