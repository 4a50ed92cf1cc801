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
