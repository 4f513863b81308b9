//! Where runvm finds the parts of a microVM: the VMM, the guest kernel,
//! the guest image and virtiofsd. Each can be named by an environment
//! variable; otherwise they sit where `make install` puts them, relative
//! to this program (`<prefix>/bin/runvm` → `<prefix>/bin/runvm-vmm`,
//! `<prefix>/share/runvm/{vmlinux,runvm-agent}`), so podman and
//! containerd, which call runvm with their own environment, need no
//! configuration.

use std::path::{Path, PathBuf};

use crate::share;

#[derive(Clone, Debug)]
pub struct Assets {
    pub vmm: PathBuf,
    pub kernel: PathBuf,
    /// The guest image: see [`crate::vm::ImageKind`].
    pub image: PathBuf,
    pub virtiofsd: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum AssetError {
    #[error("{what} not found at {} (set {variable} to its path, or install runvm with `make install`)", path.display())]
    Missing {
        what: &'static str,
        variable: &'static str,
        path: PathBuf,
    },
    #[error("virtiofsd not found (set RUNVM_VIRTIOFSD, or install it: `cargo install virtiofsd`)")]
    NoVirtiofsd,
    #[error("cannot tell where runvm is installed: {0}")]
    SelfPath(std::io::Error),
}

/// `RUNVM_IMAGE`, or the older name `RUNVM_INITRD` when only that is set.
fn image_variable() -> &'static str {
    if std::env::var_os("RUNVM_IMAGE").is_none() && std::env::var_os("RUNVM_INITRD").is_some() {
        "RUNVM_INITRD"
    } else {
        "RUNVM_IMAGE"
    }
}

impl Assets {
    /// Finds every part, or says which one is missing and where it was
    /// looked for.
    pub fn locate() -> Result<Assets, AssetError> {
        let exe = std::env::current_exe().map_err(AssetError::SelfPath)?;
        let bin = exe.parent().unwrap_or(Path::new("/"));
        let data = bin.join("../share/runvm");
        let pick = |variable: &'static str, what: &'static str, default: PathBuf| {
            let path = std::env::var_os(variable).map_or(default, PathBuf::from);
            if path.is_file() {
                Ok(path)
            } else {
                Err(AssetError::Missing {
                    what,
                    variable,
                    path,
                })
            }
        };
        // The copy `make install` puts beside runvm's data comes first.
        let installed = bin.join("../libexec/runvm/virtiofsd");
        let virtiofsd = match std::env::var_os("RUNVM_VIRTIOFSD") {
            Some(path) => pick("RUNVM_VIRTIOFSD", "virtiofsd", PathBuf::from(path))?,
            None if installed.is_file() => installed,
            None => share::find_virtiofsd().ok_or(AssetError::NoVirtiofsd)?,
        };
        Ok(Assets {
            vmm: pick("RUNVM_VMM", "the VMM (runvm-vmm)", bin.join("runvm-vmm"))?,
            kernel: pick("RUNVM_KERNEL", "the guest kernel", data.join("vmlinux"))?,
            image: pick(
                image_variable(),
                "the guest image",
                data.join("runvm-agent"),
            )?,
            virtiofsd,
        })
    }
}
