# The Helm chart (deploy/helm/ibrain) on the real test cluster, with helm v4 built from the
# Go module proxy (tools/k8s/build.sh):
#   - helm lint; helm template; every rendered manifest accepted by the API server's
#     server-side dry run;
#   - bad values (negative replicas, an unknown policy, bundled Redis off without an
#     address) refused by values.schema.json with a message naming them;
#   - helm install -> every pod ready (orchestrators, cluster server, ibrain, Redis master
#     and replica, 3 sentinels) -> ibctl (with a token from the release's Secret) creates a
#     workload through the installed orchestrator -> chat requests through the installed
#     ibrain answered by the workload's pods;
#   - the network policies' selectors match the pods they are meant for (this cluster has
#     no policy enforcement: see docs/operations.md);
#   - helm upgrade of ibrain to a new image tag under 60 req/s: 0 failed requests; the JWT
#     secret kept across the upgrade;
#   - helm uninstall (after the workload is deleted): nothing of the release left, of every
#     kind the chart creates.
source "$IB_SRC/tests/lib/proc.sh"
source "$IB_SRC/tests/lib/k8s.sh"
IBCTL="$IB_BUILD/controlplane/ibctl"
HELM=$(ls -d "${IBRAIN_K8S_CACHE:-$HOME/.cache/ibrain/k8s}"/bin/helm-*/helm 2>/dev/null | sort -V | tail -n 1)
[ -x "$HELM" ] || ib_fail "no helm in ~/.cache/ibrain/k8s/bin (tools/k8s/build.sh builds it)"
chart="$IB_SRC/deploy/helm/ibrain"
export HELM_CACHE_HOME="$IB_TMP/helm/cache" HELM_CONFIG_HOME="$IB_TMP/helm/config" HELM_DATA_HOME="$IB_TMP/helm/data"
rel=t1
wns="$ns-work"
k create namespace "$wns" >/dev/null
ib_k8s_before_exit='k delete namespace "$wns" --wait=false >/dev/null 2>&1 || true'

tag=local
[ -n "${IB_SANITIZED:-}" ] && tag=san
k8s_images "$tag" ib-manager ibrain ib-orchestrator ib-clusterd ib-redis
k8s_images "$tag-v2" ibrain
values=(--set "image.tag=$tag" --set image.pullPolicy=Never --set "clusterd.workloadNamespace=$wns"
        --set clusterd.podDrainSeconds=2 --set ibrain.resources.requests.cpu=100m --set ibrain.resources.limits.cpu=1)

# ---- lint, template, server-side dry run ----
"$HELM" lint "$chart" "${values[@]}" >"$IB_TMP/lint.txt" 2>&1 || ib_fail "helm lint: $(cat "$IB_TMP/lint.txt")"
"$HELM" template "$rel" "$chart" --namespace "$ns" "${values[@]}" --set ibrain.autoscaling.enabled=true \
  >"$IB_TMP/rendered.yaml" 2>"$IB_TMP/template.err" || ib_fail "helm template: $(cat "$IB_TMP/template.err")"
kinds=$(awk '/^kind: /{print $2}' "$IB_TMP/rendered.yaml" | sort | uniq -c | awk '{printf "%s %s, ", $1, $2}')
k apply --dry-run=server -f "$IB_TMP/rendered.yaml" >"$IB_TMP/dryrun.txt" 2>&1 ||
  ib_fail "server-side dry run: $(cat "$IB_TMP/dryrun.txt")"
echo "helm lint ok; helm template: ${kinds%, }; all accepted by the API server's dry run"

# ---- bad values: refused by the schema, naming them ----
refuse() { # WHAT ARGS...: helm template must fail and name WHAT
  local what=$1
  shift
  if "$HELM" template "$rel" "$chart" "$@" >/dev/null 2>"$IB_TMP/bad.txt"; then ib_fail "helm accepted $*"; fi
  grep -q -- "$what" "$IB_TMP/bad.txt" || ib_fail "helm's message for $* does not name $what: $(cat "$IB_TMP/bad.txt")"
  echo "refused ($*): $(grep -m1 -- "$what" "$IB_TMP/bad.txt" | sed 's/^ *//' | cut -c1-160)"
}
refuse replicas --set orchestrator.replicas=-1
refuse policy --set ibrain.policy=random
refuse external --set redis.bundled=false

# ---- install ----
t0=$(date +%s%N)
"$HELM" install "$rel" "$chart" -n "$ns" "${values[@]}" --wait --timeout 240s >"$IB_TMP/install.txt" 2>&1 ||
  { k -n "$ns" get pods -o wide; ib_fail "helm install: $(cat "$IB_TMP/install.txt")"; }
echo "helm install: every pod ready in $((($(date +%s%N) - t0) / 1000000)) ms"
k -n "$ns" get pods -o wide
full=$rel-ibrain
svc_ip() { k -n "$ns" get svc "$full-$1" -o jsonpath='{.spec.clusterIP}'; }
orch="$(svc_ip orchestrator):8081"
front="$(svc_ip router):8080"
k -n "$ns" get secret "$full-jwt" -o jsonpath='{.data.secret}' | base64 -d >"$IB_TMP/jwt.secret"
"$IBCTL" token create --secret-file "$IB_TMP/jwt.secret" >"$IB_TMP/token"
export IBCTL_SERVER="http://$orch" IBCTL_TOKEN_FILE="$IB_TMP/token"
wait_until 60 "the orchestrator answering through its Service" '"$IBCTL" workload list >/dev/null 2>&1'

# ---- a workload through the installed stack ----
mkdir -p "$IB_TMP/weights"
chmod 755 "$IB_TMP" "$IB_TMP/weights"
echo weights >"$IB_TMP/weights/model.bin"
chmod 644 "$IB_TMP/weights/model.bin"
"$IBCTL" workload create demo --model demo --weights "$IB_TMP/weights/model.bin" --replicas 2 --wait --timeout 120 \
  >"$IB_TMP/create.txt" 2>&1 || ib_fail "workload create: $(cat "$IB_TMP/create.txt")"
chat() { # prints "STATUS ENGINE-ID"
  curl -s -m 10 -D "$IB_TMP/h.txt" -o "$IB_TMP/chat.json" -w '%{http_code}' "http://$front/v1/chat/completions" \
    -H 'Content-Type: application/json' -d '{"model":"demo","max_tokens":2,"messages":[{"role":"user","content":"'"$1"'"}]}'
  echo " $(awk -F': ' 'tolower($1) == "x-engine-id" {print $2}' "$IB_TMP/h.txt" | tr -d '\r')"
}
wait_until 60 "ibrain routing to the workload" '[[ "$(chat hello)" == "200 ib-demo-"* ]]'
for i in $(seq 1 8); do
  s=$(chat "question $i")
  [[ "$s" == "200 ib-demo-"* ]] || ib_fail "request $i through the installed ibrain: $s $(cat "$IB_TMP/chat.json")"
done
echo "workload demo created through the installed orchestrator; 8 of 8 chats answered by its pods through the installed ibrain"

# ---- the network policies select what they mean to ----
sel() { k -n "$1" get networkpolicy "$2" -o jsonpath="$3"; }
pods_matching() { # NAMESPACE SELECTOR: pod names, sorted, one line
  k -n "$1" get pods -l "$2" -o jsonpath='{.items[*].metadata.name}' | tr ' ' '\n' | sort | tr '\n' ' '
}
policy_selector() { # NAMESPACE POLICY: its podSelector.matchLabels as a -l selector
  k -n "$1" get networkpolicy "$2" -o json | /usr/bin/python3 -c '
import json, sys
print(",".join("%s=%s" % kv for kv in sorted(json.load(sys.stdin)["spec"]["podSelector"]["matchLabels"].items())))'
}
ib_expect_eq "clusterd policy selects the cluster server's pods" \
  "$(pods_matching "$ns" "$(policy_selector "$ns" "$full-clusterd")")" \
  "$(pods_matching "$ns" "$(k -n "$ns" get deploy "$full-clusterd" -o json | /usr/bin/python3 -c '
import json, sys
print(",".join("%s=%s" % kv for kv in sorted(json.load(sys.stdin)["spec"]["selector"]["matchLabels"].items())))')")"
ib_expect_eq "clusterd policy admits only orchestrators" \
  "$(sel "$ns" "$full-clusterd" '{.spec.ingress[0].from[0].podSelector.matchLabels.app\.kubernetes\.io/component}')" orchestrator
ib_expect_eq "workload policy in the workload namespace selects the workload's pods" \
  "$(pods_matching "$wns" app.kubernetes.io/managed-by=ib-clusterd,app.kubernetes.io/part-of=ibrain)" \
  "$(pods_matching "$wns" ibrain.io/workload=demo)"
ib_expect_eq "workload policy admits ibrain of the release's namespace" \
  "$(sel "$wns" "$full-workloads" '{.spec.ingress[0].from[0].namespaceSelector.matchLabels.kubernetes\.io/metadata\.name}')/$(sel "$wns" "$full-workloads" '{.spec.ingress[0].from[0].podSelector.matchLabels.app\.kubernetes\.io/component}')" \
  "$ns/ibrain"
echo "network policies: selectors match the cluster server, Redis and the workload pods"

# ---- upgrade ibrain under load: 0 failed requests, the secret kept ----
secret_before=$(cat "$IB_TMP/jwt.secret")
"$IB_LOAD_BIN" --target "$front" --model demo --shared-prefix 4,300 --system-tokens 60 --question-tokens 8 \
  --output-tokens 6 --rate 60 --json "$IB_TMP/upgrade.json" --quiet --log-errors >"$IB_TMP/upgrade-load.txt" 2>&1 &
loader=$!
sleep 2
"$HELM" upgrade "$rel" "$chart" -n "$ns" "${values[@]}" --set "ibrain.image.tag=$tag-v2" --wait --timeout 240s \
  >"$IB_TMP/upgrade.txt" 2>&1 || ib_fail "helm upgrade: $(cat "$IB_TMP/upgrade.txt")"
wait "$loader" || ib_fail "ib-load during the upgrade: $(cat "$IB_TMP/upgrade-load.txt")"
ib_expect_eq "requests during the upgrade (ok/errors)" \
  "$(ib_json "$IB_TMP/upgrade.json" 'd["ok"]')/$(ib_json "$IB_TMP/upgrade.json" 'd["errors"]')" "1200/0"
ib_expect_eq "ibrain's image after the upgrade" \
  "$(k -n "$ns" get deploy "$full-router" -o jsonpath='{.spec.template.spec.containers[0].image}')" "ibrain.local/ibrain:$tag-v2"
k -n "$ns" rollout status "deploy/$full-router" --timeout=60s >/dev/null || ib_fail "rollout after the upgrade"
ib_expect_eq "JWT secret after the upgrade" \
  "$(k -n "$ns" get secret "$full-jwt" -o jsonpath='{.data.secret}' | base64 -d)" "$secret_before"
echo "helm upgrade of ibrain to $tag-v2 under 60 req/s: 1200 of 1200 requests ok; the JWT secret kept"

# ---- uninstall: nothing of the release left ----
"$IBCTL" workload delete demo >/dev/null || ib_fail "workload delete"
wait_until 90 "the workload's objects gone" 'test -z "$(k -n "$wns" get deploy,svc,cm,pods -l ibrain.io/workload=demo -o name)"'
"$HELM" uninstall "$rel" -n "$ns" --wait --timeout 120s >"$IB_TMP/uninstall.txt" 2>&1 || ib_fail "helm uninstall: $(cat "$IB_TMP/uninstall.txt")"
all_kinds=deployments,statefulsets,replicasets,pods,services,endpointslices,configmaps,secrets,serviceaccounts,roles,rolebindings,networkpolicies,poddisruptionbudgets,horizontalpodautoscalers
wait_until 90 "nothing of the release left" \
  'test -z "$(k -n "$ns" get "$all_kinds" -l app.kubernetes.io/instance=$rel -o name; k -n "$wns" get "$all_kinds" -l app.kubernetes.io/instance=$rel -o name)"'
ib_expect_eq "helm releases left" "$("$HELM" list -n "$ns" -q)" ""
echo "helm uninstall: no $all_kinds of the release left in $ns or $wns"
