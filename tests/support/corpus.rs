//! Generated audit events for tests and benchmarks: every shape of DESIGN.md §4, in the
//! proportions of a real cluster, reproducible from a seed.
//!
//! Shared by `tests/` and `benches/` through `#[path]`; it is not part of the product.
#![allow(dead_code)]

use serde_json::{Value, json};

/// xorshift64*: small, fast, deterministic; quality is irrelevant here.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }
    pub fn uuid(&mut self) -> String {
        let a = self.next();
        let b = self.next();
        format!(
            "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0xfff,
            (b >> 48) & 0x3fff | 0x8000,
            b & 0xffff_ffff_ffff
        )
    }
}

/// Knobs for one event; [`Shape::random`] draws them in realistic proportions.
#[derive(Clone, Debug)]
pub struct Shape {
    pub level: &'static str,
    pub stage: &'static str,
    pub v1beta1: bool,
    pub verb: &'static str,
    pub resource: Option<&'static str>,
    pub subresource: Option<&'static str>,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub non_resource_url: Option<&'static str>,
    pub user: &'static str,
    pub impersonate: bool,
    pub denied: bool,
    pub status: u16,
    pub source_ip: Option<&'static str>,
    pub user_agent: Option<String>,
    pub annotations: bool,
    pub risky_pod: Option<&'static str>,
    /// Extra bytes of payload in the request/response objects (configmap data).
    pub payload: usize,
    pub escapes: bool,
}

const USERS: &[&str] = &[
    "system:apiserver",
    "system:kube-controller-manager",
    "system:kube-scheduler",
    "system:node:edge-01",
    "system:serviceaccount:kube-system:coredns",
    "admin@example.org",
    "system:anonymous",
    "dev@example.org",
];
const RESOURCES: &[&str] = &[
    "pods",
    "pods",
    "leases",
    "leases",
    "configmaps",
    "secrets",
    "events",
    "deployments",
    "clusterrolebindings",
    "rolebindings",
    "serviceaccounts",
    "nodes",
    "endpointslices",
    "certificatesigningrequests",
];
const VERBS: &[&str] = &[
    "get",
    "get",
    "list",
    "watch",
    "watch",
    "update",
    "update",
    "create",
    "patch",
    "delete",
    "deletecollection",
];
const STAGES: &[&str] = &[
    "ResponseComplete",
    "ResponseComplete",
    "RequestReceived",
    "ResponseStarted",
    "Panic",
];
const IPS: &[&str] = &[
    "127.0.0.1",
    "10.42.0.17",
    "192.168.1.20",
    "fd00::1",
    "2001:db8::8a2e:370:7334",
    "not-an-ip",
    "",
];

impl Shape {
    pub fn random(rng: &mut Rng) -> Shape {
        let non_resource = rng.chance(8);
        let level = rng.pick(&["Metadata", "Request", "Request", "RequestResponse"]);
        let resource = (!non_resource).then(|| rng.pick(RESOURCES));
        let verb = rng.pick(VERBS);
        let denied = rng.chance(4);
        Shape {
            level,
            stage: rng.pick(STAGES),
            v1beta1: rng.chance(5),
            verb,
            resource,
            subresource: match resource {
                Some("pods") if rng.chance(15) => {
                    Some(rng.pick(&["exec", "attach", "portforward", "log", "status"]))
                }
                Some("deployments") if rng.chance(30) => Some("scale"),
                _ => None,
            },
            namespace: (resource.is_some() && rng.chance(80)).then(|| {
                rng.pick(&["default", "kube-system", "edge", "ünïcode-ns"])
                    .to_string()
            }),
            name: (resource.is_some()
                && !matches!(verb, "list" | "watch" | "deletecollection")
                && rng.chance(90))
            .then(|| format!("obj-{}", rng.below(1000))),
            non_resource_url: non_resource.then(|| {
                rng.pick(&[
                    "/healthz",
                    "/readyz",
                    "/version",
                    "/metrics",
                    "/livez?verbose",
                ])
            }),
            user: rng.pick(USERS),
            impersonate: rng.chance(3),
            denied,
            status: if denied {
                rng.pick(&[401, 403])
            } else {
                rng.pick(&[200, 200, 200, 201, 404, 409, 101, 500])
            },
            source_ip: rng.chance(95).then(|| rng.pick(IPS)),
            user_agent: rng.chance(90).then(|| {
                format!(
                    "kubectl/v1.{}.{} (linux/arm64) kubernetes/{:07x}",
                    28 + rng.below(9),
                    rng.below(9),
                    rng.below(1 << 28)
                )
            }),
            annotations: rng.chance(95),
            risky_pod: (resource == Some("pods")
                && matches!(verb, "create" | "update" | "patch")
                && rng.chance(40))
            .then(|| {
                rng.pick(&[
                    "privileged",
                    "hostNetwork",
                    "hostPath",
                    "hostPID",
                    "hostIPC",
                    "plain",
                ])
            }),
            payload: if rng.below(400) == 0 {
                50_000 + rng.below(200_000) as usize
            } else if rng.chance(20) {
                rng.below(4000) as usize
            } else {
                0
            },
            escapes: rng.chance(10),
        }
    }
}

fn text(rng: &mut Rng, shape: &Shape, n: usize) -> String {
    let mut s = String::with_capacity(n + 16);
    let pieces: &[&str] = if shape.escapes {
        &[
            "quote\"d ",
            "back\\slash ",
            "line\nbreak ",
            "tab\t",
            "nul\u{0} ",
            "é日本 ",
            "emoji🚀 ",
            "\u{2028} ",
            "<&> ",
        ]
    } else {
        &["alpha ", "beta-gamma ", "key=value ", "0123456789 "]
    };
    while s.len() < n {
        s.push_str(rng.pick(pieces));
    }
    s
}

fn container(rng: &mut Rng, shape: &Shape, i: usize) -> Value {
    let mut c = json!({
        "name": format!("c{i}"),
        "image": format!("registry.example.org/app:{}.{}", rng.below(5), rng.below(20)),
        "command": ["sh", "-c", text(rng, shape, 20)],
        "resources": {},
        "imagePullPolicy": "IfNotPresent",
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "File",
        "env": [{"name": "MODE", "value": "edge"}, {"name": "EMPTY", "value": ""}],
        "securityContext": {},
    });
    if shape.risky_pod == Some("privileged") {
        c["securityContext"] = json!({"privileged": true});
    }
    c
}

fn pod_spec(rng: &mut Rng, shape: &Shape) -> Value {
    let n = 1 + rng.below(3) as usize;
    let mut spec = json!({
        "containers": (0..n).map(|i| container(rng, shape, i)).collect::<Vec<_>>(),
        "restartPolicy": "Always",
        "dnsPolicy": "ClusterFirst",
        "securityContext": {},
        "enableServiceLinks": true,
        "terminationGracePeriodSeconds": 30,
    });
    match shape.risky_pod {
        Some("hostNetwork") => spec["hostNetwork"] = json!(true),
        Some("hostPID") => spec["hostPID"] = json!(true),
        Some("hostIPC") => spec["hostIPC"] = json!(true),
        Some("hostPath") => {
            spec["volumes"] =
                json!([{"name": "host", "hostPath": {"path": "/", "type": "Directory"}}])
        }
        _ => {
            if rng.chance(50) {
                spec["volumes"] =
                    json!([{"name": "cfg", "configMap": {"name": "app-config", "items": []}}]);
            }
        }
    }
    if rng.chance(10) {
        spec["hostNetwork"] = json!(false);
    }
    spec
}

fn object_body(rng: &mut Rng, shape: &Shape, response: bool) -> Value {
    let name = shape
        .name
        .clone()
        .unwrap_or_else(|| format!("gen-{}", rng.below(99)));
    let mut metadata =
        json!({"name": name, "namespace": shape.namespace, "creationTimestamp": null});
    if response {
        metadata["uid"] = json!(rng.uuid());
        metadata["resourceVersion"] = json!(rng.below(1 << 30).to_string());
        metadata["managedFields"] = json!([{
            "manager": "kubectl-client-side-apply", "operation": "Update", "apiVersion": "v1",
            "time": "2026-11-24T14:55:27Z", "fieldsType": "FieldsV1",
            "fieldsV1": {"f:metadata": {"f:labels": {".": {}, "f:app": {}}}, "f:spec": {"f:replicas": {}}}
        }]);
    }
    let mut body = match shape.resource {
        Some("pods") => {
            json!({"kind": "Pod", "apiVersion": "v1", "metadata": metadata, "spec": pod_spec(rng, shape), "status": {}})
        }
        Some("clusterrolebindings") | Some("rolebindings") => json!({
            "kind": "ClusterRoleBinding", "apiVersion": "rbac.authorization.k8s.io/v1", "metadata": metadata,
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": rng.pick(&["cluster-admin", "view", "edit"])},
            "subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": "default"}]
        }),
        Some("deployments") => {
            json!({"kind": "Deployment", "apiVersion": "apps/v1", "metadata": metadata,
            "spec": {"replicas": rng.below(5), "template": {"spec": pod_spec(rng, shape)}}})
        }
        Some("leases") => {
            json!({"kind": "Lease", "apiVersion": "coordination.k8s.io/v1", "metadata": metadata,
            "spec": {"holderIdentity": "edge-01", "leaseDurationSeconds": 15, "renewTime": "2026-11-24T14:55:27.763391Z"}})
        }
        _ => json!({"kind": "ConfigMap", "apiVersion": "v1", "metadata": metadata, "data": {}}),
    };
    if shape.payload > 0 {
        body["data"] = json!({"blob": text(rng, shape, shape.payload)});
    }
    body
}

/// One event as a single JSON line (no newline).
pub fn event(rng: &mut Rng, shape: &Shape) -> String {
    let audit_id = rng.uuid();
    let received = format!(
        "2026-11-24T14:{:02}:{:02}.{:06}Z",
        rng.below(60),
        rng.below(60),
        rng.below(1_000_000)
    );
    let mut e = serde_json::Map::new();
    e.insert("kind".into(), json!("Event"));
    e.insert(
        "apiVersion".into(),
        json!(if shape.v1beta1 {
            "audit.k8s.io/v1beta1"
        } else {
            "audit.k8s.io/v1"
        }),
    );
    if shape.v1beta1 {
        e.insert("metadata".into(), json!({"creationTimestamp": received}));
        e.insert("timestamp".into(), json!(received));
    }
    e.insert("level".into(), json!(shape.level));
    e.insert("auditID".into(), json!(audit_id));
    e.insert("stage".into(), json!(shape.stage));
    let uri = match (shape.non_resource_url, shape.resource) {
        (Some(url), _) => url.to_string(),
        (None, Some(r)) => {
            let ns = shape
                .namespace
                .as_deref()
                .map(|n| format!("/namespaces/{n}"))
                .unwrap_or_default();
            let name = shape
                .name
                .as_deref()
                .map(|n| format!("/{n}"))
                .unwrap_or_default();
            let sub = shape
                .subresource
                .map(|s| format!("/{s}"))
                .unwrap_or_default();
            format!("/api/v1{ns}/{r}{name}{sub}?timeout=32s")
        }
        (None, None) => "/".into(),
    };
    e.insert("requestURI".into(), json!(uri));
    e.insert("verb".into(), json!(shape.verb));
    let mut user = json!({
        "username": shape.user,
        "uid": rng.uuid(),
        "groups": if shape.user == "system:anonymous" { json!(["system:unauthenticated"]) } else { json!(["system:masters", "system:authenticated", "admins"]) },
        "extra": {"authentication.kubernetes.io/credential-id": [format!("X509SHA256={:016x}", rng.next())]}
    });
    if shape.escapes {
        user["username"] = json!(format!("ünï\"cöde\\{}", shape.user));
    }
    e.insert("user".into(), user);
    if shape.impersonate {
        e.insert(
            "impersonatedUser".into(),
            json!({"username": "john.doe@example.org", "groups": ["zeta", "admin", "system:authenticated"]}),
        );
    }
    if let Some(ip) = shape.source_ip {
        e.insert("sourceIPs".into(), json!([ip, "10.0.0.1"]));
    }
    if let Some(ua) = &shape.user_agent {
        e.insert("userAgent".into(), json!(ua));
    }
    if let Some(r) = shape.resource {
        let mut o = serde_json::Map::new();
        o.insert("resource".into(), json!(r));
        if let Some(ns) = &shape.namespace {
            o.insert("namespace".into(), json!(ns));
        }
        if let Some(n) = &shape.name {
            o.insert("name".into(), json!(n));
        }
        let group = match r {
            "deployments" => "apps",
            "clusterrolebindings" | "rolebindings" => "rbac.authorization.k8s.io",
            "leases" => "coordination.k8s.io",
            "certificatesigningrequests" => "certificates.k8s.io",
            "endpointslices" => "discovery.k8s.io",
            _ => "",
        };
        if !group.is_empty() {
            o.insert("apiGroup".into(), json!(group));
        }
        o.insert("apiVersion".into(), json!("v1"));
        if let Some(s) = shape.subresource {
            o.insert("subresource".into(), json!(s));
        }
        e.insert("objectRef".into(), Value::Object(o));
    }
    if shape.stage != "RequestReceived" {
        let mut status = json!({"metadata": {}, "code": shape.status});
        if shape.denied {
            status["status"] = json!("Failure");
            status["reason"] = json!("Forbidden");
            status["message"] = json!(format!("{} is forbidden", shape.resource.unwrap_or("path")));
        }
        e.insert("responseStatus".into(), status);
    }
    let writes = matches!(shape.verb, "create" | "update" | "patch");
    if shape.resource.is_some() && shape.level != "Metadata" && (writes || shape.payload > 0) {
        e.insert("requestObject".into(), object_body(rng, shape, false));
    }
    if shape.resource.is_some()
        && shape.level == "RequestResponse"
        && shape.stage == "ResponseComplete"
    {
        e.insert("responseObject".into(), object_body(rng, shape, true));
    }
    e.insert("requestReceivedTimestamp".into(), json!(received));
    e.insert("stageTimestamp".into(), json!(received));
    if shape.annotations {
        let decision = if shape.denied { "forbid" } else { "allow" };
        let reason = if shape.denied {
            String::new()
        } else if shape.escapes {
            "RBAC: allowed by ClusterRoleBinding \"x\\y\" of ClusterRole \"cluster-admin\"".into()
        } else {
            "RBAC: allowed by ClusterRoleBinding \"system:basic-user\"".into()
        };
        e.insert(
            "annotations".into(),
            json!({"authorization.k8s.io/decision": decision, "authorization.k8s.io/reason": reason,
                   "pod-security.kubernetes.io/enforce-policy": "privileged:latest"}),
        );
    }
    Value::Object(e).to_string()
}

/// `n` events drawn with [`Shape::random`].
/// One to five random edits of a line: a byte replaced or its high bit flipped, a cut, a
/// JSON punctuation byte inserted, a byte removed. Never empty.
pub fn mutate(rng: &mut Rng, line: &mut Vec<u8>) {
    for _ in 0..=rng.below(4) {
        let at = rng.below(line.len() as u64) as usize;
        match rng.below(5) {
            0 => line[at] = rng.next() as u8,
            1 => line.truncate(at),
            2 => line.insert(at, rng.pick(b"{}[]\",:\\")),
            3 => {
                line.remove(at);
            }
            _ => line[at] ^= 0x80,
        }
        if line.is_empty() {
            line.push(b'{');
        }
    }
}

pub fn corpus(seed: u64, n: usize) -> Vec<String> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|_| {
            let shape = Shape::random(&mut rng);
            event(&mut rng, &shape)
        })
        .collect()
}

/// Events written by a real kube-apiserver v1.36 under a scripted workload (a stratified
/// sample of every verb/level/stage/resource/status seen; see the fixture's origin in
/// `tests/fixtures/README.md`).
pub fn samples() -> Vec<String> {
    include_str!("../fixtures/apiserver-audit.jsonl")
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The seed's raw events (always in the repository).
pub fn seed_raw() -> Vec<String> {
    include_str!("../fixtures/seed/raw.jsonl")
        .lines()
        .map(str::to_owned)
        .collect()
}
