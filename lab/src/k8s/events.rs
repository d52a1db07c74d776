//! events.k8s.io/v1 Events as kube-apiserver checks them: `ValidateEventCreate` and
//! `ValidateEventUpdate` (k8s.io/kubernetes pkg/apis/core/validation/events.go) for
//! this API version, with the same limits, field paths (kube-apiserver reports some
//! by their core names: `message` for `note`, `involvedObject` for `regarding`) and
//! 422 Status body; JSON merge patch; the core/v1 form of the same object; the rows
//! `kubectl get` prints.

use serde_json::{Value, json};

const REPORTING_INSTANCE_LIMIT: usize = 128;
const ACTION_LIMIT: usize = 128;
const REASON_LIMIT: usize = 128;
const NOTE_LIMIT: usize = 1024;

/// One requirement of an Event's field selector, on the events.k8s.io/v1
/// object as stored: (path in it, equal (`=`, `==`) or not (`!=`), value).
pub type FieldReq = (&'static str, bool, String);

/// The field labels kube-apiserver selects Events by, per API: core/v1's
/// (`pkg/apis/core/v1` `AddFieldLabelConversionsForEvent`) and
/// events.k8s.io/v1's (`pkg/apis/events/v1`), each with its path in the
/// events.k8s.io/v1 object.
const CORE_FIELDS: [(&str, &str); 12] = [
    ("involvedObject.kind", "regarding.kind"),
    ("involvedObject.namespace", "regarding.namespace"),
    ("involvedObject.name", "regarding.name"),
    ("involvedObject.uid", "regarding.uid"),
    ("involvedObject.apiVersion", "regarding.apiVersion"),
    (
        "involvedObject.resourceVersion",
        "regarding.resourceVersion",
    ),
    ("involvedObject.fieldPath", "regarding.fieldPath"),
    ("reason", "reason"),
    ("reportingComponent", "reportingController"),
    ("type", "type"),
    ("metadata.namespace", "metadata.namespace"),
    ("metadata.name", "metadata.name"),
];
const EVENTS_FIELDS: [(&str, &str); 12] = [
    ("regarding.kind", "regarding.kind"),
    ("regarding.namespace", "regarding.namespace"),
    ("regarding.name", "regarding.name"),
    ("regarding.uid", "regarding.uid"),
    ("regarding.apiVersion", "regarding.apiVersion"),
    ("regarding.resourceVersion", "regarding.resourceVersion"),
    ("regarding.fieldPath", "regarding.fieldPath"),
    ("reason", "reason"),
    ("reportingController", "reportingController"),
    ("type", "type"),
    ("metadata.namespace", "metadata.namespace"),
    ("metadata.name", "metadata.name"),
];

/// Parses a field selector on Events (`a=b,c!=d`) in the labels of the API
/// asked (`core`: /api/v1), as kube-apiserver does: an unknown label is
/// refused with its message.
pub fn parse_field_selector(s: &str, core: bool) -> Result<Vec<FieldReq>, String> {
    let table: &[(&str, &'static str)] = if core { &CORE_FIELDS } else { &EVENTS_FIELDS };
    s.split(',')
        .filter(|t| !t.is_empty())
        .map(|t| {
            let (label, eq, value) = if let Some((l, v)) = t.split_once("!=") {
                (l, false, v)
            } else if let Some((l, v)) = t.split_once("==") {
                (l, true, v)
            } else if let Some((l, v)) = t.split_once('=') {
                (l, true, v)
            } else {
                return Err(format!("invalid selector: '{s}'; can't understand '{t}'"));
            };
            let path = table
                .iter()
                .find(|(l, _)| *l == label)
                .map(|(_, p)| *p)
                .ok_or_else(|| format!("field label not supported: {label}"))?;
            Ok((path, eq, value.to_string()))
        })
        .collect()
}

/// Whether an events.k8s.io/v1 object meets every requirement (an absent
/// field is the empty string, as kube-apiserver's field sets have it).
pub fn fields_match(reqs: &[FieldReq], e: &Value) -> bool {
    reqs.iter().all(|(path, eq, want)| {
        let got = path
            .split('.')
            .fold(e, |v, k| &v[k])
            .as_str()
            .unwrap_or_default();
        (got == want) == *eq
    })
}

/// One field error: (kind, field path, message), as in a Status' `details.causes`.
pub type FieldError = (&'static str, String, String);

fn required(field: &str) -> FieldError {
    ("FieldValueRequired", field.into(), "Required value".into())
}

fn invalid(field: &str, value: &Value, detail: &str) -> FieldError {
    let shown = match value {
        Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    };
    (
        "FieldValueInvalid",
        field.into(),
        format!("Invalid value: {shown}: {detail}"),
    )
}

fn text<'a>(obj: &'a Value, key: &str) -> &'a str {
    obj[key].as_str().unwrap_or_default()
}

fn set(v: &Value) -> bool {
    !v.is_null() && v.as_str() != Some("") && v != &json!({})
}

/// RFC 1123 subdomain: lower-case alphanumerics, `-` and `.`, at most 253.
fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253
        && !s.is_empty()
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// A qualified name (`[prefix/]name`), as labels' keys and `reportingController`.
fn is_qualified_name(s: &str) -> bool {
    let (prefix, name) = match s.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    name_ok && prefix.is_none_or(is_dns_subdomain)
}

/// A `MicroTime`/`Time` as the API decodes it (RFC 3339); anything else fails to
/// decode, which kube-apiserver answers with 400 before validating.
fn is_time(s: &str) -> bool {
    let b = s.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|d| d.iter().all(u8::is_ascii_digit));
    b.len() >= 20
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b'T'
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19)
        && (s.ends_with('Z') || s[19..].contains(['+', '-']))
}

/// Why the body does not decode as an Event (400 BadRequest), if it does not.
pub fn decode_error(obj: &Value) -> Option<String> {
    for (path, v) in [
        ("eventTime", &obj["eventTime"]),
        (
            "series.lastObservedTime",
            &obj["series"]["lastObservedTime"],
        ),
    ] {
        if let Some(s) = v.as_str()
            && !s.is_empty()
            && !is_time(s)
        {
            return Some(format!("{path}: parsing time {s:?} as RFC 3339 failed"));
        }
        if !v.is_null() && !v.is_string() {
            return Some(format!("{path}: expected a time string, got {v}"));
        }
    }
    let count = &obj["series"]["count"];
    if !count.is_null() && !count.is_i64() {
        return Some(format!("series.count: expected an integer, got {count}"));
    }
    None
}

/// Series checks (`validateV1EventSeries`).
fn validate_series(obj: &Value) -> Vec<FieldError> {
    let s = &obj["series"];
    if s.is_null() {
        return Vec::new();
    }
    let mut errs = Vec::new();
    if s["count"].as_i64().unwrap_or(0) < 2 {
        errs.push(invalid("series.count", &json!(""), "should be at least 2"));
    }
    if !set(&s["lastObservedTime"]) {
        errs.push(required("series.lastObservedTime"));
    }
    errs
}

/// `legacyValidateEvent`: with `eventTime` (every valid events.k8s.io/v1 event),
/// the reporting fields and limits; without, only the namespace.
pub fn validate_legacy(obj: &Value, ns: &str) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let regarding_ns = obj["regarding"]["namespace"].as_str().unwrap_or_default();
    if !set(&obj["eventTime"]) {
        // An old-style event: its namespace is its object's (or default).
        let fits = if regarding_ns.is_empty() {
            ns.is_empty() || ns == "default"
        } else {
            ns == regarding_ns
        };
        if !fits {
            errs.push(invalid(
                "involvedObject.namespace",
                &json!(regarding_ns),
                "does not match event.namespace",
            ));
        }
    } else {
        if regarding_ns.is_empty() && ns != "default" && ns != "kube-system" {
            errs.push(invalid(
                "involvedObject.namespace",
                &json!(regarding_ns),
                "does not match event.namespace",
            ));
        }
        let controller = text(obj, "reportingController");
        if controller.is_empty() {
            errs.push(required("reportingController"));
        } else if !is_qualified_name(controller) {
            errs.push(invalid(
                "reportingController",
                &json!(controller),
                "a qualified name must consist of alphanumeric characters, '-', '_' or '.', with an optional DNS subdomain prefix and '/'",
            ));
        }
        for (field, limit) in [
            ("reportingInstance", REPORTING_INSTANCE_LIMIT),
            ("action", ACTION_LIMIT),
            ("reason", REASON_LIMIT),
        ] {
            let v = text(obj, field);
            if v.is_empty() {
                errs.push(required(field));
            } else if v.len() > limit {
                errs.push(invalid(
                    field,
                    &json!(""),
                    &format!("can have at most {limit} characters"),
                ));
            }
        }
        if text(obj, "note").len() > NOTE_LIMIT {
            errs.push(invalid(
                "message",
                &json!(""),
                &format!("can have at most {NOTE_LIMIT} characters"),
            ));
        }
    }
    if !is_dns_subdomain(ns) {
        errs.push(invalid(
            "namespace",
            &json!(ns),
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.'",
        ));
    }
    errs
}

/// `ValidateEventCreate` for events.k8s.io/v1.
pub fn validate_create(obj: &Value, ns: &str) -> Vec<FieldError> {
    let mut errs = validate_legacy(obj, ns);
    let name = obj["metadata"]["name"].as_str().unwrap_or_default();
    if name.is_empty() {
        errs.push(required("metadata.name"));
    } else if !is_dns_subdomain(name) {
        errs.push(invalid(
            "metadata.name",
            &json!(name),
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.'",
        ));
    }
    errs.extend(validate_series(obj));
    if !set(&obj["eventTime"]) {
        errs.push(required("eventTime"));
    }
    let ty = text(obj, "type");
    if ty != "Normal" && ty != "Warning" {
        errs.push(invalid(
            "type",
            &json!(""),
            &format!("has invalid value: {ty}"),
        ));
    }
    for (field, path) in [
        ("deprecatedFirstTimestamp", "firstTimestamp"),
        ("deprecatedLastTimestamp", "lastTimestamp"),
        ("deprecatedCount", "count"),
        ("deprecatedSource", "source"),
    ] {
        if set(&obj[field]) && obj[field] != json!(0) {
            errs.push(invalid(path, &json!(""), "needs to be unset"));
        }
    }
    errs
}

/// `ValidateEventUpdate`'s checks beyond the legacy ones: the series when it changed,
/// and every field but the series and metadata immutable.
pub fn validate_update(new: &Value, old: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    if new["series"] != old["series"] {
        errs.extend(validate_series(new));
    }
    for (field, path) in [
        ("regarding", "involvedObject"),
        ("reason", "reason"),
        ("note", "message"),
        ("deprecatedSource", "source"),
        ("deprecatedFirstTimestamp", "firstTimestamp"),
        ("deprecatedLastTimestamp", "lastTimestamp"),
        ("deprecatedCount", "count"),
        ("type", "type"),
        ("eventTime", "eventTime"),
        ("action", "action"),
        ("related", "related"),
        ("reportingController", "reportingController"),
        ("reportingInstance", "reportingInstance"),
    ] {
        if new[field] != old[field] {
            errs.push(invalid(path, &new[field], "field is immutable"));
        }
    }
    errs
}

/// The 422 Status kube-apiserver answers with.
pub fn invalid_status(name: &str, errs: &[FieldError]) -> Value {
    let each: Vec<String> = errs.iter().map(|(_, f, m)| format!("{f}: {m}")).collect();
    let list = if each.len() == 1 {
        each[0].clone()
    } else {
        format!("[{}]", each.join(", "))
    };
    let causes: Vec<Value> = errs
        .iter()
        .map(|(r, f, m)| json!({"reason": r, "message": m, "field": f}))
        .collect();
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": format!("Event.events.k8s.io {name:?} is invalid: {list}"),
        "reason": "Invalid",
        "details": {"name": name, "group": "events.k8s.io", "kind": "Event", "causes": causes},
        "code": 422})
}

/// Applies a JSON merge patch (RFC 7386): objects merge key by key, `null` removes,
/// anything else replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    if let Value::Object(t) = target {
        for (k, v) in p {
            if v.is_null() {
                t.remove(k);
            } else {
                merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

/// Unix seconds of an RFC 3339 UTC time (Howard Hinnant's days-from-civil).
fn unix_secs(t: &str) -> Option<i64> {
    if !is_time(t) {
        return None;
    }
    let n = |r: std::ops::Range<usize>| t.get(r).and_then(|x| x.parse::<i64>().ok());
    let (y, m, d) = (n(0..4)?, n(5..7)?, n(8..10)?);
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + n(11..13)? * 3600 + n(14..16)? * 60 + n(17..19)?)
}

/// An age as kubectl prints one (apimachinery's `HumanDuration`, to a day).
fn human_age(secs: i64) -> String {
    match secs {
        s if s < 0 => "<invalid>".into(),
        s if s < 120 => format!("{s}s"),
        s if s < 600 => format!("{}m{}s", s / 60, s % 60),
        s if s < 3 * 3600 => format!("{}m", s / 60),
        s if s < 8 * 3600 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        s if s < 48 * 3600 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// The core/v1 form of a stored events.k8s.io/v1 Event, as kube-apiserver serves the
/// same object through `/api/v1` (its conversion through the internal type,
/// k8s.io/kubernetes pkg/apis/events/v1/conversion.go): `note` is `message`,
/// `regarding` is `involvedObject`, `reportingController` is `reportingComponent`, the
/// `deprecated*` fields are `source`, `firstTimestamp`, `lastTimestamp` and `count`;
/// `series`, `eventTime`, `action`, `related` and `reportingInstance` keep their names.
/// Go's encoding writes an unset time as `null` and an unset `source` as `{}`.
pub fn to_core(e: &Value) -> Value {
    let mut c = json!({
        "kind": "Event",
        "apiVersion": "v1",
        "metadata": e["metadata"],
        "involvedObject": if e["regarding"].is_null() { json!({}) } else { e["regarding"].clone() },
        "source": if e["deprecatedSource"].is_null() { json!({}) } else { e["deprecatedSource"].clone() },
        "firstTimestamp": e["deprecatedFirstTimestamp"],
        "lastTimestamp": e["deprecatedLastTimestamp"],
        "eventTime": e["eventTime"],
        "reportingComponent": text(e, "reportingController"),
        "reportingInstance": text(e, "reportingInstance"),
    });
    for (from, to) in [
        ("reason", "reason"),
        ("note", "message"),
        ("type", "type"),
        ("action", "action"),
        ("series", "series"),
        ("related", "related"),
        ("deprecatedCount", "count"),
    ] {
        if set(&e[from]) && e[from] != json!(0) {
            c[to] = e[from].clone();
        }
    }
    c
}

/// A `kubectl get` row, as kube-apiserver's table printer makes it from a core/v1
/// Event (`printEvent`; it serves every column, kubectl drops the priority-1 ones
/// unless `-o wide`): last seen, type, reason, object, subobject, source, message,
/// first seen, count, name. Last seen is the series' last observation, else
/// `lastTimestamp`, else first seen, which is `firstTimestamp` else `eventTime`; the
/// count is the series' else `count`, at least 1; the source is `source.component`
/// else `reportingComponent`, then `, ` and `source.host` else `reportingInstance`.
pub fn row(c: &Value, now_s: i64) -> Value {
    let age = |t: &Value| {
        t.as_str()
            .and_then(unix_secs)
            .map_or_else(|| "<unknown>".to_string(), |t| human_age(now_s - t))
    };
    let first = if c["firstTimestamp"].is_string() {
        age(&c["firstTimestamp"])
    } else {
        age(&c["eventTime"])
    };
    let mut last = if c["lastTimestamp"].is_string() {
        age(&c["lastTimestamp"])
    } else {
        first.clone()
    };
    let mut count = c["count"].as_i64().unwrap_or(0);
    if c["series"].is_object() {
        last = age(&c["series"]["lastObservedTime"]);
        count = c["series"]["count"].as_i64().unwrap_or(0);
    } else if count == 0 {
        count = 1;
    }
    let o = &c["involvedObject"];
    let kind = o["kind"].as_str().unwrap_or_default().to_lowercase();
    let object = match o["name"].as_str().unwrap_or_default() {
        "" => kind,
        name => format!("{kind}/{name}"),
    };
    let or = |a: &Value, b: &Value| {
        let a = a.as_str().unwrap_or_default();
        if a.is_empty() {
            b.as_str().unwrap_or_default().to_string()
        } else {
            a.to_string()
        }
    };
    let component = or(&c["source"]["component"], &c["reportingComponent"]);
    let host = or(&c["source"]["host"], &c["reportingInstance"]);
    let source = if host.is_empty() {
        component
    } else {
        format!("{component}, {host}")
    };
    json!([
        last,
        c["type"].as_str().unwrap_or_default(),
        c["reason"].as_str().unwrap_or_default(),
        object,
        o["fieldPath"].as_str().unwrap_or_default(),
        source,
        c["message"].as_str().unwrap_or_default().trim(),
        first,
        count,
        c["metadata"]["name"]
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_selectors_as_kube_apiserver_names_them_per_api() {
        let e = json!({"metadata": {"name": "web-0.1", "namespace": "team-a"},
            "reason": "IdleResetByLB", "type": "Warning",
            "reportingController": "drainwatch.io/drainwatch",
            "regarding": {"kind": "Pod", "name": "web-0", "namespace": "team-a", "uid": "u1"}});
        let sel = |s: &str, core: bool| parse_field_selector(s, core).expect(s);
        assert!(fields_match(
            &sel("regarding.name=web-0,reason=IdleResetByLB", false),
            &e
        ));
        assert!(!fields_match(&sel("regarding.name=web-1", false), &e));
        assert!(fields_match(
            &sel(
                "involvedObject.name=web-0,involvedObject.namespace=team-a,involvedObject.uid=u1",
                true
            ),
            &e
        ));
        assert!(fields_match(
            &sel("reportingComponent==drainwatch.io/drainwatch", true),
            &e
        ));
        assert!(!fields_match(&sel("type!=Warning", false), &e));
        // An absent field is "".
        assert!(fields_match(&sel("regarding.fieldPath=", false), &e));
        // Each API its own labels.
        assert_eq!(
            parse_field_selector("involvedObject.name=web-0", false),
            Err("field label not supported: involvedObject.name".into())
        );
        assert_eq!(
            parse_field_selector("regarding.name=web-0", true),
            Err("field label not supported: regarding.name".into())
        );
        assert!(parse_field_selector("reason", true).is_err());
    }

    fn event() -> Value {
        json!({"metadata": {"name": "kube-apiserver-m1.1"},
            "eventTime": "2026-12-07T14:00:00.000001Z", "type": "Warning",
            "reason": "ConnectionsRefused", "action": "Observed", "note": "3 refused",
            "reportingController": "drainwatch.io/drainwatch", "reportingInstance": "m1",
            "regarding": {"kind": "Pod", "name": "kube-apiserver-m1", "namespace": "kube-system"}})
    }

    fn fields(errs: &[FieldError]) -> Vec<&str> {
        errs.iter().map(|(_, f, _)| f.as_str()).collect()
    }

    #[test]
    fn create_checks_as_kube_apiserver() {
        assert_eq!(validate_create(&event(), "kube-system"), vec![]);
        let mut e = event();
        for k in [
            "eventTime",
            "reason",
            "action",
            "reportingController",
            "reportingInstance",
        ] {
            e.as_object_mut().map(|o| o.remove(k));
        }
        e["type"] = json!("Info");
        e["note"] = json!("x".repeat(1025));
        e["series"] = json!({"count": 1});
        e["deprecatedCount"] = json!(3);
        // Without eventTime, the reporting fields and the note are not looked at
        // (kube-apiserver's legacy branch): eventTime is what is missing.
        let errs = validate_create(&e, "kube-system");
        assert_eq!(
            fields(&errs),
            [
                "series.count",
                "series.lastObservedTime",
                "eventTime",
                "type",
                "count"
            ],
            "{errs:?}"
        );
        // With it, each limit.
        let mut e = event();
        e["note"] = json!("x".repeat(1025));
        e["reason"] = json!("R".repeat(129));
        assert_eq!(
            fields(&validate_create(&e, "kube-system")),
            ["reason", "message"]
        );
        // A cluster-scoped object's event lives in default or kube-system.
        let mut e = event();
        e["regarding"] = json!({"kind": "Node", "name": "n1"});
        assert_eq!(validate_create(&e, "kube-system"), vec![]);
        assert_eq!(
            fields(&validate_create(&e, "openshift-kube-apiserver")),
            ["involvedObject.namespace"]
        );
        let st = invalid_status("x", &validate_create(&e, "apps"));
        assert_eq!(st["code"], 422);
        assert_eq!(
            st["message"],
            "Event.events.k8s.io \"x\" is invalid: involvedObject.namespace: Invalid value: \"\": does not match event.namespace"
        );
        let mut e = event();
        e["reportingController"] = json!("drainwatch.io/bad name");
        assert_eq!(
            fields(&validate_create(&e, "kube-system")),
            ["reportingController"]
        );
        e["eventTime"] = json!("yesterday");
        assert!(decode_error(&e).is_some_and(|m| m.contains("eventTime")));
    }

    #[test]
    fn rows_print_ages() {
        let t = unix_secs("2026-12-07T14:00:00.000001Z").expect("time");
        assert_eq!(t, 1_796_652_000);
        assert_eq!(unix_secs("1970-01-01T00:00:00Z"), Some(0));
        let r = row(&to_core(&event()), t + 75);
        assert_eq!(r[0], "75s");
        assert_eq!(r[3], "pod/kube-apiserver-m1");
        assert_eq!(r[5], "drainwatch.io/drainwatch, m1");
        assert_eq!(
            (&r[6], &r[7], &r[8]),
            (&json!("3 refused"), &json!("75s"), &json!(1))
        );
        let mut grown = event();
        grown["series"] = json!({"count": 4, "lastObservedTime": "2026-12-07T14:01:00.000000Z"});
        let r = row(&to_core(&grown), t + 75);
        assert_eq!(
            (&r[0], &r[7], &r[8]),
            (&json!("15s"), &json!("75s"), &json!(4))
        );
        assert_eq!(human_age(400), "6m40s");
    }

    #[test]
    fn core_form_is_kube_apiservers_conversion() {
        let c = to_core(&event());
        assert_eq!(c["apiVersion"], "v1");
        assert_eq!(c["message"], "3 refused");
        assert_eq!(c["involvedObject"]["name"], "kube-apiserver-m1");
        assert_eq!(c["reportingComponent"], "drainwatch.io/drainwatch");
        assert_eq!(c["source"], json!({}));
        assert_eq!(c["firstTimestamp"], Value::Null);
        assert!(c.get("count").is_none() && c.get("note").is_none());
        assert!(c.get("regarding").is_none() && c.get("series").is_none());
    }

    #[test]
    fn update_keeps_all_but_series_and_metadata() {
        let old = event();
        let mut new = old.clone();
        merge_patch(
            &mut new,
            &json!({"series": {"count": 2, "lastObservedTime": "2026-12-07T14:00:10.000000Z"},
                "metadata": {"annotations": {"a": "1"}}}),
        );
        assert_eq!(new["metadata"]["name"], "kube-apiserver-m1.1");
        assert_eq!(validate_update(&new, &old), vec![]);
        let mut bad = new.clone();
        merge_patch(
            &mut bad,
            &json!({"note": "changed", "series": {"count": 1}}),
        );
        assert_eq!(
            fields(&validate_update(&bad, &new)),
            ["series.count", "message"]
        );
        merge_patch(&mut bad, &json!({"series": null}));
        assert!(bad.get("series").is_none());
    }
}
