"""`tol shard`: turn resolved, fetched, deduplicated records into a TreeOfLife release.

Splits and ids (splits.py), licence policy (licenses_policy.py), the catalog and its files
(catalog.py), shard writing (writer.py), captions (text.py); `verify.py` re-reads it all.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from treeoflife.errors import TolError
from treeoflife.shards import catalog, splits, writer
from treeoflife.shards.licenses_policy import LicensePolicy
from treeoflife.workspace import Workspace

__all__ = ["ReleaseStats", "ShardOptions", "parse_size", "shard_release"]

UNITS_DIR = "release-units"


def parse_size(value: str | int) -> int:
    """'1GB', '500MB', '3e9' or an int, in bytes (decimal units, as the Hub counts)."""
    if isinstance(value, int):
        return value
    text = str(value).strip().upper().replace(" ", "")
    for suffix, factor in (("GB", 10**9), ("MB", 10**6), ("KB", 10**3), ("B", 1)):
        if text.endswith(suffix):
            text, scale = text[: -len(suffix)], factor
            break
    else:
        scale = 1
    try:
        size = int(float(text) * scale)
    except ValueError:
        raise TolError(f"shard size {value!r}: give bytes or a size like 1GB, 500MB") from None
    if size <= 0:
        raise TolError(f"shard size {value!r} must be positive")
    return size


@dataclass(frozen=True)
class ShardOptions:
    """Everything `tol shard` takes; `from_pipeline` reads `[stages.shard]`."""

    val_fraction: float = 0.05
    train_small_fraction: float = 0.10
    seed: int = 0
    shard_bytes: int = 1_000_000_000  # target shard size (~1 GB, as the Hub suggests)
    shard_samples: int | None = None  # also cap samples per shard
    min_shards: int = 8  # per split, so workers x GPUs all get a shard
    workers: int = 1
    ids_from: Path | None = None
    license_policy: LicensePolicy = field(default_factory=LicensePolicy)

    @classmethod
    def from_pipeline(cls, stage: dict[str, Any], **overrides: Any) -> ShardOptions:
        """Options from a pipeline's `[stages.shard]` table; non-None overrides win."""
        known = {
            "val_fraction",
            "train_small_fraction",
            "seed",
            "shard_size",
            "shard_samples",
            "min_shards",
            "workers",
            "license_host",
            "license_catalog_only",
            "catalog_only_sources",
        }
        unknown = sorted(set(stage) - known)
        if unknown:
            raise TolError(
                f"[stages.shard] has unknown keys {', '.join(unknown)}; "
                f"known: {', '.join(sorted(known))}"
            )
        values: dict[str, Any] = {
            "val_fraction": float(stage.get("val_fraction", 0.05)),
            "train_small_fraction": float(stage.get("train_small_fraction", 0.10)),
            "seed": int(stage.get("seed", 0)),
            "shard_bytes": parse_size(stage.get("shard_size", 1_000_000_000)),
            "shard_samples": stage.get("shard_samples"),
            "min_shards": int(stage.get("min_shards", 8)),
            "workers": int(stage.get("workers", 1)),
            "license_policy": LicensePolicy.from_options(stage),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def plan_options(self) -> catalog.PlanOptions:
        if self.shard_samples is not None and self.shard_samples < 1:
            raise TolError("--shard-samples must be at least 1")
        if self.min_shards < 1:
            raise TolError("--min-shards must be at least 1")
        splits.threshold(self.val_fraction)
        splits.threshold(self.train_small_fraction)
        return catalog.PlanOptions(
            val_fraction=self.val_fraction,
            train_small_fraction=self.train_small_fraction,
            seed=self.seed,
            shard_bytes=self.shard_bytes,
            shard_samples=self.shard_samples,
            min_shards=self.min_shards,
        )

    def manifest_options(self) -> dict[str, Any]:
        """The options that shape the release's bytes (recorded in manifest.json)."""
        return {
            "val_fraction": self.val_fraction,
            "train_small_fraction": self.train_small_fraction,
            "seed": self.seed,
            "shard_bytes": self.shard_bytes,
            "shard_samples": self.shard_samples,
            "min_shards": self.min_shards,
            "ids_from": self.ids_from.name if self.ids_from else None,
            "license_policy": asdict(self.license_policy),
        }


@dataclass
class ReleaseStats:
    """What `tol shard` did; `splits` is {split: {shards, samples, bytes}}."""

    release_dir: Path
    splits: dict[str, dict[str, int]]
    records: int
    released: int
    hosted: int
    catalog_only: int
    excluded: dict[str, int]
    ids_from_catalog: int
    shards_written: int
    shards_kept: int
    removed: list[str]
    seconds: float

    def summary(self) -> str:
        parts = ", ".join(
            f"{split} {totals['samples']} in {totals['shards']} shards"
            for split, totals in self.splits.items()
        )
        excluded = sum(self.excluded.values())
        return (
            f"release {self.release_dir}: {parts}; {self.catalog_only} catalog-only, "
            f"{excluded} excluded; wrote {self.shards_written} shards, kept {self.shards_kept}"
        )


def shard_release(
    workspace: Workspace,
    options: ShardOptions | None = None,
    on_shard: Callable[[writer.ShardResult], None] | None = None,
    on_plan: Callable[[int, int], None] | None = None,
) -> ReleaseStats:
    """Build `<workspace>/release/`: shards, sizes.json, catalog files, manifest, card.

    Idempotent: shards whose planned content is unchanged are kept as they are; a killed
    run resumes where it stopped. `on_plan(to_write, kept)` and `on_shard(result)` report
    progress (an exception from `on_shard` stops the run with finished shards recorded).
    """
    from treeoflife.publish.card import write_card

    options = options or ShardOptions()
    plan_options = options.plan_options()
    started = time.perf_counter()
    release_dir = workspace.root / "release"
    release_dir.mkdir(parents=True, exist_ok=True)
    units_dir = workspace.tmp / UNITS_DIR
    with workspace.connect() as con:
        excluded = catalog.select_candidates(
            con, options.license_policy, plan_options, options.ids_from
        )
        staging = [
            row[0]
            for row in con.execute(
                "SELECT DISTINCT staging_shard FROM release_candidates "
                "WHERE excluded_reason IS NULL AND license_action = 'host' ORDER BY 1"
            ).fetchall()
        ]
        writer.index_staging_tars(con, workspace.root, staging)
        catalog.plan_release(con, plan_options)
        shutil.rmtree(units_dir, ignore_errors=True)
        units, kept = writer.pending_units(con, release_dir, workspace.root, units_dir)
        if on_plan is not None:
            on_plan(len(units), kept)
        results = writer.run_units(con, units, options.workers, on_shard)
        shutil.rmtree(units_dir, ignore_errors=True)
        planned = {r[0] for r in con.execute("SELECT shard FROM planned_units").fetchall()}
        removed = writer.remove_strays(release_dir, planned, catalog.HOSTED_SPLITS)
        split_sizes = catalog.write_sizes(con, release_dir)
        for split in catalog.HOSTED_SPLITS:
            if split not in split_sizes:
                for name in ("sizes.json", "wids.json"):
                    (release_dir / split / name).unlink(missing_ok=True)
        counts_row = con.execute(
            """SELECT (SELECT count(*) FROM release_candidates),
                      count(DISTINCT treeoflife_id),
                      count(DISTINCT treeoflife_id) FILTER (WHERE hosted),
                      count(DISTINCT treeoflife_id) FILTER (WHERE NOT hosted),
                      count(DISTINCT treeoflife_id) FILTER (WHERE id_from_catalog)
               FROM release_catalog"""
        ).fetchall()[0]
        records, released, hosted, catalog_only, from_catalog = counts_row
        counts = {
            "records": records,
            "released": released,
            "hosted": hosted,
            "catalog_only": catalog_only,
            "excluded": excluded,
        }
        files = catalog.write_catalog_files(con, release_dir)
        manifest = catalog.write_manifest(
            con, release_dir, files, counts, options.manifest_options()
        )
    write_card(release_dir)
    return ReleaseStats(
        release_dir=release_dir,
        splits=manifest["splits"],
        records=records,
        released=released,
        hosted=hosted,
        catalog_only=catalog_only,
        excluded=excluded,
        ids_from_catalog=from_catalog,
        shards_written=len(results),
        shards_kept=kept,
        removed=removed,
        seconds=time.perf_counter() - started,
    )
