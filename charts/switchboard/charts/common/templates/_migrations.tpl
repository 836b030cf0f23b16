{{/*
Schema migrations as a Helm hook: a Job that runs `node dist/migrate.js` from
the service's own image before install and before every upgrade, so the new
schema is in place before new pods start and a failed migration stops the
upgrade instead of crash-looping pods. The chart's ConfigMap does not exist
yet at pre-install, so the Job carries its environment inline. Its pods are
labelled <service>-migrate: the Service and the PDB never select them.
*/}}
{{- define "common.migrationsName" -}}
{{- printf "%s-migrate" (include "common.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "common.migrationsLabels" -}}
app.kubernetes.io/name: {{ printf "%s-migrate" (include "common.name" .) }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/part-of: switchboard
app.kubernetes.io/component: migrations
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* The service's secret references, with DATABASE_URL from migrations.postgres when set (a role that may change the schema). */}}
{{- define "common.migrationsSecretEnv" -}}
{{- $own := .Values.migrations.postgres | default dict }}
{{- range $ref := include "common.secretRefs" . | fromYamlArray }}
{{- if and (eq $ref.env "DATABASE_URL") $own.existingSecret }}
{{- $_ := set $ref "secret" $own.existingSecret }}
{{- $_ := set $ref "key" ($own.secretKey | default "url") }}
{{- end }}
- name: {{ $ref.env }}
  valueFrom:
    secretKeyRef:
      name: {{ $ref.secret | quote }}
      key: {{ $ref.key | quote }}
{{- end }}
{{- end -}}

{{- define "common.migrations" -}}
{{- if .Values.migrations.enabled -}}
apiVersion: v1
kind: ServiceAccount
metadata:
  name: {{ include "common.migrationsName" . }}
  namespace: {{ .Release.Namespace }}
  labels:
    {{- include "common.migrationsLabels" . | nindent 4 }}
  annotations:
    helm.sh/hook: pre-install,pre-upgrade
    helm.sh/hook-weight: "-10"
    helm.sh/hook-delete-policy: before-hook-creation
    {{- with .Values.serviceAccount.annotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
automountServiceAccountToken: false
---
apiVersion: batch/v1
kind: Job
metadata:
  name: {{ include "common.migrationsName" . }}
  namespace: {{ .Release.Namespace }}
  labels:
    {{- include "common.migrationsLabels" . | nindent 4 }}
  annotations:
    helm.sh/hook: pre-install,pre-upgrade
    helm.sh/hook-weight: "0"
    # A failed Job stays for `kubectl logs` until the next attempt replaces it.
    helm.sh/hook-delete-policy: before-hook-creation,hook-succeeded
spec:
  backoffLimit: {{ .Values.migrations.backoffLimit }}
  activeDeadlineSeconds: {{ .Values.migrations.activeDeadlineSeconds }}
  template:
    metadata:
      labels:
        {{- include "common.migrationsLabels" . | nindent 8 }}
    spec:
      restartPolicy: Never
      serviceAccountName: {{ include "common.migrationsName" . }}
      automountServiceAccountToken: false
      {{- with .Values.global.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      securityContext:
        {{- include "common.podSecurityContext" . | nindent 8 }}
      containers:
        - name: migrate
          image: {{ include "common.image" . | quote }}
          imagePullPolicy: {{ include "common.imagePullPolicy" . }}
          args: ["node", "dist/migrate.js"]
          env:
            {{- range $name, $value := include "common.configData" . | fromYaml }}
            - name: {{ $name }}
              value: {{ $value | quote }}
            {{- end }}
            {{- include "common.migrationsSecretEnv" . | nindent 12 }}
          resources:
            {{- toYaml .Values.migrations.resources | nindent 12 }}
          securityContext:
            {{- include "common.containerSecurityContext" . | nindent 12 }}
          volumeMounts:
            - name: tmp
              mountPath: /tmp
      volumes:
        - name: tmp
          emptyDir:
            sizeLimit: 64Mi
      {{- with .Values.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with .Values.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
{{- end -}}
{{- end -}}
