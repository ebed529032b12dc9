#!/usr/bin/env python3
"""Turns `parley export kubernetes` manifests into what `podman kube play` runs.

podman 4.3's kube play knows Pods, Deployments, PersistentVolumeClaims and ConfigMaps, not
StatefulSets ("YAML document does not contain any supported kube kind") nor Services, and its pods
get no cluster DNS. So this does what Kubernetes would: each StatefulSet becomes its pods
(<name>-0, <name>-1, ...) with a claim per volumeClaimTemplate (<claim>-<name>-<n>), and each
headless Service's DNS names (<pod>.<service>) become hostAliases to addresses given to the pods
with `podman kube play --ip`, in the order the pods are written. Containers' ports are dropped
(podman would publish them on the host). Everything else is kept.

  kube_to_pods.py MANIFESTS SUBNET_PREFIX OUT_YAML OUT_ADDRESSES
      SUBNET_PREFIX  e.g. 10.90.0 (pods get .10, .11, ...)
      OUT_ADDRESSES  lines "<pod> <ip>", in --ip order
"""
import copy
import sys

import yaml


def main(manifests, prefix, out_yaml, out_addresses):
    with open(manifests) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    sets = [d for d in docs if d["kind"] == "StatefulSet"]
    headless = {d["metadata"]["name"] for d in docs
                if d["kind"] == "Service" and d["spec"].get("clusterIP") == "None"}
    pods, claims, addresses = [], [], []
    for s in sets:
        name = s["metadata"]["name"]
        for n in range(s["spec"].get("replicas", 1)):
            addresses.append(("%s-%d" % (name, n), "%s.%d" % (prefix, 10 + len(addresses)),
                              s["spec"]["serviceName"]))
    aliases = [{"ip": ip, "hostnames": ["%s.%s" % (pod, svc)]}
               for pod, ip, svc in addresses if svc in headless]
    for s in sets:
        name = s["metadata"]["name"]
        template = s["spec"]["template"]
        for n in range(s["spec"].get("replicas", 1)):
            pod_name = "%s-%d" % (name, n)
            spec = copy.deepcopy(template["spec"])
            spec["hostname"] = pod_name
            spec["subdomain"] = s["spec"]["serviceName"]
            spec["hostAliases"] = aliases
            for c in spec["containers"]:
                # podman publishes a containerPort on the host's port of the same number, so two
                # pods with port 7000 collide ("listen tcp4 :7000: bind: address already in use");
                # in Kubernetes they only name the ports. Pods reach each other at their own IPs.
                c.pop("ports", None)
                # fieldRef env is Kubernetes' to fill in; podman 4.3 leaves it empty.
                for e in c.get("env", []):
                    if e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.name":
                        del e["valueFrom"]
                        e["value"] = pod_name
            for t in s["spec"].get("volumeClaimTemplates", []):
                claim = "%s-%s" % (t["metadata"]["name"], pod_name)
                spec.setdefault("volumes", []).append(
                    {"name": t["metadata"]["name"], "persistentVolumeClaim": {"claimName": claim}})
                claims.append({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                               "metadata": {"name": claim}, "spec": t["spec"]})
            pods.append({"apiVersion": "v1", "kind": "Pod",
                         "metadata": {"name": pod_name, "labels": template["metadata"]["labels"]},
                         "spec": spec})
    kept = [d for d in docs if d["kind"] not in ("StatefulSet", "Service")]
    with open(out_yaml, "w") as f:
        yaml.safe_dump_all(kept + claims + pods, f, sort_keys=False)
    with open(out_addresses, "w") as f:
        for pod, ip, _ in addresses:
            f.write("%s %s\n" % (pod, ip))


if __name__ == "__main__":
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    main(*sys.argv[1:])
