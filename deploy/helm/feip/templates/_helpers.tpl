{{/*
Expand the name of the chart.
*/}}
{{- define "feip.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Create a default fully qualified app name.
We truncate at 63 chars because some Kubernetes name fields are limited to this (by the DNS naming spec).
If release name contains chart name it will be used as a full name.
*/}}
{{- define "feip.fullname" -}}
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

{{/*
Create chart name and version as used by the chart label.
*/}}
{{- define "feip.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Common labels
*/}}
{{- define "feip.labels" -}}
helm.sh/chart: {{ include "feip.chart" . }}
{{ include "feip.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
Selector labels
*/}}
{{- define "feip.selectorLabels" -}}
app.kubernetes.io/name: {{ include "feip.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: controller
{{- end }}

{{/*
Create the name of the service account to use
*/}}
{{- define "feip.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "feip.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The controller image reference (digest wins over tag; tag defaults to appVersion).
*/}}
{{- define "feip.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
Name of the leader election Lease.
*/}}
{{- define "feip.leaderElectionName" -}}
{{- default (include "feip.fullname" .) .Values.leaderElection.name }}
{{- end }}

{{/*
Name shared by the uninstall hook's objects (Job, ServiceAccount, RBAC).
*/}}
{{- define "feip.uninstallName" -}}
{{- printf "%s-uninstall" (include "feip.fullname" . | trunc 53 | trimSuffix "-") }}
{{- end }}

{{/*
Labels of the uninstall hook's objects (no selector labels: its pod must not match the
controller's selector).
*/}}
{{- define "feip.uninstallLabels" -}}
helm.sh/chart: {{ include "feip.chart" . }}
app.kubernetes.io/name: {{ include "feip.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: uninstall
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
What the controller writes in the namespaces it manages (cluster-wide when watchNamespaces
is empty, else a Role per namespace).
*/}}
{{- define "feip.writeRules" -}}
- apiGroups: ["feip.io"]
  resources: ["floatingelasticips"]
  verbs: ["patch"]
- apiGroups: ["feip.io"]
  resources: ["floatingelasticips/status"]
  verbs: ["patch"]
- apiGroups: ["coordination.k8s.io"]
  resources: ["leases"]
  verbs: ["create", "update", "delete"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}

{{/*
The controller pods' selector labels as a label selector string (k=v,k=v).
*/}}
{{- define "feip.podSelector" -}}
{{- $pairs := list }}
{{- range $k, $v := (include "feip.selectorLabels" . | fromYaml) }}
{{- $pairs = append $pairs (printf "%s=%s" $k $v) }}
{{- end }}
{{- join "," $pairs }}
{{- end }}

{{/*
What the uninstall hook needs on FloatingElasticIPs: find those carrying the finalizer and
remove it (kubectl patch reads the object first, then sends a JSON patch).
*/}}
{{- define "feip.uninstallFeipRules" -}}
- apiGroups: ["feip.io"]
  resources: ["floatingelasticips"]
  verbs: ["get", "list", "patch"]
{{- end }}

{{/*
A list of strings as the elements of a CEL list literal ("a", "b"): JSON string literals are
valid CEL string literals.
*/}}
{{- define "feip.celStrings" -}}
{{- $quoted := list }}
{{- range . }}
{{- $quoted = append $quoted (toJson .) }}
{{- end }}
{{- join ", " $quoted }}
{{- end }}
