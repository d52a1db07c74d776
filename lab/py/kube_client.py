"""A Watcher/Updater pair on the real Python Kubernetes client.

watcher: watches one configmap and records every event it receives.
updater: creates the configmap, then replaces it every --period on a fresh connection.
With --keepalive SECONDS the watcher's sockets get TCP keepalive (the workaround for
kubernetes-client/python#1234); without it the client's default (none) applies.
Every record is one JSON line: {"t_ns", "who", "event", "detail"}.
"""

import argparse
import json
import socket
import sys
import time

from urllib3.connection import HTTPConnection


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--role", choices=["watcher", "updater"], required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--kubeconfig", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--duration", type=float, required=True)
    p.add_argument("--period", type=float, default=5.0)
    p.add_argument("--keepalive", type=float, default=0.0)
    p.add_argument("--namespace", default="default")
    p.add_argument("--configmap", default="lab-watch")
    a = p.parse_args()

    out = open(a.out, "a", buffering=1)

    def rec(event, **detail):
        out.write(json.dumps({"t_ns": time.time_ns(), "who": a.name, "event": event,
                              "detail": detail}) + "\n")

    if a.keepalive > 0:
        k = max(1, int(round(a.keepalive)))
        HTTPConnection.default_socket_options = HTTPConnection.default_socket_options + [
            (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
            (socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, k),
            (socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, k),
            (socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3),
        ]

    from kubernetes import client, config, watch

    config.load_kube_config(config_file=a.kubeconfig)
    end = time.time() + a.duration

    if a.role == "updater":
        n = 0
        while True:
            # A fresh client per update: the updater itself must not ride an idle connection.
            with client.ApiClient() as api:
                v1 = client.CoreV1Api(api)
                body = {"metadata": {"name": a.configmap}, "data": {"n": str(n)}}
                try:
                    if n == 0:
                        try:
                            v1.create_namespaced_config_map(a.namespace, body)
                        except client.exceptions.ApiException as e:
                            if e.status != 409:
                                raise
                            v1.replace_namespaced_config_map(a.configmap, a.namespace, body)
                    else:
                        v1.replace_namespaced_config_map(a.configmap, a.namespace, body)
                    rec("updated", n=n)
                except Exception as e:  # recorded, and the loop goes on: this is a probe
                    rec("update_error", n=n, error=str(e))
            n += 1
            if time.time() + a.period > end:
                break
            time.sleep(a.period)
        return 0

    v1 = client.CoreV1Api()
    rec("watch_start", keepalive=a.keepalive)
    try:
        w = watch.Watch()
        for ev in w.stream(v1.list_namespaced_config_map, a.namespace,
                           field_selector="metadata.name=" + a.configmap,
                           timeout_seconds=max(1, int(a.duration))):
            data = ev["object"].data or {}
            rec("event", type=ev["type"], n=data.get("n"))
            if time.time() > end:
                break
        rec("watch_end")
    except Exception as e:
        rec("watch_error", error=str(e))
    return 0


if __name__ == "__main__":
    sys.exit(main())
