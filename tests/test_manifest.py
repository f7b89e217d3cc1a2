import pytest

from treeoflife.errors import TolError
from treeoflife.manifest import find_manifest, load_manifest, load_pipeline, repo_dir
from treeoflife.sources import LOADERS

SOURCE_MANIFESTS = sorted(
    p for p in repo_dir("manifests").rglob("*.toml") if "benchmarks" not in p.parts
)


@pytest.mark.parametrize("path", SOURCE_MANIFESTS, ids=str)
def test_every_shipped_manifest_loads(path):
    manifest = load_manifest(path)
    assert manifest.files, f"{path} lists no files"
    for spec in manifest.files.values():
        assert spec.url.startswith("https://"), spec.url
    assert manifest.license


@pytest.mark.parametrize("name", ["treeoflife-10m", "sample"])
def test_pipelines_name_known_sources(name):
    pipeline = load_pipeline(name)
    assert set(pipeline.sources) <= set(LOADERS)
    for manifest in pipeline.sources.values():
        assert manifest.pull_files()


def test_real_pipeline_is_treeoflife_10m_sources():
    pipeline = load_pipeline("treeoflife-10m")
    assert set(pipeline.sources) == {"inat21", "bioscan-1m", "eol"}
    assert pipeline.stages["shard"]["val_fraction"] == 0.05


def test_mirror_keeps_host_and_path():
    manifest = load_pipeline("treeoflife-10m").sources["eol"]
    assert (
        manifest.download_url("media_manifest", None) == "https://eol.org/data/media_manifest.tgz"
    )
    assert (
        manifest.download_url("media_manifest", "http://127.0.0.1:9/m")
        == "http://127.0.0.1:9/m/eol.org/data/media_manifest.tgz"
    )


def test_bad_manifests_name_the_file_and_field(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[source]\nname = "eol"\nversion = "1"\n')
    with pytest.raises(TolError, match=r"bad.toml.*base_url"):
        load_manifest(path)
    path.write_text(
        '[source]\nname = "eol"\nversion = "1"\nbase_url = "https://x/"\n'
        '[files.a]\npath = "a"\nstage = "later"\n'
    )
    with pytest.raises(TolError, match=r"\[files.a\].*stage"):
        load_manifest(path)
    path.write_text("not toml [")
    with pytest.raises(TolError, match="invalid TOML"):
        load_manifest(path)
    with pytest.raises(TolError, match="no such file"):
        load_pipeline("does-not-exist")


def test_sources_outside_the_pipeline_find_their_pinned_manifest():
    assert find_manifest("bioscan-5m").version == "1.0"
    assert find_manifest("inat-open-data").files["photos"].member == "*/photos.csv"
    with pytest.raises(TolError, match="0 manifests"):
        find_manifest("nope")
