"""Inside the pod network namespace: make each pod address answer like the TF Serving that pod runs.

One `python -m aviary.serving` serves every version on the volume; a pod's TF Serving would serve
only the versions its model config pins (read once, at container start), with its labels. This
forwarder, listening on every pod address, looks up the dialed address in the kubelet's pins file (a pod that runs its own server: forwarded
there as it is)
and rewrites the model path onto that pod's pinned version before forwarding:
`/v1/models/m[...]` -> `/versions/<pin>`, `/labels/L` -> the version L labels, a version the pod
does not pin -> 404, as TF Serving answers. Each pod also has its own Prometheus page at
`/monitoring/prometheus/metrics`, as TF Serving's: its predict requests by status and their latency,
labelled by `model_name` and never by version (a pod's counters start at zero with the pod). Every
answer names the pod address that gave it (`X-Pod-IP`), so a test sees which pods a Service reaches.

    python tests/k8s/podproxy.py PORT UPSTREAM PINS_JSON
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

import aiohttp
from aiohttp import web

MODEL_PATH = re.compile(r"^/v1/models/(?P<model>[^/:]+)(?:/versions/(?P<version>\d+)|/labels/(?P<label>[^/:]+))?(?P<rest>.*)$")


def pins(config: str) -> tuple[list[int], dict[str, int]]:
    versions = [int(v) for v in re.findall(r"versions:\s*(\d+)", config)]
    labels = {k: int(v) for k, v in re.findall(r'version_labels\s*\{\s*key:\s*"([^"]+)"\s*value:\s*(\d+)', config)}
    return versions, labels


def rewrite(path: str, config: str) -> tuple[str | None, int, str]:
    """The upstream path, or (None, status, error) where the pod's TF Serving would refuse."""
    match = MODEL_PATH.match(path)
    versions, labels = pins(config)
    if match is None or not versions:
        return path, 200, ""
    model, rest = match["model"], match["rest"]
    if model not in re.findall(r'name:\s*"([^"]+)"', config):  # a pod serves only its config's model: 404, as TF Serving
        return None, 404, f"Servable not found for request: Latest({model})"
    if match["label"] is not None:
        if match["label"] not in labels:
            return None, 400, f"Unrecognized servable version label: {match['label']}"
        version = labels[match["label"]]
    elif match["version"] is not None:
        version = int(match["version"])
    else:
        version = max(versions)
    if version not in versions:
        return None, 404, f"Could not find version {version} of model {model}"
    return f"/v1/models/{model}/versions/{version}{rest}", 200, ""


METRICS_PATH = "/monitoring/prometheus/metrics"
POD_HEADER = "X-Pod-IP"
BUCKETS_US = [10 * 1.8**i for i in range(33)]  # TF Serving's request_latency buckets (microseconds)
STATUS = {200: "OK", 400: "INVALID_ARGUMENT", 404: "NOT_FOUND", 503: "UNAVAILABLE"}


class PodMetrics:
    """One pod's TF Serving counters."""

    def __init__(self) -> None:
        self.count: dict[tuple[str, str], int] = {}  # (model, status) -> requests
        self.latency: dict[str, list[float]] = {}  # model -> latencies in microseconds

    def observe(self, model: str, status: int, latency_us: float) -> None:
        key = (model, STATUS.get(status, "UNKNOWN"))
        self.count[key] = self.count.get(key, 0) + 1
        self.latency.setdefault(model, []).append(latency_us)

    def render(self) -> str:
        count, latency = ":tensorflow:serving:request_count", ":tensorflow:serving:request_latency"
        lines = [f"# TYPE {count} counter"]
        lines += [f'{count}{{model_name="{m}",status="{s}"}} {n}' for (m, s), n in sorted(self.count.items())]
        lines.append(f"# TYPE {latency} histogram")
        for model, values in sorted(self.latency.items()):
            labels = f'model_name="{model}",API="predict",entrypoint="REST"'
            for bound in BUCKETS_US:
                lines.append(f'{latency}_bucket{{{labels},le="{bound:g}"}} {sum(v <= bound for v in values)}')
            lines.append(f'{latency}_bucket{{{labels},le="+Inf"}} {len(values)}')
            lines.append(f"{latency}_sum{{{labels}}} {sum(values)}")
            lines.append(f"{latency}_count{{{labels}}} {len(values)}")
        return "\n".join(lines) + "\n"


def app(upstream: str, pins_file: Path) -> web.Application:
    metrics: dict[tuple[str, str], PodMetrics] = {}  # (pod IP, the config it started with) -> counters

    async def identified(request: web.Request) -> web.StreamResponse:
        sockname = request.transport.get_extra_info("sockname") if request.transport else None
        ip = sockname[0] if sockname else ""
        response = await forward(request, ip)
        response.headers[POD_HEADER] = ip
        return response

    async def forward(request: web.Request, ip: str) -> web.StreamResponse:
        try:
            config = json.loads(pins_file.read_text()).get(ip)
        except (OSError, ValueError):
            config = None
        if config is None:
            return web.json_response({"error": f"no pod runs on {ip}"}, status=503)
        if isinstance(config, dict):  # a pod running the project's own server: forwarded as it is
            return await relay(request, f"{config['upstream']}{request.path_qs}")
        pod = metrics.setdefault((ip, config), PodMetrics())
        if request.path == METRICS_PATH:
            return web.Response(text=pod.render(), content_type="text/plain")
        started = time.perf_counter()
        match = MODEL_PATH.match(request.path)
        counted = request.method == "POST" and match is not None and match["rest"] == ":predict"
        path, status, error = rewrite(request.path, config)
        if path is None:
            if counted and match is not None:
                pod.observe(match["model"], status, (time.perf_counter() - started) * 1e6)
            return web.json_response({"error": error}, status=status)
        async with aiohttp.ClientSession() as session, session.request(
            request.method, f"{upstream}{path}", data=await request.read(),
            headers={"Content-Type": request.headers.get("Content-Type", "application/json")},
        ) as answer:
            body = await answer.read()
        if counted and match is not None:
            pod.observe(match["model"], answer.status, (time.perf_counter() - started) * 1e6)
        return web.Response(body=body, status=answer.status,
                            headers={"Content-Type": answer.headers.get("Content-Type", "application/json")})

    async def relay(request: web.Request, url: str) -> web.Response:
        try:
            async with aiohttp.ClientSession() as session, session.request(
                request.method, url, data=await request.read(),
                headers={"Content-Type": request.headers.get("Content-Type", "application/json")},
            ) as answer:
                body = await answer.read()
        except aiohttp.ClientError as error:  # still starting
            return web.json_response({"error": str(error)}, status=503)
        return web.Response(body=body, status=answer.status,
                            headers={"Content-Type": answer.headers.get("Content-Type", "application/json")})

    application = web.Application()
    application.router.add_route("*", "/{tail:.*}", identified)
    return application


if __name__ == "__main__":
    port, upstream, pins_path = int(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    web.run_app(app(upstream, pins_path), host="0.0.0.0", port=port, print=None)  # noqa: S104 - inside the namespace
