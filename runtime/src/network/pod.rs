//! Where a container's network comes from (config.json's network
//! namespace), and what of an attached pod network the guest is told.

use std::net::IpAddr;
use std::path::PathBuf;

use oci_spec::runtime::{LinuxNamespaceType, Spec};
use runvm_agent_api::network::{GuestInterface, GuestNeighbour, GuestNetwork, GuestRoute};

use super::PodNetwork;

/// config.json's network namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetworkNamespace {
    /// No entry: the host's network, which a guest cannot share.
    Host,
    /// A new, empty one: the guest's own, with only `lo`.
    New,
    /// One the caller prepared (CNI's, netavark's): its interfaces go into
    /// the VM.
    Path(PathBuf),
}

pub fn network_namespace(spec: &Spec) -> NetworkNamespace {
    let entry = spec
        .linux()
        .as_ref()
        .and_then(|linux| linux.namespaces().as_ref())
        .and_then(|namespaces| {
            namespaces
                .iter()
                .find(|n| n.typ() == LinuxNamespaceType::Network)
        });
    match entry {
        None => NetworkNamespace::Host,
        Some(namespace) => match namespace.path() {
            Some(path) if !path.as_os_str().is_empty() => NetworkNamespace::Path(path.clone()),
            _ => NetworkNamespace::New,
        },
    }
}

/// The error for a config.json without a network namespace.
pub const HOST_NETWORK_REFUSED: &str = "config.json has no network namespace (host networking): \
     a VM's guest cannot share the host's network stack; give the container a network \
     namespace (podman --network none or a bridge network, ctr run without --net-host, \
     a pod without hostNetwork)";

/// IPv6 link-local: made by each kernel for itself (the guest's from the
/// same MAC), not configured by the caller.
fn is_link_local(address: &IpAddr) -> bool {
    matches!(address, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80)
}

impl PodNetwork {
    /// What the agent is told: the interfaces without their taps, the
    /// routes through them and the neighbours with Ethernet addresses;
    /// IPv6 link-local addresses and routes left out.
    pub fn for_guest(&self) -> GuestNetwork {
        GuestNetwork {
            interfaces: self
                .interfaces
                .iter()
                .map(|i| GuestInterface {
                    name: i.name.clone(),
                    mac: i.mac,
                    mtu: i.mtu,
                    addresses: i
                        .addresses
                        .iter()
                        .filter(|a| !is_link_local(&a.address))
                        .cloned()
                        .collect(),
                })
                .collect(),
            routes: self
                .routes
                .iter()
                .filter(|r| {
                    !r.destination
                        .as_ref()
                        .is_some_and(|d| is_link_local(&d.address))
                })
                .filter_map(|r| {
                    Some(GuestRoute {
                        destination: r.destination.clone(),
                        gateway: r.gateway,
                        device: r.device.clone()?,
                        source: r.source.filter(|s| !is_link_local(s)),
                        scope: r.scope,
                        metric: r.metric,
                    })
                })
                .collect(),
            neighbours: self
                .neighbours
                .iter()
                .filter_map(|n| {
                    Some(GuestNeighbour {
                        address: n.address,
                        mac: n.mac.as_slice().try_into().ok()?,
                        device: n.device.clone(),
                    })
                })
                .collect(),
        }
    }
}
