{{/* The infrastructure presence connects to; it has no settings beyond .Values.config. */}}
{{- define "presence.uses" -}}redis nats{{- end -}}
{{- define "presence.backends" -}}{{- end -}}
{{- define "presence.extraConfigData" -}}{{- end -}}
{{- define "presence.extraSecretRefs" -}}{{- end -}}
{{- define "presence.podEnv" -}}{{- end -}}
{{- define "presence.extraSecretMounts" -}}{{- end -}}
