"""Pull the code blocks out of README.md so tests can run them exactly as written.

Conventions in README.md (the info string after the opening fence; renderers only read its
first word, the language):
    ```python                      an example, run by tests/test_readme.py in document order
    ```bash                        shell commands; `python3 main.py ...` lines are run by the tests
    ```bash no-test                shown but not run (setup, which .ci/run runs itself; wandb login)
    ```python no-test              not run as part of the examples script (the synthetic-task snippet:
                                   test_data_synthetic.py runs it inside data/syntheticdata.py)
    ```python edit-find FILE        a customising recipe: the exact lines to find in FILE ...
    ```python edit-replace          ... and what replaces them (must directly follow an edit-find)
    ```python edit-after FILE       ... or lines to insert after the edit-find lines instead
Recipes are headings `### Recipe N: title`; the edit blocks up to the next heading belong to it.
"""
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

README = Path(__file__).resolve().parents[1] / "README.md"
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.S | re.M)
HEADING = re.compile(r"^#{1,6} (.*)$", re.M)
RECIPE = re.compile(r"Recipe (\d+): (.*)")


@dataclass
class Block:
    lang: str
    tags: List[str]
    code: str
    start: int  # character offset in README.md


@dataclass
class Edit:
    path: str
    find: str
    replace: str  # the full replacement of `find` (edit-after blocks are turned into find + new lines)


@dataclass
class Recipe:
    number: int
    title: str
    edits: List[Edit] = field(default_factory=list)


def blocks(text: str = None) -> List[Block]:
    text = README.read_text() if text is None else text
    out = []
    for m in FENCE.finditer(text):
        words = m.group(1).split()
        out.append(Block(words[0] if words else "", words[1:], m.group(2), m.start()))
    return out


def python_examples(text: str = None) -> List[Block]:
    return [b for b in blocks(text) if b.lang == "python" and not b.tags]


def shell_commands(text: str = None) -> List[str]:
    """`python3 main.py ...` lines of the runnable bash blocks (continuation lines joined)."""
    commands = []
    for b in blocks(text):
        if b.lang != "bash" or "no-test" in b.tags:
            continue
        joined = b.code.replace("\\\n", " ")
        commands += [line.strip() for line in joined.splitlines() if line.strip().startswith("python3 main.py")]
    return commands


def recipes(text: str = None) -> Dict[int, Recipe]:
    text = README.read_text() if text is None else text
    heads = [(m.start(), RECIPE.match(m.group(1))) for m in HEADING.finditer(text)]
    found: Dict[int, Recipe] = {}
    pending: Optional[Tuple[str, str, int]] = None  # (path, find text, recipe number)
    for b in blocks(text):
        if not b.tags or not b.tags[0].startswith("edit-"):
            continue
        owner = [h for h in heads if h[0] < b.start]
        assert owner and owner[-1][1], f"an {b.tags[0]} block outside a '### Recipe N: title' section"
        number, title = int(owner[-1][1].group(1)), owner[-1][1].group(2)
        recipe = found.setdefault(number, Recipe(number, title))
        kind = b.tags[0]
        if kind == "edit-find":
            assert pending is None, f"Recipe {pending[2]}: an edit-find block ({pending[0]}) without its " \
                                    "edit-replace / edit-after block"
            assert len(b.tags) == 2, f"Recipe {number}: write the file after edit-find, e.g. ```python edit-find main.py"
            pending = (b.tags[1], b.code, number)
        elif kind in ("edit-replace", "edit-after"):
            assert pending is not None and pending[2] == number, \
                f"Recipe {number}: {kind} block without an edit-find block of the same recipe before it"
            path, find, _ = pending
            replace = b.code if kind == "edit-replace" else find + b.code
            recipe.edits.append(Edit(path, find, replace))
            pending = None
        else:
            raise AssertionError(f"Recipe {number}: unknown block tag {kind!r} (edit-find, edit-replace, edit-after)")
    assert pending is None, f"Recipe {pending[2]}: an edit-find block ({pending[0]}) without its " \
                            "edit-replace / edit-after block"
    return found


def apply_recipe(recipe: Recipe, repo: Path) -> None:
    """Apply a recipe's edits to the copy of the repo at `repo`; each find text must occur exactly once.
    Lines are matched ignoring their leading indentation, and the replacement is re-indented to match."""
    for edit in recipe.edits:
        path = repo / edit.path
        source = path.read_text()
        new_source = _replace_once(source, edit.find, edit.replace, f"Recipe {recipe.number} in {edit.path}")
        path.write_text(new_source)


def find_hits(source: str, find: str) -> List[int]:
    """Line numbers (0-based) where the lines of `find` start in `source`, each line compared without
    its leading and trailing whitespace."""
    find_lines = [l.strip() for l in find.strip("\n").splitlines()]
    lines = [l.strip() for l in source.splitlines()]
    return [i for i in range(len(lines) - len(find_lines) + 1) if lines[i:i + len(find_lines)] == find_lines]


def _replace_once(source: str, find: str, replace: str, where: str) -> str:
    find_lines = find.strip("\n").splitlines()
    lines = source.splitlines(keepends=True)
    hits = find_hits(source, find)
    assert len(hits) == 1, f"{where}: the quoted lines occur {len(hits)} times (need exactly 1):\n{find}"
    i = hits[0]
    indent = re.match(r"[ \t]*", lines[i]).group(0)
    base = min((len(l) - len(l.lstrip()) for l in replace.splitlines() if l.strip()), default=0)
    new = "".join(indent + l[base:] + "\n" if l.strip() else "\n" for l in replace.strip("\n").splitlines())
    return "".join(lines[:i]) + new + "".join(lines[i + len(find_lines):])
