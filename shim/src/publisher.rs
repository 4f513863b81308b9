//! The shim's events to containerd, published in order on a thread of
//! their own, across containerd restarts.
//!
//! containerd-shim's `RemotePublisher` holds one ttrpc connection to
//! containerd's event service and never makes another. When containerd
//! restarts while the pod runs (it reconnects to the shim with
//! `Connect`), that connection is dead and every later event (TaskExit
//! above all, which containerd's CRI plugin waits for) would be lost. So
//! a failed publish drops the connection, waits, connects anew and tries
//! again, as containerd's Go shims do: an event sent while containerd was
//! away reaches it once it is back, within [`PATIENCE`].

use std::sync::mpsc;
use std::time::{Duration, Instant};

use containerd_shim::protos::protobuf::MessageDyn;
use containerd_shim::protos::ttrpc::context::{self, Context};
use containerd_shim::publisher::RemotePublisher;

/// An event for containerd: its topic and the message.
pub type Event = (&'static str, Box<dyn MessageDyn>);

/// How long one event is retried before it is given up (containerd
/// stays away longer than a restart takes).
const PATIENCE: Duration = Duration::from_secs(15);
/// The first wait between tries; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// One forward's limit: a request on a connection whose peer went away
/// must not wait forever.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);

/// Starts the publishing thread for `namespace`'s events to containerd's
/// ttrpc `address`, connected already by `first` (containerd-shim made
/// it when the shim started); events sent to the channel go out in order.
/// Without an address (a caller with no event service, see
/// [`crate::no_event_service`]) they are dropped.
pub fn start(
    first: RemotePublisher,
    address: Option<String>,
    namespace: String,
) -> mpsc::Sender<Event> {
    let (events, published) = mpsc::channel::<Event>();
    let Some(address) = address else {
        std::thread::spawn(move || {
            let _connected = first;
            for (topic, _) in published {
                log::debug!("no event service: {topic} not published");
            }
        });
        return events;
    };
    std::thread::spawn(move || {
        let mut connection = Connection {
            address,
            namespace,
            publisher: Some(first),
        };
        for (topic, event) in published {
            connection.publish(topic, event.as_ref());
        }
    });
    events
}

struct Connection {
    address: String,
    namespace: String,
    /// None after a failure, until the next try connects.
    publisher: Option<RemotePublisher>,
}

impl Connection {
    fn publish(&mut self, topic: &str, event: &dyn MessageDyn) {
        let deadline = Instant::now() + PATIENCE;
        let mut backoff = FIRST_BACKOFF;
        loop {
            let error = match self.try_once(topic, event) {
                Ok(()) => return,
                Err(error) => error,
            };
            self.publisher = None;
            if Instant::now() + backoff > deadline {
                log::warn!("cannot publish {topic} to containerd, giving it up: {error}");
                return;
            }
            log::debug!("cannot publish {topic} to containerd (retrying): {error}");
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    fn try_once(&mut self, topic: &str, event: &dyn MessageDyn) -> Result<(), String> {
        let publisher = match self.publisher.take() {
            Some(publisher) => publisher,
            None => RemotePublisher::new(&self.address)
                .map_err(|e| format!("cannot connect to {}: {e}", self.address))?,
        };
        let timeout = i64::try_from(FORWARD_TIMEOUT.as_nanos()).unwrap_or(i64::MAX);
        let ctx: Context = context::with_timeout(timeout);
        publisher
            .publish(ctx, topic, &self.namespace, event.clone_box())
            .map_err(|e| e.to_string())?;
        self.publisher = Some(publisher);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::IntoRawFd;
    use std::os::unix::net::UnixListener;
    use std::path::{Path, PathBuf};
    use std::sync::{Arc, Mutex};

    use containerd_shim::protos::api::{Empty, ForwardRequest};
    use containerd_shim::protos::events::task::{TaskExit, TaskOOM};
    use containerd_shim::protos::ttrpc::{self, Server, TtrpcContext};
    use containerd_shim::protos::{create_events, Events};

    use super::*;

    /// containerd's event service as far as a shim sees it: a ttrpc
    /// server taking `Forward`, passing on each envelope's topic.
    struct EventService(Mutex<mpsc::Sender<String>>);

    impl Events for EventService {
        fn forward(&self, _ctx: &TtrpcContext, req: ForwardRequest) -> ttrpc::Result<Empty> {
            let topic = req.envelope.topic.clone();
            let _ = self.0.lock().expect("the sender").send(topic);
            Ok(Empty::new())
        }
    }

    fn serve(path: &Path, topics: &mpsc::Sender<String>) -> Server {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path).expect("bind the event service");
        listener.set_nonblocking(true).expect("non-blocking");
        let service: Arc<dyn Events + Send + Sync> =
            Arc::new(EventService(Mutex::new(topics.clone())));
        let mut server = Server::new()
            .add_listener(listener.into_raw_fd())
            .expect("listen")
            .register_service(create_events(service));
        server.start().expect("start the event service");
        server
    }

    struct Dir(PathBuf);

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// An event published while containerd is away (stopped, its socket
    /// gone) reaches it once it listens again on the same address, as
    /// after a restart; events before and after arrive in order.
    #[test]
    fn events_reach_containerd_after_it_restarts() {
        let dir =
            Dir(std::env::temp_dir().join(format!("runvm-shim-publisher-{}", std::process::id())));
        std::fs::create_dir_all(&dir.0).expect("a scratch dir");
        let path = dir.0.join("containerd.sock.ttrpc");
        let address = path.display().to_string();
        let (topics, received) = mpsc::channel();
        let containerd = serve(&path, &topics);
        let first = RemotePublisher::new(&address).expect("connect");
        let events = start(first, Some(address), "ns".to_owned());
        let next = || received.recv_timeout(PATIENCE).expect("an event");

        events
            .send(("/tasks/oom", Box::new(TaskOOM::new())))
            .expect("queued");
        assert_eq!(next(), "/tasks/oom");

        containerd.shutdown();
        let _ = std::fs::remove_file(&path);
        events
            .send(("/tasks/exit", Box::new(TaskExit::new())))
            .expect("queued");
        std::thread::sleep(Duration::from_millis(500));
        let _containerd = serve(&path, &topics);
        assert_eq!(next(), "/tasks/exit");
        events
            .send(("/tasks/delete", Box::new(TaskOOM::new())))
            .expect("queued");
        assert_eq!(next(), "/tasks/delete");
    }
}
