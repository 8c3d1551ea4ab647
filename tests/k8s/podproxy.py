"""Inside the pod network namespace: make each pod address answer like the TF Serving that pod runs.

One `python -m aviary.serving` serves every version on the volume; a pod's TF Serving would serve
only the versions its model config pins (read once, at container start), with its labels. This
forwarder, listening on every pod address, looks up the dialed address in the kubelet's pins file
and rewrites the model path onto that pod's pinned version before forwarding:
`/v1/models/m[...]` -> `/versions/<pin>`, `/labels/L` -> the version L labels, a version the pod
does not pin -> 404, as TF Serving answers.

    python tests/k8s/podproxy.py PORT UPSTREAM PINS_JSON
"""

from __future__ import annotations

import json
import re
import sys
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


def app(upstream: str, pins_file: Path) -> web.Application:
    async def forward(request: web.Request) -> web.StreamResponse:
        sockname = request.transport.get_extra_info("sockname") if request.transport else None
        ip = sockname[0] if sockname else ""
        try:
            config = json.loads(pins_file.read_text()).get(ip)
        except (OSError, ValueError):
            config = None
        if config is None:
            return web.json_response({"error": f"no pod runs on {ip}"}, status=503)
        path, status, error = rewrite(request.path, config)
        if path is None:
            return web.json_response({"error": error}, status=status)
        async with aiohttp.ClientSession() as session, session.request(
            request.method, f"{upstream}{path}", data=await request.read(),
            headers={"Content-Type": request.headers.get("Content-Type", "application/json")},
        ) as answer:
            return web.Response(body=await answer.read(), status=answer.status,
                                headers={"Content-Type": answer.headers.get("Content-Type", "application/json")})

    application = web.Application()
    application.router.add_route("*", "/{tail:.*}", forward)
    return application


if __name__ == "__main__":
    port, upstream, pins_path = int(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    web.run_app(app(upstream, pins_path), host="0.0.0.0", port=port, print=None)  # noqa: S104 - inside the namespace
