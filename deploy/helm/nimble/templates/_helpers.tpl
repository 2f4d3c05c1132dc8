{{- define "nimble.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "nimble.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "nimble.commonLabels" -}}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "nimble.labels" -}}
{{ include "nimble.selectorLabels" . }}
{{ include "nimble.commonLabels" . }}
{{- end -}}

{{/* the gateway's pods carry another name, so the replicas' selectors never match them */}}
{{- define "nimble.gatewayName" -}}
{{- printf "%s-gateway" (include "nimble.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "nimble.gatewaySelectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}-gateway
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "nimble.gatewayLabels" -}}
{{ include "nimble.gatewaySelectorLabels" . }}
app.kubernetes.io/component: gateway
{{ include "nimble.commonLabels" . }}
{{- end -}}

{{/* pods with this label may call the API port through the NetworkPolicy (the helm test pod has it) */}}
{{- define "nimble.clientLabel" -}}
{{ include "nimble.fullname" . }}-client: "true"
{{- end -}}

{{/* the front door: the gateway's Service when it is on, else the replicas' */}}
{{- define "nimble.frontService" -}}
{{- if .Values.gateway.enabled }}{{ include "nimble.gatewayName" . }}{{ else }}{{ include "nimble.fullname" . }}{{ end -}}
{{- end -}}

{{- define "nimble.frontPort" -}}
{{- if .Values.gateway.enabled }}{{ .Values.gateway.service.port }}{{ else }}{{ .Values.service.port }}{{ end -}}
{{- end -}}

{{- define "nimble.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* the Secret that holds the key file: an existing one, or the chart's */}}
{{- define "nimble.keysSecret" -}}
{{- .Values.auth.existingSecret | default (printf "%s-keys" (include "nimble.fullname" .)) -}}
{{- end -}}

{{- define "nimble.authOn" -}}
{{- if not .Values.auth.allowUnauthenticated }}true{{ end -}}
{{- end -}}

{{- define "nimble.securityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* what both containers need to agree on the model files: models, cache, engine, profile, hub */}}
{{- define "nimble.modelEnv" -}}
- {name: NIMBLE_MODEL, value: {{ join "," .Values.models | quote }}}
- {name: NIMBLE_CACHE_PATH, value: /cache}
{{- if .Values.engine }}
- {name: NIMBLE_ENGINE, value: {{ .Values.engine | quote }}}
{{- end }}
{{- if .Values.profile }}
- {name: NIMBLE_MODEL_PROFILE, value: {{ .Values.profile | quote }}}
{{- end }}
{{- if .Values.hf.endpoint }}
- {name: NIMBLE_HF_ENDPOINT, value: {{ .Values.hf.endpoint | quote }}}
{{- end }}
{{- if .Values.hf.tokenSecret }}
- name: NIMBLE_HF_TOKEN
  valueFrom: {secretKeyRef: {name: {{ .Values.hf.tokenSecret | quote }}, key: token}}
{{- end }}
{{- end }}

{{/* resources with the GPUs (the init container selects the same profile on the same GPUs) */}}
{{- define "nimble.resources" -}}
{{- $resources := deepCopy .Values.resources }}
{{- if gt (int .Values.gpu.count) 0 }}
{{- $limits := merge (dict "nvidia.com/gpu" (int .Values.gpu.count)) ($resources.limits | default dict) }}
{{- $_ := set $resources "limits" $limits }}
{{- end }}
{{- toYaml $resources }}
{{- end }}

{{/* refuse what would deploy but cannot work; included by deployment.yaml */}}
{{- define "nimble.validate" -}}
{{- $replicas := int .Values.replicaCount }}
{{- if .Values.autoscaling.enabled }}{{ $replicas = int .Values.autoscaling.maxReplicas }}{{ end }}
{{- if and (eq .Values.cache.type "persistentVolumeClaim") (eq .Values.cache.accessMode "ReadWriteOnce") (gt $replicas 1) }}
{{- fail (printf "cache: %d replicas cannot share one ReadWriteOnce PersistentVolumeClaim (only one node can mount it: pods on other nodes hang in ContainerCreating). Set cache.accessMode=ReadWriteMany (a shared file system, one download for all pods), or cache.type=ephemeral (a volume per pod) or emptyDir" $replicas) }}
{{- end }}
{{- if and .Values.gateway.enabled (include "nimble.authOn" .) (not .Values.gateway.upstreamKey.secret) }}
{{- fail "gateway: the replicas' API keys are on: set gateway.upstreamKey.secret (a Secret holding a key of the replicas' key file, which the gateway sends them), or auth.allowUnauthenticated=true" }}
{{- end }}
{{- end -}}

{{/* the port of the OTLP endpoint in an env dict (NIMBLE_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_ENDPOINT); empty: no tracing */}}
{{- define "nimble.otlpPort" -}}
{{- $url := .NIMBLE_OTLP_ENDPOINT | default .OTEL_EXPORTER_OTLP_ENDPOINT | default "" }}
{{- if $url }}
{{- $u := urlParse $url }}
{{- $port := regexFind ":[0-9]+$" $u.host | trimPrefix ":" }}
{{- $port | default (ternary "443" "80" (eq $u.scheme "https")) }}
{{- end }}
{{- end -}}

{{/* egress every nimble pod may need (dict root, env): DNS, trace export, extra rules */}}
{{- define "nimble.commonEgress" -}}
{{- $np := .root.Values.networkPolicy }}
{{- if $np.allowDNS }}
- ports:
    - {port: 53, protocol: UDP}
    - {port: 53, protocol: TCP}
{{- end }}
{{- with include "nimble.otlpPort" .env }}
- ports:
    - {port: {{ . }}, protocol: TCP}
  {{- with $np.otlpTo }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
{{- with $np.egress }}
{{ toYaml . }}
{{- end }}
{{- end -}}
