{{/* Names, labels and images shared by the templates. */}}

{{- define "ibrain.fullname" -}}
{{- if contains "ibrain" .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-ibrain" .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* ibrain.labels COMPONENT: the labels every object of the component carries */}}
{{- define "ibrain.labels" -}}
app.kubernetes.io/name: {{ .component }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/part-of: ibrain
app.kubernetes.io/component: {{ .component }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version }}
{{- end -}}

{{/* ibrain.selector COMPONENT: what the component's Service and Deployment select */}}
{{- define "ibrain.selector" -}}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* ibrain.image NAME TAG-OVERRIDE */}}
{{- define "ibrain.image" -}}
{{- printf "%s/%s:%s" .root.Values.image.registry .name (default .root.Values.image.tag .tag) -}}
{{- end -}}

{{/* the namespace the workloads go to */}}
{{- define "ibrain.workloadNamespace" -}}
{{- default .Release.Namespace .Values.clusterd.workloadNamespace -}}
{{- end -}}

{{/* The Redis flags of ibrain and the orchestrator: the bundled sentinels, external ones, or an address */}}
{{- define "ibrain.redisArgs" -}}
{{- $full := include "ibrain.fullname" . -}}
{{- if .Values.redis.bundled }}
{{- range $i := until (int .Values.redis.sentinels) }}
- --redis-sentinel
- {{ printf "%s-sentinel-%d.%s-sentinel.%s.svc.cluster.local:26379" $full $i $full $.Release.Namespace }}
{{- end }}
- --redis-master
- {{ .Values.redis.masterName }}
{{- else if .Values.redis.external.sentinels }}
{{- range .Values.redis.external.sentinels }}
- --redis-sentinel
- {{ . }}
{{- end }}
- --redis-master
- {{ .Values.redis.external.masterName }}
{{- else }}
- --redis
- {{ .Values.redis.external.address }}
{{- end }}
{{- end -}}

{{/* the pod securityContext every component runs with */}}
{{- define "ibrain.podSecurity" -}}
securityContext:
  runAsNonRoot: true
  runAsUser: 65532
  runAsGroup: 65532
  fsGroup: 65532
  seccompProfile: {type: RuntimeDefault}
{{- end -}}

{{/* the container securityContext every container runs with */}}
{{- define "ibrain.containerSecurity" -}}
securityContext:
  allowPrivilegeEscalation: false
  readOnlyRootFilesystem: true
  capabilities: {drop: [ALL]}
{{- end -}}

{{/* ibrain.metricsAnnotations PORT */}}
{{- define "ibrain.metricsAnnotations" -}}
{{- if .root.Values.metrics.annotations }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .port | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- end -}}

{{/* the JWT secret's name */}}
{{- define "ibrain.jwtSecretName" -}}
{{- default (printf "%s-jwt" (include "ibrain.fullname" .)) .Values.auth.existingSecret -}}
{{- end -}}
