"""The benchmark report: verdicts from the JSON, links that hold, and a committed
``benchmarks/RESULTS.md`` that is exactly what the committed results give."""

import copy
import json
import re
from pathlib import Path

import pytest

from benchmarks import report

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
COMMITTED = ROOT / "benchmarks" / "RESULTS.md"
_LINE = re.compile(r"^- \*\*(met|missed|not measured)\*\*: (.*)$")
_IMAGE = re.compile(r"!\[[^\]]*\]\(([^)]+)\)")


def _statuses(lines: list[str]) -> list[tuple[str, str]]:
    """(status, the rest of the line) of each headline line."""
    parsed = [_LINE.match(line) for line in lines]
    assert all(parsed), lines
    return [(m.group(1), m.group(2)) for m in parsed if m]


def _find(statuses: list[tuple[str, str]], *words: str) -> list[str]:
    return [status for status, text in statuses if all(w in text for w in words)]


def _json(path: str) -> dict:
    return json.loads((RESULTS / path).read_text())


def _write(root: Path, path: str, results: dict) -> None:
    (root / path).parent.mkdir(parents=True, exist_ok=True)
    (root / path).write_text(json.dumps(results))


def _scaling(machine: dict) -> dict:
    """A hand-made scaling run: the reference kernel fits 256 tokens, the blockwise 1,024."""

    def entry(context: int, kernel: str, fits: bool) -> dict:
        case = {"context": context, "width": 128, "kernel": kernel, "layers": 4, "batch_size": 1}
        if not fits:
            return {"case": case, "status": "out of memory (measured)", "peak_bytes": 3 * 2**30}
        timing = {"samples": 3, "clean_samples": 3, "mean_contention": 0.0, "median_s": 0.5}
        speed = {"tokens_per_s": 2.0 * context, **timing}
        return {"case": case, "status": "ok", "peak_bytes": 2**30, **speed}

    return {
        "machine": {k: v for k, v in machine.items() if k != "date"},  # an undated run
        "mode": "quick",
        "sweep": {
            "contexts": [256, 1024],
            "width": 128,
            "widths": [],
            "context": 256,
            "layers": 4,
            "batch_size": 1,
        },
        "budget_gib": 2.5,
        "cases": [
            entry(256, "reference", True),
            entry(256, "blockwise", True),
            entry(1024, "reference", False),
            entry(1024, "blockwise", True),
        ],
        "elapsed_s": 1.0,
    }


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """Results whose verdicts are known: copies of the committed ones with numbers changed
    (the zoo LM's reference kernel slower than PyTorch, its blockwise one faster, all timed
    under load; the
    blockwise attention kernel 100x torch SDPA's speed but only jax.nn's, and 2 GiB at
    T = 32,768), a hand-made scaling run (4x: missed; no contention), no decoding run, and
    a one-case kernel quick run that the targets run must win over."""
    root = tmp_path_factory.mktemp("results")
    models = _json("models/quick/results.json")
    for entry in models["cases"]:
        for name, r in entry.get("impls", {}).items():
            if name.startswith("zoo.") and "tokens_per_s" in r:
                r["tokens_per_s"] = 1e9 if name == "zoo.blockwise" else 1.0
            if "clean_samples" in r:  # every sample taken under load
                r["clean_samples"], r["mean_contention"] = 0, 0.5
    _write(root, "models/quick/results.json", models)
    _write(root, "scaling/quick/results.json", _scaling(models["machine"]))
    (root / "scaling/quick/scaling.png").write_bytes(b"\x89PNG")
    kernels = _json("targets/results.json")
    for entry in kernels["cases"]:
        impls = entry["impls"]
        for peer, factor in (("torch.sdpa", 100.0), ("jax.nn", 1.0)):
            if "median_s" in impls.get(peer, {}) and "median_s" in impls.get("zoo.blockwise", {}):
                impls[peer]["median_s"] = factor * impls["zoo.blockwise"]["median_s"]
    big = copy.deepcopy(kernels["cases"][0])
    big["case"].update(T=32768, causal=False, mode="fwd+bwd")
    big["impls"] = {"zoo.blockwise": {"memory": {"peak_bytes": 2 * 2**30}}}
    kernels["cases"].append(big)
    _write(root, "targets/results.json", kernels)
    quick = copy.deepcopy(kernels)
    quick["mode"], quick["cases"] = "quick", quick["cases"][:1]
    _write(root, "quick/results.json", quick)
    out = root / "report" / "RESULTS.md"
    out.parent.mkdir()
    readme = root / "report" / "README.md"
    readme.write_text(f"before\n{report.README_START}\nold\n{report.README_END}\nafter\n")
    report.main(["--results", str(root), "--out", str(out), "--readme", str(readme)])
    quoted = readme.read_text()
    assert quoted.startswith(f"before\n{report.README_START}\n- **") and "old" not in quoted
    assert quoted.endswith(f"\n{report.README_END}\nafter\n")
    return root, out


def test_headline_verdicts_follow_the_json(tree):
    root, _ = tree
    statuses = _statuses(report.headline(root))
    assert _find(statuses, "lm/tiny", "zoo.reference") == ["missed"]
    assert _find(statuses, "lm/shakespeare_char", "zoo.reference") == ["missed"]
    assert _find(statuses, "lm/tiny", "zoo.blockwise") == ["met"]
    assert _find(statuses, "KV-cache") == ["not measured"]
    assert _find(statuses, "longest LM training context") == ["missed"]
    assert any("4x (1,024 vs 256 tokens within 2.5 GiB" in text for _, text in statuses)
    assert _find(statuses, "torch SDPA") == ["met"]
    assert _find(statuses, "jax.nn") == ["missed"]
    assert _find(statuses, "T = 32,768", "full") == ["missed"]
    # From the targets run, not the one-case quick run.
    assert any("kernels, targets run" in text for _, text in statuses)
    assert not any("kernels, quick run" in text for _, text in statuses)


@pytest.mark.parametrize(("speedup", "status"), [(12.0, "met"), (9.0, "missed")])
def test_decoding_verdict_follows_the_speedup(tmp_path, speedup, status):
    decoding = _json("decoding/quick/results.json")
    row = copy.deepcopy(decoding["lengths"][-1]) | {"generated": 1024, "speedup": speedup}
    decoding["lengths"] = [row]
    _write(tmp_path, "decoding/quick/results.json", decoding)
    assert _find(_statuses(report.headline(tmp_path)), "KV-cache") == [status]


def test_runs_prefer_full_then_targets_then_quick(tmp_path):
    for mode in ("quick", "targets"):
        _write(tmp_path, f"{mode}/results.json", {"mode": mode})
    assert report.find_runs(tmp_path)["kernels"].results["mode"] == "targets"
    _write(tmp_path, "full/results.json", {"mode": "full"})
    assert report.find_runs(tmp_path)["kernels"].results["mode"] == "full"
    assert report.find_runs(tmp_path)["decoding"] is None


def test_sections_say_where_from_and_warn_only_when_contended(tree):
    _, out = tree
    text = out.read_text()
    sections = {s.split("\n", 1)[0]: s for s in re.split(r"^## ", text, flags=re.MULTILINE)}

    def part(title: str) -> str:
        return next(s for name, s in sections.items() if name.startswith(title))

    assert "the quick run, date not recorded" in part("LM training scaling")
    assert "Warning" not in part("LM training scaling")
    assert "Warning: measured under load" in part("Model training")
    assert "No results" in part("Decoding")
    assert "the targets run" in part("Attention kernels")
    machine = _json("models/quick/results.json")["machine"]
    row = next(line for line in text.splitlines() if line.startswith("| models |"))
    assert machine["processor"] in row and f"jax {machine['versions']['jax']}" in row
    assert "GFLOP/s median" in row  # the matmul roofline of the same run


@pytest.mark.parametrize("which", ["temporary", "committed"])
def test_every_linked_png_exists_and_every_plot_is_linked(tree, which):
    root, out = tree if which == "temporary" else (RESULTS, COMMITTED)
    links = _IMAGE.findall(out.read_text())
    assert links
    for link in links:
        assert (out.parent / link).is_file(), link
    linked = {(out.parent / link).resolve() for link in links}
    for run in report.find_runs(root).values():
        for png in run.path.parent.glob("*.png") if run else ():
            assert png.resolve() in linked, png


def test_committed_report_is_what_the_command_writes():
    generated = report.report(RESULTS, COMMITTED)
    assert COMMITTED.read_text() == generated, "benchmarks/RESULTS.md is stale: run make results"
    # Nothing of the moment it runs: the same results, the same text.
    assert report.report(RESULTS, COMMITTED) == generated


def test_readme_can_quote_the_committed_headline():
    lines = report.headline(RESULTS)
    assert len(_statuses(lines)) >= 5  # one or more per target
    assert "\n".join(lines) in COMMITTED.read_text()


def test_the_readme_quotes_the_committed_headline():
    readme = (COMMITTED.parent.parent / "README.md").read_text()
    assert report.with_headline(readme, report.headline(RESULTS)) == readme, (
        "README.md's benchmark headline is stale: run make results"
    )
    with pytest.raises(ValueError, match=r"no .* block"):
        report.with_headline("no markers here", [])
