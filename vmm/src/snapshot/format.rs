//! The snapshot's state file on disk: a fixed header, then the machine
//! state as JSON. The header carries the format version, the length and
//! CRC-32 of the state, and the length and CRC-32 of the memory file, so a
//! damaged, truncated or foreign file is refused before anything in it is
//! believed.
//!
//! ```text
//!  0  magic "RUNVMSNP"
//!  8  format version (u32, little-endian)
//! 12  reserved, zero
//! 16  state length in bytes (u64)
//! 24  CRC-32 of the state
//! 28  CRC-32 of the memory file
//! 32  memory file length in bytes (u64)
//! 40  CRC-32 of bytes 0..40
//! 44  reserved, zero
//! 48  the state (JSON)
//! ```

pub const MAGIC: [u8; 8] = *b"RUNVMSNP";
/// Bumped whenever the state's meaning or layout changes: a snapshot of
/// another version is refused, never guessed at.
pub const FORMAT_VERSION: u32 = 1;
pub const HEADER_LEN: usize = 48;
/// The state of 32 vCPUs with every MSR and xsave area is well below this;
/// anything larger is not one of ours.
pub const MAX_STATE_BYTES: u64 = 4 << 20;

/// What the header says about the two files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub state_len: u64,
    pub state_crc: u32,
    pub memory_len: u64,
    pub memory_crc: u32,
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(word)
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

impl Header {
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0..8].copy_from_slice(&MAGIC);
        out[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        out[16..24].copy_from_slice(&self.state_len.to_le_bytes());
        out[24..28].copy_from_slice(&self.state_crc.to_le_bytes());
        out[28..32].copy_from_slice(&self.memory_crc.to_le_bytes());
        out[32..40].copy_from_slice(&self.memory_len.to_le_bytes());
        let crc = crc32fast::hash(&out[0..40]);
        out[40..44].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// The header at the start of `bytes`, checked on its own.
    pub fn decode(bytes: &[u8]) -> Result<Header, String> {
        if bytes.is_empty() {
            return Err("the state file is empty (the snapshot was never completed)".into());
        }
        if bytes.len() < HEADER_LEN || bytes[0..8] != MAGIC {
            return Err("the state file is not a runvm snapshot (bad magic)".into());
        }
        let version = u32_at(bytes, 8);
        if version != FORMAT_VERSION {
            return Err(format!(
                "snapshot format version {version}; this runvm-vmm reads version {FORMAT_VERSION}"
            ));
        }
        if crc32fast::hash(&bytes[0..40]) != u32_at(bytes, 40)
            || u32_at(bytes, 12) != 0
            || u32_at(bytes, 44) != 0
        {
            return Err("the state file's header is damaged (checksum mismatch)".into());
        }
        let header = Header {
            state_len: u64_at(bytes, 16),
            state_crc: u32_at(bytes, 24),
            memory_crc: u32_at(bytes, 28),
            memory_len: u64_at(bytes, 32),
        };
        if header.state_len > MAX_STATE_BYTES {
            return Err(format!(
                "the state file claims {} bytes of state, more than the {MAX_STATE_BYTES} allowed",
                header.state_len
            ));
        }
        Ok(header)
    }
}

/// A whole state file: header and `state`.
pub fn encode_state_file(state: &[u8], memory_len: u64, memory_crc: u32) -> Vec<u8> {
    let header = Header {
        state_len: state.len() as u64,
        state_crc: crc32fast::hash(state),
        memory_len,
        memory_crc,
    };
    let mut out = Vec::with_capacity(HEADER_LEN + state.len());
    out.extend_from_slice(&header.encode());
    out.extend_from_slice(state);
    out
}

/// Checks a whole state file: its header, its length and the state's
/// checksum. Returns the header and the state bytes.
pub fn decode_state_file(bytes: &[u8]) -> Result<(Header, &[u8]), String> {
    let header = Header::decode(bytes)?;
    let state = &bytes[HEADER_LEN..];
    if state.len() as u64 != header.state_len {
        return Err(format!(
            "the state file holds {} bytes of state where its header says {} (truncated or extended)",
            state.len(),
            header.state_len
        ));
    }
    if crc32fast::hash(state) != header.state_crc {
        return Err("the state is damaged (checksum mismatch)".into());
    }
    Ok((header, state))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        encode_state_file(br#"{"hello":1}"#, 128 << 20, 0xdead_beef)
    }

    #[test]
    fn a_file_round_trips() {
        let file = sample();
        let (header, state) = decode_state_file(&file).unwrap();
        assert_eq!(state, br#"{"hello":1}"#);
        assert_eq!(header.memory_len, 128 << 20);
        assert_eq!(header.memory_crc, 0xdead_beef);
    }

    #[test]
    fn an_empty_file_is_an_incomplete_snapshot() {
        let error = decode_state_file(&[]).unwrap_err();
        assert!(error.contains("never completed"), "{error}");
    }

    #[test]
    fn a_foreign_file_is_refused() {
        let error =
            decode_state_file(b"\x7fELF and more bytes than a header needs, really").unwrap_err();
        assert!(error.contains("bad magic"), "{error}");
        assert!(decode_state_file(b"RUNVMSNP")
            .unwrap_err()
            .contains("bad magic"));
    }

    #[test]
    fn another_version_is_refused_by_name() {
        let mut file = sample();
        file[8] = 2;
        let error = decode_state_file(&file).unwrap_err();
        assert!(error.contains("version 2"), "{error}");
    }

    #[test]
    fn every_flipped_bit_is_caught() {
        let file = sample();
        for at in (0..file.len()).filter(|at| !(8..12).contains(at)) {
            for bit in 0..8 {
                let mut damaged = file.clone();
                damaged[at] ^= 1 << bit;
                assert!(
                    decode_state_file(&damaged).is_err(),
                    "bit {bit} of byte {at} went unnoticed"
                );
            }
        }
    }

    #[test]
    fn truncated_and_extended_files_are_refused() {
        let file = sample();
        let error = decode_state_file(&file[..file.len() - 1]).unwrap_err();
        assert!(error.contains("truncated"), "{error}");
        let mut longer = file.clone();
        longer.push(b' ');
        assert!(decode_state_file(&longer).is_err());
    }

    #[test]
    fn an_absurd_state_length_is_refused_before_reading_it() {
        let mut header = Header::decode(&sample()).unwrap();
        header.state_len = u64::MAX;
        let error = Header::decode(&header.encode()).unwrap_err();
        assert!(error.contains("more than"), "{error}");
    }
}
