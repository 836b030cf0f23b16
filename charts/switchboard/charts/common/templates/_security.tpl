{{/*
Credentials mounted as files, read-only, from Secrets you create: the
service's NATS nkey seed (only its own key of the Secret), the gRPC mutual-TLS
CA/certificate/key, and (gateway) the WebSocket TLS certificate. The
ConfigMap points the service at the files; the Secrets' resourceVersions are
part of checksum/secret-refs, so `helm upgrade` after a rotation rolls the
pods (the services read these files at start).
*/}}

{{- define "common.natsUser" -}}{{ .Chart.Name }}{{- end -}}

{{/* The gRPC TLS Secret of this service: its own grpcTls.existingSecret over global.grpcTls.existingSecret. */}}
{{- define "common.grpcTlsSecret" -}}
{{- (.Values.grpcTls | default dict).existingSecret | default (.Values.global.grpcTls | default dict).existingSecret | default "" -}}
{{- end -}}

{{/* Mounted Secrets as a YAML list of (name, secret, mountPath, items). */}}
{{- define "common.secretMounts" -}}
{{- $mounts := list }}
{{- if and (has "nats" (include "common.uses" . | fromYamlArray)) .Values.global.nats.credentialsSecret }}
{{- $key := printf "%s.nk" (include "common.natsUser" .) }}
{{- $mounts = append $mounts (dict "name" "nats-credentials" "secret" .Values.global.nats.credentialsSecret "mountPath" "/etc/switchboard/nats" "items" (list (dict "key" $key "path" $key))) }}
{{- end }}
{{- with include "common.grpcTlsSecret" . }}
{{- $mounts = append $mounts (dict "name" "grpc-tls" "secret" . "mountPath" "/etc/switchboard/grpc-tls" "items" (list (dict "key" "ca.crt" "path" "ca.crt") (dict "key" "tls.crt" "path" "tls.crt") (dict "key" "tls.key" "path" "tls.key"))) }}
{{- end }}
{{- range $mount := include (printf "%s.extraSecretMounts" .Chart.Name) . | fromYamlArray }}
{{- $mounts = append $mounts $mount }}
{{- end }}
{{- toYaml $mounts }}
{{- end -}}

{{/* Where the service finds the mounted files, and who may call it as internal (ConfigMap entries). */}}
{{- define "common.securityConfigData" -}}
{{- if and (has "nats" (include "common.uses" . | fromYamlArray)) .Values.global.nats.credentialsSecret }}
NATS_NKEY_SEED_FILE: {{ printf "/etc/switchboard/nats/%s.nk" (include "common.natsUser" .) | quote }}
{{- end }}
{{- if include "common.grpcTlsSecret" . }}
GRPC_TLS_CA_FILE: "/etc/switchboard/grpc-tls/ca.crt"
GRPC_TLS_CERT_FILE: "/etc/switchboard/grpc-tls/tls.crt"
GRPC_TLS_KEY_FILE: "/etc/switchboard/grpc-tls/tls.key"
{{- $identities := (.Values.global.grpcTls | default dict).internalIdentities | default list }}
{{- if not $identities }}
{{- fail "global.grpcTls.internalIdentities is required with mutual TLS: the certificate identities (subject CN, SAN DNS names or URIs) of the services, which alone may make internal calls" }}
{{- end }}
GRPC_INTERNAL_IDENTITIES: {{ join "," $identities | quote }}
{{- end }}
{{- end -}}

{{/* The mesh token for internal calls, by reference (docs/security.md §8). */}}
{{- define "common.internalTokenRef" -}}
{{- $token := .Values.global.internalToken | default dict -}}
- env: GRPC_INTERNAL_TOKEN
  secret: {{ required "global.internalToken.existingSecret is required: the name of a Secret holding the token of internal gRPC calls (docs/deploy.md)" $token.existingSecret | quote }}
  key: {{ $token.secretKey | default "token" | quote }}
{{- end -}}

{{- define "common.secretVolumes" -}}
{{- range $mount := include "common.secretMounts" . | fromYamlArray }}
- name: {{ $mount.name }}
  secret:
    secretName: {{ $mount.secret | quote }}
    # 0440: the service's user (fsGroup) reads, nobody writes.
    defaultMode: 288
    items:
      {{- toYaml $mount.items | nindent 6 }}
{{- end }}
{{- end -}}

{{- define "common.secretVolumeMounts" -}}
{{- range $mount := include "common.secretMounts" . | fromYamlArray }}
- name: {{ $mount.name }}
  mountPath: {{ $mount.mountPath }}
  readOnly: true
{{- end }}
{{- end -}}
