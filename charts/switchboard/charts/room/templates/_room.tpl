{{/* The infrastructure room connects to (Kafka: its outbox relay; Redis: tenant limits) and the services it calls (announcements: messaging, notification). */}}
{{- define "room.uses" -}}postgres redis nats kafka{{- end -}}
{{- define "room.backends" -}}messaging notification{{- end -}}
{{- define "room.extraConfigData" -}}{{- end -}}
{{- define "room.extraSecretRefs" -}}{{- end -}}
{{- define "room.podEnv" -}}{{- end -}}
{{- define "room.extraSecretMounts" -}}{{- end -}}
