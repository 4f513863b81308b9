//! The pod's network as the guest is to wear it: the interfaces the caller
//! (CNI, netavark) configured in the pod's network namespace on the host,
//! each carried into the VM by a virtio-net device with the same MAC, and
//! their addresses, routes and static neighbours. The host sends it with
//! the `CreateContainer` of the container that owns the pod's network
//! namespace; the agent checks it with [`validate`] before touching a
//! device.

use std::collections::HashSet;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// Most interfaces in one VM (the VMM's limit).
pub const MAX_INTERFACES: usize = 8;
/// Most addresses on one interface.
pub const MAX_ADDRESSES: usize = 32;
/// Most routes, over all interfaces.
pub const MAX_ROUTES: usize = 128;
/// Most static neighbours, over all interfaces.
pub const MAX_NEIGHBOURS: usize = 128;
/// Longest interface name (IFNAMSIZ less its NUL).
pub const MAX_INTERFACE_NAME_LEN: usize = 15;
/// The MTU range Linux accepts for an Ethernet device.
pub const MIN_MTU: u32 = 68;
pub const MAX_MTU: u32 = 65535;

/// A restored VM's network card that still wears its template's MAC
/// (`from`, which the guest's driver read when the template booted) and is
/// to get its own (`to`): see [`crate::RequestBody::Reseed`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CardMac {
    pub from: [u8; 6],
    pub to: [u8; 6],
}

/// Checks a `Reseed`'s cards: at most [`MAX_INTERFACES`], unicast MACs,
/// each placeholder and each new MAC once.
pub fn validate_card_macs(cards: &[CardMac]) -> Result<(), String> {
    if cards.len() > MAX_INTERFACES {
        return Err(format!(
            "{} network cards; at most {MAX_INTERFACES} are allowed",
            cards.len()
        ));
    }
    let unicast = |mac: &[u8; 6]| mac[0] & 1 == 0 && *mac != [0; 6];
    let (mut from, mut to) = (HashSet::new(), HashSet::new());
    for card in cards {
        if !unicast(&card.from) || !unicast(&card.to) {
            return Err("a network card's MAC is not a unicast address".into());
        }
        if !from.insert(card.from) || !to.insert(card.to) {
            return Err("two network cards are given the same MAC".into());
        }
    }
    Ok(())
}

/// An address with its prefix length.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpNet {
    pub address: IpAddr,
    pub prefix: u8,
}

/// One interface of the pod: the guest's virtio-net device with this MAC
/// gets its name, MTU and addresses.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestInterface {
    pub name: String,
    pub mac: [u8; 6],
    pub mtu: u32,
    #[serde(default)]
    pub addresses: Vec<IpNet>,
}

/// A route of the pod's main table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestRoute {
    /// None for the default route.
    pub destination: Option<IpNet>,
    pub gateway: Option<IpAddr>,
    /// One of the interfaces, by name.
    pub device: String,
    /// The preferred source address.
    #[serde(default)]
    pub source: Option<IpAddr>,
    /// `RT_SCOPE_*`: 0 (universe) for routes through a gateway, 253 (link)
    /// for on-link ones.
    #[serde(default)]
    pub scope: u8,
    /// Its priority (`metric`), as the caller set it; None: the kernel's
    /// default. IPv6 needs it: a prefix route the kernel made from an
    /// address (metric 256) is only recognised as already there when the
    /// metric matches.
    #[serde(default)]
    pub metric: Option<u32>,
}

/// A permanent neighbour entry (static ARP).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestNeighbour {
    pub address: IpAddr,
    pub mac: [u8; 6],
    pub device: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestNetwork {
    pub interfaces: Vec<GuestInterface>,
    #[serde(default)]
    pub routes: Vec<GuestRoute>,
    #[serde(default)]
    pub neighbours: Vec<GuestNeighbour>,
}

impl GuestNetwork {
    /// Whether the guest needs IPv6 for it: an IPv6 address, route or
    /// neighbour on any interface.
    pub fn has_ipv6(&self) -> bool {
        let addresses = self
            .interfaces
            .iter()
            .flat_map(|i| &i.addresses)
            .map(|a| a.address);
        let routes = self.routes.iter().flat_map(|r| {
            [
                r.destination.as_ref().map(|d| d.address),
                r.gateway,
                r.source,
            ]
            .into_iter()
            .flatten()
        });
        let neighbours = self.neighbours.iter().map(|n| n.address);
        addresses
            .chain(routes)
            .chain(neighbours)
            .any(|a| a.is_ipv6())
    }
}

/// An interface name as Linux takes it (`dev_valid_name`): 1 to 15 bytes,
/// no `/`, `:` or whitespace, not `.` or `..`; and not `lo`, which every
/// namespace has.
pub fn validate_interface_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_INTERFACE_NAME_LEN {
        return Err(format!(
            "interface name {name:?} must be 1 to {MAX_INTERFACE_NAME_LEN} bytes long"
        ));
    }
    if name == "." || name == ".." || name == "lo" {
        return Err(format!("{name:?} cannot name a pod interface"));
    }
    if name
        .bytes()
        .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b.is_ascii_control())
    {
        return Err(format!(
            "interface name {name:?} contains '/', ':', whitespace or a control character"
        ));
    }
    Ok(())
}

fn validate_net(net: &IpNet, what: &str) -> Result<(), String> {
    let most = if net.address.is_ipv4() { 32 } else { 128 };
    if net.prefix > most {
        return Err(format!(
            "{what} {}/{}: the prefix is longer than {most}",
            net.address, net.prefix
        ));
    }
    Ok(())
}

/// Checks what the host sent: bounded counts, valid and distinct names and
/// MACs, MTUs Linux takes, prefixes that fit their family, and routes and
/// neighbours on interfaces of the list.
pub fn validate(network: &GuestNetwork) -> Result<(), String> {
    if network.interfaces.len() > MAX_INTERFACES {
        return Err(format!(
            "{} interfaces; at most {MAX_INTERFACES} are allowed",
            network.interfaces.len()
        ));
    }
    if network.routes.len() > MAX_ROUTES {
        return Err(format!(
            "{} routes; at most {MAX_ROUTES} are allowed",
            network.routes.len()
        ));
    }
    if network.neighbours.len() > MAX_NEIGHBOURS {
        return Err(format!(
            "{} neighbours; at most {MAX_NEIGHBOURS} are allowed",
            network.neighbours.len()
        ));
    }
    let mut names = HashSet::new();
    let mut macs = HashSet::new();
    for interface in &network.interfaces {
        validate_interface_name(&interface.name)?;
        if !names.insert(interface.name.as_str()) {
            return Err(format!("interface {:?} is given twice", interface.name));
        }
        if !macs.insert(interface.mac) {
            return Err(format!(
                "interfaces {:?} and another have the same MAC",
                interface.name
            ));
        }
        if interface.mac[0] & 1 != 0 || interface.mac == [0; 6] {
            return Err(format!(
                "interface {:?}: its MAC is not a unicast address",
                interface.name
            ));
        }
        if !(MIN_MTU..=MAX_MTU).contains(&interface.mtu) {
            return Err(format!(
                "interface {:?}: MTU {} is outside {MIN_MTU}..={MAX_MTU}",
                interface.name, interface.mtu
            ));
        }
        if interface.addresses.len() > MAX_ADDRESSES {
            return Err(format!(
                "interface {:?}: {} addresses; at most {MAX_ADDRESSES} are allowed",
                interface.name,
                interface.addresses.len()
            ));
        }
        for address in &interface.addresses {
            validate_net(address, "address")?;
        }
    }
    let known = |device: &str, what: &str| {
        if names.contains(device) {
            Ok(())
        } else {
            Err(format!("{what} on {device:?}, which is no pod interface"))
        }
    };
    for route in &network.routes {
        known(&route.device, "a route")?;
        if let Some(destination) = &route.destination {
            validate_net(destination, "route")?;
        }
        let families = [
            route.destination.as_ref().map(|d| d.address.is_ipv4()),
            route.gateway.map(|g| g.is_ipv4()),
            route.source.map(|s| s.is_ipv4()),
        ];
        let mut given = families.iter().flatten();
        if let Some(first) = given.next() {
            if given.any(|f| f != first) {
                return Err(format!("a route on {:?} mixes IPv4 and IPv6", route.device));
            }
        }
    }
    for neighbour in &network.neighbours {
        known(&neighbour.device, "a neighbour")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod() -> GuestNetwork {
        serde_json::from_value(serde_json::json!({
            "interfaces": [{"name": "eth0", "mac": [2, 0, 10, 88, 0, 2], "mtu": 1500,
                            "addresses": [{"address": "10.88.0.2", "prefix": 24}]}],
            "routes": [
                {"destination": {"address": "10.88.0.0", "prefix": 24}, "gateway": null,
                 "device": "eth0", "source": "10.88.0.2", "scope": 253},
                {"destination": null, "gateway": "10.88.0.1", "device": "eth0"}
            ],
            "neighbours": [{"address": "10.88.0.9", "mac": [2, 0, 0, 0, 0, 9],
                            "device": "eth0"}]
        }))
        .expect("a pod network")
    }

    /// [`pod`] dual-stack: an IPv6 address, a default route through a
    /// link-local gateway with a metric, and an IPv6 neighbour.
    fn dual_stack_pod() -> GuestNetwork {
        let mut network = pod();
        let extra: GuestNetwork = serde_json::from_value(serde_json::json!({
            "interfaces": [{"name": "eth0", "mac": [2, 0, 10, 88, 0, 2], "mtu": 1500,
                            "addresses": [{"address": "fd00:88::2", "prefix": 64}]}],
            "routes": [{"destination": null, "gateway": "fe80::1", "device": "eth0",
                        "metric": 1024}],
            "neighbours": [{"address": "fd00:88::9", "mac": [2, 0, 0, 0, 0, 9],
                            "device": "eth0"}]
        }))
        .expect("an IPv6 pod network");
        network.interfaces[0]
            .addresses
            .extend(extra.interfaces[0].addresses.clone());
        network.routes.extend(extra.routes);
        network.neighbours.extend(extra.neighbours);
        network
    }

    #[test]
    fn a_cni_pod_network_is_accepted() {
        assert_eq!(validate(&pod()), Ok(()));
        assert_eq!(validate(&dual_stack_pod()), Ok(()));
        assert_eq!(dual_stack_pod().routes[2].metric, Some(1024));
        assert_eq!(pod().routes[1].metric, None);
        assert_eq!(validate(&GuestNetwork::default()), Ok(()));
        assert!(!pod().has_ipv6());
        assert!(dual_stack_pod().has_ipv6());
        let mut only_a_route = pod();
        only_a_route.routes.push(dual_stack_pod().routes[2].clone());
        assert!(only_a_route.has_ipv6());
    }

    #[test]
    fn names_linux_would_refuse_are_refused() {
        for good in ["eth0", "net1", &"x".repeat(15)] {
            assert_eq!(validate_interface_name(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "lo",
            ".",
            "..",
            "a/b",
            "a:1",
            "a b",
            "nl\n",
            &"x".repeat(16),
        ] {
            assert!(validate_interface_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn card_macs_are_bounded_unicast_and_distinct() {
        let card = |from: u8, to: u8| CardMac {
            from: [2, 0, 0, 0, 0, from],
            to: [2, 0, 0, 0, 1, to],
        };
        assert!(validate_card_macs(&[card(1, 1), card(2, 2)]).is_ok());
        assert!(validate_card_macs(&[card(1, 1), card(1, 2)]).is_err());
        assert!(validate_card_macs(&[card(1, 1), card(2, 1)]).is_err());
        let multicast = CardMac {
            to: [1, 0, 0, 0, 0, 1],
            ..card(1, 1)
        };
        assert!(validate_card_macs(&[multicast]).is_err());
        let many: Vec<CardMac> = (0..=MAX_INTERFACES as u8)
            .map(|n| card(n + 1, n + 1))
            .collect();
        assert!(validate_card_macs(&many).unwrap_err().contains("at most"));
    }

    #[test]
    fn counts_and_values_are_bounded() {
        let refused_from =
            |mut network: GuestNetwork, edit: &dyn Fn(&mut GuestNetwork), needle: &str| {
                edit(&mut network);
                let e = validate(&network).expect_err(needle);
                assert!(e.contains(needle), "{e} (wanted {needle})");
            };
        let refused =
            |edit: &dyn Fn(&mut GuestNetwork), needle: &str| refused_from(pod(), edit, needle);
        let refused_v6 = |edit: &dyn Fn(&mut GuestNetwork), needle: &str| {
            refused_from(dual_stack_pod(), edit, needle)
        };
        refused(
            &|n| {
                let first = n.interfaces[0].clone();
                n.interfaces = (0..9u8)
                    .map(|i| GuestInterface {
                        name: format!("eth{i}"),
                        mac: [2, 0, 0, 0, 0, i],
                        ..first.clone()
                    })
                    .collect();
            },
            "9 interfaces",
        );
        refused(
            &|n| n.interfaces.push(n.interfaces[0].clone()),
            "given twice",
        );
        refused(
            &|n| {
                let mut second = n.interfaces[0].clone();
                second.name = "eth1".into();
                n.interfaces.push(second);
            },
            "same MAC",
        );
        refused(&|n| n.interfaces[0].mac = [1, 0, 0, 0, 0, 1], "unicast");
        refused(&|n| n.interfaces[0].mtu = 67, "MTU 67");
        refused(&|n| n.interfaces[0].mtu = 65536, "MTU 65536");
        refused(&|n| n.interfaces[0].addresses[0].prefix = 33, "prefix");
        refused_v6(
            &|n| n.interfaces[0].addresses[1].prefix = 129,
            "fd00:88::2/129: the prefix is longer than 128",
        );
        refused_v6(
            &|n| n.routes[2].source = Some("10.88.0.2".parse().unwrap()),
            "mixes",
        );
        refused(
            &|n| {
                let a = n.interfaces[0].addresses[0].clone();
                n.interfaces[0].addresses = vec![a; MAX_ADDRESSES + 1];
            },
            "addresses",
        );
        refused(
            &|n| n.routes = vec![n.routes[0].clone(); MAX_ROUTES + 1],
            "routes",
        );
        refused(
            &|n| n.neighbours = vec![n.neighbours[0].clone(); MAX_NEIGHBOURS + 1],
            "neighbours",
        );
        refused(&|n| n.routes[1].device = "eth9".into(), "no pod interface");
        refused(
            &|n| n.neighbours[0].device = "eth9".into(),
            "no pod interface",
        );
        refused(
            &|n| n.routes[0].gateway = Some("fd00::1".parse().unwrap()),
            "mixes",
        );
    }
}
