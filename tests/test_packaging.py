"""The installed distribution owns one import name, and the repository's commands still work."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOREIGN = ("flows", "tasks", "serving", "ops", "data")


def _find_specs(cwd: Path, names: tuple[str, ...]) -> list[str]:
    code = "import importlib.util, sys; print(' '.join(str(importlib.util.find_spec(n) is not None) for n in sys.argv[1:]))"
    out = subprocess.run([sys.executable, "-c", code, *names], cwd=cwd, capture_output=True, text=True, check=True)
    return out.stdout.split()


def test_only_aviary_is_importable_outside_the_repository(tmp_path: Path) -> None:
    assert _find_specs(tmp_path, FOREIGN) == ["False"] * len(FOREIGN)
    assert _find_specs(tmp_path, tuple(f"aviary.{n}" for n in FOREIGN)) == ["True"] * len(FOREIGN)


def test_no_module_imports_a_top_level_folder_name() -> None:
    offenders = []
    for path in ROOT.glob("*/**/*.py"):
        if ".venv" in path.parts or path.is_relative_to(ROOT / "aviary") and path.parent.is_symlink():
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            words = line.split()
            if len(words) >= 2 and words[0] in ("import", "from") and words[1].split(".")[0] in FOREIGN:
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert offenders == []


def test_documented_module_commands_run_from_the_repository_root() -> None:
    for module in ("flows.retrain", "aviary.flows.retrain", "tasks.ingest"):
        done = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT, capture_output=True, text=True)
        assert done.returncode == 0, (module, done.stderr[-500:])
        assert "usage:" in done.stdout
