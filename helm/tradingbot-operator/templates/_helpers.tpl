{{- define "tradingbot.name" -}}tradingbot-operator{{- end -}}

{{- define "tradingbot.fullname" -}}
{{- if contains "tradingbot-operator" .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-tradingbot-operator" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "tradingbot.serviceAccountName" -}}
{{- default (include "tradingbot.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{- define "tradingbot.labels" -}}
app.kubernetes.io/name: {{ include "tradingbot.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "tradingbot.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tradingbot.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- /* The audit log's writer: a workload of its own, with its own identity. Its name label
differs from the operator's so that neither selector ever matches the other's pods. */ -}}
{{- define "tradingbot.auditName" -}}
{{- printf "%s-audit" (include "tradingbot.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "tradingbot.auditSelectorLabels" -}}
app.kubernetes.io/name: tradingbot-audit
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "tradingbot.auditLabels" -}}
{{ include "tradingbot.auditSelectorLabels" . }}
app.kubernetes.io/component: audit
app.kubernetes.io/part-of: {{ include "tradingbot.name" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "tradingbot.auditServiceAccountName" -}}
{{- default (include "tradingbot.auditName" .) .Values.audit.serviceAccountName -}}
{{- end -}}

{{- define "tradingbot.auditUrl" -}}
{{- printf "http://%s.%s.svc:8901" (include "tradingbot.auditName" .) .Release.Namespace -}}
{{- end -}}
