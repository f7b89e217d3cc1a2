"""The ground truth kept while the sample is written: each record, its true ranks and
what was planted in it (duplicates, corrupt or missing images, bad rows)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from treeoflife.sample.images import ImageBank
from treeoflife.sample.species import SOURCES, Taxon


def ref(source: str, source_id: object) -> dict[str, str]:
    return {"source": source, "source_id": str(source_id)}


@dataclass(frozen=True)
class Plant:
    """A planted image: an exact or near copy of another record's, corrupt, special, missing.

    `exact` and `near` without `of` copy the same source's first record of the same taxon.
    """

    kind: str  # exact | near | corrupt | special | missing
    detail: str = ""  # the corruption kind or the special encoding
    of: dict[str, str] | None = None


ROLES = {"exact": "exact_duplicate", "near": "near_duplicate", "corrupt": "corrupt"}


def _per_source(factory: Callable[[], Any]) -> Any:
    return field(default_factory=lambda: {source: factory() for source in SOURCES})


@dataclass
class Sampler:
    """The image bank, plus everything expected.json says about what was written."""

    bank: ImageBank = field(default_factory=ImageBank)
    records: dict[str, list[dict[str, Any]]] = _per_source(list)
    bad_rows: dict[str, list[dict[str, Any]]] = _per_source(list)
    facts: dict[str, dict[str, Any]] = _per_source(dict)
    by_taxon: dict[tuple[str, str], list[dict[str, str]]] = field(default_factory=dict)
    exact_groups: list[list[dict[str, str]]] = field(default_factory=list)
    near_pairs: list[dict[str, Any]] = field(default_factory=list)
    corrupt: list[dict[str, str]] = field(default_factory=list)
    special: list[dict[str, str]] = field(default_factory=list)
    missing: list[dict[str, str]] = field(default_factory=list)

    def resolve(self, plant: Plant | None, source: str, taxon: Taxon | None) -> Plant | None:
        if plant is None or plant.of is not None or plant.kind not in ("exact", "near"):
            return plant
        assert taxon is not None
        return Plant(plant.kind, plant.detail, self.nth(source, taxon.name))

    def image(
        self, this: dict[str, str], taxon_key: str, size: tuple[int, int], plant: Plant | None
    ) -> bytes | None:
        """The bytes for record `this` (None: no image is served), noting what was planted."""
        key = f"{this['source']}:{this['source_id']}"
        kind = plant.kind if plant else "fresh"
        data: bytes | None = None
        if kind in ("fresh", "special"):
            mode = plant.detail if plant else "jpeg"
            data = self.bank.fresh(taxon_key, key, size, mode)
            if plant:
                self.special.append({**this, "kind": mode})
        elif kind in ("exact", "near"):
            assert plant is not None and plant.of is not None
            copied = self.bank.by_record[(plant.of["source"], plant.of["source_id"])]
            if kind == "exact":
                data = copied
                group = next((g for g in self.exact_groups if plant.of in g), None)
                if group is None:
                    self.exact_groups.append(group := [plant.of])
                group.append(this)
            else:
                data, how, distance = self.bank.near(copied, start=len(self.near_pairs) * 3)
                pair = {"a": plant.of, "b": this, "how": how, "phash_distance": distance}
                self.near_pairs.append(pair)
        elif kind == "corrupt":
            assert plant is not None
            data = self.bank.corrupt(plant.detail, key)
            self.corrupt.append({**this, "kind": plant.detail})
        elif kind == "missing":
            self.missing.append({**this, "reason": "no image file is served (HTTP 404)"})
        else:
            raise ValueError(f"cannot plant {plant} for {key}")
        if data is not None:
            self.bank.by_record[(this["source"], this["source_id"])] = data
        return data

    def record(
        self,
        this: dict[str, str],
        image: dict[str, str],
        taxon: Taxon | None,
        plant: Plant | None,
        **extra: Any,
    ) -> None:
        """One image record a loader should produce, with its true ranks and planted role."""
        role = (
            ROLES.get(plant.kind, plant.kind) if plant and plant.kind != "special" else "original"
        )
        ranks = taxon.ranks7() if taxon else [None] * 7
        entry = {"source_id": this["source_id"], "image": image, "ranks": ranks, "role": role}
        self.records[this["source"]].append({**entry, **extra})
        if taxon:
            self.by_taxon.setdefault((this["source"], taxon.name), []).append(this)

    def nth(self, source: str, taxon_name: str, index: int = 0) -> dict[str, str]:
        return self.by_taxon[(source, taxon_name)][index]

    def bad(self, source: str, file: str, line: int | None, reason: str, **where: Any) -> None:
        self.bad_rows[source].append({"file": file, "line": line, "reason": reason, **where})
