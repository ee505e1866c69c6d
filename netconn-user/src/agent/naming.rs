//! Names a person recognises for a network namespace, found once when the
//! namespace appears: `host` for the initial one, its `ip netns` name, the
//! container a member process belongs to (from its cgroup path), else the
//! pid and command of a process inside.

use std::fs;

use crate::{kernel::netns::Found, proto::Container};

/// The name and container of one namespace.
pub fn describe(found: &Found, host_inode: Option<u32>) -> (String, Option<Container>) {
    let container = found
        .pid
        .and_then(|pid| fs::read_to_string(format!("/proc/{pid}/cgroup")).ok())
        .and_then(|text: String| container_of(&text));
    let name = if Some(found.inode) == host_inode {
        "host".to_string()
    } else if let Some(ip_name) = &found.ip_name {
        ip_name.clone()
    } else if let Some(c) = &container {
        format!("{}:{}", c.runtime, short_id(&c.id))
    } else if let Some(pid) = found.pid {
        let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        format!("pid {pid} ({})", comm.trim())
    } else {
        format!("netns {}", found.inode)
    };
    (name, container)
}

/// Docker and friends show 12 hex digits; pod UIDs stay whole.
pub fn short_id(id: &str) -> &str {
    if id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        &id[..12]
    } else {
        id
    }
}

/// The container of a process, from its `/proc/PID/cgroup`. The cgroup v2
/// line (`0::`) is preferred; on hybrid hosts the v1 lines name the same
/// container.
pub fn container_of(cgroup_file: &str) -> Option<Container> {
    let mut lines: Vec<&str> = cgroup_file.lines().collect();
    lines.sort_by_key(|l| !l.starts_with("0::"));
    lines.into_iter().find_map(|line| {
        let path = line.splitn(3, ':').nth(2)?;
        container_of_path(path)
    })
}

/// Recognises the cgroup paths container runtimes create:
/// - Docker: `docker-<64hex>.scope` (systemd driver), `/docker/<64hex>`;
/// - containerd CRI: `cri-containerd-<64hex>.scope`;
/// - CRI-O: `crio-<64hex>.scope` (and `crio-conmon-` for its monitor: skipped);
/// - podman: `libpod-<64hex>.scope`, `/libpod_parent/libpod-<64hex>`;
/// - systemd-nspawn: `machine.slice/systemd-nspawn@<name>.service`;
/// - Kubernetes pods: `kubepods-...-pod<uid>.slice` or `/kubepods/<qos>/pod<uid>/`
///   (a container id inside a pod wins over the pod).
fn container_of_path(path: &str) -> Option<Container> {
    let mut pod = None;
    let mut found = None;
    for part in path.split('/').filter(|p| !p.is_empty()) {
        let part = part.strip_suffix(".scope").unwrap_or(part);
        let id_after = |prefix: &str| {
            part.strip_prefix(prefix)
                .filter(|id| id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()))
                .map(str::to_owned)
        };
        if let Some(id) = id_after("docker-") {
            found = Some(("docker", id));
        } else if let Some(id) = id_after("cri-containerd-") {
            found = Some(("containerd", id));
        } else if let Some(id) = id_after("crio-") {
            found = Some(("cri-o", id));
        } else if let Some(id) = id_after("libpod-") {
            found = Some(("podman", id));
        } else if let Some(name) = part
            .strip_prefix("systemd-nspawn@")
            .and_then(|p| p.strip_suffix(".service"))
        {
            found = Some(("systemd-nspawn", name.to_string()));
        } else if let Some(uid) = pod_uid(part) {
            pod = Some(uid);
        } else if part.len() == 64 && part.bytes().all(|b| b.is_ascii_hexdigit()) {
            // cgroupfs drivers: /docker/<id>, /kubepods/.../pod<uid>/<id>
            let runtime = if path.contains("/docker/") {
                "docker"
            } else if path.contains("kubepods") {
                "kubernetes"
            } else {
                "container"
            };
            found = Some((runtime, part.to_string()));
        }
    }
    match (found, pod) {
        (Some((runtime, id)), Some(pod)) => Some(Container {
            runtime: runtime.to_string(),
            id,
            pod: Some(pod),
        }),
        (Some((runtime, id)), None) => Some(Container {
            runtime: runtime.to_string(),
            id,
            pod: None,
        }),
        (None, Some(pod)) => Some(Container {
            runtime: "kubernetes".to_string(),
            id: pod.clone(),
            pod: Some(pod),
        }),
        (None, None) => None,
    }
}

/// `kubepods-burstable-pod<uid>.slice` (systemd, dashes for the uid's
/// dashes escaped as underscores) or `pod<uid>` (cgroupfs).
fn pod_uid(part: &str) -> Option<String> {
    let part = part.strip_suffix(".slice").unwrap_or(part);
    let start = part.rfind("pod")?;
    if start > 0 && !part.starts_with("kubepods") {
        return None;
    }
    let uid = part[start + 3..].replace('_', "-");
    let is_uid = uid.len() == 36
        && uid.bytes().enumerate().all(|(i, b)| {
            matches!(i, 8 | 13 | 18 | 23) == (b == b'-') && (b == b'-' || b.is_ascii_hexdigit())
        });
    is_uid.then_some(uid)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const UID: &str = "1f2e3d4c-5b6a-4798-8a7b-6c5d4e3f2a1b";

    fn c(text: &str) -> Option<(String, String, Option<String>)> {
        container_of(text).map(|c| (c.runtime, c.id, c.pod))
    }

    #[test]
    fn runtimes_are_recognised_by_their_cgroup_paths() {
        let id = ID.to_string();
        assert_eq!(
            c(&format!("0::/system.slice/docker-{ID}.scope\n")),
            Some(("docker".into(), id.clone(), None))
        );
        assert_eq!(
            c(&format!("12:pids:/docker/{ID}\n0::/docker/{ID}\n")),
            Some(("docker".into(), id.clone(), None))
        );
        assert_eq!(
            c(&format!("0::/system.slice/cri-containerd-{ID}.scope\n")),
            Some(("containerd".into(), id.clone(), None))
        );
        assert_eq!(
            c(&format!("0::/machine.slice/libpod-{ID}.scope/container\n")),
            Some(("podman".into(), id.clone(), None))
        );
        assert_eq!(
            c("0::/machine.slice/systemd-nspawn@web1.service/payload\n"),
            Some(("systemd-nspawn".into(), "web1".into(), None))
        );
        let k8s = format!(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/crio-{ID}.scope\n",
            UID.replace('-', "_")
        );
        assert_eq!(
            c(&k8s),
            Some(("cri-o".into(), id.clone(), Some(UID.into())))
        );
        assert_eq!(
            c(&format!("0::/kubepods/besteffort/pod{UID}/\n")),
            Some(("kubernetes".into(), UID.into(), Some(UID.into())))
        );
        assert_eq!(c("0::/user.slice/user-0.slice/session-1.scope\n"), None);
        assert_eq!(c("0::/\n"), None);
        assert_eq!(c("0::/system.slice/docker-abc.scope\n"), None);
    }

    #[test]
    fn names_prefer_host_then_ip_name_then_container_then_pid() {
        let found = Found {
            inode: 7,
            pid: None,
            ip_name: Some("blue".into()),
            path: "/run/netns/blue".into(),
        };
        assert_eq!(describe(&found, Some(7)).0, "host");
        assert_eq!(describe(&found, Some(8)).0, "blue");
        let own = Found {
            inode: 9,
            pid: Some(std::process::id()),
            ip_name: None,
            path: "/proc/self/ns/net".into(),
        };
        assert!(
            describe(&own, None)
                .0
                .starts_with(&format!("pid {} (", std::process::id()))
        );
        assert_eq!(short_id(ID), "0123456789ab");
    }
}
