#!/usr/bin/env bash
# Checks the deployment files (systemd/ and deploy/) without a cluster or a running systemd:
#   - the unit, with `systemd-analyze verify` (any warning about it is fatal) and
#     `systemd-analyze security --offline` (exposure must stay at or under 2.5);
#   - every YAML file parses; Kubernetes objects, audit policies and shipper configs have the
#     structure they need, and the files agree with each other (paths, ports, names);
#   - `kubectl kustomize deploy/k3s` renders, when kubectl is installed;
#   - deploy/k3s-webhook: make-certs.sh makes certificates that verify, and (BINARY a built
#     kube-audit-shipper, curl installed) the shipped webhook config answers an EventList
#     posted over TLS with the API server's client certificate, and refuses other clients.
#
# Usage: bash deploy/validate.sh [BINARY]
#   BINARY: the executable the unit's ExecStart is pointed at for `verify`, which only checks
#   that it exists and is executable. Default: target/release/kube-audit-shipper if built,
#   else /bin/true.
# Installs what is missing (Debian: systemd, python3-yaml); `apt-get update` only then.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS

# --- tools ----------------------------------------------------------------------------------
missing=()
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
py=python3
if ! { command -v python3 >/dev/null 2>&1 && python3 -c 'import yaml' 2>/dev/null; }; then
    # Debian's python3-yaml is for Debian's interpreter, whichever python3 is first on PATH.
    py=/usr/bin/python3
    if ! { [ -x "$py" ] && "$py" -c 'import yaml' 2>/dev/null; }; then
        missing+=(python3-yaml)
    fi
fi
if [ ${#missing[@]} -gt 0 ]; then
    echo "validate: installing ${missing[*]}"
    t0=$SECONDS
    sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    export DEBIAN_FRONTEND=noninteractive
    "${sudo[@]}" apt-get update -qq
    "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    echo "validate: installed in $((SECONDS - t0)) s"
fi

passed=0
failed=0
pass() { passed=$((passed + 1)); printf 'PASS  %s\n' "$*"; }
fail() { failed=$((failed + 1)); printf 'FAIL  %s\n' "$*"; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# --- (a) the systemd unit -------------------------------------------------------------------
unit=systemd/kube-audit-shipper.service
bin=${1:-}
if [ -z "$bin" ]; then
    if [ -x target/release/kube-audit-shipper ]; then
        bin=target/release/kube-audit-shipper
    else
        bin=/bin/true
    fi
fi
bin=$(realpath "$bin")
[ -x "$bin" ] || { echo "validate: $bin is not an executable" >&2; exit 2; }

# verify needs ExecStart's program to exist; the rest of the unit is checked as shipped.
sed "s#^ExecStart=/usr/local/bin/kube-audit-shipper #ExecStart=$bin #" "$unit" \
    >"$tmp/kube-audit-shipper.service"
if ! grep -q "^ExecStart=$bin run --config " "$tmp/kube-audit-shipper.service"; then
    fail "$unit: no 'ExecStart=/usr/local/bin/kube-audit-shipper run --config ...' line"
else
    # The exit status alone misses warnings (an unknown or misplaced key exits 0), so any
    # line naming the unit fails too. Not the unit's fault, and ignored: libseccomp older than
    # systemd's list of system calls ("Failed to parse system call, ignoring: ...").
    rc=0
    out=$(cd "$tmp" && SYSTEMD_LOG_COLOR=0 systemd-analyze verify --man=no \
        kube-audit-shipper.service 2>&1) || rc=$?
    about_unit=$(printf '%s\n' "$out" | grep 'kube-audit-shipper' |
        grep -v 'Failed to parse system call, ignoring' || true)
    if [ "$rc" -ne 0 ] || [ -n "$about_unit" ]; then
        fail "$unit: systemd-analyze verify (exit $rc)"
        printf '%s\n' "$out" | sed 's/^/      /'
    else
        pass "$unit: systemd-analyze verify, no warnings (ExecStart -> $bin)"
    fi

    if systemd-analyze security --help 2>/dev/null | grep -q -- '--offline'; then
        rc=0
        out=$(cd "$tmp" && SYSTEMD_LOG_COLOR=0 systemd-analyze security --offline=yes \
            --threshold=25 kube-audit-shipper.service 2>&1) || rc=$?
        level=$(printf '%s\n' "$out" | sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')
        if [ "$rc" -eq 0 ] && [ -n "$level" ]; then
            pass "$unit: systemd-analyze security exposure $level (at most 2.5)"
        else
            fail "$unit: systemd-analyze security exposure ${level:-unknown} (exit $rc; at most 2.5)"
            printf '%s\n' "$out" | grep -E '^✗|Overall' | sed 's/^/      /'
        fi
    else
        echo "SKIP  $unit: this systemd-analyze has no 'security --offline'"
    fi
fi

# --- (b) YAML files -------------------------------------------------------------------------
rendered=""
if command -v kubectl >/dev/null 2>&1; then
    if kubectl kustomize deploy/k3s >"$tmp/rendered.yaml" 2>"$tmp/kustomize.err"; then
        rendered="$tmp/rendered.yaml"
    else
        fail "deploy/k3s: kubectl kustomize: $(head -c 500 "$tmp/kustomize.err")"
    fi
else
    echo "SKIP  deploy/k3s: kubectl kustomize (no kubectl)"
fi

rc=0
"$py" - "$rendered" >"$tmp/py.out" 2>&1 <<'PY' || rc=$?
import glob, ipaddress, json, os, re, sys
import yaml

rendered = sys.argv[1]
results = []
def check(ok, what):
    results.append((bool(ok), what))
    return bool(ok)

# --- the shipper's config (keys as src/config/raw.rs accepts them) ---
TOP = {"logfiles", "webhook", "region", "intake_url", "state_dir", "spool_max_bytes", "batch_max_bytes",
       "batch_max_events", "batch_linger_secs", "gzip_level", "output", "start_at",
       "max_line_bytes", "request_timeout_secs", "ca_file", "client_cert", "client_key",
       "HTTPProxyURL", "metrics_address", "unhealthy_after_secs", "OptimizationRules"}
# The Sekoia Endpoint Agent's own keys: accepted, with a warning (AGENT_KEYS in raw.rs).
AGENT = {"roles", "EventBufferCacheSize", "EnableDNSResolutions", "HashesExcludedPaths", "LogMaxSize",
         "LogMaxBackups", "LogCompress", "RemoteOptimizationRules"}
ENTRY = {"filepath", "intakekey", "intakekey_file", "intakekey_env", "OptimizationRules"}
WEBHOOK = {"listen", "cert_file", "key_file", "client_ca_file", "max_body_bytes", "intakekey",
           "intakekey_file", "intakekey_env", "OptimizationRules"}
KEYS = ("intakekey", "intakekey_file", "intakekey_env")
# The regions, read from their one table in the source (src/config/regions.rs).
REGIONS = {"fra1", "fra2", "mco1", "sgp1", "uae1", "usa1"}
if os.path.exists("src/config/regions.rs"):
    REGIONS = set(re.findall(r'^\s*\("([a-z0-9]+)",\s*"https://', open("src/config/regions.rs").read(), re.M)) or REGIONS
OPERATORS = {"==", "!=", "contains", "not contains", ">", ">=", "<", "<=", "exists", "not exists"}
BYTES = re.compile(r"^\d+\s*(B|K|KiB|M|MiB|G|GiB|KB|MB|GB)?$")
# The ECS fields a filter may name, read from the source so the two cannot drift apart.
ecs_fields = set()
if os.path.exists("src/filter.rs"):
    ecs_fields = set(re.findall(r'\("([a-z_.]+)",\s*EcsField::', open("src/filter.rs").read()))

def rules_problems(rules, at):
    out = []
    if not isinstance(rules, list):
        return [f"{at}: not a list"]
    for i, r in enumerate(rules):
        if not isinstance(r, dict) or set(r) - {"name", "uuid", "action", "filters"}:
            out.append(f"{at}[{i}]: keys must be name, uuid, action, filters")
            continue
        if str(r.get("action")) != "1":
            out.append(f"{at}[{i}].action: only 1 (ignore) exists")
        fs = r.get("filters")
        if not isinstance(fs, list) or not fs:
            out.append(f"{at}[{i}].filters: a non-empty list is needed")
            continue
        for j, f in enumerate(fs):
            if not isinstance(f, dict) or set(f) - {"field", "operator", "value"}:
                out.append(f"{at}[{i}].filters[{j}]: keys must be field, operator, value")
                continue
            if f.get("operator") not in OPERATORS:
                out.append(f"{at}[{i}].filters[{j}].operator {f.get('operator')!r}")
            if ecs_fields and f.get("field") not in ecs_fields:
                out.append(f"{at}[{i}].filters[{j}].field {f.get('field')!r} is not a known ECS field")
    return out

def loopback(host):
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False

def config_problems(cfg):
    p = []
    if not isinstance(cfg, dict):
        return ["not a mapping"]
    p += [f"unknown key {k!r}" for k in cfg if k not in TOP | AGENT]
    lf = cfg.get("logfiles")
    if "webhook" in cfg and lf is None:
        lf = []
    elif not isinstance(lf, list) or not lf:
        p.append("logfiles: one or more entries needed (or a webhook: section)")
        lf = []
    if "webhook" in cfg:
        p += webhook_problems(cfg["webhook"])
    for i, e in enumerate(lf):
        if not isinstance(e, dict):
            p.append(f"logfiles[{i}]: not a mapping"); continue
        p += [f"logfiles[{i}]: unknown key {k!r}" for k in e if k not in ENTRY]
        if not (isinstance(e.get("filepath"), str) and e["filepath"].startswith("/")):
            p.append(f"logfiles[{i}].filepath: an absolute path is needed")
        n = sum(k in e for k in KEYS)
        if n != 1:
            p.append(f"logfiles[{i}]: exactly one of {', '.join(KEYS)} (found {n})")
        if "OptimizationRules" in e:
            p += rules_problems(e["OptimizationRules"], f"logfiles[{i}].OptimizationRules")
    if "region" in cfg and "intake_url" in cfg:
        p.append("region and intake_url both given")
    if "region" in cfg and str(cfg["region"]).lower() not in REGIONS:
        p.append(f"region {cfg['region']!r}")
    url = str(cfg.get("intake_url", "https://"))
    host = re.split(r"[/\\?#]", url.partition("://")[2])[0].rpartition("@")[2]
    host = host[1:].partition("]")[0] if host.startswith("[") else host.partition(":")[0]
    if not url.startswith("https://") and not (url.startswith("http://") and loopback(host)):
        p.append(f"intake_url {url!r}: https://, or http:// only to a loopback address")
    for k in ("spool_max_bytes", "batch_max_bytes", "max_line_bytes"):
        if k in cfg and not BYTES.match(str(cfg[k])):
            p.append(f"{k} {cfg[k]!r}: not a byte count")
    if "output" in cfg and cfg["output"] not in ("audit", "ecs", "raw"):
        p.append(f"output {cfg['output']!r}")
    if "start_at" in cfg and cfg["start_at"] not in ("beginning", "end"):
        p.append(f"start_at {cfg['start_at']!r}")
    if "metrics_address" in cfg and cfg["metrics_address"] != "off":
        try:
            metrics_socket(cfg)
        except ValueError:
            p.append(f"metrics_address {cfg['metrics_address']!r}: IP:PORT or off")
    if ("client_cert" in cfg) != ("client_key" in cfg):
        p.append("client_cert and client_key go together")
    if "OptimizationRules" in cfg:
        p += rules_problems(cfg["OptimizationRules"], "OptimizationRules")
    return p

def socket(addr):
    host, _, port = str(addr).rpartition(":")
    return ipaddress.ip_address(host.strip("[]")), int(port)

def webhook_problems(w):
    if not isinstance(w, dict):
        return ["webhook: not a mapping"]
    p = [f"webhook: unknown key {k!r}" for k in w if k not in WEBHOOK]
    n = sum(k in w for k in KEYS)
    if n != 1:
        p.append(f"webhook: exactly one of {', '.join(KEYS)} (found {n})")
    if ("cert_file" in w) != ("key_file" in w):
        p.append("webhook: cert_file and key_file go together")
    if "client_ca_file" in w and "cert_file" not in w:
        p.append("webhook: client_ca_file needs TLS (cert_file, key_file)")
    for k in ("cert_file", "key_file", "client_ca_file", "intakekey_file"):
        if k in w and not str(w[k]).startswith("/"):
            p.append(f"webhook.{k}: an absolute path is needed")
    try:
        ip, _ = socket(w.get("listen", "127.0.0.1:9881"))
        if "cert_file" not in w and not ip.is_loopback:
            p.append(f"webhook.listen {w.get('listen')}: plain HTTP only on loopback")
    except ValueError:
        p.append(f"webhook.listen {w.get('listen')!r}: IP:PORT")
    if "max_body_bytes" in w and not BYTES.match(str(w["max_body_bytes"])):
        p.append(f"webhook.max_body_bytes {w['max_body_bytes']!r}: not a byte count")
    if "OptimizationRules" in w:
        p += rules_problems(w["OptimizationRules"], "webhook.OptimizationRules")
    return p

def byte_count(v):
    m = re.match(r"^(\d+)\s*([A-Za-z]*)$", str(v))
    mult = {"": 1, "B": 1, "K": 1000, "KB": 1000, "KiB": 1024, "M": 10**6, "MB": 10**6,
            "MiB": 2**20, "G": 10**9, "GB": 10**9, "GiB": 2**30}
    return int(m.group(1)) * mult[m.group(2)] if m and m.group(2) in mult else None

def metrics_socket(cfg):
    addr = str(cfg.get("metrics_address", "127.0.0.1:9880"))
    host, _, port = addr.rpartition(":")
    return ipaddress.ip_address(host.strip("[]")), int(port)

# --- audit.k8s.io/v1 Policy (fields and checks of the API server's own validation) ---
LEVELS = {"None", "Metadata", "Request", "RequestResponse"}
STAGES = {"RequestReceived", "ResponseStarted", "ResponseComplete", "Panic"}
VERBS = {"get", "list", "watch", "create", "update", "patch", "delete", "deletecollection",
         "impersonate", "proxy"}
RULE_KEYS = {"level", "users", "userGroups", "verbs", "resources", "namespaces",
             "nonResourceURLs", "omitStages", "omitManagedFields"}
DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")

def strings(v):
    return isinstance(v, list) and all(isinstance(x, str) for x in v)

def policy_problems(d):
    p = [f"unknown key {k!r}" for k in d
         if k not in {"apiVersion", "kind", "metadata", "rules", "omitStages", "omitManagedFields"}]
    if not (strings(d.get("omitStages", [])) and set(d.get("omitStages", [])) <= STAGES):
        p.append(f"omitStages {d.get('omitStages')!r}")
    if not isinstance(d.get("omitManagedFields", False), bool):
        p.append("omitManagedFields: true or false")
    rules = d.get("rules")
    if not isinstance(rules, list) or not rules:
        return p + ["rules: a non-empty list is needed"]
    for i, r in enumerate(rules):
        at = f"rules[{i}]"
        if not isinstance(r, dict):
            p.append(f"{at}: not a mapping"); continue
        p += [f"{at}: unknown key {k!r}" for k in r if k not in RULE_KEYS]
        if r.get("level") not in LEVELS:
            p.append(f"{at}.level {r.get('level')!r}")
        for k in ("users", "userGroups", "verbs", "namespaces", "nonResourceURLs", "omitStages"):
            if k in r and not strings(r[k]):
                p.append(f"{at}.{k}: a list of strings is needed")
        if strings(r.get("verbs", [])) and set(r.get("verbs", [])) - VERBS:
            p.append(f"{at}.verbs: unknown {sorted(set(r['verbs']) - VERBS)}")
        if strings(r.get("omitStages", [])) and set(r.get("omitStages", [])) - STAGES:
            p.append(f"{at}.omitStages: unknown {sorted(set(r['omitStages']) - STAGES)}")
        if r.get("nonResourceURLs") and (r.get("resources") or r.get("namespaces")):
            p.append(f"{at}: nonResourceURLs cannot be combined with resources or namespaces")
        for u in r.get("nonResourceURLs", []) if strings(r.get("nonResourceURLs", [])) else []:
            if u != "*" and (not u.startswith("/") or "*" in u[:-1]):
                p.append(f"{at}.nonResourceURLs {u!r}: must start with / and have * only at the end")
        for j, g in enumerate(r.get("resources", []) or []):
            if not isinstance(g, dict) or set(g) - {"group", "resources", "resourceNames"}:
                p.append(f"{at}.resources[{j}]: keys must be group, resources, resourceNames"); continue
            grp = g.get("group", "")
            if not isinstance(grp, str) or (grp and not DNS1123.match(grp)):
                p.append(f"{at}.resources[{j}].group {grp!r}")
            for k in ("resources", "resourceNames"):
                if k in g and not strings(g[k]):
                    p.append(f"{at}.resources[{j}].{k}: a list of strings is needed")
            if g.get("resourceNames") and not g.get("resources"):
                p.append(f"{at}.resources[{j}]: resourceNames needs resources")
    last = rules[-1] if isinstance(rules[-1], dict) else {}
    if set(last) - {"level", "omitStages", "omitManagedFields"}:
        p.append("the last rule is not a catch-all (requests matching no rule would not be logged)")
    return p

# --- load every YAML file ---
files = sorted(f for pat in ("systemd/**/*.yaml", "systemd/**/*.yml", "deploy/**/*.yaml", "deploy/**/*.yml")
               for f in glob.glob(pat, recursive=True))
docs = {}
for f in files:
    try:
        ds = [d for d in yaml.safe_load_all(open(f)) if d is not None]
        check(ds, f"{f}: parses ({len(ds)} document(s))")
        docs[f] = ds
    except yaml.YAMLError as e:
        check(False, f"{f}: YAML: {str(e).splitlines()[0]}")

objects = []      # (file, doc) of Kubernetes objects
configs = []      # (where, config)
policies = []
kustomizations = []
kubeconfigs = []  # the audit webhook's kubeconfig (the API server reads it)
k3s_configs = []  # /etc/rancher/k3s/config.yaml snippets
for f, ds in docs.items():
    for d in ds:
        if not isinstance(d, dict):
            check(False, f"{f}: a document is not a mapping"); continue
        if d.get("apiVersion") == "audit.k8s.io/v1" and d.get("kind") == "Policy":
            policies.append((f, d))
        elif d.get("kind") == "Kustomization" or os.path.basename(f) == "kustomization.yaml":
            kustomizations.append((f, d))
        elif d.get("apiVersion") == "v1" and d.get("kind") == "Config":
            kubeconfigs.append((f, d))
        elif "kube-apiserver-arg" in d:
            k3s_configs.append((f, d))
        elif "logfiles" in d or "webhook" in d:
            configs.append((f, d))
        elif "apiVersion" in d or "kind" in d:
            objects.append((f, d))
        else:
            check(False, f"{f}: neither a Kubernetes object, an audit policy nor a shipper config")

check(files, f"{len(files)} YAML files found under systemd/ and deploy/")

# Kubernetes objects
by_kind = {}
for f, d in objects:
    name = (d.get("metadata") or {}).get("name")
    check(d.get("apiVersion") and d.get("kind") and name,
          f"{f}: {d.get('kind')}/{name}: apiVersion, kind, metadata.name")
    by_kind.setdefault(d.get("kind"), []).append((f, d))
namespaces = [d["metadata"]["name"] for _, d in by_kind.get("Namespace", [])]
for f, d in objects:
    if d.get("kind") != "Namespace":
        ns = (d.get("metadata") or {}).get("namespace")
        check(ns in namespaces, f"{f}: {d.get('kind')} is in namespace {ns!r}, created by the manifests")

# ConfigMaps that carry a shipper config
cm_configs = {}
for f, d in by_kind.get("ConfigMap", []):
    for key, text in (d.get("data") or {}).items():
        if key.endswith((".yaml", ".yml")):
            try:
                cfg = yaml.safe_load(text)
            except yaml.YAMLError as e:
                check(False, f"{f}: data.{key}: YAML: {str(e).splitlines()[0]}"); continue
            configs.append((f"{f} data.{key}", cfg))
            cm_configs[(d["metadata"]["name"], key)] = cfg

for where, cfg in configs:
    p = config_problems(cfg)
    check(not p, f"{where}: shipper config" + (": " + "; ".join(p) if p else " (inputs with a key source each)"))

for f, d in policies:
    p = policy_problems(d)
    check(not p, f"{f}: audit.k8s.io/v1 Policy, {len(d.get('rules') or [])} rule(s)" + (": " + "; ".join(p) if p else ""))
minimal = [d for f, d in policies if f.endswith("audit-policy/minimal.yaml")]
check(minimal and minimal[0].get("rules") == [{"level": "Metadata"}] and set(minimal[0]) == {"apiVersion", "kind", "rules"},
      "deploy/audit-policy/minimal.yaml: the integration page's policy (one rule, level Metadata)")
rec = [d for f, d in policies if f.endswith("audit-policy/recommended.yaml")]
if check(rec, "deploy/audit-policy/recommended.yaml exists"):
    r = rec[0]
    body = [x for x in r["rules"] if x.get("level") in ("Request", "RequestResponse")]
    secret_rule = next((i for i, x in enumerate(r["rules"])
                        if any("secrets" in (g.get("resources") or []) and g.get("group", "") == ""
                               for g in x.get("resources") or [])), None)
    first_body = next((i for i, x in enumerate(r["rules"]) if x in body), None)
    check("RequestReceived" in r.get("omitStages", []), "recommended.yaml: omits the RequestReceived stage")
    check(secret_rule is not None and r["rules"][secret_rule]["level"] == "Metadata"
          and first_body is not None and secret_rule < first_body,
          "recommended.yaml: secrets at Metadata, before any rule that logs bodies")

# kustomization: lists exactly the manifests of its directory, and they exist
for f, d in kustomizations:
    base = os.path.dirname(f)
    res = d.get("resources") or []
    on_disk = sorted(os.path.basename(g) for g, _ in objects if os.path.dirname(g) == base)
    check(all(os.path.exists(os.path.join(base, x)) for x in res) and sorted(set(res)) == sorted(set(on_disk)),
          f"{f}: resources {res} are the manifests of {base}/")
    if rendered:
        out = [x for x in yaml.safe_load_all(open(rendered)) if x]
        kinds = sorted(x["kind"] for x in out)
        check(kinds == sorted(d2["kind"] for g, d2 in objects if os.path.dirname(g) == base),
              f"{f}: kubectl kustomize renders {len(out)} objects ({', '.join(kinds)})")

# The DaemonSet
container_config_dir = None
for f, ds in by_kind.get("DaemonSet", []):
    spec = ds["spec"]["template"]["spec"]
    tmpl_labels = ds["spec"]["template"]["metadata"].get("labels") or {}
    check(all(tmpl_labels.get(k) == v for k, v in ds["spec"]["selector"]["matchLabels"].items()),
          f"{f}: selector matches the pod template's labels")
    check(spec.get("nodeSelector", {}).get("node-role.kubernetes.io/control-plane") == "true",
          f"{f}: nodeSelector node-role.kubernetes.io/control-plane: \"true\"")
    keys = {t.get("key") for t in spec.get("tolerations", [])}
    check({"node-role.kubernetes.io/control-plane", "node-role.kubernetes.io/master", "CriticalAddonsOnly"} <= keys,
          f"{f}: tolerates the control-plane, master and CriticalAddonsOnly taints")
    check(not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC"),
          f"{f}: no hostNetwork, hostPID, hostIPC")
    check(spec.get("automountServiceAccountToken") is False, f"{f}: no service account token")
    vols = {v["name"]: v for v in spec.get("volumes", [])}
    (c,) = spec["containers"]
    sc = c.get("securityContext") or {}
    check(sc.get("readOnlyRootFilesystem") is True, f"{f}: readOnlyRootFilesystem: true")
    check(sc.get("allowPrivilegeEscalation") is False and not sc.get("privileged"),
          f"{f}: allowPrivilegeEscalation: false, not privileged")
    caps = sc.get("capabilities") or {}
    check(caps.get("drop") == ["ALL"] and set(caps.get("add") or []) <= {"DAC_READ_SEARCH"},
          f"{f}: capabilities drop ALL (add: {caps.get('add') or 'none'})")
    res = c.get("resources") or {}
    check((res.get("limits") or {}).get("memory") and (res.get("requests") or {}).get("cpu"),
          f"{f}: memory limit {(res.get('limits') or {}).get('memory')}, cpu request {(res.get('requests') or {}).get('cpu')}")
    mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
    host = {p: vols[m["name"]]["hostPath"] for p, m in mounts.items() if "hostPath" in vols.get(m["name"], {})}
    # the config: a ConfigMap volume, and the config it holds
    cfg = None
    for p, m in mounts.items():
        cmref = vols.get(m["name"], {}).get("configMap")
        if cmref:
            container_config_dir = p
            cfg = cm_configs.get((cmref["name"], "config.yaml"))
    if not check(cfg, f"{f}: mounts a ConfigMap holding config.yaml at {container_config_dir}"):
        continue
    audit = [p for p, h in host.items() if any(l["filepath"].startswith(p.rstrip("/") + "/") for l in cfg["logfiles"])]
    check(audit and all(mounts[p].get("readOnly") is True for p in audit),
          f"{f}: hostPath mount of the audit log directory {audit}, read-only")
    check(audit and all(host[p]["path"] == p for p in audit),
          f"{f}: audit log directory mounted at its host path")
    state = cfg.get("state_dir", "/var/lib/kube-audit-shipper")
    check(state in host and host[state].get("type") == "DirectoryOrCreate" and not mounts[state].get("readOnly"),
          f"{f}: hostPath mount of state_dir {state} (DirectoryOrCreate, writable)")
    env = {e["name"]: e for e in c.get("env", [])}
    for l in cfg["logfiles"]:
        var = l.get("intakekey_env")
        if var:
            ref = ((env.get(var) or {}).get("valueFrom") or {}).get("secretKeyRef") or {}
            secrets = {(s["metadata"]["name"], k) for _, s in by_kind.get("Secret", [])
                       for k in list((s.get("stringData") or {})) + list((s.get("data") or {}))}
            check((ref.get("name"), ref.get("key")) in secrets,
                  f"{f}: env {var} comes from Secret {ref.get('name')} key {ref.get('key')}")
    ip, port = metrics_socket(cfg)
    probe = (c.get("livenessProbe") or {}).get("httpGet") or {}
    ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
    probe_port = ports.get(probe.get("port"), probe.get("port"))
    check(probe.get("path") == "/livez" and probe_port == port,
          f"{f}: livenessProbe GET /livez on the metrics port {port} (not /healthz: it fails on outside problems a restart cannot fix)")
    check(ip.is_unspecified, f"{f}: metrics_address {ip}:{port} reachable by the kubelet's probe on the pod IP")
    img = c.get("image", "")
    for kf, k in kustomizations:
        names = [i.get("name") for i in k.get("images") or []]
        check(not names or img.rsplit(":", 1)[0] in names, f"{f}: image {img} is the one {kf} retags")

# The systemd unit and its example config agree
unit = {}
for line in open("systemd/kube-audit-shipper.service"):
    line = line.strip()
    if line and not line.startswith(("#", "[")):
        k, _, v = line.partition("=")
        unit.setdefault(k, []).append(v)
exec_start = unit.get("ExecStart", [""])[0].split()
want = {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
        "PrivateDevices": "yes", "ProtectKernelTunables": "yes", "ProtectKernelModules": "yes",
        "ProtectKernelLogs": "yes", "ProtectControlGroups": "yes", "RestrictNamespaces": "yes",
        "LockPersonality": "yes", "MemoryDenyWriteExecute": "yes", "SystemCallArchitectures": "native",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX", "StateDirectory": "kube-audit-shipper",
        "StateDirectoryMode": "0700", "CapabilityBoundingSet": "", "Restart": "on-failure"}
off = [f"{k}={unit.get(k)}" for k, v in want.items() if unit.get(k, [None])[-1] != v]
check(not off, "systemd unit: hardening settings" + (": " + ", ".join(off) if off else ""))
check("@system-service" in unit.get("SystemCallFilter", []) and unit.get("MemoryMax") and unit.get("TimeoutStopSec"),
      "systemd unit: SystemCallFilter=@system-service, MemoryMax, TimeoutStopSec")
check(exec_start[:3] == ["/usr/local/bin/kube-audit-shipper", "run", "--config"] and len(exec_start) == 4,
      f"systemd unit: ExecStart runs {' '.join(exec_start)}")
ex = [c for w, c in configs if w.startswith("systemd/")]
if check(ex, "systemd/config.example.yaml is a shipper config"):
    cfg = ex[0]
    check(cfg.get("state_dir", "/var/lib/kube-audit-shipper") == "/var/lib/" + unit["StateDirectory"][0],
          "systemd: config state_dir is the unit's StateDirectory")
    ip, _ = metrics_socket(cfg) if cfg.get("metrics_address") != "off" else (ipaddress.ip_address("127.0.0.1"), 0)
    check(ip.is_loopback, "systemd: metrics on loopback only")
    check(all("intakekey" not in l for l in cfg["logfiles"]), "systemd: no inline intake key in the example")

# The Containerfile
text = open("deploy/Containerfile").read()
instr = [l for l in text.splitlines() if l and not l.startswith("#") and not l.startswith(" ")]
froms = [l for l in instr if l.upper().startswith("FROM ")]
check(froms == ["FROM scratch"], "deploy/Containerfile: FROM scratch, one stage")
ep = [l for l in instr if l.startswith("ENTRYPOINT ")]
try:
    ep = json.loads(ep[-1][len("ENTRYPOINT "):]) if ep else []
except ValueError:
    ep = []
check(ep[1:3] == ["run", "--config"] and ep[3:] == [exec_start[3]] and container_config_dir
      and os.path.dirname(ep[3]) == container_config_dir and os.path.basename(ep[3]) == "config.yaml",
      f"deploy/Containerfile: ENTRYPOINT {ep} reads the ConfigMap's config.yaml (same path as the unit)")
check(any(l.startswith("COPY ") and l.split()[-1] == ep[0] for l in instr) if ep else False,
      "deploy/Containerfile: COPY puts the binary at the ENTRYPOINT's path")

# The audit webhook for k3s (deploy/k3s-webhook/): the API server's kubeconfig and flags,
# and the shipper's webhook config, agree with each other.
def named(items, name):
    return next((x for x in items or [] if isinstance(x, dict) and x.get("name") == name), None)

AUDIT_FLAGS = {"audit-policy-file", "audit-webhook-config-file", "audit-webhook-mode",
               "audit-webhook-initial-backoff", "audit-webhook-version",
               "audit-webhook-batch-buffer-size", "audit-webhook-batch-max-size",
               "audit-webhook-batch-max-wait", "audit-webhook-batch-throttle-enable",
               "audit-webhook-batch-throttle-qps", "audit-webhook-batch-throttle-burst",
               "audit-webhook-truncate-enabled", "audit-webhook-truncate-max-batch-size",
               "audit-webhook-truncate-max-event-size"}
DURATION = re.compile(r"^(\d+(\.\d+)?(ns|us|ms|s|m|h))+$")
for f, kc in kubeconfigs:
    base = os.path.dirname(f)
    ctx = named(kc.get("contexts"), kc.get("current-context"))
    ctx = (ctx or {}).get("context") or {}
    cluster = (named(kc.get("clusters"), ctx.get("cluster")) or {}).get("cluster") or {}
    user = (named(kc.get("users"), ctx.get("user")) or {}).get("user") or {}
    server = str(cluster.get("server", ""))
    files = [cluster.get("certificate-authority"), user.get("client-certificate"), user.get("client-key")]
    check(server.startswith("https://") and all(isinstance(x, str) and x.startswith("/") for x in files)
          and len({os.path.dirname(x) for x in files}) == 1,
          f"{f}: current-context {kc.get('current-context')!r}: server {server}, certificate-authority, "
          "client-certificate and client-key (absolute, one directory)")
    hostport = server.partition("://")[2].partition("/")[0]
    shipper = [(w, c) for w, c in configs if os.path.dirname(w.split(" ")[0]) == base and "webhook" in c]
    k3s = [(w, c) for w, c in k3s_configs if os.path.dirname(w) == base]
    if check(len(shipper) == 1, f"{base}: one shipper config with a webhook: section beside {f}"):
        w = shipper[0][1]["webhook"]
        check(str(w.get("listen", "127.0.0.1:9881")) == hostport,
              f"{base}: the API server posts to {hostport}, where the shipper listens ({w.get('listen', '127.0.0.1:9881')})")
        check("cert_file" in w and "client_ca_file" in w
              and os.path.basename(str(w["client_ca_file"])) == os.path.basename(str(files[0])),
              f"{base}: TLS with a required client certificate, one CA on both sides ({os.path.basename(str(files[0]))})")
        limit = byte_count(w.get("max_body_bytes", "64MiB"))
    else:
        limit = None
    if not check(len(k3s) == 1, f"{base}: one k3s config (kube-apiserver-arg) beside {f}"):
        continue
    args = {}
    for a in k3s[0][1].get("kube-apiserver-arg") or []:
        k, _, v = str(a).partition("=")
        args[k] = v
    unknown = sorted(set(args) - AUDIT_FLAGS)
    check(not unknown, f"{k3s[0][0]}: audit flags only, each known" + (f"; unknown: {unknown}" if unknown else ""))
    check(args.get("audit-webhook-config-file") == os.path.join(os.path.dirname(str(files[0])), "kubeconfig.yaml"),
          f"{k3s[0][0]}: audit-webhook-config-file is the kubeconfig beside its certificates")
    check(args.get("audit-webhook-mode", "batch") in {"batch", "blocking", "blocking-strict"},
          f"{k3s[0][0]}: audit-webhook-mode {args.get('audit-webhook-mode', 'batch')}")
    check(args.get("audit-policy-file", "").startswith("/"), f"{k3s[0][0]}: audit-policy-file set (no policy: no events)")
    durations = [k for k in args if k.endswith(("-wait", "-backoff"))]
    ints = [k for k in args if k.endswith(("-size", "-qps", "-burst"))]
    check(all(DURATION.match(args[k]) for k in durations) and all(re.match(r"^\d+(\.\d+)?$", args[k]) for k in ints),
          f"{k3s[0][0]}: durations and numbers well formed")
    if limit is not None:
        batch = int(args["audit-webhook-truncate-max-batch-size"]) if args.get("audit-webhook-truncate-enabled") == "true" else None
        check(batch is not None and batch < limit,
              f"{k3s[0][0]}: batches truncated below the shipper's max_body_bytes ({batch} < {limit}): a larger body is refused (413) and not retried")

# Alert rules use only the metrics the service exports (series names in src/metrics.rs).
exported = set(re.findall(r'"([a-z_]+)"', open("src/metrics.rs").read()))
for f, d in by_kind.get("PrometheusRule", []):
    exprs = [r.get("expr", "") for g in (d.get("spec") or {}).get("groups") or [] for r in g.get("rules") or []]
    used = sorted({m for e in exprs for m in re.findall(r"kas_([a-z_]+)", str(e))})
    unknown = [m for m in used if m not in exported]
    check(exprs and not unknown,
          f"{f}: {len(exprs)} rule(s) on metrics the service exports" + (f"; unknown: {unknown}" if unknown else ""))

for ok, what in results:
    print(("PASS  " if ok else "FAIL  ") + what)
sys.exit(0 if all(ok for ok, _ in results) else 1)
PY
cat "$tmp/py.out"
passed=$((passed + $(grep -c '^PASS' "$tmp/py.out" || true)))
failed=$((failed + $(grep -c '^FAIL' "$tmp/py.out" || true)))
if [ "$rc" -ne 0 ] && ! grep -q '^FAIL' "$tmp/py.out"; then
    fail "YAML checks: python exited $rc"
fi

# --- (c) the audit webhook: its certificates, and the TLS link through BINARY ----------------
wh=deploy/k3s-webhook
pki="$tmp/pki"
if bash "$wh/make-certs.sh" "$pki" 30 >/dev/null 2>"$tmp/pki.err"; then
    san=$(openssl x509 -in "$pki/server.crt" -noout -ext subjectAltName 2>/dev/null | tail -n 1 | tr -d ' ')
    if openssl verify -CAfile "$pki/ca.crt" -purpose sslserver "$pki/server.crt" >/dev/null 2>&1 &&
        openssl verify -CAfile "$pki/ca.crt" -purpose sslclient "$pki/client.crt" >/dev/null 2>&1 &&
        ! openssl verify -CAfile "$pki/ca.crt" -purpose sslserver "$pki/client.crt" >/dev/null 2>&1 &&
        [ "$san" = "IPAddress:127.0.0.1" ]; then
        pass "$wh/make-certs.sh: a CA, a server certificate for IP 127.0.0.1 and a client-only certificate, both verified"
    else
        fail "$wh/make-certs.sh: certificates (subjectAltName '$san', or a purpose check failed)"
    fi
else
    fail "$wh/make-certs.sh: $(head -c 300 "$tmp/pki.err")"
fi
# The shipper's webhook config as shipped, its files in $tmp: the API server's side played by
# curl with the kubeconfig's client certificate.
if [ "$(basename "$bin")" = kube-audit-shipper ] && [ -f "$pki/client.key" ] && command -v curl >/dev/null 2>&1; then
    port=$("$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    printf 'validate-key\n' >"$tmp/intake.key"
    chmod 600 "$tmp/intake.key"
    sed -e "s#/etc/kube-audit-shipper/webhook/#$pki/#" -e "s#/etc/kube-audit-shipper/intake.key#$tmp/intake.key#" \
        -e "s#127.0.0.1:9881#127.0.0.1:$port#" -e 's#^region: .*#intake_url: https://127.0.0.1:9/#' \
        -e 's#^metrics_address: .*#metrics_address: off#' "$wh/config.yaml" >"$tmp/webhook.yaml"
    printf 'state_dir: %s\n' "$tmp/state" >>"$tmp/webhook.yaml"
    chmod 600 "$tmp/webhook.yaml"
    printf '{"kind":"EventList","apiVersion":"audit.k8s.io/v1","metadata":{},"items":[%s]}' \
        "$(head -n 1 tests/fixtures/apiserver-audit.jsonl)" >"$tmp/list.json"
    RUST_LOG=error "$bin" run --config "$tmp/webhook.yaml" >"$tmp/shipper.log" 2>&1 &
    shipper=$!
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
        sleep 0.1
    done
    post() {
        curl -sS -o /dev/null -w '%{http_code}' --max-time 10 --cacert "$pki/ca.crt" \
            -H 'Content-Type: application/json' "$@" "https://127.0.0.1:$port/" 2>/dev/null || true
    }
    with_cert=$(post --cert "$pki/client.crt" --key "$pki/client.key" --data-binary @"$tmp/list.json")
    bad_body=$(post --cert "$pki/client.crt" --key "$pki/client.key" --data-binary '{"kind":"Event"}')
    no_cert=$(post --data-binary @"$tmp/list.json")
    server_cert=$(post --cert "$pki/server.crt" --key "$pki/server.key" --data-binary @"$tmp/list.json")
    kill "$shipper" 2>/dev/null || true
    wait "$shipper" 2>/dev/null || true
    if [ "$with_cert" = 200 ] && [ "$bad_body" = 400 ] && [ "${no_cert:-000}" = 000 ] && [ "${server_cert:-000}" = 000 ]; then
        pass "$wh/config.yaml through $bin: an EventList over TLS with the client certificate 200, a non-EventList 400, no client certificate or a server-only one refused at the handshake"
    else
        fail "$wh/config.yaml through $bin: with the client certificate $with_cert (want 200), bad body $bad_body (400), without ${no_cert:-000} (000), server cert as client ${server_cert:-000} (000)"
        sed 's/^/      /' "$tmp/shipper.log" | head -20
    fi
else
    echo "SKIP  $wh/config.yaml: the TLS link (needs BINARY = a built kube-audit-shipper, and curl)"
fi

echo
echo "validate: $((SECONDS - started)) s"
echo "validate: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
