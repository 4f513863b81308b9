//! Running netlink work inside a network namespace: on a thread of its
//! own that enters the namespace (the namespace is per thread until a
//! fork), with a netlink connection opened there and a current-thread
//! tokio runtime to drive it. The caller's threads stay where they are.

use std::fs::File;
use std::future::Future;
use std::os::fd::AsRawFd;
use std::path::Path;

use rtnetlink::Handle;

use super::NetworkError;

pub fn run_in<F, Fut, T>(netns: &Path, work: F) -> Result<T, NetworkError>
where
    F: FnOnce(Handle) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, NetworkError>>,
    T: Send + 'static,
{
    let failed = |reason: String| NetworkError::Namespace {
        path: netns.to_path_buf(),
        reason,
    };
    let file = File::open(netns).map_err(|e| failed(format!("cannot open it: {e}")))?;
    let path = netns.to_path_buf();
    let thread = std::thread::Builder::new()
        .name("runvm-netns".into())
        .spawn(move || {
            let failed = |reason: String| NetworkError::Namespace {
                path: path.clone(),
                reason,
            };
            // SAFETY: setns on a descriptor we hold, for this thread only.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                let e = std::io::Error::last_os_error();
                return Err(failed(format!(
                    "cannot enter it (is it a network namespace?): {e}"
                )));
            }
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .build()
                .map_err(|e| failed(format!("cannot start a runtime: {e}")))?;
            runtime.block_on(async move {
                let (connection, handle, _) = rtnetlink::new_connection()
                    .map_err(|e| failed(format!("cannot open a netlink socket: {e}")))?;
                let connection = tokio::spawn(connection);
                let result = work(handle).await;
                connection.abort();
                result
            })
        })
        .map_err(|e| failed(format!("cannot start a thread: {e}")))?;
    thread
        .join()
        .map_err(|_| failed("the namespace thread panicked".into()))?
}
