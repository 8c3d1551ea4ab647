"""The terminal filter drops TensorFlow's known start-up lines and passes every other byte, in order."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOISE = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1795998163.411683   30727 port.cc:153] oneDNN custom operations are on. You may see slightly "
    "different numerical results due to floating-point round-off errors from different computation orders. "
    "To turn them off, set the environment variable `TF_ENABLE_ONEDNN_OPTS=0`.",
    "I0000 00:00:1795998163.412802   30727 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will not be used.",
    "E0000 00:00:1795998172.950759   30727 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: "
    "Failed call to cuInit: UNKNOWN ERROR (303)",
    "E0000 00:00:1795998173.384043   30727 node_def_util.cc:682] NodeDef mentions attribute use_unbounded_threadpool "
    "which is not in the op definition: Op<name=MapDataset; signature=input_dataset:variant> This may be expected.",
]
REAL = [
    "E0000 00:00:1795998173.384043   30727 op_kernel.cc:1857] OP_REQUIRES failed at cast_op.cc:122 : UNIMPLEMENTED",
    "W0000 00:00:1795998173.384043   30727 cuda_platform.cc:52] failed call to cuInit: seen, but at warning level",
    "Fatal Python error: Segmentation fault",
]
CHILD = """
import os, sys
from aviary.quiet import filter_stderr
filter_stderr()
lines = sys.argv[1:]
for line in lines:
    os.write(2, (line + "\\n").encode())  # as TensorFlow's C++ writes: straight to the descriptor
print("python's own", file=sys.stderr)
"""


def test_known_noise_goes_and_everything_else_stays() -> None:
    mixed = [NOISE[0], REAL[0], *NOISE[1:], *REAL[1:]]
    done = subprocess.run([sys.executable, "-c", CHILD, *mixed], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, check=True)
    assert done.stderr.splitlines() == [*REAL, "python's own"]


def test_the_progress_bar_redraws_one_line_from_the_epoch_records() -> None:
    import io
    import logging

    from aviary.quiet import ProgressBar

    out = io.StringIO()
    bar = ProgressBar(out, width=10)
    for epoch in (1, 5):
        bar.handle(logging.makeLogRecord({"msg": "epoch", "progress": ("training", epoch, 10)}))
    bar.handle(logging.makeLogRecord({"msg": "no progress here"}))
    bar.finish()
    assert out.getvalue() == "\rtraining [#.........] 1/10\rtraining [#####.....] 5/10\r\x1b[K"
