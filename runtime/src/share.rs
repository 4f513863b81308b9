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

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use runvm_agent_api::validate_container_id;
pub use runvm_agent_api::{shared_rootfs, GUEST_SHARE_DIR, SHARE_TAG};

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

/// The virtiofsd to use: `RUNVM_VIRTIOFSD`, else the first of `PATH`,
/// cargo's bin directory (where `scripts/setup.sh` installs it) and
/// Debian's `/usr/libexec/virtiofsd`.
pub fn find_virtiofsd() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("RUNVM_VIRTIOFSD") {
        return Some(PathBuf::from(path));
    }
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join("virtiofsd"))
                .collect()
        })
        .unwrap_or_default();
    if let Some(cargo) = std::env::var_os("CARGO_HOME") {
        candidates.push(Path::new(&cargo).join("bin/virtiofsd"));
    }
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(Path::new(&home).join(".cargo/bin/virtiofsd"));
    }
    candidates.push("/usr/libexec/virtiofsd".into());
    candidates.into_iter().find(|path| path.is_file())
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
    /// when the VMM disconnects.
    pub fn start(
        virtiofsd: &Path,
        dir: &Path,
        socket: &Path,
        log: &Path,
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
        share.under = Some(open_dir(dir).map_err(io_error("cannot open the share", dir))?);
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

        let listener = UnixListener::bind(socket)
            .map_err(io_error("cannot listen on the virtio-fs socket", socket))?;
        let log_file =
            File::create(log).map_err(io_error("cannot create the virtiofsd log", log))?;
        let fd = listener.as_raw_fd();
        let mut command = Command::new(virtiofsd);
        command
            .arg(format!("--fd={fd}"))
            .arg("--shared-dir")
            .arg(dir)
            // Its own mount, pid and network namespaces with the share as
            // its root, plus its seccomp filter (kill on anything else).
            .arg("--sandbox=namespace")
            .arg("--seccomp=kill")
            // The guest caches data and attributes but revalidates on open
            // (close-to-open, like NFS): files the runtime changes on the
            // host (a container's /etc/hosts, say) are seen in the guest,
            // while a program that is run again is read from the guest's
            // page cache. `always` would serve stale files after host
            // changes; `never` rereads every exec over an expensive
            // channel (each request costs milliseconds of emulated guest
            // kernel on hosts without VT-x).
            .arg("--cache=auto")
            // Each rootfs bind is its own file system on the host: the
            // guest sees it as a submount, so inode numbers from two
            // file systems never meet in one guest mount.
            .arg("--announce-submounts")
            // Its default (1 000 000) is above the hard limit of many
            // hosts and only earns a warning there.
            .arg(format!("--rlimit-nofile={}", nofile_limit()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log_file));
        // SAFETY: setns, fcntl and prctl are async-signal-safe; nothing
        // else runs between fork and exec.
        unsafe {
            command.pre_exec(move || {
                // Into the share's namespace (the forked child has an
                // fs_struct of its own, as setns needs).
                if libc::setns(ns, libc::CLONE_NEWNS) != 0 {
                    return Err(io::Error::last_os_error());
                }
                // The listening socket is handed over at the same number.
                if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                    return Err(io::Error::last_os_error());
                }
                // virtiofsd must not outlive whoever started it (its own
                // sandbox child follows it the same way).
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().map_err(|source| ShareError::Spawn {
            path: virtiofsd.to_owned(),
            source,
        })?;
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
        let meta = fs::metadata(rootfs).map_err(io_error("cannot reach the rootfs", rootfs))?;
        if !meta.is_dir() {
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
        if let Err(e) = bind_detached(ns, rootfs, &target, readonly) {
            let _ = sys::rmdirat(under, &point);
            let _ = sys::rmdirat(under, id_dir);
            return Err(e);
        }
        self.rootfs.insert(id.to_owned());
        Ok(shared_rootfs(id))
    }

    /// Binds a host file or directory that container `id`'s config.json
    /// mounts (podman's /etc/hosts, a volume...) at `<id>/mounts/<n>`,
    /// read-only if `readonly`; returns where the guest sees it. The
    /// container's rootfs must be in the share already.
    pub fn add_bind(
        &mut self,
        id: &str,
        source: &Path,
        readonly: bool,
    ) -> Result<String, ShareError> {
        if !self.rootfs.contains(id) {
            return Err(ShareError::NotShared(id.to_owned()));
        }
        let meta =
            fs::metadata(source).map_err(io_error("cannot reach the mount source", source))?;
        let under = self.under.as_ref().expect("the share is set up");
        let mounts = Path::new(id).join("mounts");
        let bound = self.binds.get(id).map_or(0, Vec::len);
        if bound == 0 {
            sys::mkdirat(under, &mounts, 0o700)
                .map_err(io_error("cannot create", &self.dir.join(&mounts)))?;
        }
        let point = mounts.join(bound.to_string());
        let target = self.dir.join(&point);
        let made = if meta.is_dir() {
            sys::mkdirat(under, &point, 0o755)
        } else {
            sys::mknodat(under, &point, libc::S_IFREG | 0o644)
        };
        let undo = |under: &OwnedFd| {
            let _ = sys::unlinkat(under, &point, meta.is_dir());
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
            .and_then(|ns| bind_detached(ns, source, &target, readonly))
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

/// The hard limit on open files, capped at virtiofsd's own default.
fn nofile_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit(2) fills the struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return 0; // virtiofsd leaves the limit alone
    }
    limit.rlim_max.min(1_000_000)
}

/// The children of `pid` (from /proc/<pid>/task/<pid>/children).
fn children(pid: u32) -> Vec<u32> {
    fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// The last `bytes` of a file, lossily as text.
pub(crate) fn tail(path: &Path, bytes: u64) -> String {
    let Ok(mut file) = File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map_or(0, |m| m.len());
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(bytes)));
    let mut tail = Vec::new();
    let _ = file.read_to_end(&mut tail);
    String::from_utf8_lossy(&tail).into_owned()
}

fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    let c = sys::cstr(path)?;
    // SAFETY: open(2) with a C string; the descriptor is ours.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A new mount namespace, a copy of this thread's with every mount made a
/// slave (mounts made in it stay in it), held by the returned descriptor
/// only.
fn new_namespace() -> io::Result<OwnedFd> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: unshare(2) affects this thread only: CLONE_NEWNS
                // implies CLONE_FS, which gives the thread a root, cwd and
                // mount namespace of its own.
                if unsafe { libc::unshare(libc::CLONE_NEWNS) } != 0 {
                    return Err(io::Error::last_os_error());
                }
                sys::mount(None, Path::new("/"), libc::MS_SLAVE | libc::MS_REC)?;
                let c = c"/proc/thread-self/ns/mnt";
                // SAFETY: open(2) with a C string.
                let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
                if fd < 0 {
                    return Err(io::Error::last_os_error());
                }
                // SAFETY: a new descriptor that nothing else owns.
                Ok(unsafe { OwnedFd::from_raw_fd(fd) })
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the namespace thread panicked")))
    })
}

/// Runs `f` on a thread that has entered the mount namespace `ns`.
fn in_namespace<T: Send, E: Send + From<io::Error>>(
    ns: libc::c_int,
    f: impl FnOnce() -> Result<T, E> + Send,
) -> Result<T, E> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                // SAFETY: unshare(2) and setns(2) affect this thread only;
                // setns into a mount namespace needs an fs_struct that is
                // the thread's own.
                unsafe {
                    if libc::unshare(libc::CLONE_FS) != 0 {
                        return Err(io::Error::last_os_error().into());
                    }
                    if libc::setns(ns, libc::CLONE_NEWNS) != 0 {
                        return Err(io::Error::last_os_error().into());
                    }
                }
                f()
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the mount thread panicked").into()))
    })
}

/// Binds `source` (recursively) at `target` in the namespace `ns`, with
/// nosuid, nodev, private propagation and optionally read-only set before
/// it is attached. `source` is looked up here, `target` there.
fn bind_detached(
    ns: libc::c_int,
    source: &Path,
    target: &Path,
    readonly: bool,
) -> Result<(), ShareError> {
    let tree =
        sys::open_tree(source).map_err(io_error("cannot clone the mount tree of", source))?;
    let mut set = sys::MOUNT_ATTR_NOSUID | sys::MOUNT_ATTR_NODEV;
    if readonly {
        set |= sys::MOUNT_ATTR_RDONLY;
    }
    sys::mount_setattr(&tree, set, libc::MS_PRIVATE)
        .map_err(io_error("cannot set the mount flags of", source))?;
    in_namespace(ns, || sys::move_mount(&tree, target))
        .map_err(io_error("cannot attach the rootfs at", target))
}

/// umount(2), lazily (MNT_DETACH) when the mount is busy; a path that is
/// no mount point (anymore) is fine.
fn unmount(target: &Path) -> io::Result<()> {
    match sys::umount(target, 0) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => sys::umount(target, libc::MNT_DETACH),
        Err(e) => Err(e),
    }
}

/// Mount points at or below `dir` in this thread's mount namespace.
pub fn mounts_below(dir: &Path) -> Vec<PathBuf> {
    let Ok(mountinfo) = fs::read_to_string("/proc/thread-self/mountinfo") else {
        return Vec::new();
    };
    mounts_below_in(&mountinfo, dir)
}

/// Mount points at or below `dir` in a mountinfo text (paths that need
/// escaping in mountinfo are compared escaped: good enough for a safety
/// check).
pub fn mounts_below_in(mountinfo: &str, dir: &Path) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(PathBuf::from)
        .filter(|point| point.starts_with(dir))
        .collect()
}

/// Thin wrappers over the mount system calls.
mod sys {
    use super::*;

    pub const MOUNT_ATTR_RDONLY: u64 = 0x1;
    pub const MOUNT_ATTR_NOSUID: u64 = 0x2;
    pub const MOUNT_ATTR_NODEV: u64 = 0x4;
    const OPEN_TREE_CLONE: libc::c_uint = 1;
    const AT_RECURSIVE: libc::c_uint = 0x8000;
    const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;

    /// struct mount_attr (MOUNT_ATTR_SIZE_VER0).
    #[repr(C)]
    struct MountAttr {
        attr_set: u64,
        attr_clr: u64,
        propagation: u64,
        userns_fd: u64,
    }

    pub fn cstr(path: &Path) -> io::Result<CString> {
        CString::new(path.as_os_str().as_bytes())
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
    }

    fn check(result: libc::c_long) -> io::Result<libc::c_long> {
        if result < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(result)
        }
    }

    pub fn mount(source: Option<&Path>, target: &Path, flags: libc::c_ulong) -> io::Result<()> {
        let source = source.map(cstr).transpose()?;
        let target = cstr(target)?;
        // SAFETY: mount(2) with C strings (or NULL) and no data.
        check(unsafe {
            libc::mount(
                source.as_ref().map_or(std::ptr::null(), |s| s.as_ptr()),
                target.as_ptr(),
                std::ptr::null(),
                flags,
                std::ptr::null(),
            )
        } as libc::c_long)?;
        Ok(())
    }

    pub fn umount(target: &Path, flags: libc::c_int) -> io::Result<()> {
        let target = cstr(target)?;
        // SAFETY: umount2(2) with a C string.
        check(unsafe { libc::umount2(target.as_ptr(), flags) } as libc::c_long)?;
        Ok(())
    }

    pub fn mkdirat(dir: &OwnedFd, path: &Path, mode: libc::mode_t) -> io::Result<()> {
        let c = cstr(path)?;
        // SAFETY: mkdirat(2) relative to our descriptor.
        check(unsafe { libc::mkdirat(dir.as_raw_fd(), c.as_ptr(), mode) } as libc::c_long)?;
        Ok(())
    }

    /// An empty regular file (mode includes S_IFREG), which fails if
    /// anything is at `path` already.
    pub fn mknodat(dir: &OwnedFd, path: &Path, mode: libc::mode_t) -> io::Result<()> {
        let c = cstr(path)?;
        // SAFETY: mknodat(2) relative to our descriptor.
        check(unsafe { libc::mknodat(dir.as_raw_fd(), c.as_ptr(), mode, 0) } as libc::c_long)?;
        Ok(())
    }

    /// unlinkat(2): a file, or with `directory` an empty directory.
    pub fn unlinkat(dir: &OwnedFd, path: &Path, directory: bool) -> io::Result<()> {
        let c = cstr(path)?;
        let flags = if directory { libc::AT_REMOVEDIR } else { 0 };
        // SAFETY: unlinkat(2) relative to our descriptor.
        check(unsafe { libc::unlinkat(dir.as_raw_fd(), c.as_ptr(), flags) } as libc::c_long)?;
        Ok(())
    }

    pub fn rmdirat(dir: &OwnedFd, path: &Path) -> io::Result<()> {
        let c = cstr(path)?;
        // SAFETY: unlinkat(2) relative to our descriptor; it removes empty
        // directories only, and never one that is a mount point.
        check(
            unsafe { libc::unlinkat(dir.as_raw_fd(), c.as_ptr(), libc::AT_REMOVEDIR) }
                as libc::c_long,
        )?;
        Ok(())
    }

    /// A detached copy of the mount tree at `path`.
    pub fn open_tree(path: &Path) -> io::Result<OwnedFd> {
        let c = cstr(path)?;
        let flags = OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | AT_RECURSIVE;
        // SAFETY: open_tree(2) with a C string; it returns a new descriptor.
        let fd = check(unsafe {
            libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, c.as_ptr(), flags)
        })?;
        // SAFETY: a new descriptor that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) })
    }

    /// Sets `set` and the propagation on every mount of the tree `tree`.
    pub fn mount_setattr(tree: &OwnedFd, set: u64, propagation: u64) -> io::Result<()> {
        let attr = MountAttr {
            attr_set: set,
            attr_clr: 0,
            propagation,
            userns_fd: 0,
        };
        let flags = libc::AT_EMPTY_PATH as libc::c_uint | AT_RECURSIVE;
        // SAFETY: mount_setattr(2) reads `size` bytes of `attr`.
        check(unsafe {
            libc::syscall(
                libc::SYS_mount_setattr,
                tree.as_raw_fd(),
                c"".as_ptr(),
                flags,
                &attr as *const MountAttr,
                std::mem::size_of::<MountAttr>(),
            )
        })?;
        Ok(())
    }

    /// Attaches the detached tree `tree` at `target`.
    pub fn move_mount(tree: &OwnedFd, target: &Path) -> io::Result<()> {
        let c = cstr(target)?;
        // SAFETY: move_mount(2) from our descriptor to a C string path.
        check(unsafe {
            libc::syscall(
                libc::SYS_move_mount,
                tree.as_raw_fd(),
                c"".as_ptr(),
                libc::AT_FDCWD,
                c.as_ptr(),
                MOVE_MOUNT_F_EMPTY_PATH,
            )
        })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_root() -> bool {
        // SAFETY: geteuid(2) cannot fail.
        unsafe { libc::geteuid() == 0 }
    }

    #[test]
    fn ids_that_could_leave_the_share_are_refused_before_anything_is_mounted() {
        // No share is needed to refuse them: the check comes first.
        let mut share = Share {
            dir: PathBuf::from("/nonexistent/share"),
            namespace: None,
            under: None,
            bound: false,
            virtiofsd: None,
            exited: None,
            log: PathBuf::from("/nonexistent/log"),
            rootfs: BTreeSet::new(),
            binds: BTreeMap::new(),
        };
        for id in ["", ".", "..", "../x", "a/b", "/abs", "a\0b"] {
            assert!(
                matches!(
                    share.add_rootfs(id, Path::new("/"), true),
                    Err(ShareError::InvalidId(_))
                ),
                "{id:?}"
            );
        }
        assert!(matches!(
            share.remove_rootfs("c"),
            Err(ShareError::NotShared(_))
        ));
    }

    /// The mount plumbing without a VM: a share with a stand-in for
    /// virtiofsd, a read-only and a writable rootfs, their flags in the
    /// share's namespace, none of it in ours, and nothing left after.
    #[test]
    fn binds_are_made_flagged_and_undone() {
        if !is_root() {
            eprintln!("skipped: binding rootfs directories needs root");
            return;
        }
        let base = std::env::temp_dir().join(format!("runvm-share-unit-{}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        fs::create_dir_all(base.join("vm")).unwrap();
        let bundle = base.join("bundle");
        fs::create_dir_all(bundle.join("rootfs/etc")).unwrap();
        fs::write(bundle.join("rootfs/etc/hostname"), "x\n").unwrap();
        let vm = base.join("vm");
        // `sleep --fd=N ...` exits at once with a usage error: enough to
        // stand in for a virtiofsd that leaves.
        let mut share = Share::start(
            Path::new("/bin/sleep"),
            &vm.join("share"),
            &vm.join("fs.sock"),
            &vm.join("fs.log"),
        )
        .expect("start");
        let guest = share
            .add_rootfs("ro", &bundle.join("rootfs"), true)
            .expect("bind ro");
        assert_eq!(guest, "/run/runvm/share/ro/rootfs");
        share
            .add_rootfs("rw", &bundle.join("rootfs"), false)
            .expect("bind rw");
        assert!(matches!(
            share.add_rootfs("rw", &bundle.join("rootfs"), false),
            Err(ShareError::Exists(_))
        ));
        // Only in the share's namespace.
        assert!(mounts_below(&base).is_empty(), "{:?}", mounts_below(&base));
        assert!(!vm.join("share/ro/rootfs/etc").exists());
        let mountinfo = share.mountinfo().expect("mountinfo");
        let options = |point: &Path| -> String {
            let point = point.to_str().unwrap();
            mountinfo
                .lines()
                .find(|line| line.split(' ').nth(4) == Some(point))
                .and_then(|line| line.split(' ').nth(5))
                .unwrap_or_else(|| panic!("{point} is not mounted:\n{mountinfo}"))
                .to_owned()
        };
        let top = options(&vm.join("share"));
        assert!(top.starts_with("ro,nosuid,nodev,noexec"), "{top}");
        let ro = options(&vm.join("share/ro/rootfs"));
        assert!(ro.starts_with("ro,nosuid,nodev"), "{ro}");
        let rw = options(&vm.join("share/rw/rootfs"));
        assert!(rw.starts_with("rw,nosuid,nodev"), "{rw}");
        let ns = share.ns().unwrap();
        let seen = in_namespace(ns, || -> io::Result<_> {
            Ok((
                fs::read_to_string(vm.join("share/ro/rootfs/etc/hostname"))?,
                // Nothing can be made at the top, even by root.
                fs::create_dir(vm.join("share/planted")).is_err(),
                fs::write(vm.join("share/ro/rootfs/new"), "").is_err(),
                fs::write(vm.join("share/rw/rootfs/new"), "").is_ok(),
            ))
        })
        .unwrap();
        assert_eq!(seen, ("x\n".to_owned(), true, true, true));
        assert!(bundle.join("rootfs/new").exists());

        share.remove_rootfs("rw").expect("unbind rw");
        assert!(!vm.join("share/rw").exists());
        assert!(!share.mountinfo().unwrap().contains("/share/rw/rootfs"));
        share.stop(Duration::from_secs(1)).expect("stop");
        assert!(!vm.join("share").exists());
        assert!(
            bundle.join("rootfs/etc/hostname").exists(),
            "the bundle is untouched"
        );
        fs::remove_dir_all(&base).unwrap();
    }
}
