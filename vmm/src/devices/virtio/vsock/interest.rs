//! The vsock thread's epoll set: which fds it waits on, and for what.
//!
//! epoll reports EPOLLHUP and EPOLLERR whatever a registration asks for,
//! so an fd registered "for nothing" still wakes the loop, at once and
//! every time, once its peer hangs up: the thread would spin. An fd the
//! loop has no use for right now is therefore taken out of the set, and
//! put back when it is wanted again (a hang-up then reads as end of file).

use std::collections::HashMap;
use std::os::fd::RawFd;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

pub struct Interest {
    epoll: Epoll,
    /// Interest currently registered, per fd.
    registered: HashMap<RawFd, EventSet>,
    /// Watched for input for as long as the loop runs (eventfds).
    fixed: Vec<RawFd>,
}

impl Interest {
    pub fn new() -> std::io::Result<Interest> {
        Ok(Interest {
            epoll: Epoll::new()?,
            registered: HashMap::new(),
            fixed: Vec::new(),
        })
    }

    /// Watches `fd` for input until the loop ends; [`Interest::sync`]
    /// leaves it alone.
    pub fn watch_fixed(&mut self, fd: RawFd) -> std::io::Result<()> {
        self.watch(fd, EventSet::IN)?;
        self.fixed.push(fd);
        Ok(())
    }

    /// Makes the set hold exactly `wanted` (besides the fixed fds); an
    /// empty interest means "not registered".
    pub fn sync(&mut self, wanted: &HashMap<RawFd, EventSet>) {
        let stale: Vec<RawFd> = self
            .registered
            .iter()
            .filter(|(fd, _)| !self.fixed.contains(fd))
            .filter(|(fd, _)| wanted.get(fd).is_none_or(|set| set.is_empty()))
            .map(|(fd, _)| *fd)
            .collect();
        for fd in stale {
            self.unwatch(fd);
        }
        for (fd, set) in wanted {
            if !set.is_empty() && self.registered.get(fd) != Some(set) {
                // Failing leaves the fd out: its owner waits for another
                // event, which is better than a loop that spins on it.
                let _ = self.watch(*fd, *set);
            }
        }
    }

    pub fn wait(&self, events: &mut [EpollEvent]) -> std::io::Result<usize> {
        self.epoll.wait(-1, events)
    }

    #[cfg(test)]
    pub fn is_watched(&self, fd: RawFd) -> bool {
        self.registered.contains_key(&fd)
    }

    fn watch(&mut self, fd: RawFd, set: EventSet) -> std::io::Result<()> {
        let event = EpollEvent::new(set, fd as u64);
        // A closed fd leaves epoll by itself and its number can come back
        // for a new socket, so MOD may find nothing: then ADD.
        let result = if self.registered.contains_key(&fd) {
            self.epoll
                .ctl(ControlOperation::Modify, fd, event)
                .or_else(|_| self.epoll.ctl(ControlOperation::Add, fd, event))
        } else {
            self.epoll
                .ctl(ControlOperation::Add, fd, event)
                .or_else(|_| self.epoll.ctl(ControlOperation::Modify, fd, event))
        };
        result?;
        self.registered.insert(fd, set);
        Ok(())
    }

    /// Forgets `fd`; an already closed fd has left epoll by itself.
    pub fn unwatch(&mut self, fd: RawFd) {
        self.registered.remove(&fd);
        let _ = self
            .epoll
            .ctl(ControlOperation::Delete, fd, EpollEvent::default());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    fn ready(interest: &Interest) -> usize {
        let mut events = vec![EpollEvent::default(); 8];
        interest.epoll.wait(0, &mut events).unwrap()
    }

    #[test]
    fn a_hung_up_socket_wanted_for_nothing_leaves_epoll() {
        let mut interest = Interest::new().unwrap();
        let (ours, theirs) = UnixStream::pair().unwrap();
        let fd = ours.as_raw_fd();
        interest.sync(&HashMap::from([(fd, EventSet::IN)]));
        assert!(interest.is_watched(fd));
        drop(theirs);
        assert_eq!(ready(&interest), 1, "the hang-up is reported");
        // The owner has read the end of file and wants nothing more.
        interest.sync(&HashMap::from([(fd, EventSet::empty())]));
        assert!(!interest.is_watched(fd));
        assert_eq!(ready(&interest), 0, "nothing left to wake the loop");
        // Wanted again later (say, to flush data): back in the set.
        interest.sync(&HashMap::from([(fd, EventSet::OUT)]));
        assert!(interest.is_watched(fd));
    }

    #[test]
    fn fds_no_longer_wanted_leave_and_fixed_fds_stay() {
        let mut interest = Interest::new().unwrap();
        let (a, _a) = UnixStream::pair().unwrap();
        let (b, _b) = UnixStream::pair().unwrap();
        interest.watch_fixed(a.as_raw_fd()).unwrap();
        interest.sync(&HashMap::from([(b.as_raw_fd(), EventSet::IN)]));
        assert!(interest.is_watched(b.as_raw_fd()));
        interest.sync(&HashMap::new());
        assert!(!interest.is_watched(b.as_raw_fd()));
        assert!(interest.is_watched(a.as_raw_fd()));
    }
}
