"""Training checkpoints: open_clip-loadable files that also carry everything `--resume` needs.

A checkpoint is one `torch.save`d dict: `state_dict` (the bare model's weights, no `module.`
or `_orig_mod.` prefixes, so `open_clip.create_model_and_transforms(name, pretrained=PATH)`
loads it as it is) plus `model`, `step`, `epoch`, `optimizer`, `schedule`, `rng`, `data`
and `params`: all plain containers and tensors, so `torch.load(weights_only=True)` reads it.
Run folder: `checkpoints/step_XXXXXXXX.pt` (periodic), `final.pt`, `latest.pt` (a link).
"""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from treeoflife.errors import TolError

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1
FINAL = "final.pt"
LATEST = "latest.pt"
PERIODIC_DIR = "checkpoints"


def bare_model(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside DDP (`.module`) and torch.compile (`._orig_mod`) wrappers."""
    while True:
        if isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def capture_rng() -> dict[str, Any]:
    """Every RNG a training step may touch, as weights_only-safe values."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        if len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    path: Path,
    *,
    model: torch.nn.Module,
    model_name: str,
    optimizer: torch.optim.Optimizer,
    step: int,
    epoch: int,
    schedule: dict[str, Any],
    data: dict[str, Any],
    params: dict[str, Any],
) -> Path:
    """Write one checkpoint atomically (temp file, fsync, rename)."""
    payload = {
        "format": CHECKPOINT_FORMAT,
        "state_dict": bare_model(model).state_dict(),
        "model": model_name,
        "step": step,
        "epoch": epoch,
        "optimizer": optimizer.state_dict(),
        "schedule": schedule,
        "rng": capture_rng(),
        "data": data,
        "params": params,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as handle:
        torch.save(payload, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    return path


def periodic_path(run_dir: Path, step: int) -> Path:
    return run_dir / PERIODIC_DIR / f"step_{step:08d}.pt"


def point_latest(run_dir: Path, target: Path) -> None:
    """Make `latest.pt` name `target` (a relative symlink, replaced atomically)."""
    link = run_dir / LATEST
    tmp = run_dir / f".{LATEST}.tmp"
    tmp.unlink(missing_ok=True)
    try:
        tmp.symlink_to(os.path.relpath(target, run_dir))
    except OSError:  # no symlinks here (some Windows setups): a small pointer file instead
        tmp.write_text(os.path.relpath(target, run_dir))
    os.replace(tmp, link)


def prune_periodic(run_dir: Path, keep: int) -> None:
    """Delete all but the newest `keep` periodic checkpoints (never the one latest names)."""
    latest = resolve_latest(run_dir)
    periodic = sorted((run_dir / PERIODIC_DIR).glob("step_*.pt"))
    for old in periodic[: max(0, len(periodic) - keep)]:
        if latest is None or old.resolve() != latest.resolve():
            old.unlink(missing_ok=True)


def resolve_latest(run_dir: Path) -> Path | None:
    """The checkpoint `latest.pt` points at, else the newest one on disk, else None."""
    link = run_dir / LATEST
    if link.is_symlink() and link.exists():
        return link.resolve()
    if link.is_file():
        if link.stat().st_size < 4096:  # pointer-file fallback of point_latest
            target = run_dir / link.read_text().strip()
            if target.is_file():
                return target
        else:
            return link
    candidates = sorted((run_dir / PERIODIC_DIR).glob("step_*.pt"))
    if (run_dir / FINAL).is_file():
        return run_dir / FINAL
    return candidates[-1] if candidates else None


def find_resume(run_dir: Path, resume: str | None) -> Path | None:
    """The checkpoint `--resume` names: `latest` (None when the run has none yet) or a path."""
    if resume is None:
        return None
    if resume == "latest":
        return resolve_latest(run_dir)
    path = Path(resume)
    if not path.is_file():
        raise TolError(f"--resume {resume}: no such checkpoint file (or pass `latest`)")
    return path


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a training checkpoint (tensors on CPU) with torch's safe loader."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError) as exc:
        raise TolError(f"cannot read checkpoint {path}: {exc}") from None
    missing = {"state_dict", "step", "optimizer"} - set(checkpoint)
    if missing:
        raise TolError(
            f"{path} is not a tol train checkpoint (missing {', '.join(sorted(missing))}); "
            "to start from plain weights pass it as --pretrained instead"
        )
    return checkpoint
