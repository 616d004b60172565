#!/usr/bin/env python3
"""Structural checks on rendered Kustomize output (run by deploy/check.sh).

kubernetes-validate checks each object against the Kubernetes schemas; this checks what
the schemas cannot: that objects agree with each other and with the gateway's drain.

usage: check_manifests.py OVERLAY_NAME RENDERED.yaml
"""
import base64
import re
import sys

import yaml

DEFAULT_DRAIN_S = 10.0  # gateway --drain-period default
CLOSE_WAIT_S = 5.0  # the gateway waits up to 5s for close handshakes after the drain (gateway/src/lib.rs)


def seconds(text):
    total = 0.0
    for num, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text):
        total += float(num) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]
    return total


def main():
    overlay, path = sys.argv[1], sys.argv[2]
    with open(path, encoding="utf-8") as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    errors = []

    def by_kind(kind):
        return [d for d in docs if d.get("kind") == kind]

    def need(cond, msg):
        if not cond:
            errors.append(f"{overlay}: {msg}")

    configmaps = {d["metadata"]["name"]: d.get("data", {}) for d in by_kind("ConfigMap")}
    services = by_kind("Service")
    deployments = [d for d in by_kind("Deployment") if d["metadata"]["name"] == "tidings-gateway"]
    need(len(deployments) == 1, "exactly one Deployment tidings-gateway")
    for dep in deployments:
        spec = dep["spec"]
        pod = spec["template"]["spec"]
        labels = spec["template"]["metadata"]["labels"]
        containers = [c for c in pod["containers"] if c["name"] == "gateway"]
        need(len(containers) == 1, "a container named gateway")
        c = containers[0]
        env = {}
        for src in c.get("envFrom", []):
            ref = src.get("configMapRef")
            if ref:
                need(ref["name"] in configmaps, f"envFrom ConfigMap {ref['name']} is rendered")
                env.update(configmaps.get(ref["name"], {}))
        for e in c.get("env", []):
            env[e["name"]] = e.get("value", "<from " + str(list(e.get("valueFrom", {}))) + ">")
        need("TIDINGS_REDIS_URL" in env, "TIDINGS_REDIS_URL is set (replicas need a shared broker)")

        drain = seconds(env.get("TIDINGS_DRAIN_PERIOD", "")) or DEFAULT_DRAIN_S
        pre = c.get("lifecycle", {}).get("preStop", {})
        pre_s = pre.get("sleep", {}).get("seconds", 0)
        need("exec" not in pre, "preStop must not exec: the image has no shell")
        grace = pod.get("terminationGracePeriodSeconds", 30)
        need(
            grace > pre_s + drain + CLOSE_WAIT_S,
            f"terminationGracePeriodSeconds {grace} must exceed preStop {pre_s}s + "
            f"drain {drain}s + {CLOSE_WAIT_S}s",
        )

        ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
        admin_port = int(env.get("TIDINGS_ADMIN_LISTEN", "0.0.0.0:9090").rsplit(":", 1)[1])
        ws_port = int(env.get("TIDINGS_LISTEN", "0.0.0.0:8080").rsplit(":", 1)[1])
        need(ports.get("admin") == admin_port, f"container port admin == {admin_port}")
        need(ports.get("ws") == ws_port, f"container port ws == {ws_port}")
        for probe, want in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz"),
                            ("startupProbe", "/healthz")):
            get = c.get(probe, {}).get("httpGet")
            if probe != "startupProbe" or get:
                need(get is not None, f"{probe} is an httpGet")
                if get:
                    need(get.get("path") == want, f"{probe} path {want}")
                    port = get.get("port")
                    need(ports.get(port, port) == admin_port, f"{probe} on the admin port")

        sc = c.get("securityContext", {})
        psc = pod.get("securityContext", {})
        need(sc.get("readOnlyRootFilesystem") is True, "readOnlyRootFilesystem")
        need(sc.get("allowPrivilegeEscalation") is False, "allowPrivilegeEscalation false")
        need(sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True, "runAsNonRoot")
        need("ALL" in sc.get("capabilities", {}).get("drop", []), "capabilities drop ALL")
        res = c.get("resources", {})
        need(res.get("requests") and res.get("limits"), "resource requests and limits")
        need(pod.get("topologySpreadConstraints"), "topologySpreadConstraints")
        need(pod.get("enableServiceLinks") is False, "enableServiceLinks false")
        ru = spec.get("strategy", {}).get("rollingUpdate", {})
        need(ru.get("maxUnavailable") in (0, "0", "0%"), "rollingUpdate.maxUnavailable 0")

        # Volumes that reference Secrets: mounted where the *_FILE settings point.
        mounts = [m["mountPath"] for m in c.get("volumeMounts", [])]
        for key in ("TIDINGS_JWT_SECRET_FILE", "TIDINGS_API_KEY_FILE"):
            if key in env:
                need(any(env[key].startswith(m.rstrip("/") + "/") for m in mounts),
                     f"{key}={env[key]} lies under a volume mount")

        def selects(selector):
            return all(labels.get(k) == v for k, v in selector.items())

        svc = [s for s in services if selects(s["spec"].get("selector", {}))]
        need(svc, "a Service selects the gateway pods")
        for s in svc:
            for p in s["spec"]["ports"]:
                tp = p.get("targetPort", p["port"])
                need(tp in ports or tp in ports.values(), f"Service port {p['name']} targets a container port")
        for kind in ("PodDisruptionBudget", "NetworkPolicy"):
            objs = by_kind(kind)
            need(objs, f"a {kind}")
            for o in objs:
                sel = (o["spec"].get("selector") or o["spec"].get("podSelector") or {}).get("matchLabels", {})
                need(selects(sel), f"{kind} {o['metadata']['name']} selects the gateway pods")
        for hpa in by_kind("HorizontalPodAutoscaler"):
            ref = hpa["spec"]["scaleTargetRef"]
            need(ref["kind"] == "Deployment" and ref["name"] == dep["metadata"]["name"],
                 "HPA targets the Deployment")
            need(hpa["spec"].get("minReplicas", 1) >= 2, "HPA minReplicas >= 2")
        for sm in by_kind("ServiceMonitor"):
            need(sm["apiVersion"] == "monitoring.coreos.com/v1", "ServiceMonitor apiVersion")
            sel = sm["spec"]["selector"]["matchLabels"]
            targets = [s for s in svc if all(s["metadata"].get("labels", {}).get(k) == v for k, v in sel.items())]
            need(targets, "ServiceMonitor selects the gateway Service")
            for ep in sm["spec"]["endpoints"]:
                need(ep.get("path", "/metrics") == "/metrics", "ServiceMonitor path /metrics")
                need(any(p["name"] == ep["port"] and p.get("targetPort") in ("admin", admin_port)
                         for s in targets for p in s["spec"]["ports"]),
                     "ServiceMonitor scrapes the admin port")
            job_label = sm["spec"].get("jobLabel")
            need(job_label and all(s["metadata"]["labels"].get(job_label) == "tidings" for s in targets),
                 "ServiceMonitor jobLabel yields job=\"tidings\" (the alert rules select on it)")
        for ing in by_kind("Ingress"):
            ann = ing["metadata"].get("annotations", {})
            for a in ("proxy-read-timeout", "proxy-send-timeout"):
                v = ann.get(f"nginx.ingress.kubernetes.io/{a}")
                need(v is not None and int(v) >= 300, f"Ingress {a} >= 300s")

    # No secret values other than obvious development or placeholder ones.
    for s in by_kind("Secret"):
        values = list((s.get("stringData") or {}).values())
        values += [base64.b64decode(v).decode() for v in (s.get("data") or {}).values()]
        need(all(re.search(r"(?i)change-me|replace-me", v) for v in values),
             f"Secret {s['metadata']['name']} holds only placeholder/dev values")

    for e in errors:
        print("FAIL", e)
    if errors:
        sys.exit(1)
    print(f"{overlay}: {len(docs)} objects, structure consistent")


if __name__ == "__main__":
    main()
