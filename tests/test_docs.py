"""The docs (docs/**/*.md) as a reader meets them: examples run, signatures and links hold.

* Every page's ```python blocks run, in order, in one namespace, in a fresh Python process:
  the ring page fixes the number of CPU devices, which JAX allows only before it starts,
  and no page should see another's imports or JAX settings. The blocks are written to a
  file named after the page with every other line blanked, so a traceback gives the page's
  own line numbers. Warnings are errors, as in this suite.
* A ```python signature block names its source file in its first line (``# zoo/...py``)
  and holds ``def``s (or a ``class`` with ``def``s) whose arguments and return annotation
  must equal the code's, compared as syntax trees: formatting may differ, nothing else.
* Every relative link points at a file of this repository.
"""

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
TOUR = DOCS / "tour"
PAGES = sorted(DOCS.rglob("*.md"))
TIMEOUT = 180  # seconds per page; the slowest (ring) takes about 10

# A fence opens with ``` and an info string, and closes with a bare ```.
_FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)


def _name(page: Path) -> str:
    return str(page.relative_to(DOCS))


def _fences(text: str, info: str) -> list[tuple[int, str]]:
    """(line number of the first code line, code) of every fence whose info string is ``info``."""
    return [
        (text.count("\n", 0, m.start(2)) + 1, m.group(2))
        for m in _FENCE.finditer(text)
        if m.group(1).strip() == info
    ]


def _script(text: str) -> str:
    """The page's python blocks as one program, each code line at its line number in the page."""
    lines = [""] * (text.count("\n") + 1)
    for first, code in _fences(text, "python"):
        for offset, line in enumerate(code.splitlines()):
            lines[first - 1 + offset] = line
    return "\n".join(lines) + "\n"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["JAX_PLATFORMS"] = "cpu"
    # A page that needs several devices asks for them itself (jax_num_cpu_devices); a count
    # inherited from XLA_FLAGS would clash with it (as in tests/kernels/test_sharded.py).
    flags = re.sub(r"--xla_force_host_platform_device_count=\S+", "", env.get("XLA_FLAGS", ""))
    env["XLA_FLAGS"] = flags.strip()
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


EXAMPLES = [p for p in PAGES if _fences(p.read_text(), "python")]


def test_the_tour_is_there_and_indexed():
    index = (TOUR / "README.md").read_text()
    pages = sorted(p for p in TOUR.glob("*.md") if p.name != "README.md")
    assert len(pages) >= 5, pages
    for page in pages:
        assert f"]({page.name})" in index, f"docs/tour/README.md does not link {page.name}"
        assert page in EXAMPLES, f"{_name(page)} has no ```python example"


@pytest.mark.parametrize("page", EXAMPLES, ids=_name)
def test_examples_run(page: Path, tmp_path: Path):
    script = tmp_path / (page.name + ".py")
    script.write_text(_script(page.read_text()))
    try:
        done = subprocess.run(
            [sys.executable, "-W", "error", str(script)],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            cwd=ROOT,
            env=_env(),
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"docs/{_name(page)}: the examples did not finish in {TIMEOUT} s")
    if done.returncode != 0:
        pytest.fail(f"docs/{_name(page)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")


def _defs(body: list[ast.stmt]) -> dict[str, ast.FunctionDef]:
    """Functions of a module or class body by name; the implementation, not its overloads."""
    found = {}
    for node in body:
        overload = isinstance(node, ast.FunctionDef) and any(
            ast.unparse(d).endswith("overload") for d in node.decorator_list
        )
        if isinstance(node, ast.FunctionDef) and not overload:
            found[node.name] = node
    return found


def _signature_of(node: ast.FunctionDef) -> str:
    return ast.dump(node.args) + " -> " + ast.dump(node.returns or ast.Constant(None))


SIGNATURES = [
    (page, first, code)
    for page in PAGES
    for first, code in _fences(page.read_text(), "python signature")
]


def test_pages_show_signatures():
    assert SIGNATURES, "no ```python signature block in docs/"


@pytest.mark.parametrize(
    ("page", "first", "code"), SIGNATURES, ids=[f"{_name(p)}:{n}" for p, n, _ in SIGNATURES]
)
def test_signatures_match_the_code(page: Path, first: int, code: str):
    where = f"docs/{_name(page)}, line {first}"
    source = re.match(r"# (\S+\.py)\n", code)
    assert source, f"{where}: a signature block starts with '# path/to/file.py'"
    tree = ast.parse((ROOT / source.group(1)).read_text())
    shown = ast.parse(code)
    pairs: list[tuple[str, ast.stmt, dict[str, ast.FunctionDef]]] = []
    for node in shown.body:
        if isinstance(node, ast.ClassDef):
            classes = [c for c in tree.body if isinstance(c, ast.ClassDef) and c.name == node.name]
            assert classes, f"{where}: no class {node.name} in {source.group(1)}"
            pairs += [(f"{node.name}.", item, _defs(classes[0].body)) for item in node.body]
        else:
            pairs.append(("", node, _defs(tree.body)))
    assert pairs, f"{where}: no def"
    for prefix, node, actual in pairs:
        assert isinstance(node, ast.FunctionDef), f"{where}: only defs, got {ast.unparse(node)}"
        name = prefix + node.name
        assert node.name in actual, f"{where}: no {name} in {source.group(1)}"
        assert _signature_of(node) == _signature_of(actual[node.name]), (
            f"{where}: the signature of {name} differs from {source.group(1)}'s:\n"
            f"{ast.unparse(actual[node.name]).splitlines()[0]}"
        )


# [text](target) and ![alt](target), and reference definitions "[label]: target".
_INLINE_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REFERENCE_LINK = re.compile(r"^[ ]{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.MULTILINE)


def _links(text: str) -> list[str]:
    prose = _FENCE.sub("", text)
    prose = re.sub(r"`[^`\n]*`", "", prose)  # inline code is not a link
    return _INLINE_LINK.findall(prose) + _REFERENCE_LINK.findall(prose)


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_relative_links_resolve(page: Path):
    for target in _links(page.read_text()):
        if re.match(r"[a-z][a-z0-9+.-]*:", target, flags=re.IGNORECASE) or target.startswith("#"):
            continue  # a URL or an anchor in the page itself
        path = (page.parent / target.split("#")[0].split("?")[0]).resolve()
        assert path.is_relative_to(ROOT), f"docs/{_name(page)}: {target} leaves the repository"
        assert path.exists(), f"docs/{_name(page)}: {target} does not exist ({path})"


def test_link_finder_finds_links():
    text = "[a](x.md) ![b](../y.png#top) `[c](no.md)`\n```python\n[d](no.md)\n```\n[e]: z.py\n"
    assert _links(text) == ["x.md", "../y.png#top", "z.py"]
