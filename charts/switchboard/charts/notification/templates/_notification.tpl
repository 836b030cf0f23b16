{{/* The infrastructure notification connects to; it has no settings beyond .Values.config. */}}
{{- define "notification.uses" -}}postgres nats kafka{{- end -}}
{{- define "notification.backends" -}}presence room{{- end -}}
{{- define "notification.extraConfigData" -}}{{- end -}}
{{- define "notification.extraSecretRefs" -}}{{- end -}}
{{- define "notification.podEnv" -}}{{- end -}}
{{- define "notification.extraSecretMounts" -}}{{- end -}}
