#!/usr/bin/env bash
# Validates the deployment files in deploy/ without a cluster, a Docker engine or the network
# (apart from a one-time `pip install pyyaml` when PyYAML is missing).
#
#   bash deploy/validate.sh            # from anywhere; exits non-zero on any problem
#
# Always checked (python3 + PyYAML):
#   - every YAML file parses (duplicate keys are errors)
#   - each kustomization.yaml's resources / patches / generator files exist
#   - every manifest has apiVersion, kind, metadata.name; JSON 6902 patches are well formed
#   - per kustomization, for every workload (one per service: registry, facilities, requests,
#     gateway):
#     container ports match the Services' targetPorts; each container has a `grpc` port
#     (mutual TLS) and a separate `health` port, and its startup/readiness/liveness probes are
#     native gRPC probes on the `health` port by number (the kubelet's gRPC probe cannot speak
#     TLS: it calls the plaintext health-only CONCORD_HEALTH_ADDR); the `serve --target` of
#     the container picks the service(s) it runs, whose listen variable (CONCORD_REGISTRY_ADDR,
#     CONCORD_FACILITIES_ADDR, CONCORD_REQUESTS_ADDR, CONCORD_GATEWAY_ADDR) must listen on
#     0.0.0.0 on the `grpc`
#     port, as CONCORD_HEALTH_ADDR on the `health` port; the component label names that target;
#     a service on SQLite (no *_DATABASE_URL) has its database on a volume claim of a single
#     replica (the gateway has no database), and no two services share a database URL source;
#     CONCORD_TLS_CERT/_KEY/_CLIENT_CA come together with CONCORD_AGENCIES and point into
#     volume mounts (and CONCORD_SERVICE_CERT/_KEY too, set where a service run alone on them
#     calls others), and without them (demo PKI) CONCORD_DATA_DIR is on a volume claim of a
#     single replica and CONCORD_DEMO_SERVER_NAMES lists the workload's Services; a demo PKI
#     only where one workload runs alone (each makes its own CA, so services run apart on
#     demo PKIs could not verify each other);
#     Service/PDB/NetworkPolicy selectors select exactly one workload, every workload has a
#     Service, a PDB and a NetworkPolicy, a StatefulSet's serviceName is a headless Service of
#     its own pods, workload selectors do not overlap, volume mounts have volumes, envFrom
#     ConfigMaps exist, the pod security settings hold,
#     terminationGracePeriodSeconds > CONCORD_DRAIN_GRACE + CONCORD_DRAIN_TIMEOUT.
#     Bases are checked as written; overlays on kubectl's rendering, or without kubectl on a
#     built-in approximation of kustomize (resources, patches with kind/name/label targets,
#     replicas, namespace)
#   - Dockerfile: FROM/USER/EXPOSE/ENTRYPOINT, COPY sources exist and survive
#     Dockerfile.dockerignore, EXPOSE covers the Kubernetes grpc and health ports, and the
#     default CMD's services listen on 0.0.0.0 (ENV) on exposed ports
#   - compose.yaml: build context/Dockerfile, volumes, bind-mounted files, ports, listen
#     addresses of every service the command's --target runs (published), profiles
#   - README.md mentions every file in deploy/
# Also run when the tool is on PATH, skipped otherwise:
#   - kubectl kustomize (renders each kustomization; the rendered output gets the same checks)
#   - kubernetes-validate (schema check of the rendered output), hadolint, docker compose config
set -euo pipefail

DEPLOY_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(dirname "$DEPLOY_DIR")"

if ! python3 -c 'import yaml' 2>/dev/null; then
  echo "validate: installing PyYAML" >&2
  python3 -m pip install --quiet pyyaml || {
    echo "FAIL: PyYAML missing and pip could not install it (try: apt-get install python3-yaml)" >&2
    exit 1
  }
fi

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

failures=0
fail() { echo "FAIL: $*" >&2; failures=$((failures + 1)); }
note() { echo "  $*"; }

# --- optional: render every kustomization with kubectl ------------------------------------
mapfile -t KUSTOMIZATIONS < <(cd "$DEPLOY_DIR" && find kubernetes -name kustomization.yaml -printf '%h\n' | sort)
RENDERED=()
if command -v kubectl >/dev/null 2>&1; then
  for dir in "${KUSTOMIZATIONS[@]}"; do
    out="$WORK/$(echo "$dir" | tr '/' '_').yaml"
    if kubectl kustomize "$DEPLOY_DIR/$dir" >"$out" 2>"$out.err"; then
      RENDERED+=("$dir=$out")
      note "kubectl kustomize $dir: ok"
    else
      fail "kubectl kustomize $dir: $(cat "$out.err")"
    fi
  done
else
  note "kubectl not found: skipping kustomize rendering"
fi

# --- the checks --------------------------------------------------------------------------
if ! python3 - "$DEPLOY_DIR" "$REPO_ROOT" "$WORK/count" "${RENDERED[@]}" <<'PY'
import fnmatch
import json
import os
import re
import shlex
import sys

import yaml

deploy, repo, count_file, *rendered = sys.argv[1:]
errors = []
validated = set()


def err(where, msg):
    errors.append(f"{where}: {msg}")


def rel(path):
    return os.path.relpath(path, deploy)


# YAML loader that rejects duplicate keys (PyYAML silently keeps the last one).
class StrictLoader(yaml.SafeLoader):
    pass


def _construct_mapping(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep)


StrictLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_yaml(path):
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.load_all(f, Loader=StrictLoader) if d is not None]


def parse_duration(s):
    m = re.fullmatch(r"\s*(\d+)\s*(ms|s|m)?\s*", str(s))
    if not m:
        return None
    n, unit = int(m.group(1)), m.group(2) or "s"
    return n / 1000 if unit == "ms" else n * 60 if unit == "m" else n


# ---- 1. every YAML file parses ----------------------------------------------------------
docs_by_file = {}
for root, dirs, files in os.walk(deploy):
    dirs[:] = [d for d in dirs if not d.startswith(".")]
    for name in sorted(files):
        if name.endswith((".yaml", ".yml")):
            path = os.path.join(root, name)
            try:
                docs_by_file[path] = load_yaml(path)
                validated.add(path)
            except yaml.YAMLError as e:
                err(rel(path), f"YAML does not parse: {e}")
            else:
                if not docs_by_file[path]:
                    err(rel(path), "empty YAML file")

WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet"}
NAMESPACED_EXEMPT = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume",
                     "StorageClass", "CustomResourceDefinition", "PriorityClass"}
JSON_PATCH_OPS = {"add", "remove", "replace", "move", "copy", "test"}

# The services of `concord serve`: the variable each listens on, its database URL variable, and
# the SQLite file it uses under CONCORD_DATA_DIR when that is unset (None for both: no
# database). `--target` picks one, or `all` (the default) runs every one in one process. Add a
# line here when a service lands.
SERVICES = {
    "registry": {"addr": "CONCORD_REGISTRY_ADDR", "db": "CONCORD_REGISTRY_DATABASE_URL",
                 "sqlite": "registry.db"},
    "facilities": {"addr": "CONCORD_FACILITIES_ADDR", "db": "CONCORD_FACILITIES_DATABASE_URL",
                   "sqlite": "facilities.db"},
    "requests": {"addr": "CONCORD_REQUESTS_ADDR", "db": "CONCORD_REQUESTS_DATABASE_URL",
                 "sqlite": "requests.db"},
    # The partners' address: no database of its own (it calls the services above).
    "gateway": {"addr": "CONCORD_GATEWAY_ADDR", "db": None, "sqlite": None},
}
TARGETS = {"all": list(SERVICES), **{name: [name] for name in SERVICES}}
# The binary's default, used when CONCORD_DEMO_SERVER_NAMES is unset.
DEFAULT_DEMO_NAMES = "localhost,127.0.0.1,concord,concord-registry,concord-gateway"


def serve_target(where, args, env):
    """The target of a `concord serve ...` command line (the words after the `concord`
    entrypoint): --target, else CONCORD_TARGET, else `all`. None (and an error) if it is not a
    serve command or names an unknown target."""
    if not args or args[0] != "serve":
        err(where, f"runs {args!r}, not `serve`")
        return None
    target = env.get("CONCORD_TARGET") or "all"
    for i, a in enumerate(args):
        if a == "--target" and i + 1 < len(args):
            target = args[i + 1]
        elif a.startswith("--target="):
            target = a.split("=", 1)[1]
    if target not in TARGETS:
        err(where, f"--target {target!r} is not one of {sorted(TARGETS)}")
        return None
    return target


def split_addr(addr):
    host, _, port = str(addr).rpartition(":")
    return host, port


# ---- 2. manifest shape ---------------------------------------------------------------------
def check_manifest(where, doc):
    if isinstance(doc, list):  # JSON 6902 patch
        for i, op in enumerate(doc):
            if not isinstance(op, dict) or op.get("op") not in JSON_PATCH_OPS:
                err(where, f"JSON patch op #{i} has no valid 'op'")
            elif not str(op.get("path", "")).startswith("/"):
                err(where, f"JSON patch op #{i} path must start with '/'")
            elif op["op"] in {"add", "replace", "test"} and "value" not in op:
                err(where, f"JSON patch op #{i} ({op['op']}) needs a value")
        return
    if not isinstance(doc, dict):
        err(where, "manifest is not a mapping")
        return
    for key in ("apiVersion", "kind"):
        if not doc.get(key):
            err(where, f"missing {key}")
    if doc.get("kind") == "Kustomization":
        return
    if not (doc.get("metadata") or {}).get("name"):
        err(where, f"{doc.get('kind', '?')} has no metadata.name")


def walk(node):
    yield node
    children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else []
    for child in children:
        yield from walk(child)


k8s_dir = os.path.join(deploy, "kubernetes")
for path, docs in docs_by_file.items():
    if path.startswith(k8s_dir + os.sep):
        for i, doc in enumerate(docs):
            check_manifest(f"{rel(path)}[{i}]", doc)
            # Secret/ConfigMap key references, also inside patches that are only merged later.
            for node in walk(doc):
                if isinstance(node, dict):
                    for ref_kind in ("secretKeyRef", "configMapKeyRef"):
                        ref = node.get(ref_kind)
                        if isinstance(ref, dict) and not (ref.get("name") and ref.get("key")):
                            err(f"{rel(path)}[{i}]", f"{ref_kind} needs both name and key")


# ---- 3. kustomizations: referenced files exist --------------------------------------------
def kustomization_files(kdir, kust):
    """Yield (kind, path) of everything the kustomization references."""
    for r in kust.get("resources") or []:
        yield "resource", os.path.normpath(os.path.join(kdir, r))
    for p in kust.get("patchesStrategicMerge") or []:
        yield "patch", os.path.normpath(os.path.join(kdir, p))
    for p in kust.get("patches") or []:
        if isinstance(p, dict) and "path" in p:
            yield "patch", os.path.normpath(os.path.join(kdir, p["path"]))
    for p in kust.get("patchesJson6902") or []:
        if "path" in p:
            yield "patch", os.path.normpath(os.path.join(kdir, p["path"]))
    for gen in (kust.get("configMapGenerator") or []) + (kust.get("secretGenerator") or []):
        for f in (gen.get("files") or []) + (gen.get("envs") or []):
            f = f.split("=", 1)[-1]
            yield "generator file", os.path.normpath(os.path.join(kdir, f))


kustomizations = {}
for path, docs in docs_by_file.items():
    if os.path.basename(path) != "kustomization.yaml":
        continue
    kdir = os.path.dirname(path)
    kust = docs[0] if docs else {}
    kustomizations[kdir] = kust
    if kust.get("kind") != "Kustomization":
        err(rel(path), "kind must be Kustomization")
    if kust.get("patchesStrategicMerge") or kust.get("patchesJson6902"):
        err(rel(path), "deprecated patchesStrategicMerge/patchesJson6902: use patches")
    for what, ref in kustomization_files(kdir, kust):
        if os.path.isdir(ref):
            if what != "resource" or not os.path.isfile(os.path.join(ref, "kustomization.yaml")):
                err(rel(path), f"{what} {rel(ref)} is a folder without kustomization.yaml")
        elif not os.path.isfile(ref):
            err(rel(path), f"{what} {rel(ref)} does not exist")
        elif what == "resource" and ref not in docs_by_file:
            err(rel(path), f"resource {rel(ref)} is not a parsed YAML file")
    # every YAML file in the folder should be used, or it is dead weight / a forgotten entry
    used = {ref for _, ref in kustomization_files(kdir, kust)}
    for name in os.listdir(kdir):
        f = os.path.join(kdir, name)
        if name.endswith((".yaml", ".yml")) and name != "kustomization.yaml" and f not in used:
            err(rel(f), "not referenced by its kustomization.yaml")


# ---- 4. cross-object checks on a set of manifests ------------------------------------------
def selects(selector, labels):
    ml = (selector or {}).get("matchLabels", selector or {})
    return bool(ml) and all(labels.get(k) == v for k, v in ml.items())


def check_set(where, objs, namespace=None):
    """objs: manifests of one kustomization (base files, or the kubectl-rendered output);
    namespace: the kustomization's, for objects that do not carry one yet."""
    by_kind = {}
    for o in objs:
        if isinstance(o, dict):
            by_kind.setdefault(o.get("kind"), []).append(o)
    configmaps = {o["metadata"]["name"]: o.get("data") or {} for o in by_kind.get("ConfigMap", [])}
    workloads = [o for k in WORKLOAD_KINDS for o in by_kind.get(k, [])]
    if not workloads:
        err(where, "no workload (Deployment/StatefulSet) found")
    pods = []  # (name, template labels, pod spec, all container ports)
    for w in workloads:
        wname = f"{w['kind']}/{w['metadata']['name']}"
        spec = w.get("spec") or {}
        tmpl = spec.get("template") or {}
        labels = (tmpl.get("metadata") or {}).get("labels") or {}
        pod = tmpl.get("spec") or {}
        if not selects(spec.get("selector"), labels):
            err(where, f"{wname}: selector does not match its pod template labels")
        # Workload selectors must not reach into another workload's pods (two controllers
        # would fight over them, and selectors cannot be changed later).
        for other in workloads:
            if other is not w and selects(spec.get("selector"),
                                          ((other.get("spec") or {}).get("template") or {})
                                          .get("metadata", {}).get("labels") or {}):
                err(where, f"{wname}: selector also matches the pods of "
                           f"{other['kind']}/{other['metadata']['name']}")
        # pod-level security
        psc = pod.get("securityContext") or {}
        if psc.get("runAsNonRoot") is not True:
            err(where, f"{wname}: pod securityContext.runAsNonRoot must be true")
        if (psc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
            err(where, f"{wname}: pod seccompProfile must be RuntimeDefault")
        # shutdown budget vs. drain settings
        env_cfg = {}
        for c in pod.get("containers") or []:
            for ef in c.get("envFrom") or []:
                ref = (ef.get("configMapRef") or {}).get("name")
                if ref is not None:
                    if ref not in configmaps:
                        err(where, f"{wname}: envFrom ConfigMap {ref!r} not found")
                    env_cfg.update(configmaps.get(ref, {}))
        grace = parse_duration(env_cfg.get("CONCORD_DRAIN_GRACE", "5s"))
        drain = parse_duration(env_cfg.get("CONCORD_DRAIN_TIMEOUT", "30s"))
        if grace is None or drain is None:
            err(where, f"{wname}: CONCORD_DRAIN_GRACE/TIMEOUT are not durations like 5s")
        else:
            tgps = pod.get("terminationGracePeriodSeconds", 30)
            if not tgps > grace + drain:
                err(where, f"{wname}: terminationGracePeriodSeconds {tgps} must exceed "
                           f"drain grace + timeout ({grace:g}s + {drain:g}s)")
        volumes = {v["name"] for v in pod.get("volumes") or []}
        claims = {t["metadata"]["name"] for t in spec.get("volumeClaimTemplates") or []}
        volumes |= claims
        all_ports = []
        info = {"demo_names": None, "served": []}  # what the cross-object checks need
        for c in pod.get("containers") or []:
            cname = f"{wname} container {c.get('name')}"
            if not c.get("image"):
                err(where, f"{cname}: no image")
            ports = c.get("ports") or []
            all_ports += ports
            by_name = {p.get("name"): p["containerPort"] for p in ports if "containerPort" in p}
            grpc_port = by_name.get("grpc")
            if grpc_port is None:
                err(where, f"{cname}: no container port named 'grpc'")
            # gRPC (50051) is mutual TLS only; the kubelet's gRPC probes cannot speak TLS, so
            # they go to the plaintext health-only port (CONCORD_HEALTH_ADDR).
            health_port = by_name.get("health")
            if health_port is None:
                err(where, f"{cname}: no container port named 'health' (plaintext health for probes)")
            elif health_port == grpc_port:
                err(where, f"{cname}: the health port must differ from the grpc port")
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                pr = c.get(probe)
                if not pr:
                    err(where, f"{cname}: no {probe}")
                    continue
                if "grpc" not in pr:
                    err(where, f"{cname}: {probe} is not a native gRPC probe")
                    continue
                port = pr["grpc"].get("port")
                if not isinstance(port, int):
                    err(where, f"{cname}: {probe}.grpc.port must be a number (got {port!r})")
                elif health_port is not None and port != health_port:
                    what = "the TLS grpc port" if port == grpc_port else "not the health port"
                    err(where, f"{cname}: {probe}.grpc.port {port} is {what}; "
                               f"probes must use the health port {health_port}")
            # What the binary will see: the envFrom ConfigMaps, then literal env values.
            env = dict(env_cfg)
            env.update({e["name"]: e["value"] for e in c.get("env") or [] if "value" in e})
            # Variables set from a Secret or elsewhere: present, value unknown here.
            env_from_ref = {e["name"]: e["valueFrom"] for e in c.get("env") or [] if "valueFrom" in e}
            # Which service(s) the container runs: `serve --target T` (the image's default
            # command, `serve --data-dir /data`, runs them all).
            target = serve_target(f"{where}: {cname}", c.get("args") or ["serve", "--data-dir", "/data"], env)
            served = TARGETS.get(target, [])
            info["served"] += served
            component = labels.get("app.kubernetes.io/component")
            if target not in (None, "all") and component and component != target:
                err(where, f"{cname}: runs --target {target} but its pods are labelled "
                           f"app.kubernetes.io/component={component}")
            # Each service it runs listens on its own *_ADDR; with one service that is the
            # `grpc` port, with several (target all) each must be a container port.
            numbers = {p["containerPort"] for p in ports if "containerPort" in p}
            listen = [(SERVICES[svc]["addr"], grpc_port if len(served) == 1 else None, "grpc")
                      for svc in served]
            listen.append(("CONCORD_HEALTH_ADDR", health_port, "health"))
            for var, want, label in listen:
                addr = str(env.get(var) or "")
                if not addr:
                    if want is not None or label == "grpc":
                        err(where, f"{cname}: {var} is not set (the binary would listen on "
                                   f"127.0.0.1 only, or not at all)")
                    continue
                host, port = split_addr(addr)
                if want is not None and port != str(want):
                    err(where, f"{cname}: {var} {addr} is not on the {label} port {want}")
                elif want is None and label == "grpc" and not (port.isdigit() and int(port) in numbers):
                    err(where, f"{cname}: {var} {addr} is not on a container port")
                if host not in ("0.0.0.0", "[::]"):
                    err(where, f"{cname}: {var} {addr} must listen on all interfaces (0.0.0.0)")
            mounts = [str(vm.get("mountPath", "")).rstrip("/") for vm in c.get("volumeMounts") or []]

            def on_claim(path):
                return any(vm.get("name") in claims and
                           (path.rstrip("/") + "/").startswith(str(vm.get("mountPath", "")).rstrip("/") + "/")
                           for vm in c.get("volumeMounts") or [])

            data_dir = str(env.get("CONCORD_DATA_DIR") or "./data").rstrip("/")
            replicas = spec.get("replicas", 1)
            # Databases: a service without a database URL (or with a sqlite:// one) runs on a
            # SQLite file, which must outlive the pod (a volume claim) and have one writer (one
            # replica). With PostgreSQL the pods are stateless.
            for svc in served:
                dbvar = SERVICES[svc]["db"]
                if dbvar is None:  # no database (the gateway)
                    continue
                if dbvar in env_from_ref:
                    src = env_from_ref[dbvar]
                    ref = src.get("secretKeyRef") or src.get("configMapKeyRef") or {}
                    info.setdefault("db_sources", []).append(
                        (svc, ("secretKeyRef" in src, ref.get("name"), ref.get("key"))))
                    continue
                url = str(env.get(dbvar) or "")
                if url and not url.startswith("sqlite:"):
                    info.setdefault("db_sources", []).append((svc, ("value", url)))
                    continue
                db_path = (re.sub(r"^sqlite:(//)?", "", url).split("?")[0]
                           if url else f"{data_dir}/{SERVICES[svc]['sqlite']}")
                if url:
                    info.setdefault("db_sources", []).append((svc, ("value", db_path)))
                what = f"{svc} runs on SQLite ({db_path}; {dbvar} " + ("is sqlite)" if url else "unset)")
                if replicas > 1:
                    err(where, f"{cname}: {what} with {replicas} replicas: each would have its "
                               "own, diverging database (set a PostgreSQL URL or 1 replica)")
                if not db_path.startswith("/") or not on_claim(db_path):
                    err(where, f"{cname}: {what}, not on a persistent volume claim: the data "
                               "would be lost with the pod")
            tls = [v for v in ("CONCORD_TLS_CERT", "CONCORD_TLS_KEY", "CONCORD_TLS_CLIENT_CA") if env.get(v)]
            if tls and len(tls) < 3:
                err(where, f"{cname}: CONCORD_TLS_CERT, _KEY and _CLIENT_CA go together (only {tls} set)")
            if tls and not env.get("CONCORD_AGENCIES"):
                err(where, f"{cname}: CONCORD_TLS_* needs CONCORD_AGENCIES (the agency directory)")
            # A service that calls another, run alone on real certificates, presents its own
            # client certificate; without one the binary looks for the demo PKI's, which
            # is not there.
            callers = [svc for svc in served if svc in ("facilities", "requests", "gateway")]
            if tls and callers and len(served) == 1 and not (
                    env.get("CONCORD_SERVICE_CERT") and env.get("CONCORD_SERVICE_KEY")):
                err(where, f"{cname}: {callers[0]} on CONCORD_TLS_* calls other services but "
                           "sets no CONCORD_SERVICE_CERT / CONCORD_SERVICE_KEY (its client "
                           "certificate)")
            for var in ("CONCORD_TLS_CERT", "CONCORD_TLS_KEY", "CONCORD_TLS_CLIENT_CA",
                        "CONCORD_AGENCIES", "CONCORD_POLICY", "CONCORD_SERVICE_CERT",
                        "CONCORD_SERVICE_KEY"):
                path = str(env.get(var) or "")
                if path.startswith("/") and not any(path.startswith(m + "/") for m in mounts):
                    err(where, f"{cname}: {var} {path} is not on a mounted volume")
            if not tls:
                # Demo PKI: created under <data dir>/pki on first start. It must outlive the pod
                # (a persistent volume claim) and be one per deployment (one replica). Each
                # workload makes its own (its own demo CA), so it only serves a workload that
                # runs alone (checked below).
                info["demo_names"] = {n.strip() for n in
                                      str(env.get("CONCORD_DEMO_SERVER_NAMES") or DEFAULT_DEMO_NAMES).split(",")}
                if not on_claim(data_dir + "/pki"):
                    err(where, f"{cname}: no CONCORD_TLS_* set, so the demo PKI goes to "
                               f"{data_dir}/pki, which is not on a persistent volume claim; "
                               "mount real certificates")
                elif spec.get("replicas", 1) > 1:
                    err(where, f"{cname}: no CONCORD_TLS_* set with {spec['replicas']} replicas: "
                               "each would create its own demo CA; mount real certificates")
            res = c.get("resources") or {}
            for part in ("requests", "limits"):
                for r in ("cpu", "memory"):
                    if r not in (res.get(part) or {}):
                        err(where, f"{cname}: resources.{part}.{r} missing")
            sc = c.get("securityContext") or {}
            if sc.get("readOnlyRootFilesystem") is not True:
                err(where, f"{cname}: readOnlyRootFilesystem must be true")
            if sc.get("allowPrivilegeEscalation") is not False:
                err(where, f"{cname}: allowPrivilegeEscalation must be false")
            if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
                err(where, f"{cname}: capabilities must drop ALL")
            for vm in c.get("volumeMounts") or []:
                if vm["name"] not in volumes:
                    err(where, f"{cname}: volumeMount {vm['name']!r} has no volume")
            for e in c.get("env") or []:
                ref = (e.get("valueFrom") or {}).get("secretKeyRef")
                if ref is not None and not (ref.get("name") and ref.get("key")):
                    err(where, f"{cname}: secretKeyRef for {e.get('name')} needs name and key")
        pods.append((wname, labels, pod, all_ports, info))

    def matching_pods(kind_name, selector):
        found = [p for p in pods if selects(selector, p[1])]
        if not found:
            err(where, f"{kind_name}: selector matches no workload")
        elif len(found) > 1:
            err(where, f"{kind_name}: selector matches several workloads "
                       f"({', '.join(p[0] for p in found)}): one per service")
        return found

    # Services run apart (one workload each) call each other over mutual TLS, which verifies
    # only with one CA: a demo PKI is made per workload, each with its own CA.
    demo = [w for w, _, _, _, info in pods if info.get("demo_names") is not None]
    if demo and len(pods) > 1:
        err(where, f"{', '.join(demo)}: on a demo PKI of its own while {len(pods)} workloads "
                   "run apart: each would have its own CA and could not call the others; mount "
                   "one set of certificates (Secret concord-tls) in every workload")

    # Each service owns its database: no two services read their URL from the same place.
    owners = {}
    for wname, _, _, _, info in pods:
        for svc, source in info.get("db_sources", []):
            owners.setdefault(source, set()).add(svc)
    for source, svcs in owners.items():
        if len(svcs) > 1:
            err(where, f"services {sorted(svcs)} share one database ({source[1]}"
                       f"{' key ' + str(source[2]) if len(source) > 2 else ''}): each owns its own")

    covered = {kind: set() for kind in ("Service", "PodDisruptionBudget", "NetworkPolicy")}

    for s in by_kind.get("Service", []):
        sname = f"Service/{s['metadata']['name']}"
        spec = s.get("spec") or {}
        if spec.get("type", "ClusterIP") != "ClusterIP":
            err(where, f"{sname}: type must be ClusterIP")
        for wname, _, _, ports, info in matching_pods(sname, spec.get("selector")):
            covered["Service"].add(wname)
            # Demo PKI: the server certificate must name this Service, or clients dialling it
            # fail verification (CONCORD_DEMO_SERVER_NAMES is read once, at PKI creation).
            ns = s["metadata"].get("namespace") or namespace
            if info["demo_names"] is not None:
                svc_name = s["metadata"]["name"]
                dns = f"{svc_name}.{ns}.svc" if ns else svc_name
                if dns not in info["demo_names"]:
                    err(where, f"{wname}: demo PKI without {dns} in CONCORD_DEMO_SERVER_NAMES, "
                               f"so clients of {sname} cannot verify the server certificate")
            names = {p.get("name") for p in ports}
            numbers = {p.get("containerPort") for p in ports}
            for sp in spec.get("ports") or []:
                tp = sp.get("targetPort", sp.get("port"))
                if (isinstance(tp, int) and tp not in numbers) or (isinstance(tp, str) and tp not in names):
                    err(where, f"{sname}: targetPort {tp!r} is not a container port of {wname}")
                if sp.get("name") != "grpc" or sp.get("appProtocol") != "grpc":
                    err(where, f"{sname}: port must be named grpc with appProtocol grpc")
    for pdb in by_kind.get("PodDisruptionBudget", []):
        for p in matching_pods(f"PodDisruptionBudget/{pdb['metadata']['name']}", pdb["spec"].get("selector")):
            covered["PodDisruptionBudget"].add(p[0])
    for np in by_kind.get("NetworkPolicy", []):
        npname = f"NetworkPolicy/{np['metadata']['name']}"
        for wname, _, _, ports, _ in matching_pods(npname, np["spec"].get("podSelector")):
            covered["NetworkPolicy"].add(wname)
            numbers = {p.get("containerPort") for p in ports}
            for rule in np["spec"].get("ingress") or []:
                for p in rule.get("ports") or []:
                    if p.get("port") not in numbers:
                        err(where, f"{npname}: port {p.get('port')} is not a container port of {wname}")
    if not by_kind.get("Service"):
        err(where, "no Service")
    # Same pattern for every service: each workload has its Service, PDB and NetworkPolicy.
    for wname, *_ in pods:
        for kind, seen in covered.items():
            if wname not in seen:
                err(where, f"{wname}: no {kind} selects its pods")
    # A StatefulSet's governing Service: headless, and selecting that StatefulSet's pods.
    services = {s["metadata"]["name"]: s for s in by_kind.get("Service", [])}
    for w in by_kind.get("StatefulSet", []):
        wname = f"StatefulSet/{w['metadata']['name']}"
        gov = services.get((w.get("spec") or {}).get("serviceName"))
        labels = ((w.get("spec") or {}).get("template") or {}).get("metadata", {}).get("labels") or {}
        if gov is None:
            err(where, f"{wname}: serviceName {w['spec'].get('serviceName')!r} is not a Service here")
        elif gov["spec"].get("clusterIP") != "None" or not selects(gov["spec"].get("selector"), labels):
            err(where, f"{wname}: serviceName {gov['metadata']['name']} must be a headless Service "
                       "selecting its pods")
    return by_kind


# ---- 4b. overlays without kubectl: a small stand-in for `kustomize build` --------------------
# Enough for this repository's overlays: resources (files and folders), strategic-merge patches
# (lists merged by their Kubernetes merge keys), JSON 6902 patches, replicas and namespace. Only
# used for kustomizations that kubectl did not render, so the real renderer wins when present.
import copy

MERGE_KEYS = {"containers": "name", "initContainers": "name", "volumes": "name", "env": "name",
              "volumeMounts": "mountPath", "ports": "containerPort", "imagePullSecrets": "name"}


def strategic_merge(base, patch):
    if not (isinstance(base, dict) and isinstance(patch, dict)):
        return copy.deepcopy(patch)
    out = copy.deepcopy(base)
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        elif k in MERGE_KEYS and isinstance(v, list) and isinstance(out.get(k), list):
            key = MERGE_KEYS[k]
            merged = out[k]
            for item in v:
                i = next((i for i, b in enumerate(merged)
                          if isinstance(item, dict) and isinstance(b, dict) and b.get(key) == item.get(key)), None)
                if i is None:
                    merged.append(copy.deepcopy(item))
                else:
                    merged[i] = strategic_merge(merged[i], item)
        elif k in out:
            out[k] = strategic_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def json_patch(doc, ops, where):
    doc = copy.deepcopy(doc)
    for op in ops:
        parts = [p.replace("~1", "/").replace("~0", "~") for p in str(op.get("path", "")).split("/")[1:]]
        try:
            parent = doc
            for p in parts[:-1]:
                parent = parent[int(p)] if isinstance(parent, list) else parent[p]
            last = parts[-1]
            if isinstance(parent, list):
                last = len(parent) if last == "-" else int(last)
            if op["op"] == "remove":
                del parent[last]
            elif op["op"] in ("add", "replace"):
                if isinstance(parent, list) and op["op"] == "add":
                    parent.insert(last, copy.deepcopy(op["value"]))
                else:
                    if op["op"] == "replace":
                        parent[last]  # must exist
                    parent[last] = copy.deepcopy(op["value"])
        except (KeyError, IndexError, ValueError, TypeError):
            err(where, f"JSON patch {op.get('op')} {op.get('path')}: path not found")
    return doc


def label_selector_matches(selector, labels, where):
    """Equality-based label selectors (`a=b,c!=d,e`), the kind used in patch targets here."""
    for term in filter(None, (t.strip() for t in str(selector).split(","))):
        m = re.fullmatch(r"([\w./-]+)\s*(==|=|!=)\s*([\w.-]*)", term)
        if m:
            key, op, value = m.groups()
            if (labels.get(key) == value) != (op != "!="):
                return False
        elif re.fullmatch(r"[\w./-]+", term):
            if term not in labels:
                return False
        else:
            err(where, f"labelSelector term {term!r} is not supported by the built-in approximation")
            return False
    return True


def target_matches(target, o, where):
    meta = o.get("metadata") or {}
    group, _, version = str(o.get("apiVersion", "")).rpartition("/")
    if target.get("group") is not None and target["group"] != group:
        return False
    if target.get("version") and target["version"] != version:
        return False
    if target.get("kind") and target["kind"] != o.get("kind"):
        return False
    for field in ("name", "namespace"):
        if target.get(field) and not re.fullmatch(target[field], str(meta.get(field) or "")):
            return False
    if target.get("labelSelector") and not label_selector_matches(
            target["labelSelector"], meta.get("labels") or {}, where):
        return False
    if target.get("annotationSelector") and not label_selector_matches(
            target["annotationSelector"], meta.get("annotations") or {}, where):
        return False
    return True


def build(kdir, seen=()):
    """The manifests a kustomization renders to, approximately."""
    kust = kustomizations.get(kdir) or {}
    where = rel(os.path.join(kdir, "kustomization.yaml"))
    if kdir in seen:
        err(where, "resources form a cycle")
        return []
    objs = []
    for r in kust.get("resources") or []:
        ref = os.path.normpath(os.path.join(kdir, r))
        objs += build(ref, seen + (kdir,)) if os.path.isdir(ref) else copy.deepcopy(docs_by_file.get(ref, []))
    for p in kust.get("patches") or []:
        if not isinstance(p, dict):
            continue
        if "path" in p:
            pdocs = docs_by_file.get(os.path.normpath(os.path.join(kdir, p["path"])), [])
        else:
            pdocs = [d for d in yaml.safe_load_all(p.get("patch") or "") if d is not None]
        target = p.get("target") or {}
        for pd in pdocs:
            hit = False
            for i, o in enumerate(objs):
                if not isinstance(o, dict):
                    continue
                if target:
                    # kustomize: every field of the target must match; name and namespace are
                    # anchored regular expressions, labelSelector a label selector.
                    if not target_matches(target, o, where):
                        continue
                elif isinstance(pd, dict) and (o.get("kind") != pd.get("kind") or
                                               o["metadata"].get("name") != (pd.get("metadata") or {}).get("name")):
                    continue
                hit = True
                if isinstance(pd, list):
                    objs[i] = json_patch(o, pd, where)
                else:
                    # A targeted patch keeps each target's name (its own is only a placeholder).
                    objs[i] = strategic_merge(o, pd)
                    objs[i]["metadata"]["name"] = o["metadata"]["name"]
            if not hit:
                err(where, f"patch {p.get('path', '(inline)')} matches no resource")
    for r in kust.get("replicas") or []:
        for o in objs:
            if isinstance(o, dict) and o.get("kind") in WORKLOAD_KINDS and o["metadata"].get("name") == r.get("name"):
                o.setdefault("spec", {})["replicas"] = r.get("count")
    if kust.get("namespace"):
        for o in objs:
            if isinstance(o, dict) and o.get("kind") not in NAMESPACED_EXEMPT:
                o.setdefault("metadata", {})["namespace"] = kust["namespace"]
    return objs


rendered_dirs = {item.split("=", 1)[0] for item in rendered}
base_ports = set()  # container ports named grpc or health in the bases: the image must EXPOSE them
for kdir, kust in sorted(kustomizations.items()):
    refs = [r for k, r in kustomization_files(kdir, kust) if k == "resource"]
    if all(os.path.isfile(r) for r in refs):  # a base: its files are the whole set
        objs = [d for r in refs for d in docs_by_file.get(r, [])]
        by_kind = check_set(rel(kdir), objs, kust.get("namespace"))
        for w in (o for k in WORKLOAD_KINDS for o in by_kind.get(k, [])):
            for c in w["spec"]["template"]["spec"].get("containers") or []:
                base_ports |= {p["containerPort"] for p in c.get("ports") or []
                               if p.get("name") in ("grpc", "health")}
    elif rel(kdir) not in rendered_dirs:
        print(f"  {rel(kdir)}: not rendered by kubectl, checking a built-in approximation of it")
        check_set(f"built {rel(kdir)}", build(kdir))

for item in rendered:
    kdir, out = item.split("=", 1)
    try:
        objs = load_yaml(out)
    except yaml.YAMLError as e:
        err(f"rendered {kdir}", f"does not parse: {e}")
        continue
    for i, o in enumerate(objs):
        check_manifest(f"rendered {kdir}[{i}]", o)
        if o.get("kind") not in NAMESPACED_EXEMPT and not o.get("metadata", {}).get("namespace"):
            err(f"rendered {kdir}", f"{o.get('kind')}/{o['metadata'].get('name')} has no namespace")
    check_set(f"rendered {kdir}", objs)


# ---- 5. Dockerfile and its .dockerignore ----------------------------------------------------
def dockerfile_instructions(path):
    out, buf = [], ""
    with open(path, encoding="utf-8") as f:
        for raw in f:
            line = raw.rstrip("\n")
            if not buf and (not line.strip() or line.lstrip().startswith("#")):
                continue
            if buf and line.lstrip().startswith("#"):
                continue  # comment inside a continuation
            if line.endswith("\\"):
                buf += line[:-1] + " "
                continue
            buf += line
            instr, _, rest = buf.strip().partition(" ")
            out.append((instr.upper(), rest.strip()))
            buf = ""
    return out


def ignore_regex(pattern):
    """A .dockerignore pattern as a regex: * and ? stay within a folder, ** spans folders."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def dockerignore_excludes(patterns, path):
    """Docker semantics: the last pattern matching the path or one of its parents wins."""
    parts = path.strip("/").split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for pat in patterns:
        neg = pat.startswith("!")
        rx = ignore_regex((pat[1:] if neg else pat).strip().strip("/"))
        if any(rx.match(c) for c in candidates):
            excluded = not neg
    return excluded


dockerfile = os.path.join(deploy, "Dockerfile")
ignore_file = dockerfile + ".dockerignore"
expose = set()
image_env = {}       # the final stage's ENV
image_cmd = ["serve", "--data-dir", "/data"]
if not os.path.isfile(dockerfile):
    err("Dockerfile", "missing")
else:
    validated.add(dockerfile)
    ins = dockerfile_instructions(dockerfile)
    kinds = [i for i, _ in ins]
    froms = [a for i, a in ins if i == "FROM"]
    stages = [re.split(r"\s+as\s+", a, flags=re.I)[1].strip() for a in froms if re.search(r"\s+as\s+", a, re.I)]
    if len(froms) < 2:
        err("Dockerfile", "expected a multi-stage build (two or more FROM lines)")
    if "ENTRYPOINT" not in kinds:
        err("Dockerfile", "no ENTRYPOINT")
    last_from = max(i for i, k in enumerate(kinds) if k == "FROM") if froms else 0
    final = ins[last_from:]
    users = [a for i, a in final if i == "USER"]
    if not users or users[-1].split(":")[0] in {"root", "0"}:
        err("Dockerfile", "final stage must switch to a non-root USER")
    for i, a in final:
        if i == "ENTRYPOINT":
            try:
                ep = json.loads(a)
            except ValueError:
                err("Dockerfile", "ENTRYPOINT must use the JSON (exec) form so SIGTERM reaches concord")
            else:
                if ep != ["concord"]:
                    err("Dockerfile", f"ENTRYPOINT is {ep}, expected ['concord']")
        if i == "EXPOSE":
            expose |= {int(p.split("/")[0]) for p in a.split()}
        if i == "ENV":
            words = shlex.split(a)
            if words and "=" not in words[0]:  # legacy `ENV KEY value`
                image_env[words[0]] = " ".join(words[1:])
            else:
                image_env.update(w.split("=", 1) for w in words if "=" in w)
        if i == "CMD":
            try:
                image_cmd = json.loads(a)
            except ValueError:
                err("Dockerfile", "CMD must use the JSON (exec) form")
        if i == "VOLUME" and "/data" not in a:
            err("Dockerfile", "VOLUME should be /data")
    if not expose:
        err("Dockerfile", "no EXPOSE")
    if base_ports and not base_ports <= expose:
        err("Dockerfile", f"EXPOSE {sorted(expose)} misses Kubernetes container port(s) "
                          f"{sorted(base_ports - expose)} (grpc and health)")
    # `docker run` with the default CMD: every service it runs must listen on all interfaces
    # (the binary defaults to 127.0.0.1) on an exposed port.
    for svc in TARGETS.get(serve_target("Dockerfile CMD", image_cmd, image_env), []):
        var = SERVICES[svc]["addr"]
        host, port = split_addr(image_env.get(var, ""))
        if host not in ("0.0.0.0", "[::]"):
            err("Dockerfile", f"the default CMD runs {svc}, but ENV does not set {var} to 0.0.0.0:PORT")
        elif not (port.isdigit() and int(port) in expose):
            err("Dockerfile", f"{var}={image_env[var]}: port {port} is not EXPOSEd")
    ignore = []
    if os.path.isfile(ignore_file):
        validated.add(ignore_file)
        with open(ignore_file, encoding="utf-8") as f:
            ignore = [l.strip() for l in f if l.strip() and not l.lstrip().startswith("#")]
    else:
        err("Dockerfile.dockerignore", "missing: target/ and .git would be sent to the builder")
    for i, a in ins:
        if i not in ("COPY", "ADD"):
            continue
        words = shlex.split(a)
        flags = [w for w in words if w.startswith("--")]
        args = [w for w in words if not w.startswith("--")]
        src_from = [f.split("=", 1)[1] for f in flags if f.startswith("--from=")]
        if src_from:
            if src_from[0] not in stages:
                err("Dockerfile", f"COPY --from={src_from[0]} names no earlier stage")
            continue
        for src in args[:-1]:
            if not os.path.exists(os.path.join(repo, src)):
                err("Dockerfile", f"COPY source {src} does not exist at the repository root")
            elif dockerignore_excludes(ignore, src):
                err("Dockerfile", f"COPY source {src} is excluded by Dockerfile.dockerignore")
    for must_skip in ("target", ".git"):
        if not dockerignore_excludes(ignore, must_skip):
            err("Dockerfile.dockerignore", f"{must_skip} is not excluded from the build context")

# ---- 6. compose.yaml ---------------------------------------------------------------------------
compose = os.path.join(deploy, "compose.yaml")
if compose not in docs_by_file:
    err("compose.yaml", "missing or unparsable")
else:
    c = docs_by_file[compose][0]
    services = c.get("services") or {}
    declared_volumes = set((c.get("volumes") or {}).keys())
    if "concord" not in services:
        err("compose.yaml", "no 'concord' service")
    for name, svc in services.items():
        where = f"compose.yaml service {name}"
        if not (svc.get("image") or svc.get("build")):
            err(where, "needs image or build")
        b = svc.get("build")
        if isinstance(b, dict):
            ctx = os.path.normpath(os.path.join(deploy, b.get("context", ".")))
            if not os.path.isdir(ctx):
                err(where, f"build context {b.get('context')} does not exist")
            elif not os.path.isfile(os.path.join(ctx, b.get("dockerfile", "Dockerfile"))):
                err(where, f"dockerfile {b.get('dockerfile')} not found in the build context")
        for v in svc.get("volumes") or []:
            src = v.split(":")[0] if isinstance(v, str) else v.get("source", "")
            if src.startswith((".", "/")):
                if not os.path.exists(os.path.normpath(os.path.join(deploy, src))):
                    err(where, f"bind-mounted {src} does not exist")
            elif src and src not in declared_volumes:
                err(where, f"named volume {src} is not declared under top-level volumes")
        for p in svc.get("ports") or []:
            target = int(str(p).split(":")[-1].split("/")[0]) if not isinstance(p, dict) else p["target"]
            if name == "concord" and expose and target not in expose:
                err(where, f"port {p} targets {target}, which the Dockerfile does not EXPOSE")
        if name != "concord" and not svc.get("profiles"):
            err(where, "optional services must sit behind a profile")
    concord = services.get("concord") or {}
    env = concord.get("environment") or {}
    if isinstance(env, dict):
        grace = parse_duration(env.get("CONCORD_DRAIN_GRACE", "5s"))
        drain = parse_duration(env.get("CONCORD_DRAIN_TIMEOUT", "30s"))
        stop = parse_duration(concord.get("stop_grace_period", "10s"))
        if None not in (grace, drain, stop) and not stop >= grace + drain:
            err("compose.yaml service concord",
                f"stop_grace_period {stop:g}s is shorter than drain grace + timeout ({grace + drain:g}s)")
        # Every service the command runs (no --target: all of them in one container) listens
        # on 0.0.0.0 and is published; the image's ENV counts when compose does not set one.
        published = set()
        for p in concord.get("ports") or []:
            published.add(int(str(p).split(":")[-1].split("/")[0]) if not isinstance(p, dict) else p["target"])
        command = concord.get("command") or image_cmd
        if isinstance(command, str):
            command = shlex.split(command)
        full_env = {**image_env, **{k: v for k, v in env.items() if v is not None}}
        for svc in TARGETS.get(serve_target("compose.yaml service concord", command, full_env), []):
            var = SERVICES[svc]["addr"]
            addr = str(full_env.get(var) or "")
            host, port = split_addr(addr)
            if host not in ("0.0.0.0", "[::]"):
                err("compose.yaml service concord", f"runs {svc}: {var} must listen on 0.0.0.0 (got {addr!r})")
            elif not (port.isdigit() and int(port) in published):
                err("compose.yaml service concord", f"runs {svc} on {addr}, but port {port} is not published")
        health = str(full_env.get("CONCORD_HEALTH_ADDR") or "")
        if health and not health.startswith("0.0.0.0:"):
            err("compose.yaml service concord", "CONCORD_HEALTH_ADDR must listen on 0.0.0.0")
    for profile in ("postgres", "otel"):
        if not any(profile in (s.get("profiles") or []) for s in services.values()):
            err("compose.yaml", f"no service in profile {profile!r}")

# ---- 7. README mentions every file ----------------------------------------------------------
readme = os.path.join(deploy, "README.md")
if not os.path.isfile(readme):
    err("README.md", "missing")
else:
    validated.add(readme)
    text = open(readme, encoding="utf-8").read()
    for root, dirs, files in os.walk(deploy):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            r = rel(os.path.join(root, name))
            if name != "README.md" and r not in text and name not in text:
                err("README.md", f"does not mention {r}")

validate_sh = os.path.join(deploy, "validate.sh")
if not os.access(validate_sh, os.X_OK):
    err("validate.sh", "not executable (chmod +x)")
validated.add(validate_sh)

for e in errors:
    print(f"FAIL: {e}", file=sys.stderr)
with open(count_file, "w") as f:
    f.write(str(len(validated)))
print(f"  structural checks: {len(errors)} problem(s) in {len(validated)} files")
sys.exit(1 if errors else 0)
PY
then
  failures=$((failures + 1))
fi

# --- optional external validators -----------------------------------------------------------
if command -v kubernetes-validate >/dev/null 2>&1 && ((${#RENDERED[@]})); then
  for item in "${RENDERED[@]}"; do
    if kubernetes-validate --strict --quiet "${item#*=}" >"$WORK/kv.out" 2>&1; then
      note "kubernetes-validate ${item%%=*}: ok"
    else
      fail "kubernetes-validate ${item%%=*}: $(cat "$WORK/kv.out")"
    fi
  done
else
  note "kubernetes-validate not found (or nothing rendered): skipping schema check"
fi

if command -v hadolint >/dev/null 2>&1; then
  if hadolint "$DEPLOY_DIR/Dockerfile" >"$WORK/hadolint.out" 2>&1; then
    note "hadolint Dockerfile: ok"
  else
    fail "hadolint Dockerfile: $(cat "$WORK/hadolint.out")"
  fi
else
  note "hadolint not found: skipping Dockerfile lint"
fi

# `docker compose config` parses and resolves the file without talking to an engine.
if docker compose version >/dev/null 2>&1; then
  if docker compose -f "$DEPLOY_DIR/compose.yaml" config --quiet 2>"$WORK/compose.err"; then
    note "docker compose config: ok"
  else
    fail "docker compose config: $(cat "$WORK/compose.err")"
  fi
else
  note "docker compose not found: skipping compose config check"
fi

if ((failures)); then
  echo "deploy: validation FAILED ($failures failing check group(s))" >&2
  exit 1
fi
echo "deploy: $(cat "$WORK/count") files validated"
