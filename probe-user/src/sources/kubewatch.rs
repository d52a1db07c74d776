//! The apiserver pods' phase and readiness from the Kubernetes API (kube-rs):
//! an "is the kube-apiserver pod Running" gauge, and an input to the
//! correlation. kube-rs's `runtime::watcher` lists, then watches from the
//! list's resourceVersion with bookmarks, re-lists after a 410 Gone, and backs
//! off on errors; a re-list also forgets pods deleted while the watch was
//! down. Credentials never reach logs, events or metrics: only the
//! kubeconfig's path is named.

use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use drainwatch_correlate::{Obs, Observation, Source};
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use kube::{
    Api, Client, Config,
    config::{KubeConfigOptions, Kubeconfig},
    runtime::{WatchStreamExt as _, watcher},
};
use tokio::sync::{mpsc, watch};

use crate::{
    export::metrics::Metrics,
    sources::{http::boot_ns, kubeconfig::kubeconfig_error},
};

/// Where the pod watcher's credentials come from, in the order kubectl and
/// client-go's `Config::infer` try them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    /// `--kubeconfig FILE`.
    File(PathBuf),
    /// `$KUBECONFIG`: one or more files, merged (the first to set a value wins).
    Env(Vec<PathBuf>),
    /// `~/.kube/config`.
    Home(PathBuf),
    /// The pod's service account.
    InCluster,
}

impl Credentials {
    /// Chooses as `Config::infer` does: the flag, then `$KUBECONFIG`, then
    /// `~/.kube/config` if it exists, then the service account when running
    /// in a pod; `None` when there is none of these. Pure: the environment
    /// and the file check are arguments.
    pub fn choose(
        flag: Option<PathBuf>,
        kubeconfig_env: Option<std::ffi::OsString>,
        home: Option<PathBuf>,
        in_pod: bool,
        exists: impl Fn(&std::path::Path) -> bool,
    ) -> Option<Credentials> {
        if let Some(f) = flag {
            return Some(Credentials::File(f));
        }
        if let Some(v) = kubeconfig_env {
            let paths: Vec<PathBuf> = std::env::split_paths(&v)
                .filter(|p| !p.as_os_str().is_empty())
                .collect();
            if !paths.is_empty() {
                return Some(Credentials::Env(paths));
            }
        }
        if let Some(h) = home.map(|h| h.join(".kube").join("config"))
            && exists(&h)
        {
            return Some(Credentials::Home(h));
        }
        in_pod.then_some(Credentials::InCluster)
    }

    /// How the log names it.
    pub fn describe(&self) -> String {
        let list = |p: &[PathBuf]| {
            p.iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(":")
        };
        match self {
            Credentials::File(p) => format!("--kubeconfig {}", p.display()),
            Credentials::Env(p) => format!("$KUBECONFIG {}", list(p)),
            Credentials::Home(p) => format!("kubeconfig {}", p.display()),
            Credentials::InCluster => "the pod's service account".to_string(),
        }
    }
}

/// Which pods to watch, and with which credentials.
#[derive(Debug, Clone)]
pub struct PodWatch {
    pub credentials: Credentials,
    pub namespace: String,
    pub selector: String,
    /// Only pods on this node (`spec.nodeName`), when known.
    pub node: Option<String>,
    /// The pods seen, for the Kubernetes Events about them.
    pub known: KnownPods,
}

/// The apiserver pods the watcher currently sees, as the references an
/// event's `regarding` takes (shared with `export::kube_events`).
#[derive(Debug, Clone, Default)]
pub struct KnownPods(Arc<std::sync::Mutex<std::collections::BTreeMap<String, ObjectReference>>>);

impl KnownPods {
    /// The pods seen, by name.
    pub fn list(&self) -> Vec<ObjectReference> {
        self.0
            .lock()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    fn set(&self, p: &Pod) {
        let r = ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: p.metadata.name.clone(),
            namespace: p.metadata.namespace.clone(),
            uid: p.metadata.uid.clone(),
            ..Default::default()
        };
        if let (Ok(mut m), Some(name)) = (self.0.lock(), r.name.clone()) {
            m.insert(name, r);
        }
    }

    fn remove(&self, name: &str) {
        if let Ok(mut m) = self.0.lock() {
            m.remove(name);
        }
    }
}

/// A client with the watcher's credentials (the events writer uses it too).
pub(crate) async fn client(w: &PodWatch) -> anyhow::Result<Client> {
    client_for(&w.credentials, None).await
}

/// A client with `credentials`, in kubeconfig `context` (the current one
/// when None), as kubectl makes one.
pub async fn client_for(
    credentials: &Credentials,
    context: Option<&str>,
) -> anyhow::Result<Client> {
    use anyhow::Context as _;
    let what = credentials.describe();
    let files: &[PathBuf] = match credentials {
        Credentials::File(p) | Credentials::Home(p) => std::slice::from_ref(p),
        Credentials::Env(p) => p,
        Credentials::InCluster => &[],
    };
    let config = if files.is_empty() {
        Config::incluster().context("in-cluster Kubernetes configuration")?
    } else {
        // Every file read bounded (the kubeconfig and what it points to),
        // then merged as kubectl merges $KUBECONFIG.
        let mut kc = Kubeconfig::default();
        for f in files {
            kc = kc
                .merge(crate::sources::kubeconfig::load(f)?)
                .map_err(|e| kubeconfig_error(&what, &e))?;
        }
        let options = KubeConfigOptions {
            context: context.map(str::to_string),
            ..KubeConfigOptions::default()
        };
        Config::from_custom_kubeconfig(kc, &options)
            .await
            .map_err(|e| kubeconfig_error(&what, &e))?
    };
    Client::try_from(config).map_err(|e| kubeconfig_error("Kubernetes client", &e))
}

fn running(p: &Pod) -> bool {
    p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
}

fn ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Watches the pods until stopped; never returns an error (the source's
/// health is exported instead, and kernel observation goes on).
pub async fn watch_pods(
    w: PodWatch,
    metrics: Arc<Metrics>,
    obs: mpsc::Sender<Observation>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut last: HashMap<String, (bool, bool)> = HashMap::new();
    let mut warned = false;
    // A client that cannot be built (a kubeconfig that is wrong or missing)
    // is retried: the file may be fixed or mounted later.
    let api: Api<Pod> = loop {
        let built = tokio::select! {
            c = client(&w) => c,
            _ = stop.changed() => return Ok(()),
        };
        match built {
            Ok(c) => break Api::namespaced(c, &w.namespace),
            Err(e) => source_down(&format!("{e:#}"), &w, &metrics, &mut warned),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            _ = stop.changed() => return Ok(()),
        }
    };
    let mut config = watcher::Config::default().labels(&w.selector).timeout(290);
    if let Some(node) = &w.node {
        config = config.fields(&format!("spec.nodeName={node}"));
    }
    let mut stream = watcher(api, config).default_backoff().boxed();
    // Pods seen since the last (re-)list started: at its end, the others were
    // deleted while the watch was down.
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
                source_down(&e, &w, &metrics, &mut warned);
                continue;
            }
        };
        metrics.source_up.with_label_values(&["kube"]).set(1);
        warned = false;
        match ev {
            watcher::Event::Init => listed = Some(HashSet::new()),
            watcher::Event::InitApply(p) => {
                if let Some(l) = listed.as_mut() {
                    l.insert(p.metadata.name.clone().unwrap_or_default());
                }
                w.known.set(&p);
                observe(&p, &metrics, &obs, &mut last).await;
            }
            watcher::Event::InitDone => {
                let keep = listed.take().unwrap_or_default();
                let gone: Vec<String> = last
                    .keys()
                    .filter(|n| !keep.contains(*n))
                    .cloned()
                    .collect();
                for name in gone {
                    w.known.remove(&name);
                    forget(&name, &metrics, &mut last);
                }
            }
            watcher::Event::Apply(p) => {
                w.known.set(&p);
                observe(&p, &metrics, &obs, &mut last).await
            }
            watcher::Event::Delete(p) => {
                let name = p.metadata.name.unwrap_or_default();
                w.known.remove(&name);
                forget(&name, &metrics, &mut last)
            }
        }
    }
}

/// The source is down: exported, and said once until it is up again.
fn source_down(e: &dyn std::fmt::Display, w: &PodWatch, metrics: &Metrics, warned: &mut bool) {
    metrics.source_up.with_label_values(&["kube"]).set(0);
    if !*warned {
        tracing::warn!("pod watcher ({}): {e}; retrying", w.namespace);
        *warned = true;
    }
}

fn forget(name: &str, metrics: &Metrics, last: &mut HashMap<String, (bool, bool)>) {
    metrics.pod_running.with_label_values(&[name]).set(0);
    metrics.pod_ready.with_label_values(&[name]).set(0);
    last.remove(name);
}

async fn observe(
    p: &Pod,
    metrics: &Metrics,
    obs: &mpsc::Sender<Observation>,
    last: &mut HashMap<String, (bool, bool)>,
) {
    let name = p.metadata.name.clone().unwrap_or_default();
    let now = (running(p), ready(p));
    metrics
        .pod_running
        .with_label_values(&[&name])
        .set(i64::from(now.0));
    metrics
        .pod_ready
        .with_label_values(&[&name])
        .set(i64::from(now.1));
    if last.insert(name.clone(), now).map(|prev| prev.0) != Some(now.0) {
        let _ = obs
            .send(Observation {
                id: 0,
                t_ns: boot_ns(),
                wall: None,
                instance: None,
                source: Source::Kube,
                kind: Obs::PodPhase { running: now.0 },
                who: None,
            })
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_in_the_order_kubectl_tries_them() {
        let home = Some(PathBuf::from("/root"));
        let yes = |_: &std::path::Path| true;
        let no = |_: &std::path::Path| false;
        let flag = Some(PathBuf::from("/etc/kubernetes/admin.conf"));
        assert_eq!(
            Credentials::choose(flag.clone(), Some("/a".into()), home.clone(), true, yes),
            Some(Credentials::File("/etc/kubernetes/admin.conf".into()))
        );
        assert_eq!(
            Credentials::choose(None, Some("/a::/b".into()), home.clone(), true, yes),
            Some(Credentials::Env(vec!["/a".into(), "/b".into()]))
        );
        // An empty $KUBECONFIG is as if unset.
        assert_eq!(
            Credentials::choose(None, Some("".into()), home.clone(), true, yes),
            Some(Credentials::Home("/root/.kube/config".into()))
        );
        assert_eq!(
            Credentials::choose(None, None, home.clone(), true, no),
            Some(Credentials::InCluster)
        );
        assert_eq!(Credentials::choose(None, None, home, false, no), None);
        assert_eq!(
            Credentials::choose(None, None, None, false, yes),
            None,
            "no home: no ~/.kube/config"
        );
    }
}
