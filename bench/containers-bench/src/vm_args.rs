//! The VM a benchmark boots, as its command line gives it (shared by the
//! benchmark binaries with `#[path]`).

use std::path::PathBuf;

use runvm::share;
use runvm::vm::VmSpec;

#[derive(clap::Args, Debug)]
pub struct VmArgs {
    /// runvm-vmm binary.
    #[arg(long)]
    pub vmm: PathBuf,
    /// Guest kernel (vmlinux).
    #[arg(long)]
    pub kernel: PathBuf,
    /// Guest image: an init program (build/runvm-agent), an ext4 root disk
    /// or a cpio initramfs.
    #[arg(long, alias = "initrd")]
    pub image: PathBuf,
    /// virtiofsd (default: the runtime's own search, as `runvm` does).
    #[arg(long)]
    pub virtiofsd: Option<PathBuf>,
    #[arg(long, default_value_t = 128)]
    pub memory_mib: u32,
    #[arg(long, default_value_t = 1)]
    pub vcpus: u8,
}

impl VmArgs {
    /// virtiofsd as given, or found where runvm looks for it.
    pub fn find_virtiofsd(&self) -> Result<PathBuf, String> {
        match &self.virtiofsd {
            Some(path) => Ok(path.clone()),
            None => share::find_virtiofsd().ok_or_else(|| {
                "virtiofsd not found (RUNVM_VIRTIOFSD, PATH, ~/.cargo/bin, /usr/libexec): \
                 `make setup` installs it"
                    .to_string()
            }),
        }
    }

    /// The VM to boot, with a share served by `virtiofsd` if given.
    pub fn spec(&self, virtiofsd: Option<PathBuf>) -> VmSpec {
        VmSpec {
            vmm: self.vmm.clone(),
            kernel: self.kernel.clone(),
            image: self.image.clone(),
            memory_mib: self.memory_mib,
            vcpus: self.vcpus,
            virtiofsd,
        }
    }
}
