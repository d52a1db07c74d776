//! The pods of this node, by the uid their cgroups carry: a kube-rs
//! `runtime::watcher` of every namespace's pods with
//! `spec.nodeName=<node>` (as kubewatch.rs watches the apiserver pods),
//! kept as the few fields attribution needs, never the objects.
//!
//! Bounded: at most `max_pods` pods (a node runs 110 by default) and
//! `MAX_CONTAINERS` containers each; a pod over the bound is not kept and
//! is counted. A deleted pod is kept `linger` longer, because the events of
//! its last connections are named after its deletion arrives.
//!
//! Blind spots: a pod created moments ago is named once the watch delivers
//! it (its cgroup may carry traffic first: the event then has the pod uid
//! only); a pod whose cgroup the watch never saw (this node's name given
//! wrong, RBAC refusing the list) has the uid only too.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api,
    runtime::{WatchStreamExt as _, watcher},
};
use tokio::sync::watch;

use crate::sources::{
    cgroup::layout::{Runtime, valid_uid},
    kubewatch::{Credentials, client_for},
};

/// Containers kept per pod (init and ephemeral ones included).
pub const MAX_CONTAINERS: usize = 64;

/// The annotation a static pod's mirror carries: the uid kubelet uses for
/// the static pod itself (and its cgroup), not the mirror's `metadata.uid`.
const MIRROR: &str = "kubernetes.io/config.mirror";

/// One container of a pod, from its status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerInfo {
    pub id: String,
    pub name: String,
    pub runtime: Runtime,
}

/// What attribution needs of a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    /// The uid its cgroup carries (see [`cgroup_uid`]).
    pub cgroup_uid: String,
    /// `metadata.uid` of the API object.
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub node: String,
    pub containers: Vec<ContainerInfo>,
}

/// The uid kubelet names `p`'s cgroup with: the mirror annotation for a
/// static pod, else `metadata.uid`.
pub fn cgroup_uid(p: &Pod) -> Option<String> {
    let md = &p.metadata;
    md.annotations
        .as_ref()
        .and_then(|a| a.get(MIRROR))
        .filter(|m| valid_uid(m))
        .or(md.uid.as_ref())
        .cloned()
}

/// `p` as kept, when it runs on `node` (checked here too: a server that
/// ignores the field selector must not fill the table with other nodes').
pub fn pod_info(p: &Pod, node: &str) -> Option<PodInfo> {
    let on = p.spec.as_ref().and_then(|s| s.node_name.as_deref());
    if on != Some(node) {
        return None;
    }
    let md = &p.metadata;
    let status = p.status.as_ref();
    let containers = status
        .into_iter()
        .flat_map(|s| {
            [
                &s.container_statuses,
                &s.init_container_statuses,
                &s.ephemeral_container_statuses,
            ]
        })
        .flatten()
        .flatten()
        .filter_map(|c| {
            let (scheme, id) = c.container_id.as_deref()?.split_once("://")?;
            Some(ContainerInfo {
                id: id.to_string(),
                name: c.name.clone(),
                runtime: Runtime::from_scheme(scheme),
            })
        })
        .take(MAX_CONTAINERS)
        .collect();
    Some(PodInfo {
        cgroup_uid: cgroup_uid(p)?,
        uid: md.uid.clone()?,
        namespace: md.namespace.clone()?,
        name: md.name.clone()?,
        node: node.to_string(),
        containers,
    })
}

#[derive(Debug)]
struct Inner {
    pods: HashMap<String, (Arc<PodInfo>, Option<Instant>)>,
    max_pods: usize,
    linger: Duration,
    over_limit: u64,
    up: bool,
}

/// The pods of this node by cgroup uid, shared between the watcher and the
/// attribution.
#[derive(Debug, Clone)]
pub struct NodePods(Arc<RwLock<Inner>>);

impl NodePods {
    /// An empty table of at most `max_pods`, keeping deleted pods `linger`.
    pub fn new(max_pods: usize, linger: Duration) -> NodePods {
        NodePods(Arc::new(RwLock::new(Inner {
            pods: HashMap::new(),
            max_pods,
            linger,
            over_limit: 0,
            up: false,
        })))
    }

    /// The pod whose cgroup carries `cgroup_uid`.
    pub fn get(&self, cgroup_uid: &str) -> Option<Arc<PodInfo>> {
        let g = self.0.read().ok()?;
        g.pods.get(cgroup_uid).map(|(p, _)| Arc::clone(p))
    }

    /// Pods kept now (deleted ones still lingering included).
    pub fn len(&self) -> usize {
        self.0.read().map(|g| g.pods.len()).unwrap_or(0)
    }

    /// Whether none is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Pods not kept because the table was full.
    pub fn over_limit(&self) -> u64 {
        self.0.read().map(|g| g.over_limit).unwrap_or(0)
    }

    /// Whether the last answer of the API was good.
    pub fn up(&self) -> bool {
        self.0.read().is_ok_and(|g| g.up)
    }

    /// Keeps `p` (replacing what was kept under its uid).
    pub fn set(&self, p: PodInfo, now: Instant) {
        let Ok(mut g) = self.0.write() else { return };
        let linger = g.linger;
        g.pods
            .retain(|_, (_, gone)| gone.is_none_or(|t| now.duration_since(t) < linger));
        if !g.pods.contains_key(&p.cgroup_uid) && g.pods.len() >= g.max_pods {
            // Full: a deleted pod makes room before a live one is refused.
            let oldest = g
                .pods
                .iter()
                .filter_map(|(k, (_, gone))| gone.map(|t| (t, k.clone())))
                .min();
            match oldest {
                Some((_, k)) => {
                    g.pods.remove(&k);
                }
                None => {
                    g.over_limit += 1;
                    return;
                }
            }
        }
        g.pods.insert(p.cgroup_uid.clone(), (Arc::new(p), None));
    }

    /// Marks the pod deleted: kept for `linger`, then dropped.
    pub fn delete(&self, cgroup_uid: &str, now: Instant) {
        if let Ok(mut g) = self.0.write()
            && let Some((_, gone)) = g.pods.get_mut(cgroup_uid)
        {
            gone.get_or_insert(now);
        }
    }

    /// After a (re-)list: the pods not in `listed` were deleted meanwhile.
    fn keep_only(&self, listed: &HashSet<String>, now: Instant) {
        if let Ok(mut g) = self.0.write() {
            for (k, (_, gone)) in g.pods.iter_mut() {
                if !listed.contains(k) {
                    gone.get_or_insert(now);
                }
            }
        }
    }

    fn set_up(&self, up: bool) {
        if let Ok(mut g) = self.0.write() {
            g.up = up;
        }
    }
}

/// Watches the pods of `node` into `pods` until stopped; never returns an
/// error (a failing API is logged once and retried; attribution goes on
/// with pod uids only).
pub async fn watch_node_pods(
    credentials: Credentials,
    node: String,
    pods: NodePods,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let what = format!("pods of node {node} ({})", credentials.describe());
    let mut warned = false;
    let client = loop {
        let built = tokio::select! {
            c = client_for(&credentials, None) => c,
            _ = stop.changed() => return Ok(()),
        };
        match built {
            Ok(c) => break c,
            Err(e) => down(&what, &format!("{e:#}"), &pods, &mut warned),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            _ = stop.changed() => return Ok(()),
        }
    };
    let api: Api<Pod> = Api::all(client);
    let config = watcher::Config::default()
        .fields(&format!("spec.nodeName={node}"))
        .timeout(290);
    let mut stream = watcher(api, config).default_backoff().boxed();
    let mut listed: Option<HashSet<String>> = None;
    loop {
        let ev = tokio::select! {
            ev = stream.next() => ev,
            _ = stop.changed() => return Ok(()),
        };
        let Some(ev) = ev else { return Ok(()) };
        let ev = match ev {
            Ok(ev) => ev,
            Err(e) => {
                down(&what, &e, &pods, &mut warned);
                continue;
            }
        };
        pods.set_up(true);
        warned = false;
        let now = Instant::now();
        match ev {
            watcher::Event::Init => listed = Some(HashSet::new()),
            watcher::Event::InitApply(p) => {
                if let Some(info) = pod_info(&p, &node) {
                    if let Some(l) = listed.as_mut() {
                        l.insert(info.cgroup_uid.clone());
                    }
                    pods.set(info, now);
                }
            }
            watcher::Event::InitDone => {
                pods.keep_only(&listed.take().unwrap_or_default(), now);
            }
            watcher::Event::Apply(p) => {
                if let Some(info) = pod_info(&p, &node) {
                    pods.set(info, now);
                }
            }
            watcher::Event::Delete(p) => {
                if let Some(u) = cgroup_uid(&p) {
                    pods.delete(&u, now);
                }
            }
        }
    }
}

fn down(what: &str, e: &dyn std::fmt::Display, pods: &NodePods, warned: &mut bool) {
    pods.set_up(false);
    if !*warned {
        tracing::warn!("{what}: {e}; retrying");
        *warned = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, uid: &str, node: &str, extra: serde_json::Value) -> Pod {
        let mut v = serde_json::json!({
            "metadata": {"name": name, "namespace": "team-a", "uid": uid},
            "spec": {"nodeName": node, "containers": []},
            "status": {"containerStatuses": [
                {"name": "app", "containerID": format!("containerd://{}", "c".repeat(64)),
                 "image": "", "imageID": "", "ready": true, "restartCount": 0},
                {"name": "waiting", "image": "", "imageID": "", "ready": false, "restartCount": 0}
            ]}
        });
        if let (Some(m), Some(e)) = (v["metadata"].as_object_mut(), extra.as_object()) {
            m.extend(e.clone());
        }
        serde_json::from_value(v).expect("pod")
    }

    #[test]
    fn pods_of_this_node_with_their_containers_and_mirror_uids() {
        let p = pod("web-0", "u1", "n1", serde_json::json!({}));
        let info = pod_info(&p, "n1").expect("on n1");
        assert_eq!(
            (
                info.cgroup_uid.as_str(),
                info.namespace.as_str(),
                info.name.as_str()
            ),
            ("u1", "team-a", "web-0")
        );
        assert_eq!(
            info.containers,
            vec![ContainerInfo {
                id: "c".repeat(64),
                name: "app".into(),
                runtime: Runtime::Containerd
            }],
            "a container not started has no id"
        );
        assert_eq!(pod_info(&p, "n2"), None, "another node's pod");
        let hash = "7f9c2ba4e88f827d616045507605853e";
        let mirror = pod(
            "kube-apiserver-n1",
            "u2",
            "n1",
            serde_json::json!({"annotations": {MIRROR: hash}}),
        );
        let info = pod_info(&mirror, "n1").expect("mirror");
        assert_eq!((info.cgroup_uid.as_str(), info.uid.as_str()), (hash, "u2"));
    }

    #[test]
    fn table_is_bounded_and_deleted_pods_linger() {
        let t0 = Instant::now();
        let pods = NodePods::new(2, Duration::from_secs(60));
        let info = |u: &str| pod_info(&pod(u, u, "n", serde_json::json!({})), "n").expect("pod");
        pods.set(info("a"), t0);
        pods.set(info("b"), t0);
        pods.set(info("c"), t0);
        assert_eq!((pods.len(), pods.over_limit()), (2, 1));
        assert!(pods.get("c").is_none());
        pods.delete("a", t0);
        assert_eq!(pods.get("a").map(|p| p.name.clone()), Some("a".into()));
        // Full, but a deleted pod makes room.
        pods.set(info("c"), t0 + Duration::from_secs(1));
        assert!(pods.get("a").is_none() && pods.get("c").is_some());
        pods.delete("b", t0);
        pods.set(info("c"), t0 + Duration::from_secs(61));
        assert!(pods.get("b").is_none(), "lingered its minute");
    }
}
