//! The per-VM shared directory: `<vm dir>/share`, exported to the guest as
//! the virtio-fs tag [`SHARE_TAG`] by one virtiofsd that lives exactly as
//! long as the VM, with each container's root filesystem bound at
//! `<share>/<container id>/rootfs` (the guest sees it at
//! [`shared_rootfs`]).
//!
//! How the pieces fit:
//! - Every mount of the share lives in a mount namespace of its own (a
//!   copy of the runtime's, made a slave so nothing flows back), held by
//!   a descriptor and by virtiofsd, which starts in it. The host's mount
//!   table never shows them, and once the runtime and virtiofsd are gone
//!   (even SIGKILLed) the kernel drops the namespace with every mount in
//!   it: nothing is left to unmount after a crash. Mount calls are made
//!   from a short-lived thread that enters the namespace (a thread may,
//!   after unshare(CLONE_FS)); [`Share::mountinfo`] shows what is there.
//! - In that namespace the share directory is bound onto itself,
//!   read-only, nosuid, nodev and noexec, and made a shared mount (its own
//!   peer group) before virtiofsd starts. virtiofsd's sandbox
//!   (`--sandbox=namespace`) gets a slave copy of it in its own mount
//!   namespace, so rootfs binds made later propagate to it, and so do
//!   their unmounts.
//! - Read-only at the top means the guest cannot create, rename or remove
//!   anything at `<share>` or `<share>/<id>`: a guest (whose kernel we do
//!   not trust) cannot plant a symlink where the runtime is about to
//!   mount. The runtime makes those directories through a descriptor of
//!   the directory itself, outside the bind.
//! - A rootfs is bound as a detached tree (open_tree), given its flags
//!   (mount_setattr: nosuid, nodev, and read-only when the spec says
//!   `root.readonly`) and only then attached (move_mount): mount flags do
//!   not propagate, so flags set after attaching would miss virtiofsd's
//!   copy, which is the one that serves the guest.
//! - virtiofsd gets the vhost-user socket as an already listening
//!   descriptor (`--fd`): the socket exists before the VMM starts (no
//!   polling for it), and virtiofsd writes no pid file next to it.
//!
//! Read-only roots are enforced on both sides: the guest's agent remounts
//! the container's root read-only, which is what the container sees; the
//! host's read-only bind keeps a guest whose kernel has been subverted
//! from writing to the image all the same. nosuid and nodev on the host
//! side keep virtiofsd, which acts for the guest as root, from opening a
//! host device node planted in (or shipped with) an image.

mod namespace;
mod source;
pub(crate) mod sys;
mod virtiofsd;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

use runvm_agent_api::validate_container_id;
pub use runvm_agent_api::{shared_rootfs, GUEST_SHARE_DIR, SHARE_TAG};

use namespace::{in_namespace, new_namespace, unmount};
pub use namespace::{mounts_below, mounts_below_in};
use source::bind_detached;
pub use source::{BindFlags, MountSource};
use virtiofsd::children;
pub use virtiofsd::find_virtiofsd;
pub(crate) use virtiofsd::tail;

/// How much of virtiofsd's log an error quotes.
const LOG_TAIL_BYTES: u64 = 2048;
/// virtiofsd leaves by itself once the VMM has gone (its vhost-user
/// connection closes); after this long it is killed.
pub const VIRTIOFSD_EXIT_GRACE: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("cannot start virtiofsd {}: {source}", path.display())]
    Spawn { path: PathBuf, source: io::Error },
    #[error("{0}")]
    InvalidId(String),
    #[error("the rootfs {} is not a directory", .0.display())]
    NotADirectory(PathBuf),
    #[error("container {0:?} has a rootfs in the share already")]
    Exists(String),
    #[error("container {0:?} has no rootfs in the share")]
    NotShared(String),
    #[error("cannot enter the share's mount namespace: {0}")]
    Namespace(#[from] io::Error),
}

fn io_error(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ShareError {
    let path = path.to_owned();
    move |source| ShareError::Io { what, path, source }
}

/// The share of one VM and the virtiofsd that serves it. Dropping it (or
/// [`Share::stop`]) kills virtiofsd, unbinds every rootfs, unmounts the
/// share and removes its directory.
pub struct Share {
    dir: PathBuf,
    /// The mount namespace that holds the share's mounts.
    namespace: Option<OwnedFd>,
    /// The share directory as it is under the bind: writable, for making
    /// and removing the per-container directories.
    under: Option<OwnedFd>,
    /// The share directory is bound onto itself.
    bound: bool,
    virtiofsd: Option<Child>,
    exited: Option<ExitStatus>,
    log: PathBuf,
    /// Containers whose rootfs is bound in the share.
    rootfs: BTreeSet<String>,
    /// Per container, the host files and directories its bind mounts
    /// take (`<id>/mounts/<n>`), in the order they were bound.
    binds: BTreeMap<String, Vec<PathBuf>>,
}

impl Share {
    /// Makes `dir` (which must not exist; its parent should be private to
    /// root) the share and starts `virtiofsd` for it, listening on
    /// `socket`, logging to `log`. virtiofsd is killed when this thread
    /// ends (PR_SET_PDEATHSIG), so is the VMM, and it leaves by itself
    /// when the VMM disconnects. With `cgroup`, virtiofsd is spawned into
    /// that host cgroup.
    pub fn start(
        virtiofsd: &Path,
        dir: &Path,
        socket: &Path,
        log: &Path,
        cgroup: Option<&crate::host_cgroup::Entry>,
    ) -> Result<Share, ShareError> {
        fs::DirBuilder::new()
            .mode(0o700)
            .create(dir)
            .map_err(io_error("cannot create the share", dir))?;
        let mut share = Share {
            dir: dir.to_owned(),
            namespace: None,
            under: None,
            bound: false,
            virtiofsd: None,
            exited: None,
            log: log.to_owned(),
            rootfs: BTreeSet::new(),
            binds: BTreeMap::new(),
        };
        share.under = Some(sys::open_dir(dir).map_err(io_error("cannot open the share", dir))?);
        let namespace =
            new_namespace().map_err(io_error("cannot make a mount namespace for", dir))?;
        let ns = namespace.as_raw_fd();
        share.namespace = Some(namespace);
        in_namespace(ns, || {
            sys::mount(Some(dir), dir, libc::MS_BIND)
                .map_err(io_error("cannot bind the share onto itself", dir))?;
            let flags = libc::MS_BIND
                | libc::MS_REMOUNT
                | libc::MS_RDONLY
                | libc::MS_NOSUID
                | libc::MS_NODEV
                | libc::MS_NOEXEC;
            sys::mount(None, dir, flags)
                .map_err(io_error("cannot make the share read-only", dir))?;
            // A peer group of its own, which virtiofsd's namespace follows.
            sys::mount(None, dir, libc::MS_SHARED)
                .map_err(io_error("cannot make the share a shared mount", dir))
        })?;
        share.bound = true;

        let listener = crate::unix_socket::bind(socket)
            .map_err(io_error("cannot listen on the virtio-fs socket", socket))?;
        let log_file =
            File::create(log).map_err(io_error("cannot create the virtiofsd log", log))?;
        let child = virtiofsd::spawn(virtiofsd, dir, &listener, log_file, ns, cgroup)?;
        share.virtiofsd = Some(child);
        // Only virtiofsd holds the listener now: should it die, the VMM's
        // connect fails at once instead of waiting.
        drop(listener);
        Ok(share)
    }

    /// The host directory exported to the guest.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// /proc/self/mountinfo as seen in the share's mount namespace.
    pub fn mountinfo(&self) -> io::Result<String> {
        let ns = self
            .namespace
            .as_ref()
            .ok_or_else(|| io::Error::other("the share is stopped"))?;
        in_namespace(ns.as_raw_fd(), || {
            fs::read_to_string("/proc/thread-self/mountinfo")
        })
    }

    /// virtiofsd's pid and the pids of its children (the sandboxed
    /// process that serves the guest), while it runs.
    pub fn virtiofsd_pids(&self) -> Vec<u32> {
        match (&self.virtiofsd, self.exited) {
            (Some(child), None) => {
                let mut pids = vec![child.id()];
                pids.extend(children(child.id()));
                pids
            }
            _ => Vec::new(),
        }
    }

    /// virtiofsd's exit status once it has exited (reaping it).
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        if self.exited.is_none() {
            if let Some(child) = self.virtiofsd.as_mut() {
                self.exited = child.try_wait()?;
            }
        }
        Ok(self.exited)
    }

    /// Waits up to `patience` for virtiofsd to exit by itself (it does
    /// when its connection or its serving process is gone).
    pub fn wait_exit(&mut self, patience: Duration) -> io::Result<Option<ExitStatus>> {
        let deadline = Instant::now() + patience;
        loop {
            if self.virtiofsd.is_none() || self.try_wait()?.is_some() || Instant::now() >= deadline
            {
                return Ok(self.exited);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The last lines virtiofsd logged.
    pub fn log_tail(&self) -> String {
        tail(&self.log, LOG_TAIL_BYTES)
    }

    /// How virtiofsd is doing, for an error message: its status if it
    /// ended, and the end of its log.
    pub fn report(&mut self) -> String {
        let state = match self.try_wait() {
            Ok(Some(status)) => format!("virtiofsd exited ({status})"),
            Ok(None) => "virtiofsd is running".to_owned(),
            Err(e) => format!("virtiofsd cannot be waited for ({e})"),
        };
        let log = self.log_tail();
        if log.trim().is_empty() {
            state
        } else {
            format!("{state}; its log ended with:\n{}", log.trim_end())
        }
    }

    /// Binds the bundle's root filesystem `rootfs` (a host directory) at
    /// `<share>/<id>/rootfs`, read-only if `readonly`; returns where the
    /// guest sees it.
    pub fn add_rootfs(
        &mut self,
        id: &str,
        rootfs: &Path,
        readonly: bool,
    ) -> Result<String, ShareError> {
        validate_container_id(id).map_err(ShareError::InvalidId)?;
        if self.rootfs.contains(id) {
            return Err(ShareError::Exists(id.to_owned()));
        }
        // Opened once: the directory checked is the one bound.
        let source =
            MountSource::open(rootfs).map_err(io_error("cannot reach the rootfs", rootfs))?;
        if !source.is_dir() {
            return Err(ShareError::NotADirectory(rootfs.to_owned()));
        }
        let under = self.under.as_ref().expect("the share is set up");
        let id_dir = Path::new(id);
        let point = id_dir.join("rootfs");
        let target = self.dir.join(&point);
        sys::mkdirat(under, id_dir, 0o700).map_err(io_error("cannot create", &target))?;
        if let Err(e) = sys::mkdirat(under, &point, 0o755) {
            let _ = sys::rmdirat(under, id_dir);
            return Err(io_error("cannot create", &target)(e));
        }
        let ns = self.ns()?;
        let flags = BindFlags {
            readonly,
            recursive: true,
        };
        if let Err(e) = bind_detached(ns, &source, &self.dir, &point, flags) {
            let _ = sys::rmdirat(under, &point);
            let _ = sys::rmdirat(under, id_dir);
            return Err(e);
        }
        self.rootfs.insert(id.to_owned());
        Ok(shared_rootfs(id))
    }

    /// Binds a host file or directory that container `id`'s config.json
    /// mounts (podman's /etc/hosts, a volume...), opened already, at
    /// `<id>/mounts/<n>` with `flags`; returns where the guest sees it.
    /// The container's rootfs must be in the share already.
    pub fn add_bind(
        &mut self,
        id: &str,
        source: &MountSource,
        flags: BindFlags,
    ) -> Result<String, ShareError> {
        if !self.rootfs.contains(id) {
            return Err(ShareError::NotShared(id.to_owned()));
        }
        let is_dir = source.is_dir();
        let under = self.under.as_ref().expect("the share is set up");
        let mounts = Path::new(id).join("mounts");
        let bound = self.binds.get(id).map_or(0, Vec::len);
        if bound == 0 {
            sys::mkdirat(under, &mounts, 0o700)
                .map_err(io_error("cannot create", &self.dir.join(&mounts)))?;
        }
        let point = mounts.join(bound.to_string());
        let target = self.dir.join(&point);
        let made = if is_dir {
            sys::mkdirat(under, &point, 0o755)
        } else {
            sys::mknodat(under, &point, libc::S_IFREG | 0o644)
        };
        let undo = |under: &OwnedFd| {
            let _ = sys::unlinkat(under, &point, is_dir);
            if bound == 0 {
                let _ = sys::rmdirat(under, &mounts);
            }
        };
        if let Err(e) = made {
            undo(under);
            return Err(io_error("cannot create", &target)(e));
        }
        if let Err(e) = self
            .ns()
            .and_then(|ns| bind_detached(ns, source, &self.dir, &point, flags))
        {
            undo(under);
            return Err(e);
        }
        self.binds
            .entry(id.to_owned())
            .or_default()
            .push(point.clone());
        Ok(format!("{GUEST_SHARE_DIR}/{}", point.display()))
    }

    /// Unbinds container `id`'s rootfs and bind mounts (lazily when
    /// something still uses them: the guest may not have let go of its
    /// inodes yet) and removes its directories.
    pub fn remove_rootfs(&mut self, id: &str) -> Result<(), ShareError> {
        if !self.rootfs.contains(id) {
            return Err(ShareError::NotShared(id.to_owned()));
        }
        let ns = self.ns()?;
        let under = self.under.as_ref().expect("the share is set up");
        if let Some(binds) = self.binds.remove(id) {
            for point in binds.iter().rev() {
                let target = self.dir.join(point);
                in_namespace(ns, || unmount(&target))
                    .map_err(io_error("cannot unmount", &target))?;
                // A file or a directory: one of the two removals applies.
                let _ = sys::unlinkat(under, point, false)
                    .or_else(|_| sys::unlinkat(under, point, true));
            }
            let mounts = Path::new(id).join("mounts");
            sys::rmdirat(under, &mounts)
                .map_err(io_error("cannot remove", &self.dir.join(&mounts)))?;
        }
        let point = Path::new(id).join("rootfs");
        let target = self.dir.join(&point);
        in_namespace(ns, || unmount(&target)).map_err(io_error("cannot unmount", &target))?;
        self.rootfs.remove(id);
        sys::rmdirat(under, &point).map_err(io_error("cannot remove", &target))?;
        sys::rmdirat(under, Path::new(id))
            .map_err(io_error("cannot remove", &self.dir.join(id)))?;
        Ok(())
    }

    fn ns(&self) -> Result<libc::c_int, ShareError> {
        match &self.namespace {
            Some(ns) => Ok(ns.as_raw_fd()),
            None => Err(io_error("the share is stopped:", &self.dir)(
                io::Error::from_raw_os_error(libc::ESRCH),
            )),
        }
    }

    /// Containers whose rootfs is in the share.
    pub fn rootfs_ids(&self) -> impl Iterator<Item = &str> {
        self.rootfs.iter().map(String::as_str)
    }

    /// Ends virtiofsd (waiting `grace` for it to leave by itself, as it
    /// does once the VMM is gone), unbinds every rootfs, unmounts the
    /// share and removes its directory. Safe to call more than once; the
    /// first error is returned after everything has been tried.
    pub fn stop(&mut self, grace: Duration) -> Result<(), ShareError> {
        let mut first_error = None;
        let mut note = |result: Result<(), ShareError>| {
            if let Err(e) = result {
                first_error.get_or_insert(e);
            }
        };
        note(
            self.stop_virtiofsd(grace)
                .map_err(io_error("cannot stop virtiofsd", &self.log)),
        );
        let ids: Vec<String> = self.rootfs.iter().cloned().collect();
        for id in ids {
            note(self.remove_rootfs(&id));
        }
        if let (true, Ok(ns)) = (self.bound, self.ns()) {
            match in_namespace(ns, || unmount(&self.dir)) {
                Ok(()) => self.bound = false,
                Err(e) => note(Err(io_error("cannot unmount the share", &self.dir)(e))),
            }
        }
        // Whatever could not be unmounted goes with the namespace, now
        // that virtiofsd, its only process, is gone.
        self.namespace = None;
        self.bound = false;
        // Left are empty directories (seen from here, where the binds
        // never were); removing a directory never enters a mount.
        if let Some(under) = self.under.take() {
            for (id, binds) in std::mem::take(&mut self.binds) {
                for point in binds {
                    let _ = sys::unlinkat(&under, &point, false)
                        .or_else(|_| sys::unlinkat(&under, &point, true));
                }
                let _ = sys::rmdirat(&under, &Path::new(&id).join("mounts"));
            }
            for id in std::mem::take(&mut self.rootfs) {
                let _ = sys::rmdirat(&under, &Path::new(&id).join("rootfs"));
                let _ = sys::rmdirat(&under, Path::new(&id));
            }
        }
        match fs::remove_dir(&self.dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => note(Err(io_error("cannot remove the share", &self.dir)(e))),
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn stop_virtiofsd(&mut self, grace: Duration) -> io::Result<()> {
        if self.wait_exit(grace)?.is_some() {
            return Ok(());
        }
        let Some(child) = self.virtiofsd.as_mut() else {
            return Ok(());
        };
        // The sandboxed child first (it would get SIGKILL through its
        // parent-death signal anyway, but only after its parent is gone),
        // then virtiofsd itself, which reaps it before we reap virtiofsd.
        for pid in children(child.id()) {
            // SAFETY: kill(2). The pid is a child of our unreaped child,
            // which reaps it only after it has ended.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
        let _ = child.kill();
        self.exited = Some(child.wait()?);
        Ok(())
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        if let Err(e) = self.stop(VIRTIOFSD_EXIT_GRACE) {
            eprintln!("runvm: cleaning up the share: {e}");
        }
    }
}

#[cfg(test)]
mod tests;
