{{/*
Names, labels and image references shared by the templates. Object names are fixed
(`tortie-operator`, `tortie-agent`) rather than derived from the release name: the
network is installed once per cluster, and the names are what people type.
*/}}

{{/* Labels of every object; component objects add "tortie.selectorLabels". */}}
{{- define "tortie.baseLabels" -}}
app.kubernetes.io/part-of: tortie
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end }}

{{/* Labels of objects that belong to no one component (RBAC, configuration). */}}
{{- define "tortie.labels" -}}
{{ include "tortie.baseLabels" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels that select one component's pods; they never change across upgrades. */}}
{{- define "tortie.selectorLabels" -}}
app.kubernetes.io/name: {{ .component }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- end }}

{{/* `registry/repository:tag`; call with (dict "root" $ "image" .Values.agent.image). */}}
{{- define "tortie.image" -}}
{{- $tag := .root.Values.image.tag | default .root.Chart.AppVersion -}}
{{- if .root.Values.image.registry -}}
{{- printf "%s/%s:%s" (trimSuffix "/" .root.Values.image.registry) .image.repository $tag -}}
{{- else -}}
{{- printf "%s:%s" .image.repository $tag -}}
{{- end -}}
{{- end }}

{{/* The API server override, for both components; nothing when it is not set. */}}
{{- define "tortie.apiServerEnv" -}}
{{- if .Values.apiServer.host }}
- name: KUBERNETES_SERVICE_HOST
  value: {{ .Values.apiServer.host | quote }}
- name: KUBERNETES_SERVICE_PORT
  value: {{ .Values.apiServer.port | toString | quote }}
{{- end }}
{{- end }}

{{/*
Checks the schema cannot express because they relate two values; a failure names the
values and the fix.
*/}}
{{- define "tortie.validate" -}}
{{- $pool := .Values.ipPool -}}
{{- if $pool.cidr -}}
{{- $prefix := int (last (splitList "/" $pool.cidr)) -}}
{{- $ipv6 := contains ":" $pool.cidr -}}
{{- if and (not $ipv6) (gt (int $pool.blockSize) 32) -}}
{{- fail (printf "ipPool.blockSize %v is an IPv6 block size but ipPool.cidr %s is IPv4; use 20-32 (26 is the usual choice)" $pool.blockSize $pool.cidr) -}}
{{- end -}}
{{- if and $ipv6 (le (int $pool.blockSize) 32) -}}
{{- fail (printf "ipPool.blockSize %v is an IPv4 block size but ipPool.cidr %s is IPv6; use 116-128 (122 is the usual choice)" $pool.blockSize $pool.cidr) -}}
{{- end -}}
{{- if lt (int $pool.blockSize) $prefix -}}
{{- fail (printf "ipPool.blockSize %v is shorter than the prefix of ipPool.cidr %s: a block must fit inside the pool; use a block size of at least %d" $pool.blockSize $pool.cidr $prefix) -}}
{{- end -}}
{{- end -}}
{{- if and .Values.apiServer.host (not .Values.apiServer.port) -}}
{{- fail "apiServer.host is set but apiServer.port is empty; set both (for example --set apiServer.port=6443) or neither" -}}
{{- end -}}
{{- if and .Values.apiServer.port (not .Values.apiServer.host) -}}
{{- fail "apiServer.port is set but apiServer.host is empty; set both or neither" -}}
{{- end -}}
{{- end }}

{{/* Environment shared by the agent's install-cni step and its main container. */}}
{{- define "tortie.agentEnv" -}}
- name: NODE_NAME
  valueFrom:
    fieldRef:
      fieldPath: spec.nodeName
- name: TORTIE_CNI_CONF_DIR
  value: {{ .Values.cni.confDir | quote }}
- name: TORTIE_CNI_BIN_DIR
  value: {{ .Values.cni.binDir | quote }}
- name: TORTIE_MTU
  value: {{ .Values.mtu | quote }}
- name: TORTIE_LOG_LEVEL
  value: {{ .Values.logLevel | quote }}
{{- include "tortie.apiServerEnv" . }}
{{- end }}
