//! The pod's network in the guest. The host carried each interface the
//! caller configured in the pod's network namespace into the VM as a
//! virtio-net device with the interface's MAC; [`configure`] finds each
//! device by that MAC, moves it into the container's network namespace
//! when that is not the agent's own, and gives it the pod interface's
//! name, MTU and addresses, then the pod's routes and static neighbours,
//! with `lo` and the interfaces up: a process in the container sees the
//! pod's `eth0` as it would under runc.
//!
//! - [`netlink`]: the raw rtnetlink requests this takes.
//!
//! IPv6 addresses are added without duplicate address detection (the
//! caller's side did it on the same link), so they are usable as soon as
//! the container starts; `lo` gets `::1` from the kernel when it comes up.
//! IPv6 items are skipped, with one logged line, when the guest kernel
//! has no IPv6 (it answers EAFNOSUPPORT: a kernel of the user's own).

mod netlink;

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::OwnedFd;

use runvm_agent_api::network::{validate, CardMac, GuestNetwork, GuestRoute};

use netlink::{LinkChange, Netlink, Route};

fn mac_text(mac: &[u8; 6]) -> String {
    let parts: Vec<String> = mac.iter().map(|b| format!("{b:02x}")).collect();
    parts.join(":")
}

/// What the kernel could not take, counted to be logged once.
#[derive(Default)]
struct Skipped {
    ipv6: usize,
}

impl Skipped {
    /// `result` of adding an item of `address`'s family: fine, already
    /// there, or IPv6 the guest kernel lacks.
    fn judge(&mut self, address: &IpAddr, result: io::Result<()>) -> io::Result<()> {
        match result {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
            Err(e) if address.is_ipv6() && e.raw_os_error() == Some(libc::EAFNOSUPPORT) => {
                self.ipv6 += 1;
                Ok(())
            }
            other => other,
        }
    }
}

/// The index of the link with `name` in `netlink`'s namespace.
fn index_by_name(netlink: &mut Netlink, name: &str) -> Result<i32, String> {
    netlink
        .links()
        .map_err(|e| format!("cannot list the network devices: {e}"))?
        .into_iter()
        .find(|l| l.name == name)
        .map(|l| l.index)
        .ok_or_else(|| format!("network device {name} is gone"))
}

/// Gives each card that has `from` the MAC `to` (a VM restored from a
/// template: see `RequestBody::Reseed`). Every card is found before any
/// is changed, so a new MAC that is another card's placeholder cannot be
/// mistaken for it.
pub fn assign_card_macs(cards: &[CardMac]) -> Result<(), String> {
    let mut netlink = Netlink::open().map_err(|e| format!("cannot open a netlink socket: {e}"))?;
    let devices = netlink
        .links()
        .map_err(|e| format!("cannot list the network devices: {e}"))?;
    let mut found = Vec::with_capacity(cards.len());
    for card in cards {
        let mut wearing = devices.iter().filter(|d| d.mac == Some(card.from));
        match (wearing.next(), wearing.next()) {
            (Some(device), None) => found.push((device, card.to)),
            (None, _) => {
                return Err(format!(
                    "no network device has the template's MAC {}",
                    mac_text(&card.from)
                ))
            }
            (Some(_), Some(_)) => {
                return Err(format!(
                    "more than one network device has MAC {}",
                    mac_text(&card.from)
                ))
            }
        }
    }
    for (device, mac) in found {
        let change = LinkChange {
            mac: Some(mac),
            ..LinkChange::default()
        };
        netlink.set_link(device.index, &change).map_err(|e| {
            format!(
                "cannot give network device {} the MAC {}: {e}",
                device.name,
                mac_text(&mac)
            )
        })?;
    }
    Ok(())
}

/// Gives the guest the pod's `network`, in the network namespace `target`
/// (a descriptor), or the agent's own when `None`.
pub fn configure(network: &GuestNetwork, target: Option<&OwnedFd>) -> Result<(), String> {
    validate(network)?;
    if network.interfaces.is_empty() {
        return Ok(());
    }
    let mut here = Netlink::open().map_err(|e| format!("cannot open a netlink socket: {e}"))?;
    let devices = here
        .links()
        .map_err(|e| format!("cannot list the network devices: {e}"))?;
    // Every device found before any is touched.
    let mut found = Vec::with_capacity(network.interfaces.len());
    for interface in &network.interfaces {
        let device = devices
            .iter()
            .find(|d| d.mac == Some(interface.mac))
            .ok_or_else(|| {
                let present: Vec<String> = devices
                    .iter()
                    .filter_map(|d| d.mac.map(|mac| format!("{} {}", d.name, mac_text(&mac))))
                    .collect();
                format!(
                    "no network device has MAC {} for interface {} (the VM has: {})",
                    mac_text(&interface.mac),
                    interface.name,
                    present.join(", ")
                )
            })?;
        found.push(device);
    }
    // Temporary names first: a pod's `eth0` may be the guest's `eth1`
    // while the guest's `eth0` is still to be renamed.
    let mut staged = Vec::with_capacity(found.len());
    for (n, (interface, device)) in network.interfaces.iter().zip(found).enumerate() {
        let temporary = format!("rvnet{n}");
        here.set_link(
            device.index,
            &LinkChange {
                name: Some(&temporary),
                netns: target,
                ..LinkChange::default()
            },
        )
        .map_err(|e| {
            format!(
                "cannot take network device {} for {}: {e}",
                device.name, interface.name
            )
        })?;
        staged.push(temporary);
    }
    let mut there = match target {
        Some(netns) => Netlink::open_in(netns).map_err(|e| {
            format!("cannot open a netlink socket in the container's network namespace: {e}")
        })?,
        None => here,
    };
    let mut indexes = HashMap::new();
    for (interface, temporary) in network.interfaces.iter().zip(&staged) {
        let index = index_by_name(&mut there, temporary)?;
        there
            .set_link(
                index,
                &LinkChange {
                    name: Some(&interface.name),
                    mtu: Some(interface.mtu),
                    up: true,
                    ..LinkChange::default()
                },
            )
            .map_err(|e| {
                format!(
                    "cannot set up interface {} (MTU {}): {e}",
                    interface.name, interface.mtu
                )
            })?;
        indexes.insert(interface.name.as_str(), index);
    }
    let lo = index_by_name(&mut there, "lo")?;
    there
        .set_link(
            lo,
            &LinkChange {
                up: true,
                ..LinkChange::default()
            },
        )
        .map_err(|e| format!("cannot bring lo up: {e}"))?;

    let mut skipped = Skipped::default();
    for interface in &network.interfaces {
        let index = indexes[interface.name.as_str()];
        for address in &interface.addresses {
            let added = there.add_address(index, address);
            skipped.judge(&address.address, added).map_err(|e| {
                format!(
                    "cannot add address {}/{} to {}: {e}",
                    address.address, address.prefix, interface.name
                )
            })?;
        }
    }
    // On-link routes first: a gateway must be reachable when its route
    // is added.
    let (on_link, via): (Vec<&GuestRoute>, Vec<&GuestRoute>) =
        network.routes.iter().partition(|r| r.gateway.is_none());
    for route in on_link.into_iter().chain(via) {
        let index = indexes[route.device.as_str()];
        let family_of = route
            .destination
            .as_ref()
            .map(|d| d.address)
            .or(route.gateway)
            .or(route.source)
            .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        let added = there.add_route(
            index,
            &Route {
                destination: route.destination.as_ref(),
                gateway: route.gateway,
                source: route.source,
                scope: route.scope,
                metric: route.metric,
                family_of,
            },
        );
        skipped.judge(&family_of, added).map_err(|e| {
            let to = route
                .destination
                .as_ref()
                .map_or("default".to_string(), |d| {
                    format!("{}/{}", d.address, d.prefix)
                });
            let via = route.gateway.map_or(String::new(), |g| format!(" via {g}"));
            format!("cannot add the route {to}{via} dev {}: {e}", route.device)
        })?;
    }
    for neighbour in &network.neighbours {
        let index = indexes[neighbour.device.as_str()];
        let added = there.add_neighbour(index, &neighbour.address, &neighbour.mac);
        skipped.judge(&neighbour.address, added).map_err(|e| {
            format!(
                "cannot add neighbour {} on {}: {e}",
                neighbour.address, neighbour.device
            )
        })?;
    }
    if skipped.ipv6 > 0 {
        agent_log!(
            "the guest kernel has no IPv6: {} IPv6 addresses, routes and neighbours of the pod were left out",
            skipped.ipv6
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests;
