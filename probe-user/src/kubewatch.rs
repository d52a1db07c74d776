//! The apiserver pods' phase and readiness from the Kubernetes API (kube-rs):
//! seed 000's "is the kube-apiserver pod Running" gauge, and an input to the
//! correlation. A list, then a watch from its resourceVersion; on any error
//! the watcher says so once, waits and starts over. Credentials never reach
//! logs, events or metrics: only the kubeconfig's path is named.

use std::{path::PathBuf, sync::Arc, time::Duration};

use drainwatch_correlate::{Obs, Observation, Source};
use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client, Config,
    api::{ListParams, WatchEvent, WatchParams},
    config::{KubeConfigOptions, Kubeconfig},
};
use tokio::sync::{mpsc, watch};

use crate::{httpcheck::boot_ns, kubeconfig::kubeconfig_error, metrics::Metrics};

/// Which pods to watch, and with which credentials.
#[derive(Debug, Clone)]
pub struct PodWatch {
    /// A kubeconfig file; `None` means the in-cluster service account.
    pub kubeconfig: Option<PathBuf>,
    pub namespace: String,
    pub selector: String,
    /// Only pods on this node (`spec.nodeName`), when known.
    pub node: Option<String>,
}

async fn client(w: &PodWatch) -> anyhow::Result<Client> {
    use anyhow::Context as _;
    let config = match &w.kubeconfig {
        Some(path) => {
            let what = format!("kubeconfig {}", path.display());
            let kc = Kubeconfig::read_from(path).map_err(|e| kubeconfig_error(&what, &e))?;
            Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(|e| kubeconfig_error(&what, &e))?
        }
        None => Config::incluster().context("in-cluster Kubernetes configuration")?,
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
    let mut last: std::collections::HashMap<String, (bool, bool)> = Default::default();
    let mut warned = false;
    loop {
        let round = async {
            let api: Api<Pod> = Api::namespaced(client(&w).await?, &w.namespace);
            let mut lp = ListParams::default().labels(&w.selector);
            let mut wp = WatchParams::default().labels(&w.selector).timeout(290);
            if let Some(node) = &w.node {
                lp = lp.fields(&format!("spec.nodeName={node}"));
                wp = wp.fields(&format!("spec.nodeName={node}"));
            }
            let list = api.list(&lp).await?;
            metrics.source_up.with_label_values(&["kube"]).set(1);
            for p in &list.items {
                observe(p, &metrics, &obs, &mut last).await;
            }
            let rv = list.metadata.resource_version.unwrap_or_else(|| "0".into());
            let mut stream = api.watch(&wp, &rv).await?.boxed();
            while let Some(ev) = stream.next().await {
                match ev? {
                    WatchEvent::Added(p) | WatchEvent::Modified(p) => {
                        observe(&p, &metrics, &obs, &mut last).await
                    }
                    WatchEvent::Deleted(p) => {
                        let name = p.metadata.name.unwrap_or_default();
                        metrics.pod_running.with_label_values(&[&name]).set(0);
                        metrics.pod_ready.with_label_values(&[&name]).set(0);
                        last.remove(&name);
                    }
                    WatchEvent::Bookmark(_) => {}
                    WatchEvent::Error(e) => anyhow::bail!("watch error: {}", e.message),
                }
            }
            anyhow::Ok(())
        };
        let result = tokio::select! {
            r = round => r,
            _ = stop.changed() => return Ok(()),
        };
        if let Err(e) = result {
            metrics.source_up.with_label_values(&["kube"]).set(0);
            if !warned {
                tracing::warn!("pod watcher ({}): {e:#}; retrying every 2 s", w.namespace);
                warned = true;
            }
        } else {
            warned = false;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            _ = stop.changed() => return Ok(()),
        }
    }
}

async fn observe(
    p: &Pod,
    metrics: &Metrics,
    obs: &mpsc::Sender<Observation>,
    last: &mut std::collections::HashMap<String, (bool, bool)>,
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
            })
            .await;
    }
}
