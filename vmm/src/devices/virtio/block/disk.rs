//! The backing image of a block device: opened once, read-only, and read
//! straight into guest memory.

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use vm_memory::bitmap::BitmapSlice;
use vm_memory::VolatileSlice;

use super::SECTOR_SIZE;
use crate::error::Error;

#[derive(Debug)]
pub struct DiskImage {
    file: File,
    path: PathBuf,
    /// Whole sectors the guest may read; a partial last sector is left out.
    sectors: u64,
}

impl DiskImage {
    /// Opens `path` read-only (`File::open` is O_RDONLY|O_CLOEXEC). It must
    /// be a regular file or a block device holding at least one sector.
    pub fn open(path: &Path) -> Result<DiskImage, Error> {
        let fail = |reason: String| Error::RootDisk {
            path: path.to_path_buf(),
            reason,
        };
        let file = File::open(path).map_err(|e| fail(e.to_string()))?;
        DiskImage::from_file(file, path).map_err(fail)
    }

    pub fn from_file(mut file: File, path: &Path) -> Result<DiskImage, String> {
        let kind = file.metadata().map_err(|e| e.to_string())?.file_type();
        if !kind.is_file() && !kind.is_block_device() {
            return Err("not a regular file or block device".into());
        }
        // Seeking to the end also sizes a block device, whose metadata says 0.
        let bytes = file.seek(SeekFrom::End(0)).map_err(|e| e.to_string())?;
        let sectors = bytes / SECTOR_SIZE;
        if sectors == 0 {
            return Err(format!(
                "{bytes} bytes is less than one {SECTOR_SIZE}-byte sector"
            ));
        }
        Ok(DiskImage {
            file,
            path: path.to_path_buf(),
            sectors,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn sectors(&self) -> u64 {
        self.sectors
    }

    pub fn capacity_bytes(&self) -> u64 {
        self.sectors * SECTOR_SIZE
    }

    /// Fills `slice` from the image at byte `offset`, which the caller
    /// checked lies with the whole slice inside the capacity. `pread`
    /// writes into guest memory directly; the file position is unused.
    pub fn read_exact_at<B: BitmapSlice>(
        &self,
        slice: &VolatileSlice<'_, B>,
        offset: u64,
    ) -> std::io::Result<()> {
        let len = slice.len();
        let guard = slice.ptr_guard_mut();
        let mut done = 0usize;
        while done < len {
            let at = offset
                .checked_add(done as u64)
                .and_then(|at| libc::off_t::try_from(at).ok())
                .ok_or_else(|| std::io::Error::from_raw_os_error(libc::EINVAL))?;
            // SAFETY: `guard` points at `len` bytes of mapped guest memory,
            // valid for writes while the slice lives; `done < len`.
            let rc = unsafe {
                libc::pread(
                    self.file.as_raw_fd(),
                    guard.as_ptr().add(done).cast(),
                    len - done,
                    at,
                )
            };
            match rc {
                0 => {
                    // The image shrank under the VM.
                    slice.bitmap().mark_dirty(0, done);
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                n if n > 0 => done += n as usize,
                _ => {
                    let error = std::io::Error::last_os_error();
                    if error.kind() != std::io::ErrorKind::Interrupted {
                        slice.bitmap().mark_dirty(0, len);
                        return Err(error);
                    }
                }
            }
        }
        slice.bitmap().mark_dirty(0, len);
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::FromRawFd;

    /// An anonymous file holding `content`.
    pub(crate) fn memfd_with(content: &[u8]) -> File {
        // SAFETY: a static NUL-terminated name; the result is checked.
        let fd = unsafe { libc::memfd_create(c"disk".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
        // SAFETY: the descriptor is new and ours.
        let mut file = unsafe { File::from_raw_fd(fd) };
        file.write_all(content).unwrap();
        file
    }

    /// A disk whose byte at offset `i` is `(i / 512 + i) as u8`.
    pub(crate) fn patterned_disk(sectors: u64) -> DiskImage {
        let content: Vec<u8> = (0..sectors * SECTOR_SIZE)
            .map(|i| (i / SECTOR_SIZE + i) as u8)
            .collect();
        DiskImage::from_file(memfd_with(&content), Path::new("/test/disk")).unwrap()
    }

    #[test]
    fn a_missing_file_is_an_error_naming_it() {
        let message = DiskImage::open(Path::new("/nonexistent/root.ext4"))
            .unwrap_err()
            .to_string();
        assert!(message.contains("/nonexistent/root.ext4"), "{message}");
        assert!(message.contains("No such file"), "{message}");
    }

    #[test]
    fn capacity_is_rounded_down_to_a_sector() {
        let disk = DiskImage::from_file(memfd_with(&[7u8; 1500]), Path::new("d")).unwrap();
        assert_eq!(disk.sectors(), 2);
        assert_eq!(disk.capacity_bytes(), 1024);
    }

    #[test]
    fn empty_or_sub_sector_images_are_refused() {
        for size in [0usize, 511] {
            let error = DiskImage::from_file(memfd_with(&vec![0; size]), Path::new("d"));
            assert!(error.unwrap_err().contains("less than one"), "{size}");
        }
    }

    #[test]
    fn a_directory_is_refused() {
        let message = DiskImage::open(Path::new("/")).unwrap_err().to_string();
        assert!(message.contains("not a regular file"), "{message}");
    }

    #[test]
    fn reads_land_in_the_slice() {
        let disk = patterned_disk(4);
        let mut buffer = [0u8; 100];
        let slice = VolatileSlice::from(&mut buffer[..]);
        // Past the end of the file: a short read is an error.
        assert!(disk.read_exact_at(&slice, 2000).is_err());
        disk.read_exact_at(&slice, 600).unwrap();
        assert_eq!(buffer[0], (600 / 512 + 600) as u8);
        assert_eq!(buffer[99], (699 / 512 + 699) as u8);
    }
}
