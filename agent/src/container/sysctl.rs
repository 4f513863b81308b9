//! Which `linux.sysctl` entries a container may set: runc's rule, only
//! those that a namespace of the container's own scopes. Every other
//! sysctl is the guest kernel's, shared with the agent and every other
//! container of the VM. Pure: tested on the host.

/// The container's namespaces that scope sysctls (created or joined).
#[derive(Debug, Clone, Copy, Default)]
pub struct Scopes {
    pub ipc: bool,
    /// A network namespace in the spec. The VM is the pod's sandbox: a
    /// container whose spec asks for one may run in the guest's (see
    /// `spec::container_plan`), which is then the pod's alone.
    pub net: bool,
    pub uts: bool,
    /// The spec sets `hostname`, which a `kernel.hostname` would contradict.
    pub hostname: bool,
}

/// IPC-namespaced sysctls: SysV message queues, semaphores, shared memory.
fn is_ipc(name: &str) -> bool {
    ["kernel.msg", "kernel.sem", "kernel.shm"]
        .iter()
        .any(|p| name.starts_with(p))
        || name.starts_with("fs.mqueue.")
}

/// Checks one sysctl `key` (dots or slashes between its parts).
pub fn check(key: &str, scopes: Scopes) -> Result<(), String> {
    let name = key.replace('/', ".");
    let (ok, needs) = if is_ipc(&name) {
        (scopes.ipc, "an IPC namespace")
    } else if name.starts_with("net.") {
        (scopes.net, "a network namespace")
    } else if name == "kernel.domainname" || name == "kernel.hostname" {
        if name == "kernel.hostname" && scopes.hostname {
            return Err(format!(
                "sysctl {key:?} conflicts with the spec's hostname; set only one"
            ));
        }
        (scopes.uts, "a UTS namespace")
    } else {
        return Err(format!(
            "sysctl {key:?} is not namespaced: it would change the whole guest, which runvm refuses"
        ));
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "sysctl {key:?} needs {needs} of the container's own (linux.namespaces)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: Scopes = Scopes {
        ipc: true,
        net: true,
        uts: true,
        hostname: false,
    };

    #[test]
    fn namespaced_sysctls_pass_with_their_namespace() {
        for key in [
            "kernel.msgmax",
            "kernel.msgmnb",
            "kernel.msgmni",
            "kernel.sem",
            "kernel.shmall",
            "kernel.shmmax",
            "kernel.shmmni",
            "kernel.shm_rmid_forced",
            "fs.mqueue.msg_max",
            "fs/mqueue/queues_max",
            "net.ipv4.ip_forward",
            "net.ipv4.ip_unprivileged_port_start",
            "net/core/somaxconn",
            "kernel.domainname",
            "kernel.hostname",
        ] {
            assert_eq!(check(key, ALL), Ok(()), "{key}");
        }
    }

    #[test]
    fn without_their_namespace_they_are_refused_by_name() {
        let none = Scopes::default();
        for (key, needs) in [
            ("kernel.shmmax", "IPC"),
            ("fs.mqueue.msg_max", "IPC"),
            ("net.ipv4.ip_forward", "network"),
            ("kernel.domainname", "UTS"),
        ] {
            let e = check(key, none).unwrap_err();
            assert!(e.contains(key) && e.contains(needs), "{e}");
        }
        let e = check(
            "kernel.hostname",
            Scopes {
                hostname: true,
                ..ALL
            },
        )
        .unwrap_err();
        assert!(e.contains("hostname"), "{e}");
    }

    #[test]
    fn the_guests_own_sysctls_are_refused() {
        for key in [
            "kernel.randomize_va_space",
            "vm.overcommit_memory",
            "kernel.pid_max",
            "fs.file-max",
            "kernel.core_pattern",
            "user.max_user_namespaces",
            "netfoo.x",
            "kernel.ostype",
        ] {
            let e = check(key, ALL).unwrap_err();
            assert!(e.contains(key) && e.contains("not namespaced"), "{e}");
        }
    }
}
