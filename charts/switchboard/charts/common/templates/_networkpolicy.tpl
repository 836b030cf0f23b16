{{/*
NetworkPolicy: only the gateway's WebSocket port takes traffic from outside
the mesh. gRPC ports accept the mesh (the pods of this release, labelled
app.kubernetes.io/part-of=switchboard) and nothing else; ops ports (metrics)
accept the peers in global.networkPolicy.metricsFrom. Kubelet probes come from
the node and are not subject to these policies on common CNIs.
*/}}
{{- define "common.networkPolicy" -}}
{{- if .Values.global.networkPolicy.enabled -}}
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: {{ include "common.fullname" . }}
  namespace: {{ .Release.Namespace }}
  labels:
    {{- include "common.labels" . | nindent 4 }}
spec:
  podSelector:
    matchLabels:
      {{- include "common.selectorLabels" . | nindent 6 }}
  policyTypes:
    - Ingress
  ingress:
    {{- if .Values.ports.websocket }}
    # Clients, from anywhere unless global.networkPolicy.websocketFrom narrows it (e.g. to the ingress controller).
    - ports:
        - port: websocket
          protocol: TCP
      {{- with .Values.global.networkPolicy.websocketFrom }}
      from:
        {{- toYaml . | nindent 8 }}
      {{- end }}
    {{- end }}
    # The mesh.
    - from:
        - podSelector:
            matchLabels:
              {{- include "common.meshLabels" . | nindent 14 }}
      ports:
        - port: grpc
          protocol: TCP
    # Metrics scrapers.
    - ports:
        - port: ops
          protocol: TCP
      from:
        {{- toYaml .Values.global.networkPolicy.metricsFrom | nindent 8 }}
    {{- with .Values.networkPolicy.extraIngress }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end -}}
{{- end -}}

{{- define "common.serviceMonitor" -}}
{{- if .Values.global.serviceMonitor.enabled -}}
apiVersion: monitoring.coreos.com/v1
kind: ServiceMonitor
metadata:
  name: {{ include "common.fullname" . }}
  namespace: {{ .Release.Namespace }}
  labels:
    {{- include "common.labels" . | nindent 4 }}
    {{- with .Values.global.serviceMonitor.labels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  # job="gateway", job="messaging", …: the alerts and dashboards select by it.
  jobLabel: app.kubernetes.io/name
  selector:
    matchLabels:
      {{- include "common.selectorLabels" . | nindent 6 }}
  namespaceSelector:
    matchNames:
      - {{ .Release.Namespace }}
  endpoints:
    - port: ops
      path: /metrics
      scheme: http
      interval: {{ .Values.global.serviceMonitor.interval }}
      scrapeTimeout: {{ .Values.global.serviceMonitor.scrapeTimeout }}
{{- end -}}
{{- end -}}
