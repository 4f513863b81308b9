//! A writer for the cpio "newc" (SVR4, no CRC) format, the format the Linux
//! kernel unpacks as an initramfs.
//!
//! Each member is a 110-byte ASCII header (`070701` and thirteen 8-digit
//! hexadecimal fields), the NUL-terminated name padded to a multiple of four
//! bytes (counting from the start of the header), then the data padded to a
//! multiple of four. The archive ends with a member named `TRAILER!!!`.
//!
//! The writer fills in everything that would make an archive depend on the
//! machine it was built on: inode numbers are assigned 1, 2, 3... in the
//! order entries are appended, and device numbers of the containing
//! filesystem are 0. Timestamps and owners come from the [`Entry`].

use std::io::{self, Write};

/// Magic of the newc format (no checksum).
pub const MAGIC: &[u8; 6] = b"070701";
/// Size of a newc header.
pub const HEADER_LEN: usize = 110;
/// Name of the end-of-archive member.
pub const TRAILER: &str = "TRAILER!!!";

/// File type bits of `st_mode`.
pub const S_IFDIR: u32 = 0o040000;
pub const S_IFREG: u32 = 0o100000;
pub const S_IFCHR: u32 = 0o020000;
pub const S_IFLNK: u32 = 0o120000;

/// What an entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind<'a> {
    Directory,
    File(&'a [u8]),
    CharDevice {
        major: u32,
        minor: u32,
    },
    /// A symbolic link; the member's data is the target.
    Symlink(&'a str),
}

/// One archive member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry<'a> {
    /// Path inside the archive, without a leading `/` (e.g. `dev/console`).
    pub name: &'a str,
    pub kind: Kind<'a>,
    /// Permission bits (including setuid/setgid/sticky), without the type.
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: u32,
}

impl<'a> Entry<'a> {
    /// A root-owned entry with mtime 0.
    pub fn new(name: &'a str, kind: Kind<'a>, perm: u32) -> Self {
        Entry {
            name,
            kind,
            perm,
            uid: 0,
            gid: 0,
            mtime: 0,
        }
    }

    /// `st_mode`: type bits and permission bits.
    pub fn mode(&self) -> u32 {
        let kind = match self.kind {
            Kind::Directory => S_IFDIR,
            Kind::File(_) => S_IFREG,
            Kind::CharDevice { .. } => S_IFCHR,
            Kind::Symlink(_) => S_IFLNK,
        };
        kind | (self.perm & 0o7777)
    }
}

/// Errors in the archive itself (I/O errors are passed through).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid cpio member name {0:?}: must be non-empty, relative and without NUL")]
    BadName(String),
    #[error("cpio member {name:?} is {size} bytes; newc members are limited to 4 GiB")]
    TooLarge { name: String, size: usize },
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Number of zero bytes needed to bring `len` to a multiple of four.
pub fn pad4(len: usize) -> usize {
    (4 - len % 4) % 4
}

/// Streams newc members to `W`.
pub struct Writer<W: Write> {
    out: W,
    next_ino: u32,
    written: u64,
}

impl<W: Write> Writer<W> {
    pub fn new(out: W) -> Self {
        Writer {
            out,
            next_ino: 1,
            written: 0,
        }
    }

    /// Append one member; its inode number is the next in sequence.
    pub fn append(&mut self, entry: &Entry<'_>) -> Result<(), Error> {
        if entry.name.is_empty()
            || entry.name.starts_with('/')
            || entry.name.contains('\0')
            || entry.name == TRAILER
        {
            return Err(Error::BadName(entry.name.to_owned()));
        }
        let (data, nlink, rdev): (&[u8], u32, (u32, u32)) = match entry.kind {
            Kind::Directory => (&[], 2, (0, 0)),
            Kind::File(data) => (data, 1, (0, 0)),
            Kind::CharDevice { major, minor } => (&[], 1, (major, minor)),
            Kind::Symlink(target) => (target.as_bytes(), 1, (0, 0)),
        };
        let size = u32::try_from(data.len()).map_err(|_| Error::TooLarge {
            name: entry.name.to_owned(),
            size: data.len(),
        })?;
        let ino = self.next_ino;
        self.next_ino += 1;
        let fields = Fields {
            ino,
            mode: entry.mode(),
            uid: entry.uid,
            gid: entry.gid,
            nlink,
            mtime: entry.mtime,
            filesize: size,
            rdevmajor: rdev.0,
            rdevminor: rdev.1,
        };
        self.member(&fields, entry.name, data)
    }

    /// Write the trailer and return the inner writer.
    pub fn finish(mut self) -> Result<W, Error> {
        let fields = Fields {
            nlink: 1,
            ..Fields::default()
        };
        self.member(&fields, TRAILER, &[])?;
        self.out.flush()?;
        Ok(self.out)
    }

    fn member(&mut self, f: &Fields, name: &str, data: &[u8]) -> Result<(), Error> {
        let header = header(f, name.len() + 1);
        let name_pad = pad4(HEADER_LEN + name.len() + 1);
        let data_pad = pad4(data.len());
        const ZEROS: [u8; 4] = [0; 4];
        self.out.write_all(&header)?;
        self.out.write_all(name.as_bytes())?;
        // The name's NUL terminator plus padding.
        self.out.write_all(&ZEROS[..1])?;
        self.out.write_all(&ZEROS[..name_pad])?;
        self.out.write_all(data)?;
        self.out.write_all(&ZEROS[..data_pad])?;
        self.written += (HEADER_LEN + name.len() + 1 + name_pad + data.len() + data_pad) as u64;
        debug_assert_eq!(self.written % 4, 0);
        Ok(())
    }
}

#[derive(Debug, Default)]
struct Fields {
    ino: u32,
    mode: u32,
    uid: u32,
    gid: u32,
    nlink: u32,
    mtime: u32,
    filesize: u32,
    rdevmajor: u32,
    rdevminor: u32,
}

/// Encode a header. devmajor/devminor (the containing filesystem) and the
/// checksum are always zero.
fn header(f: &Fields, namesize: usize) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..6].copy_from_slice(MAGIC);
    let values = [
        f.ino,
        f.mode,
        f.uid,
        f.gid,
        f.nlink,
        f.mtime,
        f.filesize,
        0, // devmajor
        0, // devminor
        f.rdevmajor,
        f.rdevminor,
        namesize as u32,
        0, // check
    ];
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for (i, v) in values.iter().enumerate() {
        let field = &mut h[6 + 8 * i..6 + 8 * (i + 1)];
        for (j, byte) in field.iter_mut().enumerate() {
            *byte = HEX[((v >> (28 - 4 * j)) & 0xf) as usize];
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(h: &[u8], i: usize) -> u32 {
        let s = std::str::from_utf8(&h[6 + 8 * i..6 + 8 * (i + 1)]).expect("ascii");
        u32::from_str_radix(s, 16).expect("hex")
    }

    #[test]
    fn pad4_values() {
        assert_eq!(
            [0, 1, 2, 3, 4, 5, 111, 112].map(pad4),
            [0, 3, 2, 1, 0, 3, 1, 0]
        );
    }

    #[test]
    fn header_layout_and_padding_for_a_file() {
        let mut w = Writer::new(Vec::new());
        w.append(&Entry::new("init", Kind::File(b"hello"), 0o755))
            .expect("append");
        let out = w.out;
        // Header, "init\0" (115 bytes) padded to 116, 5 bytes of data padded to 8.
        assert_eq!(out.len(), 116 + 8);
        let expected_header = concat!(
            "070701", "00000001", // ino
            "000081ED", // mode 0100755
            "00000000", // uid
            "00000000", // gid
            "00000001", // nlink
            "00000000", // mtime
            "00000005", // filesize
            "00000000", // devmajor
            "00000000", // devminor
            "00000000", // rdevmajor
            "00000000", // rdevminor
            "00000005", // namesize incl. NUL
            "00000000", // check
        );
        assert_eq!(&out[..HEADER_LEN], expected_header.as_bytes());
        assert_eq!(&out[110..116], b"init\0\0");
        assert_eq!(&out[116..], b"hello\0\0\0");
    }

    #[test]
    fn char_device_and_directory_fields() {
        let mut w = Writer::new(Vec::new());
        w.append(&Entry::new("dev", Kind::Directory, 0o755))
            .expect("dir");
        w.append(&Entry::new(
            "dev/console",
            Kind::CharDevice { major: 5, minor: 1 },
            0o600,
        ))
        .expect("chr");
        let out = w.out;
        // "dev\0" -> 114, padded to 116.
        let dir = &out[..116];
        assert_eq!(field(dir, 0), 1);
        assert_eq!(field(dir, 1), 0o040755);
        assert_eq!(field(dir, 4), 2);
        assert_eq!(field(dir, 6), 0);
        let chr = &out[116..];
        // "dev/console\0" -> 122, padded to 124, no data.
        assert_eq!(chr.len(), 124);
        assert_eq!(field(chr, 0), 2);
        assert_eq!(field(chr, 1), 0o020600);
        assert_eq!(field(chr, 6), 0);
        assert_eq!((field(chr, 9), field(chr, 10)), (5, 1));
        assert_eq!(field(chr, 11), 12);
    }

    #[test]
    fn trailer_ends_the_archive() {
        let out = Writer::new(Vec::new()).finish().expect("finish");
        // "TRAILER!!!\0" -> 121, padded to 124.
        assert_eq!(out.len(), 124);
        assert_eq!(&out[..6], MAGIC);
        assert_eq!(field(&out, 0), 0);
        assert_eq!(field(&out, 4), 1);
        assert_eq!(field(&out, 11), 11);
        assert_eq!(&out[110..124], b"TRAILER!!!\0\0\0\0");
    }

    #[test]
    fn every_member_is_four_byte_aligned() {
        for len in 0..9 {
            let name = "n".repeat(len + 1);
            let data = vec![7u8; len];
            let mut w = Writer::new(Vec::new());
            w.append(&Entry::new(&name, Kind::File(&data), 0o644))
                .expect("append");
            assert_eq!(w.out.len() % 4, 0, "name {} data {}", len + 1, len);
            let out = w.finish().expect("finish");
            assert_eq!(out.len() % 4, 0);
        }
    }

    #[test]
    fn bad_names_are_rejected() {
        for name in ["", "/init", "a\0b", TRAILER] {
            let mut w = Writer::new(Vec::new());
            let err = w.append(&Entry::new(name, Kind::Directory, 0o755));
            assert!(matches!(err, Err(Error::BadName(_))), "{name:?}");
        }
    }
}
