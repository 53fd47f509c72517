"""The GPUs of this box, as ``nvidia-smi`` lists them (index, name, memory).

``rundock agent serve --gpus 0,1`` offers only those indices to its pool; the
others stay free for whatever else the box runs. No ``nvidia-smi`` on PATH
(no driver): no GPUs, and the agent takes only runs that ask for none.
"""

from __future__ import annotations

import shutil
import subprocess

from rundock.history.wire import Gpu

QUERY = ["nvidia-smi", "--query-gpu=index,name,memory.total", "--format=csv,noheader,nounits"]
TIMEOUT_SECONDS = 60.0


class GpuError(ValueError):
    """``nvidia-smi`` failed, answered something unreadable, or ``--gpus`` names a GPU the box does not have."""




def parse(output: str) -> list[Gpu]:
    """The GPUs in ``nvidia-smi``'s CSV answer (``0, NVIDIA A100-SXM4-80GB, 81920`` per line)."""
    gpus = []
    for number, line in enumerate(output.splitlines(), 1):
        if not line.strip():
            continue
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 3:
            raise GpuError(f"nvidia-smi line {number} is not 'index, name, memory.total': {line!r}")
        index, name, memory = parts[0], ",".join(parts[1:-1]), parts[-1]
        try:
            gpus.append(Gpu(int(index), name, int(float(memory))))
        except ValueError:
            raise GpuError(f"nvidia-smi line {number} has no whole index or memory in MiB: {line!r}") from None
    return sorted(gpus, key=lambda g: g.index)


def parse_selection(text: str | None) -> list[int] | None:
    """``--gpus 0,1,3`` as indices (None: every GPU of the box)."""
    if text is None or text.strip() in ("", "all"):
        return None
    try:
        chosen = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise GpuError(f"--gpus must be GPU indices separated by commas (e.g. 0,1,3), got {text!r}") from None
    if any(i < 0 for i in chosen):
        raise GpuError(f"--gpus must list indices >= 0, got {text!r}")
    return list(dict.fromkeys(chosen))


def detect(selection: list[int] | None = None) -> list[Gpu]:
    """This box's GPUs (only those in ``selection`` when given); GpuError names a selected GPU that is missing."""
    if shutil.which(QUERY[0]) is None:
        found: list[Gpu] = []
    else:
        try:
            proc = subprocess.run(QUERY, capture_output=True, text=True, timeout=TIMEOUT_SECONDS)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise GpuError(f"nvidia-smi could not be run: {exc}") from None
        if proc.returncode != 0:
            raise GpuError(f"nvidia-smi failed (exit status {proc.returncode}): {proc.stderr.strip()[:300]}")
        found = parse(proc.stdout)
    if selection is None:
        return found
    have = {g.index: g for g in found}
    missing = [i for i in selection if i not in have]
    if missing:
        listed = ", ".join(str(i) for i in sorted(have)) or "none (no nvidia-smi or no driver)"
        raise GpuError(f"--gpus names GPU {', '.join(map(str, missing))}, which this box does not have; it has "
                       f"{listed}")
    return [have[i] for i in selection]
