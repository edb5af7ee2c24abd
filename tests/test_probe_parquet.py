"""Parquet probe sets read by row groups: byte budget over a loopback HTTP server, cache, hub-cache path.

The shards hold real JPEG photos (foolbox's 20 ImageNet photos, re-encoded into 800 distinct rows) written by
``datasets`` in row groups of 50 rows, as hub image datasets are.
"""

from __future__ import annotations

import io

import numpy as np
import pyarrow.parquet as pq
import pytest

from hubstab.adapters import load_probe_set, probe_cache
from hubstab.adapters.parquet import select_row_groups
from tests.hub_cache import add_repo
from tests.parquet_shards import write_shards
from tests.range_server import serve

ROWS_PER_GROUP = 50


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    pytest.importorskip("foolbox")
    folder = tmp_path_factory.mktemp("shards") / "data"
    return write_shards(folder, num_shards=4, rows_per_shard=200, rows_per_group=ROWS_PER_GROUP, size=64)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HUBSTAB_CACHE", str(tmp_path / "probe-cache"))
    return tmp_path / "probe-cache"


def _footer_bytes(path) -> int:
    return pq.ParquetFile(path).metadata.serialized_size + 8


def _group_bytes(path, group: int) -> int:
    rg = pq.ParquetFile(path).metadata.row_group(group)
    return sum(rg.column(j).total_compressed_size for j in range(rg.num_columns))


def test_block_sampling_is_seeded_and_covers_few_groups():
    sizes = [50] * 16 + [30]
    groups, rows = select_row_groups(sizes, 12, seed=0)
    assert groups == select_row_groups(sizes, 12, seed=0)[0] and len(rows) == 12 == len(set(rows))
    assert len(groups) == 1
    starts = np.cumsum([0, *sizes])
    assert all(any(starts[g] <= r < starts[g + 1] for g in groups) for r in rows)
    assert select_row_groups(sizes, 12, seed=1)[1] != rows
    groups, rows = select_row_groups(sizes, 120, seed=3)
    assert len(groups) == 3 and len(rows) == 120 and rows == sorted(rows)
    assert select_row_groups(sizes, 10_000, seed=0)[1] == list(range(830))


def test_http_range_reads_stay_within_budget_and_cache_reads_nothing(shards, cache):
    total = sum(p.stat().st_size for p in shards)
    with serve(shards[0].parent) as server:
        urls = [f"{server.url}/{p.name}" for p in shards]
        probes = load_probe_set(urls, num_images=12, seed=0)  # 1.5% of 800 rows
        sel = probes.info["probe_selection"]
        assert probes.info["selection"] == "row-groups" and sel["scheme"] == "row-groups"
        assert sel["source"] == "http" and sel["cache"] == "miss" and len(probes) == 12
        budget = sum(_group_bytes(shards[f], g) for f, g in sel["row_groups"]) + sum(
            map(_footer_bytes, shards)
        )
        assert server.bytes_sent <= 2 * budget, (server.bytes_sent, budget)
        assert server.bytes_sent < 0.3 * total
        sizes = {f"/{p.name}": p.stat().st_size for p in shards}
        assert all(
            end - start + 1 < sizes[path] / 2 for path, start, end in server.requests
        )  # never whole files

        # the rows are the source's rows at the recorded indices, and they decode to real photos
        whole = [r for p in shards for r in pq.read_table(p).to_pylist()]
        for i, index in enumerate(probes.info["indices"]):
            assert probes.rows[i]["image"]["bytes"] == whole[index]["image"]["bytes"]
            image, label, idx = probes[i]
            assert idx == index and label == whole[index]["label"] and image.shape[0] == 3
            assert float(image.std()) > 0.05 and image.shape[1] == 64
        assert probes.info["class_names"][0] == "n01440764" and probes.info["num_rows"] == 800

        sent, requests = server.bytes_sent, len(server.requests)
        again = load_probe_set(urls, num_images=12, seed=0)
        assert server.bytes_sent == sent and len(server.requests) == requests
        assert again.info["probe_selection"]["cache"] == "hit"
        assert again.info["indices"] == probes.info["indices"]
        assert [r["image"]["bytes"] for r in again.rows] == [r["image"]["bytes"] for r in probes.rows]

        other = load_probe_set(urls, num_images=12, seed=5)  # another selection is fetched, not confused
        assert other.info["probe_selection"]["cache"] == "miss" and server.bytes_sent > sent
        many = load_probe_set(urls, num_images=160, seed=1)  # several files, read in parallel
        assert len({f for f, _ in many.info["probe_selection"]["row_groups"]}) > 1
        assert [r["image"]["bytes"] for r in many.rows] == [
            whole[i]["image"]["bytes"] for i in many.info["indices"]
        ]
        assert [r["label"] for r in many.rows] == [whole[i]["label"] for i in many.info["indices"]]
    assert len(probe_cache.entries()) == 3


def test_local_folder_and_cache_bound(shards, cache, monkeypatch, capsys):
    probes = load_probe_set(shards[0].parent, split="validation", num_images=60, seed=2)
    sel = probes.info["probe_selection"]
    assert len(probes) == 60 and len(sel["row_groups"]) == 2 and sel["rows_in_row_groups"] == 100
    assert probes.info["split"] == "validation"
    entry = probe_cache.entries()[0]
    assert entry.info["indices"] == probes.info["indices"] and entry.info["dataset"] == probes.info["dataset"]
    # a bound smaller than two entries keeps only the newest one
    monkeypatch.setenv("HUBSTAB_CACHE_MAX_BYTES", str(int(entry.size * 1.5)))
    load_probe_set(shards[0].parent, split="validation", num_images=60, seed=3)
    kept = probe_cache.entries()
    assert len(kept) == 1 and kept[0].key != entry.key
    from hubstab.cli import main

    assert main(["cache", "ls"]) == 0
    listed = capsys.readouterr().out
    assert "1 probe set(s)" in listed and kept[0].key[:16] in listed and "60 images, seed 3" in listed
    assert main(["cache", "clear", "0" if not kept[0].key.startswith("0") else "1"]) == 0
    assert len(probe_cache.entries()) == 1
    assert main(["cache", "clear"]) == 0 and "removed 1" in capsys.readouterr().out
    assert probe_cache.entries() == []


def test_hub_id_reads_parquet_from_the_hub_cache(shards, cache, tmp_path, monkeypatch):
    hf_home = tmp_path / "hf"
    commit = add_repo(hf_home, "hubstab-test/imagenet-shards", shards[0].parent.parent, repo_type="dataset")
    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    probes = load_probe_set("hubstab-test/imagenet-shards", split="validation", num_images=10, seed=0)
    sel = probes.info["probe_selection"]
    assert probes.info["dataset"] == "hubstab-test/imagenet-shards"
    assert probes.info["dataset_revision"] == commit and sel["source"] == "hub-cache"
    assert len(sel["row_groups"]) == 1 and len(probes) == 10
    assert io.BytesIO(probes.rows[0]["image"]["bytes"]).read(2) == b"\xff\xd8"  # JPEG


def test_hub_id_online_reads_the_parquet_conversion_through_hf_paths(shards, cache, tmp_path, monkeypatch):
    """The online hub path up to the HfFileSystem boundary: a dataset whose own files are not parquet is read
    from the hub's conversion branch (refs/convert/parquet) by ``hf://`` paths; the file system behind
    ``hf://`` is replaced by a folder laid out like the hub's paths, so the range reads are real."""
    import shutil

    import fsspec
    import huggingface_hub
    from fsspec.implementations.dirfs import DirFileSystem
    from fsspec.implementations.local import LocalFileSystem

    import hubstab.adapters.resolve as resolve

    repo, sha = "hubstab-test/imagenet-converted", "c" * 40
    root = tmp_path / "hub"
    split_dir = (
        root
        / "datasets"
        / "hubstab-test"
        / "imagenet-converted@refs%2Fconvert%2Fparquet"
        / "default"
        / "validation"
    )
    split_dir.mkdir(parents=True)
    for i, p in enumerate(shards[:2]):
        shutil.copyfile(p, split_dir / f"{i:04d}.parquet")

    class FakeHubFileSystem(DirFileSystem):
        protocol = "hf"

        def __init__(self, *args, **kwargs):
            super().__init__(path=str(root), fs=LocalFileSystem())

    class Info:
        pass

    def dataset_info(self, repo_id, revision=None, timeout=None):
        assert repo_id == repo
        info = Info()
        info.sha = sha
        return info

    monkeypatch.setattr(resolve, "hub_reachable", lambda timeout=3.0: True)
    monkeypatch.setattr(huggingface_hub.HfApi, "dataset_info", dataset_info)
    monkeypatch.setattr(huggingface_hub, "HfFileSystem", FakeHubFileSystem)
    fsspec.register_implementation("hf", FakeHubFileSystem, clobber=True)
    try:
        probes = load_probe_set(repo, split="validation", num_images=8, seed=4)
    finally:
        fsspec.register_implementation("hf", "huggingface_hub.HfFileSystem", clobber=True)
    sel = probes.info["probe_selection"]
    assert probes.info["dataset"] == repo and probes.info["dataset_revision"] == sha
    assert sel["source"] == "hf" and sel["files"][0].startswith(f"hf://datasets/{repo.split('/')[0]}/")
    assert "refs%2Fconvert%2Fparquet/default/validation/0000.parquet" in sel["files"][0]
    assert probes.info["num_rows"] == 400 and len(probes) == 8 and len(sel["row_groups"]) == 1
    whole = [r for p in shards[:2] for r in pq.read_table(p).to_pylist()]
    assert [r["image"]["bytes"] for r in probes.rows] == [
        whole[i]["image"]["bytes"] for i in probes.info["indices"]
    ]
