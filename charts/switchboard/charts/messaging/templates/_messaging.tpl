{{/* The infrastructure messaging connects to; it has no settings beyond .Values.config. */}}
{{- define "messaging.uses" -}}postgres nats kafka{{- end -}}
{{- define "messaging.backends" -}}room{{- end -}}
{{- define "messaging.extraConfigData" -}}{{- end -}}
{{- define "messaging.extraSecretRefs" -}}{{- end -}}
{{- define "messaging.podEnv" -}}{{- end -}}
{{- define "messaging.extraSecretMounts" -}}{{- end -}}
