"""The taxa of the bundled sample: real names with their real classification, and how many
images each source holds of each; plus the synonyms and doubtful names the authorities carry.

The sample writers read these tables; nothing else should (tests read `expected.json`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

RANKS = ("kingdom", "phylum", "class", "order", "family", "genus", "species")
SOURCES = ("inat21", "inat-open-data", "bioscan-1m", "bioscan-5m", "eol")
_COUNT_KEYS = {
    "inat21": "inat21",
    "inat": "inat-open-data",
    "b1m": "bioscan-1m",
    "b5m": "bioscan-5m",
    "eol": "eol",
}


@dataclass(frozen=True, eq=False)
class Taxon:
    """One taxon with images: its Linnaean path (kingdom first, the epithet last for species)."""

    path: tuple[str, ...]
    authorship: str = ""
    common: str = ""
    counts: dict[str, int] = field(default_factory=dict)
    hybrid: bool = False
    subfamily: str = ""
    tribe: str = ""
    in_eol_dh: bool = True  # False: EOL knows the page only through provider_ids.csv

    @property
    def rank(self) -> str:
        return RANKS[len(self.path) - 1]

    @property
    def genus(self) -> str:
        return self.path[5] if len(self.path) > 5 else ""

    @property
    def epithet(self) -> str:
        return self.path[6] if len(self.path) > 6 else ""

    @property
    def name(self) -> str:
        """The scientific name without authorship (`Mentha × piperita`, `Sciaridae`)."""
        if self.rank != "species":
            return self.path[-1]
        return f"{self.genus} {'× ' if self.hybrid else ''}{self.epithet}"

    @property
    def key(self) -> str:
        return self.name.lower().replace(" × ", "_x_").replace(" ", "_")

    def ranks7(self) -> list[str | None]:
        """kingdom…genus names then the full species name; None below the taxon's rank."""
        names: list[str | None] = list(self.path[:6])
        if self.rank == "species":
            names.append(self.name)
        return names + [None] * (7 - len(names))

    def lineage(self) -> list[tuple[str, str]]:
        """(rank, name) from kingdom down to the taxon itself; species carry the binomial."""
        return [(rank, name) for rank, name in zip(RANKS, self.ranks7(), strict=True) if name]

    def count(self, source: str) -> int:
        return self.counts.get(source, 0)


# One taxon a line: Linnaean path (kingdom first; `×` marks a hybrid epithet) | authorship |
# English common name | images per source (inat21, inat = open data, b1m, b5m, eol) and extras
# (subfamily, tribe; dh=no: the EOL Dynamic Hierarchy lacks it, only provider_ids names it).
# fmt: off
_TABLE = """
Animalia Annelida Clitellata Haplotaxida Lumbricidae Lumbricus terrestris | Linnaeus, 1758 | Common Earthworm | inat21=5 eol=4
Animalia Chordata Amphibia Anura Hylidae Pseudacris crucifer | (Wied-Neuwied, 1838) | Spring Peeper | inat21=5 inat=5
Animalia Chordata Amphibia Anura Bufonidae Bufo bufo | (Linnaeus, 1758) | Common Toad | inat=4
Animalia Chordata Aves Suliformes Sulidae Morus bassanus | (Linnaeus, 1758) | Northern Gannet | inat=6 eol=5
Animalia Chordata Aves Passeriformes Paridae Cyanistes caeruleus | (Linnaeus, 1758) | Eurasian Blue Tit | inat21=5 inat=6 eol=4
Animalia Chordata Aves Passeriformes Muscicapidae Erithacus rubecula | (Linnaeus, 1758) | European Robin | inat21=5 eol=4
Animalia Chordata Mammalia Carnivora Mustelidae Lutra lutra | (Linnaeus, 1758) | Eurasian Otter | inat=4 eol=5
Animalia Chordata Mammalia Carnivora Canidae Vulpes vulpes | (Linnaeus, 1758) | Red Fox | inat21=5 eol=4
Animalia Mollusca Gastropoda Stylommatophora Helicidae Cornu aspersum | (O.F.Müller, 1774) | Garden Snail | inat21=5 eol=4
Animalia Arthropoda Insecta Lepidoptera Pieridae Pieris rapae | (Linnaeus, 1758) | Cabbage White | inat21=5 inat=6
Animalia Arthropoda Insecta Lepidoptera Nymphalidae Danaus plexippus | (Linnaeus, 1758) | Monarch | inat21=5 inat=5 eol=4
Animalia Arthropoda Insecta Lepidoptera Plutellidae Plutella xylostella | (Linnaeus, 1758) | Diamondback Moth | b1m=3 b5m=2
Animalia Arthropoda Insecta Hymenoptera Apidae Apis mellifera | Linnaeus, 1758 | Western Honey Bee | inat21=5 b5m=2 eol=4
Animalia Arthropoda Insecta Hymenoptera Formicidae Camponotus pennsylvanicus | (De Geer, 1773) | Eastern Black Carpenter Ant | inat=3 b1m=3 subfamily=Formicinae tribe=Camponotini
Animalia Arthropoda Insecta Hymenoptera Formicidae Gnamptogenys sulcata | (Smith, 1858) | | b5m=5 subfamily=Ectatomminae tribe=Ectatommini
Animalia Arthropoda Insecta Coleoptera Coccinellidae Coccinella septempunctata | Linnaeus, 1758 | Seven-spotted Lady Beetle | inat=5 eol=3
Animalia Arthropoda Insecta Hemiptera Aphrophoridae Philaenus spumarius | (Linnaeus, 1758) | Meadow Spittlebug | b1m=3 subfamily=Aphrophorinae tribe=Philaenini
Animalia Arthropoda Insecta Diptera Drosophilidae Drosophila melanogaster | Meigen, 1830 | Common Fruit Fly | inat21=5 b5m=4
Animalia Arthropoda Insecta Diptera Sciaridae | | Dark-winged Fungus Gnats | b1m=6 b5m=4
Animalia Arthropoda Insecta Diptera Sciaridae Bradysia | Winnertz, 1867 | | b1m=3 b5m=2
Animalia Arthropoda Insecta Diptera Cecidomyiidae | | Gall Midges | b1m=6 b5m=5
Animalia Arthropoda Insecta Diptera Cecidomyiidae Contarinia nasturtii | (Kieffer, 1888) | Swede Midge | b1m=2 b5m=2
Animalia Arthropoda Insecta Diptera Chironomidae | | Non-biting Midges | b1m=4 b5m=1
Animalia Arthropoda Insecta Diptera Chironomidae Chironomus riparius | Meigen, 1804 | | b1m=3 b5m=3 subfamily=Chironominae tribe=Chironomini
Animalia Arthropoda Insecta Diptera Phoridae Megaselia | Rondani, 1856 | | b1m=4
Animalia Arthropoda Insecta Diptera Phoridae Megaselia scalaris | (Loew, 1866) | Scuttle Fly | b5m=3
Animalia Arthropoda Insecta Diptera Psychodidae | | Moth Flies | b1m=3
Animalia Arthropoda Insecta Diptera Psychodidae Psychoda alternata | Say, 1824 | Trickling Filter Fly | b5m=3
Plantae Tracheophyta Magnoliopsida Asterales Asteraceae Helianthus annuus | L. | Common Sunflower | inat21=5 inat=5 eol=5
Plantae Tracheophyta Magnoliopsida Asterales Asteraceae Taraxacum officinale | F.H.Wigg. | Common Dandelion | inat21=5 inat=4
Plantae Tracheophyta Magnoliopsida Asterales Asteraceae Bellis perennis | L. | Common Daisy | eol=2 dh=no
Plantae Tracheophyta Magnoliopsida Fagales Fagaceae Quercus robur | L. | English Oak | inat21=5 eol=4
Plantae Tracheophyta Magnoliopsida Fagales Fagaceae Quercus | L. | Oaks | inat=3 eol=2
Plantae Tracheophyta Magnoliopsida Rosales Moraceae Morus alba | L. | White Mulberry | inat21=5 eol=5
Plantae Tracheophyta Magnoliopsida Ericales Ericaceae Pieris japonica | (Thunb.) D.Don ex G.Don | Japanese Andromeda | inat=5 eol=4
Plantae Tracheophyta Magnoliopsida Lamiales Lamiaceae Mentha ×piperita | L. | Peppermint | inat=4 eol=3
Plantae Tracheophyta Magnoliopsida Sapindales Sapindaceae Acer saccharum | Marshall | Sugar Maple | inat21=5 eol=4
Plantae Tracheophyta Magnoliopsida Fabales Fabaceae Trifolium repens | L. | White Clover | inat=4 eol=3
Plantae Tracheophyta Pinopsida Pinales Pinaceae Pinus sylvestris | L. | Scots Pine | inat=4 eol=3
Fungi Basidiomycota Agaricomycetes Agaricales Amanitaceae Amanita muscaria | (L.) Lam. | Fly Agaric | inat21=5 inat=5 eol=4
Fungi Basidiomycota Agaricomycetes Boletales Boletaceae Boletus edulis | Bull. | King Bolete | inat21=5 eol=3
Fungi Basidiomycota Agaricomycetes Polyporales Polyporaceae Trametes versicolor | (L.) Lloyd | Turkey Tail | inat=4 eol=3
Fungi Basidiomycota Agaricomycetes Cantharellales Cantharellaceae Cantharellus cibarius | Fr. | Golden Chanterelle | inat=4
Fungi Ascomycota Pezizomycetes Pezizales Morchellaceae Morchella esculenta | (L.) Pers. | Yellow Morel | inat21=5 eol=3
"""  # noqa: E501
# fmt: on


def _parse(line: str) -> Taxon:
    path, authorship, common, options = (part.strip() for part in line.split("|"))
    names = path.split()
    hybrid = len(names) == 7 and names[6].startswith("×")
    names[-1] = names[-1].removeprefix("×")
    settings = dict(option.split("=") for option in options.split())
    counts = {_COUNT_KEYS[k]: int(v) for k, v in settings.items() if k in _COUNT_KEYS}
    return Taxon(tuple(names), authorship, common, counts, hybrid=hybrid,
                 subfamily=settings.get("subfamily", ""), tribe=settings.get("tribe", ""),
                 in_eol_dh=settings.get("dh") != "no")  # fmt: skip


TAXA: tuple[Taxon, ...] = tuple(_parse(line) for line in _TABLE.strip().splitlines())
TAXA_BY_NAME = {taxon.name: taxon for taxon in TAXA}

# Authorship of genera and the homonym genera (same name in two kingdoms).
GENUS_AUTHORSHIP = {
    ("Animalia", "Morus"): "Vieillot, 1816",
    ("Plantae", "Morus"): "L.",
    ("Animalia", "Pieris"): "Schrank, 1801",
    ("Plantae", "Pieris"): "D.Don",
}
HOMONYM_GENERA = ("Morus", "Pieris")


@dataclass(frozen=True)
class Synonym:
    """A name an authority lists as a synonym of an accepted taxon in `TAXA`."""

    name: str
    authorship: str
    accepted: str
    gbif_status: str
    used_by: str  # which sample source uses the name on its records ("" = none)


SYNONYMS = (
    Synonym(
        "Parus caeruleus",
        "Linnaeus, 1758",
        "Cyanistes caeruleus",
        "homotypic synonym",
        "inat-open-data",
    ),
    Synonym("Helix aspersa", "O.F.Müller, 1774", "Cornu aspersum", "homotypic synonym", ""),
    Synonym("Lutra vulgaris", "Erxleben, 1777", "Lutra lutra", "heterotypic synonym", ""),
)

# GBIF `doubtful` rows: (name, authorship, genus it sits under).
DOUBTFUL = (("Lumbricus herculeus", "Savigny, 1826", "Lumbricus"),)

# Vernacular names beyond the English common name: (taxon name, language ISO-639-1, name).
EXTRA_VERNACULARS = (
    ("Pieris rapae", "de", "Kleiner Kohlweißling"),
    ("Pieris rapae", "fr", "Piéride de la rave"),
    ("Lutra lutra", "de", "Fischotter"),
    ("Lutra lutra", "fr", "Loutre d'Europe"),
    ("Morus bassanus", "fr", "Fou de Bassan"),
    ("Morus alba", "de", "Weiße Maulbeere"),
    ("Cyanistes caeruleus", "de", "Blaumeise"),
    ("Helianthus annuus", "fr", "Tournesol"),
    ("Amanita muscaria", "de", "Fliegenpilz"),
    ("Quercus robur", "de", "Stieleiche"),
)
