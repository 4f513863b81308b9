//! A vhost-user backend for tests, written against the wire format of the
//! vhost-user protocol (a 12-byte header: request, flags, size; then the
//! body; file descriptors as SCM_RIGHTS). It records every request and
//! answers as told, so tests can check what the frontend sends.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use vmm_sys_util::tempdir::TempDir;

pub const GET_FEATURES: u32 = 1;
pub const SET_FEATURES: u32 = 2;
pub const SET_OWNER: u32 = 3;
pub const SET_MEM_TABLE: u32 = 5;
pub const SET_VRING_NUM: u32 = 8;
pub const SET_VRING_ADDR: u32 = 9;
pub const SET_VRING_BASE: u32 = 10;
pub const GET_VRING_BASE: u32 = 11;
pub const SET_VRING_KICK: u32 = 12;
pub const SET_VRING_CALL: u32 = 13;
pub const GET_PROTOCOL_FEATURES: u32 = 15;
pub const SET_PROTOCOL_FEATURES: u32 = 16;
pub const GET_QUEUE_NUM: u32 = 17;
pub const SET_VRING_ENABLE: u32 = 18;

const FLAG_VERSION_1: u32 = 0x1;
const FLAG_REPLY: u32 = 0x4;
const FLAG_NEED_REPLY: u32 = 0x8;
const PROTOCOL_F_REPLY_ACK: u64 = 1 << 3;

/// What virtiofsd 1.14 offers: VERSION_1, INDIRECT_DESC, EVENT_IDX,
/// PROTOCOL_FEATURES and LOG_ALL.
pub const VIRTIOFSD_FEATURES: u64 = 1 << 32 | 1 << 28 | 1 << 29 | 1 << 30 | 1 << 26;
/// MQ, BACKEND_REQ, REPLY_ACK, BACKEND_SEND_FD, CONFIGURE_MEM_SLOTS and
/// more; the frontend must pick only what it uses.
pub const VIRTIOFSD_PROTOCOL_FEATURES: u64 = 0x1 | 0x8 | 0x20 | 0x400 | 0x8000 | 0x2000;

#[derive(Clone, Debug)]
pub struct Request {
    pub code: u32,
    pub body: Vec<u8>,
    pub fds: usize,
}

impl Request {
    pub fn u64_at(&self, offset: usize) -> u64 {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&self.body[offset..offset + 8]);
        u64::from_le_bytes(bytes)
    }

    pub fn u32_at(&self, offset: usize) -> u32 {
        let mut bytes = [0u8; 4];
        bytes.copy_from_slice(&self.body[offset..offset + 4]);
        u32::from_le_bytes(bytes)
    }
}

#[derive(Clone)]
pub struct Behaviour {
    pub features: u64,
    pub protocol_features: u64,
    pub queue_num: u64,
    /// Requests answered with a failure acknowledgement.
    pub refuse: Option<u32>,
    /// A request after which the backend reads and answers nothing more,
    /// but keeps the connection open.
    pub silent_on: Option<u32>,
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour {
            features: VIRTIOFSD_FEATURES,
            protocol_features: VIRTIOFSD_PROTOCOL_FEATURES,
            queue_num: 2,
            refuse: None,
            silent_on: None,
        }
    }
}

pub struct MockBackend {
    pub socket: PathBuf,
    requests: Arc<Mutex<Vec<Request>>>,
    connection: Arc<Mutex<Option<UnixStream>>>,
    thread: Option<JoinHandle<()>>,
    _dir: TempDir,
}

impl MockBackend {
    /// Listens on a fresh socket and serves one connection.
    pub fn start(behaviour: Behaviour) -> MockBackend {
        let dir = TempDir::new_with_prefix("/tmp/runvm-vhost-user-test").unwrap();
        let socket = dir.as_path().join("fs.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let connection = Arc::new(Mutex::new(None));
        let (recorded, shared) = (requests.clone(), connection.clone());
        let thread = std::thread::spawn(move || {
            let Ok((stream, _)) = listener.accept() else {
                return;
            };
            *shared.lock().unwrap() = stream.try_clone().ok();
            serve(stream, &behaviour, &recorded);
        });
        MockBackend {
            socket,
            requests,
            connection,
            thread: Some(thread),
            _dir: dir,
        }
    }

    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }

    /// Waits for `count` requests to arrive: without REPLY_ACK the frontend
    /// does not wait for the backend to read them.
    pub fn wait_for_requests(&self, count: usize) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while self.requests.lock().unwrap().len() < count && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    pub fn codes(&self) -> Vec<u32> {
        self.requests().iter().map(|r| r.code).collect()
    }

    /// Closes the connection as a dying backend would.
    pub fn hang_up(&mut self) {
        if let Some(stream) = self.connection.lock().unwrap().take() {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for MockBackend {
    fn drop(&mut self) {
        self.hang_up();
    }
}

fn serve(mut stream: UnixStream, behaviour: &Behaviour, requests: &Mutex<Vec<Request>>) {
    let mut reply_ack = false;
    while let Some((code, flags, size, fds)) = receive_header(&stream) {
        let mut body = vec![0u8; size as usize];
        if stream.read_exact(&mut body).is_err() {
            return;
        }
        let request = Request { code, body, fds };
        requests.lock().unwrap().push(request.clone());
        if behaviour.silent_on == Some(code) {
            // Hold the connection until the peer gives up on it.
            let mut rest = Vec::new();
            let _ = stream.read_to_end(&mut rest);
            return;
        }
        let reply: Option<Vec<u8>> = match code {
            GET_FEATURES => Some(behaviour.features.to_le_bytes().to_vec()),
            GET_PROTOCOL_FEATURES => Some(behaviour.protocol_features.to_le_bytes().to_vec()),
            GET_QUEUE_NUM => Some(behaviour.queue_num.to_le_bytes().to_vec()),
            GET_VRING_BASE => {
                let mut state = request.body[..4].to_vec();
                state.extend_from_slice(&0u32.to_le_bytes());
                Some(state)
            }
            _ => {
                if code == SET_PROTOCOL_FEATURES {
                    reply_ack = request.u64_at(0) & PROTOCOL_F_REPLY_ACK != 0;
                }
                (reply_ack && flags & FLAG_NEED_REPLY != 0).then(|| {
                    let status = u64::from(behaviour.refuse == Some(code));
                    status.to_le_bytes().to_vec()
                })
            }
        };
        if let Some(body) = reply {
            let mut message = Vec::new();
            message.extend_from_slice(&code.to_le_bytes());
            message.extend_from_slice(&(FLAG_VERSION_1 | FLAG_REPLY).to_le_bytes());
            message.extend_from_slice(&(body.len() as u32).to_le_bytes());
            message.extend_from_slice(&body);
            if stream.write_all(&message).is_err() {
                return;
            }
        }
    }
}

/// Reads a header and counts (and closes) the descriptors sent with it.
fn receive_header(stream: &UnixStream) -> Option<(u32, u32, u32, usize)> {
    let mut header = [0u8; 12];
    let mut control = [0u64; 16];
    let mut iov = libc::iovec {
        iov_base: header.as_mut_ptr().cast(),
        iov_len: header.len(),
    };
    // SAFETY: msghdr is plain data; zero is a valid starting value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control);
    // SAFETY: every pointer in `msg` points at a live local buffer.
    let n = unsafe { libc::recvmsg(stream.as_raw_fd(), &mut msg, libc::MSG_WAITALL) };
    if n != header.len() as isize {
        return None;
    }
    let mut fds = 0;
    // SAFETY: walking the control messages the kernel wrote into `control`.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg) as *const libc::c_int;
                let count = ((*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize)
                    / std::mem::size_of::<libc::c_int>();
                for i in 0..count {
                    drop(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                }
                fds += count;
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    let word =
        |i: usize| u32::from_le_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
    Some((word(0), word(4), word(8), fds))
}
