{{/* What the gateway connects to, and its own settings beyond .Values.config. */}}
{{- define "gateway.uses" -}}redis nats{{- end -}}
{{- define "gateway.backends" -}}messaging presence room{{- end -}}

{{- define "gateway.extraConfigData" }}
PORT: {{ .Values.ports.websocket | int | quote }}
{{- with .Values.auth.jwksUrl }}
JWT_JWKS_URL: {{ . | quote }}
{{- end }}
{{- with .Values.auth.issuer }}
JWT_ISSUER: {{ . | quote }}
{{- end }}
{{- with .Values.auth.audience }}
JWT_AUDIENCE: {{ . | quote }}
{{- end }}
{{- with .Values.auth.allowedOrigins }}
ALLOWED_ORIGINS: {{ join "," . | quote }}
{{- end }}
{{- if .Values.tls.existingSecret }}
TLS_CERT_FILE: "/etc/switchboard/tls/tls.crt"
TLS_KEY_FILE: "/etc/switchboard/tls/tls.key"
{{- end }}
{{- end -}}

{{/* TLS 1.3 on the WebSocket port itself (wss:// to the pod), from a kubernetes.io/tls Secret. */}}
{{- define "gateway.extraSecretMounts" -}}
{{- with .Values.tls.existingSecret }}
- name: tls
  secret: {{ . | quote }}
  mountPath: /etc/switchboard/tls
  items:
    - key: tls.crt
      path: tls.crt
    - key: tls.key
      path: tls.key
{{- end }}
{{- end -}}

{{/* The HS256 secret, by reference; with a JWKS URL there is no shared secret at all. */}}
{{- define "gateway.extraSecretRefs" -}}
{{- if not .Values.auth.jwksUrl -}}
- env: JWT_SECRET
  secret: {{ required "gateway.auth.jwtSecret.existingSecret is required when gateway.auth.jwksUrl is empty: the name of a Secret holding the HS256 key" .Values.auth.jwtSecret.existingSecret | quote }}
  key: {{ .Values.auth.jwtSecret.secretKey | quote }}
{{- end -}}
{{- end -}}

{{/* Each pod is its own gateway in heartbeats and logs: GATEWAY_ID is the pod name. */}}
{{- define "gateway.podEnv" }}
- name: GATEWAY_ID
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
{{- end -}}
