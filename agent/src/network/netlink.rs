//! The few rtnetlink requests the agent needs, as raw messages on a
//! NETLINK_ROUTE socket: list the links, change one (name, MTU, up,
//! namespace), add an address, a route, a neighbour. A netlink crate would
//! bring its whole message catalogue into PID 1 for six requests.
//!
//! A netlink socket acts on the network namespace it was opened in, for
//! good: [`Netlink::open_in`] opens one in another namespace from a
//! short-lived thread, so the agent's own thread never changes namespace.

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use runvm_agent_api::network::IpNet;

const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;

const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const RTM_NEWADDR: u16 = 20;
const RTM_NEWROUTE: u16 = 24;
const RTM_NEWNEIGH: u16 = 28;

const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_MTU: u16 = 4;
const IFLA_NET_NS_FD: u16 = 28;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_BROADCAST: u16 = 4;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_PRIORITY: u16 = 6;
const RTA_PREFSRC: u16 = 7;
const NDA_DST: u16 = 1;
const NDA_LLADDR: u16 = 2;

const IFF_UP: u32 = 0x1;
const RT_TABLE_MAIN: u8 = 254;
const RTPROT_BOOT: u8 = 3;
const RTN_UNICAST: u8 = 1;
const NUD_PERMANENT: u16 = 0x80;
/// No duplicate address detection: the address is usable at once instead
/// of "tentative" for a second or more. The caller's side already checked
/// it on the same link, where the pod interface got it first.
const IFA_F_NODAD: u8 = 0x02;

/// Receive buffer: a dump part holds a few links; larger parts are cut
/// (MSG_TRUNC) and refused.
const RECV_BUFFER: usize = 32 << 10;
/// Most messages one answer may have (a guest has a handful of links).
const MAX_MESSAGES: usize = 4096;

/// A link of the namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub index: i32,
    pub name: String,
    pub mac: Option<[u8; 6]>,
}

/// What to change on a link; `None` leaves it.
#[derive(Default)]
pub struct LinkChange<'a> {
    pub name: Option<&'a str>,
    /// Its hardware address.
    pub mac: Option<[u8; 6]>,
    pub mtu: Option<u32>,
    pub up: bool,
    /// Move it into the network namespace of this descriptor.
    pub netns: Option<&'a OwnedFd>,
}

pub struct Netlink {
    fd: OwnedFd,
    seq: u32,
}

/// A request being built: header, fixed part, attributes.
struct Message(Vec<u8>);

impl Message {
    fn new(kind: u16, flags: u16, fixed: &[u8]) -> Message {
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(&0u32.to_ne_bytes());
        buf.extend_from_slice(&kind.to_ne_bytes());
        buf.extend_from_slice(&(flags | NLM_F_REQUEST).to_ne_bytes());
        buf.extend_from_slice(&[0; 8]);
        buf.extend_from_slice(fixed);
        pad(&mut buf);
        Message(buf)
    }

    fn attr(&mut self, kind: u16, data: &[u8]) -> &mut Message {
        let len = (4 + data.len()) as u16;
        self.0.extend_from_slice(&len.to_ne_bytes());
        self.0.extend_from_slice(&kind.to_ne_bytes());
        self.0.extend_from_slice(data);
        pad(&mut self.0);
        self
    }

    fn ip(&mut self, kind: u16, address: &IpAddr) -> &mut Message {
        match address {
            IpAddr::V4(v4) => self.attr(kind, &v4.octets()),
            IpAddr::V6(v6) => self.attr(kind, &v6.octets()),
        }
    }

    fn finish(mut self, seq: u32) -> Vec<u8> {
        let len = self.0.len() as u32;
        self.0[0..4].copy_from_slice(&len.to_ne_bytes());
        self.0[8..12].copy_from_slice(&seq.to_ne_bytes());
        self.0
    }
}

fn pad(buf: &mut Vec<u8>) {
    while buf.len() % 4 != 0 {
        buf.push(0);
    }
}

fn family(address: &IpAddr) -> u8 {
    match address {
        IpAddr::V4(_) => libc::AF_INET as u8,
        IpAddr::V6(_) => libc::AF_INET6 as u8,
    }
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("netlink: {what}"))
}

/// One message of an answer: its type, sequence number and payload.
struct Received<'a> {
    kind: u16,
    seq: u32,
    payload: &'a [u8],
}

/// The messages in `buf`, checked against its bounds.
fn split(mut buf: &[u8]) -> io::Result<Vec<Received<'_>>> {
    let mut messages = Vec::new();
    while buf.len() >= NLMSG_HDRLEN {
        let len = u32::from_ne_bytes(buf[0..4].try_into().unwrap_or_default()) as usize;
        if len < NLMSG_HDRLEN || len > buf.len() {
            return Err(bad("a message overruns its datagram"));
        }
        messages.push(Received {
            kind: u16::from_ne_bytes([buf[4], buf[5]]),
            seq: u32::from_ne_bytes(buf[8..12].try_into().unwrap_or_default()),
            payload: &buf[NLMSG_HDRLEN..len],
        });
        buf = &buf[((len + 3) & !3).min(buf.len())..];
    }
    Ok(messages)
}

/// The attributes after a fixed part: (type, data).
fn attributes(mut buf: &[u8]) -> Vec<(u16, &[u8])> {
    let mut found = Vec::new();
    while buf.len() >= 4 {
        let len = u16::from_ne_bytes([buf[0], buf[1]]) as usize;
        if len < 4 || len > buf.len() {
            break;
        }
        // Strip NLA_F_NESTED and NLA_F_NET_BYTEORDER.
        let kind = u16::from_ne_bytes([buf[2], buf[3]]) & 0x3fff;
        found.push((kind, &buf[4..len]));
        buf = &buf[((len + 3) & !3).min(buf.len())..];
    }
    found
}

/// A link from an RTM_NEWLINK message's payload.
fn parse_link(payload: &[u8]) -> Option<Link> {
    let index = i32::from_ne_bytes(payload.get(4..8)?.try_into().ok()?);
    let mut link = Link {
        index,
        name: String::new(),
        mac: None,
    };
    for (kind, data) in attributes(payload.get(16..)?) {
        match kind {
            IFLA_IFNAME => {
                let name = data.split(|b| *b == 0).next().unwrap_or_default();
                link.name = String::from_utf8_lossy(name).into_owned();
            }
            IFLA_ADDRESS => link.mac = data.try_into().ok(),
            _ => {}
        }
    }
    Some(link)
}

impl Netlink {
    /// A socket in this thread's network namespace.
    pub fn open() -> io::Result<Netlink> {
        // SAFETY: socket(2); the descriptor is ours.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a new descriptor that we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: a zeroed sockaddr_nl is "the kernel, any port".
        let mut address: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        address.nl_family = libc::AF_NETLINK as u16;
        // SAFETY: bind(2) with a sockaddr_nl of its size.
        let bound = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &address as *const libc::sockaddr_nl as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if bound < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Netlink { fd, seq: 0 })
    }

    /// A socket in the network namespace of `netns`, opened by a thread
    /// that enters it and ends (the namespace is per thread until a fork).
    pub fn open_in(netns: &OwnedFd) -> io::Result<Netlink> {
        let netns = netns.try_clone()?;
        std::thread::Builder::new()
            .name("netns".into())
            .spawn(move || {
                // SAFETY: setns(2) of this thread to a namespace descriptor.
                if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } < 0 {
                    return Err(io::Error::last_os_error());
                }
                Netlink::open()
            })?
            .join()
            .map_err(|_| io::Error::other("the namespace thread panicked"))?
    }

    fn send(&mut self, message: Message) -> io::Result<u32> {
        self.seq = self.seq.wrapping_add(1);
        let bytes = message.finish(self.seq);
        // SAFETY: send(2) from a buffer we own; the socket is bound to the
        // kernel.
        let sent =
            unsafe { libc::send(self.fd.as_raw_fd(), bytes.as_ptr().cast(), bytes.len(), 0) };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(self.seq)
    }

    fn receive(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            // SAFETY: recv(2) into a buffer we own, of its length.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_TRUNC,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let n = n as usize;
            if n > buf.len() {
                return Err(bad("an answer was larger than the buffer"));
            }
            return Ok(n);
        }
    }

    /// Sends a request that the kernel acknowledges; its error, if any.
    fn call(&mut self, message: Message) -> io::Result<()> {
        let seq = self.send(message)?;
        let mut buf = vec![0u8; RECV_BUFFER];
        for _ in 0..MAX_MESSAGES {
            let n = self.receive(&mut buf)?;
            for m in split(&buf[..n])? {
                if m.seq != seq || m.kind != NLMSG_ERROR {
                    continue;
                }
                let code = m
                    .payload
                    .get(0..4)
                    .and_then(|b| b.try_into().ok())
                    .map(i32::from_ne_bytes)
                    .ok_or_else(|| bad("a short error message"))?;
                return match code {
                    0 => Ok(()),
                    code => Err(io::Error::from_raw_os_error(-code)),
                };
            }
        }
        Err(bad("no acknowledgement"))
    }

    /// Every link of the namespace.
    pub fn links(&mut self) -> io::Result<Vec<Link>> {
        let seq = self.send(Message::new(RTM_GETLINK, NLM_F_DUMP, &[0u8; 16]))?;
        let mut buf = vec![0u8; RECV_BUFFER];
        let mut links = Vec::new();
        for _ in 0..MAX_MESSAGES {
            let n = self.receive(&mut buf)?;
            for m in split(&buf[..n])? {
                if m.seq != seq {
                    continue;
                }
                match m.kind {
                    NLMSG_DONE => return Ok(links),
                    NLMSG_ERROR => {
                        let code = m
                            .payload
                            .get(0..4)
                            .and_then(|b| b.try_into().ok())
                            .map(i32::from_ne_bytes)
                            .unwrap_or(-libc::EIO);
                        return Err(io::Error::from_raw_os_error(-code));
                    }
                    RTM_NEWLINK if links.len() < MAX_MESSAGES => {
                        links.extend(parse_link(m.payload));
                    }
                    _ => {}
                }
            }
        }
        Err(bad("the link list did not end"))
    }

    pub fn set_link(&mut self, index: i32, change: &LinkChange<'_>) -> io::Result<()> {
        let mut fixed = [0u8; 16];
        fixed[0] = libc::AF_UNSPEC as u8;
        fixed[4..8].copy_from_slice(&index.to_ne_bytes());
        if change.up {
            fixed[8..12].copy_from_slice(&IFF_UP.to_ne_bytes());
            fixed[12..16].copy_from_slice(&IFF_UP.to_ne_bytes());
        }
        let mut message = Message::new(RTM_NEWLINK, NLM_F_ACK, &fixed);
        if let Some(name) = change.name {
            let mut bytes = name.as_bytes().to_vec();
            bytes.push(0);
            message.attr(IFLA_IFNAME, &bytes);
        }
        if let Some(mtu) = change.mtu {
            message.attr(IFLA_MTU, &mtu.to_ne_bytes());
        }
        if let Some(mac) = change.mac {
            message.attr(IFLA_ADDRESS, &mac);
        }
        if let Some(netns) = change.netns {
            message.attr(IFLA_NET_NS_FD, &(netns.as_raw_fd() as u32).to_ne_bytes());
        }
        self.call(message)
    }

    /// `ip addr add ADDRESS/PREFIX brd + dev INDEX` (IPv4), `ip addr add
    /// ADDRESS/PREFIX dev INDEX nodad` (IPv6).
    pub fn add_address(&mut self, index: i32, net: &IpNet) -> io::Result<()> {
        self.call(address_message(index, net))
    }

    /// A route of the main table through link `index`.
    pub fn add_route(&mut self, index: i32, route: &Route) -> io::Result<()> {
        self.call(route_message(index, route))
    }

    /// A permanent neighbour entry on link `index`.
    pub fn add_neighbour(&mut self, index: i32, address: &IpAddr, mac: &[u8; 6]) -> io::Result<()> {
        self.call(neighbour_message(index, address, mac))
    }
}

fn address_message(index: i32, net: &IpNet) -> Message {
    let mut fixed = [0u8; 8];
    fixed[0] = family(&net.address);
    fixed[1] = net.prefix;
    if net.address.is_ipv6() {
        fixed[2] = IFA_F_NODAD;
    }
    fixed[4..8].copy_from_slice(&index.to_ne_bytes());
    let mut message = Message::new(RTM_NEWADDR, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, &fixed);
    message
        .ip(IFA_LOCAL, &net.address)
        .ip(IFA_ADDRESS, &net.address);
    if let Some(broadcast) = broadcast_of(net) {
        message.ip(IFA_BROADCAST, &IpAddr::V4(broadcast));
    }
    message
}

fn route_message(index: i32, route: &Route) -> Message {
    let mut fixed = [0u8; 12];
    fixed[0] = family(&route.family_of);
    fixed[1] = route.destination.map_or(0, |d| d.prefix);
    fixed[4] = RT_TABLE_MAIN;
    fixed[5] = RTPROT_BOOT;
    fixed[6] = route.scope;
    fixed[7] = RTN_UNICAST;
    let mut message = Message::new(RTM_NEWROUTE, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, &fixed);
    if let Some(destination) = route.destination {
        message.ip(RTA_DST, &destination.address);
    }
    if let Some(gateway) = &route.gateway {
        message.ip(RTA_GATEWAY, gateway);
    }
    if let Some(source) = &route.source {
        message.ip(RTA_PREFSRC, source);
    }
    if let Some(metric) = route.metric {
        message.attr(RTA_PRIORITY, &metric.to_ne_bytes());
    }
    message.attr(RTA_OIF, &(index as u32).to_ne_bytes());
    message
}

fn neighbour_message(index: i32, address: &IpAddr, mac: &[u8; 6]) -> Message {
    let mut fixed = [0u8; 12];
    fixed[0] = family(address);
    fixed[4..8].copy_from_slice(&index.to_ne_bytes());
    fixed[8..10].copy_from_slice(&NUD_PERMANENT.to_ne_bytes());
    let mut message = Message::new(
        RTM_NEWNEIGH,
        NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
        &fixed,
    );
    message.ip(NDA_DST, address).attr(NDA_LLADDR, mac);
    message
}

/// An IPv4 subnet's broadcast address (`brd +`), as CNI and netavark set
/// it; none for /31 and /32, which have none.
fn broadcast_of(net: &IpNet) -> Option<std::net::Ipv4Addr> {
    match net.address {
        IpAddr::V4(v4) if net.prefix < 31 => {
            let host_bits = u32::MAX >> net.prefix;
            Some((u32::from(v4) | host_bits).into())
        }
        _ => None,
    }
}

/// A route as [`Netlink::add_route`] takes it.
pub struct Route<'a> {
    pub destination: Option<&'a IpNet>,
    pub gateway: Option<IpAddr>,
    pub source: Option<IpAddr>,
    pub scope: u8,
    /// The route's priority (`metric`); None: the kernel's default.
    pub metric: Option<u32>,
    /// An address of the route's family.
    pub family_of: IpAddr,
}

#[cfg(test)]
mod tests;
