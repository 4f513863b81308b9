//! The request layouts, and (as root, in a network namespace of its
//! own) the requests against the kernel.

use super::*;

#[test]
fn requests_are_laid_out_as_the_kernel_reads_them() {
    let mut message = Message::new(RTM_NEWLINK, NLM_F_ACK, &[0u8; 16]);
    message.attr(IFLA_IFNAME, b"eth0\0");
    message.attr(IFLA_MTU, &1500u32.to_ne_bytes());
    let bytes = message.finish(7);
    // 16 header + 16 ifinfomsg + 12 (8 padded) name + 8 MTU.
    assert_eq!(bytes.len(), 52);
    assert_eq!(u32::from_ne_bytes(bytes[0..4].try_into().unwrap()), 52);
    assert_eq!(u16::from_ne_bytes([bytes[4], bytes[5]]), RTM_NEWLINK);
    assert_eq!(
        u16::from_ne_bytes([bytes[6], bytes[7]]),
        NLM_F_REQUEST | NLM_F_ACK
    );
    assert_eq!(u32::from_ne_bytes(bytes[8..12].try_into().unwrap()), 7);
    assert_eq!(&bytes[32..34], &9u16.to_ne_bytes());
    assert_eq!(&bytes[36..41], b"eth0\0");
    assert_eq!(&bytes[44..46], &8u16.to_ne_bytes());
}

#[test]
fn ipv4_subnets_get_their_broadcast_address() {
    let net = |text: &str, prefix| IpNet {
        address: text.parse().unwrap(),
        prefix,
    };
    assert_eq!(
        broadcast_of(&net("10.88.0.14", 16)),
        Some("10.88.255.255".parse().unwrap())
    );
    assert_eq!(
        broadcast_of(&net("10.1.2.3", 0)),
        Some("255.255.255.255".parse().unwrap())
    );
    assert_eq!(broadcast_of(&net("10.1.2.3", 31)), None);
    assert_eq!(broadcast_of(&net("fd00::1", 64)), None);
}

#[test]
fn answers_that_overrun_are_refused_and_attributes_are_bounded() {
    let mut message = Message::new(RTM_NEWLINK, 0, &[0u8; 16]);
    message.attr(IFLA_IFNAME, b"eth1\0");
    message.attr(IFLA_ADDRESS, &[2, 0, 0, 0, 0, 5]);
    let mut bytes = message.finish(1);
    bytes[4..8].copy_from_slice(&3i32.to_ne_bytes());
    let messages = split(&bytes).unwrap();
    assert_eq!(messages.len(), 1);
    let link = parse_link(messages[0].payload).unwrap();
    assert_eq!(link.name, "eth1");
    assert_eq!(link.mac, Some([2, 0, 0, 0, 0, 5]));

    let mut long = bytes.clone();
    long[0..4].copy_from_slice(&1000u32.to_ne_bytes());
    assert!(split(&long).is_err());
    // An attribute claiming more than there is ends the walk.
    let mut cut = bytes[NLMSG_HDRLEN..].to_vec();
    cut[16..18].copy_from_slice(&200u16.to_ne_bytes());
    let link = parse_link(&cut).unwrap();
    assert_eq!((link.name.as_str(), link.mac), ("", None));
    assert!(parse_link(&[0u8; 3]).is_none());
}

fn v6(text: &str) -> [u8; 16] {
    text.parse::<std::net::Ipv6Addr>().unwrap().octets()
}

#[test]
fn ipv6_requests_carry_their_family_sixteen_byte_addresses_nodad_and_metric() {
    let net = IpNet {
        address: "fd89::2".parse().unwrap(),
        prefix: 64,
    };
    let bytes = address_message(3, &net).finish(1);
    // ifaddrmsg: family, prefix, flags, scope, index.
    assert_eq!(&bytes[16..20], &[libc::AF_INET6 as u8, 64, IFA_F_NODAD, 0]);
    assert_eq!(&bytes[20..24], &3i32.to_ne_bytes());
    let fd89_2 = v6("fd89::2");
    // No broadcast address in IPv6.
    assert_eq!(
        attributes(&bytes[24..]),
        vec![(IFA_LOCAL, &fd89_2[..]), (IFA_ADDRESS, &fd89_2[..])]
    );
    // IPv4 addresses keep duplicate detection off the table (it is an
    // IPv6 flag) and get their broadcast address.
    let v4 = IpNet {
        address: "10.89.0.2".parse().unwrap(),
        prefix: 24,
    };
    let bytes = address_message(3, &v4).finish(1);
    assert_eq!(&bytes[16..20], &[libc::AF_INET as u8, 24, 0, 0]);
    assert_eq!(
        attributes(&bytes[24..])[2],
        (IFA_BROADCAST, &[10, 89, 0, 255][..])
    );

    // The default route through a link-local gateway, with a metric.
    let gateway: IpAddr = "fe80::1".parse().unwrap();
    let bytes = route_message(
        3,
        &Route {
            destination: None,
            gateway: Some(gateway),
            source: None,
            scope: 0,
            metric: Some(1024),
            family_of: gateway,
        },
    )
    .finish(1);
    // rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type.
    assert_eq!(
        &bytes[16..24],
        &[
            libc::AF_INET6 as u8,
            0,
            0,
            0,
            RT_TABLE_MAIN,
            RTPROT_BOOT,
            0,
            RTN_UNICAST
        ]
    );
    let fe80_1 = v6("fe80::1");
    assert_eq!(
        attributes(&bytes[28..]),
        vec![
            (RTA_GATEWAY, &fe80_1[..]),
            (RTA_PRIORITY, &1024u32.to_ne_bytes()[..]),
            (RTA_OIF, &3u32.to_ne_bytes()[..]),
        ]
    );
    // A prefix route: its destination and prefix length.
    let prefix = IpNet {
        address: "fd90::".parse().unwrap(),
        prefix: 48,
    };
    let bytes = route_message(
        3,
        &Route {
            destination: Some(&prefix),
            gateway: None,
            source: Some("fd89::2".parse().unwrap()),
            scope: 0,
            metric: None,
            family_of: prefix.address,
        },
    )
    .finish(1);
    assert_eq!(&bytes[16..18], &[libc::AF_INET6 as u8, 48]);
    let fd90 = v6("fd90::");
    assert_eq!(
        attributes(&bytes[28..]),
        vec![
            (RTA_DST, &fd90[..]),
            (RTA_PREFSRC, &fd89_2[..]),
            (RTA_OIF, &3u32.to_ne_bytes()[..]),
        ]
    );

    let mac = [2, 0, 0, 0, 0, 0x77];
    let bytes = neighbour_message(3, &"fd89::77".parse().unwrap(), &mac).finish(1);
    assert_eq!(bytes[16], libc::AF_INET6 as u8);
    assert_eq!(&bytes[24..26], &NUD_PERMANENT.to_ne_bytes());
    let fd89_77 = v6("fd89::77");
    assert_eq!(
        attributes(&bytes[28..]),
        vec![(NDA_DST, &fd89_77[..]), (NDA_LLADDR, &mac[..])]
    );
}

/// `body` on a thread in a network namespace of its own (needs root).
fn in_a_new_namespace<T: Send + 'static>(
    body: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    assert!(
        root,
        "the netlink tests make network namespaces: run them as root"
    );
    // The server tests reap with waitpid(-1): not while `ip` runs.
    let _serial = crate::server::tests::one_at_a_time();
    std::thread::spawn(|| {
        // SAFETY: unshare(2) of this thread's network namespace.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } < 0 {
            return Err(io::Error::last_os_error());
        }
        body()
    })
    .join()
    .unwrap_or_else(|_| Err(io::Error::other("the namespace thread panicked")))
}

/// `ip ARGS` in the calling thread's network namespace (a child process
/// inherits the namespace of the thread that forks it).
fn ip(args: &[&str]) -> io::Result<String> {
    let output = std::process::Command::new("ip").args(args).output()?;
    if !output.status.success() {
        return Err(io::Error::other(format!(
            "ip {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        )));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// In a network namespace of its own (needs root), on one end of a veth
/// pair: an IPv6 address is usable at once (not tentative), and IPv6
/// routes and neighbours are added as asked.
#[test]
fn ipv6_on_a_veth_in_a_new_namespace_is_usable_at_once() {
    let shown = in_a_new_namespace(|| {
        ip(&["link", "add", "va", "type", "veth", "peer", "name", "vb"])?;
        ip(&["link", "set", "vb", "up"])?;
        let mut netlink = Netlink::open()?;
        let va = netlink
            .links()?
            .into_iter()
            .find(|l| l.name == "va")
            .ok_or_else(|| bad("no va"))?;
        netlink.set_link(
            va.index,
            &LinkChange {
                up: true,
                ..LinkChange::default()
            },
        )?;
        let net = IpNet {
            address: "fd89::2".parse().unwrap(),
            prefix: 64,
        };
        netlink.add_address(va.index, &net)?;
        // The prefix route the kernel made from the address, as the
        // runtime collects it: already there.
        let prefix = IpNet {
            address: "fd89::".parse().unwrap(),
            prefix: 64,
        };
        let made = netlink
            .add_route(
                va.index,
                &Route {
                    destination: Some(&prefix),
                    gateway: None,
                    source: None,
                    scope: 0,
                    metric: Some(256),
                    family_of: prefix.address,
                },
            )
            .unwrap_err();
        assert_eq!(made.raw_os_error(), Some(libc::EEXIST));
        let gateway: IpAddr = "fd89::1".parse().unwrap();
        netlink.add_route(
            va.index,
            &Route {
                destination: None,
                gateway: Some(gateway),
                source: None,
                scope: 0,
                metric: Some(300),
                family_of: gateway,
            },
        )?;
        netlink.add_neighbour(
            va.index,
            &"fd89::77".parse().unwrap(),
            &[2, 0, 0, 0, 0, 0x77],
        )?;
        Ok([
            ip(&["-6", "addr", "show", "dev", "va"])?,
            ip(&["-6", "route", "show", "dev", "va"])?,
            ip(&["-6", "neigh", "show", "dev", "va"])?,
        ]
        .join(""))
    })
    .expect("IPv6 netlink in a new namespace");
    // Not "tentative" (the kernel's own link-local address is, for now).
    let address = shown.lines().find(|l| l.contains("inet6 fd89::2/64"));
    assert!(address.is_some_and(|l| !l.contains("tentative")), "{shown}");
    for wanted in [
        "default via fd89::1 metric 300",
        "fd89::/64 proto kernel metric 256",
        "fd89::77 lladdr 02:00:00:00:00:77 PERMANENT",
    ] {
        assert!(shown.contains(wanted), "{wanted}: {shown}");
    }
}

/// In a network namespace of its own (needs root): the requests work
/// on the loopback link.
#[test]
fn loopback_in_a_new_namespace_comes_up_with_an_address() {
    let result: Vec<String> = in_a_new_namespace(|| {
        let mut netlink = Netlink::open()?;
        let lo = netlink
            .links()?
            .into_iter()
            .find(|l| l.name == "lo")
            .ok_or_else(|| bad("no lo"))?;
        netlink.set_link(
            lo.index,
            &LinkChange {
                up: true,
                mtu: Some(1500),
                ..LinkChange::default()
            },
        )?;
        let net = IpNet {
            address: "10.9.8.7".parse().unwrap(),
            prefix: 8,
        };
        netlink.add_address(lo.index, &net)?;
        let again = netlink.add_address(lo.index, &net).unwrap_err();
        assert_eq!(again.raw_os_error(), Some(libc::EEXIST));
        let destination = IpNet {
            address: "10.200.0.0".parse().unwrap(),
            prefix: 16,
        };
        netlink.add_route(
            lo.index,
            &Route {
                destination: Some(&destination),
                gateway: Some("10.9.8.1".parse().unwrap()),
                source: None,
                scope: 0,
                metric: None,
                family_of: destination.address,
            },
        )?;
        let routes = std::fs::read_to_string("/proc/thread-self/net/route")?;
        Ok(routes.lines().map(str::to_string).collect())
    })
    .expect("netlink in a new namespace");
    // 10.200.0.0 via 10.9.8.1, little-endian hex as /proc shows it.
    assert!(
        result
            .iter()
            .any(|l| l.contains("0000C80A") && l.contains("0108090A")),
        "{result:?}"
    );
}
