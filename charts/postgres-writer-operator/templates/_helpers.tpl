{{/* Chart name, truncated to the 63 characters a label allows. */}}
{{- define "pgwo.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: release-chart unless the release name already contains the chart name. */}}
{{- define "pgwo.fullname" -}}
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

{{- define "pgwo.selectorLabels" -}}
app.kubernetes.io/name: {{ include "pgwo.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "pgwo.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "pgwo.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "pgwo.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "pgwo.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The watched namespaces as a JSON list: watchNamespace may be a list or one name (a string). */}}
{{- define "pgwo.watchNamespaces" -}}
{{- $w := .Values.watchNamespace -}}
{{- if kindIs "string" $w -}}
{{- if $w }}{{ list $w | toJson }}{{ else }}[]{{ end -}}
{{- else -}}
{{- $w | default list | uniq | toJson -}}
{{- end -}}
{{- end }}

{{/* The operator image; the repository has no default. */}}
{{- define "pgwo.image" -}}
{{- $repo := required "image.repository is required: set it to the registry path of your operator image, e.g. --set image.repository=ghcr.io/YOUR-ORG/postgres-writer-operator (README: Kubernetes, building the images)" .Values.image.repository -}}
{{- printf "%s:%s" $repo (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end }}
