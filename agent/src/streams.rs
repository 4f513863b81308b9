//! Stream connections waiting to be claimed by an `Exec`.
//!
//! The host connects a stream, sends its hello line and then names the
//! token in an `Exec`. The connection is parked here, under its token,
//! until that `Exec` takes it; an unclaimed one expires. The table is
//! bounded and refuses a token it already holds.

use std::collections::HashMap;
use std::fmt;

use tokio::task::AbortHandle;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParkError {
    /// Too many connections parked already.
    Full,
    /// That token is parked already.
    Duplicate,
}

impl fmt::Display for ParkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParkError::Full => write!(f, "too many unclaimed streams"),
            ParkError::Duplicate => write!(f, "token already in use"),
        }
    }
}

struct Parked<S> {
    stream: S,
    /// Tells the expiry apart from a later stream parked under the same
    /// token.
    serial: u64,
    /// The timer that expires it; stopped when the stream is claimed.
    expiry: Option<AbortHandle>,
}

/// Parked streams by token. `S` is the connection type (any type in the
/// tests).
pub struct StreamTable<S> {
    parked: HashMap<u64, Parked<S>>,
    capacity: usize,
    next_serial: u64,
}

impl<S> StreamTable<S> {
    pub fn new(capacity: usize) -> StreamTable<S> {
        StreamTable {
            parked: HashMap::new(),
            capacity,
            next_serial: 0,
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.parked.len()
    }

    /// Parks `stream`; returns the serial to pass to [`Self::expire`].
    pub fn park(&mut self, token: u64, stream: S) -> Result<u64, ParkError> {
        if self.parked.contains_key(&token) {
            return Err(ParkError::Duplicate);
        }
        if self.parked.len() >= self.capacity {
            return Err(ParkError::Full);
        }
        self.next_serial += 1;
        let serial = self.next_serial;
        self.parked.insert(
            token,
            Parked {
                stream,
                serial,
                expiry: None,
            },
        );
        Ok(serial)
    }

    /// Remembers the timer of a parked stream, to stop it on claim.
    pub fn set_expiry(&mut self, token: u64, serial: u64, timer: AbortHandle) {
        match self.parked.get_mut(&token) {
            Some(p) if p.serial == serial => p.expiry = Some(timer),
            _ => timer.abort(),
        }
    }

    /// Drops the stream parked as `serial` if nobody claimed it; returns it
    /// so the caller decides when it closes.
    pub fn expire(&mut self, token: u64, serial: u64) -> Option<S> {
        match self.parked.get(&token) {
            Some(p) if p.serial == serial => self.parked.remove(&token).map(|p| p.stream),
            _ => None,
        }
    }

    /// The first of `tokens` not parked.
    pub fn first_missing(&self, tokens: &[u64]) -> Option<u64> {
        tokens
            .iter()
            .copied()
            .find(|t| !self.parked.contains_key(t))
    }

    /// Takes every stream in `tokens`, in order, or none of them while one
    /// is missing.
    pub fn take_all(&mut self, tokens: &[u64]) -> Option<Vec<S>> {
        if self.first_missing(tokens).is_some() {
            return None;
        }
        let mut taken = Vec::with_capacity(tokens.len());
        for token in tokens {
            let parked = self.parked.remove(token)?;
            if let Some(timer) = parked.expiry {
                timer.abort();
            }
            taken.push(parked.stream);
        }
        Some(taken)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_taken_all_or_nothing() {
        let mut table = StreamTable::new(8);
        table.park(1, "a").unwrap();
        table.park(2, "b").unwrap();
        assert_eq!(table.first_missing(&[1, 2, 3]), Some(3));
        assert_eq!(table.take_all(&[1, 2, 3]), None);
        assert_eq!(table.len(), 2);
        assert_eq!(table.take_all(&[2, 1]), Some(vec!["b", "a"]));
        assert_eq!(table.len(), 0);
        assert_eq!(table.take_all(&[]), Some(vec![]));
    }

    #[test]
    fn duplicates_and_overflow_are_refused() {
        let mut table = StreamTable::new(2);
        table.park(1, ()).unwrap();
        assert_eq!(table.park(1, ()), Err(ParkError::Duplicate));
        table.park(2, ()).unwrap();
        assert_eq!(table.park(3, ()), Err(ParkError::Full));
        table.take_all(&[1]).unwrap();
        table.park(3, ()).unwrap();
    }

    #[test]
    fn expiry_only_drops_the_stream_it_was_set_for() {
        let mut table = StreamTable::new(4);
        let first = table.park(5, "old").unwrap();
        assert_eq!(table.take_all(&[5]), Some(vec!["old"]));
        let second = table.park(5, "new").unwrap();
        assert_ne!(first, second);
        assert_eq!(table.expire(5, first), None);
        assert_eq!(table.len(), 1);
        assert_eq!(table.expire(5, second), Some("new"));
        assert_eq!(table.len(), 0);
        assert_eq!(table.expire(5, second), None);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn claiming_stops_the_expiry_timer() {
        let mut table = StreamTable::new(4);
        let serial = table.park(9, ()).unwrap();
        let timer = tokio::spawn(std::future::pending::<()>());
        table.set_expiry(9, serial, timer.abort_handle());
        table.take_all(&[9]).unwrap();
        assert!(timer.await.unwrap_err().is_cancelled());

        // A timer for a stream that is gone already is stopped at once.
        let timer = tokio::spawn(std::future::pending::<()>());
        table.set_expiry(9, serial, timer.abort_handle());
        assert!(timer.await.unwrap_err().is_cancelled());
    }
}
