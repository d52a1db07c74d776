//! Kubernetes manifests (multi-document YAML) into typed k8s-openapi objects, keeping
//! only what the rules need: where the pod spec sits and its annotations.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Pod, PodSpec, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_yaml_ng::Value;
use thiserror::Error;

/// Where an object came from and what it is.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ObjectRef {
    /// File name as given (`-` is shown as `<stdin>`).
    pub file: String,
    /// 1-based index of the YAML document in the file.
    pub document: usize,
    /// `Deployment`, `Pod`, ...
    pub kind: String,
    /// `metadata.namespace`, if set.
    pub namespace: Option<String>,
    /// `metadata.name` (or `generateName`).
    pub name: String,
}

impl std::fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{} {}/{}", self.kind, ns, self.name),
            None => write!(f, "{} {}", self.kind, self.name),
        }
    }
}

/// A workload whose pod spec can be audited.
#[derive(Debug, Clone)]
pub struct Workload {
    /// The object.
    pub object: ObjectRef,
    /// Field path of the pod spec inside the object, e.g. `spec.template.spec`.
    pub spec_path: &'static str,
    /// Pod-template annotations, falling back to the object's own.
    pub annotations: BTreeMap<String, String>,
    /// The pod spec.
    pub spec: PodSpec,
}

/// A document that was read but has no pods to audit.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Skipped {
    /// The object.
    #[serde(flatten)]
    pub object: ObjectRef,
    /// Its apiVersion.
    pub api_version: String,
    /// Why it was not audited.
    pub reason: String,
}

/// Everything read from the inputs.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    /// Objects with a pod spec.
    pub workloads: Vec<Workload>,
    /// Objects of other kinds (reported as notes).
    pub skipped: Vec<Skipped>,
}

/// A manifest that cannot be audited. Every variant names the file and document.
#[derive(Debug, Error)]
pub enum LoadError {
    /// YAML syntax error.
    #[error("{file}: document {document}: invalid YAML: {source}")]
    Yaml {
        /// File name.
        file: String,
        /// 1-based document index.
        document: usize,
        /// Parser error, with line and column.
        source: serde_yaml_ng::Error,
    },
    /// Valid YAML that is not a Kubernetes object.
    #[error("{file}: document {document}: not a Kubernetes object: {reason}")]
    NotAnObject {
        /// File name.
        file: String,
        /// 1-based document index.
        document: usize,
        /// What is missing.
        reason: String,
    },
    /// A known kind whose fields do not fit the Kubernetes schema.
    #[error(
        "{file}: document {document}: {kind} {name:?} does not match the {api_version} {kind} schema: {source}"
    )]
    Schema {
        /// File name.
        file: String,
        /// 1-based document index.
        document: usize,
        /// apiVersion of the document.
        api_version: String,
        /// Kind.
        kind: String,
        /// metadata.name, if any.
        name: String,
        /// Deserializer error.
        source: serde_yaml_ng::Error,
    },
    /// A workload kind at an apiVersion this tool does not read.
    #[error(
        "{file}: document {document}: {api_version} {kind} {name:?} is not supported: use {expected}"
    )]
    UnsupportedVersion {
        /// File name.
        file: String,
        /// 1-based document index.
        document: usize,
        /// apiVersion of the document.
        api_version: String,
        /// Kind.
        kind: String,
        /// metadata.name, if any.
        name: String,
        /// The apiVersion that is read.
        expected: &'static str,
    },
    /// With `--strict`: a kind that has no pods to audit.
    #[error(
        "{file}: document {document}: unknown kind {api_version} {kind} {name:?}: audit reads Pod, Deployment, DaemonSet, StatefulSet, ReplicaSet, Job and CronJob (without --strict other kinds are skipped with a note)"
    )]
    UnknownKind {
        /// File name.
        file: String,
        /// 1-based document index.
        document: usize,
        /// apiVersion of the document.
        api_version: String,
        /// Kind.
        kind: String,
        /// metadata.name, if any.
        name: String,
    },
}

/// How to treat kinds without pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnknownKinds {
    /// Skip them with a note (the default: real manifests mix in Services, ConfigMaps...).
    Skip,
    /// Reject them.
    Error,
}

/// Reads every document of one file's text into `into`.
pub fn load_str(
    file: &str,
    text: &str,
    unknown: UnknownKinds,
    into: &mut Loaded,
) -> Result<(), LoadError> {
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let document = i + 1;
        let mut value = Value::deserialize(doc).map_err(|source| LoadError::Yaml {
            file: file.to_string(),
            document,
            source,
        })?;
        // `---` separators around nothing are common in generated manifests.
        if value.is_null() {
            continue;
        }
        value.apply_merge().map_err(|source| LoadError::Yaml {
            file: file.to_string(),
            document,
            source,
        })?;
        load_value(file, document, value, unknown, into)?;
    }
    Ok(())
}

fn str_field<'v>(value: &'v Value, key: &str) -> Option<&'v str> {
    value.get(key).and_then(Value::as_str)
}

// Long (about 160 lines) and not split yet: one match arm per manifest kind
// (Pod, workloads, lists, templates), each naming the JSON path it read in its
// errors. The split owed is one function per kind.
fn load_value(
    file: &str,
    document: usize,
    value: Value,
    unknown: UnknownKinds,
    into: &mut Loaded,
) -> Result<(), LoadError> {
    let not_object = |reason: &str| LoadError::NotAnObject {
        file: file.to_string(),
        document,
        reason: reason.to_string(),
    };
    if !value.is_mapping() {
        return Err(not_object("the document is not a mapping"));
    }
    let kind = str_field(&value, "kind")
        .ok_or_else(|| not_object("no `kind` string"))?
        .to_string();
    let api_version = str_field(&value, "apiVersion")
        .ok_or_else(|| not_object("no `apiVersion` string"))?
        .to_string();
    let metadata = value.get("metadata");
    let name = metadata
        .and_then(|m| str_field(m, "name").or_else(|| str_field(m, "generateName")))
        .unwrap_or("<unnamed>")
        .to_string();
    let namespace = metadata
        .and_then(|m| str_field(m, "namespace"))
        .map(str::to_string);
    let object = ObjectRef {
        file: file.to_string(),
        document,
        kind: kind.clone(),
        namespace,
        name: name.clone(),
    };

    // `kubectl get -o yaml` wraps objects in a List; audit each item.
    if (kind == "List" || kind.ends_with("List"))
        && let Some(items) = value.get("items").and_then(Value::as_sequence)
    {
        for item in items.clone() {
            load_value(file, document, item, unknown, into)?;
        }
        return Ok(());
    }

    let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
    let expected = match (group, kind.as_str()) {
        ("", "Pod") => "v1",
        ("apps" | "extensions", "Deployment" | "DaemonSet" | "StatefulSet" | "ReplicaSet") => {
            "apps/v1"
        }
        ("batch", "Job" | "CronJob") => "batch/v1",
        _ => {
            return match unknown {
                UnknownKinds::Skip => {
                    into.skipped.push(Skipped {
                        object,
                        api_version,
                        reason: "no pod template to audit".to_string(),
                    });
                    Ok(())
                }
                UnknownKinds::Error => Err(LoadError::UnknownKind {
                    file: file.to_string(),
                    document,
                    api_version,
                    kind,
                    name,
                }),
            };
        }
    };
    if api_version != expected {
        return Err(LoadError::UnsupportedVersion {
            file: file.to_string(),
            document,
            api_version,
            kind,
            name,
            expected,
        });
    }

    let schema_err = |source| LoadError::Schema {
        file: file.to_string(),
        document,
        api_version: api_version.clone(),
        kind: kind.clone(),
        name: name.clone(),
        source,
    };
    let missing = |what: &str| LoadError::NotAnObject {
        file: file.to_string(),
        document,
        reason: format!("{kind} {name:?} has no {what}"),
    };

    let (spec_path, meta, template_meta, spec) = match kind.as_str() {
        "Pod" => {
            let pod: Pod = typed(value).map_err(schema_err)?;
            let spec = pod.spec.ok_or_else(|| missing("spec"))?;
            ("spec", pod.metadata, None, spec)
        }
        "Deployment" => {
            let o: Deployment = typed(value).map_err(schema_err)?;
            let t = o.spec.ok_or_else(|| missing("spec"))?.template;
            let (tm, spec) = template(t).ok_or_else(|| missing("spec.template.spec"))?;
            ("spec.template.spec", o.metadata, tm, spec)
        }
        "DaemonSet" => {
            let o: DaemonSet = typed(value).map_err(schema_err)?;
            let t = o.spec.ok_or_else(|| missing("spec"))?.template;
            let (tm, spec) = template(t).ok_or_else(|| missing("spec.template.spec"))?;
            ("spec.template.spec", o.metadata, tm, spec)
        }
        "StatefulSet" => {
            let o: StatefulSet = typed(value).map_err(schema_err)?;
            let t = o.spec.ok_or_else(|| missing("spec"))?.template;
            let (tm, spec) = template(t).ok_or_else(|| missing("spec.template.spec"))?;
            ("spec.template.spec", o.metadata, tm, spec)
        }
        "ReplicaSet" => {
            let o: ReplicaSet = typed(value).map_err(schema_err)?;
            let t = o
                .spec
                .and_then(|s| s.template)
                .ok_or_else(|| missing("spec.template"))?;
            let (tm, spec) = template(t).ok_or_else(|| missing("spec.template.spec"))?;
            ("spec.template.spec", o.metadata, tm, spec)
        }
        "Job" => {
            let o: Job = typed(value).map_err(schema_err)?;
            let t = o.spec.ok_or_else(|| missing("spec"))?.template;
            let (tm, spec) = template(t).ok_or_else(|| missing("spec.template.spec"))?;
            ("spec.template.spec", o.metadata, tm, spec)
        }
        _ => {
            // Only CronJob is left after the kind match above.
            let o: CronJob = typed(value).map_err(schema_err)?;
            let t = o
                .spec
                .and_then(|s| s.job_template.spec)
                .map(|s| s.template)
                .ok_or_else(|| missing("spec.jobTemplate.spec"))?;
            let (tm, spec) =
                template(t).ok_or_else(|| missing("spec.jobTemplate.spec.template.spec"))?;
            ("spec.jobTemplate.spec.template.spec", o.metadata, tm, spec)
        }
    };
    let mut annotations = meta.annotations.unwrap_or_default();
    if let Some(tm) = template_meta {
        annotations.extend(tm.annotations.unwrap_or_default());
    }
    into.workloads.push(Workload {
        object,
        spec_path,
        annotations,
        spec,
    });
    Ok(())
}

fn typed<T: DeserializeOwned>(value: Value) -> Result<T, serde_yaml_ng::Error> {
    serde_yaml_ng::from_value(value)
}

fn template(t: PodTemplateSpec) -> Option<(Option<ObjectMeta>, PodSpec)> {
    Some((t.metadata, t.spec?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str, unknown: UnknownKinds) -> Result<Loaded, LoadError> {
        let mut l = Loaded::default();
        load_str("test.yaml", text, unknown, &mut l)?;
        Ok(l)
    }

    const DEPLOYMENT: &str = "apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: prod}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {annotations: {a: b}}
    spec:
      containers: [{name: web, image: x}]
";

    #[test]
    fn reads_multi_document_streams_and_skips_other_kinds() {
        let text = format!(
            "---\n{DEPLOYMENT}---\napiVersion: v1\nkind: Service\nmetadata: {{name: web}}\n---\n"
        );
        let l = load(&text, UnknownKinds::Skip).unwrap();
        assert_eq!(l.workloads.len(), 1);
        let w = &l.workloads[0];
        assert_eq!(w.object.to_string(), "Deployment prod/web");
        assert_eq!(w.object.document, 1);
        assert_eq!(w.spec_path, "spec.template.spec");
        assert_eq!(w.annotations.get("a").map(String::as_str), Some("b"));
        assert_eq!(l.skipped.len(), 1);
        assert_eq!(l.skipped[0].object.kind, "Service");
        assert_eq!(l.skipped[0].object.document, 2);
    }

    #[test]
    fn strict_rejects_unknown_kinds_naming_file_and_document() {
        let text =
            format!("{DEPLOYMENT}---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: c}}\n");
        let e = load(&text, UnknownKinds::Error).unwrap_err().to_string();
        assert!(
            e.starts_with("test.yaml: document 2: unknown kind v1 ConfigMap \"c\""),
            "{e}"
        );
    }

    #[test]
    fn invalid_yaml_names_file_and_document() {
        let text = format!("{DEPLOYMENT}---\nkind: Pod\n  bad: [indent\n");
        let e = load(&text, UnknownKinds::Skip).unwrap_err().to_string();
        assert!(e.starts_with("test.yaml: document 2: invalid YAML:"), "{e}");
        assert!(e.contains("line"), "{e}");
    }

    #[test]
    fn invalid_first_document_and_empty_documents_keep_numbering() {
        let e = load("kind: [oops\n", UnknownKinds::Skip)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("test.yaml: document 1: invalid YAML:"), "{e}");
        let text = format!("---\n---\n{DEPLOYMENT}");
        let l = load(&text, UnknownKinds::Skip).unwrap();
        assert_eq!(l.workloads[0].object.document, 2);
    }

    #[test]
    fn schema_errors_name_the_object() {
        let text = DEPLOYMENT.replace(
            "containers:",
            "terminationGracePeriodSeconds: thirty\n      containers:",
        );
        let e = load(&text, UnknownKinds::Skip).unwrap_err().to_string();
        assert!(
            e.starts_with("test.yaml: document 1: Deployment \"web\" does not match the apps/v1 Deployment schema"),
            "{e}"
        );
    }

    #[test]
    fn rejects_non_objects_and_old_api_versions() {
        let e = load("- a\n- b\n", UnknownKinds::Skip)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "test.yaml: document 1: not a Kubernetes object: the document is not a mapping"
        );
        let e = load("apiVersion: v1\nmetadata: {name: x}\n", UnknownKinds::Skip)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no `kind` string"), "{e}");
        let old = DEPLOYMENT.replace("apps/v1", "extensions/v1beta1");
        let e = load(&old, UnknownKinds::Skip).unwrap_err().to_string();
        assert!(
            e.contains("extensions/v1beta1 Deployment \"web\" is not supported: use apps/v1"),
            "{e}"
        );
    }

    #[test]
    fn reads_pods_cronjobs_and_lists() {
        let text = "apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Pod
  metadata: {name: p}
  spec: {containers: [{name: c}]}
- apiVersion: batch/v1
  kind: CronJob
  metadata: {name: cj}
  spec:
    schedule: '* * * * *'
    jobTemplate:
      spec:
        template:
          spec: {containers: [{name: c}], restartPolicy: Never}
";
        let l = load(text, UnknownKinds::Error).unwrap();
        let paths: Vec<_> = l.workloads.iter().map(|w| w.spec_path).collect();
        assert_eq!(paths, vec!["spec", "spec.jobTemplate.spec.template.spec"]);
    }
}
