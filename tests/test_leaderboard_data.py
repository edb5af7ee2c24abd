"""The leaderboard's data layer: reading results, ranking, filters, the reference error, the fitted law."""

from __future__ import annotations

import copy
import csv
import json
import math

import numpy as np
import pytest
from _leaderboard_records import measure, mlp, quick_linear, random_cnn, write_records

from hubstab.errors import HubstabError
from hubstab.leaderboard import columns as C
from hubstab.leaderboard import fitting, plots, reading


@pytest.fixture(scope="module")
def records() -> list[dict]:
    """Real measurements on Fashion-MNIST: a quickly trained linear model and random-init networks."""
    return [
        measure(quick_linear(), "fmnist/linear-trained", pretrained=True, sweep=True, adapter="torch"),
        measure(random_cnn(1), "fmnist/smallcnn-init-seed1", pretrained=False, layers=True),
        measure(random_cnn(2), "fmnist/smallcnn-init-seed2", pretrained=False),
        measure(mlp(3), "fmnist/mlp-init-seed3", pretrained=False, adapter="custom"),
    ]


def _timm_rows() -> dict[str, list[tuple[int, float]]]:
    rows: dict[str, list[tuple[int, float]]] = {}
    with open(reading.TIMM_RESULTS_CSV, newline="") as f:
        for row in csv.DictReader(f):
            rows.setdefault(row["model"], []).append((int(row["img_size"]), float(row["top1_err"])))
    return rows


def test_shipped_reference_keeps_its_source_note():
    note = (reading.DATA_DIR / "SOURCE.md").read_text()
    assert "pytorch-image-models" in note and "Apache-2.0" in note
    assert len(_timm_rows()) > 1000


def test_read_results_dir_skips_and_reports_bad_files(records, tmp_path):
    paths = write_records(tmp_path, records)
    assert len({p.parent for p in paths}) == len(records)  # one folder per model, as hubstab eval writes
    (paths[0].parent / "broken.json").write_text('{"schema_version": 1,')
    nan_string = copy.deepcopy(records[1])
    nan_string["results"]["relative_stability"] = "NaN"
    (tmp_path / "nan.json").write_text(json.dumps(nan_string))
    (tmp_path / "big.json").write_text(json.dumps(records[2]) + " " * 3000)
    (tmp_path / "x.samples.json").write_text(json.dumps({"run_id": records[0]["run_id"], "index": [0, 1]}))
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "skip.json").write_text("not read")

    size = max(len(p.read_text()) for p in paths) + 100
    loaded = reading.read_results_dir(tmp_path, max_bytes=size)
    assert sorted(r["run_id"] for r in loaded.records) == sorted(r["run_id"] for r in records)
    problems = {p.path.rsplit("/", 1)[-1]: p.message for p in loaded.problems}
    assert set(problems) == {"broken.json", "nan.json", "big.json"}
    assert "not valid JSON" in problems["broken.json"]
    assert "results.relative_stability: must be a number, got the string 'NaN'" in problems["nan.json"]
    assert "more than the limit" in problems["big.json"]
    assert "3 file(s) skipped" in loaded.summary()


def test_table_ranks_by_relative_stability(records):
    frame = reading.records_to_frame(records)
    measured = sorted(r["results"]["relative_stability"] for r in records)
    assert frame[C.R_F].tolist() == measured
    # only the trained model is ranked; the random initialisations are not ranked among trained models
    trained = [r["config"]["pretrained"] is not False for r in records]
    assert frame[C.RANK].notna().tolist() == [not u for u in frame[reading.UNTRAINED]]
    assert frame[C.RANK].dropna().tolist() == [1] and sum(trained) == 1
    assert (
        frame[C.MODEL].iloc[0]
        == min(records, key=lambda r: r["results"]["relative_stability"])["config"]["model_name"]
    )
    row = frame[frame[C.MODEL] == "fmnist/linear-trained"].iloc[0]
    rec = records[0]
    assert row[C.TEST_ERROR] == pytest.approx(100 * rec["results"]["test_error"])
    assert (
        row[C.D_F] == rec["results"]["diffeo_stability"] and row[C.G_F] == rec["results"]["noise_stability"]
    )
    assert row[C.IMAGES] == 64 and row[C.INPUT_SIZE] == "28x28"
    assert row[C.PARAMETERS] == pytest.approx(7850 / 1e6)
    assert row[C.PROTOCOL] == "custom (delta=1px cut=3 linear mean)"
    assert row[C.DATASET] == "fashion_mnist [test]"
    lo, hi = rec["results"]["relative_stability_ci"]
    assert row[C.R_F_INTERVAL] == f"{lo:.3g} - {hi:.3g} (95%)"
    assert C.INVARIANCE not in frame  # optional columns only when a record has the metric


def test_optional_metric_columns_appear_when_present(records):
    from conftest import load_fashion_mnist

    from hubstab.metrics.equivariance import equivariance_deviation

    images, _ = load_fashion_mnist("t10k", 8)
    rec = copy.deepcopy(records[2])  # random_cnn(2)
    deviation = equivariance_deviation(random_cnn(2), images, "rotation90").to_dict()
    rec["results"]["equivariance"] = deviation
    frame = reading.records_to_frame([rec, records[1]])
    row = frame.set_index(C.MODEL).loc[rec["config"]["model_name"]]
    assert row[C.INVARIANCE] == deviation["output"]
    assert row[C.INVARIANCE_SETTING] == "rotation90, invariance, cosine"
    assert frame[C.INVARIANCE].isna().sum() == 1
    assert {C.INVARIANCE, C.INVARIANCE_SETTING} <= set(reading.display_frame(frame).columns)
    assert C.D_STAR not in frame


def test_rank_counts_within_dataset_and_protocol_and_missing_last(records):
    other = measure(
        quick_linear(4, steps=5), "fmnist/linear-short", pretrained=True, num_images=32, bootstrap=0
    )
    other["config"]["split"] = "validation"  # a different group: ranked on its own
    missing = copy.deepcopy(records[2])
    missing["config"]["model_name"] = "fmnist/no-r"
    missing["results"]["relative_stability"] = None
    frame = reading.records_to_frame([*records, other, missing])
    assert math.isnan(frame[C.R_F].iloc[-1]) and frame[C.MODEL].iloc[-1] == "fmnist/no-r"
    assert frame[C.RANK].isna().iloc[-1]
    in_other = frame[frame[C.DATASET] == "fashion_mnist [validation]"]
    assert in_other[C.RANK].tolist() == [1] and in_other[C.R_F_INTERVAL].tolist() == ["n/a"]
    main = frame[frame[C.DATASET] == "fashion_mnist [test]"].dropna(subset=[C.R_F])
    assert main[C.RANK].dropna().tolist() == [1]
    assert reading.default_group(frame) == "fashion_mnist [test] | custom (delta=1px cut=3 linear mean)"


def test_newest_run_wins_by_created_at_not_file_name(tmp_path):
    # two real runs of the same model, dataset and protocol (different seeds: different R_f)
    old = measure(random_cnn(5), "fmnist/cnn", pretrained=False, num_images=32)
    new = copy.deepcopy(old)
    from conftest import load_fashion_mnist

    from hubstab import relative_stability
    from hubstab.results.record import build_record

    images, labels = load_fashion_mnist("t10k", 32)
    result = relative_stability(random_cnn(5), images, labels, seed=11, bootstrap=50)
    new = build_record(result, old["config"])
    assert new["run_id"] != old["run_id"] and reading.record_key(new) == reading.record_key(old)
    assert new["results"]["relative_stability"] != old["results"]["relative_stability"]
    old["created_at"] = "2026-01-02T00:00:00+00:00"
    new["created_at"] = "2026-01-01T23:00:00-02:00"  # one hour later than `old`, in another time zone
    # file names that sort the other way round
    (tmp_path / "a_new.json").write_text(json.dumps(old))
    (tmp_path / "z_old.json").write_text(json.dumps(new))
    loaded = reading.read_results_dir(tmp_path)
    kept, dropped = reading.select_runs(loaded.records)
    assert dropped == 1 and [r["run_id"] for r in kept] == [new["run_id"]]
    frame = reading.records_to_frame(kept)
    assert frame[C.R_F].tolist() == [new["results"]["relative_stability"]]
    assert frame[C.DATE].tolist() == ["2026-01-02 01:00"]


def test_trained_and_untrained_runs_of_a_model_are_separate_rows():
    """A model's random initialisation must not replace its trained weights (same name, --untrained)."""
    trained = measure(random_cnn(5), "fmnist/cnn", pretrained=True, num_images=16)
    untrained = measure(random_cnn(6), "fmnist/cnn", pretrained=False, num_images=16)
    assert reading.record_key(trained) != reading.record_key(untrained)
    kept, dropped = reading.select_runs([trained, untrained])
    assert dropped == 0 and len(kept) == 2


def test_filters(records):
    frame = reading.records_to_frame(records)
    assert len(reading.filter_frame(frame)) == 4
    cnn = reading.filter_frame(frame, search="SmallCNN")
    assert sorted(cnn[C.MODEL]) == ["fmnist/smallcnn-init-seed1", "fmnist/smallcnn-init-seed2"]
    either = reading.filter_frame(frame, search="mlp; linear")
    assert sorted(either[C.MODEL]) == ["fmnist/linear-trained", "fmnist/mlp-init-seed3"]
    assert reading.filter_frame(frame, search="(.*").empty  # plain text, not a regular expression
    assert len(reading.filter_frame(frame, families=["smallcnn"])) == 2
    assert reading.filter_frame(frame, adapters=["custom"])[C.MODEL].tolist() == ["fmnist/mlp-init-seed3"]
    assert reading.filter_frame(frame, datasets=["imagenet"]).empty
    assert len(reading.filter_frame(frame, protocols=["custom (delta=1px cut=3 linear mean)"])) == 4
    both = reading.filter_frame(frame, families=["smallcnn"], search="seed2")
    assert both[C.MODEL].tolist() == ["fmnist/smallcnn-init-seed2"]
    assert reading.choices(frame, C.FAMILY) == ["linear", "mlp", "smallcnn"]


def test_display_frame_keeps_order_and_chosen_columns(records):
    frame = reading.records_to_frame(records)
    shown = reading.display_frame(frame, [C.TEST_ERROR, C.RUN_ID])
    assert list(shown.columns) == [C.RANK, C.MODEL, C.R_F, C.TEST_ERROR, C.RUN_ID]
    assert shown[C.MODEL].tolist() == [
        reading.model_markdown(m, reading.model_link(m)) for m in frame[C.MODEL]
    ]  # hub ids linked to their page
    assert shown[C.MODEL].iloc[0].endswith(f"](https://huggingface.co/{frame[C.MODEL].iloc[0]})")
    plain = reading.display_frame(frame, [C.TEST_ERROR, C.RUN_ID], links=False)
    assert plain[C.MODEL].tolist() == frame[C.MODEL].tolist()
    assert shown[C.R_F].tolist() == [float(f"{r:.3g}") for r in frame[C.R_F]]
    assert frame[C.TIMM_ERROR].isna().all()  # no timm reference for these models: an empty column, hidden
    assert list(reading.display_frame(frame).columns) == [
        c for c in C.DEFAULT_COLUMNS if c in frame and c != C.TIMM_ERROR
    ]


@pytest.mark.parametrize(
    ("name", "family"),
    [
        ("resnet50", "resnet"),
        ("timm/resnet50.a1_in1k", "resnet"),
        ("hf-hub:timm/vit_base_patch16_224.augreg_in21k", "vit"),
        ("deit_small_patch16_224", "deit"),
        ("convnext_tiny.fb_in1k", "convnext"),
        ("tf_efficientnet_lite0", "efficientnet"),
        ("efficientnetv2_rw_s", "efficientnet"),
        ("mobilenetv3_large_100", "mobilenet"),
        ("wide_resnet50_2", "resnet"),
        ("google/vit-base-patch16-224", "vit"),
        ("microsoft/resnet-50", "resnet"),
        ("facebook/convnext-tiny-224@main", "convnext"),
        ("123", "other"),
    ],
)
def test_model_family(name, family):
    assert reading.model_family(name) == family


def test_reference_error_from_timm_results():
    ref = reading.ReferenceErrors.from_csv()
    rows = _timm_rows()
    two_sizes = next(m for m, r in rows.items() if len({s for s, _ in r}) == 2)
    (s1, e1), (s2, e2) = sorted(rows[two_sizes])
    assert ref.lookup(two_sizes, s1) == e1 and ref.lookup(two_sizes, s2) == e2
    assert ref.lookup(f"hf-hub:timm/{two_sizes}", s2 + 10) == e2  # prefixes stripped, nearest size
    assert ref.lookup(f"timm/{two_sizes}@main", s1) == e1
    # an architecture without a tag resolves to timm's default pretrained tag
    import timm.models

    tag = timm.models.get_pretrained_cfg("tf_efficientnet_lite0").tag
    assert ref.lookup("tf_efficientnet_lite0", 224) == rows[f"tf_efficientnet_lite0.{tag}"][0][1]
    assert ref.lookup("not_a_model_xyz", 224) is None
    assert ref.lookup("google/vit-base-patch16-224", 224) is None


def test_reference_error_only_for_pretrained_rows(records):
    name = next(iter(_timm_rows()))
    trained, untrained = copy.deepcopy(records[1]), copy.deepcopy(records[2])
    for rec, flag in ((trained, True), (untrained, False)):
        rec["config"]["model_name"] = name
        rec["config"]["pretrained"] = flag
        rec["config"]["dataset"] = f"d{flag}"
    frame = reading.records_to_frame([trained, untrained], reading.default_reference())
    by_pretrained = dict(zip(frame[C.PRETRAINED], frame[C.TIMM_ERROR], strict=True))
    assert by_pretrained["yes"] == reading.default_reference().lookup(name, 28)
    assert math.isnan(by_pretrained["no"])


def test_fit_recovers_the_law_on_synthetic_data():
    from scipy import stats

    rng = np.random.default_rng(0)
    r = np.exp(rng.uniform(np.log(0.01), np.log(3.0), 40))
    a_true = 0.2
    eps = a_true * np.sqrt(r) * np.exp(rng.normal(0, 0.2, r.size))
    fit = fitting.fit_sqrt_law(r, eps)
    assert fit.n == 40 and fit.excluded == 0
    assert abs(fit.a - a_true) < 4 * fit.a_se and 0 < fit.a_se < 0.02
    ref = stats.linregress(np.log(r), np.log(eps))
    assert fit.slope == pytest.approx(ref.slope, rel=1e-10)
    assert fit.slope_se == pytest.approx(ref.stderr, rel=1e-10)
    assert abs(fit.slope - 0.5) < 4 * fit.slope_se
    exact = fitting.fit_sqrt_law(r, 0.3 * np.sqrt(r))
    assert exact.a == pytest.approx(0.3, rel=1e-12) and exact.a_se < 1e-12
    assert exact.predict(4.0) == pytest.approx(0.6)


def test_fit_edge_cases():
    none = fitting.fit_sqrt_law([0.5, float("nan")], [0.0, 0.2])
    assert none.n == 0 and none.excluded == 2 and math.isnan(none.a)
    assert "nothing to fit" in none.describe()
    one = fitting.fit_sqrt_law([0.25], [0.1])
    assert one.a == pytest.approx(0.2) and math.isnan(one.a_se) and math.isnan(one.slope)
    with pytest.raises(ValueError, match="equal length"):
        fitting.fit_sqrt_law([1.0, 2.0], [0.1])


def test_spearman_matches_scipy_with_ties():
    from scipy import stats

    rng = np.random.default_rng(1)
    x = rng.integers(0, 6, 30).astype(float)
    y = x + rng.integers(0, 4, 30)
    y[3] = np.nan
    got = fitting.spearman(x, y)
    keep = ~np.isnan(y)
    assert got.n == 29
    assert got.rho == pytest.approx(stats.spearmanr(x[keep], y[keep]).statistic, rel=1e-12)
    assert fitting.spearman([1, 2, 3], [3, 2, 1]).rho == pytest.approx(-1.0)
    assert math.isnan(fitting.spearman([1, 2], [1, 2]).rho)
    assert math.isnan(fitting.spearman([1, 1, 1], [1, 2, 3]).rho)


def test_law_plot_over_measured_models(records):
    frame = reading.records_to_frame(records)
    law = plots.law_plot(frame, plots.HUBSTAB_ERROR)
    errors = [r["results"]["test_error"] for r in records]
    expected = fitting.fit_sqrt_law([r["results"]["relative_stability"] for r in records], errors)
    assert law.fit.n == expected.n == 4
    assert (law.fit.a, law.fit.a_se, law.fit.slope) == pytest.approx(
        (expected.a, expected.a_se, expected.slope)
    )
    assert law.correlation.n == 4
    spec = law.chart.to_dict()
    points = [layer for layer in spec["layer"] if layer["mark"]["type"] in ("circle", "point")]
    assert len(points) == 2  # trained: filled circles; at initialisation: hollow diamonds
    data = {p["mark"]["type"]: spec["datasets"][p["data"]["name"]] for p in points}
    assert sorted(d["model"] for d in data["circle"] + data["point"]) == sorted(
        r["config"]["model_name"] for r in records
    )
    assert {d["state"] for d in data["circle"]} == {plots.TRAINED}
    assert {d["state"] for d in data["point"]} == {plots.AT_INIT}
    point_layer = next(p for p in points if p["mark"]["type"] == "point")
    assert point_layer["mark"]["shape"] == "diamond" and point_layer["mark"]["filled"] is False
    assert points[0]["encoding"]["x"]["scale"]["type"] == "log"
    assert points[0]["encoding"]["y"]["scale"]["type"] == "log"
    assert {t["field"] for t in points[0]["encoding"]["tooltip"]} >= {"model", "R_f", "error"}
    assert any(layer["mark"]["type"] == "line" for layer in spec["layer"])  # the fitted law
    assert f"a = {expected.a:.3g}" in json.dumps(spec["title"])
    # no timm reference for these models: nothing to plot against it
    ref_law = plots.law_plot(frame, plots.TIMM_REFERENCE_ERROR)
    assert ref_law.chart is None and ref_law.fit.n == 0
    assert plots.law_plot(frame.iloc[0:0]).chart is None


def test_law_plot_can_leave_untrained_models_out_of_the_fit(records):
    frame = reading.records_to_frame(records)
    trained = [r for r in records if r["config"]["pretrained"] is not False]
    assert 0 < len(trained) < len(records)
    law = plots.law_plot(frame, plots.HUBSTAB_ERROR, include_untrained=False)
    expected = fitting.fit_sqrt_law(
        [r["results"]["relative_stability"] for r in trained], [r["results"]["test_error"] for r in trained]
    )
    assert law.fit.n == expected.n == len(trained)
    assert law.fit.a == pytest.approx(expected.a)
    assert f"{len(records) - len(trained)} untrained model(s) plotted, not fitted" in law.note
    spec = law.chart.to_dict()
    points = [layer for layer in spec["layer"] if layer["mark"]["type"] in ("circle", "point")]
    assert sum(len(spec["datasets"][p["data"]["name"]]) for p in points) == len(records)  # all still plotted


def test_law_plot_picks_one_dataset_and_protocol(records):
    other = copy.deepcopy(records[0])
    other["config"]["dataset"] = "elsewhere"
    frame = reading.records_to_frame([*records, other])
    law = plots.law_plot(frame)
    assert law.dataset == "fashion_mnist [test]" and law.fit.n == 4
    assert "largest of 2" in law.note
    chosen = plots.law_plot(
        frame, group=reading.group_labels(frame)[frame[C.DATASET] == "elsewhere [test]"].iloc[0]
    )
    assert chosen.dataset == "elsewhere [test]" and chosen.fit.n == 1 and "one of 2" in chosen.note
    both = plots.law_plot(frame, include_untrained=False, all_groups=True)
    assert sorted(both.group_fits) == sorted(set(frame[reading.GROUP]))
    main = next(g for g in both.group_fits if g.startswith("fashion_mnist"))
    assert both.group_fits[main].n == 1  # the trained model only
    assert both.group_fits[main].a == pytest.approx(both.fit.a)
    spec = both.chart.to_dict()
    line = next(layer for layer in spec["layer"] if layer["mark"]["type"] == "line")
    assert {d["group"] for d in spec["datasets"][line["data"]["name"]]} == set(both.group_fits)


def test_detail_charts(records):
    sweep = plots.sweep_chart(records[0])
    assert sweep is not None
    spec = sweep.to_dict()
    data = max(spec["datasets"].values(), key=len)  # the lines (the other data: the R_f band, protocol T)
    assert {d["quantity"] for d in data} == {"R_f", "D_f", "G_f"}
    assert len(data) == 3 * len(records[0]["results"]["sweep"])
    assert plots.sweep_chart(records[2]) is None  # a single temperature: no sweep
    layers = plots.layers_chart(records[1])
    layer_data = next(iter(layers.to_dict()["datasets"].values()))
    assert [d["layer"] for d in layer_data if d["quantity"] == "R"] == [
        "block1",
        "block2",
        "block3",
        "output",
    ]
    assert plots.layers_chart(records[2]) is None


def test_submission(records, tmp_path):
    good = tmp_path / "good.json"
    good.write_text(json.dumps(records[0]))
    assert reading.accept_submission(str(good)) == records[0]
    bad = copy.deepcopy(records[0])
    bad["config"]["protocol"].pop("estimator")
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(HubstabError, match=r"config\.protocol\.estimator: is required"):
        reading.accept_submission(str(tmp_path / "bad.json"))
    with pytest.raises(HubstabError, match="no file"):
        reading.accept_submission(None)
    assert "R_f = " in reading.describe_record(records[0])


def _hub_cache(root, repo_id: str, records: list[dict]):
    """A dataset repo laid out as huggingface_hub caches it."""
    org, name = repo_id.split("/")
    repo = root / "hub" / f"datasets--{org}--{name}"
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = repo / "snapshots" / commit
    write_records(snapshot, records)
    (snapshot / "README.md").write_text("results")
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot


def test_hub_dataset_source_offline(records, tmp_path, monkeypatch):
    import huggingface_hub.constants as hf_constants

    _hub_cache(tmp_path, "hubstab-org/results", records[:3])
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(tmp_path)  # so the repo id is not mistaken for a local folder
    loaded = reading.load_results("hubstab-org/results")
    assert loaded.source == "hub dataset hubstab-org/results"
    assert sorted(r["run_id"] for r in loaded.records) == sorted(r["run_id"] for r in records[:3])
    assert loaded.problems == []
    assert len(reading.load_hub_results("hubstab-org/results").records) == 3
    with pytest.raises(HubstabError, match="cannot fetch the results dataset 'hubstab-org/missing'"):
        reading.load_results("hubstab-org/missing")
    with pytest.raises(HubstabError, match="not a hub dataset repo id"):
        reading.load_hub_results(str(tmp_path))
    with pytest.raises(HubstabError, match="neither an existing folder nor a hub dataset repo id"):
        reading.load_results("no/such/folder")


def test_cli_reports_a_bad_results_source(tmp_path, capsys):
    from hubstab.cli import build_parser, main

    args = build_parser().parse_args(["leaderboard", "--results", "x", "--port", "7999"])
    assert (args.results, args.port, args.host, args.share) == ("x", 7999, "127.0.0.1", False)
    assert main(["leaderboard", "--results", str(tmp_path / "a" / "b")]) == 2
    assert "neither an existing folder nor a hub dataset repo id" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["leaderboard", "--help"])
    usage = " ".join(capsys.readouterr().out.split())
    assert "default $HUBSTAB_RESULTS, else ./hubstab-results (the folder hubstab eval writes)" in usage
    from hubstab.cli.eval import DEFAULT_RESULTS_DIR

    assert reading.DEFAULT_RESULTS == DEFAULT_RESULTS_DIR == "hubstab-results"  # one default everywhere


def test_app_builds_over_an_empty_folder(tmp_path):
    from hubstab.leaderboard import app

    frame = reading.records_to_frame([])
    assert frame.empty and list(reading.display_frame(frame).columns)[:3] == [C.RANK, C.MODEL, C.R_F]
    assert plots.law_plot(frame).chart is None
    board = app.Board(tmp_path)
    assert board.loaded.records == [] and "0 valid results file(s)" in board.loaded.summary()
    demo = app.build_app(tmp_path)
    timers = [c for c in demo.config["components"] if c.get("type") == "timer"]
    assert [t["props"]["value"] for t in timers] == [app.REFRESH_S] == [600.0]  # re-read every 10 minutes


def test_board_reload_picks_up_new_files(records, tmp_path):
    from hubstab.leaderboard import app

    board = app.Board(tmp_path)
    write_records(tmp_path, records[:2])
    assert board.loaded.records == []
    assert not board.refresh(60.0)  # read less than a minute ago: not again
    assert board.loaded.records == []
    assert board.refresh(0.0)  # older than asked: read again
    frame, kept, _ = board.table([])
    assert sorted(r["run_id"] for r in kept) == sorted(r["run_id"] for r in records[:2]) and len(frame) == 2


@pytest.mark.slow
def test_real_timm_model_gets_its_published_error(efficientnet_lite0, imagenet_photos):
    """EfficientNet-Lite0 with real ImageNet weights on 20 real photos: both errors side by side."""
    from hubstab import relative_stability
    from hubstab.results.record import build_record

    images, labels, _ = imagenet_photos
    result = relative_stability(
        efficientnet_lite0, images, labels, mean=[0.5] * 3, std=[0.5] * 3, bootstrap=200, batch_size=30
    )
    config = {
        "model_name": "tf_efficientnet_lite0",
        "adapter": "timm",
        "pretrained": True,
        "num_parameters": sum(p.numel() for p in efficientnet_lite0.parameters()),
        "dataset": "foolbox-imagenet-photos",
    }
    record = build_record(result, config)
    frame = reading.records_to_frame([record], reading.default_reference())
    row = frame.iloc[0]
    rows = _timm_rows()
    import timm.models

    tag = timm.models.get_pretrained_cfg("tf_efficientnet_lite0").tag
    assert row[C.TIMM_ERROR] == dict(rows[f"tf_efficientnet_lite0.{tag}"])[224]
    assert row[C.TEST_ERROR] == pytest.approx(100 * result.test_error)
    assert row[C.FAMILY] == "efficientnet" and row[C.INPUT_SIZE] == "224x224"
    law = plots.law_plot(frame, plots.TIMM_REFERENCE_ERROR)
    assert law.chart is not None and law.fit.n == 1
    assert law.fit.a == pytest.approx(row[C.TIMM_ERROR] / 100 / math.sqrt(result.relative_stability))


@pytest.fixture(scope="module")
def trained_records() -> list[dict]:
    """Three models trained on Fashion-MNIST for about a second each (different R_f and errors)."""
    return [
        measure(quick_linear(5, steps=30), "fmnist/linear-30-steps", pretrained=True),
        measure(quick_linear(1, steps=6), "fmnist/linear-6-steps", pretrained=True),
        measure(quick_linear(2, steps=40, hidden=32), "fmnist/mlp-40-steps", pretrained=True),
    ]


def test_ranks_count_trained_models_within_each_group(records, trained_records):
    untrained = [r for r in records if r["config"]["pretrained"] is False]
    elsewhere = copy.deepcopy(trained_records[1])
    elsewhere["config"]["dataset"] = "elsewhere"
    frame = reading.records_to_frame([*records, *trained_records, elsewhere])
    main = "fashion_mnist [test] | custom (delta=1px cut=3 linear mean)"
    assert [g for g, _ in reading.groups(frame)] == [
        main,
        "elsewhere [test] | custom (delta=1px cut=3 linear mean)",
    ]
    assert reading.groups(frame)[0][1] == 4 and reading.default_group(frame) == main
    labels = dict((v, k) for k, v in reading.group_choices(frame))
    assert labels[main] == f"{main} (4 models, {len(untrained)} at initialisation)"
    shown = reading.filter_frame(frame, group=main, untrained=False)
    trained_names = {r["config"]["model_name"] for r in [records[0], *trained_records]}
    assert set(shown[C.MODEL]) == trained_names
    assert shown[C.RANK].tolist() == [1, 2, 3, 4]  # 1..n within the group, in order of R_f
    assert shown[C.R_F].is_monotonic_increasing
    init = reading.filter_frame(frame, group=main, untrained=True)
    assert len(init) == len(untrained) and init[C.RANK].isna().all()
    other = reading.filter_frame(frame, group="elsewhere [test] | custom (delta=1px cut=3 linear mean)")
    assert other[C.RANK].tolist() == [1]


def test_a_models_row_is_its_run_with_the_most_images():
    model = quick_linear(3, steps=10)
    small = measure(model, "fmnist/linear", pretrained=True, num_images=32, bootstrap=0)
    large = measure(model, "fmnist/linear", pretrained=True, num_images=64, bootstrap=0)
    assert reading.record_key(small) == reading.record_key(large)
    large["created_at"] = "2026-01-01T00:00:00+00:00"
    small["created_at"] = "2026-06-01T00:00:00+00:00"  # newer, but fewer probe images
    kept, left_out = reading.select_runs([large, small])
    assert left_out == 1 and kept[0]["run_id"] == large["run_id"]
    assert reading.records_to_frame(kept)[C.IMAGES].tolist() == [64]


def test_local_paths_are_shown_by_their_folder_name(records):
    rec = copy.deepcopy(records[0])
    rec["config"]["dataset"] = "/tmp/pytest-of-someone/pytest-7/data0/fashion-mnist-test"
    rec["config"]["split"] = "train"
    rec["config"]["model_name"] = "/home/someone/models/my-cnn/"
    hub = copy.deepcopy(records[0])
    hub["config"]["model_name"] = "hf-hub:timm/resnet18.a1_in1k@main"
    timm_name = copy.deepcopy(records[0])
    timm_name["config"].update(model_name="resnet18.a1_in1k", adapter="timm")
    frame = reading.records_to_frame([rec, hub, timm_name])
    shown = reading.display_frame(frame, [c.name for c in C.COLUMNS])
    text = shown.astype(str).to_string()
    assert "/tmp" not in text and "/home" not in text and "someone" not in text
    row = frame[frame[C.MODEL] == "my-cnn"].iloc[0]
    assert row[C.DATASET] == "fashion-mnist-test [train]" and not isinstance(row[reading.LINK], str)
    cells = dict(zip(frame[C.MODEL], shown[C.MODEL], strict=True))
    assert cells["my-cnn"] == r"my\-cnn"  # plain text, no link
    assert cells["hf-hub:timm/resnet18.a1_in1k@main"].endswith(
        "](https://huggingface.co/timm/resnet18.a1_in1k)"
    )
    assert cells["resnet18.a1_in1k"] == r"[resnet18\.a1\_in1k](https://huggingface.co/timm/resnet18.a1_in1k)"
    assert reading.model_link("resnet18", adapter="torch") is None
    assert reading.local_name("C:\\data\\val-images\\") == "val-images"
    assert reading.dataset_label({"dataset": "./imagenet-photos"}) == "imagenet-photos"
    assert reading.dataset_label({"dataset": "benjamin-paine/imagenet-1k", "split": "validation"}) == (
        "benjamin-paine/imagenet-1k [validation]"
    )


def test_markup_in_a_name_is_escaped():
    name = '<img src=x onerror="alert(1)">[click](javascript:alert(1)) *x* & co'
    cell = reading.model_markdown(name, reading.model_link(name))
    assert "<" not in cell and ">" not in cell and "](" not in cell.replace(r"\]\(", "")
    assert "&lt;img" in cell and "&amp; co" in cell


def test_empty_columns_are_hidden_and_every_column_has_a_description(records):
    frame = reading.records_to_frame(records)  # no timm reference, no equivariance
    shown = reading.display_frame(frame, [c.name for c in C.COLUMNS])
    assert C.TIMM_ERROR not in shown and C.TIMM_ERROR in frame
    assert {C.RANK, C.MODEL, C.R_F, C.TEST_ERROR, C.ORIGIN} <= set(shown.columns)
    legend = reading.legend(shown)
    for column in shown.columns:
        assert reading.escape_markdown(C.BY_NAME[column].help) in legend
    assert reading.datatypes(shown)[list(shown.columns).index(C.MODEL)] == "markdown"


def test_protocol_name_from_the_record(records):
    rec = copy.deepcopy(records[0])
    assert reading.protocol_label(rec["config"]) == "custom (delta=1px cut=3 linear mean)"
    rec["config"]["protocol"].update(name="in1k-v1", version=1)
    assert reading.protocol_label(rec["config"]) == "in1k-v1"
    rec["config"]["protocol"].update(name="paper", version=2)
    assert reading.protocol_label(rec["config"]) == "paper v2"
    rec["config"]["protocol"].update(name=["not", "a", "string"])
    assert reading.protocol_label(rec["config"]).startswith("custom (")


def test_no_results_source_is_an_empty_board(tmp_path, monkeypatch, records):
    from hubstab.leaderboard import app

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(reading.RESULTS_ENV, raising=False)
    loaded = reading.load_results(None)
    assert loaded.source == reading.NO_SOURCE and loaded.records == [] and loaded.error is None
    assert "./hubstab-results does not exist" in loaded.summary()
    assert app.Board(None).loaded.records == []
    write_records(tmp_path / "hubstab-results", records[:2])  # the folder hubstab eval writes
    assert len(reading.load_results(None).records) == 2
    write_records(tmp_path / "elsewhere", records[:1])
    monkeypatch.setenv(reading.RESULTS_ENV, str(tmp_path / "elsewhere"))  # the variable overrides
    assert len(reading.load_results(None).records) == 1
    monkeypatch.setenv(reading.RESULTS_ENV, "no-such-org/no-such-results")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    board = app.Board(None)  # a Space whose repo cannot be reached starts, empty, and says why
    assert board.loaded.records == [] and "cannot fetch the results dataset" in board.loaded.summary()
    with pytest.raises(HubstabError, match="cannot fetch"):
        app.Board(None, strict=True)


def test_files_under_submissions_are_marked_submitted(records, tmp_path):
    write_records(tmp_path, records[:1])
    write_records(tmp_path / reading.SUBMISSIONS_DIR, records[1:2])
    loaded = reading.read_results_dir(tmp_path)
    frame = reading.records_to_frame(loaded.records)
    origin = dict(zip(frame[C.MODEL], frame[C.ORIGIN], strict=True))
    assert origin == {
        records[0]["config"]["model_name"]: reading.BOARD,
        records[1]["config"]["model_name"]: reading.SUBMITTED,
    }


class FakeHfApi:
    """Records the calls the leaderboard makes at the HfApi boundary (no hub is reachable here)."""

    def __init__(self, files: list[str] | None = None, fail: bool = False):
        self.commits: list[dict] = []
        self.files = list(files or [])
        self.fail = fail

    def create_commit(self, **kwargs):
        if self.fail:
            raise RuntimeError("401 Unauthorized")
        self.commits.append(kwargs)
        from types import SimpleNamespace

        return SimpleNamespace(pr_url="https://huggingface.co/datasets/org/results/discussions/7")

    def list_repo_files(self, repo_id, repo_type=None):
        assert repo_type == "dataset"
        return self.files + [op.path_in_repo for c in self.commits for op in c["operations"]]


def test_submission_opens_a_pull_request(records, tmp_path):
    from hubstab.leaderboard import submit

    path = tmp_path / "mine.json"
    path.write_text(json.dumps(records[0]))
    record = reading.accept_submission(str(path))
    api = FakeHfApi()
    target = submit.HubTarget("org/results", "hf_token")
    url = submit.open_pull_request(record, path.read_bytes(), target, api=api)
    assert url.endswith("/discussions/7")
    (commit,) = api.commits
    assert commit["repo_id"] == "org/results" and commit["repo_type"] == "dataset" and commit["create_pr"]
    (op,) = commit["operations"]
    assert op.path_in_repo == f"submissions/fmnist__linear-trained/{records[0]['run_id'][:16]}.json"
    assert op.path_or_fileobj == path.read_bytes()
    with pytest.raises(HubstabError, match="no results repo with a write token"):
        submit.open_pull_request(record, b"", submit.HubTarget("org/results", None), api=api)
    with pytest.raises(HubstabError, match=r"refused the pull request.*401"):
        submit.open_pull_request(record, b"{}", target, api=FakeHfApi(fail=True))


def test_evaluation_requests_are_appended_to_the_repo(monkeypatch):
    import datetime as dt

    from hubstab.leaderboard import submit

    api = FakeHfApi(files=["results/x.json"])
    target = submit.HubTarget("org/results", "hf_token")
    now = dt.datetime(2026, 11, 23, 17, 0, 5, tzinfo=dt.timezone.utc)
    path = submit.request_evaluation("timm/resnet18.a1_in1k", target, api=api, now=now, protocol="in1k-v1")
    assert path == "requests/timm__resnet18.a1_in1k/20261123T170005@main.json"
    (commit,) = api.commits
    assert not commit.get("create_pr") and commit["repo_type"] == "dataset"
    request = json.loads(commit["operations"][0].path_or_fileobj)
    assert request == {
        "model": "timm/resnet18.a1_in1k",
        "revision": "main",
        "protocol": "in1k-v1",
        "status": "PENDING",
        "submitted_at": "2026-11-23T17:00:05+00:00",
    }
    with pytest.raises(HubstabError, match="already requested"):
        submit.request_evaluation("timm/resnet18.a1_in1k", target, api=api)
    for bad in ("../etc/passwd", "/abs/path", "a b", "<b>x</b>", "https://evil.example/x", ""):
        with pytest.raises(HubstabError, match="not a hub model id"):
            submit.request_evaluation(bad, target, api=api)
    with pytest.raises(HubstabError, match="cannot be recorded"):
        submit.request_evaluation("org/model", submit.HubTarget(None, None), api=api)
    monkeypatch.setenv("HUBSTAB_RESULTS", "org/results")
    monkeypatch.setenv("HF_TOKEN", "hf_x")
    assert submit.HubTarget.from_env().writable
    assert not submit.HubTarget.from_env("./some/local/folder").writable
