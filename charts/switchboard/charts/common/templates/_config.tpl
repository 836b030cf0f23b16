{{/*
Configuration. Everything that is not a secret goes into the service's
ConfigMap, whose checksum rolls the pods when it changes; secrets are only
referenced (secretKeyRef), never rendered. Each service chart defines
"<chart>.uses" (the infrastructure it connects to: postgres, redis, nats,
kafka), "<chart>.backends" (the services it calls over gRPC: their addresses
go into <SERVICE>_ADDR), "<chart>.extraConfigData", "<chart>.extraSecretRefs"
and "<chart>.podEnv".
*/}}

{{/* A value as an environment string: numbers never in scientific notation, lists comma-separated. */}}
{{- define "common.envString" -}}
{{- if kindIs "float64" . -}}
{{- if eq (float64 (int64 .)) . -}}{{ int64 . }}{{- else -}}{{ . }}{{- end -}}
{{- else if kindIs "slice" . -}}
{{- join "," . -}}
{{- else -}}
{{- toString . -}}
{{- end -}}
{{- end -}}

{{- define "common.uses" -}}
{{- include (printf "%s.uses" .Chart.Name) . | splitList " " | compact | toYaml -}}
{{- end -}}

{{/* The environment variable each kind of infrastructure connection fills. */}}
{{- define "common.infraEnvName" -}}
{{- get (dict "postgres" "DATABASE_URL" "redis" "REDIS_URL" "nats" "NATS_URL" "kafka" "KAFKA_BROKERS") . -}}
{{- end -}}

{{/* A connection's settings: the service's own override (e.g. messaging.postgres) over the global one. */}}
{{- define "common.connection" -}}
{{- $global := index .root.Values.global .kind | default dict -}}
{{- $own := index .root.Values .kind | default dict -}}
{{- toYaml (merge (deepCopy $own) (deepCopy $global)) -}}
{{- end -}}

{{/* A service this one calls: backends.<service> when given, else <release>-<service>:<its gRPC Service port>. */}}
{{- define "common.backendAddress" -}}
{{- $given := index (.root.Values.backends | default dict) .service -}}
{{- $given | default (printf "%s:%s" (include "common.siblingFullname" (dict "root" .root "service" .service)) (include "common.grpcServicePort" .service)) -}}
{{- end -}}

{{- define "common.configData" -}}
HOST: "0.0.0.0"
GRPC_PORT: {{ .Values.ports.grpc | int | quote }}
OPS_PORT: {{ .Values.ports.ops | int | quote }}
{{- with .Values.global.otel.endpoint }}
OTEL_EXPORTER_OTLP_ENDPOINT: {{ . | quote }}
{{- end }}
{{- $root := . }}
{{- range $kind := include "common.uses" . | fromYamlArray }}
{{- $c := include "common.connection" (dict "root" $root "kind" $kind) | fromYaml }}
{{- if eq $kind "kafka" }}
KAFKA_BROKERS: {{ required "global.kafka.brokers is required" $c.brokers | include "common.envString" | quote }}
{{- else if and (ne $kind "postgres") (not $c.existingSecret) }}
{{ include "common.infraEnvName" $kind }}: {{ required (printf "global.%s.url (or global.%s.existingSecret) is required" $kind $kind) $c.url | quote }}
{{- end }}
{{- end }}
{{- range $service := include (printf "%s.backends" .Chart.Name) . | splitList " " | compact }}
{{ printf "%s_ADDR" (upper $service) }}: {{ include "common.backendAddress" (dict "root" $root "service" $service) | quote }}
{{- end }}
{{- range $key, $value := .Values.config }}
{{ $key }}: {{ include "common.envString" $value | quote }}
{{- end }}
{{- include (printf "%s.extraConfigData" .Chart.Name) . }}
{{- include "common.securityConfigData" . }}
{{- end -}}

{{- define "common.configmap" -}}
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ include "common.fullname" . }}
  namespace: {{ .Release.Namespace }}
  labels:
    {{- include "common.labels" . | nindent 4 }}
data:
  {{- include "common.configData" . | nindent 2 }}
{{- end -}}

{{/* The secret references as (name env, secret, key) triples, in YAML. */}}
{{- define "common.secretRefs" -}}
{{- $root := . }}
{{- $refs := list }}
{{- range $kind := include "common.uses" . | fromYamlArray }}
{{- $c := include "common.connection" (dict "root" $root "kind" $kind) | fromYaml }}
{{- if eq $kind "postgres" }}
{{- $refs = append $refs (dict "env" "DATABASE_URL" "secret" (required "global.postgres.existingSecret is required: the name of a Secret whose key holds the PostgreSQL URL (it carries the password)" $c.existingSecret) "key" ($c.secretKey | default "url")) }}
{{- else if and (ne $kind "kafka") $c.existingSecret }}
{{- $refs = append $refs (dict "env" (include "common.infraEnvName" $kind) "secret" $c.existingSecret "key" ($c.secretKey | default "url")) }}
{{- end }}
{{- end }}
{{- range $ref := include (printf "%s.extraSecretRefs" .Chart.Name) . | fromYamlArray }}
{{- $refs = append $refs $ref }}
{{- end }}
{{- range $ref := include "common.internalTokenRef" . | fromYamlArray }}
{{- $refs = append $refs $ref }}
{{- end }}
{{- range $env, $ref := .Values.secretEnv }}
{{- $refs = append $refs (dict "env" $env "secret" $ref.existingSecret "key" $ref.secretKey) }}
{{- end }}
{{- toYaml $refs }}
{{- end -}}

{{- define "common.secretEnv" -}}
{{- range $ref := include "common.secretRefs" . | fromYamlArray }}
- name: {{ $ref.env }}
  valueFrom:
    secretKeyRef:
      name: {{ $ref.secret | quote }}
      key: {{ $ref.key | quote }}
{{- end }}
{{- end -}}

{{/*
The referenced and mounted Secrets' resourceVersions, hashed: `helm upgrade`
after a Secret changed (a rotated password, JWT key, certificate or nkey) rolls
the pods that read it.
`helm template` cannot look Secrets up, so there the hash is of the names only.
*/}}
{{- define "common.secretRefsChecksum" -}}
{{- $root := . }}
{{- $versions := list }}
{{- range $ref := include "common.secretRefs" . | fromYamlArray }}
{{- $secret := lookup "v1" "Secret" $root.Release.Namespace $ref.secret }}
{{- $versions = append $versions (printf "%s/%s=%s" $ref.secret $ref.key (dig "metadata" "resourceVersion" "" $secret)) }}
{{- end }}
{{- /* Mounted Secrets too: a renewed certificate or a new nkey rolls the pods on the next upgrade. */}}
{{- range $mount := include "common.secretMounts" . | fromYamlArray }}
{{- $secret := lookup "v1" "Secret" $root.Release.Namespace $mount.secret }}
{{- $versions = append $versions (printf "%s (mounted)=%s" $mount.secret (dig "metadata" "resourceVersion" "" $secret)) }}
{{- end }}
{{- join "," $versions | sha256sum }}
{{- end -}}
