//! The agent's translation of a container's OCI spec into a plan
//! (agent/src/container/spec.rs, with its mount options, seccomp and
//! cgroup parts): any spec the JSON admits is planned or refused with a
//! message, never a panic, and a plan never points a sysctl write outside
//! /proc/sys.
#![no_main]

use std::path::{Component, Path};

use libfuzzer_sys::fuzz_target;
use runvm_agent_api::oci::Spec;
use runvm_fuzz::container::{cgroups, procattrs, spec};

fuzz_target!(|data: &[u8]| {
    let Ok(spec) = serde_json::from_slice::<Spec>(data) else {
        return;
    };
    let inherited = [(
        "GLIBC_TUNABLES".to_string(),
        "glibc.cpu.x86_avx=0".to_string(),
    )];
    if let Some(process) = &spec.process {
        let _ = spec::process_plan(process, &inherited);
        let _ = procattrs::plan(process);
    }
    if let Some(resources) = spec.linux.as_ref().and_then(|l| l.resources.as_ref()) {
        let _ = cgroups::render(resources);
    }
    let Ok(plan) = spec::container_plan(&spec, Path::new("/run/c/rootfs"), &inherited) else {
        return;
    };
    for (path, _) in &plan.sysctl {
        let rest = path
            .strip_prefix("/proc/sys")
            .expect("sysctl under /proc/sys");
        assert!(
            rest.components().all(|c| matches!(c, Component::Normal(_))),
            "sysctl path {} leaves /proc/sys",
            path.display()
        );
    }
});
