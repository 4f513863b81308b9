//! The thread that starts device threads on behalf of confined threads.
//!
//! A thread inherits its creator's filter, and its own only narrows that.
//! A vCPU activates devices, so a device thread it started itself could do
//! only what the vCPU may do as well: the vCPU filter would have to allow
//! sockets, disk reads and thread creation. The spawner, which never sees
//! guest data, may do all of that instead; the vCPU only hands it a job.

use std::sync::mpsc::{self, Sender};
use std::sync::OnceLock;
use std::thread::{Builder, JoinHandle};

use super::{apply, is_enabled, ThreadKind};

type Job = Box<dyn FnOnce() + Send>;

static SPAWNER: OnceLock<Sender<Job>> = OnceLock::new();

/// Starts the spawner (confined to [`ThreadKind::Spawner`]) if filters are
/// on and it is not running yet. Call it while the caller may still create
/// threads, before confining the main thread.
pub fn start_spawner() -> std::io::Result<()> {
    if !is_enabled() || SPAWNER.get().is_some() {
        return Ok(());
    }
    let (jobs, queue) = mpsc::channel::<Job>();
    let (ready, confined) = mpsc::sync_channel(1);
    Builder::new().name("spawner".into()).spawn(move || {
        let applied = apply(ThreadKind::Spawner).map_err(|e| e.to_string());
        let ok = applied.is_ok();
        let _ = ready.send(applied);
        if ok {
            // Ends when every sender is gone: never, in the VMM.
            for job in queue {
                job();
            }
        }
    })?;
    confined
        .recv()
        .map_err(|_| std::io::Error::other("the spawner thread died"))?
        .map_err(std::io::Error::other)?;
    // A second caller racing here keeps the first spawner; the other idles.
    let _ = SPAWNER.set(jobs);
    Ok(())
}

/// Starts thread `name` running `body`: through the spawner if it runs,
/// else directly.
pub fn spawn<F, T>(name: String, body: F) -> std::io::Result<JoinHandle<T>>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let Some(spawner) = SPAWNER.get() else {
        return Builder::new().name(name).spawn(body);
    };
    let (reply, started) = mpsc::sync_channel(1);
    let job: Job = Box::new(move || {
        let _ = reply.send(Builder::new().name(name).spawn(body));
    });
    spawner
        .send(job)
        .map_err(|_| std::io::Error::other("the spawner thread is gone"))?;
    started
        .recv()
        .map_err(|_| std::io::Error::other("the spawner thread did not answer"))?
}
