//! The console log file, bounded: the guest decides what it prints, and an
//! endless stream must not fill the host's disk (often a tmpfs, in RAM).
//!
//! The file never grows past [`LIMITS`]`.total` (4 MiB). What is worth
//! keeping of a long console is its two ends: the start (the kernel's boot
//! messages, the first error) and the end, which the runtime quotes when
//! the VM fails. So when the file is full, everything after the first
//! `head` bytes is replaced by a `[console output truncated]` line and the
//! last `recent` bytes of output, and the log goes on from there. The file
//! thus always reads as: the start of the output, the marker (once output
//! was dropped), then the latest output in order, of which at least
//! `recent` (64 KiB, far more than the runtime's 2 KiB tail) is there.
//!
//! No rate limit is needed on top: every console byte is a VM exit, which
//! already bounds how fast a guest can print. Syscalls (on the vCPU thread
//! that writes the UART): write, and on each wrap lseek and ftruncate.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{Seek, SeekFrom, Write};

pub const TRUNCATED: &[u8] = b"\n[console output truncated]\n";

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// The file's largest size.
    pub total: u64,
    /// Bytes of the start of the output always kept.
    pub head: u64,
    /// Bytes of the latest output carried over a wrap.
    pub recent: usize,
}

impl Limits {
    /// Whether a wrap leaves room for at least as much new output as it
    /// carries over, so wraps cannot follow each other at every byte.
    const fn sound(&self) -> bool {
        self.head + TRUNCATED.len() as u64 + 2 * self.recent as u64 <= self.total
    }
}

pub const LIMITS: Limits = Limits {
    total: 4 << 20,
    head: 1 << 20,
    recent: 64 << 10,
};

const _: () = assert!(LIMITS.sound());

pub struct CappedLog {
    file: File,
    limits: Limits,
    /// The file's length, which is also where the next byte goes.
    len: u64,
    /// The latest `limits.recent` bytes of output.
    recent: VecDeque<u8>,
}

impl CappedLog {
    /// `file` is empty and open for writing at its start.
    pub fn new(file: File) -> CappedLog {
        CappedLog::with_limits(file, LIMITS)
    }

    /// Limits that are not [`Limits::sound`] fall back to [`LIMITS`].
    pub fn with_limits(file: File, limits: Limits) -> CappedLog {
        let limits = if limits.sound() { limits } else { LIMITS };
        CappedLog {
            file,
            limits,
            len: 0,
            recent: VecDeque::with_capacity(limits.recent),
        }
    }

    /// Cuts the file back to its head, the marker and the recent output.
    fn wrap(&mut self) -> std::io::Result<()> {
        self.file.seek(SeekFrom::Start(self.limits.head))?;
        self.file.write_all(TRUNCATED)?;
        let (first, second) = self.recent.as_slices();
        self.file.write_all(first)?;
        self.file.write_all(second)?;
        let len = self.limits.head + (TRUNCATED.len() + self.recent.len()) as u64;
        self.file.set_len(len)?;
        self.len = len;
        Ok(())
    }

    fn remember(&mut self, bytes: &[u8]) {
        let keep = &bytes[bytes.len().saturating_sub(self.limits.recent)..];
        let overflow = (self.recent.len() + keep.len()).saturating_sub(self.limits.recent);
        self.recent.drain(..overflow);
        self.recent.extend(keep);
    }
}

impl Write for CappedLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.len >= self.limits.total {
            self.wrap()?;
        }
        let room = (self.limits.total - self.len) as usize;
        let written = self.file.write(&buf[..buf.len().min(room)])?;
        self.len += written as u64;
        self.remember(&buf[..written]);
        Ok(written)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMALL: Limits = Limits {
        total: 1000,
        head: 100,
        recent: 200,
    };

    fn temp_file(name: &str) -> (std::path::PathBuf, File) {
        let path =
            std::env::temp_dir().join(format!("runvm-console-{}-{name}.log", std::process::id()));
        let file = File::create(&path).unwrap();
        (path, file)
    }

    /// Numbered lines, so any slice of the output is recognisable.
    fn output(lines: usize) -> Vec<u8> {
        (0..lines)
            .flat_map(|i| format!("line {i:06}\n").into_bytes())
            .collect()
    }

    #[test]
    fn a_short_console_is_kept_whole() {
        let (path, file) = temp_file("short");
        let mut log = CappedLog::with_limits(file, SMALL);
        let text = output(20);
        log.write_all(&text).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), text);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn an_endless_console_keeps_its_start_and_its_end_within_the_cap() {
        let (path, file) = temp_file("endless");
        let mut log = CappedLog::with_limits(file, SMALL);
        let text = output(5000);
        // Byte by byte, as the UART writes.
        for (i, byte) in text.iter().enumerate() {
            log.write_all(&[*byte]).unwrap();
            if i % 997 == 0 {
                let len = std::fs::metadata(&path).unwrap().len();
                assert!(len <= SMALL.total, "{len} bytes after {i}");
            }
        }
        let kept = std::fs::read(&path).unwrap();
        assert!(kept.len() as u64 <= SMALL.total);
        let head = SMALL.head as usize;
        assert_eq!(&kept[..head], &text[..head], "the start is kept");
        assert_eq!(&kept[head..head + TRUNCATED.len()], TRUNCATED);
        let after_marker = &kept[head + TRUNCATED.len()..];
        assert!(after_marker.len() >= SMALL.recent);
        assert!(
            text.ends_with(after_marker),
            "what follows the marker is the latest output, in order"
        );
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_large_write_is_cut_to_the_room_left() {
        let (path, file) = temp_file("large");
        let mut log = CappedLog::with_limits(file, SMALL);
        let text = output(500);
        log.write_all(&text).unwrap();
        let kept = std::fs::read(&path).unwrap();
        assert!(kept.len() as u64 <= SMALL.total);
        assert!(text.ends_with(&kept[SMALL.head as usize + TRUNCATED.len()..]));
        std::fs::remove_file(&path).unwrap();
    }
}
