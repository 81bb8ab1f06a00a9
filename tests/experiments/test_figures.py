"""The gallery command: choosing a reordered sentence on hand-made alignments, the kernel
plots of a hand-made results.json, and the whole command on the smoke presets."""

import dataclasses
import json

import numpy as np
import pytest
from PIL import Image

from benchmarks import kernels
from experiments import config as config_lib
from experiments import figures
from experiments.figures import Candidate, Reordering
from experiments.tasks import translate
from experiments.visualize import Aligned

W = figures.WORD_START


def _one_hot(links: list[int], sources: int, strength: float = 0.9) -> np.ndarray:
    """Alignment [len(links), sources]: target word t gives ``strength`` to source links[t]
    and spreads the rest evenly."""
    alignment = np.full((len(links), sources), (1 - strength) / (sources - 1))
    alignment[np.arange(len(links)), links] = strength
    return alignment


def test_words_group_subword_pieces():
    pieces = [f"{W}the", f"{W}wh", "ite", f"{W}horse", ",", f"{W}Dios", f"{W}m", "ío", "</s>"]
    groups = figures.words(pieces)
    assert [(g.start, g.stop) for g in groups] == [
        (0, 1),
        (1, 3),
        (3, 4),
        (4, 5),
        (5, 6),
        (6, 8),
        (8, 9),
    ]
    texts = [figures.word_text(pieces, g) for g in groups]
    assert texts == ["the", "white", "horse", ",", "Dios", "mío", "</s>"]


def test_word_alignment_sums_source_pieces_and_averages_target_pieces():
    weights = np.array(
        [  # target pieces "a", "b1" "b2"; source pieces "x1" "x2", "y"
            [0.1, 0.2, 0.7],
            [0.5, 0.3, 0.2],
            [0.3, 0.3, 0.4],
        ]
    )
    alignment = figures.word_alignment(
        weights, [range(0, 2), range(2, 3)], [range(0, 1), range(1, 3)]
    )
    np.testing.assert_allclose(alignment, [[0.3, 0.7], [0.7, 0.3]])
    with pytest.raises(ValueError, match=r"weights must be \[T, S\] = \[3, 4\]"):
        figures.word_alignment(weights, [range(0, 4)], [range(0, 3)])


def test_crossings_find_a_swapped_adjective_and_noun():
    # the white horse </s> -> el caballo blanco </s>: caballo <- horse, blanco <- white.
    alignment = _one_hot([0, 2, 1, 3], 4)
    assert figures.crossings(alignment) == [Reordering(1, (1, 2), pytest.approx(0.9))]


def test_crossings_ignore_monotone_one_sided_and_distant_links():
    assert figures.crossings(_one_hot([0, 1, 2, 3], 4)) == []
    # Target 1 looks at source 2, but source 2 gets more from target 3: no mutual link.
    one_sided = _one_hot([0, 2, 1, 2], 4)
    one_sided[3, 2] = 0.95
    assert figures.crossings(one_sided) == []
    # Reversed, but two words apart: only adjacent target words count by default.
    far = _one_hot([0, 2, 3, 1], 4)
    assert figures.crossings(far) == []
    assert figures.crossings(far, max_gap=2) == [Reordering(1, (1, 3), pytest.approx(0.9))]
    assert figures.crossings(np.zeros((0, 3))) == []


def test_is_adjective_noun():
    swap = Reordering(0, (0, 1), 0.5)
    assert figures.is_adjective_noun(swap, ["my", "God"], ["Dios", "mío"])
    assert figures.is_adjective_noun(swap, ["Holy", "Spirit"], ["Espíritu", "Santo"])
    assert not figures.is_adjective_noun(swap, ["Job", "answered"], ["respondió", "Job"])
    # Articles and prepositions are what soft alignments most often swap by accident.
    assert not figures.is_adjective_noun(swap, ["holy", "city"], ["la", "ciudad"])
    assert not figures.is_adjective_noun(swap, ["my", "God"], ["Dios", ","])


def test_pick_prefers_confidence_then_shorter_then_earlier():
    def candidate(index, confidence, length):
        return Candidate(index, Reordering(0, (0, 1), confidence), length)

    assert figures.pick([]) is None
    options = [candidate(0, 0.5, 30), candidate(1, 0.7, 40), candidate(2, 0.7, 20)]
    assert figures.pick(options).index == 2
    assert figures.pick([candidate(3, 0.7, 20), *options]).index == 2


def _sentence(source: list[str], target: list[str], links: list[int]) -> Aligned:
    source_pieces = [f"{W}{w}" for w in source] + ["</s>"]
    target_pieces = [f"{W}{w}" for w in target] + ["</s>"]
    weights = _one_hot([*links, len(source)], len(source_pieces))
    return Aligned(" ".join(source), " ".join(target), source_pieces, target_pieces, weights)


def test_choose_prefers_an_adjective_noun_crossing_over_a_stronger_other_one():
    sentences = [
        _sentence(["hello", "there"], ["hola", "allí"], [0, 1]),  # monotone
        _sentence(["Job", "answered"], ["respondió", "Job"], [1, 0]),  # verb-subject, 0.9
        _sentence(["my", "God"], ["Dios", "mío"], [1, 0]),
    ]
    sentences[2] = dataclasses.replace(sentences[2], weights=sentences[2].weights * 0.8)
    index, shows = figures._choose(sentences, [s.weights for s in sentences])
    assert (index, shows) == (2, "adjective-noun reordering: my God -> Dios mío")
    index, shows = figures._choose(sentences[:2], [s.weights for s in sentences[:2]])
    assert (index, shows) == (1, "reordering: Job answered -> respondió Job")
    assert figures._choose(sentences[:1], [sentences[0].weights]) == (0, "")


def test_a_run_directory_of_another_experiment_is_refused(tmp_path):
    workdir = tmp_path / "rnnsearch"
    workdir.mkdir()
    (workdir / "config.json").write_text(json.dumps({"experiment": "lm", "model_name": "gpt"}))
    with pytest.raises(SystemExit, match=r"holds a lm/gpt run, but the 'rnnsearch' figures need"):
        figures.ensure_trained(figures.RUNS[0], workdir, [])


@pytest.mark.parametrize("latest,trains", [(None, True), (2, True), (4, False), (6, False)])
def test_a_run_trains_through_experiments_run_until_its_config_steps(
    tmp_path, monkeypatch, latest, trains
):
    calls = []
    monkeypatch.setattr(figures.run, "main", calls.append)
    workdir = tmp_path / "rnnsearch"
    (workdir / "checkpoints").mkdir(parents=True)
    smoke = translate.presets("rnnsearch")["smoke"]  # 4 steps
    config_lib.save(smoke, workdir / "config.json")
    # Orbax's half-written checkpoints carry a suffix; they never count as finished.
    (workdir / "checkpoints" / "8.orbax-checkpoint-tmp-1").mkdir()
    if latest is not None:
        (workdir / "checkpoints" / str(latest)).mkdir()
    figures.ensure_trained(figures.RUNS[0], workdir, ["ignored=1"])
    resume = ["translate", "--workdir", str(workdir), "--resume"]
    assert calls == ([resume] if trains else [])


def test_a_new_run_starts_from_the_figure_preset(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(figures.run, "main", calls.append)
    workdir = tmp_path / "transformer"
    figures.ensure_trained(figures.RUNS[2], workdir, ["train.steps=3"])
    (argv,) = calls
    assert argv[:5] == ["translate", "--model", "transformer", "--preset", "tiny"]
    assert argv[5:] == ["--workdir", str(workdir), "--set", "train.steps=3"]


def _results() -> dict:
    """A kernel benchmark results.json in miniature: time everywhere, memory for fwd+bwd."""
    rows = []
    for pass_ in ("fwd", "fwd+bwd"):
        for T in (1024, 2048):
            case = kernels.case(T, causal=False, pass_=pass_)
            impls = {"zoo.auto": {"median_s": T / 1e4}, "torch.sdpa": {"median_s": T / 9e3}}
            rows.append({"case": case, "flops": 1.0, "impls": impls})
            if pass_ == "fwd+bwd":
                memory = {**case, "memory": "zoo.auto"}
                rows.append({"case": memory, "peak_bytes": T * 2**12})
    return {"machine": {"processor": "test CPU", "cores": 2}, "mode": "targets", "rows": rows}


def test_kernel_plots_draw_the_benchmark_results(tmp_path):
    (tmp_path / "results.json").write_text(json.dumps(_results()))
    paths = figures.kernel_plots(tmp_path, tmp_path / "out")
    assert [p.name for p in paths] == ["kernels_time.png", "kernels_memory.png"]
    # The memory plot has one panel (fwd+bwd), the time plot two: it is the narrower.
    widths = []
    for path in paths:
        with Image.open(path) as image:
            widths.append(image.size[0])
    assert widths[1] < widths[0]
    with pytest.raises(SystemExit, match="no benchmark results"):
        figures.kernel_plots(tmp_path / "missing", tmp_path / "out")


@pytest.mark.slow
def test_the_command_trains_and_draws_every_picture_on_smoke_presets(tmp_path):
    bench = tmp_path / "bench"
    bench.mkdir()
    (bench / "results.json").write_text(json.dumps(_results()))
    argv = ["--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "figures")]
    argv += ["--bench-results", str(bench), "--preset", "smoke", "--sentences", "24"]
    argv += ["--set", f"data.data_dir={tmp_path / 'data'}"]
    written = figures.main(argv)
    names = {
        "nmt_alignment.png",
        "caption_attention.png",
        "transformer_self_attention.png",
        "transformer_cross_attention.png",
        "kernels_time.png",
        "kernels_memory.png",
    }
    assert {p.name for p in written} == names
    assert all(p.stat().st_size > 1000 for p in written)
