//! The host side of a pod's network: inside the network namespace the
//! caller (CNI, netavark) prepared, each interface it configured gets a
//! tap that TC connects to it both ways (an ingress qdisc on each, with a
//! match-all u32 filter whose mirred action redirects every frame out of
//! the other: Kata's `tcfilter` model), and what the guest must be told
//! to wear the same identity (MAC, MTU, addresses, routes, neighbours) is
//! collected. The caller's interfaces and addresses stay as they are.
//!
//! Everything runvm adds is found again by name: the taps are
//! `rvtap<N>`, the filters on the caller's interfaces have priority
//! [`FILTER_PRIORITY`]. So [`detach`] removes exactly that, and is
//! idempotent, even after the runtime was killed mid-way.
//!
//! - [`netns`]: running netlink work on a thread inside the namespace.
//! - [`tap`]: creating, and opening for a VMM, the persistent taps.
//! - [`links`]: the netlink work: collecting, TC, teardown.
//! - [`pod`]: config.json's network namespace, and what the guest is told
//!   of an attached network.

mod links;
mod netns;
mod pod;
mod tap;

#[cfg(test)]
mod tests;

use std::net::IpAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use pod::{network_namespace, NetworkNamespace, HOST_NETWORK_REFUSED};
pub use tap::TAP_PREFIX;

/// The priority of runvm's redirect filters (on the caller's interfaces
/// and on its taps): how teardown tells them from anyone else's.
pub const FILTER_PRIORITY: u16 = 0xc0de;
/// The most interfaces carried into one VM (the VMM's limit).
pub const MAX_INTERFACES: usize = 8;

/// An address with its prefix length (as the agent API carries it).
pub use runvm_agent_api::network::IpNet;

/// One interface the caller configured, and the tap that carries it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    /// Its name in the namespace: the guest's interface gets it too.
    pub name: String,
    pub mac: [u8; 6],
    pub mtu: u32,
    pub addresses: Vec<IpNet>,
    /// The tap runvm made for it, in the same namespace.
    pub tap: String,
}

impl Interface {
    /// The VMM's `--net` value for this interface, its tap open as `fd`
    /// in the VMM (see [`open_tap`]): the guest gets the same MAC and MTU.
    pub fn vmm_net_option(&self, fd: i32) -> String {
        format!("fd={fd},mac={},mtu={}", mac_text(&self.mac), self.mtu)
    }
}

/// `aa:bb:cc:dd:ee:ff`, as the VMM's `--net` takes a MAC.
pub fn mac_text(mac: &[u8; 6]) -> String {
    let bytes: Vec<String> = mac.iter().map(|b| format!("{b:02x}")).collect();
    bytes.join(":")
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// None for the default route.
    pub destination: Option<IpNet>,
    pub gateway: Option<IpAddr>,
    /// The interface, by name; None for a route through no interface of
    /// ours (left out of what the guest gets).
    pub device: Option<String>,
    pub source: Option<IpAddr>,
    /// `RT_SCOPE_*`: link routes (253) need no gateway.
    pub scope: u8,
    /// Its priority (`metric`), when the caller's route has one.
    #[serde(default)]
    pub metric: Option<u32>,
}

/// A neighbour entry the caller made permanent (a static ARP/NDP entry).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Neighbour {
    pub address: IpAddr,
    pub mac: Vec<u8>,
    pub device: String,
}

/// What the guest needs to bring the pod's network up as it is here.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodNetwork {
    pub interfaces: Vec<Interface>,
    pub routes: Vec<Route>,
    pub neighbours: Vec<Neighbour>,
}

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("network namespace {path}: {reason}")]
    Namespace { path: PathBuf, reason: String },
    #[error("netlink: cannot {what}: {reason}")]
    Netlink { what: String, reason: String },
    #[error("tap {name}: {reason}")]
    Tap { name: String, reason: String },
    #[error("the network namespace has {count} interfaces besides lo; at most {MAX_INTERFACES} can be carried into a VM")]
    TooManyInterfaces { count: usize },
}

/// Inside the namespace at `netns`: a tap per interface other than lo,
/// joined to it by TC both ways, and what the guest is to be told. What a
/// killed earlier attach left is removed first; on failure what was
/// added is removed again.
pub fn attach(netns: &Path) -> Result<PodNetwork, NetworkError> {
    netns::run_in(netns, |handle| async move {
        links::detach(&handle).await?;
        let attached = links::attach(&handle).await;
        if attached.is_err() {
            let _ = links::detach(&handle).await;
        }
        attached
    })
}

/// Removes every tap and filter runvm added in the namespace at `netns`;
/// nothing else. Doing it twice, or for a namespace never attached, is
/// no error; a namespace that no longer exists has nothing left to
/// remove either.
pub fn detach(netns: &Path) -> Result<(), NetworkError> {
    if !netns.exists() {
        return Ok(());
    }
    netns::run_in(netns, |handle| async move { links::detach(&handle).await })
}

/// Opens tap `name` in the namespace at `netns` for a VMM (`runvm-vmm
/// --net fd=N`): with vnet headers, no packet information.
pub fn open_tap(netns: &Path, name: &str) -> Result<OwnedFd, NetworkError> {
    let name = name.to_string();
    netns::run_in(netns, move |_| async move { tap::open(&name) })
}

/// A pod network attached for a VM being made: detached again when
/// dropped, unless [`Attachment::keep`] leaves it to `delete`.
pub struct Attachment {
    netns: PathBuf,
    pub network: PodNetwork,
    kept: bool,
}

impl Attachment {
    /// [`attach`]es in the namespace at `netns`.
    pub fn attach(netns: &Path) -> Result<Attachment, NetworkError> {
        let network = attach(netns)?;
        Ok(Attachment {
            netns: netns.to_owned(),
            network,
            kept: false,
        })
    }

    /// Each interface's tap opened for the VMM, with its `--net` value.
    pub fn vm_taps(&self) -> Result<Vec<crate::vm::VmTap>, NetworkError> {
        let ipv6 = self.network.for_guest().has_ipv6();
        self.network
            .interfaces
            .iter()
            .map(|interface| {
                let fd = open_tap(&self.netns, &interface.tap)?;
                Ok(crate::vm::VmTap {
                    option: interface.vmm_net_option(fd.as_raw_fd()),
                    fd,
                    mac: interface.mac,
                    ipv6,
                })
            })
            .collect()
    }

    /// The VM is made: what was attached stays until `delete`.
    pub fn keep(mut self) {
        self.kept = true;
    }

    /// [`detach`]es now, saying whether it worked (a drop cannot).
    pub fn detach(mut self) -> Result<(), NetworkError> {
        self.kept = true;
        detach(&self.netns)
    }
}

impl Drop for Attachment {
    fn drop(&mut self) {
        if !self.kept {
            let _ = detach(&self.netns);
        }
    }
}
