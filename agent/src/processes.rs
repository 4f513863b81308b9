//! The agent's table of the processes it started.
//!
//! Each process gets an id, unique for the agent's lifetime. The reaper
//! records how a process ended; `Wait` hands that status out. An exited
//! entry stays until it has been waited for; when no one waits, the oldest
//! exited entries beyond a cap are dropped so the table stays bounded.
//! Pids of live entries cannot be reused under us: only the agent's one
//! reaper reaps, and it marks the entry exited in the same step.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::rc::{Rc, Weak};

use runvm_agent_api::{ExitStatus, ProcessInfo};
use tokio::sync::{watch, Notify};

use crate::fdio::Fd;

/// Bytes of argv kept per entry for `ListProcesses`.
pub const ARGV_KEPT: usize = 512;

/// The handles the agent keeps to a process's stdio.
#[derive(Default)]
pub struct ProcessIo {
    /// Tells the stdin pump to close the process's stdin.
    pub stdin_close: Option<Rc<Notify>>,
    /// The pty master of a terminal process, while its pump holds it.
    pub terminal: Option<Weak<Fd>>,
}

struct Entry {
    pid: i32,
    argv: Vec<String>,
    status: Option<ExitStatus>,
    exited: watch::Sender<Option<ExitStatus>>,
    io: ProcessIo,
}

/// What `Wait` gets.
pub enum WaitOutcome {
    /// Ended already; the entry is gone now.
    Exited(ExitStatus),
    /// Still running: the receiver sees the status when it ends.
    Running(watch::Receiver<Option<ExitStatus>>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    NoSuchProcess,
    Exited,
}

pub struct ProcessTable {
    next_id: u64,
    entries: BTreeMap<u64, Entry>,
    /// Live entries by pid.
    live: HashMap<i32, u64>,
    /// Exited entries nobody has waited for yet, oldest first.
    unwaited: VecDeque<u64>,
    max_unwaited: usize,
}

/// argv, cut to about [`ARGV_KEPT`] bytes for listing.
fn clip_argv(argv: &[String]) -> Vec<String> {
    let mut kept = Vec::new();
    let mut budget = ARGV_KEPT;
    for arg in argv {
        if arg.len() > budget {
            let mut cut = budget;
            while !arg.is_char_boundary(cut) {
                cut -= 1;
            }
            kept.push(format!("{}...", &arg[..cut]));
            break;
        }
        budget -= arg.len();
        kept.push(arg.clone());
    }
    kept
}

impl ProcessTable {
    pub fn new(max_unwaited: usize) -> ProcessTable {
        ProcessTable {
            next_id: 1,
            entries: BTreeMap::new(),
            live: HashMap::new(),
            unwaited: VecDeque::new(),
            max_unwaited,
        }
    }

    /// Records a process just started; returns its id.
    pub fn insert(&mut self, pid: i32, argv: &[String], io: ProcessIo) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let (exited, _) = watch::channel(None);
        self.entries.insert(
            id,
            Entry {
                pid,
                argv: clip_argv(argv),
                status: None,
                exited,
                io,
            },
        );
        self.live.insert(pid, id);
        id
    }

    /// Records that `pid` ended; false if it is none of ours (an orphan
    /// that the kernel handed to PID 1).
    pub fn record_exit(&mut self, pid: i32, status: ExitStatus) -> bool {
        let Some(id) = self.live.remove(&pid) else {
            return false;
        };
        let Some(entry) = self.entries.get_mut(&id) else {
            return false;
        };
        entry.status = Some(status);
        // Nobody reads the process's stdin any more.
        if let Some(close) = entry.io.stdin_close.take() {
            close.notify_one();
        }
        if entry.exited.receiver_count() > 0 {
            // Waiters are there: they get the status, and the entry has
            // been waited for.
            entry.exited.send_replace(Some(status));
            self.entries.remove(&id);
        } else {
            self.unwaited.push_back(id);
            while self.unwaited.len() > self.max_unwaited {
                if let Some(oldest) = self.unwaited.pop_front() {
                    self.entries.remove(&oldest);
                }
            }
        }
        true
    }

    pub fn wait(&mut self, id: u64) -> Option<WaitOutcome> {
        let entry = self.entries.get(&id)?;
        match entry.status {
            Some(status) => {
                self.entries.remove(&id);
                self.unwaited.retain(|&u| u != id);
                Some(WaitOutcome::Exited(status))
            }
            None => Some(WaitOutcome::Running(entry.exited.subscribe())),
        }
    }

    /// The pid of a live process (to signal it).
    pub fn live_pid(&self, id: u64) -> Result<i32, Lookup> {
        match self.entries.get(&id) {
            None => Err(Lookup::NoSuchProcess),
            Some(e) if e.status.is_some() => Err(Lookup::Exited),
            Some(e) => Ok(e.pid),
        }
    }

    /// Pids of every live process in the table.
    #[cfg(test)]
    pub fn live_pids(&self) -> Vec<i32> {
        self.live.keys().copied().collect()
    }

    pub fn io(&self, id: u64) -> Option<&ProcessIo> {
        self.entries.get(&id).map(|e| &e.io)
    }

    pub fn io_mut(&mut self, id: u64) -> Option<&mut ProcessIo> {
        self.entries.get_mut(&id).map(|e| &mut e.io)
    }

    pub fn list(&self) -> Vec<ProcessInfo> {
        self.entries
            .iter()
            .map(|(&process, e)| ProcessInfo {
                process,
                pid: e.pid,
                argv: e.argv.clone(),
                exited: e.status,
            })
            .collect()
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(words: &[&str]) -> Vec<String> {
        words.iter().map(|w| w.to_string()).collect()
    }

    #[test]
    fn ids_are_unique_and_listed_in_order() {
        let mut t = ProcessTable::new(4);
        let a = t.insert(100, &argv(&["a"]), ProcessIo::default());
        let b = t.insert(101, &argv(&["b", "x"]), ProcessIo::default());
        assert!(b > a);
        let list = t.list();
        assert_eq!(list.len(), 2);
        assert_eq!((list[0].process, list[0].pid), (a, 100));
        assert_eq!(list[1].argv, argv(&["b", "x"]));
        assert_eq!(list[1].exited, None);
    }

    #[test]
    fn orphans_are_not_ours() {
        let mut t = ProcessTable::new(4);
        assert!(!t.record_exit(55, ExitStatus::Code(0)));
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn an_exited_entry_stays_until_waited_for() {
        let mut t = ProcessTable::new(4);
        let id = t.insert(100, &argv(&["x"]), ProcessIo::default());
        assert!(t.record_exit(100, ExitStatus::Code(3)));
        assert_eq!(t.live_pid(id), Err(Lookup::Exited));
        assert_eq!(t.list()[0].exited, Some(ExitStatus::Code(3)));
        assert!(matches!(
            t.wait(id),
            Some(WaitOutcome::Exited(ExitStatus::Code(3)))
        ));
        assert!(t.wait(id).is_none());
        assert_eq!(t.live_pid(id), Err(Lookup::NoSuchProcess));
        // The pid may come back for another process.
        let again = t.insert(100, &argv(&["y"]), ProcessIo::default());
        assert_eq!(t.live_pid(again), Ok(100));
    }

    #[test]
    fn every_waiter_sees_the_end() {
        let mut t = ProcessTable::new(4);
        let id = t.insert(7, &argv(&["x"]), ProcessIo::default());
        let Some(WaitOutcome::Running(mut first)) = t.wait(id) else {
            panic!("should be running")
        };
        let Some(WaitOutcome::Running(mut second)) = t.wait(id) else {
            panic!("should be running")
        };
        t.record_exit(7, ExitStatus::Signal(9));
        assert_eq!(*first.borrow_and_update(), Some(ExitStatus::Signal(9)));
        assert_eq!(*second.borrow_and_update(), Some(ExitStatus::Signal(9)));
        // Waited for: gone.
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn a_waiter_that_left_does_not_count() {
        let mut t = ProcessTable::new(4);
        let id = t.insert(7, &argv(&["x"]), ProcessIo::default());
        drop(t.wait(id));
        t.record_exit(7, ExitStatus::Code(0));
        assert!(matches!(t.wait(id), Some(WaitOutcome::Exited(_))));
    }

    #[test]
    fn the_oldest_unwaited_exits_are_dropped_beyond_the_cap() {
        let mut t = ProcessTable::new(2);
        let ids: Vec<u64> = (0..4)
            .map(|pid| t.insert(pid, &argv(&["x"]), ProcessIo::default()))
            .collect();
        let running = t.insert(99, &argv(&["y"]), ProcessIo::default());
        for pid in [2, 0, 3, 1] {
            t.record_exit(pid, ExitStatus::Code(pid));
        }
        // Exited in order 2, 0, 3, 1: 2 and 0 are dropped.
        assert!(t.wait(ids[2]).is_none());
        assert!(t.wait(ids[0]).is_none());
        assert!(matches!(
            t.wait(ids[3]),
            Some(WaitOutcome::Exited(ExitStatus::Code(3)))
        ));
        assert_eq!(t.live_pid(running), Ok(99));
        assert_eq!(t.live_pids(), vec![99]);
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn exit_closes_stdin() {
        let mut t = ProcessTable::new(2);
        let close = Rc::new(Notify::new());
        let io = ProcessIo {
            stdin_close: Some(close.clone()),
            terminal: None,
        };
        t.insert(5, &argv(&["cat"]), io);
        t.record_exit(5, ExitStatus::Code(0));
        // The permit is stored: the pump sees it whenever it looks.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            tokio::time::timeout(std::time::Duration::from_secs(1), close.notified())
                .await
                .expect("stdin close notified");
        });
    }

    #[test]
    fn long_argv_is_clipped_for_listing() {
        let long = "é".repeat(ARGV_KEPT);
        let kept = clip_argv(&[String::from("sh"), long, String::from("more")]);
        assert_eq!(kept.len(), 2);
        assert!(kept[1].ends_with("..."));
        assert!(kept.iter().map(String::len).sum::<usize>() <= ARGV_KEPT + 3);
    }
}
