//! Where a container's set-up spends the guest's time, for benchmarking:
//! with the `phases` feature, `phase("name")` notes the guest's monotonic
//! clock (the vDSO: no syscall) in a page shared with the processes the
//! agent forks, and `report(label)` logs the steps as deltas on the
//! console and starts over. Without the feature both are empty.

#[cfg(feature = "phases")]
mod imp {
    use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

    const SLOTS: usize = 200;

    #[repr(C)]
    struct Page {
        used: AtomicUsize,
        marks: [(usize, usize, u64); SLOTS],
    }

    static PAGE: AtomicPtr<Page> = AtomicPtr::new(std::ptr::null_mut());

    fn now_ns() -> u64 {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes our struct.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
    }

    /// Maps the shared page (in the agent, before any fork).
    pub fn init() {
        if !PAGE.load(Ordering::Relaxed).is_null() {
            return;
        }
        // SAFETY: a new shared anonymous mapping, zeroed by the kernel.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                std::mem::size_of::<Page>(),
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p != libc::MAP_FAILED {
            PAGE.store(p.cast(), Ordering::Relaxed);
        }
    }

    pub fn phase(name: &'static str) {
        let p = PAGE.load(Ordering::Relaxed);
        if p.is_null() {
            return;
        }
        // SAFETY: the page lives as long as the agent; slots are claimed
        // atomically and written once.
        unsafe {
            let i = (*p).used.fetch_add(1, Ordering::SeqCst);
            if i < SLOTS {
                let slot = std::ptr::addr_of_mut!((*p).marks[i]);
                slot.write_volatile((name.as_ptr() as usize, name.len(), now_ns()));
            }
        }
    }

    pub fn report(label: &str) {
        let p = PAGE.load(Ordering::Relaxed);
        if p.is_null() {
            return;
        }
        let mut line = format!("phases {label}:");
        // SAFETY: as in `phase`; the names are static strings of this
        // binary, at the same address in every forked process.
        unsafe {
            let n = (*p).used.swap(0, Ordering::SeqCst).min(SLOTS);
            let mut last = None;
            for i in 0..n {
                let (ptr, len, at) = std::ptr::addr_of!((*p).marks[i]).read_volatile();
                let name = std::str::from_utf8_unchecked(std::slice::from_raw_parts(
                    ptr as *const u8,
                    len,
                ));
                let delta = last.map_or(0, |l| at.saturating_sub(l));
                line.push_str(&format!(" {name}={:.1}", delta as f64 / 1e6));
                last = Some(at);
            }
        }
        agent_log!("{line}");
    }
}

#[cfg(feature = "phases")]
pub use imp::{init, phase, report};

#[cfg(not(feature = "phases"))]
pub fn init() {}

#[cfg(not(feature = "phases"))]
pub fn phase(_name: &'static str) {}

#[cfg(not(feature = "phases"))]
pub fn report(_label: &str) {}
