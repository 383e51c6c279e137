"""The plots package: valid, deterministic PNGs that say what they show, and a cache that renders once."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import io
import itertools
import math
import multiprocessing
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.patches import Polygon
from matplotlib.text import Text
from PIL import Image

from explain_service.errors import NotFound
from explain_service.plots import (
    PLOTS,
    RENDERER_VERSION,
    PlotCache,
    PlotNotAvailable,
    UnknownPlot,
    available_plots,
    bar,
    counterfactual_changes,
    draw_plot,
    lime_weights,
    plot_key,
    plot_keys,
    render_png,
    waterfall,
)
from explain_service.plots._text import GlyphText
from explain_service.plots.eviction import SizeCap
from explain_service.plots.waterfall import CONTRIBUTION

PACKAGE = Path(__file__).resolve().parents[1] / "explain_service"
MODEL = {"name": "german-credit", "version": "1", "sha256": "ab" * 32}

CREDIT_ROW = {
    "age": 22,
    "sex": "female",
    "duration": 48,
    "purpose": "radio/TV",
    "checking_account": "little",
    "credit_amount": 5951,
    "housing": "own",
    "job": 2,
    "saving_accounts": "little",
}
CREDIT = {
    "id": "0193-credit",
    "prediction": {"label": "bad", "probabilities": {"bad": 0.71, "good": 0.29}},
    "shap": {
        "target": "bad",
        "output": "log_odds",
        "base_value": -0.84,
        "values": {
            "age": 0.31,
            "sex": 0.0,
            "duration": 0.9,
            "purpose": -0.12,
            "checking_account": 0.45,
            "credit_amount": -0.22,
            "housing": 0.05,
            "job": -0.03,
            "saving_accounts": 0.18,
        },
        "additivity_residual": 1e-7,
        "algorithm": "tree_path_dependent",
    },
    "lime": {
        "target": "bad",
        "intercept": 0.4,
        "weights": {"age": 0.02, "duration": 0.11, "purpose": -0.04, "checking_account": 0.08, "sex": 0.0},
        "contributions": {
            "age": -0.031,
            "duration": 0.11,
            "purpose": -0.02,
            "checking_account": 0.05,
            "sex": 0.0,
        },
        "score": 0.81,
        "seed": 123,
        "num_samples": 2000,
    },
    "counterfactual": {
        "target": "good",
        "counterfactuals": [
            {
                "instance": {**CREDIT_ROW, "duration": 24, "checking_account": "moderate"},
                "changes": {
                    "duration": {"from": 48, "to": 24},
                    "checking_account": {"from": "little", "to": "moderate"},
                },
                "prediction": {"label": "good", "probabilities": {"bad": 0.38, "good": 0.62}},
            },
            {
                "instance": {**CREDIT_ROW, "credit_amount": 2500},
                "changes": {"credit_amount": {"from": 5951, "to": 2500}},
                "prediction": {"label": "bad", "probabilities": {"bad": 0.55, "good": 0.45}},
            },
        ],
        "metrics": {"validity": 0.5, "sparsity": 1.5, "proximity": 0.8, "diversity": 1.2},
    },
}


def _wide(n: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """A regression explanation over ``n`` features, some with long names, values or zero effect."""
    names = [f"measurement_with_a_long_descriptive_name_{i}" if i % 7 == 0 else f"f{i}" for i in range(n)]
    values = {name: 0.0 if i % 5 == 4 else (-1) ** i * (n - i) * 0.37 for i, name in enumerate(names)}
    row = {
        name: "an unusually long categorical level name" if i % 3 == 0 else i * 12.5
        for i, name in enumerate(names)
    }
    explanation = {
        "id": f"wide-{n}",
        "prediction": {"value": 151.3},
        "shap": {
            "target": None,
            "output": "raw",
            "base_value": 152.1,
            "values": values,
            "additivity_residual": 0.0,
        },
        "lime": {
            "target": None,
            "intercept": 140.0,
            "weights": values,
            "score": 0.42,
            "seed": 7,
            "num_samples": 5000,
        },
        "counterfactual": {"target": {"min": 100, "max": 120}, "counterfactuals": [], "metrics": {}},
    }
    return explanation, row


WIDE, WIDE_ROW = _wide(40)
SINGLE, SINGLE_ROW = _wide(1)
IRIS = {
    "id": "iris-1",
    "prediction": {
        "label": "setosa",
        "probabilities": {"setosa": 0.9, "versicolor": 0.06, "virginica": 0.04},
    },
    "shap": {
        "target": "virginica",
        "output": "probability",
        "base_value": 0.33,
        "values": {"petal length (cm)": -0.2, "petal width (cm)": -0.09, "sepal length (cm)": 0.0},
        "additivity_residual": 0.0,
    },
    "lime": {
        "target": "virginica",
        "intercept": 0.3,
        "weights": {"petal length (cm)": -0.1},
        "score": 0.6,
        "seed": 1,
    },
}
IRIS_ROW = {"petal length (cm)": 1.4, "petal width (cm)": 0.2, "sepal length (cm)": 5.1}
ZEROS = {
    "id": "zeros",
    "prediction": {"label": "a", "probabilities": {"a": 0.5, "b": 0.5}},
    "shap": {"target": "a", "output": "log_odds", "base_value": 0.0, "values": {"x": 0.0, "y": 0.0}},
}

CASES = {
    "binary": (CREDIT, CREDIT_ROW),
    "regression-40-features": (WIDE, WIDE_ROW),
    "one-feature": (SINGLE, SINGLE_ROW),
    "multiclass": (IRIS, IRIS_ROW),
    "all-zero": (ZEROS, {"x": 1, "y": None}),
}
RENDERABLE = [
    pytest.param(plot, case, id=f"{plot}-{case}")
    for case, (explanation, _) in CASES.items()
    for plot in available_plots(explanation)
]


def texts(fig: Figure) -> list[str]:
    return [t.get_text() for t in fig.findobj(Text) if t.get_text()]


def arrows(fig: Figure) -> list[tuple[float, float]]:
    """``(start, end)`` of each waterfall arrow, top row first, from the polygons as drawn."""
    found = []
    for patch in fig.findobj(lambda a: isinstance(a, Polygon) and a.get_gid() == CONTRIBUTION):
        xy = np.asarray(patch.get_xy())
        start = xy[0, 0]
        end = xy[np.argmax(np.abs(xy[:, 0] - start)), 0]
        found.append((float(xy[:, 1].mean()), float(start), float(end)))
    return [(start, end) for _, start, end in sorted(found)]


@pytest.mark.parametrize(("plot", "case"), RENDERABLE)
def test_every_plot_renders_a_valid_png_of_sensible_size(plot: str, case: str) -> None:
    explanation, row = CASES[case]
    png = render_png(draw_plot(plot, explanation, row, MODEL))
    image = Image.open(io.BytesIO(png))
    image.verify()
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG"
    assert image.mode == "RGB"
    width, height = image.size
    assert width == 900
    assert 150 <= height <= 2500
    assert set(image.info) <= {"dpi"}, "no metadata beyond the resolution"


@pytest.mark.parametrize(("plot", "case"), RENDERABLE)
def test_rendering_again_gives_identical_bytes(plot: str, case: str) -> None:
    explanation, row = CASES[case]
    first = render_png(draw_plot(plot, explanation, row, MODEL))
    assert render_png(draw_plot(plot, copy.deepcopy(explanation), dict(row), MODEL)) == first


def _shuffled(value: Any, rng: random.Random) -> Any:
    if isinstance(value, dict):
        items = list(value.items())
        rng.shuffle(items)
        return {k: _shuffled(v, rng) for k, v in items}
    if isinstance(value, list):
        return [_shuffled(v, rng) for v in value]
    return value


@pytest.mark.parametrize("plot", list(PLOTS))
def test_key_order_of_the_inputs_changes_neither_key_nor_image(plot: str) -> None:
    rng = random.Random(5)
    shuffled, row = _shuffled(CREDIT, rng), _shuffled(CREDIT_ROW, rng)
    assert list(shuffled["shap"]["values"]) != list(CREDIT["shap"]["values"])
    assert plot_key(plot, shuffled, row, MODEL) == plot_key(plot, CREDIT, CREDIT_ROW, MODEL)
    assert render_png(draw_plot(plot, shuffled, row, MODEL)) == render_png(
        draw_plot(plot, CREDIT, CREDIT_ROW, MODEL)
    )


def test_waterfall_labels_show_feature_values_and_title_names_class_and_output_space() -> None:
    fig = waterfall(CREDIT, CREDIT_ROW, MODEL)
    shown = texts(fig)
    for label in ("duration = 48", "purpose = radio/TV", "checking_account = little", "age = 22"):
        assert label in shown
    header = " ".join(shown[:3])
    assert "german-credit v1" in header
    assert "class \u2018bad\u2019" in header.lower()
    assert "log-odds" in header
    assert "f(x) = 0.680" in header  # -0.84 + 1.52 + 1e-7
    assert "+0.900" in shown and "\N{MINUS SIGN}0.220" in shown


@pytest.mark.parametrize(
    ("case", "expected"),
    [("regression-40-features", "raw output"), ("multiclass", "class \u2018virginica\u2019")],
    ids=["regression", "multiclass"],
)
def test_waterfall_title_names_what_is_explained(case: str, expected: str) -> None:
    explanation, row = CASES[case]
    assert expected in " ".join(texts(waterfall(explanation, row, MODEL))[:3]).lower()


@pytest.mark.parametrize(
    "case", ["binary", "regression-40-features", "multiclass", "one-feature", "all-zero"]
)
def test_waterfall_arrows_walk_from_the_base_value_to_base_plus_sum(case: str) -> None:
    explanation, row = CASES[case]
    shap = explanation["shap"]
    drawn = arrows(waterfall(explanation, row, MODEL))
    assert drawn, "no arrows drawn"
    assert drawn[0][0] == pytest.approx(shap["base_value"])
    for (_, end), (start, _) in itertools.pairwise(drawn):
        assert start == pytest.approx(end)
    assert drawn[-1][1] == pytest.approx(shap["base_value"] + math.fsum(shap["values"].values()))


def test_waterfall_sorts_by_magnitude_and_folds_the_tail() -> None:
    fig = waterfall(WIDE, WIDE_ROW, MODEL, max_display=10)
    drawn = arrows(fig)
    assert len(drawn) == 10
    widths = [abs(end - start) for start, end in drawn[:9]]
    assert widths == sorted(widths, reverse=True)
    assert "31 other features" in texts(fig)
    top9 = sorted(WIDE["shap"]["values"].values(), key=abs, reverse=True)[:9]
    folded = math.fsum(WIDE["shap"]["values"].values()) - math.fsum(top9)
    assert drawn[-1][1] - drawn[-1][0] == pytest.approx(folded)


def test_long_names_and_values_are_truncated() -> None:
    labels = [
        t for t in texts(bar(WIDE, WIDE_ROW, MODEL, max_display=40)) if " = " in t and "\u00b7" not in t
    ]
    assert any("\u2026" in label for label in labels)
    assert max(map(len, labels)) <= 60
    assert "f1 = 12.5" in labels


@pytest.mark.parametrize("plot", [bar, lime_weights], ids=["shap_bar", "lime_weights"])
def test_bars_show_values_with_the_feature_values(plot: Any) -> None:
    shown = texts(plot(CREDIT, CREDIT_ROW, MODEL))
    assert "duration = 48" in shown
    assert "+0.110" in shown or "+0.900" in shown


def test_lime_plot_draws_contributions_not_slopes() -> None:
    shown = texts(lime_weights(CREDIT, CREDIT_ROW, MODEL))
    assert any("LIME contributions" in t for t in shown)
    assert "\N{MINUS SIGN}0.031" in shown  # age's contribution; its slope (+0.020) is not drawn
    assert "+0.020" not in shown
    old = {**CREDIT, "lime": {k: v for k, v in CREDIT["lime"].items() if k != "contributions"}}
    assert any("LIME slopes" in t for t in texts(lime_weights(old, CREDIT_ROW, MODEL)))


def test_lime_subtitle_reports_fit_seed_and_samples() -> None:
    header = " ".join(texts(lime_weights(CREDIT, CREDIT_ROW, MODEL))[:3])
    assert "R\u00b2 = 0.81" in header
    assert "seed 123" in header
    assert "2,000 samples" in header


def test_counterfactuals_show_each_change_and_prediction() -> None:
    shown = texts(counterfactual_changes(CREDIT, CREDIT_ROW, MODEL))
    for cell in (
        "duration",
        "48",
        "24",
        "\N{MINUS SIGN}24",
        "checking_account",
        "little",
        "moderate",
        "2500",
    ):
        assert cell in shown
    assert "\u2192 good (P(good) = 0.62)" in shown
    assert any("does not reach" in t for t in shown), "the second counterfactual stays 'bad'"


def test_no_counterfactual_is_said_plainly() -> None:
    assert any("No counterfactual" in t for t in texts(counterfactual_changes(WIDE, WIDE_ROW, MODEL)))


def test_max_display_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="max_display"):
        waterfall(CREDIT, CREDIT_ROW, MODEL, max_display=0)


def test_available_plots_follow_the_methods_present() -> None:
    assert available_plots(CREDIT) == list(PLOTS)
    assert available_plots(IRIS) == ["shap_waterfall", "shap_bar", "lime_weights"]
    assert available_plots({"id": "x", "prediction": {"value": 1.0}}) == []


def test_unknown_plot_is_a_typed_404_not_a_key_error(tmp_path: Path) -> None:
    with pytest.raises(UnknownPlot, match="'shap_pie'") as caught:
        PlotCache(tmp_path).get_or_render("shap_pie", CREDIT, CREDIT_ROW, MODEL)
    assert caught.value.status == 404
    assert isinstance(caught.value, NotFound)
    assert not isinstance(caught.value, KeyError)
    assert caught.value.to_dict()["errors"] == {"plot": [f"must be one of: {', '.join(sorted(PLOTS))}"]}


def test_plot_of_a_method_not_in_the_explanation_is_a_typed_404(tmp_path: Path) -> None:
    with pytest.raises(PlotNotAvailable, match="'counterfactual'") as caught:
        PlotCache(tmp_path).get_or_render("counterfactual_changes", IRIS, IRIS_ROW, MODEL)
    assert caught.value.status == 404
    assert caught.value.method == "counterfactual"
    assert list(tmp_path.iterdir()) == []


def test_plot_key_covers_name_and_every_input() -> None:
    key = plot_key("shap_waterfall", CREDIT, CREDIT_ROW, MODEL)
    assert len(key) == 64 and int(key, 16) >= 0
    changed_row = {**CREDIT_ROW, "age": 23}
    changed_model = {**MODEL, "version": "2"}
    changed_explanation = {**CREDIT, "id": "other"}
    others = {
        plot_key("shap_bar", CREDIT, CREDIT_ROW, MODEL),
        plot_key("shap_waterfall", CREDIT, changed_row, MODEL),
        plot_key("shap_waterfall", CREDIT, CREDIT_ROW, changed_model),
        plot_key("shap_waterfall", changed_explanation, CREDIT_ROW, MODEL),
    }
    assert key not in others and len(others) == 4


def test_plot_keys_are_the_sha256_of_the_sorted_json_of_every_input() -> None:
    """Keys are stored in audit records: the spliced form must stay the documented one, byte for byte."""
    names = ["shap_waterfall", "shap_bar", "lime_weights"]
    explanation = {**CREDIT, "odd": [np.float32(0.1), np.int64(3), "é\n", None]}
    keys = plot_keys(names, explanation, CREDIT_ROW, MODEL)
    for name in names:
        payload = {
            "plot": name,
            "renderer": RENDERER_VERSION,
            "explanation": explanation,
            "instance": CREDIT_ROW,
            "model": MODEL,
        }
        dumped = orjson.dumps(payload, option=orjson.OPT_SORT_KEYS | orjson.OPT_SERIALIZE_NUMPY)
        assert (
            keys[name] == hashlib.sha256(dumped).hexdigest() == plot_key(name, explanation, CREDIT_ROW, MODEL)
        )


def _counting(monkeypatch: pytest.MonkeyPatch, name: str) -> list[int]:
    calls: list[int] = []
    spec = PLOTS[name]

    def draw(*args: Any) -> Figure:
        calls.append(1)
        return spec.draw(*args)

    monkeypatch.setitem(PLOTS, name, dataclasses.replace(spec, draw=draw))
    return calls


def test_cache_hit_returns_the_same_bytes_without_rendering(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _counting(monkeypatch, "shap_waterfall")
    key, png, cached = PlotCache(tmp_path).get_or_render("shap_waterfall", CREDIT, CREDIT_ROW, MODEL)
    assert (cached, len(calls)) == (False, 1)
    assert PlotCache(tmp_path).path(key).read_bytes() == png

    again = PlotCache(tmp_path).get_or_render("shap_waterfall", copy.deepcopy(CREDIT), CREDIT_ROW, MODEL)
    assert again == (key, png, True)
    assert len(calls) == 1
    assert [p.name for p in tmp_path.rglob("*.png")] == [f"{key}.png"]


def test_damaged_cache_file_is_rendered_again(tmp_path: Path) -> None:
    cache = PlotCache(tmp_path)
    key, png, _ = cache.get_or_render("shap_bar", CREDIT, CREDIT_ROW, MODEL)
    cache.path(key).write_bytes(png[: len(png) // 2])
    assert cache.get_or_render("shap_bar", CREDIT, CREDIT_ROW, MODEL) == (key, png, False)
    assert cache.path(key).read_bytes() == png


def test_the_size_cap_removes_the_least_recently_used_plots_first(tmp_path: Path) -> None:
    png = b"\x89PNG\r\n\x1a\n" + b"x" * 980 + b"IEND\xaeB`\x82"
    made = []
    for i in range(10):
        path = tmp_path / f"{i % 2:02x}" / f"{i:064x}.png"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(png)
        os.utime(path, (1_000_000 + i, 1_000_000 + i))
        made.append(path)
    (tmp_path / ".locks").mkdir()
    (tmp_path / ".locks" / "00.lock").write_bytes(b"x" * 5000)  # not a plot: never counted or removed
    kept, removed = SizeCap(tmp_path, max_bytes=len(png) * 5).sweep()
    assert (kept, removed) == (len(png) * 4, 6)  # down to 9/10 of the cap, oldest first
    assert [p.exists() for p in made] == [False] * 6 + [True] * 4
    assert (tmp_path / ".locks" / "00.lock").exists()
    assert SizeCap(tmp_path, max_bytes=len(png) * 5).sweep() == (len(png) * 4, 0)  # under the cap: nothing


def test_a_capped_cache_keeps_the_plots_in_use_and_drops_the_oldest(tmp_path: Path) -> None:
    rows = [{**CREDIT_ROW, "age": age} for age in (30, 40, 50)]
    sizes = [len(PlotCache(tmp_path / "probe").get_or_render("shap_bar", CREDIT, r, MODEL)[1]) for r in rows]
    cache = PlotCache(tmp_path / "capped", max_bytes=sum(sizes) - 1)  # room for two of the three
    key_a = cache.get_or_render("shap_bar", CREDIT, rows[0], MODEL)[0]
    key_b = cache.get_or_render("shap_bar", CREDIT, rows[1], MODEL)[0]
    assert cache.get_or_render("shap_bar", CREDIT, rows[0], MODEL)[2]  # a hit: A is now the latest used
    key_c = cache.get_or_render("shap_bar", CREDIT, rows[2], MODEL)[0]  # over the cap: B goes
    assert [cache.path(k).exists() for k in (key_a, key_b, key_c)] == [True, False, True]
    assert cache.get_or_render("shap_bar", CREDIT, rows[1], MODEL)[2] is False  # B is rendered again


def _fetch_after(barrier: Any, directory: str, results: Any) -> None:
    barrier.wait()
    key, png, cached = PlotCache(directory).get_or_render("shap_waterfall", CREDIT, CREDIT_ROW, MODEL)
    results.put((key, hashlib.sha256(png).hexdigest(), cached))


def test_concurrent_processes_render_once_into_one_file(tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork")
    workers = 4
    barrier, results = context.Barrier(workers), context.Queue()
    processes = [
        context.Process(target=_fetch_after, args=(barrier, str(tmp_path), results)) for _ in range(workers)
    ]
    for process in processes:
        process.start()
    outcomes = [results.get(timeout=60) for _ in processes]
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0

    assert len({(key, digest) for key, digest, _ in outcomes}) == 1
    assert sorted(cached for _, _, cached in outcomes) == [False, True, True, True]
    files = [p for p in tmp_path.rglob("*") if p.is_file() and p.parent.name != ".locks"]
    assert [p.name for p in files] == [f"{outcomes[0][0]}.png"]


def _ink(cls: type[Text], text: str, size: float, weight: str, ha: str, va: str) -> np.ndarray:
    """Where ``text`` leaves ink on a small white canvas."""
    fig = Figure(figsize=(6, 1), dpi=100, facecolor="white")
    FigureCanvasAgg(fig)
    prop = FontProperties(family="DejaVu Sans", size=size, weight=weight)
    fig.add_artist(
        cls(0.5, 0.5, text, fontproperties=prop, ha=ha, va=va, transform=fig.transFigure, color="black")
    )
    fig.canvas.draw()
    return (255 - np.asarray(fig.canvas.buffer_rgba())[..., 0]).astype(float)


def _box(ink: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.nonzero(ink.any(axis=1))[0], np.nonzero(ink.any(axis=0))[0]
    return int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])


@pytest.mark.parametrize(
    ("text", "size", "weight", "ha", "va"),
    [
        ("checking_account = little", 10, "normal", "left", "center"),
        ("\N{MINUS SIGN}0.220 jqy", 9, "normal", "right", "top"),
        ("SHAP waterfall \u2014 german-credit v1", 13, "bold", "center", "baseline"),
        ("\u25a0 raises f(x) \u00b7 R\u00b2", 10, "normal", "left", "bottom"),
    ],
    ids=["left-center", "right-top", "bold-center-baseline", "symbols-bottom"],
)
def test_glyph_text_looks_and_lands_like_matplotlib_text(
    text: str, size: float, weight: str, ha: str, va: str
) -> None:
    expected, drawn = _ink(Text, text, size, weight, ha, va), _ink(GlyphText, text, size, weight, ha, va)
    top, bottom, left, right = _box(drawn)
    e_top, e_bottom, e_left, e_right = _box(expected)
    tolerance = 2 + 0.03 * (e_right - e_left)
    assert abs(top - e_top) <= 2 and abs(bottom - e_bottom) <= 2
    assert abs(left - e_left) <= tolerance and abs(right - e_right) <= tolerance
    # Same shapes: ink per row (blind to the small horizontal drift) and in total agree closely.
    assert np.corrcoef(drawn.sum(axis=1), expected.sum(axis=1))[0, 1] > 0.95
    assert drawn.sum() == pytest.approx(expected.sum(), rel=0.1)


def test_glyph_text_leaves_scripts_that_need_shaping_to_matplotlib() -> None:
    text = "\u0645\u0631\u062d\u0628\u0627 ok"
    drawn = _ink(GlyphText, text, 10, "normal", "left", "center")
    assert np.array_equal(drawn, _ink(Text, text, 10, "normal", "left", "center"))


def test_the_package_never_uses_pyplot() -> None:
    offenders = [str(p) for p in PACKAGE.rglob("*.py") if "pyplot" in p.read_text(encoding="utf-8")]
    assert offenders == []
