{{/*
The Deployment of one service. Probes use the service's own ops endpoints:
/healthz (alive) for startup and liveness, /readyz (every dependency answers,
not draining) for readiness. On termination the pod first sleeps through
preStop (endpoints stop routing to it), then SIGTERM starts the service's own
drain bounded by SHUTDOWN_DEADLINE_MS; terminationGracePeriodSeconds covers
both plus a margin, so the kubelet never kills a pod mid-drain.
*/}}

{{- define "common.shutdownDeadlineSeconds" -}}
{{- $ms := .Values.config.SHUTDOWN_DEADLINE_MS | default 10000 | int64 -}}
{{- div (add $ms 999) 1000 -}}
{{- end -}}

{{/* The grace period the drain needs: preStop sleep + shutdown deadline + margin. */}}
{{- define "common.requiredGracePeriodSeconds" -}}
{{- add (.Values.lifecycle.preStopSleepSeconds | int64) (include "common.shutdownDeadlineSeconds" . | int64) (.Values.lifecycle.gracePeriodMarginSeconds | int64) -}}
{{- end -}}

{{- define "common.terminationGracePeriodSeconds" -}}
{{- $required := include "common.requiredGracePeriodSeconds" . | int64 -}}
{{- if .Values.lifecycle.terminationGracePeriodSeconds -}}
{{- $given := .Values.lifecycle.terminationGracePeriodSeconds | int64 -}}
{{- if lt $given $required -}}
{{- fail (printf "%s: lifecycle.terminationGracePeriodSeconds=%d is shorter than preStopSleepSeconds + SHUTDOWN_DEADLINE_MS + gracePeriodMarginSeconds = %d; the kubelet would kill pods mid-drain" .Chart.Name $given $required) -}}
{{- end -}}
{{- $given -}}
{{- else -}}
{{- $required -}}
{{- end -}}
{{- end -}}

{{- define "common.podSecurityContext" -}}
{{- toYaml (merge (deepCopy (.Values.podSecurityContext | default dict)) (deepCopy .Values.global.podSecurityContext)) -}}
{{- end -}}

{{- define "common.containerSecurityContext" -}}
{{- toYaml (merge (deepCopy (.Values.containerSecurityContext | default dict)) (deepCopy .Values.global.containerSecurityContext)) -}}
{{- end -}}

{{- define "common.probes" -}}
startupProbe:
  httpGet:
    path: /healthz
    port: ops
  periodSeconds: {{ .Values.probes.startup.periodSeconds }}
  timeoutSeconds: {{ .Values.probes.startup.timeoutSeconds }}
  failureThreshold: {{ .Values.probes.startup.failureThreshold }}
livenessProbe:
  httpGet:
    path: /healthz
    port: ops
  periodSeconds: {{ .Values.probes.liveness.periodSeconds }}
  timeoutSeconds: {{ .Values.probes.liveness.timeoutSeconds }}
  failureThreshold: {{ .Values.probes.liveness.failureThreshold }}
readinessProbe:
  httpGet:
    path: /readyz
    port: ops
  periodSeconds: {{ .Values.probes.readiness.periodSeconds }}
  timeoutSeconds: {{ .Values.probes.readiness.timeoutSeconds }}
  failureThreshold: {{ .Values.probes.readiness.failureThreshold }}
  successThreshold: 1
{{- end -}}

{{/* Spread replicas over zones and nodes unless the values say otherwise. */}}
{{- define "common.topologySpread" -}}
{{- if .Values.topologySpreadConstraints -}}
{{- toYaml .Values.topologySpreadConstraints -}}
{{- else -}}
- maxSkew: 1
  topologyKey: topology.kubernetes.io/zone
  whenUnsatisfiable: ScheduleAnyway
  labelSelector:
    matchLabels:
      {{- include "common.selectorLabels" . | nindent 6 }}
- maxSkew: 1
  topologyKey: kubernetes.io/hostname
  whenUnsatisfiable: ScheduleAnyway
  labelSelector:
    matchLabels:
      {{- include "common.selectorLabels" . | nindent 6 }}
{{- end -}}
{{- end -}}

{{/* Environment entries beyond the ConfigMap: secret references, pod fields, extraEnv. */}}
{{- define "common.env" -}}
{{- include "common.secretEnv" . }}
{{- include (printf "%s.podEnv" .Chart.Name) . }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "common.deployment" -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "common.fullname" . }}
  namespace: {{ .Release.Namespace }}
  labels:
    {{- include "common.labels" . | nindent 4 }}
spec:
  {{- if not .Values.autoscaling.enabled }}
  replicas: {{ .Values.replicaCount }}
  {{- end }}
  revisionHistoryLimit: 5
  selector:
    matchLabels:
      {{- include "common.selectorLabels" . | nindent 6 }}
  strategy:
    type: RollingUpdate
    rollingUpdate:
      maxUnavailable: 0
      maxSurge: {{ .Values.rollingUpdate.maxSurge }}
  template:
    metadata:
      labels:
        {{- include "common.labels" . | nindent 8 }}
        {{- with .Values.podLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      annotations:
        checksum/config: {{ include "common.configmap" . | sha256sum }}
        checksum/secret-refs: {{ include "common.secretRefsChecksum" . }}
        {{- with .Values.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    spec:
      serviceAccountName: {{ include "common.serviceAccountName" . }}
      automountServiceAccountToken: false
      {{- with .Values.global.imagePullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with .Values.priorityClassName }}
      priorityClassName: {{ . }}
      {{- end }}
      securityContext:
        {{- include "common.podSecurityContext" . | nindent 8 }}
      terminationGracePeriodSeconds: {{ include "common.terminationGracePeriodSeconds" . }}
      containers:
        - name: {{ include "common.name" . }}
          image: {{ include "common.image" . | quote }}
          imagePullPolicy: {{ include "common.imagePullPolicy" . }}
          {{- with .Values.args }}
          args:
            {{- toYaml . | nindent 12 }}
          {{- end }}
          ports:
            {{- with .Values.ports.websocket }}
            - name: websocket
              containerPort: {{ . }}
              protocol: TCP
            {{- end }}
            - name: grpc
              containerPort: {{ .Values.ports.grpc }}
              protocol: TCP
            - name: ops
              containerPort: {{ .Values.ports.ops }}
              protocol: TCP
          envFrom:
            - configMapRef:
                name: {{ include "common.fullname" . }}
          {{- $env := include "common.env" . | trim }}
          {{- if $env }}
          env:
            {{- $env | nindent 12 }}
          {{- end }}
          {{- include "common.probes" . | nindent 10 }}
          lifecycle:
            preStop:
              sleep:
                seconds: {{ .Values.lifecycle.preStopSleepSeconds }}
          resources:
            {{- toYaml .Values.resources | nindent 12 }}
          securityContext:
            {{- include "common.containerSecurityContext" . | nindent 12 }}
          volumeMounts:
            - name: tmp
              mountPath: /tmp
            {{- include "common.secretVolumeMounts" . | nindent 12 }}
      volumes:
        # The root file system is read-only; Node.js and its libraries may still want a scratch /tmp.
        - name: tmp
          emptyDir:
            sizeLimit: 64Mi
        {{- include "common.secretVolumes" . | nindent 8 }}
      topologySpreadConstraints:
        {{- include "common.topologySpread" . | nindent 8 }}
      {{- with .Values.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with .Values.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with .Values.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
{{- end -}}
