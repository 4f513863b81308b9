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
