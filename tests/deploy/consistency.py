"""Cross-checks one rendered overlay (tests/deploy/check.sh): the wiring that
no schema sees. Usage: consistency.py RENDERED.yaml OUT_DIR

Checks that the StatefulSet's --config path is the ConfigMap's mount, that
every path of the config (data_dir, tokens_file, tls_cert, tls_key,
tls_client_ca) lies on a mounted volume, that ports and probes match the config's listen and
metrics_listen, that terminationGracePeriodSeconds exceeds
shutdown_grace_seconds, memory_bytes the memory limit's share and
disk_bytes the volume claim, that Services, the PodDisruptionBudget, the
NetworkPolicy and any ServiceMonitor select what they should (the
ServiceMonitor is a CRD, which kubernetes-validate has no schema for).
Writes OUT_DIR/vqkv.yaml (the server config) and, if the overlay ships the
tokens Secret, OUT_DIR/tokens/<tenant> files, for the server run.
Prints one line per check; exits 1 on any failure.
"""
import os
import re
import sys

import yaml

UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40,
         "KIB": 1 << 10, "MIB": 1 << 20, "GIB": 1 << 30, "TIB": 1 << 40,
         "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
         # Kubernetes quantities
         "KI": 1 << 10, "MI": 1 << 20, "GI": 1 << 30, "TI": 1 << 40}

failures = []


def check(ok, what):
    print(f"    {'ok  ' if ok else 'FAIL'} {what}")
    if not ok:
        failures.append(what)


def nbytes(v):
    m = re.fullmatch(r"\s*([0-9.]+)\s*([A-Za-z]*)\s*", str(v))
    if not m or m.group(2).upper() not in UNITS:
        raise ValueError(f"not a byte size: {v!r}")
    return int(float(m.group(1)) * UNITS[m.group(2).upper()])


def port_of(host_port):
    return int(str(host_port).rsplit(":", 1)[1])


def under(path, mounts):
    return any(path == m or path.startswith(m.rstrip("/") + "/")
               for m in mounts)


def main():
    rendered, out = sys.argv[1], sys.argv[2]
    objs = [o for o in yaml.safe_load_all(open(rendered)) if o]
    by_kind = {}
    for o in objs:
        by_kind.setdefault(o["kind"], []).append(o)
    (sts,) = by_kind["StatefulSet"]
    pod = sts["spec"]["template"]
    (ctr,) = pod["spec"]["containers"]
    mounts = {m["mountPath"]: m["name"] for m in ctr["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["spec"].get("volumes", [])}
    claims = {c["metadata"]["name"]: c for c in sts["spec"]["volumeClaimTemplates"]}

    # The config file: --config PATH inside the ConfigMap's mount.
    args = ctr.get("args", [])
    check("--config" in args, "container args pass --config")
    cfg_path = args[args.index("--config") + 1]
    cfg_dir, cfg_file = os.path.split(cfg_path)
    vol = volumes.get(mounts.get(cfg_dir, ""), {})
    cm_name = vol.get("configMap", {}).get("name")
    cms = [c for c in by_kind.get("ConfigMap", []) if c["metadata"]["name"] == cm_name]
    check(len(cms) == 1 and cfg_file in cms[0]["data"],
          f"{cfg_path} is key {cfg_file} of the mounted ConfigMap {cm_name}")
    text = cms[0]["data"][cfg_file]
    cfg = yaml.safe_load(text)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "vqkv.yaml"), "w") as f:
        f.write(text)

    # Paths of the config on mounted volumes.
    data_dir = cfg["data_dir"]
    check(under(data_dir, [m for m, n in mounts.items() if n in claims]),
          f"data_dir {data_dir} is on the pod's PersistentVolumeClaim")
    for key in ("tokens_file", "tls_cert", "tls_key", "tls_client_ca"):
        if key in cfg:
            p = cfg[key]
            m = [mp for mp in mounts if under(p, [mp])]
            ok = bool(m) and "secret" in volumes.get(mounts[m[0]], {})
            check(ok, f"{key} {p} is on a mounted Secret")
    check("tls_cert" in cfg and "tls_key" in cfg or
          "tls_cert" not in cfg and "tls_key" not in cfg,
          "tls_cert and tls_key: both or neither")
    check("tls_client_ca" not in cfg or "tls_cert" in cfg,
          "tls_client_ca (mTLS) only with tls_cert")

    # Ports and probes.
    ports = {p["name"]: p["containerPort"] for p in ctr["ports"]}
    check(ports.get("grpc") == port_of(cfg["listen"]),
          f"containerPort grpc {ports.get('grpc')} = listen {cfg['listen']}")
    check(ports.get("metrics") == port_of(cfg["metrics_listen"]),
          f"containerPort metrics {ports.get('metrics')} = metrics_listen "
          f"{cfg['metrics_listen']}")
    ann = pod["metadata"].get("annotations", {})
    check(ann.get("prometheus.io/port") == str(ports.get("metrics")),
          "prometheus.io/port annotation = metrics port")
    tls = "tls_cert" in cfg
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        pr = ctr.get(probe, {})
        if "grpc" in pr:
            check(not tls and pr["grpc"]["port"] == ports["grpc"],
                  f"{probe}: grpc.health.v1 on the plaintext gRPC port")
        elif "httpGet" in pr:
            hp = pr["httpGet"]
            check(hp["path"] == "/healthz" and hp["port"] in ("metrics", ports["metrics"]),
                  f"{probe}: GET /healthz on the metrics port")
        else:
            check(False, f"{probe} present (grpc or httpGet /healthz)")
    live = ctr["livenessProbe"]
    grace = cfg.get("shutdown_grace_seconds", 10)
    tgps = pod["spec"]["terminationGracePeriodSeconds"]
    check(tgps > grace, f"terminationGracePeriodSeconds {tgps} > "
          f"shutdown_grace_seconds {grace}")
    window = live.get("periodSeconds", 10) * live.get("failureThreshold", 3)
    check(window >= grace, f"liveness tolerates {window} s of failures >= "
          f"shutdown_grace_seconds {grace}")

    # Budgets within the container's limits and the volume claim.
    lim = nbytes(ctr["resources"]["limits"]["memory"])
    mem = nbytes(cfg.get("memory_bytes", "1GiB"))
    check(mem <= lim * 0.8, f"memory_bytes {cfg.get('memory_bytes')} <= 80% "
          f"of the memory limit {ctr['resources']['limits']['memory']}")
    claim = claims[mounts[[m for m in mounts if under(data_dir, [m])][0]]]
    req = claim["spec"]["resources"]["requests"]["storage"]
    check(nbytes(cfg.get("disk_bytes", "16GiB")) <= nbytes(req) * 0.95,
          f"disk_bytes {cfg.get('disk_bytes')} <= 95% of the claim {req}")

    # Selectors.
    pod_labels = pod["metadata"]["labels"]

    def selects(sel):
        return bool(sel) and all(pod_labels.get(k) == v for k, v in sel.items())

    check(selects(sts["spec"]["selector"]["matchLabels"]),
          "StatefulSet selector matches its pods")
    svcs = {s["metadata"]["name"]: s for s in by_kind.get("Service", [])}
    head = svcs.get(sts["spec"]["serviceName"], {})
    check(head.get("spec", {}).get("clusterIP") == "None",
          f"serviceName {sts['spec']['serviceName']} is a headless Service")
    for name, s in svcs.items():
        check(selects(s["spec"]["selector"]), f"Service {name} selects the pods")
        for p in s["spec"]["ports"]:
            check(p["targetPort"] in ports or p["targetPort"] in ports.values(),
                  f"Service {name} port {p['name']} targets a container port")
    for pdb in by_kind.get("PodDisruptionBudget", []):
        check(selects(pdb["spec"]["selector"]["matchLabels"]),
              "PodDisruptionBudget selects the pods")
    for np in by_kind.get("NetworkPolicy", []):
        check(selects(np["spec"]["podSelector"]["matchLabels"]),
              "NetworkPolicy selects the pods")
        allowed = {p["port"] for r in np["spec"]["ingress"] for p in r["ports"]}
        check({"grpc", "metrics"} <= allowed,
              "NetworkPolicy admits the grpc and metrics ports")
    for sm in by_kind.get("ServiceMonitor", []):
        check(sm["apiVersion"] == "monitoring.coreos.com/v1",
              "ServiceMonitor apiVersion monitoring.coreos.com/v1")
        sel = sm["spec"]["selector"]["matchLabels"]
        hit = [n for n, s in svcs.items()
               if all(s["metadata"].get("labels", {}).get(k) == v
                      for k, v in sel.items())]
        check(len(hit) == 1, f"ServiceMonitor selects exactly one Service ({hit})")
        if hit:
            names = {p["name"] for p in svcs[hit[0]]["spec"]["ports"]}
            for ep in sm["spec"]["endpoints"]:
                check(ep["port"] in names and ep.get("path") == "/metrics",
                      f"ServiceMonitor endpoint {ep['port']}{ep.get('path')} "
                      f"exists on Service {hit[0]}")

    # Tokens for the server run, if this overlay ships the Secret.
    vol = volumes.get(mounts.get(cfg.get("tokens_file", ""), ""), {})
    sname = vol.get("secret", {}).get("secretName")
    for s in by_kind.get("Secret", []):
        if s["metadata"]["name"] == sname:
            os.makedirs(os.path.join(out, "tokens"), exist_ok=True)
            for tenant, token in s.get("stringData", {}).items():
                with open(os.path.join(out, "tokens", tenant), "w") as f:
                    f.write(token + "\n")

    if failures:
        print(f"    {len(failures)} consistency check(s) failed")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
