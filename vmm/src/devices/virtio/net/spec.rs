//! What the caller asks of one network interface: the `--net` option.

use super::device::NetOptions;
use super::{is_unicast, parse_mac, MAX_MTU, MIN_MTU};
use crate::error::Error;

/// The most interfaces one VM gets; each has a thread and a tap.
pub const MAX_NET_DEVICES: usize = 8;

/// Where the interface's frames go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TapSource {
    /// A tap descriptor inherited from the caller, opened with
    /// IFF_TAP | IFF_NO_PI | IFF_VNET_HDR (how a runtime hands over a tap
    /// it made in a pod's network namespace).
    Fd(i32),
    /// A tap the VMM creates, or attaches to, by name in its own network
    /// namespace, before it enters its jail.
    Name(String),
    /// None yet: a VM template's card, which the guest's driver sets up
    /// but which moves no frame; the VMs restored from the template bind
    /// it to a tap (see [`super::pending`]).
    Pending,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetConfig {
    pub tap: TapSource,
    pub options: NetOptions,
}

impl NetConfig {
    /// Parses `fd=N|tap=NAME|pending[,mac=XX:XX:XX:XX:XX:XX][,mtu=N][,offload=on|off]`
    /// and validates the result. Offloads are on unless turned off.
    pub fn parse(spec: &str) -> Result<NetConfig, Error> {
        let invalid = |reason: String| Error::InvalidNetSpec {
            spec: spec.to_string(),
            reason,
        };
        let mut tap = None;
        let mut options = NetOptions {
            offloads: true,
            ..NetOptions::default()
        };
        let mut seen: Vec<&str> = Vec::new();
        for item in spec.split(',') {
            if item == "pending" {
                if seen.contains(&"pending") {
                    return Err(invalid("pending is given twice".into()));
                }
                seen.push("pending");
                tap = Some(TapSource::Pending);
                continue;
            }
            let (key, value) = item
                .split_once('=')
                .ok_or_else(|| invalid(format!("{item:?} is not key=value")))?;
            if seen.contains(&key) {
                return Err(invalid(format!("{key} is given twice")));
            }
            seen.push(key);
            match key {
                "fd" => {
                    let fd: i32 = value
                        .parse()
                        .map_err(|_| invalid(format!("fd {value:?} is not a number")))?;
                    tap = Some(TapSource::Fd(fd));
                }
                "tap" => tap = Some(TapSource::Name(value.to_string())),
                "mac" => {
                    options.mac = Some(parse_mac(value).ok_or_else(|| {
                        invalid(format!("mac {value:?} is not XX:XX:XX:XX:XX:XX"))
                    })?)
                }
                "mtu" => {
                    options.mtu = Some(value.parse().map_err(|_| {
                        invalid(format!("mtu {value:?} is not a number below 65536"))
                    })?)
                }
                "offload" => {
                    options.offloads = match value {
                        "on" => true,
                        "off" => false,
                        _ => return Err(invalid(format!("offload {value:?} is not on or off"))),
                    }
                }
                _ => {
                    return Err(invalid(format!(
                        "unknown key {key:?} (expected fd, tap, pending, mac, mtu, offload)"
                    )))
                }
            }
        }
        if ["fd", "tap", "pending"]
            .iter()
            .filter(|source| seen.contains(source))
            .count()
            > 1
        {
            return Err(invalid("fd=, tap= and pending exclude each other".into()));
        }
        let tap =
            tap.ok_or_else(|| invalid("fd=<descriptor>, tap=<name> or pending is missing".into()))?;
        let config = NetConfig { tap, options };
        config.validate().map_err(invalid)?;
        Ok(config)
    }

    /// Checks that need no descriptor.
    pub fn validate(&self) -> Result<(), String> {
        match &self.tap {
            // 0 to 2 are the standard streams, never a tap.
            TapSource::Fd(fd) if *fd < 3 => return Err(format!("fd {fd} is not a tap descriptor")),
            TapSource::Name(name)
                if name.is_empty() || name.len() > 15 || name.contains(['/', ' ', '\0']) =>
            {
                return Err(format!(
                    "tap name {name:?} is not 1 to 15 bytes without '/' or space"
                ))
            }
            _ => {}
        }
        if let Some(mac) = self.options.mac {
            if !is_unicast(&mac) {
                return Err("the mac must be a unicast address other than zero".into());
            }
        }
        if let Some(mtu) = self.options.mtu {
            if !(MIN_MTU..=MAX_MTU).contains(&mtu) {
                return Err(format!("mtu {mtu} is outside {MIN_MTU}..={MAX_MTU}"));
            }
        }
        Ok(())
    }
}

/// Checks a VM's interfaces together: their number, and no tap twice.
pub fn validate_all(nets: &[NetConfig]) -> Result<(), Error> {
    if nets.len() > MAX_NET_DEVICES {
        return Err(Error::InvalidNetSpec {
            spec: format!("{} interfaces", nets.len()),
            reason: format!("a VM has at most {MAX_NET_DEVICES}"),
        });
    }
    for (index, net) in nets.iter().enumerate() {
        net.validate().map_err(|reason| Error::InvalidNetSpec {
            spec: format!("{:?}", net.tap),
            reason,
        })?;
        let pending = net.tap == TapSource::Pending;
        if !pending && nets[..index].iter().any(|other| other.tap == net.tap) {
            return Err(Error::InvalidNetSpec {
                spec: format!("{:?}", net.tap),
                reason: "the same tap is given twice".into(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_spec_and_the_defaults() {
        let net = NetConfig::parse("fd=7,mac=02:00:0a:00:00:05,mtu=1450,offload=off").unwrap();
        assert_eq!(net.tap, TapSource::Fd(7));
        assert_eq!(net.options.mac, Some([2, 0, 10, 0, 0, 5]));
        assert_eq!(net.options.mtu, Some(1450));
        assert!(!net.options.offloads);
        let net = NetConfig::parse("tap=tap0").unwrap();
        assert_eq!(net.tap, TapSource::Name("tap0".into()));
        assert_eq!(
            (net.options.mac, net.options.mtu, net.options.offloads),
            (None, None, true)
        );
    }

    #[test]
    fn errors_say_what_is_wrong() {
        for (spec, expected) in [
            ("", "not key=value"),
            ("mac=02:00:00:00:00:01", "is missing"),
            ("fd=3,tap=t", "exclude each other"),
            ("pending,fd=3", "exclude each other"),
            ("pending,pending", "given twice"),
            ("fd=3,fd=4", "given twice"),
            ("fd=x", "not a number"),
            ("fd=1", "not a tap descriptor"),
            ("tap=a/b", "not 1 to 15 bytes"),
            ("tap=0123456789abcdef", "not 1 to 15 bytes"),
            ("fd=3,mac=01:00:00:00:00:01", "unicast"),
            ("fd=3,mac=00:00:00:00:00:00", "unicast"),
            ("fd=3,mac=zz", "XX:XX"),
            ("fd=3,mtu=20", "outside"),
            ("fd=3,mtu=70000", "below 65536"),
            ("fd=3,offload=maybe", "on or off"),
            ("fd=3,queues=2", "unknown key"),
        ] {
            let message = NetConfig::parse(spec).unwrap_err().to_string();
            assert!(message.contains(expected), "{spec:?}: {message}");
        }
    }

    #[test]
    fn interfaces_are_bounded_and_distinct() {
        let net = |fd| NetConfig::parse(&format!("fd={fd}")).unwrap();
        assert!(validate_all(&[net(3), net(4)]).is_ok());
        assert!(validate_all(&[net(3), net(3)]).is_err());
        let many: Vec<NetConfig> = (3..3 + MAX_NET_DEVICES as i32 + 1).map(net).collect();
        assert!(validate_all(&many).is_err());
        assert!(validate_all(&many[..MAX_NET_DEVICES]).is_ok());
        // A template's cards have no tap to share.
        let pending = NetConfig::parse("pending,mac=02:00:00:00:00:01").unwrap();
        assert_eq!(pending.tap, TapSource::Pending);
        assert!(validate_all(&[pending.clone(), pending]).is_ok());
    }
}
