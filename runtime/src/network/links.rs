//! The netlink work inside the namespace: what the caller configured,
//! runvm's taps and TC redirection, and their removal.

use std::net::IpAddr;

use futures_util::stream::TryStreamExt;
use rtnetlink::packet_core::{NetlinkMessage, NLM_F_ACK, NLM_F_REQUEST};
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use rtnetlink::packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourState};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteMessage};
use rtnetlink::packet_route::tc::{TcHandle, TcMessage};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};

use super::{
    tap, Interface, IpNet, Neighbour, NetworkError, PodNetwork, Route, FILTER_PRIORITY,
    MAX_INTERFACES,
};

/// ETH_P_ALL in network byte order, as `tc ... protocol all` sends it.
const PROTOCOL_ALL: u16 = 0x0003u16.to_be();
/// The ingress hook's parent, as rtnetlink's `ingress()` sets it.
const INGRESS_PARENT: TcHandle = TcHandle {
    major: 0xffff,
    minor: TcHandle::MIN_INGRESS,
};

fn netlink(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetworkError {
    let what = what.into();
    move |e| NetworkError::Netlink {
        what,
        reason: e.to_string(),
    }
}

/// A link as far as runvm cares.
struct Link {
    index: u32,
    name: String,
    mac: Vec<u8>,
    mtu: u32,
    loopback: bool,
}

async fn links(handle: &Handle) -> Result<Vec<Link>, NetworkError> {
    let messages: Vec<LinkMessage> = handle
        .link()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(netlink("list the interfaces"))?;
    Ok(messages
        .into_iter()
        .map(|message| {
            let mut link = Link {
                index: message.header.index,
                name: String::new(),
                mac: Vec::new(),
                mtu: 0,
                loopback: message.header.flags.contains(LinkFlags::Loopback),
            };
            for attribute in message.attributes {
                match attribute {
                    LinkAttribute::IfName(name) => link.name = name,
                    LinkAttribute::Address(mac) => link.mac = mac,
                    LinkAttribute::Mtu(mtu) => link.mtu = mtu,
                    _ => {}
                }
            }
            link
        })
        .collect())
}

pub async fn attach(handle: &Handle) -> Result<PodNetwork, NetworkError> {
    let all = links(handle).await?;
    let theirs: Vec<&Link> = all
        .iter()
        .filter(|l| !l.loopback && !tap::is_ours(&l.name))
        .collect();
    if theirs.len() > MAX_INTERFACES {
        return Err(NetworkError::TooManyInterfaces {
            count: theirs.len(),
        });
    }
    let addresses = addresses(handle).await?;
    let mut interfaces = Vec::with_capacity(theirs.len());
    for (n, link) in theirs.iter().enumerate() {
        let mac: [u8; 6] = link
            .mac
            .as_slice()
            .try_into()
            .map_err(|_| NetworkError::Netlink {
                what: format!("use interface {}", link.name),
                reason: format!("it has no Ethernet address ({:02x?})", link.mac),
            })?;
        let tap_name = tap::name(n);
        tap::create(&tap_name)?;
        let tap_index = index_of(handle, &tap_name).await?;
        handle
            .link()
            .set(
                LinkUnspec::new_with_index(tap_index)
                    .mtu(link.mtu)
                    .up()
                    .build(),
            )
            .execute()
            .await
            .map_err(netlink(format!("bring {tap_name} up")))?;
        redirect(handle, link.index, tap_index, &link.name).await?;
        redirect(handle, tap_index, link.index, &tap_name).await?;
        interfaces.push(Interface {
            name: link.name.clone(),
            mac,
            mtu: link.mtu,
            addresses: addresses
                .iter()
                .filter(|(index, _)| *index == link.index)
                .map(|(_, net)| net.clone())
                .collect(),
            tap: tap_name,
        });
    }
    let name_of = |index: u32| {
        theirs
            .iter()
            .find(|l| l.index == index)
            .map(|l| l.name.clone())
    };
    let routes = routes(handle, &name_of).await?;
    let neighbours = neighbours(handle, &name_of).await?;
    Ok(PodNetwork {
        interfaces,
        routes,
        neighbours,
    })
}

async fn index_of(handle: &Handle, name: &str) -> Result<u32, NetworkError> {
    let found: Vec<LinkMessage> = handle
        .link()
        .get()
        .match_name(name.to_string())
        .execute()
        .try_collect()
        .await
        .map_err(netlink(format!("find {name}")))?;
    found
        .first()
        .map(|m| m.header.index)
        .ok_or_else(|| NetworkError::Netlink {
            what: format!("find {name}"),
            reason: "it is gone".into(),
        })
}

/// Every frame arriving on `from` leaves through `to`: an ingress qdisc
/// on `from` (kept if there is one), and a match-all u32 filter of
/// runvm's priority whose mirred action redirects to `to`.
async fn redirect(handle: &Handle, from: u32, to: u32, name: &str) -> Result<(), NetworkError> {
    let added = handle.qdisc().add(from as i32).ingress().execute().await;
    if let Err(e) = added {
        if !is_exists(&e) {
            return Err(netlink(format!("add an ingress qdisc to {name}"))(e));
        }
    }
    handle
        .traffic_filter(from as i32)
        .add()
        .ingress()
        .priority(FILTER_PRIORITY)
        .protocol(PROTOCOL_ALL)
        .redirect(to)
        .map_err(netlink(format!("build the redirect filter of {name}")))?
        .execute()
        .await
        .map_err(netlink(format!("add the redirect filter to {name}")))
}

fn is_exists(error: &rtnetlink::Error) -> bool {
    matches!(error, rtnetlink::Error::NetlinkError(message)
        if message.raw_code() == -libc::EEXIST)
}

fn is_gone(error: &rtnetlink::Error) -> bool {
    matches!(error, rtnetlink::Error::NetlinkError(message)
        if [-libc::ENOENT, -libc::ENODEV, -libc::EINVAL].contains(&message.raw_code()))
}

/// Removes runvm's taps (their qdiscs and filters go with them) and its
/// filters on the other interfaces, with the ingress qdisc when no one
/// else's filter is left on it.
pub async fn detach(handle: &Handle) -> Result<(), NetworkError> {
    for link in links(handle).await? {
        if link.loopback {
            continue;
        }
        if tap::is_ours(&link.name) {
            match handle.link().del(link.index).execute().await {
                Err(e) if !is_gone(&e) => {
                    return Err(netlink(format!("delete {}", link.name))(e));
                }
                _ => continue,
            }
        }
        let filters = ingress_filters(handle, link.index).await?;
        if !filters.contains(&FILTER_PRIORITY) {
            continue;
        }
        delete_our_filter(handle, link.index)
            .await
            .map_err(netlink(format!(
                "delete the redirect filter of {}",
                link.name
            )))?;
        if ingress_filters(handle, link.index).await?.is_empty() {
            let mut request = handle.qdisc().del(link.index as i32);
            // `tc qdisc del dev X ingress`: parent TC_H_INGRESS, handle ffff:.
            request.message_mut().header.parent = TcHandle {
                major: 0xffff,
                minor: 0xfff1,
            };
            request.message_mut().header.handle = TcHandle {
                major: 0xffff,
                minor: 0,
            };
            match request.execute().await {
                Err(e) if !is_gone(&e) => {
                    return Err(netlink(format!(
                        "delete the ingress qdisc of {}",
                        link.name
                    ))(e));
                }
                _ => {}
            }
        }
    }
    Ok(())
}

/// The priorities of the filters on `index`'s ingress hook.
async fn ingress_filters(handle: &Handle, index: u32) -> Result<Vec<u16>, NetworkError> {
    let listed: Result<Vec<TcMessage>, _> = handle
        .traffic_filter(index as i32)
        .get()
        .ingress()
        .execute()
        .try_collect()
        .await;
    match listed {
        // No ingress qdisc, no filters.
        Err(e) if is_gone(&e) => Ok(Vec::new()),
        Err(e) => Err(netlink(format!("list the filters of interface {index}"))(e)),
        Ok(messages) => Ok(messages
            .iter()
            .map(|m| (m.header.info >> 16) as u16)
            .collect()),
    }
}

/// Deletes the filters of runvm's priority on `index`'s ingress hook
/// (rtnetlink's own request cannot name a priority).
async fn delete_our_filter(handle: &Handle, index: u32) -> Result<(), rtnetlink::Error> {
    let mut message = TcMessage::with_index(index as i32);
    message.header.parent = INGRESS_PARENT;
    message.header.info = (u32::from(FILTER_PRIORITY) << 16) | u32::from(PROTOCOL_ALL);
    let mut request = NetlinkMessage::from(RouteNetlinkMessage::DelTrafficFilter(message));
    request.header.flags = NLM_F_REQUEST | NLM_F_ACK;
    let mut handle = handle.clone();
    let mut responses = handle.request(request)?;
    while let Some(response) = futures_util::StreamExt::next(&mut responses).await {
        if let rtnetlink::packet_core::NetlinkPayload::Error(e) = response.payload {
            if e.code.is_some() {
                return Err(rtnetlink::Error::NetlinkError(e));
            }
        }
    }
    Ok(())
}

/// Every address, with the index of its interface.
async fn addresses(handle: &Handle) -> Result<Vec<(u32, IpNet)>, NetworkError> {
    let messages: Vec<_> = handle
        .address()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(netlink("list the addresses"))?;
    Ok(messages
        .into_iter()
        .filter_map(|message| {
            // IFA_LOCAL is the interface's own address on point-to-point
            // links; IFA_ADDRESS elsewhere.
            let mut address = None;
            for attribute in &message.attributes {
                match attribute {
                    AddressAttribute::Local(ip) => address = Some(*ip),
                    AddressAttribute::Address(ip) if address.is_none() => address = Some(*ip),
                    _ => {}
                }
            }
            address.map(|address| {
                (
                    message.header.index,
                    IpNet {
                        address,
                        prefix: message.header.prefix_len,
                    },
                )
            })
        })
        .collect())
}

fn ip_of(address: &RouteAddress) -> Option<IpAddr> {
    match address {
        RouteAddress::Inet(ip) => Some(IpAddr::V4(*ip)),
        RouteAddress::Inet6(ip) => Some(IpAddr::V6(*ip)),
        _ => None,
    }
}

/// The main table's routes through the caller's interfaces, both
/// families.
async fn routes(
    handle: &Handle,
    name_of: &dyn Fn(u32) -> Option<String>,
) -> Result<Vec<Route>, NetworkError> {
    let mut messages: Vec<RouteMessage> = handle
        .route()
        .get(RouteMessageBuilder::<std::net::Ipv4Addr>::new().build())
        .execute()
        .try_collect()
        .await
        .map_err(netlink("list the IPv4 routes"))?;
    let v6: Vec<RouteMessage> = handle
        .route()
        .get(RouteMessageBuilder::<std::net::Ipv6Addr>::new().build())
        .execute()
        .try_collect()
        .await
        .map_err(netlink("list the IPv6 routes"))?;
    messages.extend(v6);
    const RT_TABLE_MAIN: u8 = 254;
    let mut routes = Vec::new();
    for message in messages {
        let mut table = u32::from(message.header.table);
        let mut route = Route {
            destination: None,
            gateway: None,
            device: None,
            source: None,
            scope: message.header.scope.into(),
            metric: None,
        };
        for attribute in &message.attributes {
            match attribute {
                RouteAttribute::Destination(address) => {
                    route.destination = ip_of(address).map(|address| IpNet {
                        address,
                        prefix: message.header.destination_prefix_length,
                    })
                }
                RouteAttribute::Gateway(address) => route.gateway = ip_of(address),
                RouteAttribute::PrefSource(address) => route.source = ip_of(address),
                RouteAttribute::Oif(index) => route.device = name_of(*index),
                RouteAttribute::Priority(metric) => route.metric = Some(*metric),
                RouteAttribute::Table(id) => table = *id,
                _ => {}
            }
        }
        // Routes of other tables, or through no interface of the caller's
        // (local and multicast routes live in other tables).
        if table == u32::from(RT_TABLE_MAIN) && route.device.is_some() {
            routes.push(route);
        }
    }
    Ok(routes)
}

/// The caller's permanent neighbour entries on its interfaces.
async fn neighbours(
    handle: &Handle,
    name_of: &dyn Fn(u32) -> Option<String>,
) -> Result<Vec<Neighbour>, NetworkError> {
    let messages: Vec<_> = handle
        .neighbours()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(netlink("list the neighbours"))?;
    let mut neighbours = Vec::new();
    for message in messages {
        if message.header.state != NeighbourState::Permanent {
            continue;
        }
        let Some(device) = name_of(message.header.ifindex) else {
            continue;
        };
        let (mut address, mut mac) = (None, None);
        for attribute in message.attributes {
            match attribute {
                NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => {
                    address = Some(IpAddr::V4(ip))
                }
                NeighbourAttribute::Destination(NeighbourAddress::Inet6(ip)) => {
                    address = Some(IpAddr::V6(ip))
                }
                NeighbourAttribute::LinkLayerAddress(lladdr) => mac = Some(lladdr),
                _ => {}
            }
        }
        if let (Some(address), Some(mac)) = (address, mac) {
            neighbours.push(Neighbour {
                address,
                mac,
                device,
            });
        }
    }
    Ok(neighbours)
}
