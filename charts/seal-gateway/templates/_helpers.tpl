{{/* Names, labels and images shared by every template. */}}

{{- define "seal-gateway.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* `<release>-<chart>`, or the release name when it already contains the chart name. */}}
{{- define "seal-gateway.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "seal-gateway.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Name of the operator's objects (Deployment, ServiceAccount, RBAC, PDB). */}}
{{- define "seal-gateway.operatorName" -}}
{{- printf "%s-operator" (include "seal-gateway.fullname" . | trunc 54 | trimSuffix "-") -}}
{{- end -}}

{{/* The operator's metrics Service: a Service name is at most 63 characters. */}}
{{- define "seal-gateway.operatorMetricsName" -}}
{{- printf "%s-operator-metrics" (include "seal-gateway.fullname" . | trunc 46 | trimSuffix "-") -}}
{{- end -}}

{{- define "seal-gateway.operatorServiceAccountName" -}}
{{- if .Values.operator.serviceAccount.create -}}
{{- default (include "seal-gateway.operatorName" .) .Values.operator.serviceAccount.name -}}
{{- else -}}
{{- required "operator.serviceAccount.name is required when operator.serviceAccount.create is false" .Values.operator.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Name of the default SealGateway, and so of its data plane's Deployment and Service. */}}
{{- define "seal-gateway.gatewayName" -}}
{{- default (include "seal-gateway.fullname" .) .Values.gateway.name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels on every object the chart renders. */}}
{{- define "seal-gateway.labels" -}}
helm.sh/chart: {{ include "seal-gateway.chart" . }}
app.kubernetes.io/part-of: seal-gateway
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
Selector labels of the operator pods. `app.kubernetes.io/name` is deliberately not `seal-gateway`:
the operator selects a data plane's pods by `app.kubernetes.io/name: seal-gateway` and
`app.kubernetes.io/instance: <gateway>`, and the operator pods must never match that.
*/}}
{{- define "seal-gateway.operatorSelectorLabels" -}}
app.kubernetes.io/name: aegis-seal-operator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "seal-gateway.operatorLabels" -}}
{{ include "seal-gateway.labels" . }}
{{ include "seal-gateway.operatorSelectorLabels" . }}
{{- end -}}

{{/* Labels the operator puts on every data-plane pod (operator/src/desired/mod.rs). */}}
{{- define "seal-gateway.dataPlaneSelectorLabels" -}}
app.kubernetes.io/name: seal-gateway
app.kubernetes.io/component: data-plane
{{- end -}}

{{/* `repository:tag` or `repository@digest`; the tag defaults to the appVersion. */}}
{{- define "seal-gateway.image" -}}
{{- $tag := default .root.Chart.AppVersion .image.tag -}}
{{- if .image.digest -}}
{{- printf "%s@%s" .image.repository .image.digest -}}
{{- else -}}
{{- printf "%s:%s" .image.repository $tag -}}
{{- end -}}
{{- end -}}

{{- define "seal-gateway.operatorImage" -}}
{{- include "seal-gateway.image" (dict "root" . "image" .Values.operator.image) -}}
{{- end -}}

{{- define "seal-gateway.gatewayImage" -}}
{{- include "seal-gateway.image" (dict "root" . "image" .Values.gatewayImage) -}}
{{- end -}}

{{/*
The restricted Pod Security profile (https://kubernetes.io/docs/concepts/security/pod-security-standards/#restricted),
for the pod and for each container.
*/}}
{{- define "seal-gateway.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "seal-gateway.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
privileged: false
capabilities:
  drop:
    - ALL
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/*
One NetworkPolicy egress rule from a destination {to, cidrs, ports}; nothing when it names no peer,
so an unset destination never becomes "allow everything".
*/}}
{{- define "seal-gateway.egressRule" -}}
{{- $peers := list -}}
{{- range .to -}}
{{- $peers = append $peers . -}}
{{- end -}}
{{- range .cidrs -}}
{{- if kindIs "string" . -}}
{{- $peers = append $peers (dict "ipBlock" (dict "cidr" .)) -}}
{{- else -}}
{{- $peers = append $peers (dict "ipBlock" .) -}}
{{- end -}}
{{- end -}}
{{- if $peers }}
- to:
    {{- toYaml $peers | nindent 4 }}
  {{- with .ports }}
  ports:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}
{{- end -}}
