"""What a person reads about a version: its pictures, its status, and two versions side by side.

Pictures live beside the versions, never inside them: `<store>/<model>/reports/<version>/<name>.png`.
TF Serving only loads numeric children, so a rejected version has pictures too and a served version's
directory stays exactly what export wrote. In Prefect artifacts the pictures are embedded as `data:` URIs,
which the UI renders as images: the artifact carries them, so they show on a shared server that cannot
read this machine's store.
"""

from __future__ import annotations

import base64
import html
import json
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

from aviary.config import _features_by_column
from aviary.store import METADATA_FILE, History, ModelStore

REPORTS_DIR = "reports"
ROLLOUTS_DIR = "rollouts"
"""Where each rollout leaves its record (`<version>/<time>.json`, with a PNG beside it)."""
PICTURE_TITLES = {
    "pr_curve": "Precision-recall",
    "roc_curve": "ROC",
    "confusion_matrix": "Confusion matrix",
    "versus_baseline": "Beside the baseline, same eval set",
    "history": "All versions",
}
T = TypeVar("T")
METRICS = ("precision", "recall", "f1", "accuracy", "roc_auc", "pr_auc")
PASS, FAIL = "✅", "❌"


# -- pictures on disk ---------------------------------------------------------


def reports_dir(store: ModelStore, version: int) -> Path:
    return store.base / REPORTS_DIR / str(version)


def write_pictures(store: ModelStore, version: int, pictures: Mapping[str, bytes]) -> dict[str, Path]:
    """All of a version's pictures appear at once: written beside, then swapped in."""
    final = reports_dir(store, version)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=final.parent))
    try:
        for name, png in pictures.items():
            (tmp / f"{name}.png").write_bytes(png)
        old = final.with_name(f".old-{version}-{os.getpid()}")
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {name: final / f"{name}.png" for name in pictures}


def read_pictures(store: ModelStore, version: int) -> dict[str, bytes]:
    d = reports_dir(store, version)
    if not d.is_dir():
        return {}
    return {p.stem: p.read_bytes() for p in sorted(d.glob("*.png"))}


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def img(png: bytes, alt: str, width: int | None = None) -> str:
    size = f' width="{width}"' if width else ""
    return f'<img alt="{html.escape(alt)}" src="{data_uri(png)}"{size}>'


def pictures_markdown(title: str, pictures: Mapping[str, bytes], where: Path | None = None) -> str:
    """One markdown artifact: the pictures side by side, in the order of PICTURE_TITLES."""
    ordered = [n for n in PICTURE_TITLES if n in pictures] + [n for n in pictures if n not in PICTURE_TITLES]
    body = [f"# {title}", ""]
    body.append(" ".join(img(pictures[n], PICTURE_TITLES.get(n, n), 380) for n in ordered))  # two to a row
    if where is not None:
        body += ["", f"Kept in `{where}`."]
    return "\n".join(body) + "\n"


# -- what a version is --------------------------------------------------------


@dataclass(frozen=True)
class VersionRecord:
    version: int
    status: str
    """production, canary, withdrawn, previously production, blessed (never promoted), rejected."""
    data: dict[str, Any]
    """The version's metadata as written (export's aviary.json, or the rejected record): every key, known or not."""

    @property
    def metrics(self) -> dict[str, Any]:
        return dict(self.data.get("metrics") or {})

    @property
    def shipped(self) -> bool:
        return self.status in ("production", "previously production", "withdrawn")


def version_status(store: ModelStore, version: int) -> str:
    aliases = store.aliases()
    if aliases.get("production") == version:
        return "production"
    if aliases.get("canary") == version:
        return "canary"
    if version not in store.versions():
        return "rejected" if store.rejected(version) is not None else "unknown"
    events = History(store).events()
    if any(e["version"] == version and e["event"] == "withdrawn" for e in events):
        return "withdrawn"
    if any(e["version"] == version and e["event"] == "promoted" for e in events):
        return "previously production"
    return "blessed, never promoted"


def version_record(store: ModelStore, version: int) -> VersionRecord:
    if version in store.versions():
        data = json.loads((store.version_dir(version) / METADATA_FILE).read_text())
    else:
        rejected = store.rejected(version)
        if rejected is None:
            known = ", ".join(f"v{v}" for v in known_versions(store)) or "none"
            raise ValueError(f"{store.base}: no version {version} (known: {known})")
        data = rejected
    return VersionRecord(version=version, status=version_status(store, version), data=data)


def known_versions(store: ModelStore) -> list[int]:
    """Exported and rejected versions, oldest first."""
    rejected_dir = store.base / "rejected"
    rejected = {int(p.stem) for p in rejected_dir.glob("*.json") if p.stem.isdigit()} if rejected_dir.is_dir() else set()
    return sorted(set(store.versions()) | rejected)


def history(store: ModelStore) -> list[VersionRecord]:
    return [version_record(store, v) for v in known_versions(store)]


def latest_rollout(store: ModelStore, version: int) -> tuple[dict[str, Any], bytes | None] | None:
    """The newest rollout record of a version and its picture, where a rollout left one."""
    d = store.base / ROLLOUTS_DIR / str(version)
    records = sorted(d.glob("*.json")) if d.is_dir() else []
    if not records:
        return None
    png = records[-1].with_suffix(".png")
    return json.loads(records[-1].read_text()), (png.read_bytes() if png.exists() else None)


# -- the verdict, failing rules apart -----------------------------------------


def verdict_markdown(model: str, version: int, blessed: bool, reasons: Sequence[str], failed: Sequence[str]) -> str:
    """Failing rules first, each marked, then the rules that passed."""
    head = "blessed" if blessed else "rejected"
    lines = [f"# {model} v{version}: {head}", ""]
    failing = [r for r in reasons if r in failed]
    if failing:
        lines += ["**Failed**", "", *(f"- {FAIL} **{r}**" for r in failing), ""]
    passing = [r for r in reasons if r not in failed]
    if passing:
        lines += ["**Passed**", "", *(f"- {PASS} {r}" for r in passing)]
    return "\n".join(lines) + "\n"


# -- two versions side by side ------------------------------------------------


def _cell(value: Any) -> str:
    if value is None or value == "":
        return "–"
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, (dict, list, tuple)):
        value = json.dumps(value, sort_keys=True)
    return str(value).replace("|", "/").replace("\n", " ")


def _flatten(prefix: str, value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k in sorted(value):
            out.update(_flatten(f"{prefix}.{k}" if prefix else str(k), value[k]))
        return out
    return {prefix: value}


def _profile(data: dict[str, Any]) -> dict[str, Any]:
    """Per-feature statistics, from the data profile where the version recorded one."""
    profile = data.get("data_profile") or data.get("profile")
    if not isinstance(profile, dict):
        return {}
    out: dict[str, Any] = {"rows": profile.get("rows"), "label counts": profile.get("label_counts")}
    for feature in profile.get("features", []):
        name = feature.get("column", "?")
        for stat in ("mean", "std", "minimum", "maximum", "missing"):
            if feature.get(stat) is not None:
                out[f"{name} {stat}"] = feature[stat]
    return out


def _config(data: dict[str, Any]) -> dict[str, Any]:
    config = data.get("config") or (data.get("provenance") or {}).get("parameters") or {}
    section = config.get("data")
    if isinstance(section, dict) and isinstance(section.get("features"), list):
        # A version from before features mapped column -> kind: compared as it reads today.
        config = {**config, "data": _features_by_column(section)}
    return {k: v for k, v in _flatten("", config).items() if k.split(".")[0] in ("data", "split", "train", "evaluate", "gate")}


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return out + [""]


def compare_markdown(store: ModelStore, a: int, b: int, images: bool = True) -> str:
    """Metrics, threshold, data, training config, verdict and rollout of two versions; `images` off for a terminal."""
    left, right = version_record(store, a), version_record(store, b)
    va, vb = f"v{a}", f"v{b}"
    lines = [f"# {store.model}: v{a} beside v{b}", ""]
    lines += _table(["", va, vb], [
        ["status", left.status, right.status],
        ["exported at", left.data.get("exported_at"), right.data.get("exported_at")],
        ["judged against", _judged(left), _judged(right)],
    ])

    lines += ["## Metrics (each on its own eval set)", ""]
    rows = []
    for m in (*METRICS, "threshold"):
        x, y = left.metrics.get(m), right.metrics.get(m)
        delta = f"{y - x:+.4f}" if isinstance(x, (int, float)) and isinstance(y, (int, float)) else "–"
        rows.append([m, x, y, delta])
    rows.append(["confusion matrix", left.metrics.get("confusion_matrix"), right.metrics.get("confusion_matrix"), ""])
    rows.append(["eval rows", left.metrics.get("rows"), right.metrics.get("rows"), ""])
    lines += _table(["metric", va, vb, f"{vb} − {va}"], rows)

    lines += ["## Data", ""]
    data_rows: list[list[Any]] = [
        ["fingerprint", left.data.get("data_fingerprint"), right.data.get("data_fingerprint")],
        ["source", left.data.get("data_source"), right.data.get("data_source")],
    ]
    pa, pb = _profile(left.data), _profile(right.data)
    data_rows += [[k, pa.get(k), pb.get(k)] for k in dict.fromkeys([*pa, *pb])]
    if not pa and not pb:
        data_rows.append(["statistics", "not recorded", "not recorded"])
    same = left.data.get("data_fingerprint") == right.data.get("data_fingerprint")
    lines += _table(["", va, vb], data_rows)
    lines += ["Same data." if same else "**Different data.**", ""]

    lines += ["## Training config (differences in bold)", ""]
    ca, cb = _config(left.data), _config(right.data)
    cfg_rows = []
    for k in dict.fromkeys([*ca, *cb]):
        x, y = ca.get(k), cb.get(k)
        cfg_rows.append([f"**{k}**" if x != y else k, x, y])
    lines += _table(["setting", va, vb], cfg_rows) if cfg_rows else ["not recorded", ""]

    lines += ["## Verdict", ""]
    for rec in (left, right):
        verdict = rec.data.get("verdict") or {}
        failed = set(verdict.get("failed") or ())
        head = "blessed" if verdict.get("blessed") else "rejected"
        lines += [f"**v{rec.version}: {head}**", ""]
        for reason in verdict.get("reasons", ()):
            lines.append(f"- {FAIL if reason in failed or _fails(reason) else PASS} {reason}")
        lines.append("")

    lines += ["## Rollout", ""]
    for rec in (left, right):
        found = latest_rollout(store, rec.version)
        if found is None:
            lines += [f"**v{rec.version}**: no rollout record", ""]
            continue
        record, png = found
        outcome = record.get("outcome") or record.get("phase") or "?"
        why = record.get("reason") or record.get("failure") or ""
        lines += [f"**v{rec.version}**: {outcome}" + (f" ({_cell(why)})" if why else ""), ""]
        if png is not None and images:
            lines += [img(png, f"rollout of v{rec.version}", 460), ""]

    pictures = [(rec.version, read_pictures(store, rec.version)) for rec in (left, right)] if images else []
    if any(p for _, p in pictures):
        lines += ["## Pictures", ""]
        for name in ("pr_curve", "roc_curve", "confusion_matrix"):
            row = [img(p[name], f"v{v} {PICTURE_TITLES[name]}", 400) for v, p in pictures if name in p]
            if row:
                lines += [" ".join(row), ""]
    return "\n".join(lines)


def _judged(rec: VersionRecord) -> str | None:
    parent = rec.data.get("parent_version") or (rec.data.get("verdict") or {}).get("baseline_version")
    return f"v{parent}" if parent is not None else None


def _fails(reason: str) -> bool:
    """For records written before verdicts listed their failures: the gate's failing phrasings."""
    return " < floor " in reason or "more than the" in reason


# -- final states -------------------------------------------------------------


def final_state(data: T, name: str, message: str, failed: bool = False) -> T:
    """A named final state for a flow to return, typed as what callers of the flow receive.

    Prefect makes a returned state the run's final state (its name on the badge, its message beside it)
    and hands callers its data, or raises it when the data is an exception of a failed state.
    """
    from prefect.runtime import flow_run
    from prefect.states import Completed, Failed

    if flow_run.get_run_count() > 1:
        # Prefect 3.9 re-raises an earlier attempt's error when a retried run returns a state: plain outcome then.
        if failed and isinstance(data, BaseException):
            raise data
        return data
    state: Any = Failed(name=name, message=message, data=data) if failed else Completed(name=name, message=message, data=data)
    return cast(T, state)
