//! Deploy tests: the manifests under deploy/ are valid Kubernetes objects
//! with no unknown fields, both overlays render with the real `kubectl
//! kustomize` for their control plane, every metric the dashboard and the
//! alert rules use exists on a running daemon, the rules parse, and the real
//! daemon started with exactly the DaemonSet's capabilities loads and
//! attaches everything, while each capability removed shows what breaks.

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{ErrorKind, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::Mutex,
    time::{Duration, Instant},
};

use k8s_openapi::{
    api::{
        apps::v1::DaemonSet,
        core::v1::{ConfigMap, Namespace, Service, ServiceAccount},
        rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding},
    },
    apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta},
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_drainwatch");
const KUBECTL: &str = "/usr/bin/kubectl";
/// The overlays and the control-plane label each must select.
const OVERLAYS: [(&str, &str, bool); 4] = [
    ("kubeadm", "node-role.kubernetes.io/control-plane", false),
    ("openshift", "node-role.kubernetes.io/master", false),
    (
        "kubeadm-privileged",
        "node-role.kubernetes.io/control-plane",
        true,
    ),
    (
        "openshift-privileged",
        "node-role.kubernetes.io/master",
        true,
    ),
];

/// The daemon tests load programs and compare runs: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .join("deploy")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Every YAML document in `text`, as JSON values (empty documents dropped).
fn yaml_docs(text: &str, what: &str) -> Vec<Value> {
    use serde::Deserialize as _;
    let mut out = Vec::new();
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let v = Value::deserialize(doc)
            .unwrap_or_else(|e| panic!("{what}: YAML document {i} does not parse: {e}"));
        if !v.is_null() {
            out.push(v);
        }
    }
    out
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            yaml_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "yaml" || x == "yml") {
            out.push(p);
        }
    }
}

/// Where `a` and `b` first differ, as a JSON path, or `None`.
fn first_diff(a: &Value, b: &Value, path: &str) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for (k, va) in x {
                let p = format!("{path}.{k}");
                match y.get(k) {
                    None => return Some(format!("`{p}` is not a field of the typed object")),
                    Some(vb) => {
                        if let Some(d) = first_diff(va, vb, &p) {
                            return Some(d);
                        }
                    }
                }
            }
            y.keys()
                .find(|k| !x.contains_key(*k))
                .map(|k| format!("`{path}.{k}` appeared in the typed object"))
        }
        (Value::Array(x), Value::Array(y)) => {
            if x.len() != y.len() {
                return Some(format!("`{path}` has {} items, typed {}", x.len(), y.len()));
            }
            x.iter()
                .zip(y)
                .enumerate()
                .find_map(|(i, (va, vb))| first_diff(va, vb, &format!("{path}[{i}]")))
        }
        (Value::Number(x), Value::Number(y)) if x.as_f64() == y.as_f64() => None,
        _ if a == b => None,
        _ => Some(format!("`{path}` is {a}, typed {b}")),
    }
}

/// Deserializes into `T`, serializes back and compares: a field the type
/// does not know (a typo, a wrong level) is dropped and shows up here.
fn roundtrip<T: DeserializeOwned + Serialize>(v: &Value) -> Result<(), String> {
    let typed: T = serde_json::from_value(v.clone()).map_err(|e| e.to_string())?;
    let back = serde_json::to_value(&typed).map_err(|e| e.to_string())?;
    match first_diff(v, &back, "") {
        None => Ok(()),
        Some(d) => Err(d),
    }
}

fn keys_within(v: &Value, allowed: &[&str], what: &str) -> Result<(), String> {
    let obj = v
        .as_object()
        .ok_or_else(|| format!("{what} is not a mapping"))?;
    match obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(format!("{what}: unknown field `{k}` (known: {allowed:?})")),
        None => Ok(()),
    }
}

fn string_map(v: &Value, what: &str) -> Result<(), String> {
    match v.as_object() {
        Some(m) if m.values().all(Value::is_string) => Ok(()),
        _ => Err(format!("{what} must map strings to strings")),
    }
}

fn str_at<'a>(v: &'a Value, ptr: &str) -> &'a str {
    v.pointer(ptr)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no string at {ptr} in {v}"))
}

fn check_metadata(v: &Value) -> Result<(), String> {
    let meta = v.get("metadata").ok_or("no metadata")?;
    roundtrip::<ObjectMeta>(meta).map_err(|e| format!("metadata: {e}"))
}

fn check_service_monitor(v: &Value) -> Result<(), String> {
    keys_within(
        v,
        &["apiVersion", "kind", "metadata", "spec"],
        "ServiceMonitor",
    )?;
    check_metadata(v)?;
    let spec = v.get("spec").ok_or("ServiceMonitor without spec")?;
    keys_within(
        spec,
        &[
            "selector",
            "namespaceSelector",
            "endpoints",
            "jobLabel",
            "targetLabels",
            "podTargetLabels",
            "sampleLimit",
        ],
        "ServiceMonitor spec",
    )?;
    roundtrip::<LabelSelector>(spec.get("selector").ok_or("spec.selector missing")?)
        .map_err(|e| format!("spec.selector: {e}"))?;
    if let Some(ns) = spec.get("namespaceSelector") {
        keys_within(ns, &["matchNames", "any"], "spec.namespaceSelector")?;
    }
    let eps = spec
        .get("endpoints")
        .and_then(Value::as_array)
        .filter(|a| !a.is_empty())
        .ok_or("spec.endpoints must be a non-empty list")?;
    for (i, ep) in eps.iter().enumerate() {
        let what = format!("spec.endpoints[{i}]");
        keys_within(
            ep,
            &[
                "port",
                "targetPort",
                "path",
                "scheme",
                "interval",
                "scrapeTimeout",
                "honorLabels",
                "relabelings",
                "metricRelabelings",
            ],
            &what,
        )?;
        if !ep.get("port").is_some_and(Value::is_string) {
            return Err(format!("{what}.port must name a Service port"));
        }
        for key in ["interval", "scrapeTimeout"] {
            if let Some(d) = ep.get(key) {
                check_duration(d, &format!("{what}.{key}"))?;
            }
        }
        for r in ep
            .get("relabelings")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            keys_within(
                r,
                &[
                    "sourceLabels",
                    "separator",
                    "targetLabel",
                    "regex",
                    "modulus",
                    "replacement",
                    "action",
                ],
                &format!("{what}.relabelings[]"),
            )?;
        }
    }
    Ok(())
}

fn check_duration(v: &Value, what: &str) -> Result<(), String> {
    let s = v
        .as_str()
        .ok_or_else(|| format!("{what} is not a string"))?;
    let mut rest = s;
    let mut parts = 0;
    while !rest.is_empty() {
        let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        if digits == 0 {
            return Err(format!("{what}: {s:?} is not a Prometheus duration"));
        }
        rest = &rest[digits..];
        let unit = ["ms", "s", "m", "h", "d", "w", "y"]
            .into_iter()
            .find(|u| rest.starts_with(u))
            .ok_or_else(|| format!("{what}: {s:?} is not a Prometheus duration"))?;
        rest = &rest[unit.len()..];
        parts += 1;
    }
    if parts == 0 {
        return Err(format!("{what}: empty duration"));
    }
    Ok(())
}

fn check_prometheus_rule(v: &Value) -> Result<(), String> {
    keys_within(
        v,
        &["apiVersion", "kind", "metadata", "spec"],
        "PrometheusRule",
    )?;
    check_metadata(v)?;
    let spec = v.get("spec").ok_or("PrometheusRule without spec")?;
    keys_within(spec, &["groups"], "PrometheusRule spec")?;
    let groups = spec
        .get("groups")
        .and_then(Value::as_array)
        .filter(|g| !g.is_empty())
        .ok_or("spec.groups must be a non-empty list")?;
    let mut names = BTreeSet::new();
    for (gi, g) in groups.iter().enumerate() {
        let gw = format!("groups[{gi}]");
        keys_within(
            g,
            &[
                "name",
                "interval",
                "rules",
                "limit",
                "partial_response_strategy",
            ],
            &gw,
        )?;
        let name = g
            .get("name")
            .and_then(Value::as_str)
            .ok_or(format!("{gw}.name missing"))?;
        if !names.insert(name.to_string()) {
            return Err(format!("group name {name} used twice"));
        }
        let rules = g
            .get("rules")
            .and_then(Value::as_array)
            .filter(|r| !r.is_empty())
            .ok_or(format!("{gw}.rules must be a non-empty list"))?;
        for (ri, r) in rules.iter().enumerate() {
            let rw = format!("{gw}.rules[{ri}]");
            keys_within(
                r,
                &[
                    "alert",
                    "record",
                    "expr",
                    "for",
                    "keep_firing_for",
                    "labels",
                    "annotations",
                ],
                &rw,
            )?;
            match (r.get("alert"), r.get("record")) {
                (Some(Value::String(_)), None) => {
                    if !r.pointer("/labels/severity").is_some_and(Value::is_string) {
                        return Err(format!("{rw}: alert without a severity label"));
                    }
                }
                (None, Some(Value::String(_))) => {
                    if r.get("for").is_some() || r.get("annotations").is_some() {
                        return Err(format!("{rw}: a recording rule takes no for/annotations"));
                    }
                }
                _ => return Err(format!("{rw}: exactly one of alert and record")),
            }
            let expr = r
                .get("expr")
                .and_then(Value::as_str)
                .filter(|e| !e.trim().is_empty())
                .ok_or(format!("{rw}.expr must be a non-empty string"))?;
            check_balanced(expr).map_err(|e| format!("{rw}.expr: {e}"))?;
            for key in ["for", "keep_firing_for"] {
                if let Some(d) = r.get(key) {
                    check_duration(d, &format!("{rw}.{key}"))?;
                }
            }
            for key in ["labels", "annotations"] {
                if let Some(m) = r.get(key) {
                    string_map(m, &format!("{rw}.{key}"))?;
                }
            }
        }
    }
    Ok(())
}

fn check_balanced(expr: &str) -> Result<(), String> {
    let mut stack = Vec::new();
    let mut quoted = false;
    for c in expr.chars() {
        match c {
            '"' => quoted = !quoted,
            _ if quoted => {}
            '(' | '[' | '{' => stack.push(c),
            ')' | ']' | '}' => {
                let open = stack.pop().ok_or(format!("unbalanced {c:?}"))?;
                if !matches!((open, c), ('(', ')') | ('[', ']') | ('{', '}')) {
                    return Err(format!("{open:?} closed by {c:?}"));
                }
            }
            _ => {}
        }
    }
    if quoted || !stack.is_empty() {
        return Err("unbalanced brackets or quotes".into());
    }
    Ok(())
}

const SCC_FIELDS: &[&str] = &[
    "apiVersion",
    "kind",
    "metadata",
    "allowHostDirVolumePlugin",
    "allowHostIPC",
    "allowHostNetwork",
    "allowHostPID",
    "allowHostPorts",
    "allowPrivilegeEscalation",
    "allowPrivilegedContainer",
    "allowedCapabilities",
    "allowedFlexVolumes",
    "allowedUnsafeSysctls",
    "defaultAddCapabilities",
    "defaultAllowPrivilegeEscalation",
    "forbiddenSysctls",
    "fsGroup",
    "groups",
    "priority",
    "readOnlyRootFilesystem",
    "requiredDropCapabilities",
    "runAsUser",
    "seLinuxContext",
    "seccompProfiles",
    "supplementalGroups",
    "users",
    "volumes",
];

fn check_scc(v: &Value) -> Result<(), String> {
    keys_within(v, SCC_FIELDS, "SecurityContextConstraints")?;
    check_metadata(v)?;
    for key in [
        "runAsUser",
        "seLinuxContext",
        "fsGroup",
        "supplementalGroups",
    ] {
        let s = v.get(key).ok_or(format!("SCC {key} missing"))?;
        keys_within(
            s,
            &[
                "type",
                "uid",
                "uidRangeMin",
                "uidRangeMax",
                "seLinuxOptions",
                "ranges",
            ],
            key,
        )?;
    }
    Ok(())
}

/// Kustomization files: only known keys, and every path they name exists.
fn check_kustomization(v: &Value, dir: &Path) -> Result<(), String> {
    keys_within(
        v,
        &[
            "apiVersion",
            "kind",
            "resources",
            "components",
            "patches",
            "configMapGenerator",
            "images",
            "labels",
            "namespace",
            "nameSuffix",
        ],
        "kustomization",
    )?;
    let exists = |rel: &str| -> Result<(), String> {
        if dir.join(rel).exists() {
            Ok(())
        } else {
            Err(format!("{rel} does not exist"))
        }
    };
    for key in ["resources", "components"] {
        for r in v.get(key).and_then(Value::as_array).into_iter().flatten() {
            exists(r.as_str().ok_or(format!("{key} entry is not a path"))?)?;
        }
    }
    for p in v
        .get("patches")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        keys_within(p, &["path", "patch", "target", "options"], "patches[]")?;
        if let Some(path) = p.get("path").and_then(Value::as_str) {
            exists(path)?;
        }
    }
    for g in v
        .get("configMapGenerator")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        for f in ["files", "envs"]
            .iter()
            .flat_map(|k| g.get(*k).and_then(Value::as_array).into_iter().flatten())
        {
            let f = f
                .as_str()
                .ok_or("configMapGenerator file is not a string")?;
            exists(f.split_once('=').map_or(f, |(_, p)| p))?;
        }
    }
    Ok(())
}

/// Checks one object by its apiVersion and kind.
fn check_object(v: &Value) -> Result<(), String> {
    let api = v.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    let kind = v.get("kind").and_then(Value::as_str).unwrap_or("");
    match (api, kind) {
        ("v1", "Namespace") => roundtrip::<Namespace>(v),
        ("v1", "ServiceAccount") => roundtrip::<ServiceAccount>(v),
        ("v1", "Service") => roundtrip::<Service>(v),
        ("v1", "ConfigMap") => roundtrip::<ConfigMap>(v),
        ("rbac.authorization.k8s.io/v1", "Role") => roundtrip::<Role>(v),
        ("rbac.authorization.k8s.io/v1", "RoleBinding") => roundtrip::<RoleBinding>(v),
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => roundtrip::<ClusterRole>(v),
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
            roundtrip::<ClusterRoleBinding>(v)
        }
        ("apps/v1", "DaemonSet") => roundtrip::<DaemonSet>(v),
        ("monitoring.coreos.com/v1", "ServiceMonitor") => check_service_monitor(v),
        ("monitoring.coreos.com/v1", "PrometheusRule") => check_prometheus_rule(v),
        ("security.openshift.io/v1", "SecurityContextConstraints") => check_scc(v),
        _ => Err(format!("no check for apiVersion {api:?} kind {kind:?}")),
    }
}

fn label(v: &Value) -> String {
    format!(
        "{} {}/{}",
        v.get("kind").and_then(Value::as_str).unwrap_or("?"),
        v.pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or("-"),
        v.pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("?"),
    )
}

/// `kubectl kustomize deploy/<dir>` as objects.
fn render(dir: &str) -> Vec<Value> {
    let out = Command::new(KUBECTL)
        .arg("kustomize")
        .arg(deploy_dir().join(dir))
        .output()
        .unwrap_or_else(|e| panic!("cannot run {KUBECTL}: {e}"));
    assert!(
        out.status.success(),
        "kubectl kustomize deploy/{dir} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    yaml_docs(&String::from_utf8_lossy(&out.stdout), dir)
}

fn find<'a>(objs: &'a [Value], kind: &str, ns: &str, name: &str) -> Option<&'a Value> {
    objs.iter().find(|o| {
        o["kind"] == kind
            && o.pointer("/metadata/name").and_then(Value::as_str) == Some(name)
            && o.pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .unwrap_or("")
                == ns
    })
}

fn daemonset(objs: &[Value]) -> DaemonSet {
    let ds = find(objs, "DaemonSet", "drainwatch", "drainwatch").expect("the DaemonSet");
    serde_json::from_value(ds.clone()).expect("typed DaemonSet")
}

/// The capabilities the DaemonSet's container adds, as `CAP_` names.
fn ds_caps(ds: &DaemonSet) -> Vec<String> {
    let c = &ds
        .spec
        .as_ref()
        .expect("spec")
        .template
        .spec
        .as_ref()
        .expect("pod spec")
        .containers[0];
    let caps = c
        .security_context
        .as_ref()
        .and_then(|s| s.capabilities.as_ref())
        .expect("container capabilities");
    assert_eq!(
        caps.drop.as_deref(),
        Some(&["ALL".to_string()][..]),
        "the DaemonSet must drop every capability it does not add"
    );
    caps.add
        .as_ref()
        .expect("added capabilities")
        .iter()
        .map(|c| format!("CAP_{c}"))
        .collect()
}

fn ds_command(ds: &DaemonSet, metrics_addr: &str) -> Vec<String> {
    let c = &ds
        .spec
        .as_ref()
        .expect("spec")
        .template
        .spec
        .as_ref()
        .expect("pod spec")
        .containers[0];
    let mut cmd = c.command.clone().expect("the DaemonSet sets command");
    assert_eq!(cmd[0], "/usr/local/bin/drainwatch", "the image's binary");
    cmd.remove(0);
    cmd.extend(c.args.clone().unwrap_or_default());
    cmd.into_iter()
        .map(|a| {
            if a.starts_with("--metrics-addr=") {
                format!("--metrics-addr={metrics_addr}")
            } else {
                a
            }
        })
        .collect()
}

#[test]
fn every_manifest_is_a_known_object_without_unknown_fields() {
    let mut files = Vec::new();
    yaml_files(&deploy_dir(), &mut files);
    assert!(files.len() >= 10, "too few manifests: {files:?}");
    // Patch files are partial objects: they are checked merged, in the
    // rendered overlays. Every other file must be a resource or a
    // kustomization, and every file must be used by some kustomization.
    let mut patches = BTreeSet::new();
    let mut resources = BTreeSet::new();
    let mut errors = Vec::new();
    for f in &files {
        if f.file_name().is_some_and(|n| n == "kustomization.yaml") {
            let dir = f.parent().expect("dir");
            for v in yaml_docs(&read(f), &f.display().to_string()) {
                if let Err(e) = check_kustomization(&v, dir) {
                    errors.push(format!("{}: {e}", f.display()));
                }
                for p in v
                    .get("patches")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    if let Some(path) = p.get("path").and_then(Value::as_str) {
                        patches.insert(dir.join(path));
                    }
                }
                for r in v
                    .get("resources")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    resources.insert(dir.join(r.as_str().unwrap_or("")));
                }
            }
        }
    }
    let mut objects = 0;
    for f in &files {
        if f.file_name().is_some_and(|n| n == "kustomization.yaml") || patches.contains(f) {
            continue;
        }
        if !resources.contains(f) {
            errors.push(format!("{}: not used by any kustomization", f.display()));
        }
        for v in yaml_docs(&read(f), &f.display().to_string()) {
            objects += 1;
            if let Err(e) = check_object(&v) {
                errors.push(format!("{} ({}): {e}", f.display(), label(&v)));
            }
        }
    }
    assert!(errors.is_empty(), "bad manifests:\n{}", errors.join("\n"));
    assert!(objects >= 15, "only {objects} objects checked");
    // The checker itself must catch what it is for.
    let mut bad = yaml_docs(&read(&deploy_dir().join("base/daemonset.yaml")), "ds")[0].clone();
    bad["spec"]["template"]["spec"]["hostNetwrok"] = Value::Bool(true);
    let err = check_object(&bad).expect_err("a misspelt field must be caught");
    assert!(err.contains("hostNetwrok"), "{err}");
}

#[test]
fn overlays_render_for_their_control_plane() {
    for (overlay, role, privileged) in OVERLAYS {
        let objs = render(&format!("overlays/{overlay}"));
        let mut errors = Vec::new();
        for v in &objs {
            if let Err(e) = check_object(v) {
                errors.push(format!("{}: {e}", label(v)));
            }
        }
        assert!(
            errors.is_empty(),
            "overlays/{overlay} renders bad objects:\n{}",
            errors.join("\n")
        );
        let ds = daemonset(&objs);
        let pod = ds
            .spec
            .as_ref()
            .expect("spec")
            .template
            .spec
            .clone()
            .expect("pod spec");
        let ctx = format!("overlays/{overlay}");

        let sel = pod.node_selector.clone().unwrap_or_default();
        assert_eq!(
            sel,
            BTreeMap::from([(role.to_string(), String::new())]),
            "{ctx}: nodeSelector"
        );
        // Every common control-plane taint, in every overlay: kubeadm's
        // control-plane (and master before 1.24), OpenShift's master, RKE2
        // and k3s's CriticalAddonsOnly (any effect) and etcd NoExecute.
        let tols = pod.tolerations.clone().unwrap_or_default();
        for (key, effect) in [
            ("node-role.kubernetes.io/control-plane", Some("NoSchedule")),
            ("node-role.kubernetes.io/master", Some("NoSchedule")),
            ("CriticalAddonsOnly", None),
            ("node-role.kubernetes.io/etcd", Some("NoExecute")),
        ] {
            assert!(
                tols.iter().any(|t| t.key.as_deref() == Some(key)
                    && t.operator.as_deref() == Some("Exists")
                    && t.effect.as_deref() == effect
                    && t.value.is_none()),
                "{ctx}: no toleration for {key} {effect:?}: {tols:?}"
            );
        }
        assert!(
            tols.iter().any(|t| t.key.as_deref() == Some(role)),
            "{ctx}: its own control-plane taint"
        );
        assert_eq!(
            pod.priority_class_name.as_deref(),
            Some("system-node-critical"),
            "{ctx}: priorityClassName"
        );
        assert_eq!(
            pod.dns_policy.as_deref(),
            Some("ClusterFirstWithHostNet"),
            "{ctx}: hostNetwork pods resolve cluster names only with ClusterFirstWithHostNet"
        );
        assert_eq!(pod.host_network, Some(true), "{ctx}: hostNetwork");
        assert_eq!(pod.host_pid, Some(true), "{ctx}: hostPID");
        assert!(
            find(
                &objs,
                "ServiceAccount",
                "drainwatch",
                pod.service_account_name.as_deref().unwrap_or("")
            )
            .is_some(),
            "{ctx}: the pod's ServiceAccount is not rendered"
        );

        let c = &pod.containers[0];
        let sc = c
            .security_context
            .clone()
            .expect("container securityContext");
        if privileged {
            assert_eq!(sc.privileged, Some(true), "{ctx}: privileged");
        } else {
            assert_eq!(sc.privileged, Some(false), "{ctx}: privileged");
            assert_eq!(sc.allow_privilege_escalation, Some(false), "{ctx}");
            assert_eq!(
                ds_caps(&ds),
                ["CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN"],
                "{ctx}: capability set"
            );
        }
        assert_eq!(sc.run_as_user, Some(0), "{ctx}: runAsUser");
        let env: BTreeMap<_, _> = c
            .env
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|e| {
                let field = e.value_from.and_then(|f| f.field_ref).map(|f| f.field_path);
                (e.name, field)
            })
            .collect();
        assert_eq!(
            env.get("NODE_NAME"),
            Some(&Some("spec.nodeName".to_string())),
            "{ctx}: NODE_NAME from the downward API"
        );
        let args = c.args.clone().unwrap_or_default();
        assert!(
            args.contains(&"--metrics-addr=0.0.0.0:9977".to_string()),
            "{ctx}: metrics must be bound by an explicit arg, on the node IP for the \
             probes and Prometheus and on loopback for port-forward (drainwatch cluster): {args:?}"
        );
        let port = c
            .ports
            .as_ref()
            .and_then(|p| p.first())
            .expect("container port");
        assert_eq!(
            (port.name.as_deref(), port.container_port),
            (Some("metrics"), 9977)
        );
        for (probe, path) in [
            (&c.liveness_probe, "/healthz"),
            (&c.readiness_probe, "/readyz"),
            (&c.startup_probe, "/healthz"),
        ] {
            let get = probe
                .as_ref()
                .and_then(|p| p.http_get.as_ref())
                .unwrap_or_else(|| panic!("{ctx}: no httpGet probe for {path}"));
            assert_eq!(get.path.as_deref(), Some(path), "{ctx}");
            assert_eq!(
                serde_json::to_value(&get.port).expect("port"),
                "metrics",
                "{ctx}: probes hit the daemon's own port"
            );
        }
        let res = c.resources.clone().expect("resources");
        for (what, m) in [("requests", &res.requests), ("limits", &res.limits)] {
            let m = m.clone().unwrap_or_default();
            assert!(
                m.contains_key("cpu") && m.contains_key("memory"),
                "{ctx}: {what} {m:?}"
            );
        }
        let mounts: BTreeMap<_, _> = c
            .volume_mounts
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|m| (m.mount_path, m.read_only.unwrap_or(false)))
            .collect();
        for (path, ro) in [
            ("/sys/kernel/btf", true),
            ("/sys/kernel/tracing", true),
            ("/sys/fs/bpf", true),
        ] {
            assert_eq!(mounts.get(path), Some(&ro), "{ctx}: mount {path}");
        }
        let host_path = |name: &str| {
            pod.volumes
                .clone()
                .unwrap_or_default()
                .into_iter()
                .find(|v| v.name == name)
                .and_then(|v| v.host_path)
                .map(|h| h.path)
        };
        let values: BTreeMap<String, Option<String>> = c
            .env
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|e| (e.name, e.value))
            .collect();
        if overlay.starts_with("kubeadm") {
            // The prober goes through controlPlaneEndpoint, never through
            // kubelet.conf: kubeadm's ControlPlaneKubeletLocalMode points
            // that at the local apiserver.
            assert!(
                !values.contains_key("DRAINWATCH_PROBE_KUBECONFIG"),
                "{ctx}: {values:?}"
            );
            assert!(
                !mounts.contains_key("/var/lib/kubelet/kubeconfig"),
                "{ctx}: {mounts:?}"
            );
            assert_eq!(host_path("kubelet-kubeconfig"), None, "{ctx}");
            assert_eq!(
                host_path("cluster-ca").as_deref(),
                Some("/etc/kubernetes/pki/ca.crt"),
                "{ctx}"
            );
            assert_eq!(
                mounts.get("/etc/kubernetes/pki/ca.crt"),
                Some(&true),
                "{ctx}"
            );
            assert_eq!(
                values.get("DRAINWATCH_APISERVER_CA"),
                Some(&Some("/etc/kubernetes/pki/ca.crt".to_string())),
                "{ctx}"
            );
            let from = c.env_from.clone().unwrap_or_default();
            let cm_name = from
                .iter()
                .find_map(|f| f.config_map_ref.as_ref().map(|r| r.name.clone()))
                .unwrap_or_else(|| panic!("{ctx}: no envFrom ConfigMap: {from:?}"));
            let cm = find(&objs, "ConfigMap", "drainwatch", &cm_name)
                .unwrap_or_else(|| panic!("{ctx}: ConfigMap {cm_name} not rendered"));
            let url = str_at(cm, "/data/DRAINWATCH_PROBE_URL");
            assert!(
                url.starts_with("https://") && url.ends_with("/readyz"),
                "{ctx}: probe URL {url}"
            );
        } else {
            assert_eq!(
                mounts.get("/var/lib/kubelet/kubeconfig"),
                Some(&true),
                "{ctx}"
            );
            assert_eq!(
                host_path("kubelet-kubeconfig").as_deref(),
                Some("/var/lib/kubelet/kubeconfig"),
                "{ctx}: kubelet kubeconfig"
            );
            assert_eq!(
                values.get("DRAINWATCH_PROBE_KUBECONFIG"),
                Some(&Some("/var/lib/kubelet/kubeconfig".to_string())),
                "{ctx}"
            );
        }

        // drainwatch's own audit passes its manifests, with the rule the
        // DaemonSet knowingly waives listed as ignored.
        let file =
            std::env::temp_dir().join(format!("drainwatch-{overlay}-{}.yaml", std::process::id()));
        let docs: Vec<String> = objs
            .iter()
            .map(|o| serde_yaml_ng::to_string(o).expect("yaml"))
            .collect();
        std::fs::write(&file, docs.join("---\n")).expect("write rendered");
        let out = Command::new(BIN)
            .args(["audit", "-f"])
            .arg(&file)
            .output()
            .expect("drainwatch audit");
        let _ = std::fs::remove_file(&file);
        let text = output_text(&out);
        assert!(out.status.success(), "{ctx}: drainwatch audit:\n{text}");
        assert!(
            text.contains(
                "ignored ERROR DaemonSet drainwatch/drainwatch, container drainwatch [drain-window]"
            ) && text.contains("0 error(s), 0 warning(s), 0 info, 1 ignored: PASS"),
            "{ctx}: {text}"
        );

        // RBAC: read-only, in the apiserver namespaces of this distribution,
        // but for the verdicts' Events: create and patch of events.k8s.io
        // events there, nothing else.
        let mut role_namespaces = BTreeSet::new();
        let mut event_namespaces = BTreeSet::new();
        for r in objs.iter().filter(|o| o["kind"] == "Role") {
            let role: Role = serde_json::from_value(r.clone()).expect("Role");
            if role.metadata.name.as_deref() == Some("drainwatch-write-events") {
                let rules: Vec<(Vec<String>, Vec<String>, Vec<String>)> = role
                    .rules
                    .unwrap_or_default()
                    .into_iter()
                    .map(|r| {
                        (
                            r.api_groups.unwrap_or_default(),
                            r.resources.unwrap_or_default(),
                            r.verbs,
                        )
                    })
                    .collect();
                assert_eq!(
                    rules,
                    [(
                        vec!["events.k8s.io".to_string()],
                        vec!["events".to_string()],
                        vec!["create".to_string(), "patch".to_string()]
                    )],
                    "{ctx}: {}",
                    label(r)
                );
                event_namespaces.insert(role.metadata.namespace.unwrap_or_default());
                continue;
            }
            for rule in role.rules.unwrap_or_default() {
                for verb in &rule.verbs {
                    assert!(
                        ["get", "list", "watch"].contains(&verb.as_str()),
                        "{ctx}: {} may {verb}",
                        label(r)
                    );
                }
            }
            if role.metadata.name.as_deref() == Some("drainwatch-read-apiserver-pods") {
                role_namespaces.insert(role.metadata.namespace.unwrap_or_default());
            }
        }
        let want: BTreeSet<String> = if overlay.starts_with("openshift") {
            vec!["kube-system", "openshift-kube-apiserver"]
        } else {
            vec!["kube-system"]
        }
        .into_iter()
        .map(String::from)
        .collect();
        assert_eq!(role_namespaces, want, "{ctx}: apiserver namespaces");
        assert_eq!(event_namespaces, want, "{ctx}: event namespaces");
        for ns in &want {
            let rb = objs
                .iter()
                .find(|o| {
                    o["kind"] == "RoleBinding"
                        && o["metadata"]["name"] == "drainwatch-write-events"
                        && o["metadata"]["namespace"] == ns.as_str()
                })
                .unwrap_or_else(|| panic!("{ctx}: no events RoleBinding in {ns}"));
            assert_eq!(rb["roleRef"]["name"], "drainwatch-write-events", "{ctx}");
            assert_eq!(rb["subjects"][0]["name"], "drainwatch", "{ctx}");
        }
        for b in objs.iter().filter(|o| o["kind"] == "RoleBinding") {
            let rb: RoleBinding = serde_json::from_value(b.clone()).expect("RoleBinding");
            for s in rb.subjects.unwrap_or_default() {
                if s.kind == "ServiceAccount" && s.namespace.as_deref() == Some("drainwatch") {
                    assert!(
                        find(&objs, "ServiceAccount", "drainwatch", &s.name).is_some(),
                        "{ctx}: {} binds a missing ServiceAccount",
                        label(b)
                    );
                }
            }
        }

        // Scraping: Service -> pods, ServiceMonitor -> Service.
        let svc: Service = serde_json::from_value(
            find(&objs, "Service", "drainwatch", "drainwatch")
                .expect("Service")
                .clone(),
        )
        .expect("typed Service");
        let svc_spec = svc.spec.expect("service spec");
        let pod_labels = ds
            .spec
            .as_ref()
            .expect("spec")
            .template
            .metadata
            .as_ref()
            .and_then(|m| m.labels.clone())
            .unwrap_or_default();
        for (k, v) in svc_spec.selector.clone().unwrap_or_default() {
            assert_eq!(
                pod_labels.get(&k),
                Some(&v),
                "{ctx}: Service selects the pods"
            );
        }
        let svc_port = &svc_spec.ports.expect("ports")[0];
        assert_eq!(
            serde_json::to_value(&svc_port.target_port).expect("targetPort"),
            "metrics",
            "{ctx}"
        );
        let sm = find(&objs, "ServiceMonitor", "drainwatch", "drainwatch").expect("ServiceMonitor");
        assert_eq!(
            sm.pointer("/spec/endpoints/0/port").and_then(Value::as_str),
            svc_port.name.as_deref(),
            "{ctx}: ServiceMonitor port"
        );
        let svc_labels = svc.metadata.labels.unwrap_or_default();
        for (k, v) in sm
            .pointer("/spec/selector/matchLabels")
            .and_then(Value::as_object)
            .expect("matchLabels")
        {
            assert_eq!(
                svc_labels.get(k).map(String::as_str),
                v.as_str(),
                "{ctx}: ServiceMonitor selects the Service"
            );
        }
        assert!(find(&objs, "PrometheusRule", "drainwatch", "drainwatch").is_some());
        assert!(
            find(
                &objs,
                "ConfigMap",
                "drainwatch",
                "drainwatch-grafana-dashboard"
            )
            .is_some(),
            "{ctx}: dashboard ConfigMap"
        );

        // OpenShift admission: the SCC allows exactly what the pod asks.
        let scc = objs
            .iter()
            .find(|o| o["kind"] == "SecurityContextConstraints");
        if !privileged {
            assert_eq!(
                pod.security_context
                    .as_ref()
                    .and_then(|s| s.seccomp_profile.as_ref())
                    .map(|p| p.type_.as_str()),
                Some("RuntimeDefault"),
                "{ctx}: seccomp"
            );
        }
        let ns_labels = find(&objs, "Namespace", "", "drainwatch")
            .and_then(|n| n.pointer("/metadata/labels"))
            .cloned()
            .expect("namespace labels");
        assert_eq!(
            ns_labels["pod-security.kubernetes.io/enforce"], "privileged",
            "{ctx}: Pod Security admission"
        );
        if overlay.starts_with("openshift") {
            assert_eq!(
                ns_labels["openshift.io/cluster-monitoring"], "true",
                "{ctx}: platform monitoring"
            );
            let scc = scc.expect("openshift overlays ship an SCC");
            let allowed: Vec<String> = scc["allowedCapabilities"]
                .as_array()
                .expect("allowedCapabilities")
                .iter()
                .map(|c| c.as_str().expect("cap").to_string())
                .collect();
            if privileged {
                assert_eq!(scc["allowPrivilegedContainer"], true, "{ctx}");
            } else {
                assert_eq!(scc["allowPrivilegedContainer"], false, "{ctx}");
                let wanted: Vec<String> = ds_caps(&ds)
                    .iter()
                    .map(|c| c.trim_start_matches("CAP_").to_string())
                    .collect();
                assert_eq!(allowed, wanted, "{ctx}: SCC capabilities");
                assert_eq!(
                    c.security_context
                        .as_ref()
                        .and_then(|s| s.se_linux_options.as_ref())
                        .and_then(|o| o.type_.as_deref()),
                    Some("spc_t"),
                    "{ctx}: SELinux type"
                );
            }
        } else {
            assert!(scc.is_none(), "{ctx}: no SCC outside OpenShift");
            assert!(
                !objs.iter().any(|o| o.pointer("/metadata/namespace")
                    == Some(&Value::from("openshift-kube-apiserver"))),
                "{ctx}: refers to an OpenShift namespace"
            );
        }
    }
}

#[test]
fn monitoring_labels_component_sets_the_operator_selector_labels() {
    // A user's overlay outside deploy/, as the component's comment shows it.
    let dir = std::env::temp_dir().join(format!("drainwatch-monlabels-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    // kustomize takes only relative roots: up from the temporary folder to /.
    let up = "../".repeat(dir.components().count() - 1);
    let deploy = deploy_dir().canonicalize().expect("deploy dir");
    let rel = deploy.to_str().expect("utf8").trim_start_matches('/');
    std::fs::write(
        dir.join("kustomization.yaml"),
        format!(
            "resources: [{up}{rel}/overlays/kubeadm]\ncomponents: [{up}{rel}/components/monitoring-labels]\n"
        ),
    )
    .expect("kustomization");
    let out = Command::new(KUBECTL)
        .arg("kustomize")
        .arg(&dir)
        .output()
        .expect("kubectl");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(out.status.success(), "{}", output_text(&out));
    let objs = yaml_docs(&String::from_utf8_lossy(&out.stdout), "rendered");
    for kind in ["ServiceMonitor", "PrometheusRule"] {
        let o = find(&objs, kind, "drainwatch", "drainwatch").expect(kind);
        assert_eq!(
            o["metadata"]["labels"]["release"], "kube-prometheus-stack",
            "{kind}"
        );
        assert_eq!(
            o["metadata"]["labels"]["app.kubernetes.io/name"],
            "drainwatch"
        );
    }
    // Nothing else is labelled.
    for o in &objs {
        if !["ServiceMonitor", "PrometheusRule"].contains(&o["kind"].as_str().unwrap_or("")) {
            assert!(
                o["metadata"]["labels"].get("release").is_none(),
                "{}",
                label(o)
            );
        }
    }
}

fn prometheus_rule_spec() -> Value {
    let docs = yaml_docs(
        &read(&deploy_dir().join("base/prometheusrule.yaml")),
        "prometheusrule.yaml",
    );
    docs.into_iter()
        .find(|d| d["kind"] == "PrometheusRule")
        .expect("a PrometheusRule")["spec"]
        .clone()
}

#[test]
fn alert_rules_parse_and_cover_each_failure() {
    let rule = yaml_docs(
        &read(&deploy_dir().join("base/prometheusrule.yaml")),
        "prometheusrule.yaml",
    );
    check_prometheus_rule(&rule[0]).expect("structure");
    let spec = prometheus_rule_spec();
    let mut alerts = BTreeMap::new();
    for g in spec["groups"].as_array().expect("groups") {
        for r in g["rules"].as_array().expect("rules") {
            if let Some(a) = r["alert"].as_str() {
                alerts.insert(a.to_string(), r["expr"].as_str().expect("expr").to_string());
            }
        }
    }
    for (alert, needle) in [
        (
            "DrainwatchConnectionsRefused",
            "drainwatch_connect_refused_total",
        ),
        ("DrainwatchEventsLost", "drainwatch_events_lost_total"),
        (
            "DrainwatchMiddleboxIdleResets",
            "drainwatch_wire_resets_total{origin=\"middlebox\"}",
        ),
        (
            "DrainwatchLbDetectionSlowerThanShutdownDelay",
            "drainwatch_disruptions_total{cause=\"lb_detection_slow\"}",
        ),
        ("DrainwatchSourceDown", "(drainwatch_source_up) == 0"),
        (
            "DrainwatchMetricsAbsent",
            "absent(drainwatch_build_info{job=\"drainwatch\"})",
        ),
    ] {
        let expr = alerts
            .get(alert)
            .unwrap_or_else(|| panic!("no alert {alert}: {alerts:?}"));
        assert!(
            expr.contains(needle),
            "{alert} does not use {needle}: {expr}"
        );
    }
    // Every alert links its runbook, which exists and answers the
    // operator's three questions.
    let runbooks = deploy_dir().join("../docs/runbooks");
    for g in spec["groups"].as_array().expect("groups") {
        for r in g["rules"].as_array().expect("rules") {
            let Some(alert) = r["alert"].as_str() else {
                continue;
            };
            let url = r["annotations"]["runbook_url"]
                .as_str()
                .unwrap_or_else(|| panic!("{alert}: no runbook_url"));
            assert!(
                url.starts_with("https://") && url.ends_with(&format!("/docs/runbooks/{alert}.md")),
                "{alert}: runbook_url {url}"
            );
            let text = read(&runbooks.join(format!("{alert}.md")));
            assert!(
                text.starts_with(&format!("# {alert}\n")),
                "{alert}.md title"
            );
            for section in ["## What it means", "## How to confirm", "## What to change"] {
                assert!(text.contains(section), "{alert}.md has no {section:?}");
            }
        }
    }
    let mut files: Vec<String> = std::fs::read_dir(&runbooks)
        .expect("docs/runbooks")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    let mut expected: Vec<String> = alerts.keys().map(|a| format!("{a}.md")).collect();
    expected.sort();
    assert_eq!(files, expected, "one runbook per alert, none stale");

    // The structural check rejects what it should.
    let mut bad = rule[0].clone();
    bad["spec"]["groups"][0]["rules"][0]["for"] = Value::from("1 minute");
    assert!(check_prometheus_rule(&bad).is_err());

    // promtool, when installed (Debian package `prometheus`), parses the
    // expressions too.
    let Ok(version) = Command::new("promtool").arg("--version").output() else {
        assert!(
            std::env::var_os("DRAINWATCH_NO_SKIP").is_none(),
            "promtool not installed (package prometheus): DRAINWATCH_NO_SKIP is set, nothing may skip"
        );
        eprintln!("promtool not installed (apt-get install prometheus): structural check only");
        return;
    };
    assert!(version.status.success());
    // The rules as Prometheus reads them (the PrometheusRule's spec), next
    // to the unit tests that name them rules.yaml.
    let dir = std::env::temp_dir().join(format!("drainwatch-rules-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("rules dir");
    let file = dir.join("rules.yaml");
    std::fs::write(&file, serde_yaml_ng::to_string(&spec).expect("yaml")).expect("write rules");
    let unit = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/alerts.test.yaml");
    let unit_text = read(&unit);
    std::fs::write(dir.join("alerts.test.yaml"), &unit_text).expect("write unit tests");
    let promtool = |args: &[&str]| {
        let out = Command::new("promtool")
            .args(args)
            .current_dir(&dir)
            .output()
            .expect("promtool");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "promtool {args:?}: {text}");
        text
    };
    let checked = promtool(&["check", "rules", "rules.yaml"]);
    assert!(
        checked.contains(&format!("SUCCESS: {} rules found", alerts.len())),
        "{checked}"
    );
    eprintln!("{}", checked.trim());
    let tested = promtool(&["test", "rules", "alerts.test.yaml"]);
    assert!(tested.contains("SUCCESS"), "{tested}");
    let _ = std::fs::remove_dir_all(&dir);
    // Each alert has a unit test that fires it and one that must not.
    let unit: Value = serde_yaml_ng::from_str(&unit_text).expect("alerts.test.yaml");
    let mut firing = BTreeSet::new();
    let mut quiet = BTreeSet::new();
    for t in unit["tests"].as_array().expect("tests") {
        for a in t["alert_rule_test"].as_array().expect("alert_rule_test") {
            let name = a["alertname"].as_str().expect("alertname").to_string();
            if a["exp_alerts"].as_array().is_some_and(|e| e.is_empty()) {
                quiet.insert(name);
            } else {
                firing.insert(name);
            }
        }
    }
    let all: BTreeSet<String> = alerts.keys().cloned().collect();
    assert_eq!(firing, all, "an alert without a unit test that fires it");
    assert_eq!(
        quiet, all,
        "an alert without a unit test that must not fire"
    );
    eprintln!(
        "promtool test rules: {} alerts, {}",
        all.len(),
        tested.trim()
    );
}

fn dashboard() -> Value {
    serde_json::from_str(&read(&deploy_dir().join("base/grafana-dashboard.json")))
        .expect("dashboard JSON")
}

#[test]
fn dashboard_shows_a_rollout_on_one_time_axis() {
    let d = dashboard();
    assert!(d["uid"].as_str().is_some_and(|u| !u.is_empty()), "uid");
    assert!(
        matches!(d["graphTooltip"].as_i64(), Some(1 | 2)),
        "a shared crosshair lines the panels up in time"
    );
    let panels = d["panels"].as_array().expect("panels");
    let mut ys = Vec::new();
    for p in panels {
        let title = p["title"].as_str().expect("title");
        assert!(
            matches!(p["type"].as_str(), Some("timeseries" | "state-timeline")),
            "{title}: panels on the time axis only"
        );
        assert_eq!(p["gridPos"]["x"], 0, "{title}: full width, stacked");
        assert_eq!(p["gridPos"]["w"], 24, "{title}: full width, stacked");
        for k in ["timeFrom", "timeShift"] {
            assert!(
                p.get(k).is_none(),
                "{title}: {k} breaks the common time axis"
            );
        }
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{title}");
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no query");
        for t in targets {
            check_balanced(t["expr"].as_str().expect("expr")).expect(title);
        }
        ys.push(p["gridPos"]["y"].as_i64().expect("y"));
    }
    let mut sorted = ys.clone();
    sorted.sort_unstable();
    assert_eq!(ys, sorted, "panels are laid out top to bottom");
    let used = metric_names(&dashboard_queries(&d));
    for m in [
        "drainwatch_connect_established_total",
        "drainwatch_connect_refused_total",
        "drainwatch_listener_up",
        "drainwatch_wire_resets_total",
        "drainwatch_goaway_total",
        "drainwatch_events_lost_total",
        "drainwatch_lifecycle_phase",
        "drainwatch_lifecycle_phase_timestamp_seconds",
        "drainwatch_probe_requests_total",
        "drainwatch_lb_detection_seconds",
        "drainwatch_disruptions_total",
        "drainwatch_apiserver_health",
        "process_resident_memory_bytes",
    ] {
        assert!(used.contains(m), "the dashboard does not show {m}");
    }
    // The phases as a state timeline, one row per apiserver (the label
    // Prometheus does not overwrite), its numbers mapped to the daemon's
    // phase names in the daemon's order.
    let timeline = panels
        .iter()
        .find(|p| {
            p["type"] == "state-timeline"
                && p["targets"][0]["expr"]
                    .as_str()
                    .is_some_and(|e| e.contains("drainwatch_lifecycle_phase{"))
        })
        .expect("a state timeline of the phases");
    let expr = timeline["targets"][0]["expr"].as_str().expect("expr");
    assert!(expr.contains("by (apiserver)"), "{expr}");
    assert_eq!(timeline["targets"][0]["legendFormat"], "{{apiserver}}");
    let mapping = &timeline["fieldConfig"]["defaults"]["mappings"][0]["options"];
    for k in drainwatch_correlate::PhaseKind::ALL {
        assert_eq!(
            mapping[k.number().to_string()]["text"],
            k.label(),
            "state timeline value {}",
            k.number()
        );
    }
    assert_eq!(
        mapping.as_object().map(|m| m.len()),
        Some(drainwatch_correlate::PhaseKind::ALL.len())
    );
    // Verdicts and phases as annotations on every panel; the phases' time is
    // the metric's value (Unix seconds, Grafana wants milliseconds).
    let ann = d["annotations"]["list"].as_array().expect("annotations");
    assert!(ann.iter().any(|a| {
        a["expr"]
            .as_str()
            .is_some_and(|e| e.contains("drainwatch_disruptions_total"))
            && a["titleFormat"]
                .as_str()
                .is_some_and(|t| t.contains("{{cause}}"))
    }));
    let phases = ann
        .iter()
        .find(|a| {
            a["expr"]
                .as_str()
                .is_some_and(|e| e.contains("drainwatch_lifecycle_phase_timestamp_seconds"))
        })
        .expect("a phase annotation");
    assert_eq!(phases["useValueForTime"], true);
    assert!(
        phases["expr"]
            .as_str()
            .is_some_and(|e| e.ends_with("* 1000"))
    );
    for a in ann {
        assert_eq!(a["datasource"]["uid"], "${datasource}");
        check_balanced(a["expr"].as_str().expect("expr")).expect("annotation");
    }
    // Shipped as a ConfigMap too: the same JSON.
    let cm = render("base")
        .into_iter()
        .find(|o| o["kind"] == "ConfigMap")
        .expect("dashboard ConfigMap");
    let shipped: Value =
        serde_json::from_str(str_at(&cm, "/data/drainwatch.json")).expect("ConfigMap JSON");
    assert_eq!(shipped, d);
}

fn dashboard_queries(d: &Value) -> Vec<String> {
    let mut q = Vec::new();
    for p in d["panels"].as_array().into_iter().flatten() {
        for t in p["targets"].as_array().into_iter().flatten() {
            q.extend(t["expr"].as_str().map(String::from));
        }
    }
    for a in d["annotations"]["list"].as_array().into_iter().flatten() {
        q.extend(a["expr"].as_str().map(String::from));
    }
    for v in d["templating"]["list"].as_array().into_iter().flatten() {
        q.extend(v["definition"].as_str().map(String::from));
        q.extend(v["query"]["query"].as_str().map(String::from));
    }
    q
}

/// `drainwatch_*` and `process_*` (the daemon's process metrics)
/// identifiers in PromQL text.
fn metric_names(queries: &[String]) -> BTreeSet<String> {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut out = BTreeSet::new();
    for q in queries {
        for prefix in ["drainwatch_", "process_"] {
            let mut rest = q.as_str();
            while let Some(i) = rest.find(prefix) {
                let before = rest[..i].chars().last();
                let tail = &rest[i..];
                let len = tail.find(|c: char| !ident(c)).unwrap_or(tail.len());
                if !before.is_some_and(ident) {
                    out.insert(tail[..len].to_string());
                }
                rest = &tail[len..];
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------
// The real daemon, with the DaemonSet's capabilities.

fn root_or_skip(test: &str) -> bool {
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        assert!(
            std::env::var_os("DRAINWATCH_NO_SKIP").is_none(),
            "{test} needs root: DRAINWATCH_NO_SKIP is set (cargo xtask test as root), nothing may skip"
        );
        eprintln!("skipped {test}: needs root to load eBPF programs and to set capabilities");
        return false;
    }
    for tool in ["setpriv", "curl"] {
        if Command::new(tool).arg("--version").output().is_err() {
            assert!(
                std::env::var_os("DRAINWATCH_NO_SKIP").is_none(),
                "{test} needs {tool}: DRAINWATCH_NO_SKIP is set, nothing may skip"
            );
            eprintln!("skipped {test}: {tool} is not installed");
            return false;
        }
    }
    true
}

/// Capability numbers (linux/capability.h) by name.
fn cap_bit(name: &str) -> u32 {
    match name {
        "CAP_NET_ADMIN" => 12,
        "CAP_SYS_ADMIN" => 21,
        "CAP_SYS_RESOURCE" => 24,
        "CAP_PERFMON" => 38,
        "CAP_BPF" => 39,
        _ => panic!("unknown capability {name}"),
    }
}

/// A command run as root holding exactly `caps` (as a container runtime
/// starts it: bounding, permitted and effective sets = caps, inheritable
/// and ambient empty, no_new_privs for allowPrivilegeEscalation: false).
fn with_caps(caps: &[String], program: &str) -> Command {
    let list: Vec<String> = caps
        .iter()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect();
    let mut cmd = Command::new("setpriv");
    cmd.arg(format!(
        "--bounding-set=-all{}",
        if list.is_empty() {
            String::new()
        } else {
            format!(",{}", list.join(","))
        }
    ))
    .arg("--inh-caps=-all")
    .arg("--no-new-privs")
    .arg("--")
    .arg(program);
    cmd
}

fn cap_mask(caps: &[String]) -> u64 {
    caps.iter().fold(0, |m, c| m | (1u64 << cap_bit(c)))
}

fn status_caps(status: &str) -> BTreeMap<String, u64> {
    status
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.starts_with("Cap")
                .then(|| Some((k.to_string(), u64::from_str_radix(v.trim(), 16).ok()?)))?
        })
        .collect()
}

fn output_text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `drainwatch run ... --check` with the DaemonSet's arguments.
fn check_run(caps: Option<&[String]>, args: &[String]) -> Output {
    let mut cmd = match caps {
        Some(c) => with_caps(c, BIN),
        None => Command::new(BIN),
    };
    cmd.args(args)
        .arg("--check")
        .env("DRAINWATCH_LOG", "warn")
        .env("NO_COLOR", "1")
        .output()
        .expect("running drainwatch --check")
}

/// (state, hook) pairs from `--check`'s hook lines.
fn hooks(stdout: &str) -> Vec<(String, String)> {
    stdout
        .lines()
        .filter_map(|l| {
            let l = l.strip_prefix("  ")?;
            let (state, rest) = l.split_once(' ')?;
            let name = rest.trim_start();
            // "tracepoint sock:inet_sock_set_state (N insns verified): why"
            let end = [name.find(" ("), name.find(": ")]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(name.len());
            let name = name[..end].trim();
            ["used", "standby", "unavailable"]
                .contains(&state)
                .then(|| (state.to_string(), name.to_string()))
        })
        .collect()
}

fn used(h: &[(String, String)]) -> BTreeSet<String> {
    h.iter()
        .filter(|(s, _)| s == "used")
        .map(|(_, n)| n.clone())
        .collect()
}

#[test]
fn daemonset_capabilities_load_everything_and_each_is_needed() {
    if !root_or_skip("daemonset_capabilities_load_everything_and_each_is_needed") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let ds = daemonset(&render("overlays/kubeadm"));
    let caps = ds_caps(&ds);
    let args = ds_command(&ds, "127.0.0.1:9977");

    // The setpriv prefix gives exactly those capabilities, like the runtime.
    let st = with_caps(&caps, "cat")
        .arg("/proc/self/status")
        .output()
        .expect("setpriv cat");
    let got = status_caps(&String::from_utf8_lossy(&st.stdout));
    let mask = cap_mask(&caps);
    for (set, want) in [
        ("CapEff", mask),
        ("CapPrm", mask),
        ("CapBnd", mask),
        ("CapInh", 0),
        ("CapAmb", 0),
    ] {
        assert_eq!(got.get(set), Some(&want), "{set} under setpriv: {got:?}");
    }

    // Reference: unrestricted root on this host.
    let full = check_run(None, &args);
    assert!(
        full.status.success(),
        "--check as root: {}",
        output_text(&full)
    );
    let full_hooks = hooks(&String::from_utf8_lossy(&full.stdout));
    let non_tc = |s: &BTreeSet<String>| -> BTreeSet<String> {
        s.iter()
            .filter(|n| !n.starts_with("tc "))
            .cloned()
            .collect()
    };

    // Exactly the DaemonSet's capabilities: the same hooks in use.
    let t0 = Instant::now();
    let ds_run = check_run(Some(&caps), &args);
    let text = output_text(&ds_run);
    eprintln!("--check with {caps:?} ({:?}):\n{text}", t0.elapsed());
    assert!(
        ds_run.status.success(),
        "--check with {caps:?} failed:\n{text}"
    );
    let ds_hooks = hooks(&String::from_utf8_lossy(&ds_run.stdout));
    assert_eq!(
        non_tc(&used(&ds_hooks)),
        non_tc(&used(&full_hooks)),
        "tracepoint/kprobe hooks differ from a full root run"
    );
    assert!(
        used(&ds_hooks).iter().any(|h| h.starts_with("tracepoint ")),
        "no tracepoint used"
    );
    let tc: Vec<_> = ds_hooks
        .iter()
        .filter(|(_, n)| n.starts_with("tc "))
        .collect();
    assert!(
        !tc.is_empty() && tc.iter().all(|(s, _)| s == "used"),
        "the TC classifier must attach with these capabilities: {tc:?}"
    );

    // One removed at a time: what breaks, and what the daemon says.
    for missing in &caps {
        let fewer: Vec<String> = caps.iter().filter(|c| *c != missing).cloned().collect();
        let out = check_run(Some(&fewer), &args);
        let text = output_text(&out);
        eprintln!(
            "--check without {missing}: exit {:?}\n{text}",
            out.status.code()
        );
        if missing == "CAP_NET_ADMIN" {
            // Degrades, never dies: the tracepoints work, the wire observer is off.
            assert!(out.status.success(), "without {missing}:\n{text}");
            let h = hooks(&String::from_utf8_lossy(&out.stdout));
            assert_eq!(non_tc(&used(&h)), non_tc(&used(&ds_hooks)));
            let tc_lines: Vec<&str> = text.lines().filter(|l| l.contains("  tc ")).collect();
            assert!(
                !tc_lines.is_empty()
                    && tc_lines.iter().all(|l| l.contains("unavailable")
                        && (l.contains("CAP_NET_ADMIN") || l.contains("Operation not permitted"))),
                "without {missing} the tc hooks must be unavailable with a reason:\n{text}"
            );
        } else {
            assert!(
                !out.status.success(),
                "--check succeeded without {missing}:\n{text}"
            );
            assert!(
                text.contains(missing.as_str()),
                "the error does not name {missing}:\n{text}"
            );
        }
    }

    // Why root uid: a non-root uid with the same capabilities (ambient)
    // cannot read tracefs, which is root-only.
    let mut nonroot = Command::new("setpriv");
    let plus: Vec<String> = caps
        .iter()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect();
    let plus = plus.join(",");
    nonroot
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(format!("--bounding-set=-all,{plus}"))
        .arg(format!("--inh-caps=-all,{plus}"))
        .arg(format!("--ambient-caps=-all,{plus}"))
        .args(["--no-new-privs", "--", BIN])
        .args(&args)
        .arg("--check");
    let out = nonroot.output().expect("setpriv non-root");
    let text = output_text(&out);
    eprintln!(
        "--check as uid 65534 with {caps:?}: exit {:?}\n{text}",
        out.status.code()
    );
    assert!(
        !out.status.success(),
        "non-root unexpectedly worked:\n{text}"
    );
    assert!(text.contains("tracefs"), "{text}");

    // Why the tracefs hostPath: without it the daemon would need
    // CAP_SYS_ADMIN to mount tracefs (private mount namespace, host untouched).
    let unmounted = |extra: &[&str]| -> Output {
        let mut c = caps.clone();
        c.extend(extra.iter().map(|s| s.to_string()));
        let prefix = with_caps(&c, BIN);
        let mut line: Vec<String> = prefix
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        line.insert(0, "setpriv".into());
        line.extend(args.iter().cloned());
        line.push("--check".into());
        Command::new("unshare")
            .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
            .arg(
                "umount -l /sys/kernel/tracing 2>/dev/null; umount -l /sys/kernel/debug 2>/dev/null; exec \"$@\"",
            )
            .arg("sh")
            .args(&line)
            .env("DRAINWATCH_LOG", "warn")
            .output()
            .expect("unshare")
    };
    let out = unmounted(&[]);
    let text = output_text(&out);
    eprintln!(
        "--check with {caps:?}, tracefs not mounted: exit {:?}\n{text}",
        out.status.code()
    );
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("tracefs is not mounted"), "{text}");
    let out = unmounted(&["CAP_SYS_ADMIN"]);
    assert!(
        out.status.success(),
        "with CAP_SYS_ADMIN the daemon mounts tracefs itself:\n{}",
        output_text(&out)
    );

    // Why no CAP_SYS_RESOURCE: map memory is charged to the memory cgroup
    // (Linux >= 5.11), so a 64 KiB RLIMIT_MEMLOCK the daemon cannot raise
    // does not matter.
    let out = Command::new("prlimit")
        .arg("--memlock=65536:65536")
        .arg("setpriv")
        .args(with_caps(&caps, BIN).get_args())
        .args(&args)
        .args(["--ringbuf-bytes", "4194304", "--check"])
        .env("DRAINWATCH_LOG", "warn")
        .output()
        .expect("prlimit");
    let text = output_text(&out);
    assert!(
        out.status.success(),
        "with RLIMIT_MEMLOCK 64 KiB and no CAP_SYS_RESOURCE (kernel {}):\n{text}",
        read(Path::new("/proc/sys/kernel/osrelease")).trim()
    );
}

struct Daemon {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// (status, body) of GET http://addr/path, via curl.
fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "2", "-w", "\n%{http_code}"])
        .arg(format!("http://{addr}{path}"))
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n')?;
    Some((code.trim().parse().ok()?, body.to_string()))
}

/// Metric families (`# TYPE name kind`) on /metrics.
fn families(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.strip_prefix("# TYPE ")?.split_whitespace();
            Some((w.next()?.to_string(), w.next()?.to_string()))
        })
        .collect()
}

/// The family a query's series name belongs to (histogram suffixes stripped).
fn family_of(name: &str, fams: &BTreeMap<String, String>) -> Option<String> {
    if fams.contains_key(name) {
        return Some(name.to_string());
    }
    ["_bucket", "_sum", "_count"].iter().find_map(|s| {
        let base = name.strip_suffix(s)?;
        matches!(
            fams.get(base).map(String::as_str),
            Some("histogram" | "summary")
        )
        .then(|| base.to_string())
    })
}

/// IPv4 TCP sockets of this thread's namespace on `port` at either end:
/// (local port, remote port, state, receive queue). For a listener the receive queue
/// is its accept queue. `thread-self`: `/proc/net` is the main thread's
/// namespace, not that of a thread that joined a test namespace.
fn tcp_sockets(port: u16) -> Vec<(u16, u16, u8, u32)> {
    let text =
        std::fs::read_to_string("/proc/thread-self/net/tcp").expect("/proc/thread-self/net/tcp");
    let hex_port = |a: &str| {
        a.rsplit_once(':')
            .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
    };
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let local = hex_port(f.get(1)?)?;
            let remote = hex_port(f.get(2)?)?;
            let state = u8::from_str_radix(f.get(3)?, 16).ok()?;
            let rx = u32::from_str_radix(f.get(4)?.split_once(':')?.1, 16).ok()?;
            Some((local, remote, state, rx))
        })
        .filter(|(l, r, _, _)| *l == port || *r == port)
        .collect()
}

const TCP_SYN_SENT: u8 = 2;
const TCP_LISTEN: u8 = 10;

/// Traffic on a watched port over loopback that creates every lazily
/// registered series the dashboard and alerts use.
fn drive_traffic(port: u16) {
    let at: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    // Refused: nothing listens.
    let e = TcpStream::connect_timeout(&at, Duration::from_secs(2)).expect_err("refused");
    assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{e}");

    // Established, accepted, closed; HTTP/2 in cleartext with a GOAWAY.
    let listener =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    listener.set_reuse_address(true).expect("reuseaddr");
    listener.bind(&at.into()).expect("bind");
    listener.listen(0).expect("listen");
    let listener: TcpListener = listener.into();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut buf = [0u8; 33];
        s.read_exact(&mut buf).expect("preface and SETTINGS");
        assert_eq!(&buf[..3], b"PRI");
        let mut frames = vec![0, 0, 0, 4, 0, 0, 0, 0, 0]; // SETTINGS
        frames.extend([0, 0, 8, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]); // GOAWAY NO_ERROR
        s.write_all(&frames).expect("write frames");
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        listener
    });
    let mut c = TcpStream::connect_timeout(&at, Duration::from_secs(2)).expect("connect");
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend([0, 0, 0, 4, 0, 0, 0, 0, 0]);
    c.write_all(&hello).expect("preface");
    c.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut frames = [0u8; 26];
    c.read_exact(&mut frames).expect("SETTINGS and GOAWAY");
    assert_eq!(frames[12], 7, "GOAWAY frame type");
    drop(c);
    let listener = server.join().expect("server thread");

    // Aborted mid-handshake: with the accept queue full (backlog 0, one
    // queued) the next SYN is dropped; the client gives up while SYN_SENT.
    let queued = TcpStream::connect_timeout(&at, Duration::from_secs(2)).expect("queued");
    // Full once the kernel has queued that connection (the client may see the
    // handshake done a moment before the listener side has).
    common::wait_for(
        Duration::from_secs(10),
        "the first connection in the listener's accept queue",
        || {
            let socks = tcp_sockets(at.port());
            let queue = socks
                .iter()
                .find(|(l, _, st, _)| *l == at.port() && *st == TCP_LISTEN)
                .map_or(0, |s| s.3);
            if queue >= 1 {
                Ok(())
            } else {
                Err(format!("{socks:?}"))
            }
        },
    );
    let pending =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    pending.set_nonblocking(true).expect("nonblocking");
    let _ = pending.connect(&at.into());
    // Checked, not assumed: with the queue full nothing answers the SYN, so the
    // socket is still connecting when it is dropped.
    let local = pending
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .map(|a| a.port())
        .expect("the pending socket's port");
    let socks = tcp_sockets(at.port());
    assert!(
        socks
            .iter()
            .any(|(l, r, st, _)| (*l, *r, *st) == (local, at.port(), TCP_SYN_SENT)),
        "the second connect should be left in SYN_SENT: {socks:?}"
    );
    drop(pending);
    drop(queued);
    drop(listener);
}

#[test]
fn daemon_with_daemonset_caps_serves_probes_and_fits_its_memory_limit() {
    if !root_or_skip("daemon_with_daemonset_caps_serves_probes_and_fits_its_memory_limit") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let started = Instant::now();
    let objs = render("overlays/kubeadm");
    let ds = daemonset(&objs);
    let caps = ds_caps(&ds);
    let watched = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let child = with_caps(&caps, BIN)
        .args(["run", "--output", "none", "--metrics-addr"])
        .arg(addr.to_string())
        .args(["--port", &watched.to_string()])
        .env("DRAINWATCH_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn drainwatch");
    let mut d = Daemon { child, addr };

    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(st) = d.child.try_wait().expect("try_wait") {
            let mut err = String::new();
            if let Some(mut e) = d.child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            panic!("drainwatch exited ({st}) with {caps:?}:\n{err}");
        }
        if get(d.addr, "/metrics").is_some_and(|(c, _)| c == 200) {
            break;
        }
        assert!(Instant::now() < deadline, "no /metrics after 60 s");
        std::thread::sleep(Duration::from_millis(200));
    }
    let pid = d.child.id();
    let status = read(Path::new(&format!("/proc/{pid}/status")));
    assert_eq!(
        status_caps(&status).get("CapEff"),
        Some(&cap_mask(&caps)),
        "the daemon runs with exactly {caps:?}"
    );

    // The DaemonSet's probes hit the daemon's own endpoints.
    let c = &ds
        .spec
        .as_ref()
        .expect("spec")
        .template
        .spec
        .as_ref()
        .expect("pod")
        .containers[0];
    for probe in [&c.liveness_probe, &c.readiness_probe, &c.startup_probe] {
        let path = probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .and_then(|g| g.path.clone())
            .expect("probe path");
        // /readyz turns 200 once the event reader runs, a moment after
        // /metrics starts answering: poll, bounded, as the kubelet does.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let code = loop {
            let (code, _) = get(d.addr, &path).unwrap_or_else(|| panic!("GET {path} failed"));
            if code == 200 || std::time::Instant::now() > deadline {
                break code;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        };
        assert_eq!(code, 200, "probe {path}");
    }

    // Traffic on the watched port, so the peak RSS below is under load
    // (the metrics the dashboard and alerts use: the rollout test below).
    drive_traffic(watched);

    // Memory: the RSS target and the container limit.
    let status = read(Path::new(&format!("/proc/{pid}/status")));
    let kb = |key: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS/VmHWM")
    };
    let (rss, hwm) = (kb("VmRSS:"), kb("VmHWM:"));
    let limit = c
        .resources
        .as_ref()
        .and_then(|r| r.limits.as_ref())
        .and_then(|l| l.get("memory"))
        .map(|q| q.0.clone())
        .expect("memory limit");
    let limit_kib: u64 = limit
        .strip_suffix("Mi")
        .and_then(|n| n.parse::<u64>().ok())
        .map(|n| n * 1024)
        .expect("memory limit in Mi");
    eprintln!(
        "drainwatch (this build) RSS {} KiB, peak {} KiB; DaemonSet limit {limit}",
        rss, hwm
    );
    assert!(
        hwm * 4 < limit_kib * 3,
        "peak RSS {hwm} KiB leaves too little of the {limit} limit for the kernel maps"
    );

    // SIGTERM: clean exit, everything detached.
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let st = d.child.wait().expect("wait");
    assert!(st.success(), "drainwatch exited {st} on SIGTERM");
    eprintln!("daemon test took {:?}", started.elapsed());
}

/// Every metric the dashboard (panels, annotations, variables) and the
/// alert rules use, with who uses it.
fn metrics_used() -> BTreeMap<String, Vec<&'static str>> {
    let mut uses: BTreeMap<String, Vec<&'static str>> = BTreeMap::new();
    for m in metric_names(&dashboard_queries(&dashboard())) {
        uses.entry(m).or_default().push("dashboard");
    }
    let spec = prometheus_rule_spec();
    let exprs: Vec<String> = spec["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_array().into_iter().flatten())
        .filter_map(|r| r["expr"].as_str().map(String::from))
        .collect();
    for m in metric_names(&exprs) {
        uses.entry(m).or_default().push("alerts");
    }
    uses
}

/// Unix time now, seconds.
fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs_f64()
}

#[test]
fn dashboard_and_alerts_use_only_metrics_a_rolled_daemon_exports() {
    if !root_or_skip("dashboard_and_alerts_use_only_metrics_a_rolled_daemon_exports") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let uses = metrics_used();
    assert!(
        uses.len() >= 15,
        "too few metrics found in the queries: {uses:?}"
    );
    let before = unix_now();
    // A real rollout: the lab's apiserver stand-in, polled, probed and
    // rolled with SIGTERM; a client connecting through "the LB" (--lb-addr:
    // the client namespace's address) after /readyz turned red gives the
    // LB detection time; loopback traffic on a second watched port gives
    // the wire's metrics (RST origin, GOAWAY).
    let pair = common::Pair::new();
    let dir = std::env::temp_dir().join(format!("dwt-dash-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let mut standin = common::graceful_standin(&pair, &dir, "2s", "2s");
    let ca = dir.join("pki/ca.crt");
    let kubeconfig = common::standin_kubeconfig(&pair, &dir, "dash");
    let url = format!("https://{}:6443/", pair.server_v4);
    let other = common::free_port();
    let d = common::Daemon::start_in(
        Some(&pair.server),
        &[
            "--port",
            "6443",
            "--port",
            &other.to_string(),
            "--instance",
            "m1",
            "--apiserver-url",
            &url,
            "--apiserver-ca",
            ca.to_str().expect("utf8"),
            "--readyz-interval",
            "200ms",
            "--probe-kubeconfig",
            kubeconfig.to_str().expect("utf8"),
            "--probe-interval",
            "100ms",
            "--shutdown-delay",
            "2s",
            "--request-timeout",
            "2s",
            "--lb-addr",
            &pair.client_v4,
        ],
    );
    let readyz = format!(
        "drainwatch_apiserver_health{{apiserver=\"{}:6443\",check=\"readyz\"}}",
        pair.server_v4
    );
    common::wait_for(Duration::from_secs(10), "/readyz polled green", || {
        (d.metric(&readyz) == 1.0)
            .then_some(())
            .ok_or_else(|| d.metrics())
    });
    // SAFETY: signalling the stand-in we started.
    unsafe { libc::kill(standin.0.id() as i32, libc::SIGTERM) };
    common::wait_for(Duration::from_secs(10), "/readyz polled red", || {
        (d.metric(&readyz) == 0.0)
            .then_some(())
            .ok_or_else(|| d.metrics())
    });
    // A new connection through the LB during the shutdown delay.
    let server = format!("{}:6443", pair.server_v4);
    pair.in_client(move || {
        let at: SocketAddr = server.parse().expect("addr");
        let c = TcpStream::connect_timeout(&at, Duration::from_secs(2))
            .expect("the stand-in still accepts during its shutdown delay");
        drop(c);
    });
    let _ = standin.0.wait();
    // The rollout's series first: a listener on the other port opened and
    // closed would be a phase of this apiserver too (node-local, same
    // instance), so the wire's traffic comes after.
    let lb_series = "drainwatch_lb_detection_seconds{apiserver=\"m1\"}";
    let text = common::wait_for(
        Duration::from_secs(20),
        "the rollout's phases and LB detection time on /metrics",
        || {
            let text = d.metrics();
            if text.contains(lb_series)
                && text.contains("drainwatch_lifecycle_phase_timestamp_seconds{apiserver=\"m1\",phase=\"listener_closed\"}")
            {
                Ok(text)
            } else {
                Err(text)
            }
        },
    );
    // Phase times are Unix seconds (not the boot clock), labelled by
    // apiserver; the state timeline's gauge is a phase number.
    let after = unix_now();
    for phase in ["sigterm", "readyz_red", "listener_closed"] {
        let t = common::parse_metric(
            &text,
            &format!(
                "drainwatch_lifecycle_phase_timestamp_seconds{{apiserver=\"m1\",phase=\"{phase}\"}}"
            ),
        );
        assert!(
            (before..=after).contains(&t),
            "{phase} at {t}, not within the test's Unix time [{before}, {after}]:\n{text}"
        );
    }
    let number = common::parse_metric(&text, "drainwatch_lifecycle_phase{apiserver=\"m1\"}");
    assert!(
        number >= drainwatch_correlate::PhaseKind::ListenerClosed.number() as f64
            && number <= drainwatch_correlate::PhaseKind::ALL.len() as f64,
        "phase number {number}"
    );
    let lb = common::parse_metric(&text, lb_series);
    assert!(
        (0.0..2.0).contains(&lb),
        "LB detection {lb} s, inside the 2 s delay"
    );

    pair.in_server(move || drive_traffic(other));
    let missing = |fams: &BTreeMap<String, String>| -> Vec<String> {
        uses.iter()
            .filter(|(m, _)| family_of(m, fams).is_none())
            .map(|(m, u)| format!("{m} (used by {})", u.join(", ")))
            .collect()
    };
    let text = common::wait_for(
        Duration::from_secs(20),
        "every metric the dashboard and the alerts use on /metrics",
        || {
            let text = d.metrics();
            let absent = missing(&families(&text));
            if absent.is_empty() {
                Ok(text)
            } else {
                Err(format!("missing:\n{}\n{text}", absent.join("\n")))
            }
        },
    );
    eprintln!(
        "{} metrics used by the dashboard and the alerts, all on /metrics: {:?}",
        uses.len(),
        uses.keys().collect::<Vec<_>>()
    );
    assert!(
        !text.contains("instance=\""),
        "no series carries an instance label:\n{text}"
    );
    assert!(d.stop().success());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn image_definition_matches_the_workspace_and_the_daemonset() {
    let file = read(&deploy_dir().join("Dockerfile"));
    let workspace = read(&deploy_dir().join("../Cargo.toml"));
    let rust_version = workspace
        .lines()
        .find_map(|l| l.trim().strip_prefix("rust-version = "))
        .map(|v| v.trim_matches('"').to_string())
        .expect("workspace rust-version");
    assert!(
        file.contains(&format!("ARG RUST_VERSION={rust_version}\n")),
        "the build image must be the workspace's Rust {rust_version}"
    );
    for needle in [
        "rustup toolchain install nightly",
        "--component rust-src",
        "cargo +nightly install bpf-linker",
        "--features \"llvm-$major,no-llvm-linking\"",
        "cargo build --release --locked -p probe-user",
    ] {
        assert!(file.contains(needle), "Dockerfile lacks {needle:?}");
    }
    let froms: Vec<&str> = file.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert_eq!(froms.len(), 2, "build and runtime stages: {froms:?}");
    assert!(froms[0].ends_with(" AS build"), "{froms:?}");
    assert!(
        froms[1].contains("debian:") && froms[1].contains("-slim"),
        "{froms:?}"
    );

    let ds = daemonset(&render("overlays/kubeadm"));
    let c = &ds
        .spec
        .as_ref()
        .expect("spec")
        .template
        .spec
        .as_ref()
        .expect("pod")
        .containers[0];
    let bin = c.command.as_ref().expect("command")[0].clone();
    assert!(
        file.lines()
            .any(|l| l.starts_with("COPY --from=build ") && l.ends_with(&format!(" {bin}"))),
        "the image must put the binary at the DaemonSet's {bin}"
    );
    let entry: Vec<String> = file
        .lines()
        .find_map(|l| l.strip_prefix("ENTRYPOINT "))
        .map(|j| serde_json::from_str(j).expect("ENTRYPOINT is a JSON array"))
        .expect("ENTRYPOINT");
    assert_eq!(entry, [bin.as_str(), "run", "--output", "json"]);
    // The defaults parse with the real binary (clap rejects bad values
    // before it prints help).
    let out = Command::new(BIN)
        .args(&entry[1..])
        .arg("--help")
        .output()
        .expect("drainwatch --help");
    assert!(out.status.success(), "{}", output_text(&out));
}

/// The client overlay (workers of a managed cluster): renders valid objects
/// that never collide with a control-plane overlay's, runs on workers only
/// with no control-plane toleration, watches every network namespace but
/// only the apiserver's endpoints, sees the node's pids and its cgroup tree
/// (read-only), reads the node's pods and the kubernetes EndpointSlices
/// (read-only) with its ServiceAccount; and the daemon started with exactly
/// its arguments, in a pod's environment, watches the kubernetes Service and
/// the kubelet kubeconfig's server.
#[test]
fn client_overlay_runs_on_workers_and_watches_the_apiserver_endpoints() {
    let objs = render("overlays/client");
    let errors: Vec<String> = objs
        .iter()
        .filter_map(|v| check_object(v).err().map(|e| format!("{}: {e}", label(v))))
        .collect();
    assert!(errors.is_empty(), "overlays/client: {}", errors.join("\n"));
    let masters = render("overlays/kubeadm");
    for o in &objs {
        let (kind, ns, name) = (
            o["kind"].as_str().unwrap_or_default(),
            o.pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .unwrap_or(""),
            o.pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or(""),
        );
        if kind != "Namespace" {
            assert!(
                find(&masters, kind, ns, name).is_none(),
                "{kind} {ns}/{name} is in the kubeadm overlay too"
            );
        }
    }
    let ds = find(&objs, "DaemonSet", "drainwatch", "drainwatch-client").expect("the DaemonSet");
    let ds: DaemonSet = serde_json::from_value(ds.clone()).expect("typed DaemonSet");
    let spec = ds.spec.as_ref().expect("spec");
    let pod = spec.template.spec.clone().expect("pod spec");
    assert!(pod.tolerations.is_none(), "{:?}", pod.tolerations);
    assert!(pod.node_selector.is_none());
    assert_eq!(
        pod.priority_class_name, None,
        "ordinary priority on workers"
    );
    let terms = pod
        .affinity
        .and_then(|a| a.node_affinity)
        .and_then(|n| n.required_during_scheduling_ignored_during_execution)
        .expect("required node affinity")
        .node_selector_terms;
    assert_eq!(terms.len(), 1);
    let exprs: Vec<(String, String)> = terms[0]
        .match_expressions
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|e| (e.key, e.operator))
        .collect();
    assert_eq!(
        exprs,
        vec![
            (
                "node-role.kubernetes.io/control-plane".to_string(),
                "DoesNotExist".to_string()
            ),
            (
                "node-role.kubernetes.io/master".to_string(),
                "DoesNotExist".to_string()
            ),
        ]
    );
    let labels = spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone());
    assert_eq!(
        spec.selector.match_labels, labels,
        "the selector is the pods' labels"
    );
    let svc = find(&objs, "Service", "drainwatch", "drainwatch-client").expect("Service");
    let sel: BTreeMap<String, String> =
        serde_json::from_value(svc["spec"]["selector"].clone()).expect("selector");
    assert_eq!(Some(sel), labels, "its Service selects exactly its pods");
    let role = find(&objs, "ClusterRole", "", "drainwatch-read-node-pods-client").expect("role");
    let role: ClusterRole = serde_json::from_value(role.clone()).expect("typed");
    let rules = role.rules.expect("rules");
    assert_eq!(rules.len(), 1);
    assert_eq!(rules[0].resources, Some(vec!["pods".to_string()]));
    assert_eq!(rules[0].verbs, vec!["get", "list", "watch"]);
    let binding = find(
        &objs,
        "ClusterRoleBinding",
        "",
        "drainwatch-read-node-pods-client",
    )
    .expect("binding");
    assert_eq!(binding["subjects"][0]["name"], "drainwatch-client");
    assert_eq!(binding["subjects"][0]["namespace"], "drainwatch");
    // The Events about the pods a verdict hurt, in whatever namespace they
    // run: create and patch of events.k8s.io events, cluster-wide, nothing else.
    let name = "drainwatch-write-pod-events-client";
    let role = find(&objs, "ClusterRole", "", name).expect("pod events role");
    let role: ClusterRole = serde_json::from_value(role.clone()).expect("typed");
    let rules: Vec<(Vec<String>, Vec<String>, Vec<String>)> = role
        .rules
        .expect("rules")
        .into_iter()
        .map(|r| {
            (
                r.api_groups.unwrap_or_default(),
                r.resources.unwrap_or_default(),
                r.verbs,
            )
        })
        .collect();
    assert_eq!(
        rules,
        [(
            vec!["events.k8s.io".to_string()],
            vec!["events".to_string()],
            vec!["create".to_string(), "patch".to_string()]
        )]
    );
    let binding = find(&objs, "ClusterRoleBinding", "", name).expect("binding");
    assert_eq!(binding["roleRef"]["kind"], "ClusterRole");
    assert_eq!(binding["roleRef"]["name"], name);
    assert_eq!(binding["subjects"][0]["name"], "drainwatch-client");
    assert_eq!(binding["subjects"][0]["namespace"], "drainwatch");
    // The EndpointSlices of the kubernetes Service: only where they live.
    let name = "drainwatch-read-kubernetes-endpoints-client";
    let role = find(&objs, "Role", "default", name).expect("EndpointSlice role");
    let role: Role = serde_json::from_value(role.clone()).expect("typed");
    let rules = role.rules.expect("rules");
    assert_eq!(rules.len(), 1);
    assert_eq!(
        rules[0].api_groups,
        Some(vec!["discovery.k8s.io".to_string()])
    );
    assert_eq!(rules[0].resources, Some(vec!["endpointslices".to_string()]));
    assert_eq!(rules[0].verbs, vec!["get", "list", "watch"]);
    let binding = find(&objs, "RoleBinding", "default", name).expect("binding");
    assert_eq!(binding["roleRef"]["name"], name);
    assert_eq!(binding["subjects"][0]["name"], "drainwatch-client");
    assert_eq!(binding["subjects"][0]["namespace"], "drainwatch");
    // The node's pids and, read-only, its cgroup tree where the daemon
    // looks for the cgroup2 mount, over the container's own.
    assert_eq!(pod.host_pid, Some(true));
    let host_cgroup = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| {
            v.host_path
                .as_ref()
                .is_some_and(|h| h.path == "/sys/fs/cgroup")
        })
        .expect("a hostPath volume of /sys/fs/cgroup");
    assert_eq!(
        host_cgroup
            .host_path
            .as_ref()
            .and_then(|h| h.type_.as_deref()),
        Some("Directory")
    );
    let container = &pod.containers[0];
    let mount = container
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == host_cgroup.name)
        .expect("the cgroup tree mounted");
    assert_eq!(
        (mount.mount_path.as_str(), mount.read_only),
        ("/sys/fs/cgroup", Some(true))
    );

    let args = ds_command(&ds, "127.0.0.1:0");
    for a in ["--netns=all", "--apiserver-endpoint=auto"] {
        assert!(args.iter().any(|x| x == a), "{a} in {args:?}");
    }
    // The API with the pod's ServiceAccount (which the roles above bind),
    // not the kubelet's kubeconfig, whose credentials are not mounted; that
    // file only names the server (the base's DRAINWATCH_PROBE_KUBECONFIG).
    assert!(
        !args.iter().any(|x| x.starts_with("--kubeconfig")),
        "{args:?}"
    );
    let probe_kubeconfig = container
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "DRAINWATCH_PROBE_KUBECONFIG")
        .and_then(|e| e.value.clone());
    assert_eq!(
        probe_kubeconfig.as_deref(),
        Some("/var/lib/kubelet/kubeconfig")
    );
    // As in a pod: the kubernetes Service's address in the environment,
    // the kubelet's kubeconfig (here a copy naming the cloud LB) where the
    // overlay says. `run --check` needs root (it loads the programs).
    if unsafe { libc::geteuid() } != 0 {
        assert!(
            std::env::var_os("DRAINWATCH_NO_SKIP").is_none(),
            "needs root: DRAINWATCH_NO_SKIP is set"
        );
        eprintln!("skipped the daemon half: needs root");
        return;
    }
    let dir = std::env::temp_dir().join(format!("dwt-client-overlay-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let kc = dir.join("kubeconfig");
    std::fs::write(
        &kc,
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://198.18.7.10:443\n    insecure-skip-tls-verify: true\ncontexts:\n- name: c\n  context:\n    cluster: c\n    user: u\ncurrent-context: c\nusers:\n- name: u\n  user:\n    token: t\n",
    )
    .expect("kubeconfig");
    let args: Vec<String> = args
        .into_iter()
        .chain(["--check".to_string(), "--no-kube".to_string()])
        .collect();
    let out = Command::new(BIN)
        .args(&args)
        .env("KUBERNETES_SERVICE_HOST", "198.18.7.1")
        .env("KUBERNETES_SERVICE_PORT", "443")
        .env("DRAINWATCH_PROBE_KUBECONFIG", &kc)
        .output()
        .expect("drainwatch run --check");
    let _ = std::fs::remove_dir_all(&dir);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("ports       [443]\n"), "{text}");
    assert!(
        text.contains(
            "  198.18.7.1:443 (from 198.18.7.1:443 (the kubernetes Service (KUBERNETES_SERVICE_HOST)))"
        ),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "  198.18.7.10:443 (from 198.18.7.10:443 (the server of {}))",
            kc.display()
        )),
        "{text}"
    );
    assert!(
        text.contains(
            "  the kubernetes EndpointSlice (default, kubernetes.io/service-name=kubernetes): not read (--no-kube)\n"
        ),
        "{text}"
    );
}
