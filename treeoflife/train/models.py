"""Model configs treeoflife ships for open_clip (tiny ones for tests and the demo).

open_clip finds configs by name in its registry; `register_model_configs()` adds ours
(`tol-tiny`: a 64-px ViT with 2 layers, random init) so `create_model_and_transforms`
builds them like any other name. Call it before creating a model; it is idempotent.
"""

from __future__ import annotations

from pathlib import Path

import open_clip

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
TINY_MODEL = "tol-tiny"


def register_model_configs() -> None:
    """Make treeoflife's model configs known to open_clip (safe to call many times)."""
    if TINY_MODEL not in open_clip.list_models():
        open_clip.add_model_config(MODEL_CONFIG_DIR)
