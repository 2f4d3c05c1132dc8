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

{{- define "nimble.labels" -}}
{{ include "nimble.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
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
