"""The TreeOfLife text members of one sample: 7 captions, 3 raw names, the common fallback.

Strings match TreeOfLife-10M (BioCLIP `make_txt`): ranks capitalised, the species epithet
lower case, missing ranks omitted. `COMMON_SQL` is the same common-name rule for catalogs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

RANKS = ("kingdom", "phylum", "class", "order", "family", "genus", "species")

# Caption members in the order they are written to each sample, then the raw names.
CAPTION_MEMBERS = (
    "sci.txt",
    "com.txt",
    "taxon.txt",
    "taxonTag.txt",
    "sci_com.txt",
    "taxon_com.txt",
    "taxonTag_com.txt",
)
NAME_MEMBERS = ("scientific_name.txt", "taxonomic_name.txt", "common_name.txt")
TEXT_MEMBERS = CAPTION_MEMBERS + NAME_MEMBERS
# Every sample holds exactly these members (webdataset field names, i.e. after the key).
SAMPLE_MEMBERS = ("jpg", *TEXT_MEMBERS, "json")


def _clean(value: str | None) -> str:
    return " ".join((value or "").split())


def _cap(value: str) -> str:
    """Upper-case the first letter only (keeps e.g. 'Incertae sedis' as given)."""
    return value[:1].upper() + value[1:]


def epithet(species: str | None) -> str:
    """The specific epithet, lower case, from a binomial ('Pica hudsonia' -> 'hudsonia').

    A one-word species value is taken as the epithet already; anything after the first
    word is kept ('Salix x rubens' -> 'x rubens'), as the published catalog does.
    """
    words = _clean(species).split(" ")
    if len(words) == 1:
        return words[0].lower()
    return " ".join(words[1:]).lower()


def rank_values(ranks: Mapping[str, str | None]) -> list[tuple[str, str]]:
    """(rank, display value) for the known ranks: capitalised, species as the epithet."""
    values = []
    for rank in RANKS:
        if rank == "species":
            value = epithet(ranks.get("species"))
        else:
            value = _cap(_clean(ranks.get(rank)))
        if value:
            values.append((rank, value))
    return values


def scientific_name(ranks: Mapping[str, str | None]) -> str:
    """'Genus epithet', else 'Genus', else '' (BioCLIP's `Taxon.scientific`)."""
    genus = _cap(_clean(ranks.get("genus")))
    species = epithet(ranks.get("species"))
    if not genus and species:
        # A binomial with no genus rank: take the genus from it.
        words = _clean(ranks.get("species")).split(" ")
        genus = _cap(words[0]) if len(words) > 1 else ""
    return " ".join(part for part in (genus, species) if part)


def taxonomic_name(ranks: Mapping[str, str | None]) -> str:
    """The known ranks kingdom..epithet, space separated."""
    return " ".join(value for _, value in rank_values(ranks))


def common_name(ranks: Mapping[str, str | None], common: str | None) -> str:
    """The common name, else the scientific name, else the taxonomic string (never empty
    for a record with any known rank), as TreeOfLife-10M's `common` column."""
    return _clean(common) or scientific_name(ranks) or taxonomic_name(ranks)


def sample_texts(ranks: Mapping[str, str | None], common: str | None) -> dict[str, str]:
    """The 10 text members of one sample, keyed by member name ('sci.txt', ...).

    Where no genus is known the scientific name falls back to the deepest known rank so
    no caption reads 'a photo of .' (the original wrote that; nothing trains well on it).
    """
    tagged_pairs = rank_values(ranks)
    taxonomic = " ".join(value for _, value in tagged_pairs)
    scientific = scientific_name(ranks) or (tagged_pairs[-1][1] if tagged_pairs else "")
    common_text = common_name(ranks, common)
    tagged = " ".join(f"{rank} {value}" for rank, value in tagged_pairs)
    with_common = f" with common name {common_text}."
    return {
        "sci.txt": f"a photo of {scientific}.",
        "com.txt": f"a photo of {common_text}.",
        "taxon.txt": f"a photo of {taxonomic}.",
        "taxonTag.txt": f"a photo of {tagged}.",
        "sci_com.txt": f"a photo of {scientific}{with_common}",
        "taxon_com.txt": f"a photo of {taxonomic}{with_common}",
        "taxonTag_com.txt": f"a photo of {tagged}{with_common}",
        "scientific_name.txt": scientific,
        "taxonomic_name.txt": taxonomic,
        "common_name.txt": common_text,
    }


def ranks_of(row: Mapping[str, object], names: Sequence[str] = RANKS) -> dict[str, str | None]:
    """The 7 ranks of a catalog/plan row (None where unknown)."""
    return {rank: (row.get(rank) or None) for rank in names}  # type: ignore[misc]


def _sql_clean(column: str) -> str:
    return f"nullif(trim(regexp_replace(coalesce({column}, ''), '\\s+', ' ', 'g')), '')"


def _sql_cap(expr: str) -> str:
    return f"(upper(left({expr}, 1)) || substr({expr}, 2))"


def epithet_sql(species: str = "species") -> str:
    """SQL for `epithet()`: everything after the binomial's first word, lower case."""
    sp = _sql_clean(species)
    return (
        f"nullif(lower(CASE WHEN strpos({sp}, ' ') > 0 "
        f"THEN substr({sp}, strpos({sp}, ' ') + 1) ELSE {sp} END), '')"
    )


def scientific_sql(genus: str = "genus", species: str = "species") -> str:
    """SQL for `scientific_name()`."""
    sp = _sql_clean(species)
    genus_expr = (
        f"coalesce({_sql_cap(_sql_clean(genus))}, CASE WHEN strpos({sp}, ' ') > 0 "
        f"THEN {_sql_cap(f'split_part({sp}, chr(32), 1)')} END)"
    )
    return f"nullif(concat_ws(' ', {genus_expr}, {epithet_sql(species)}), '')"


def taxonomic_sql(prefix: str = "") -> str:
    """SQL for `taxonomic_name()` over columns named like the ranks (optionally prefixed)."""
    parts = [_sql_cap(_sql_clean(f'{prefix}"{rank}"')) for rank in RANKS[:-1]]
    parts.append(epithet_sql(f'{prefix}"species"'))
    return f"nullif(concat_ws(' ', {', '.join(parts)}), '')"


def common_sql(common: str = "common", prefix: str = "") -> str:
    """SQL for `common_name()`: common, else scientific, else taxonomic."""
    return (
        f"coalesce({_sql_clean(common)}, "
        f"{scientific_sql(f'{prefix}genus', f'{prefix}species')}, {taxonomic_sql(prefix)})"
    )
