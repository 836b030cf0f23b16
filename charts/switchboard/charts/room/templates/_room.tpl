{{/* The infrastructure room connects to; it has no settings beyond .Values.config. */}}
{{- define "room.uses" -}}postgres nats{{- end -}}
{{- define "room.backends" -}}{{- end -}}
{{- define "room.extraConfigData" -}}{{- end -}}
{{- define "room.extraSecretRefs" -}}{{- end -}}
{{- define "room.podEnv" -}}{{- end -}}
