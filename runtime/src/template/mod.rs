//! VM templates: a VM saved at its agent's ready point, before any
//! container, that later VMs of the same inputs are restored from instead
//! of booting (`runvm-vmm --snapshot-to` / `--restore`, see the VMM's
//! `snapshot` module). On a host whose KVM emulates the guest kernel a
//! restore takes a fraction of a second against many seconds of boot, and
//! every VM restored from one template shares its memory pages until it
//! writes them.
//!
//! **Where.** One directory per template under [`store_dir`]
//! (`/run/runvm/templates`, or `$RUNVM_TEMPLATE_DIR`), named by the hash
//! of its inputs ([`TemplateKey`]): the VMM, kernel and image files (by
//! content: size and CRC-32), memory, vCPUs, the kernel command
//! line added and whether the VM has a share. A change to any input
//! gives a new name, so a stale template is never used; `runvm template
//! rm` removes them. The store is machine-wide rather than under
//! `--root`: what a template holds depends only on those inputs, and no
//! tenant code has run in it.
//!
//! **Making one.** The first VM that finds no template for its inputs
//! boots cold with `--snapshot-to`, its share's virtio-fs device pending
//! (no backend yet) and its network cards pending (no tap yet, each with
//! a placeholder MAC: [`placeholder_mac`]); at the agent's ready point the runtime has
//! the VMM save the VM, publishes the directory by renaming it, and
//! restores the VM it was booting from it, now with the share's
//! virtiofsd and its taps. So the first VM pays a save and a restore, not a second
//! boot. A lock per template makes concurrent first VMs boot cold
//! instead of waiting.
//!
//! **Restoring.** Each restored VM gets a new vsock CID and socket, its
//! own virtiofsd and taps, and — before anything runs in it — host
//! entropy, the host's time and its cards' own MACs (`Reseed`), so no two
//! VMs of one template share random output, a stale clock or a MAC. The
//! number of cards is part of a template's inputs (a pod with one
//! interface and a VM without any have templates of their own); their
//! MTUs and addresses are not: the pod's network is configured after. A restore that fails (a damaged or refused
//! snapshot) is logged with its reason, the template is removed and the VM
//! boots cold.
//!
//! **Off switch.** `RUNVM_COLD_BOOT=1` in runvm's environment boots every
//! VM cold (the benchmarks use it to measure cold starts).

use std::collections::hash_map::DefaultHasher;
use std::fs::{self, File};
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Bumped when what a template holds changes meaning (state layout,
/// what is done before the ready point).
const TEMPLATE_FORMAT: u32 = 1;
/// The default store.
const DEFAULT_STORE: &str = "/run/runvm/templates";
/// Written last into a complete template, with its inputs; its
/// modification time is the template's last use.
const INPUTS_FILE: &str = "inputs.txt";
/// Templates kept; publishing one more removes the least recently used
/// (the store is usually on tmpfs: each holds the guest memory the VM had
/// touched at its ready point, tens of MiB).
pub const MAX_TEMPLATES: usize = 6;

/// Where templates live: `$RUNVM_TEMPLATE_DIR` or `/run/runvm/templates`.
pub fn store_dir() -> PathBuf {
    match std::env::var_os("RUNVM_TEMPLATE_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => PathBuf::from(DEFAULT_STORE),
    }
}

/// Whether VMs may come from templates: not with `RUNVM_COLD_BOOT` set
/// (to anything but `0` or empty).
pub fn enabled() -> bool {
    !matches!(std::env::var("RUNVM_COLD_BOOT"), Ok(v) if !v.is_empty() && v != "0")
}

/// A file's size and CRC-32, read in full: installs copy the VMM, kernel
/// and image to new paths (a test's prefix, a package upgrade), and the
/// same bytes must find the same template. A few milliseconds for the
/// tens of MiB involved, from the page cache.
fn content_digest(path: &Path, what: &str) -> Result<String, String> {
    use std::io::Read;
    let fail = |e: std::io::Error| format!("cannot read the {what} {}: {e}", path.display());
    let mut file = File::open(path).map_err(fail)?;
    let mut crc = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(fail)?;
        if n == 0 {
            break;
        }
        crc.update(&buf[..n]);
        size += n as u64;
    }
    Ok(format!("size {size} crc32 {:08x}", crc.finalize()))
}

/// What a VM is made of, as far as its state at the ready point goes.
pub struct TemplateInputs<'a> {
    pub vmm: &'a Path,
    pub kernel: &'a Path,
    pub image: &'a Path,
    pub memory_mib: u32,
    pub vcpus: u8,
    /// Words added to the kernel command line.
    pub cmdline: &'a [String],
    /// The share's virtio-fs tag, if the VM has one.
    pub share_tag: Option<&'a str>,
    /// How many network cards it has (a template's have no tap yet).
    pub net_cards: usize,
}

/// The MAC a template's network card `index` has until the VM restored
/// from it gives the card its own: locally administered, unicast.
pub fn placeholder_mac(index: usize) -> [u8; 6] {
    // "rvm": runvm's, easy to tell in a guest's `ip link`.
    [0x02, 0x72, 0x76, 0x6d, 0x00, (index as u8).wrapping_add(1)]
}

/// A template's name: a hash of its inputs, with the text they were
/// hashed from (kept in the template for `runvm template list`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TemplateKey {
    pub name: String,
    pub described: String,
}

impl TemplateKey {
    pub fn of(inputs: &TemplateInputs) -> Result<TemplateKey, String> {
        let mut described = format!("format {TEMPLATE_FORMAT}\n");
        for (what, path) in [
            ("vmm", inputs.vmm),
            ("kernel", inputs.kernel),
            ("image", inputs.image),
        ] {
            described.push_str(&format!("{what} {}\n", content_digest(path, what)?));
        }
        described.push_str(&format!(
            "memory {} MiB\nvcpus {}\ncmdline {:?}\nshare {:?}\nnetwork cards {}\n",
            inputs.memory_mib, inputs.vcpus, inputs.cmdline, inputs.share_tag, inputs.net_cards
        ));
        // Two independent 64-bit hashes: a name, not a security boundary
        // (only root writes the store).
        let mut first = DefaultHasher::new();
        described.hash(&mut first);
        let mut second = DefaultHasher::new();
        (described.len(), &described, TEMPLATE_FORMAT).hash(&mut second);
        Ok(TemplateKey {
            name: format!("{:016x}{:016x}", first.finish(), second.finish()),
            described,
        })
    }
}

/// What a VM about to boot should do.
pub enum Plan {
    /// Restore from this complete template directory.
    Restore(PathBuf),
    /// Boot cold and save the VM at the ready point: see [`Maker`].
    Make(Maker),
    /// Boot cold; the reason is for the log (empty when templates are off
    /// or do not apply).
    Cold(String),
}

/// Decides for a VM of `inputs`, looking at the store.
pub fn plan(inputs: &TemplateInputs) -> Plan {
    if !enabled() {
        return Plan::Cold(String::new());
    }
    plan_in(&store_dir(), inputs)
}

fn plan_in(store: &Path, inputs: &TemplateInputs) -> Plan {
    let key = match TemplateKey::of(inputs) {
        Ok(key) => key,
        Err(reason) => return Plan::Cold(reason),
    };
    let dir = store.join(&key.name);
    if is_complete(&dir) {
        mark_used(&dir);
        return Plan::Restore(dir);
    }
    match Maker::lock(store, &key) {
        Ok(Some(maker)) => {
            // Made by another VM while we took the lock.
            if is_complete(&dir) {
                Plan::Restore(dir)
            } else {
                Plan::Make(maker)
            }
        }
        Ok(None) => Plan::Cold("another VM is making the template".into()),
        Err(reason) => Plan::Cold(reason),
    }
}

fn is_complete(dir: &Path) -> bool {
    dir.join(INPUTS_FILE).is_file()
}

/// The right to make one template: its lock, held until [`Self::publish`]
/// or drop, and the directory the VMM saves into.
pub struct Maker {
    _lock: File,
    lock_path: PathBuf,
    key: TemplateKey,
    store: PathBuf,
    /// `<store>/.<name>.<pid>`, renamed to `<store>/<name>` when complete.
    partial: PathBuf,
    published: bool,
}

impl Maker {
    /// Takes the template's lock without waiting: `None` if another
    /// process holds it.
    fn lock(store: &Path, key: &TemplateKey) -> Result<Option<Maker>, String> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(store)
            .map_err(|e| format!("cannot create the template store {}: {e}", store.display()))?;
        let lock_path = lock_path(store, &key.name);
        let Some(lock) = take_lock(&lock_path)? else {
            return Ok(None);
        };
        // Partial saves of makers that died (kill -9) go: the lock says
        // no one else is making this template.
        let prefix = format!(".{}.", key.name);
        for entry in fs::read_dir(store).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(&prefix) && !name.ends_with(".lock") {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
        let partial = store.join(format!("{prefix}{}", std::process::id()));
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&partial)
            .map_err(|e| format!("cannot create {}: {e}", partial.display()))?;
        Ok(Some(Maker {
            _lock: lock,
            lock_path,
            key: key.clone(),
            store: store.to_owned(),
            partial,
            published: false,
        }))
    }

    /// Where the VMM saves the VM (`--snapshot-to`).
    pub fn snapshot_dir(&self) -> &Path {
        &self.partial
    }

    /// Makes the saved VM, with a copy of its console so far, the
    /// template; returns its directory.
    pub fn publish(mut self, console_log: &Path) -> Result<PathBuf, String> {
        let _ = fs::copy(console_log, self.partial.join(CONSOLE_FILE));
        let mut inputs = File::create(self.partial.join(INPUTS_FILE))
            .map_err(|e| format!("cannot write the template's inputs: {e}"))?;
        inputs
            .write_all(self.key.described.as_bytes())
            .and_then(|()| inputs.sync_all())
            .map_err(|e| format!("cannot write the template's inputs: {e}"))?;
        let dir = self.store.join(&self.key.name);
        let _ = fs::remove_dir_all(&dir);
        fs::rename(&self.partial, &dir)
            .map_err(|e| format!("cannot publish the template {}: {e}", dir.display()))?;
        self.published = true;
        evict_beyond(&self.store, MAX_TEMPLATES);
        Ok(dir)
    }
}

impl Drop for Maker {
    fn drop(&mut self) {
        if !self.published {
            let _ = fs::remove_dir_all(&self.partial);
        }
        // Still held (the file closes after this): see `take_lock`.
        let _ = fs::remove_file(&self.lock_path);
    }
}

fn lock_path(store: &Path, name: &str) -> PathBuf {
    store.join(format!(".{name}.lock"))
}

/// The lock file at `path`, locked without waiting: `None` if another
/// process holds it. Its holder removes the file before it lets go (no
/// lock files pile up in the store), so a lock taken on a file that is no
/// longer the one at `path` is worth nothing: `None` as well.
fn take_lock(path: &Path) -> Result<Option<File>, String> {
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    lock_if_current(lock, path)
}

/// `lock` (opened at `path`) locked, if it is still the file at `path`.
fn lock_if_current(lock: File, path: &Path) -> Result<Option<File>, String> {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Ok(None);
    }
    let held = lock
        .metadata()
        .map_err(|e| format!("cannot stat {}: {e}", path.display()))?;
    match fs::metadata(path) {
        Ok(now) if (now.dev(), now.ino()) == (held.dev(), held.ino()) => Ok(Some(lock)),
        _ => Ok(None),
    }
}

/// Removes the lock file of template `name` left by a maker that died,
/// unless someone holds it.
fn remove_stale_lock(store: &Path, name: &str) {
    let path = lock_path(store, name);
    if path.exists() {
        if let Ok(Some(_held)) = take_lock(&path) {
            let _ = fs::remove_file(&path);
        }
    }
}

/// The template's copy of the console up to the ready point: a restored
/// VM's console log starts with it, as a cold VM's would.
pub const CONSOLE_FILE: &str = "console.log";

/// A template in the store, for listing.
#[derive(Debug)]
pub struct TemplateInfo {
    pub name: String,
    pub dir: PathBuf,
    /// Bytes on disk (memory file, state, console).
    pub bytes: u64,
    pub inputs: String,
}

/// Every complete template in `store`.
pub fn list(store: &Path) -> Result<Vec<TemplateInfo>, String> {
    let entries = match fs::read_dir(store) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("cannot read {}: {e}", store.display())),
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let dir = entry.path();
        if name.starts_with('.') || !is_complete(&dir) {
            continue;
        }
        let bytes = fs::read_dir(&dir)
            .map(|files| {
                files
                    .flatten()
                    .filter_map(|f| f.metadata().ok())
                    .map(|m| m.blocks() * 512)
                    .sum()
            })
            .unwrap_or(0);
        let inputs = fs::read_to_string(dir.join(INPUTS_FILE)).unwrap_or_default();
        found.push(TemplateInfo {
            name,
            dir,
            bytes,
            inputs,
        });
    }
    found.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(found)
}

/// Removes the template `name` from `store` (an error names it if there is
/// none). A VM restored from it keeps running: its memory mapping holds
/// the file.
pub fn remove(store: &Path, name: &str) -> Result<(), String> {
    if name.is_empty() || name.starts_with('.') || name.contains('/') {
        return Err(format!("{name:?} is not a template name"));
    }
    let dir = store.join(name);
    if !is_complete(&dir) {
        return Err(format!("no template {name} in {}", store.display()));
    }
    fs::remove_dir_all(&dir).map_err(|e| format!("cannot remove {}: {e}", dir.display()))?;
    remove_stale_lock(store, name);
    Ok(())
}

/// Records a use of the template in `dir` (for [`evict_beyond`]).
fn mark_used(dir: &Path) {
    if let Ok(file) = File::options().append(true).open(dir.join(INPUTS_FILE)) {
        let _ = file.set_modified(std::time::SystemTime::now());
    }
}

fn last_used(dir: &Path) -> std::time::SystemTime {
    fs::metadata(dir.join(INPUTS_FILE))
        .and_then(|m| m.modified())
        .unwrap_or(std::time::UNIX_EPOCH)
}

/// Removes the least recently used templates until `keep` are left.
fn evict_beyond(store: &Path, keep: usize) {
    let Ok(mut found) = list(store) else {
        return;
    };
    found.sort_by_key(|t| std::cmp::Reverse(last_used(&t.dir)));
    for old in found.iter().skip(keep) {
        let _ = fs::remove_dir_all(&old.dir);
    }
    // Lock files of the templates just removed, of makers that died, and
    // of older runvm versions, which left them all behind.
    for entry in fs::read_dir(store).into_iter().flatten().flatten() {
        let file = entry.file_name().to_string_lossy().into_owned();
        if let Some(name) = file.strip_prefix('.').and_then(|f| f.strip_suffix(".lock")) {
            if !is_complete(&store.join(name)) {
                remove_stale_lock(store, name);
            }
        }
    }
}

/// Removes a template found damaged, so the next VM makes a new one.
pub fn discard(dir: &Path) {
    let _ = fs::remove_dir_all(dir);
    if let (Some(store), Some(name)) = (dir.parent(), dir.file_name()) {
        remove_stale_lock(store, &name.to_string_lossy());
    }
}

#[cfg(test)]
mod tests;
