#!/bin/sh
# feip pre-delete hook (see "uninstall" in values.yaml and the chart README).
#
# 1. Stop the controller: scale its Deployment to 0 and wait until its pods are gone, so no
#    replica can re-add the finalizer afterwards.
# 2. Remove the finalizer feip.io/release, and only it, from every FloatingElasticIP this
#    release manages (WATCH_NAMESPACES, comma separated; empty = all namespaces). The
#    addresses stay associated (Retain); the objects stay and are adopted unchanged by a
#    later install.
# 3. Delete the leader election Lease (the controller created it; Helm does not know it).
#
# Needs kubectl and a POSIX shell. Inputs (environment): RELEASE_NAMESPACE, DEPLOYMENT,
# POD_SELECTOR, LEADER_LEASE, POD_TERMINATION_TIMEOUT (seconds), WATCH_NAMESPACES.
set -eu

finalizer=feip.io/release
ns_flag="--namespace=$RELEASE_NAMESPACE"

echo "feip uninstall: stopping the controller (deployment/$DEPLOYMENT in $RELEASE_NAMESPACE)"
deployment=$(kubectl "$ns_flag" get deployment "$DEPLOYMENT" --ignore-not-found -o name)
if [ -n "$deployment" ]; then
  kubectl "$ns_flag" scale deployment "$DEPLOYMENT" --replicas=0
else
  echo "deployment/$DEPLOYMENT not found: nothing to scale"
fi

deadline=$(( $(date +%s) + POD_TERMINATION_TIMEOUT ))
while :; do
  pods=$(kubectl "$ns_flag" get pods -l "$POD_SELECTOR" -o name)
  if [ -z "$pods" ]; then
    break
  fi
  if [ "$(date +%s)" -ge "$deadline" ]; then
    echo "controller pods still present after ${POD_TERMINATION_TIMEOUT}s:" $pods >&2
    exit 1
  fi
  echo "waiting for controller pods to terminate:" $pods
  sleep 2
done
echo "controller stopped"

# "<namespace> <name> <index of the finalizer>" per object that carries it.
template='{{range .items}}{{$ns := .metadata.namespace}}{{$name := .metadata.name}}{{range $i, $f := .metadata.finalizers}}{{if eq $f "feip.io/release"}}{{$ns}} {{$name}} {{$i}}{{"\n"}}{{end}}{{end}}{{end}}'

list_pending() {
  if [ -z "${WATCH_NAMESPACES:-}" ]; then
    kubectl get floatingelasticips --all-namespaces -o go-template="$template" || return 1
  else
    old_ifs=$IFS
    IFS=,
    for ns in $WATCH_NAMESPACES; do
      IFS=$old_ifs
      kubectl get floatingelasticips --namespace="$ns" -o go-template="$template" || return 1
    done
    IFS=$old_ifs
  fi
}

resources=$(kubectl api-resources --api-group=feip.io -o name)
case "$resources" in
  *floatingelasticips*)
    pass=0
    while :; do
      pass=$((pass + 1))
      pending=$(list_pending)
      if [ -z "$pending" ]; then
        break
      fi
      if [ "$pass" -gt 5 ]; then
        echo "the finalizer $finalizer is still present after 5 passes:" >&2
        echo "$pending" >&2
        exit 1
      fi
      echo "$pending" | while read -r ns name index; do
        # The test op makes the removal safe against a concurrent change of the list.
        patch="[{\"op\":\"test\",\"path\":\"/metadata/finalizers/$index\",\"value\":\"$finalizer\"},{\"op\":\"remove\",\"path\":\"/metadata/finalizers/$index\"}]"
        if kubectl --namespace="$ns" patch floatingelasticip "$name" --type=json -p "$patch" >/dev/null; then
          echo "removed $finalizer from floatingelasticip $ns/$name (its address stays associated)"
        else
          echo "floatingelasticip $ns/$name changed meanwhile; retrying"
        fi
      done
    done
    ;;
  *)
    echo "the FloatingElasticIP API is not installed: no finalizers to remove"
    ;;
esac

kubectl "$ns_flag" delete lease "$LEADER_LEASE" --ignore-not-found
echo "feip uninstall: done"
