{{/*
Names and labels. Every object of a service is named <release>-<service>, so
the gateway finds messaging at <release>-messaging whatever the release is
called, and two releases never collide.
*/}}

{{- define "common.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "common.fullname" -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The name of a sibling service's objects: (dict "root" . "service" "messaging"). */}}
{{- define "common.siblingFullname" -}}
{{- printf "%s-%s" .root.Release.Name .service | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "common.selectorLabels" -}}
app.kubernetes.io/name: {{ include "common.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Labels every pod of the release carries: NetworkPolicies admit "the mesh" by them. */}}
{{- define "common.meshLabels" -}}
app.kubernetes.io/part-of: switchboard
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "common.labels" -}}
{{ include "common.selectorLabels" . }}
app.kubernetes.io/part-of: switchboard
app.kubernetes.io/component: {{ .Values.component | default "backend" }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end -}}

{{- define "common.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- .Values.serviceAccount.name | default (include "common.fullname" .) -}}
{{- else -}}
{{- .Values.serviceAccount.name | default "default" -}}
{{- end -}}
{{- end -}}

{{/* registry/repository:tag or registry/repository@digest; the tag defaults to global.image.tag, then appVersion. */}}
{{- define "common.image" -}}
{{- $registry := .Values.global.image.registry -}}
{{- $repository := .Values.image.repository -}}
{{- $ref := ternary $repository (printf "%s/%s" (trimSuffix "/" $registry) $repository) (empty $registry) -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" $ref .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" $ref (.Values.image.tag | default .Values.global.image.tag | default .Chart.AppVersion) -}}
{{- end -}}
{{- end -}}

{{- define "common.imagePullPolicy" -}}
{{- .Values.image.pullPolicy | default .Values.global.image.pullPolicy -}}
{{- end -}}

{{/*
The gRPC port each service's Service exposes, the same in every release, so
a service finds another at <release>-<service>:<port> whatever port the
container listens on (ports.grpc, the Service's targetPort).
*/}}
{{- define "common.grpcServicePort" -}}
{{- get (dict "gateway" "50051" "messaging" "50052" "presence" "50053" "room" "50054" "notification" "50055") . -}}
{{- end -}}
