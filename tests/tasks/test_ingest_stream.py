"""Streaming ingest: any column type, bounded memory on hostile files, the same result at any block size."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from aviary.config import DataConfig
from aviary.dataio import ParquetSink
from aviary.tasks import ingest as ingest_module
from aviary.tasks.ingest import DataError, IngestWriteError, ingest_csv

ROOT = Path(__file__).resolve().parents[2]


def data_cfg(path: Path, **fields: object) -> DataConfig:
    return DataConfig.model_validate({"path": path, "min_rows": 2, **fields})


def refused(cfg: DataConfig, work_dir: Path, *fragments: str) -> str:
    with pytest.raises(DataError) as exc:
        ingest_csv(cfg, work_dir)
    message = str(exc.value)
    assert "\n" not in message and message.startswith(f"{cfg.path}: ")
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    assert not work_dir.exists() or not any(work_dir.iterdir())
    return message


# -- not a regular file -------------------------------------------------------------


def test_a_fifo_is_refused_at_once_without_opening_it(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)  # opening it to read would block until a writer comes: the test would hang
    refused(data_cfg(fifo), tmp_path / "work", "is a named pipe (FIFO), not a CSV file")


def test_a_directory_and_a_device_are_refused(tmp_path: Path) -> None:
    (tmp_path / "dir.csv").mkdir()
    refused(data_cfg(tmp_path / "dir.csv"), tmp_path / "work", "is a directory")
    refused(data_cfg(Path("/dev/zero")), tmp_path / "work", "is a device")


# -- hostile sizes --------------------------------------------------------------------


def test_a_two_megabyte_header_is_read(tmp_path: Path) -> None:
    names = [f"column_{i:07d}" for i in range(130_000)]  # about 2 MB of header
    path = tmp_path / "wide.csv"
    filler = ",".join(["0"] * len(names))
    rows = [f"{filler},0.5,0.5,1", f"{filler},1,1,0", f"{filler},0.1,0.2,1"]
    path.write_text(",".join([*names, "x", "y", "class"]) + "\n" + "\n".join(rows) + "\n")
    assert path.stat().st_size > 2_000_000
    dataset = ingest_csv(data_cfg(path), tmp_path / "work")
    assert dataset.rows == 3
    assert pd.read_parquet(dataset.path).to_dict("list") == {"x": [0.5, 1.0, 0.1], "y": [0.5, 1.0, 0.2], "class": [1, 0, 1]}


def test_a_missing_column_names_the_close_matches_in_a_wide_header(tmp_path: Path) -> None:
    path = tmp_path / "wide.csv"
    path.write_text(",".join([f"c{i}" for i in range(500)] + ["x", "yy", "class"]) + "\n" + ",".join(["1"] * 503) + "\n")
    message = refused(data_cfg(path), tmp_path / "work", "column 'y': not in the header (line 1)", "and 491 more", "close: 'yy' for 'y'")
    assert len(message) < 400


GARBAGE_ERROR = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from aviary.config import DataConfig
    from aviary.tasks.ingest import DataError, ingest_csv
    path = Path(sys.argv[1])
    try:
        ingest_csv(DataConfig(path=path, min_rows=2), Path(sys.argv[2]))
    except DataError as error:
        print(error)
    # VmHWM, not getrusage: ru_maxrss keeps the forking parent's (pytest's) size across exec.
    status = Path("/proc/self/status").read_text().splitlines()
    print(next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) // 1024)
    """
)


def test_an_error_on_a_file_of_garbage_keeps_memory_bounded(tmp_path: Path) -> None:
    path = tmp_path / "garbage.csv"
    bad = b"".join(b"%d,0.5,oops%d\n" % (i, i) for i in range(20_000))  # every label bad
    with path.open("wb") as out:
        out.write(b"x,y,class\n0.5,0.5,1\n1,1,0\n")
        for _ in range(100):  # 40 MB, 2,000,000 bad rows
            out.write(bad)
    done = subprocess.run(
        [sys.executable, "-c", GARBAGE_ERROR, str(path), str(tmp_path / "work")],
        cwd=ROOT, capture_output=True, text=True, check=True,
    )
    message, peak_mib = done.stdout.strip().splitlines()
    assert message.startswith(f"{path}: column 'class': 2000000 labels not 0 or 1")
    assert "first at line 4: 'oops0', line 5: 'oops1', line 6: 'oops2'" in message
    # Python, pyarrow and pandas alone take ~250 MiB here; the message costs no more than a few lines.
    assert int(peak_mib) < 600, f"peak {peak_mib} MiB"


def test_a_bad_row_near_the_end_of_a_long_file_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ingest_module, "BLOCK_BYTES", 64 << 10)  # many batches: the bad one comes late
    monkeypatch.setattr(ingest_module, "CHUNK_BYTES", 64 << 10)
    path = tmp_path / "long.csv"
    rows = [b"0.5,0.5,1", b"1,1,0"] * 50_000
    rows[-3] = b"1,1,7"
    path.write_bytes(b"x,y,class\n" + b"\n".join(rows) + b"\n")
    refused(data_cfg(path), tmp_path / "work", "column 'class': 1 label not 0 or 1", "first at line 99999: '7'")


# -- column types, labels and missing values ----------------------------------------------


MIXED = b"""amount,count,member,colour,code,label
0.5,3,true,red,7,yes
1.5,4,false,blue,8,no
2.5,5,TRUE,red,7,Yes
3.5,6,False,green,9,NO
"""


def test_numbers_integers_booleans_and_text_are_read_with_their_types(tmp_path: Path) -> None:
    path = tmp_path / "mixed.csv"
    path.write_bytes(MIXED)
    cfg = data_cfg(path, features=("amount", "count", "member", "colour", "code"), label="label", categorical=("code",))
    dataset = ingest_csv(cfg, tmp_path / "work")
    schema = pq.read_schema(dataset.path)
    assert {name: str(schema.field(name).type) for name in schema.names} == {
        "amount": "double", "count": "double", "member": "bool", "colour": "string", "code": "string", "label": "int8",
    }
    frame = pd.read_parquet(dataset.path)
    assert frame["member"].tolist() == [True, False, True, False]
    assert frame["colour"].tolist() == ["red", "blue", "red", "green"]
    assert frame["code"].tolist() == ["7", "8", "7", "9"]
    assert frame["label"].tolist() == [1, 0, 1, 0]


@pytest.mark.parametrize(
    ("ones", "zeros"), [("1", "0"), ("1.0", "0.0"), ("true", "false"), ("True", "FALSE"), ("yes", "no"), ("YES", "No")]
)
def test_label_spellings_map_to_one_and_zero(tmp_path: Path, ones: str, zeros: str) -> None:
    path = tmp_path / "labels.csv"
    path.write_text(f"x,y,class\n0.5,0.5,{ones}\n1,1,{zeros}\n0.2,0.1,{ones}\n")
    frame = pd.read_parquet(ingest_csv(data_cfg(path), tmp_path / "work").path)
    assert frame["class"].tolist() == [1, 0, 1]


def test_a_mostly_numeric_column_with_a_word_is_an_error_unless_declared_categorical(tmp_path: Path) -> None:
    path = tmp_path / "zip.csv"
    path.write_text("x,y,class\n" + "".join(f"{i},0.5,{i % 2}\n" for i in range(20)) + "A1B,0.5,1\n")
    refused(data_cfg(path), tmp_path / "work", "column 'x': 1 non-numeric value", "list the column in categorical", "line 22: 'A1B'")
    frame = pd.read_parquet(ingest_csv(data_cfg(path, categorical=("x",)), tmp_path / "work").path)
    assert frame["x"].iloc[-1] == "A1B"


def test_missing_cells_are_refused_or_kept_for_imputation(tmp_path: Path) -> None:
    path = tmp_path / "gaps.csv"
    path.write_text("x,colour,class\n0.5,red,1\n,blue,0\n0.1,,1\n0.2,red,0\n")
    cfg = data_cfg(path, features=("x", "colour"))
    refused(cfg, tmp_path / "work", "column 'x': 1 empty cell (or set missing: impute), first at line 3")
    frame = pd.read_parquet(ingest_csv(cfg.model_copy(update={"missing": "impute"}), tmp_path / "work").path)
    assert np.isnan(frame["x"].iloc[1]) and frame["colour"].isna().tolist() == [False, False, True, False]


def test_an_entirely_empty_column_is_refused_even_when_imputing(tmp_path: Path) -> None:
    path = tmp_path / "empty.csv"
    path.write_text("x,y,class\n0.5,,1\n1,,0\n")
    refused(data_cfg(path, missing="impute"), tmp_path / "work", "column 'y': empty in all 2 rows")


def test_infinite_values_are_refused_even_when_imputing(tmp_path: Path) -> None:
    path = tmp_path / "inf.csv"
    path.write_text("x,y,class\n0.5,1e400,1\n1,2,0\n")
    refused(data_cfg(path, missing="impute"), tmp_path / "work", "column 'y': 1 infinite value", "line 2: '1e400'")


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"features": ("x", "y", "x")}, "feature 'x' is listed twice"),
        ({"features": ("x", "class")}, "label 'class' is also listed among the features"),
        ({"categorical": ("z",)}, "categorical column 'z' is not among the features"),
    ],
)
def test_config_mistakes_fail_before_anything_runs(fields: dict[str, object], fragment: str) -> None:
    with pytest.raises(ValidationError, match=fragment):
        DataConfig.model_validate(fields)


# -- the same data, the same result ----------------------------------------------------------


def test_block_size_changes_neither_fingerprint_nor_content(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "mixed.csv"
    path.write_bytes(MIXED.splitlines(keepends=True)[0] + b"".join(MIXED.splitlines(keepends=True)[1:]) * 3000)
    cfg = data_cfg(path, features=("amount", "count", "member", "colour"), label="label")
    whole = ingest_csv(cfg, tmp_path / "a")
    monkeypatch.setattr(ingest_module, "BLOCK_BYTES", 4096)
    monkeypatch.setattr(ingest_module, "CHUNK_BYTES", 4096)
    pieces = ingest_csv(cfg, tmp_path / "b")
    assert whole.fingerprint == pieces.fingerprint
    pd.testing.assert_frame_equal(pd.read_parquet(whole.path), pd.read_parquet(pieces.path))
    expected = pd.read_csv(path, usecols=[*cfg.features, "label"]).assign(
        member=lambda f: f["member"].astype(str).str.lower() == "true",
        label=lambda f: (f["label"].str.lower() == "yes").astype(np.int8),
    )
    pd.testing.assert_frame_equal(pd.read_parquet(whole.path), expected, check_dtype=False)


def test_text_values_change_the_fingerprint(tmp_path: Path) -> None:
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    a.write_bytes(MIXED)
    b.write_bytes(MIXED.replace(b"green", b"greem"))
    cfg = {"features": ("amount", "colour"), "label": "label"}
    assert ingest_csv(data_cfg(a, **cfg), tmp_path / "w").fingerprint != ingest_csv(data_cfg(b, **cfg), tmp_path / "w").fingerprint


def test_a_full_disk_mid_ingest_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ingest_module, "BLOCK_BYTES", 4096)
    monkeypatch.setattr(ingest_module, "CHUNK_BYTES", 4096)
    path = tmp_path / "data.csv"
    path.write_text("x,y,class\n" + "0.5,0.5,1\n1,1,0\n" * 5000)
    real, calls = ParquetSink.write, []

    def filling(self: ParquetSink, batch: object) -> None:
        calls.append(1)
        if len(calls) > 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(self, batch)  # type: ignore[arg-type]

    monkeypatch.setattr(ParquetSink, "write", filling)
    with pytest.raises(IngestWriteError) as exc:
        ingest_csv(data_cfg(path), tmp_path / "work")
    assert str(exc.value).endswith(f"cannot write the Parquet copy of {path}: No space left on device")
    assert list((tmp_path / "work").iterdir()) == []
