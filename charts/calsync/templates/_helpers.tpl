{{/*
Names, labels and the shared pieces of every component.

Components: `operator`, `worker` and `gateway` (store.type=postgresql: three Deployments), or
`run` (store.type=sqlite: one all-in-one `calsync run` Deployment, see deployments.yaml).
Each component's Deployment and ServiceAccount are both called `calsync.componentName`.
*/}}

{{/* Chart name, overridable. */}}
{{- define "calsync.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name: fullnameOverride, else the release name when it already contains the
chart name, else <release>-<chart>; at most 63 characters.
*/}}
{{- define "calsync.fullname" -}}
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

{{/* chart label value: name-version */}}
{{- define "calsync.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Selector labels. Argument: (dict "ctx" . "component" "operator"); component may be empty for
labels that select every pod of the release.
*/}}
{{- define "calsync.selectorLabels" -}}
{{- $ctx := .ctx -}}
app.kubernetes.io/name: {{ include "calsync.name" $ctx }}
app.kubernetes.io/instance: {{ $ctx.Release.Name }}
{{- if .component }}
app.kubernetes.io/component: {{ .component }}
{{- end }}
{{- end }}

{{/* All labels. Argument: (dict "ctx" . "component" "operator"). */}}
{{- define "calsync.labels" -}}
{{- $ctx := .ctx -}}
helm.sh/chart: {{ include "calsync.chart" $ctx }}
{{ include "calsync.selectorLabels" . }}
app.kubernetes.io/version: {{ $ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ $ctx.Release.Service }}
app.kubernetes.io/part-of: calsync
{{- end }}

{{/* <fullname>-<component>: the Deployment and ServiceAccount name of a component. */}}
{{- define "calsync.componentName" -}}
{{- printf "%s-%s" (include "calsync.fullname" .ctx) .component | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The components this release runs, as a JSON list (use with fromJsonArray). */}}
{{- define "calsync.components" -}}
{{- if eq .Values.store.type "sqlite" -}}
["run"]
{{- else -}}
["operator","worker","gateway"]
{{- end -}}
{{- end }}

{{/* The component that serves the gateway (its Service selects it). */}}
{{- define "calsync.gatewayComponent" -}}
{{- if eq .Values.store.type "sqlite" }}run{{ else }}gateway{{ end }}
{{- end }}

{{/* The component that runs the SyncJob worker (scaled by the built-in scaler or KEDA). */}}
{{- define "calsync.workerComponent" -}}
{{- if eq .Values.store.type "sqlite" }}run{{ else }}worker{{ end }}
{{- end }}

{{/* ServiceAccount name of a component. Argument: (dict "ctx" . "component" "operator"). */}}
{{- define "calsync.serviceAccountName" -}}
{{- $values := .ctx.Values -}}
{{- $override := "" -}}
{{- if hasKey $values.serviceAccount.names .component -}}
{{- $override = index $values.serviceAccount.names .component -}}
{{- end -}}
{{- if $override -}}
{{- $override -}}
{{- else if $values.serviceAccount.create -}}
{{- include "calsync.componentName" . -}}
{{- else -}}
default
{{- end -}}
{{- end }}

{{/* The image reference; the tag defaults to the chart's appVersion. */}}
{{- define "calsync.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion (toString .Values.image.tag)) }}
{{- end }}

{{/* The gateway's public base URL: gateway.publicUrl, else derived from the Ingress host. */}}
{{- define "calsync.publicUrl" -}}
{{- if .Values.gateway.publicUrl -}}
{{- trimSuffix "/" .Values.gateway.publicUrl -}}
{{- else if and .Values.gateway.ingress.enabled .Values.gateway.ingress.host -}}
{{- printf "%s://%s" (ternary "https" "http" .Values.gateway.ingress.tls.enabled) .Values.gateway.ingress.host -}}
{{- end -}}
{{- end }}

{{/*
A value as an environment variable string. Helm reads numbers in values files as float64, which
would print 1000000 as 1e+06; integral numbers are printed as integers.
*/}}
{{- define "calsync.envValue" -}}
{{- if kindIs "float64" . -}}
{{- if eq . (floor .) -}}{{ int64 . }}{{- else -}}{{ . }}{{- end -}}
{{- else -}}
{{- toString . -}}
{{- end -}}
{{- end }}

{{/*
Refuse combinations that cannot work, each with a message naming the values to change. Included
by every template that depends on them, so `helm template --show-only` of one file fails too.
*/}}
{{- define "calsync.validate" -}}
{{- $v := .Values -}}
{{- if eq $v.store.type "sqlite" -}}
{{- if gt (int $v.worker.replicas) 1 -}}
{{- fail (printf "worker.replicas=%d needs a shared store: SQLite serves one worker only. Set store.type=postgresql (with store.postgresql.existingSecret) or worker.replicas=1" (int $v.worker.replicas)) -}}
{{- end -}}
{{- range $component := list "operator" "gateway" -}}
{{- $replicas := int (index $v $component).replicas -}}
{{- if gt $replicas 1 -}}
{{- fail (printf "%s.replicas=%d: with store.type=sqlite the operator, worker and gateway run as one `calsync run` pod that owns the SQLite file, so there is exactly one; set store.type=postgresql (with store.postgresql.existingSecret) for separate, scalable components, or %s.replicas=1" $component $replicas $component) -}}
{{- end -}}
{{- end -}}
{{- if $v.scaling.enabled -}}
{{- fail "scaling.enabled=true needs several workers, which SQLite cannot serve: set store.type=postgresql (with store.postgresql.existingSecret) or scaling.enabled=false" -}}
{{- end -}}
{{- if $v.keda.enabled -}}
{{- fail "keda.enabled=true needs several workers, which SQLite cannot serve: set store.type=postgresql (with store.postgresql.existingSecret) or keda.enabled=false" -}}
{{- end -}}
{{- end -}}
{{- if and (eq $v.store.type "postgresql") (not $v.store.postgresql.existingSecret) -}}
{{- fail "store.type=postgresql needs store.postgresql.existingSecret: the name of a Secret whose key store.postgresql.existingSecretKey holds the postgresql:// URL" -}}
{{- end -}}
{{- if and $v.scaling.enabled $v.keda.enabled -}}
{{- fail "scaling.enabled and keda.enabled both size the worker Deployment: enable only one of them" -}}
{{- end -}}
{{- if and $v.keda.enabled (not $v.keda.serverAddress) -}}
{{- fail "keda.enabled=true needs keda.serverAddress: the Prometheus that scrapes calsync (e.g. http://prometheus.monitoring:9090)" -}}
{{- end -}}
{{- if gt (int $v.scaling.minReplicas) (int $v.scaling.maxReplicas) -}}
{{- fail (printf "scaling.minReplicas (%d) is above scaling.maxReplicas (%d)" (int $v.scaling.minReplicas) (int $v.scaling.maxReplicas)) -}}
{{- end -}}
{{- if and $v.gateway.ingress.enabled (not $v.gateway.ingress.host) -}}
{{- fail "gateway.ingress.enabled=true needs gateway.ingress.host" -}}
{{- end -}}
{{- if and $v.gateway.ingress.enabled $v.gateway.ingress.tls.enabled (not $v.gateway.ingress.tls.secretName) -}}
{{- fail "gateway.ingress.tls.enabled=true needs gateway.ingress.tls.secretName (the TLS Secret, e.g. made by cert-manager)" -}}
{{- end -}}
{{- end }}

{{/*
RBAC rules. What each component calls is listed in the README ("Operating at scale") and in
charts/calsync/README.md; the RBAC proof test runs the components with exactly these. Status
is only ever written with a guarded merge patch of the /status subresource (a conflict re-reads
the object itself), so the status rules carry `patch` alone.

calsync.rules.watched.<component>: rights in every watched namespace (a ClusterRole when the
chart watches the whole cluster, a Role per namespace otherwise).
calsync.rules.own.<component>: rights in the release namespace only (always a Role).
*/}}
{{- define "calsync.rules.watched.operator" -}}
- apiGroups: ["calsync.io"]
  resources: ["calendarconnections"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["calsync.io"]
  resources: ["calendarconnections/status"]
  verbs: ["patch"]
- apiGroups: ["calsync.io"]
  resources: ["syncjobs"]
  verbs: ["list", "watch", "create"]
- apiGroups: ["calsync.io"]
  resources: ["webhooksubscriptions"]
  verbs: ["get", "list", "watch", "create", "delete", "patch"]
- apiGroups: ["calsync.io"]
  resources: ["webhooksubscriptions/status"]
  verbs: ["patch"]
# token Secrets (<connection>-calsync-tokens): created, re-encrypted on key rotation, deleted
# with their connection; credentials and OAuth client Secrets are read from a watch-fed cache.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "list", "watch", "create", "update", "delete"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- end }}

{{- define "calsync.rules.watched.worker" -}}
- apiGroups: ["calsync.io"]
  resources: ["syncjobs"]
  verbs: ["get", "list", "watch", "delete"]
- apiGroups: ["calsync.io"]
  resources: ["syncjobs/status"]
  verbs: ["patch"]
- apiGroups: ["calsync.io"]
  resources: ["calendarconnections"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["calsync.io"]
  resources: ["calendarconnections/status"]
  verbs: ["patch"]
# credentials from a watch-fed cache; refreshed OAuth access tokens are written back to the
# connection's token Secret (create when absent, update otherwise).
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "list", "watch", "create", "update"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- end }}

{{- define "calsync.rules.watched.gateway" -}}
# a watch-fed cache of subscriptions verifies notifications; a counter write that lost a
# conflict re-reads its subscription (get)
- apiGroups: ["calsync.io"]
  resources: ["webhooksubscriptions"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["calsync.io"]
  resources: ["webhooksubscriptions/status"]
  verbs: ["patch"]
# notifications become SyncJobs (created, or touched with the notified-at annotation)
- apiGroups: ["calsync.io"]
  resources: ["syncjobs"]
  verbs: ["get", "list", "watch", "create", "patch"]
# OAuth consent reads the connection it was started for (and a subscription's owner)
- apiGroups: ["calsync.io"]
  resources: ["calendarconnections"]
  verbs: ["get"]
# OAuth consent: read the connection's OAuth client Secret, store the granted tokens
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "create", "update"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- end }}

{{/* Argument: the root context. */}}
{{- define "calsync.rules.own.operator" -}}
# the token keyring: created once with one key, rotated by the operator's timer
- apiGroups: [""]
  resources: ["secrets"]
  resourceNames: [{{ .Values.settings.keyringName | quote }}]
  verbs: ["get", "update"]
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["create"]
# leader election of the one active operator
- apiGroups: ["coordination.k8s.io"]
  resources: ["leases"]
  resourceNames: [{{ .Values.settings.operatorLeaseName | quote }}]
  verbs: ["get", "update"]
- apiGroups: ["coordination.k8s.io"]
  resources: ["leases"]
  verbs: ["create"]
{{- if .Values.scaling.enabled }}
# the built-in scaler sizes the worker Deployment through its scale subresource
- apiGroups: ["apps"]
  resources: ["deployments/scale"]
  resourceNames: [{{ include "calsync.componentName" (dict "ctx" . "component" (include "calsync.workerComponent" .)) | quote }}]
  verbs: ["get", "update"]
{{- end }}
# ScaledUp/ScaledDown Events on the worker Deployment, start-up Events
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- end }}

{{- define "calsync.rules.own.worker" -}}
# the token keyring (read; the operator creates it)
- apiGroups: [""]
  resources: ["secrets"]
  resourceNames: [{{ .Values.settings.keyringName | quote }}]
  verbs: ["get"]
{{- end }}

{{- define "calsync.rules.own.gateway" -}}
# the token keyring (read; the operator creates it)
- apiGroups: [""]
  resources: ["secrets"]
  resourceNames: [{{ .Values.settings.keyringName | quote }}]
  verbs: ["get"]
{{- end }}

{{/* `run` (SQLite all-in-one) is all three in one process. */}}
{{- define "calsync.rules.watched.run" -}}
{{ include "calsync.rules.watched.operator" . }}
{{ include "calsync.rules.watched.worker" . }}
{{ include "calsync.rules.watched.gateway" . }}
{{- end }}

{{- define "calsync.rules.own.run" -}}
{{ include "calsync.rules.own.operator" . }}
{{- end }}
