//! rootfs-builder's cpio "newc" writer (rootfs-builder/src/newc.rs) with
//! arbitrary members: it refuses bad names and otherwise writes an archive
//! that a strict reader (here, following the format as the kernel's
//! initramfs unpacker reads it) takes apart into exactly the members given,
//! each 4-byte aligned, ending with the trailer.
#![no_main]

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use runvm_rootfs_builder::newc::{Entry, Kind, Writer, HEADER_LEN, MAGIC, TRAILER};

#[derive(Arbitrary, Debug)]
enum Member {
    Directory,
    File(Vec<u8>),
    CharDevice { major: u32, minor: u32 },
    Symlink(String),
}

#[derive(Arbitrary, Debug)]
struct Input {
    name: String,
    member: Member,
    perm: u32,
    uid: u32,
    gid: u32,
    mtime: u32,
}

struct Read<'a> {
    fields: [u32; 13],
    name: &'a [u8],
    data: &'a [u8],
}

fn hex(field: &[u8]) -> u32 {
    let text = std::str::from_utf8(field).expect("hex digits are ASCII");
    u32::from_str_radix(text, 16).expect("a header field is hexadecimal")
}

/// Reads the member at `at`; returns it and where the next one starts.
fn read_member(archive: &[u8], at: usize) -> (Read<'_>, usize) {
    assert_eq!(at % 4, 0, "a member at an unaligned offset");
    let header = &archive[at..at + HEADER_LEN];
    assert_eq!(&header[..6], MAGIC);
    let mut fields = [0u32; 13];
    for (i, field) in fields.iter_mut().enumerate() {
        *field = hex(&header[6 + 8 * i..6 + 8 * (i + 1)]);
    }
    let namesize = fields[11] as usize;
    let name_start = at + HEADER_LEN;
    let name = &archive[name_start..name_start + namesize];
    assert_eq!(name.last(), Some(&0), "a name without its NUL");
    let data_start = (name_start + namesize).next_multiple_of(4);
    let size = fields[6] as usize;
    let data = &archive[data_start..data_start + size];
    let next = (data_start + size).next_multiple_of(4);
    (
        Read {
            fields,
            name: &name[..namesize - 1],
            data,
        },
        next,
    )
}

fuzz_target!(|inputs: Vec<Input>| {
    let mut writer = Writer::new(Vec::new());
    let mut written = Vec::new();
    for input in inputs.iter().take(16) {
        let kind = match &input.member {
            Member::Directory => Kind::Directory,
            Member::File(data) => Kind::File(data),
            Member::CharDevice { major, minor } => Kind::CharDevice {
                major: *major,
                minor: *minor,
            },
            Member::Symlink(target) => Kind::Symlink(target),
        };
        let entry = Entry {
            name: &input.name,
            kind,
            perm: input.perm,
            uid: input.uid,
            gid: input.gid,
            mtime: input.mtime,
        };
        let bad_name = input.name.is_empty()
            || input.name.starts_with('/')
            || input.name.contains('\0')
            || input.name == TRAILER;
        match writer.append(&entry) {
            Ok(()) => {
                assert!(!bad_name, "bad name {:?} accepted", input.name);
                written.push(entry);
            }
            Err(_) => assert!(bad_name, "good name {:?} refused", input.name),
        }
    }
    let archive = writer.finish().expect("writing to memory");
    assert_eq!(archive.len() % 4, 0);
    let mut at = 0;
    for (i, entry) in written.iter().enumerate() {
        let (member, next) = read_member(&archive, at);
        assert_eq!(member.name, entry.name.as_bytes());
        assert_eq!(member.fields[0], i as u32 + 1, "inode numbers in order");
        assert_eq!(member.fields[1], entry.mode());
        assert_eq!((member.fields[2], member.fields[3]), (entry.uid, entry.gid));
        assert_eq!(member.fields[5], entry.mtime);
        let (data, rdev): (&[u8], (u32, u32)) = match entry.kind {
            Kind::Directory => (&[], (0, 0)),
            Kind::File(data) => (data, (0, 0)),
            Kind::CharDevice { major, minor } => (&[], (major, minor)),
            Kind::Symlink(target) => (target.as_bytes(), (0, 0)),
        };
        assert_eq!(member.data, data);
        assert_eq!((member.fields[9], member.fields[10]), rdev);
        at = next;
    }
    let (trailer, end) = read_member(&archive, at);
    assert_eq!(trailer.name, TRAILER.as_bytes());
    assert_eq!(end, archive.len(), "bytes after the trailer");
});
