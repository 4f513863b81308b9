//! Hugepage and block I/O limits: written to the guest's hugetlb and io
//! controllers where the guest kernel has them, and accepted as met where
//! the guest lacks what they limit.
//!
//! Hugepages: kubelet sends a limit of 0 for every page size the node has
//! on every container. The guest kernel has no hugetlb support (no
//! HUGETLBFS, so no hugetlb controller): a container there cannot get any
//! hugepage, so a limit of 0 is met. A larger limit asks for hugepages the
//! guest cannot give and is refused, naming the page size. With a kernel
//! that has the controller, `hugetlb.<size>.max` (and `.rsvd.max` where it
//! exists, as runc does) are written, and a size the guest does not offer
//! is treated the same way.
//!
//! Block I/O: the container's storage is virtio-fs (its rootfs and bind
//! mounts), served by virtiofsd on the host; no guest block device backs
//! it, and the guest kernel has no io controller. Weights and throttles
//! are written as runc writes them on cgroup v2 (weight to io.bfq.weight,
//! else converted to io.weight; per-device weights to io.bfq.weight only;
//! throttles to io.max) when the guest has the controller and, for a
//! device, has that block device. Otherwise they are accepted as met: the
//! device numbers in a spec name host devices, which the container never
//! reaches from the guest but through virtio-fs, whose I/O these limits do
//! not govern. A device that does not exist on the host at all is refused
//! on the host by the runtime, where runc's kernel would have refused it.

use runvm_agent_api::oci::{LinuxBlockIo, LinuxHugepageLimit, LinuxThrottleDevice};

use super::cgroups::{write, CgroupWrite, Condition, IfMissing};

/// A page size in the spelling of the spec and the cgroup files: digits
/// and KB, MB or GB.
fn valid_page_size(size: &str) -> bool {
    let digits = size.trim_end_matches(['K', 'M', 'G', 'B']);
    let unit = &size[digits.len()..];
    !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && matches!(unit, "KB" | "MB" | "GB")
}

/// The writes for `linux.resources.hugepageLimits`.
pub fn hugepage_writes(limits: &[LinuxHugepageLimit]) -> Result<Vec<CgroupWrite>, String> {
    let mut out = Vec::new();
    for l in limits {
        let size = &l.page_size;
        if !valid_page_size(size) {
            return Err(format!(
                "hugepage size {size:?} is not a page size like 2MB or 1GB"
            ));
        }
        let missing = if l.limit == 0 {
            IfMissing::Satisfied
        } else {
            IfMissing::FailWith(format!(
                "hugepages of size {size} are not available in the guest \
                 (linux.resources.hugepageLimits allows {} bytes of them); \
                 only a limit of 0 can be met",
                l.limit
            ))
        };
        out.push(write(&format!("hugetlb.{size}.max"), l.limit).if_missing(missing));
        out.push(
            write(&format!("hugetlb.{size}.rsvd.max"), l.limit).if_missing(IfMissing::Satisfied),
        );
    }
    Ok(out)
}

/// cgroup v1 blkio weight (10..1000) to v2 io.weight (1..10000), as runc
/// converts it.
pub fn blkio_to_io_weight(weight: u16) -> u64 {
    1 + (u64::from(weight) - 10) * 9999 / 990
}

fn check_weight(weight: u16) -> Result<u16, String> {
    if (10..=1000).contains(&weight) {
        Ok(weight)
    } else {
        Err(format!(
            "block I/O weight {weight} is out of range (10 to 1000)"
        ))
    }
}

fn device(major: i64, minor: i64) -> Result<(u32, u32), String> {
    match (u32::try_from(major), u32::try_from(minor)) {
        (Ok(major), Ok(minor)) => Ok((major, minor)),
        _ => Err(format!(
            "block device {major}:{minor} is not a device number"
        )),
    }
}

/// A write for one device, made only when the guest has the device, and
/// met when the guest has no io controller.
fn device_write(file: &str, (major, minor): (u32, u32), setting: String) -> CgroupWrite {
    write(file, format!("{major}:{minor} {setting}"))
        .if_missing(IfMissing::Satisfied)
        .only_if(Condition::BlockDevice(major, minor))
}

/// The writes for `linux.resources.blockIO`.
pub fn block_io_writes(block_io: &LinuxBlockIo) -> Result<Vec<CgroupWrite>, String> {
    let mut out = Vec::new();
    if let Some(weight) = block_io.weight.filter(|w| *w != 0) {
        let weight = check_weight(weight)?;
        out.push(write("io.bfq.weight", weight).if_missing(IfMissing::Satisfied));
        out.push(
            write("io.weight", blkio_to_io_weight(weight))
                .if_missing(IfMissing::Satisfied)
                .only_if(Condition::NoFile("io.bfq.weight".into())),
        );
    }
    // leafWeight is cgroup v1's alone; runc ignores it on v2 too.
    for d in block_io.weight_device.iter().flatten() {
        let dev = device(d.major, d.minor)?;
        if let Some(weight) = d.weight.filter(|w| *w != 0) {
            let weight = check_weight(weight)?;
            // Only BFQ weighs devices one by one (runc writes nothing else).
            out.push(device_write("io.bfq.weight", dev, weight.to_string()));
        }
    }
    let throttles: [(&str, &Option<Vec<LinuxThrottleDevice>>); 4] = [
        ("rbps", &block_io.throttle_read_bps_device),
        ("wbps", &block_io.throttle_write_bps_device),
        ("riops", &block_io.throttle_read_iops_device),
        ("wiops", &block_io.throttle_write_iops_device),
    ];
    for (key, list) in throttles {
        for t in list.iter().flatten() {
            let dev = device(t.major, t.minor)?;
            // A rate of 0 means no limit, as it did with cgroup v1.
            let rate = if t.rate == 0 {
                "max".to_string()
            } else {
                t.rate.to_string()
            };
            out.push(device_write("io.max", dev, format!("{key}={rate}")));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::cgroups::Cgroup;

    fn hugepages(json: &str) -> Result<Vec<CgroupWrite>, String> {
        hugepage_writes(&serde_json::from_str::<Vec<LinuxHugepageLimit>>(json).unwrap())
    }

    fn block_io(json: &str) -> Result<Vec<CgroupWrite>, String> {
        block_io_writes(&serde_json::from_str(json).unwrap())
    }

    /// A cgroup directory with these files in a temporary directory, and
    /// a /sys/dev/block with these devices.
    struct Fake {
        dir: std::path::PathBuf,
    }

    impl Fake {
        fn new(name: &str, files: &[&str], devices: &[&str]) -> Fake {
            let dir = std::env::temp_dir().join(format!("runvm-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(dir.join("cg")).unwrap();
            std::fs::create_dir_all(dir.join("dev")).unwrap();
            for f in files {
                std::fs::write(dir.join("cg").join(f), "").unwrap();
            }
            for d in devices {
                std::fs::create_dir(dir.join("dev").join(d)).unwrap();
            }
            Fake { dir }
        }

        fn apply(&self, writes: &[CgroupWrite]) -> std::io::Result<()> {
            let cgroup = Cgroup {
                path: self.dir.join("cg"),
            };
            cgroup.apply_with(writes, &self.dir.join("dev"))
        }

        fn read(&self, file: &str) -> String {
            std::fs::read_to_string(self.dir.join("cg").join(file)).unwrap_or_default()
        }
    }

    impl Drop for Fake {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    #[test]
    fn page_sizes_are_checked() {
        for good in ["2MB", "1GB", "64KB", "16GB"] {
            assert!(valid_page_size(good), "{good}");
        }
        for bad in ["", "MB", "2mb", "2M", "2 MB", "../2MB", "2MBB", "x2MB"] {
            assert!(!valid_page_size(bad), "{bad}");
            let err = hugepages(&format!(r#"[{{"pageSize":"{bad}","limit":0}}]"#)).unwrap_err();
            assert!(err.contains("page size"), "{err}");
        }
    }

    #[test]
    fn kubelets_zero_hugepage_limits_are_met_without_hugetlb() {
        let writes =
            hugepages(r#"[{"pageSize":"2MB","limit":0},{"pageSize":"1GB","limit":0}]"#).unwrap();
        assert_eq!(writes.len(), 4);
        assert!(writes.iter().all(|w| !w.needs_cgroup()));
        // No hugetlb controller: nothing to write, nothing refused.
        let none = Fake::new("hugetlb-none", &[], &[]);
        none.apply(&writes).unwrap();
        // With the controller, the limits are written, rsvd where it is.
        let some = Fake::new(
            "hugetlb-some",
            &["hugetlb.2MB.max", "hugetlb.2MB.rsvd.max", "hugetlb.1GB.max"],
            &[],
        );
        some.apply(&writes).unwrap();
        assert_eq!(some.read("hugetlb.2MB.max"), "0");
        assert_eq!(some.read("hugetlb.2MB.rsvd.max"), "0");
        assert_eq!(some.read("hugetlb.1GB.max"), "0");
    }

    #[test]
    fn a_hugepage_allowance_the_guest_cannot_give_names_the_size() {
        let writes = hugepages(r#"[{"pageSize":"1GB","limit":2147483648}]"#).unwrap();
        let none = Fake::new("hugetlb-nosize", &["hugetlb.2MB.max"], &[]);
        let err = none.apply(&writes).unwrap_err().to_string();
        assert!(err.contains("size 1GB"), "{err}");
        assert!(err.contains("2147483648"), "{err}");
        let some = Fake::new("hugetlb-size", &["hugetlb.1GB.max"], &[]);
        some.apply(&writes).unwrap();
        assert_eq!(some.read("hugetlb.1GB.max"), "2147483648");
    }

    #[test]
    fn weights_convert_like_runc() {
        assert_eq!(blkio_to_io_weight(10), 1);
        assert_eq!(blkio_to_io_weight(1000), 10000);
        assert_eq!(blkio_to_io_weight(500), 4950);
        for bad in [r#"{"weight":5}"#, r#"{"weight":1001}"#] {
            assert!(block_io(bad).unwrap_err().contains("out of range"), "{bad}");
        }
        assert!(block_io(r#"{"weight":0}"#).unwrap().is_empty());
        let err =
            block_io(r#"{"throttleReadBpsDevice":[{"major":-1,"minor":0,"rate":1}]}"#).unwrap_err();
        assert!(err.contains("-1:0"), "{err}");
    }

    #[test]
    fn block_io_is_met_without_an_io_controller_or_the_device() {
        let writes = block_io(
            r#"{"weight":500,"leafWeight":300,
                "weightDevice":[{"major":8,"minor":0,"weight":200}],
                "throttleReadBpsDevice":[{"major":8,"minor":0,"rate":1048576}],
                "throttleWriteIOPSDevice":[{"major":254,"minor":0,"rate":0}]}"#,
        )
        .unwrap();
        assert!(writes.iter().all(|w| !w.needs_cgroup()));
        // Today's guest: no io controller; 254:0 is its own root disk.
        let guest = Fake::new("io-none", &[], &["254:0"]);
        guest.apply(&writes).unwrap();
        // An io controller without BFQ: the weight is converted, the
        // device weight is dropped (as runc does), and only the device the
        // guest has is throttled.
        let io = Fake::new("io-weight", &["io.weight", "io.max"], &["254:0"]);
        io.apply(&writes).unwrap();
        assert_eq!(io.read("io.weight"), "4950");
        assert_eq!(io.read("io.max"), "254:0 wiops=max");
        // With BFQ, weights go there, per device too when it exists.
        let bfq = Fake::new(
            "io-bfq",
            &["io.bfq.weight", "io.weight", "io.max"],
            &["8:0"],
        );
        bfq.apply(&writes).unwrap();
        assert_eq!(bfq.read("io.weight"), "");
        assert_eq!(bfq.read("io.bfq.weight"), "8:0 200");
        assert_eq!(bfq.read("io.max"), "8:0 rbps=1048576");
    }
}
