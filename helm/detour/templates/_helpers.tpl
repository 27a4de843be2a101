{{/*
Naming and label helpers. Every object of the release carries detour.labels; the selector
labels are the stable subset (name + instance) plus app.kubernetes.io/component.
*/}}

{{/* Chart name, overridable with nameOverride. */}}
{{- define "detour.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name, at most 63 chars (DNS label). The release name is used as is when it
already contains the chart name.
*/}}
{{- define "detour.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Names of the per-component objects (suffix kept within 63 chars). */}}
{{- define "detour.proxy.fullname" -}}
{{- printf "%s-proxy" (include "detour.fullname" . | trunc 57 | trimSuffix "-") }}
{{- end }}
{{- define "detour.operator.fullname" -}}
{{- printf "%s-operator" (include "detour.fullname" . | trunc 54 | trimSuffix "-") }}
{{- end }}

{{/* chart label value: name-version */}}
{{- define "detour.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Common labels: pass the root context. */}}
{{- define "detour.labels" -}}
helm.sh/chart: {{ include "detour.chart" . }}
{{ include "detour.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: detour
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels: stable across upgrades, never add to them. */}}
{{- define "detour.selectorLabels" -}}
app.kubernetes.io/name: {{ include "detour.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Per-component labels: dict "ctx" $ "component" "proxy|operator|test". */}}
{{- define "detour.componentLabels" -}}
{{ include "detour.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}
{{- define "detour.componentSelectorLabels" -}}
{{ include "detour.selectorLabels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* ServiceAccount names. */}}
{{- define "detour.serviceAccountName" -}}
{{- include "detour.proxy.serviceAccountName" . }}
{{- end }}
{{- define "detour.proxy.serviceAccountName" -}}
{{- if .Values.proxy.serviceAccount.create }}
{{- default (include "detour.proxy.fullname" .) .Values.proxy.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.proxy.serviceAccount.name }}
{{- end }}
{{- end }}
{{- define "detour.operator.serviceAccountName" -}}
{{- if .Values.operator.serviceAccount.create }}
{{- default (include "detour.operator.fullname" .) .Values.operator.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.operator.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Image reference: dict "ctx" $ "image" .Values.proxy.image. Digest wins over tag. */}}
{{- define "detour.image" -}}
{{- $registry := .image.registry | default .ctx.Values.image.registry -}}
{{- $repo := .image.repository -}}
{{- if $registry }}{{ $repo = printf "%s/%s" $registry $repo }}{{ end -}}
{{- if .image.digest -}}
{{- printf "%s@%s" $repo .image.digest -}}
{{- else -}}
{{- printf "%s:%s" $repo (.image.tag | default .ctx.Values.image.tag | default .ctx.Chart.AppVersion) -}}
{{- end -}}
{{- end }}
{{- define "detour.imagePullPolicy" -}}
{{- .image.pullPolicy | default .ctx.Values.image.pullPolicy -}}
{{- end }}

{{/*
The pod selector the proxies use to find their peers for shared health: this release's proxy
pods only, unless settings.sharedHealth.podSelector says otherwise.
*/}}
{{- define "detour.proxy.peerSelector" -}}
{{- $sel := include "detour.componentSelectorLabels" (dict "ctx" . "component" "proxy") | fromYaml -}}
{{- $parts := list -}}
{{- range $k := keys $sel | sortAlpha }}{{ $parts = append $parts (printf "%s=%s" $k (get $sel $k)) }}{{ end -}}
{{- join "," $parts -}}
{{- end }}

{{/*
The operator settings document (health, retryBudget, clientAuth, server, sharedHealth, plus the
operator's proxyPodSelector: this release's proxy pods, whose health it rolls up), with "off" blocks
(empty slowCall, clientAuth without keys, unset replicas) left out so that the result validates
against detour_proxy.config / detour_operator.settings.
*/}}
{{- define "detour.settings" -}}
{{- $s := deepCopy .Values.settings -}}
{{- if not $s.health.slowCall }}{{ $_ := unset $s.health "slowCall" }}{{ end -}}
{{- if not (($s.clientAuth).keys) }}{{ $_ := unset $s "clientAuth" }}{{ end -}}
{{- if not $s.sharedHealth.podSelector }}{{ $_ := set $s.sharedHealth "podSelector" (include "detour.proxy.peerSelector" .) }}{{ end -}}
{{- if not $s.sharedHealth.replicas }}{{ $_ := unset $s.sharedHealth "replicas" }}{{ end -}}
{{- $_ := set $s "proxyPodSelector" (include "detour.proxy.peerSelector" .) -}}
{{- toYaml $s -}}
{{- end }}

{{/* Pod-level defaults shared by both components and the test pod. */}}
{{- define "detour.podSecurityContext" -}}
{{- toYaml .Values.podSecurityContext }}
{{- end }}
{{- define "detour.containerSecurityContext" -}}
{{- toYaml .Values.containerSecurityContext }}
{{- end }}

{{/* A duration string (200ms, 2s, 5m, 1h, 1m30s) or a number of seconds, as float seconds. */}}
{{- define "detour.durationSeconds" -}}
{{- $d := toString . -}}
{{- if regexMatch "^[0-9]+(\\.[0-9]+)?$" $d -}}
{{- $d -}}
{{- else -}}
{{- $total := 0.0 -}}
{{- range $part := regexFindAll "[0-9]+(\\.[0-9]+)?(ms|s|m|h)" $d -1 -}}
{{- $n := regexFind "^[0-9]+(\\.[0-9]+)?" $part | float64 -}}
{{- $unit := trimPrefix (regexFind "^[0-9]+(\\.[0-9]+)?" $part) $part -}}
{{- $mult := get (dict "ms" 0.001 "s" 1.0 "m" 60.0 "h" 3600.0) $unit -}}
{{- $total = addf $total (mulf $n $mult) -}}
{{- end -}}
{{- $total -}}
{{- end -}}
{{- end }}

{{/* The operator's metrics Service (a DNS-1035 label: at most 63 chars). */}}
{{- define "detour.operator.metricsServiceName" -}}
{{- printf "%s-operator-metrics" (include "detour.fullname" . | trunc 46 | trimSuffix "-") }}
{{- end }}
