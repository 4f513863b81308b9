//! The guest's init as a program the VMM preloads (`--init-program`):
//! checked here, placed in guest memory the memory map leaves out, and
//! announced on the kernel command line to the loader that
//! [`super::loader_image`] boots as /init.

use std::fs::File;
use std::io::{Read, Seek};
use std::path::Path;

use crate::config::VmConfig;
use crate::error::Error;
use crate::memory::{preload_placement, RamRange};

/// An init program's file and where it goes.
#[derive(Debug)]
pub(super) struct Preload {
    pub file: File,
    pub size: u64,
    pub place: RamRange,
}

impl Preload {
    /// Opens and checks `path` (before the jail), and places it.
    pub fn open(config: &VmConfig, path: &Path) -> Result<Preload, Error> {
        let refused = |reason: String| Error::InitProgram {
            path: path.to_path_buf(),
            reason,
        };
        let mut file = File::open(path).map_err(|e| refused(e.to_string()))?;
        let meta = file.metadata().map_err(|e| refused(e.to_string()))?;
        if !meta.is_file() {
            return Err(refused("not a regular file".into()));
        }
        let mut head = Vec::with_capacity(64);
        (&mut file)
            .take(64)
            .read_to_end(&mut head)
            .map_err(|e| refused(e.to_string()))?;
        check_header(&head).map_err(|e| refused(e.into()))?;
        // load_preload reads the whole file from here.
        file.rewind().map_err(|e| refused(e.to_string()))?;
        let size = meta.len();
        let place = place(config, path, size)?;
        Ok(Preload { file, size, place })
    }
}

/// What the loader can run: a 64-bit little-endian x86-64 ELF executable
/// that is not position-independent (ET_EXEC). The loader checks the rest
/// (segments, no interpreter) in the guest, where it reads them anyway.
fn check_header(head: &[u8]) -> Result<(), &'static str> {
    const NOT_STATIC: &str = "not a static x86-64 executable (ELF, ET_EXEC, no interpreter)";
    let half = |at: usize| {
        head.get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let ok = head.len() >= 64
        && head.starts_with(b"\x7fELF")
        && head[4] == 2 // ELFCLASS64
        && head[5] == 1 // little-endian
        && half(16) == Some(2) // ET_EXEC
        && half(18) == Some(62); // EM_X86_64
    if ok {
        Ok(())
    } else {
        Err(NOT_STATIC)
    }
}

/// The kernel command-line word that tells the loader where the init
/// program is: init's environment gets it (no dot in the name, or the
/// kernel would take it for a module's parameter and keep it).
pub fn preload_param(place: RamRange, size: u64) -> String {
    format!("RUNVM_PRELOAD={:#x},{size:#x}", place.start)
}

/// Where `config`'s init program goes, from its size on disk (for a
/// command line printed without booting).
pub fn preload_place_of(config: &VmConfig) -> Result<Option<(RamRange, u64)>, Error> {
    let Some(path) = &config.init_program else {
        return Ok(None);
    };
    let size = std::fs::metadata(path)
        .map_err(|e| Error::InitProgram {
            path: path.clone(),
            reason: e.to_string(),
        })?
        .len();
    place(config, path, size).map(|place| Some((place, size)))
}

fn place(config: &VmConfig, path: &Path, size: u64) -> Result<RamRange, Error> {
    preload_placement(config.memory_bytes(), size).ok_or_else(|| Error::InitProgram {
        path: path.to_path_buf(),
        reason: format!(
            "{size} bytes do not fit a guest of {} MiB",
            config.memory_mib
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(class: u8, data: u8, e_type: u16, machine: u16) -> Vec<u8> {
        let mut h = vec![0u8; 64];
        h[..4].copy_from_slice(b"\x7fELF");
        h[4] = class;
        h[5] = data;
        h[16..18].copy_from_slice(&e_type.to_le_bytes());
        h[18..20].copy_from_slice(&machine.to_le_bytes());
        h
    }

    #[test]
    fn only_static_x86_64_executables_pass() {
        assert!(check_header(&header(2, 1, 2, 62)).is_ok());
        // A PIE or shared object, 32-bit, big-endian, another machine.
        assert!(check_header(&header(2, 1, 3, 62)).is_err());
        assert!(check_header(&header(1, 1, 2, 62)).is_err());
        assert!(check_header(&header(2, 2, 2, 62)).is_err());
        assert!(check_header(&header(2, 1, 2, 183)).is_err());
        assert!(check_header(b"#!/bin/sh\n").is_err());
        assert!(check_header(b"").is_err());
    }

    #[test]
    fn the_loader_is_told_where_and_how_much() {
        let place = RamRange {
            start: 0x7de_0000,
            size: 0x21_0000,
        };
        assert_eq!(
            preload_param(place, 0x20_cb38),
            "RUNVM_PRELOAD=0x7de0000,0x20cb38"
        );
    }
}
