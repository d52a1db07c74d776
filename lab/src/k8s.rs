//! The slice of the Kubernetes API the stand-in serves: discovery, and GET/LIST/WATCH of
//! configmaps and pods plus POST/PUT/DELETE of configmaps, POST of pods, pods'
//! port-forward (`portforward`, served by the HTTP layer), and events.k8s.io/v1 Events
//! (create, merge or strategic-merge PATCH, get, list, watch) validated as
//! kube-apiserver validates them (422 with a Status naming each field otherwise), kept
//! in memory; the same Events through core/v1 (`/api/v1/.../events`: get, list, watch),
//! converted as kube-apiserver converts them, so plain `kubectl get events` shows them;
//! discovery.k8s.io/v1 EndpointSlices (get, list, watch), of which there are only the
//! `kubernetes` Service's, as kube-apiserver's endpoint reconciler publishes them. Enough
//! for kubectl, client-go style clients, kube-rs and the Python client; no admission, no
//! auth beyond a bearer token check done by the caller.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Mutex;

use serde_json::{Value, json};
use tokio::sync::broadcast;

use crate::clock::{now_ns, rfc3339_s};

mod events;
pub mod portforward;

/// The resource kinds served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// v1 ConfigMap.
    ConfigMap,
    /// v1 Pod (read-only for clients).
    Pod,
    /// events.k8s.io/v1 Event.
    Event,
    /// discovery.k8s.io/v1 EndpointSlice (read-only for clients).
    EndpointSlice,
}

impl Kind {
    fn from_plural(p: &str) -> Option<Kind> {
        match p {
            "configmaps" => Some(Kind::ConfigMap),
            "pods" => Some(Kind::Pod),
            _ => None,
        }
    }
    fn plural(self) -> &'static str {
        match self {
            Kind::ConfigMap => "configmaps",
            Kind::Pod => "pods",
            Kind::Event => "events",
            Kind::EndpointSlice => "endpointslices",
        }
    }
    fn kind(self) -> &'static str {
        match self {
            Kind::ConfigMap => "ConfigMap",
            Kind::Pod => "Pod",
            Kind::Event => "Event",
            Kind::EndpointSlice => "EndpointSlice",
        }
    }
    fn api_version(self) -> &'static str {
        match self {
            Kind::Event => "events.k8s.io/v1",
            Kind::EndpointSlice => "discovery.k8s.io/v1",
            _ => "v1",
        }
    }
}

/// One change, as sent on a watch stream.
#[derive(Debug, Clone)]
pub struct Event {
    /// Resource version at which it happened.
    pub rv: u64,
    /// ADDED, MODIFIED or DELETED.
    pub kind_of_change: &'static str,
    /// Resource kind.
    pub kind: Kind,
    /// Namespace of the object.
    pub ns: String,
    /// The object after the change.
    pub object: Value,
}

#[derive(Debug, Default)]
struct Inner {
    rv: u64,
    uid: u64,
    objects: BTreeMap<(Kind, String, String), Value>,
    history: Vec<Event>,
}

/// The in-memory object store with a change feed for watches.
#[derive(Debug)]
pub struct Store {
    inner: Mutex<Inner>,
    feed: broadcast::Sender<Event>,
}

/// A parsed API request.
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// HTTP method.
    pub method: String,
    /// URL path.
    pub path: String,
    /// Raw query string.
    pub query: String,
    /// The Accept header.
    pub accept: String,
    /// The Content-Type header (a PATCH's kind of patch).
    pub content_type: String,
    /// Request body.
    pub body: Vec<u8>,
}

/// What the API layer answers.
#[derive(Debug)]
pub enum Reply {
    /// A complete JSON response.
    Json(u16, Value),
    /// A watch: events to send first, then the live feed filtered to this watch.
    Watch(Watch),
}

/// A watch being served.
#[derive(Debug)]
pub struct Watch {
    /// Events to send before live ones (replay from resourceVersion, or ADDED for all).
    pub initial: Vec<Event>,
    /// Live change feed (subscribed before the snapshot, so nothing is missed).
    pub feed: broadcast::Receiver<Event>,
    /// Only events of this kind,
    pub kind: Kind,
    /// in this namespace (None: all),
    pub ns: Option<String>,
    /// with this name (from fieldSelector metadata.name=),
    pub name: Option<String>,
    /// and these labels (labelSelector),
    pub labels: Vec<LabelReq>,
    /// and these fields (an Event's fieldSelector).
    pub fields: Vec<events::FieldReq>,
    /// Only events newer than this.
    pub after_rv: u64,
    /// timeoutSeconds asked by the client.
    pub timeout_secs: Option<u64>,
    /// Render objects as meta.k8s.io Table rows (kubectl's default printing).
    pub table: bool,
    /// Events in their core/v1 form (a watch through `/api/v1`).
    pub core: bool,
}

impl Watch {
    /// Whether a live event belongs to this watch.
    pub fn wants(&self, ev: &Event) -> bool {
        ev.kind == self.kind
            && ev.rv > self.after_rv
            && self.ns.as_ref().is_none_or(|n| *n == ev.ns)
            && self
                .name
                .as_ref()
                .is_none_or(|n| ev.object["metadata"]["name"] == n.as_str())
            && labels_match(&self.labels, &ev.object)
            && events::fields_match(&self.fields, &ev.object)
    }

    /// One line of the watch stream for `ev`.
    pub fn line(&self, ev: &Event) -> Vec<u8> {
        let object = if self.table {
            table(self.kind, std::slice::from_ref(&ev.object), ev.rv)
        } else if self.core {
            events::to_core(&ev.object)
        } else {
            ev.object.clone()
        };
        let mut l = serde_json::to_vec(&json!({"type": ev.kind_of_change, "object": object}))
            .unwrap_or_default();
        l.push(b'\n');
        l
    }
}

impl Default for Store {
    fn default() -> Self {
        Self::new()
    }
}

impl Store {
    /// An empty store.
    pub fn new() -> Self {
        let (feed, _) = broadcast::channel(1024);
        Store {
            inner: Mutex::new(Inner::default()),
            feed,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent data (every update is one
        // insert), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Creates the objects the lab's clients read: the apiserver's config configmap (as
    /// OpenShift keeps it, with `shutdown-delay-duration`), its own pod in
    /// `openshift-kube-apiserver`, `kube-root-ca.crt`, and the `kubernetes` Service's
    /// EndpointSlices in `default` with `endpoints` (what kube-apiserver publishes from
    /// its --advertise-address and --secure-port).
    pub fn populate(&self, instance: &str, shutdown_delay_s: f64, endpoints: &[SocketAddr]) {
        let ns = "openshift-kube-apiserver";
        let config = json!({"apiServerArguments": {"shutdown-delay-duration": [format!("{shutdown_delay_s}s")]}});
        let _ = self.upsert(
            Kind::ConfigMap,
            ns,
            json!({"metadata": {"name": "config"}, "data": {"config.yaml": config.to_string()}}),
            false,
        );
        let _ = self.upsert(Kind::Pod, ns, pod(instance, true), false);
        let _ = self.upsert(
            Kind::ConfigMap,
            "default",
            json!({"metadata": {"name": "kube-root-ca.crt"}, "data": {"note": "drainwatch lab"}}),
            false,
        );
        for slice in kubernetes_slices(endpoints) {
            let _ = self.upsert(Kind::EndpointSlice, "default", slice, false);
        }
    }

    /// Registers another master's apiserver pod, Running and Ready, as every apiserver
    /// of a cluster serves all of them.
    pub fn add_peer_pod(&self, instance: &str) {
        let _ = self.upsert(
            Kind::Pod,
            "openshift-kube-apiserver",
            pod(instance, true),
            false,
        );
    }

    /// Marks the stand-in's own pod Ready or not (visible to `kubectl get pods -w`).
    pub fn set_pod_ready(&self, instance: &str, ready: bool) {
        let _ = self.upsert(
            Kind::Pod,
            "openshift-kube-apiserver",
            pod(instance, ready),
            true,
        );
    }

    fn upsert(&self, kind: Kind, ns: &str, mut obj: Value, replace: bool) -> Result<Value, u16> {
        let name = obj["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if name.is_empty() {
            return Err(422);
        }
        let mut inner = self.lock();
        let key = (kind, ns.to_string(), name);
        let existing = inner.objects.get(&key).cloned();
        match (&existing, replace) {
            (Some(_), false) => return Err(409),
            (None, true) if kind == Kind::ConfigMap => return Err(404),
            _ => {}
        }
        inner.rv += 1;
        let rv = inner.rv;
        let (uid, created) = match &existing {
            Some(old) => (
                old["metadata"]["uid"].clone(),
                old["metadata"]["creationTimestamp"].clone(),
            ),
            None => {
                inner.uid += 1;
                (
                    json!(format!("00000000-0000-4000-8000-{:012x}", inner.uid)),
                    json!(rfc3339_s(now_ns())),
                )
            }
        };
        obj["apiVersion"] = json!(kind.api_version());
        obj["kind"] = json!(kind.kind());
        let md = &mut obj["metadata"];
        md["namespace"] = json!(ns);
        md["resourceVersion"] = json!(rv.to_string());
        md["uid"] = uid;
        md["creationTimestamp"] = created;
        inner.objects.insert(key, obj.clone());
        let ev = Event {
            rv,
            kind_of_change: if existing.is_some() {
                "MODIFIED"
            } else {
                "ADDED"
            },
            kind,
            ns: ns.to_string(),
            object: obj.clone(),
        };
        inner.history.push(ev.clone());
        // No receivers is fine: nobody is watching.
        let _ = self.feed.send(ev);
        Ok(obj)
    }

    fn delete(&self, kind: Kind, ns: &str, name: &str) -> Option<Value> {
        let mut inner = self.lock();
        let mut obj = inner
            .objects
            .remove(&(kind, ns.to_string(), name.to_string()))?;
        inner.rv += 1;
        let rv = inner.rv;
        obj["metadata"]["resourceVersion"] = json!(rv.to_string());
        let ev = Event {
            rv,
            kind_of_change: "DELETED",
            kind,
            ns: ns.to_string(),
            object: obj.clone(),
        };
        inner.history.push(ev.clone());
        let _ = self.feed.send(ev);
        Some(obj)
    }

    /// The stored object, if any.
    pub fn object(&self, kind: Kind, ns: &str, name: &str) -> Option<Value> {
        self.lock()
            .objects
            .get(&(kind, ns.to_string(), name.to_string()))
            .cloned()
    }

    /// Serves one API request.
    pub fn handle(&self, req: &Request) -> Reply {
        let q = parse_query(&req.query);
        let get = req.method == "GET";
        let segs: Vec<&str> = req.path.trim_matches('/').split('/').collect();
        match (req.method.as_str(), segs.as_slice()) {
            ("GET", ["version"]) => Reply::Json(200, version()),
            ("GET", ["api"]) => Reply::Json(
                200,
                json!({"kind": "APIVersions", "versions": ["v1"],
                    "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "kubernetes:6443"}]}),
            ),
            ("GET", ["apis"]) => Reply::Json(
                200,
                json!({"kind": "APIGroupList", "apiVersion": "v1",
                    "groups": [events_group(), discovery_group()]}),
            ),
            ("GET", ["apis", "discovery.k8s.io"]) => Reply::Json(200, discovery_group()),
            ("GET", ["apis", "discovery.k8s.io", "v1"]) => Reply::Json(200, discovery_resources()),
            ("GET", ["apis", "discovery.k8s.io", "v1", "endpointslices"]) => {
                self.list_or_watch(Kind::EndpointSlice, None, &q, &req.accept, false)
            }
            (
                "GET",
                [
                    "apis",
                    "discovery.k8s.io",
                    "v1",
                    "namespaces",
                    ns,
                    "endpointslices",
                ],
            ) => self.list_or_watch(Kind::EndpointSlice, Some(ns), &q, &req.accept, false),
            (
                "GET",
                [
                    "apis",
                    "discovery.k8s.io",
                    "v1",
                    "namespaces",
                    ns,
                    "endpointslices",
                    name,
                ],
            ) => self.get(Kind::EndpointSlice, ns, name, &req.accept),
            // Written by the apiserver itself only.
            (_, ["apis", "discovery.k8s.io", "v1", ..]) => method_not_allowed(),
            ("GET", ["apis", "events.k8s.io"]) => Reply::Json(200, events_group()),
            ("GET", ["apis", "events.k8s.io", "v1"]) => Reply::Json(200, events_resources()),
            ("GET", ["apis", "events.k8s.io", "v1", "events"]) => {
                self.list_or_watch(Kind::Event, None, &q, &req.accept, false)
            }
            // The same Events through core/v1, read-only here (drainwatch writes
            // events.k8s.io/v1; kubectl reads core/v1 by default).
            ("GET", ["api", "v1", "events"]) => {
                self.list_or_watch(Kind::Event, None, &q, &req.accept, true)
            }
            ("GET", ["api", "v1", "namespaces", ns, "events"]) => {
                self.list_or_watch(Kind::Event, Some(ns), &q, &req.accept, true)
            }
            ("GET", ["api", "v1", "namespaces", ns, "events", name]) => {
                match self.get(Kind::Event, ns, name, &req.accept) {
                    Reply::Json(200, o) if o["kind"] == "Event" => {
                        Reply::Json(200, events::to_core(&o))
                    }
                    other => other,
                }
            }
            (_, ["api", "v1", "events"] | ["api", "v1", "namespaces", _, "events", ..]) => {
                method_not_allowed()
            }
            (m, ["apis", "events.k8s.io", "v1", "namespaces", ns, "events"]) => match m {
                "GET" => self.list_or_watch(Kind::Event, Some(ns), &q, &req.accept, false),
                "POST" => match serde_json::from_slice::<Value>(&req.body) {
                    Ok(obj) => self.create_event(ns, obj),
                    Err(e) => bad_request(&e.to_string()),
                },
                _ => method_not_allowed(),
            },
            (
                m,
                [
                    "apis",
                    "events.k8s.io",
                    "v1",
                    "namespaces",
                    ns,
                    "events",
                    name,
                ],
            ) => match m {
                "GET" => self.get(Kind::Event, ns, name, &req.accept),
                "PATCH" => self.patch_event(ns, name, &req.content_type, &req.body),
                _ => method_not_allowed(),
            },
            ("GET", ["api", "v1"]) => Reply::Json(200, resource_list()),
            (_, ["api", "v1", plural]) if get => match Kind::from_plural(plural) {
                Some(kind) => self.list_or_watch(kind, None, &q, &req.accept, false),
                None => not_found(plural, ""),
            },
            (_, ["api", "v1", "namespaces", ns, plural]) => match Kind::from_plural(plural) {
                Some(kind) if get => self.list_or_watch(kind, Some(ns), &q, &req.accept, false),
                // Pods are created as given, status included: the lab plays
                // the scheduler and kubelet too (its drainwatch pods).
                Some(kind @ (Kind::ConfigMap | Kind::Pod)) if req.method == "POST" => {
                    match serde_json::from_slice::<Value>(&req.body) {
                        Ok(obj) => self.write_reply(kind, ns, obj, false, None),
                        Err(e) => bad_request(&e.to_string()),
                    }
                }
                Some(_) => method_not_allowed(),
                None => not_found(plural, ""),
            },
            (m, ["api", "v1", "namespaces", ns, plural, name]) => {
                let Some(kind) = Kind::from_plural(plural) else {
                    return not_found(plural, name);
                };
                match m {
                    "GET" => self.get(kind, ns, name, &req.accept),
                    "PUT" if kind == Kind::ConfigMap => {
                        match serde_json::from_slice::<Value>(&req.body) {
                            Ok(obj) => self.write_reply(kind, ns, obj, true, Some(name)),
                            Err(e) => bad_request(&e.to_string()),
                        }
                    }
                    "DELETE" if kind == Kind::ConfigMap => match self.delete(kind, ns, name) {
                        Some(o) => Reply::Json(200, o),
                        None => not_found(plural, name),
                    },
                    _ => method_not_allowed(),
                }
            }
            _ => Reply::Json(
                404,
                status(
                    404,
                    "NotFound",
                    &format!(
                        "the server could not find the requested resource ({})",
                        req.path
                    ),
                ),
            ),
        }
    }

    fn get(&self, kind: Kind, ns: &str, name: &str, accept: &str) -> Reply {
        let obj = self
            .lock()
            .objects
            .get(&(kind, ns.to_string(), name.to_string()))
            .cloned();
        match obj {
            Some(o) if wants_table(accept) => {
                let rv = rv_of(&o);
                Reply::Json(200, table(kind, &[o], rv))
            }
            Some(o) => Reply::Json(200, o),
            None => not_found(kind.plural(), name),
        }
    }

    /// POST of an events.k8s.io/v1 Event, validated as kube-apiserver's
    /// `ValidateEventCreate` does for this API version.
    fn create_event(&self, ns: &str, obj: Value) -> Reply {
        let name = obj["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if let Some(body_ns) = obj["metadata"]["namespace"].as_str()
            && body_ns != ns
        {
            return bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            );
        }
        if let Some(e) = events::decode_error(&obj) {
            return bad_request(&e);
        }
        let errs = events::validate_create(&obj, ns);
        if !errs.is_empty() {
            return Reply::Json(422, events::invalid_status(&name, &errs));
        }
        self.write_reply(Kind::Event, ns, obj, false, None)
    }

    /// PATCH of an Event: a JSON merge patch (RFC 7386), or a strategic merge patch,
    /// which for an Event's fields (no merge keys in lists) merges the same way;
    /// then `ValidateEventUpdate`'s checks against the stored object.
    fn patch_event(&self, ns: &str, name: &str, content_type: &str, body: &[u8]) -> Reply {
        let media = content_type.split(';').next().unwrap_or_default().trim();
        if !matches!(
            media,
            "application/merge-patch+json" | "application/strategic-merge-patch+json"
        ) {
            return Reply::Json(
                415,
                status(
                    415,
                    "UnsupportedMediaType",
                    &format!(
                        "the body of the request was in an unknown format - accepted media types include: application/merge-patch+json, application/strategic-merge-patch+json (got {media:?})"
                    ),
                ),
            );
        }
        let patch: Value = match serde_json::from_slice(body) {
            Ok(p) => p,
            Err(e) => return bad_request(&e.to_string()),
        };
        let Some(old) = self
            .lock()
            .objects
            .get(&(Kind::Event, ns.to_string(), name.to_string()))
            .cloned()
        else {
            return not_found("events", name);
        };
        let mut new = old.clone();
        events::merge_patch(&mut new, &patch);
        // The server owns these; a patch does not move the object.
        for k in [
            "name",
            "namespace",
            "uid",
            "creationTimestamp",
            "resourceVersion",
        ] {
            new["metadata"][k] = old["metadata"][k].clone();
        }
        if let Some(e) = events::decode_error(&new) {
            return bad_request(&e);
        }
        let mut errs = events::validate_legacy(&new, ns);
        errs.extend(events::validate_update(&new, &old));
        if !errs.is_empty() {
            return Reply::Json(422, events::invalid_status(name, &errs));
        }
        match self.upsert(Kind::Event, ns, new, true) {
            Ok(o) => Reply::Json(200, o),
            Err(_) => not_found("events", name),
        }
    }

    fn write_reply(
        &self,
        kind: Kind,
        ns: &str,
        obj: Value,
        replace: bool,
        url_name: Option<&str>,
    ) -> Reply {
        let name = obj["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if let Some(u) = url_name
            && u != name
        {
            return bad_request("the name of the object does not match the name on the URL");
        }
        match self.upsert(kind, ns, obj, replace) {
            Ok(o) => Reply::Json(if replace { 200 } else { 201 }, o),
            Err(409) => Reply::Json(
                409,
                status(
                    409,
                    "AlreadyExists",
                    &format!("{} \"{name}\" already exists", kind.plural()),
                ),
            ),
            Err(404) => not_found(kind.plural(), &name),
            Err(_) => Reply::Json(422, status(422, "Invalid", "metadata.name: Required value")),
        }
    }

    fn list_or_watch(
        &self,
        kind: Kind,
        ns: Option<&str>,
        q: &BTreeMap<String, String>,
        accept: &str,
        core: bool,
    ) -> Reply {
        let name = q
            .get("fieldSelector")
            .and_then(|f| f.strip_prefix("metadata.name="))
            .map(str::to_string);
        let labels = match q.get("labelSelector").map(|s| parse_label_selector(s)) {
            None => Vec::new(),
            Some(Ok(l)) => l,
            Some(Err(e)) => return bad_request(&e),
        };
        // Events are selected by their fields as kube-apiserver does (what
        // `kubectl describe` and `--field-selector` send); other kinds only
        // by `metadata.name`, their other fields ignored.
        let fields = match q.get("fieldSelector") {
            Some(f) if kind == Kind::Event => match events::parse_field_selector(f, core) {
                Ok(f) => f,
                Err(e) => return bad_request(&e),
            },
            _ => Vec::new(),
        };
        let matches = |k: &(Kind, String, String), v: &Value| {
            k.0 == kind
                && ns.is_none_or(|n| n == k.1)
                && name.as_ref().is_none_or(|n| *n == k.2)
                && labels_match(&labels, v)
                && events::fields_match(&fields, v)
        };
        let inner = self.lock();
        let watching = q
            .get("watch")
            .is_some_and(|w| w.eq_ignore_ascii_case("true") || w == "1");
        if !watching {
            let items: Vec<Value> = inner
                .objects
                .iter()
                .filter(|(k, v)| matches(k, v))
                .map(|(_, v)| v.clone())
                .collect();
            let rv = inner.rv;
            drop(inner);
            if wants_table(accept) {
                return Reply::Json(200, table(kind, &items, rv));
            }
            let (items, api_version) = if core {
                (items.iter().map(events::to_core).collect(), "v1")
            } else {
                (items, kind.api_version())
            };
            return Reply::Json(
                200,
                json!({"kind": format!("{}List", kind.kind()), "apiVersion": api_version,
                    "metadata": {"resourceVersion": rv.to_string()}, "items": items}),
            );
        }
        let since: u64 = q
            .get("resourceVersion")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut w = Watch {
            initial: Vec::new(),
            feed: self.feed.subscribe(),
            kind,
            ns: ns.map(str::to_string),
            name: name.clone(),
            labels: labels.clone(),
            fields: fields.clone(),
            after_rv: 0,
            timeout_secs: q.get("timeoutSeconds").and_then(|v| v.parse().ok()),
            table: wants_table(accept),
            core,
        };
        if since == 0 {
            // No resourceVersion: the current state as ADDED events, then changes.
            w.initial = inner
                .objects
                .iter()
                .filter(|(k, v)| matches(k, v))
                .map(|(k, v)| Event {
                    rv: rv_of(v),
                    kind_of_change: "ADDED",
                    kind,
                    ns: k.1.clone(),
                    object: v.clone(),
                })
                .collect();
            w.after_rv = inner.rv;
        } else {
            w.after_rv = since;
            w.initial = inner
                .history
                .iter()
                .filter(|e| w.wants(e))
                .cloned()
                .collect();
            w.after_rv = inner.rv.max(since);
        }
        Reply::Watch(w)
    }
}

/// One requirement of a label selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LabelReq {
    /// `key=value` or `key==value`.
    Equals(String, String),
    /// `key!=value` (true when the label is absent too).
    NotEquals(String, String),
    /// `key`.
    Exists(String),
    /// `!key`.
    Absent(String),
}

/// Parses an equality-based label selector (`a=b,c!=d,e,!f`), as
/// kube-apiserver does; the set-based forms (`in`, `notin`) are refused.
pub fn parse_label_selector(s: &str) -> Result<Vec<LabelReq>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .map(|r| {
            if r.contains(" in ") || r.contains(" notin ") || r.contains('(') {
                return Err(format!(
                    "labelSelector {s:?}: set-based requirements are not served by the lab"
                ));
            }
            let valid = |k: &str| !k.is_empty() && !k.contains([' ', '=', '!']);
            let req = if let Some((k, v)) = r.split_once("!=") {
                LabelReq::NotEquals(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = r.split_once("==").or_else(|| r.split_once('=')) {
                LabelReq::Equals(k.trim().into(), v.trim().into())
            } else if let Some(k) = r.strip_prefix('!') {
                LabelReq::Absent(k.trim().into())
            } else {
                LabelReq::Exists(r.into())
            };
            let key = match &req {
                LabelReq::Equals(k, _)
                | LabelReq::NotEquals(k, _)
                | LabelReq::Exists(k)
                | LabelReq::Absent(k) => k,
            };
            if valid(key) {
                Ok(req)
            } else {
                Err(format!("labelSelector {s:?}: invalid requirement {r:?}"))
            }
        })
        .collect()
}

fn labels_match(reqs: &[LabelReq], obj: &Value) -> bool {
    let label = |k: &str| obj["metadata"]["labels"][k].as_str();
    reqs.iter().all(|r| match r {
        LabelReq::Equals(k, v) => label(k) == Some(v.as_str()),
        LabelReq::NotEquals(k, v) => label(k) != Some(v.as_str()),
        LabelReq::Exists(k) => label(k).is_some(),
        LabelReq::Absent(k) => label(k).is_none(),
    })
}

fn rv_of(obj: &Value) -> u64 {
    obj["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn wants_table(accept: &str) -> bool {
    accept.contains("as=Table")
}

fn pod(instance: &str, ready: bool) -> Value {
    let r = if ready { "True" } else { "False" };
    json!({
        "metadata": {"name": format!("kube-apiserver-{instance}"), "labels": {"app": "openshift-kube-apiserver"}},
        "spec": {"containers": [{"name": "kube-apiserver", "image": "drainwatch-lab"}],
                 "terminationGracePeriodSeconds": 135},
        "status": {"phase": "Running",
                   "conditions": [{"type": "Ready", "status": r}],
                   "containerStatuses": [{"name": "kube-apiserver", "ready": ready, "restartCount": 0}]}
    })
}

/// A meta.k8s.io/v1 Table, the form kubectl asks for when it prints rows.
fn table(kind: Kind, objs: &[Value], rv: u64) -> Value {
    let col = |name: &str, ty: &str, format: &str| json!({"name": name, "type": ty, "format": format, "description": "", "priority": 0});
    let wide = |name: &str, format: &str| json!({"name": name, "type": "string", "format": format, "description": "", "priority": 1});
    let columns = match kind {
        Kind::ConfigMap => vec![col("Name", "string", "name"), col("Data", "integer", "")],
        Kind::Pod => vec![
            col("Name", "string", "name"),
            col("Ready", "string", ""),
            col("Status", "string", ""),
        ],
        // kube-apiserver's event columns (one printer for both APIs).
        Kind::Event => vec![
            col("Last Seen", "string", ""),
            col("Type", "string", ""),
            col("Reason", "string", ""),
            col("Object", "string", ""),
            wide("Subobject", ""),
            wide("Source", ""),
            col("Message", "string", ""),
            wide("First Seen", ""),
            wide("Count", ""),
            wide("Name", "name"),
        ],
        // kubectl get endpointslices.
        Kind::EndpointSlice => vec![
            col("Name", "string", "name"),
            col("AddressType", "string", ""),
            col("Ports", "string", ""),
            col("Endpoints", "string", ""),
        ],
    };
    let rows: Vec<Value> = objs
        .iter()
        .map(|o| {
            let name = o["metadata"]["name"].clone();
            let cells = match kind {
                Kind::ConfigMap => {
                    json!([name, o["data"].as_object().map_or(0, |d| d.len())])
                }
                Kind::Pod => {
                    let ready = o["status"]["containerStatuses"][0]["ready"] == true;
                    json!([
                        name,
                        if ready { "1/1" } else { "0/1" },
                        o["status"]["phase"]
                    ])
                }
                Kind::Event => events::row(&events::to_core(o), (now_ns() / 1_000_000_000) as i64),
                Kind::EndpointSlice => {
                    let list = |v: &Value, f: &dyn Fn(&Value) -> Option<String>| {
                        v.as_array()
                            .map(|a| a.iter().filter_map(f).collect::<Vec<_>>().join(","))
                            .unwrap_or_default()
                    };
                    json!([
                        name,
                        o["addressType"],
                        list(&o["ports"], &|p| p["port"].as_u64().map(|n| n.to_string())),
                        list(&o["endpoints"], &|e| e["addresses"][0]
                            .as_str()
                            .map(str::to_string)),
                    ])
                }
            };
            json!({"cells": cells, "object": {"kind": "PartialObjectMetadata",
                "apiVersion": "meta.k8s.io/v1", "metadata": o["metadata"]}})
        })
        .collect();
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": rv.to_string()},
        "columnDefinitions": columns, "rows": rows})
}

/// A metav1.Status body.
pub fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code})
}

fn not_found(plural: &str, name: &str) -> Reply {
    Reply::Json(
        404,
        status(404, "NotFound", &format!("{plural} \"{name}\" not found")),
    )
}

fn bad_request(msg: &str) -> Reply {
    Reply::Json(400, status(400, "BadRequest", msg))
}

fn method_not_allowed() -> Reply {
    Reply::Json(
        405,
        status(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        ),
    )
}

fn version() -> Value {
    json!({"major": "1", "minor": "32", "gitVersion": "v1.32.0-drainwatch-lab",
        "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.23", "compiler": "gc",
        "platform": "linux/amd64"})
}

fn events_group() -> Value {
    let v = json!({"groupVersion": "events.k8s.io/v1", "version": "v1"});
    json!({"kind": "APIGroup", "apiVersion": "v1", "name": "events.k8s.io",
        "versions": [v], "preferredVersion": v})
}

fn events_resources() -> Value {
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "events.k8s.io/v1",
        "resources": [{"name": "events", "singularName": "event", "namespaced": true,
            "kind": "Event", "verbs": ["create", "get", "list", "patch", "watch"],
            "shortNames": ["ev"]}]})
}

fn discovery_group() -> Value {
    let v = json!({"groupVersion": "discovery.k8s.io/v1", "version": "v1"});
    json!({"kind": "APIGroup", "apiVersion": "v1", "name": "discovery.k8s.io",
        "versions": [v], "preferredVersion": v})
}

fn discovery_resources() -> Value {
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "discovery.k8s.io/v1",
        "resources": [{"name": "endpointslices", "singularName": "endpointslice",
            "namespaced": true, "kind": "EndpointSlice", "verbs": ["get", "list", "watch"]}]})
}

/// The `kubernetes` Service's EndpointSlices for `endpoints`, as kube-apiserver
/// writes them: one per address family and port (a slice has one address type and
/// one port list), labelled with the Service's name, every endpoint ready; named
/// `kubernetes`, then `kubernetes-N` for the next ones.
fn kubernetes_slices(endpoints: &[SocketAddr]) -> Vec<Value> {
    let mut groups: BTreeMap<(bool, u16), Vec<String>> = BTreeMap::new();
    for e in endpoints {
        let addrs = groups.entry((e.is_ipv6(), e.port())).or_default();
        let ip = e.ip().to_string();
        if !addrs.contains(&ip) {
            addrs.push(ip);
        }
    }
    groups
        .into_iter()
        .enumerate()
        .map(|(i, ((v6, port), addrs))| {
            let name = if i == 0 {
                "kubernetes".to_string()
            } else {
                format!("kubernetes-{i}")
            };
            let endpoints: Vec<Value> = addrs
                .iter()
                .map(|a| json!({"addresses": [a], "conditions": {"ready": true}}))
                .collect();
            json!({
                "metadata": {"name": name, "labels": {"kubernetes.io/service-name": "kubernetes"}},
                "addressType": if v6 { "IPv6" } else { "IPv4" },
                "endpoints": endpoints,
                "ports": [{"name": "https", "port": port, "protocol": "TCP"}]
            })
        })
        .collect()
}

fn resource_list() -> Value {
    json!({"kind": "APIResourceList", "groupVersion": "v1", "resources": [
        {"name": "configmaps", "singularName": "configmap", "namespaced": true, "kind": "ConfigMap",
         "verbs": ["create", "delete", "get", "list", "update", "watch"], "shortNames": ["cm"]},
        {"name": "pods", "singularName": "pod", "namespaced": true, "kind": "Pod",
         "verbs": ["create", "get", "list", "watch"], "shortNames": ["po"], "categories": ["all"]},
        {"name": "pods/portforward", "singularName": "", "namespaced": true, "kind": "PodPortForwardOptions",
         "verbs": ["create", "get"]},
        {"name": "events", "singularName": "event", "namespaced": true, "kind": "Event",
         "verbs": ["get", "list", "watch"], "shortNames": ["ev"]},
        {"name": "namespaces", "singularName": "namespace", "namespaced": false, "kind": "Namespace",
         "verbs": ["get", "list"], "shortNames": ["ns"]}
    ]})
}

/// Splits and percent-decodes a query string.
pub fn parse_query(q: &str) -> BTreeMap<String, String> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (pct_decode(k), pct_decode(v))
        })
        .collect()
}

fn pct_decode(s: &str) -> String {
    let b = s.as_bytes();
    let hex = |c: u8| char::from(c).to_digit(16);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                    out.push(u8::try_from(h * 16 + l).unwrap_or(b'?'));
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, path: &str, query: &str, body: Value) -> Request {
        Request {
            method: method.into(),
            path: path.into(),
            query: query.into(),
            accept: "application/json".into(),
            content_type: "application/json".into(),
            body: serde_json::to_vec(&body).expect("json"),
        }
    }

    #[test]
    fn events_create_patch_get_list_as_kube_apiserver() {
        let s = Store::new();
        let base = "/apis/events.k8s.io/v1/namespaces/kube-system/events";
        let ev = json!({"metadata": {"name": "n1.1"},
            "eventTime": "2026-12-07T14:00:00.000001Z", "type": "Warning",
            "reason": "HardClose", "action": "Observed", "note": "cut",
            "reportingController": "drainwatch.io/drainwatch", "reportingInstance": "n1",
            "regarding": {"apiVersion": "v1", "kind": "Node", "name": "n1"}});
        let (c, created) = json_of(s.handle(&req("POST", base, "", ev.clone())));
        assert_eq!(c, 201, "{created}");
        assert_eq!(created["apiVersion"], "events.k8s.io/v1");
        let mut bad = ev.clone();
        bad["metadata"]["name"] = json!("n1.2");
        bad["type"] = json!("Error");
        let (c, st) = json_of(s.handle(&req("POST", base, "", bad)));
        assert_eq!((c, &st["reason"]), (422, &json!("Invalid")), "{st}");
        assert_eq!(st["details"]["causes"][0]["field"], "type");
        let patch = |ct: &str, body: Value| {
            let mut r = req("PATCH", &format!("{base}/n1.1"), "", body);
            r.content_type = ct.into();
            json_of(s.handle(&r))
        };
        let series =
            json!({"series": {"count": 2, "lastObservedTime": "2026-12-07T14:00:10.000000Z"}});
        let (c, p) = patch("application/merge-patch+json", series.clone());
        assert_eq!(c, 200, "{p}");
        assert_eq!(p["series"]["count"], 2);
        assert_eq!(p["metadata"]["uid"], created["metadata"]["uid"]);
        let (c, _) = patch("application/json-patch+json", series);
        assert_eq!(c, 415);
        let (c, st) = patch(
            "application/strategic-merge-patch+json",
            json!({"note": "other"}),
        );
        assert_eq!(c, 422, "{st}");
        let (c, st) = patch(
            "application/merge-patch+json",
            json!({"series": {"count": 1}}),
        );
        assert_eq!(c, 422, "{st}");
        let (c, got) = json_of(s.handle(&req("GET", &format!("{base}/n1.1"), "", Value::Null)));
        assert_eq!((c, &got["series"]["count"]), (200, &json!(2)));
        let (c, list) = json_of(s.handle(&req("GET", base, "", Value::Null)));
        assert_eq!(c, 200);
        assert_eq!(list["kind"], "EventList");
        assert_eq!(list["apiVersion"], "events.k8s.io/v1");
        assert_eq!(list["items"].as_array().map(Vec::len), Some(1));
        let (c, _) = json_of(s.handle(&req("PATCH", &format!("{base}/nope"), "", json!({}))));
        assert_eq!(c, 415, "a PATCH must say its kind of patch");
        // The same object through core/v1, converted.
        let core = "/api/v1/namespaces/kube-system/events";
        let (c, list) = json_of(s.handle(&req("GET", core, "", Value::Null)));
        assert_eq!(
            (c, &list["kind"], &list["apiVersion"]),
            (200, &json!("EventList"), &json!("v1"))
        );
        let item = &list["items"][0];
        assert_eq!(item["message"], "cut");
        assert_eq!(item["involvedObject"]["kind"], "Node");
        assert_eq!(item["series"]["count"], 2);
        assert_eq!(item["metadata"]["uid"], created["metadata"]["uid"]);
        let (c, one) = json_of(s.handle(&req("GET", &format!("{core}/n1.1"), "", Value::Null)));
        assert_eq!((c, &one), (200, item));
        let (c, _) = json_of(s.handle(&req("POST", core, "", ev)));
        assert_eq!(c, 405);
    }

    fn json_of(r: Reply) -> (u16, Value) {
        match r {
            Reply::Json(c, v) => (c, v),
            Reply::Watch(_) => panic!("unexpected watch"),
        }
    }

    #[test]
    fn create_get_replace_list() {
        let s = Store::new();
        let cm = json!({"metadata": {"name": "x"}, "data": {"a": "1"}});
        let (c, created) = json_of(s.handle(&req(
            "POST",
            "/api/v1/namespaces/default/configmaps",
            "",
            cm.clone(),
        )));
        assert_eq!(c, 201);
        assert_eq!(created["metadata"]["resourceVersion"], "1");
        let (c, _) = json_of(s.handle(&req(
            "POST",
            "/api/v1/namespaces/default/configmaps",
            "",
            cm,
        )));
        assert_eq!(c, 409);
        let (c, got) = json_of(s.handle(&req(
            "GET",
            "/api/v1/namespaces/default/configmaps/x",
            "",
            Value::Null,
        )));
        assert_eq!(c, 200);
        assert_eq!(got["data"]["a"], "1");
        let upd = json!({"metadata": {"name": "x"}, "data": {"a": "2"}});
        let (c, put) = json_of(s.handle(&req(
            "PUT",
            "/api/v1/namespaces/default/configmaps/x",
            "",
            upd,
        )));
        assert_eq!(c, 200);
        assert_eq!(put["metadata"]["uid"], got["metadata"]["uid"]);
        let (c, list) = json_of(s.handle(&req("GET", "/api/v1/configmaps", "", Value::Null)));
        assert_eq!(c, 200);
        assert_eq!(list["items"].as_array().map(Vec::len), Some(1));
        assert_eq!(list["metadata"]["resourceVersion"], "2");
        let (c, _) = json_of(s.handle(&req(
            "GET",
            "/api/v1/namespaces/default/configmaps/nope",
            "",
            Value::Null,
        )));
        assert_eq!(c, 404);
    }

    #[test]
    fn watch_replays_from_resource_version() {
        let s = Store::new();
        for n in ["a", "b"] {
            s.handle(&req(
                "POST",
                "/api/v1/namespaces/default/configmaps",
                "",
                json!({"metadata": {"name": n}}),
            ));
        }
        let Reply::Watch(w) = s.handle(&req(
            "GET",
            "/api/v1/namespaces/default/configmaps",
            "watch=true&resourceVersion=1",
            Value::Null,
        )) else {
            panic!("expected watch");
        };
        assert_eq!(w.initial.len(), 1);
        assert_eq!(w.initial[0].object["metadata"]["name"], "b");
        let Reply::Watch(w) = s.handle(&req(
            "GET",
            "/api/v1/namespaces/default/configmaps",
            "watch=1&fieldSelector=metadata.name%3Da",
            Value::Null,
        )) else {
            panic!("expected watch");
        };
        assert_eq!(w.initial.len(), 1);
        assert_eq!(w.initial[0].kind_of_change, "ADDED");
    }

    #[test]
    fn label_selectors_filter_lists() {
        let s = Store::new();
        for (n, app) in [("a", "drainwatch"), ("b", "grafana")] {
            s.handle(&req(
                "POST",
                "/api/v1/namespaces/x/pods",
                "",
                json!({"metadata": {"name": n, "labels": {"app": app}}}),
            ));
        }
        let names = |sel: &str| {
            let (c, l) = json_of(s.handle(&req(
                "GET",
                "/api/v1/namespaces/x/pods",
                &format!("labelSelector={sel}"),
                Value::Null,
            )));
            assert_eq!(c, 200, "{l}");
            l["items"]
                .as_array()
                .expect("items")
                .iter()
                .map(|i| i["metadata"]["name"].as_str().expect("name").to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(names("app%3Ddrainwatch"), ["a"]);
        assert_eq!(names("app!%3Ddrainwatch"), ["b"]);
        assert_eq!(names("app"), ["a", "b"]);
        assert_eq!(names("!app"), Vec::<String>::new());
        let (c, _) = json_of(s.handle(&req(
            "GET",
            "/api/v1/pods",
            "labelSelector=app+in+(a)",
            Value::Null,
        )));
        assert_eq!(c, 400);
    }

    #[test]
    fn the_kubernetes_service_has_its_endpointslices() {
        let s = Store::new();
        let eps: Vec<SocketAddr> = ["198.18.0.2:6443", "198.18.0.3:6443", "[fd00::2]:6443"]
            .iter()
            .map(|a| a.parse().expect("addr"))
            .collect();
        s.populate("m1", 1.0, &eps);
        let base = "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices";
        let (c, l) = json_of(s.handle(&req(
            "GET",
            base,
            "labelSelector=kubernetes.io%2Fservice-name%3Dkubernetes",
            Value::Null,
        )));
        assert_eq!(c, 200, "{l}");
        assert_eq!(l["kind"], "EndpointSliceList");
        assert_eq!(l["apiVersion"], "discovery.k8s.io/v1");
        let items = l["items"].as_array().expect("items");
        assert_eq!(items.len(), 2, "one slice per family: {l}");
        assert_eq!(items[0]["addressType"], "IPv4");
        assert_eq!(
            items[0]["endpoints"],
            json!([{"addresses": ["198.18.0.2"], "conditions": {"ready": true}},
                {"addresses": ["198.18.0.3"], "conditions": {"ready": true}}])
        );
        assert_eq!(items[0]["ports"][0]["port"], 6443);
        assert_eq!(items[1]["metadata"]["name"], "kubernetes-1");
        assert_eq!(items[1]["endpoints"][0]["addresses"][0], "fd00::2");
        let (c, o) = json_of(s.handle(&req("GET", &format!("{base}/kubernetes"), "", Value::Null)));
        assert_eq!((c, &o["kind"]), (200, &json!("EndpointSlice")));
        let (c, _) = json_of(s.handle(&req("POST", base, "", json!({}))));
        assert_eq!(c, 405, "read-only");
    }

    #[test]
    fn decodes_query() {
        let q = parse_query("fieldSelector=metadata.name%3Dx&watch=true&bad=%zz");
        assert_eq!(q["fieldSelector"], "metadata.name=x");
        assert_eq!(q["bad"], "%zz");
    }
}
