{{/* Names and labels shared by every template. */}}
{{- define "moe-operator.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "moe-operator.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "moe-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "moe-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "moe-operator.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "moe-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: moe-operator
{{- end -}}

{{- define "moe-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "moe-operator.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "moe-operator.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{- define "moe-operator.catalogName" -}}
{{- printf "%s-catalog" (include "moe-operator.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "moe-operator.imagesName" -}}
{{- printf "%s-images" (include "moe-operator.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* True (non-empty) in cluster mode: no watchNamespaces given. */}}
{{- define "moe-operator.clusterMode" -}}
{{- if not .Values.watchNamespaces -}}true{{- end -}}
{{- end -}}

{{/*
Rules for the namespaced resources the operator uses, identical in the ClusterRole (cluster mode) and in each
watched namespace's Role (namespaced mode). Each rule names the code that needs it (docs/install.md, "RBAC").
*/}}
{{- define "moe-operator.workloadRules" -}}
# MoEDeployments: kopf lists and watches them and patches its finalizer and progress annotations;
# handlers/kube.py get_moed reads one.
- apiGroups: [serving.moe-operator.io]
  resources: [moedeployments]
  verbs: [get, list, watch, patch]
# Their status subresource: kopf and handlers/kube.py patch_moed_status write conditions, pools, cost.
- apiGroups: [serving.moe-operator.io]
  resources: [moedeployments/status]
  verbs: [patch]
# The RayService of each MoEDeployment (owned by it: garbage collection deletes it, the operator never does):
# created and replaced by handlers/kube.py, watched by handlers/rayservice.py, patched by the autoscaler's actuator.
- apiGroups: [ray.io]
  resources: [rayservices]
  verbs: [get, list, watch, create, update, patch]
# The RayCluster KubeRay derives from it: KubeRay v1.5.0 does not pass replica changes of a RayService on to its
# running RayCluster, so the autoscaler (handlers/autoscale.py, handlers/kube.py) reads it (ready replicas, finding
# it by owner) and replaces its worker-group replicas. Never create or delete: KubeRay owns its lifecycle.
- apiGroups: [ray.io]
  resources: [rayclusters]
  verbs: [get, list, update]
# The Ray worker pods of a RayCluster: handlers/readiness.py counts the Ready ones per pool (status.pools[].readyReplicas
# and the autoscaler's ready count; KubeRay's status has only cluster-wide counts), and handlers/podwatch.py watches
# our worker pods (label selector) so a pod that stops being Ready shows in status within seconds. No get or writes.
- apiGroups: [""]
  resources: [pods]
  verbs: [list, watch]
# Events on MoEDeployments (handlers/kube.py posts them through the API: reconcile outcomes and scaling decisions).
- apiGroups: [""]
  resources: [events]
  verbs: [create]
# The prefix cache's disk-tier claim of each pool (handlers/cache_claims.py: created owned by the MoEDeployment, read,
# its storage request grown when the spec asks for more). No list, watch or delete (garbage collection removes them).
- apiGroups: [""]
  resources: [persistentvolumeclaims]
  verbs: [get, create, patch]
{{- if .Values.networkPolicy.enabled }}
# The NetworkPolicy of each MoEDeployment (handlers/netpol.py: created owned by it, read and replaced on drift), in
# front of its Ray pods' dashboard and GCS. No list, watch or delete (garbage collection removes it with its owner).
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [get, create, update]
{{- end }}
{{- end -}}


{{- /* Namespaces where the operator may get/create Secrets (the runtime admin token, rebalance.enabled): the
listed rebalance.namespaces, else in namespaced mode every watched namespace; never cluster-wide. */ -}}
{{- define "moe-operator.secretNamespaces" -}}
{{- if .Values.rebalance.enabled -}}
{{- $nss := .Values.rebalance.namespaces | default .Values.watchNamespaces -}}
{{- if not (include "moe-operator.clusterMode" .) -}}
{{- range .Values.rebalance.namespaces -}}
{{- if not (has . $.Values.watchNamespaces) -}}
{{- fail (printf "rebalance.namespaces: %s is not in watchNamespaces" .) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- toJson $nss -}}
{{- else -}}
[]
{{- end -}}
{{- end -}}

{{- /* A label map as k=v,k2=v2 (sorted by key), the form of --kuberay-pod-labels. */ -}}
{{- define "moe-operator.labelList" -}}
{{- $pairs := list -}}
{{- range $k, $v := . -}}{{- $pairs = append $pairs (printf "%s=%s" $k $v) -}}{{- end -}}
{{- join "," $pairs -}}
{{- end -}}
