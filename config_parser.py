"""Config files and `--set` overrides -> one set of params per run.

A config file (configs/NAME.txt) looks like:

    # comment
    DataParams                  (or [DataParams])
    dataset_name="ptb"
    max_seq_len=64

    ModelParams
    n_layers=[2, 4]             a list sweeps over its values
    dim=128                     # a trailing comment is fine too

Values are Python literals read with `ast.literal_eval` (never `eval`) and checked against the
field's type. Several lists sweep over their cartesian product; the first key in the file varies
slowest. A field whose own type is a list is given as a list of lists (`widths=[[64, 32]]`).

Everything here derives from the param dataclasses (names, types, defaults, descriptions), so a
new field is usable in configs, `--set` and `--list-params` as soon as it is added.
Nothing heavy is imported: `python3 main.py --help` must start fast.
"""
import ast
import dataclasses
import difflib
import inspect
import io
import itertools
import re
import textwrap
import tokenize
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from data.data_params import DataParams
from model.model_params import ModelParams
from train.train_params import TrainParams

# section name in config files -> its dataclass
SECTIONS: Dict[str, type] = {"DataParams": DataParams, "ModelParams": ModelParams, "TrainParams": TrainParams}
CONFIGS_DIR = Path(__file__).resolve().parent / "configs"
# an unquoted value that can only be meant as a string (a name, a path): `--set tokenizer=char`
BARE_WORD = re.compile(r"[\w\-./:~]+")


class ConfigError(Exception):
    """A mistake in a config file or a command-line override; the message says where and how to fix it."""


@dataclass
class Setting:
    """One `key=value` line (or `--set`): the values a field takes, with where they came from."""

    section: str
    key: str
    values: List[Any]  # one value, or the values swept over (a list in the config)
    where: str  # "configs/x.txt, line 3" or "--set 'lr=1e-3'", for error messages


@dataclass
class RunSpec:
    """One expanded run: the params of every section plus what distinguishes it from its siblings."""

    config_path: Path
    config_name: str  # file name without .txt, e.g. "test-nlp"
    params: Dict[str, Any]  # section name -> dataclass instance
    varying: Dict[str, Any] = field(default_factory=dict)  # swept fields (more than one value) -> this run's value
    overrides: Dict[str, Any] = field(default_factory=dict)  # single-valued --set fields -> value


# ---- field information from the dataclasses ------------------------------------------------


def field_types(cls: type) -> Dict[str, Any]:
    """Field name -> resolved type annotation (strings from `from __future__ import annotations` resolved)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls)}


def field_defaults(cls: type) -> Dict[str, Any]:
    defaults = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            defaults[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            defaults[f.name] = f.default_factory()
        else:
            defaults[f.name] = dataclasses.MISSING
    return defaults


def field_descriptions(cls: type) -> Dict[str, str]:
    """Field name -> description: `field(metadata={"description": ...})`, else the trailing
    `# comment` on the field's line in the class source."""
    comments: Dict[int, str] = {}  # line number (in the dedented class source) -> comment text
    try:
        source = textwrap.dedent(inspect.getsource(cls))
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.COMMENT:
                comments[tok.start[0]] = tok.string.lstrip("#").strip()
        class_node = ast.parse(source).body[0]
        line_of = {node.target.id: node.end_lineno for node in class_node.body
                   if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)}
    except (OSError, TypeError, SyntaxError, tokenize.TokenError, IndexError):
        line_of = {}  # no source available (e.g. defined in an interactive session)
    descriptions = {}
    for f in dataclasses.fields(cls):
        descriptions[f.name] = f.metadata.get("description") or comments.get(line_of.get(f.name, -1), "")
    return descriptions


# ---- types ----------------------------------------------------------------------------------


def type_name(tp: Any) -> str:
    """Readable type: `int`, `int | None`, `list[int]`."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is type(None):
        return "None"
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is not None:
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{', '.join('...' if a is Ellipsis else type_name(a) for a in args)}]" if args else name
    return getattr(tp, "__name__", str(tp))


def matches_type(value: Any, tp: Any) -> bool:
    """Whether `value` (a Python literal) fits type `tp`. An int fits a float; a bool fits neither int nor float."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return True
    if tp is type(None) or tp is None:
        return value is None
    if origin in (typing.Union, types.UnionType):
        return any(matches_type(value, a) for a in args)
    if origin is typing.Literal:
        return value in args
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin in (list, set, frozenset):
        return isinstance(value, origin) and (not args or all(matches_type(v, args[0]) for v in value))
    if origin is tuple:
        if not isinstance(value, tuple):
            return False
        if not args:
            return True
        if len(args) == 2 and args[1] is Ellipsis:
            return all(matches_type(v, args[0]) for v in value)
        return len(args) == len(value) and all(matches_type(v, a) for v, a in zip(value, args))
    if origin is dict:
        return isinstance(value, dict) and (not args or all(
            matches_type(k, args[0]) and matches_type(v, args[1]) for k, v in value.items()))
    if isinstance(tp, type):
        return isinstance(value, tp)
    return True  # a typing construct we do not check


def coerce_to_type(value: Any, tp: Any) -> Any:
    """Turn ints given for float fields into floats (also inside lists), so params hold what they declare."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if type(value) is int and int in args:
            return value  # `int | float` given an int stays an int
        return next((coerce_to_type(value, a) for a in args if matches_type(value, a)), value)
    if tp is float and type(value) is int:
        return float(value)
    if origin is list and args and isinstance(value, list):
        return [coerce_to_type(v, args[0]) for v in value]
    return value


def is_list_type(tp: Any) -> bool:
    """Whether the field itself holds a list (so a sweep over it is written as a list of lists)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(is_list_type(a) for a in typing.get_args(tp))
    return tp is list or origin is list


# ---- parsing values -------------------------------------------------------------------------


def strip_trailing_comment(text: str) -> str:
    """`[1, 2]  # note` -> `[1, 2]`; a `#` inside a string literal stays."""
    try:
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            if tok.type == tokenize.COMMENT:
                return text[:tok.start[1]].rstrip()
    except (tokenize.TokenError, IndentationError, SyntaxError):
        pass  # unbalanced brackets or an unterminated string: literal_eval will report it
    return text.strip()


def literal_or_none(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None


def quote_hint(key: str, text: str, where: str) -> str:
    """The fix for a string value written without quotes, in the syntax of where it was written."""
    return (f" Strings need quotes: --set '{key}=\"{text}\"'." if where.startswith("--set")
            else f' Strings need quotes: {key}="{text}".')


def parse_literal(text: str, where: str, section: str, key: str, tp: Any) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        hint = quote_hint(key, text, where) if BARE_WORD.fullmatch(text) and matches_type(text, tp) else ""
        raise ConfigError(f"{where}, section {section}, key {key!r}: cannot read the value {text!r}: "
                          f"values must be Python literals (numbers, \"strings\", True/False/None, lists).{hint}")


def make_setting(section: str, key: str, value: Any, where: str, sections: Mapping[str, type]) -> Setting:
    """Check a parsed value against the field's type. A list is always a sweep over its elements,
    so a field that itself holds a list is given as a list of lists (`widths=[[64, 32]]`)."""
    tp = field_types(sections[section])[key]
    values = value if isinstance(value, list) else [value]
    if not values:
        raise ConfigError(f"{where}, section {section}, key {key!r}: the empty list [] sweeps over no values."
                          + (f" For an empty list value write {key}=[[]]." if is_list_type(tp) else ""))
    for v in values:
        if not matches_type(v, tp):
            hint = ""
            if is_list_type(tp) and isinstance(value, list) and not isinstance(v, list):
                hint = (f" {key} holds a list, and a list sweeps, so write a list of lists: "
                        f"{key}=[{value!r}] for the single value {value!r}.")
            elif isinstance(v, str) and matches_type(literal_or_none(v), tp) and literal_or_none(v) is not None:
                hint = f" Drop the quotes: {key}={v}."
            elif matches_type(str(v), tp):
                hint = quote_hint(key, str(v), where)
            raise ConfigError(f"{where}, section {section}, key {key!r}: {v!r} has type {type(v).__name__}, "
                              f"but {key} expects {type_name(tp)}.{hint}")
    return Setting(section, key, [coerce_to_type(v, tp) for v in values], where)


def unknown_key_message(key: str, section: str, sections: Mapping[str, type]) -> str:
    names = [f.name for f in dataclasses.fields(sections[section])]
    close = difflib.get_close_matches(key, names, n=3, cutoff=0.6)
    elsewhere = [s for s, cls in sections.items() if s != section and key in field_types(cls)]
    msg = f"unknown key: {section} has no field {key!r}."
    if elsewhere:
        msg += f" {key!r} is a field of {' and '.join(elsewhere)}; put it under that section header."
    if close:
        msg += f" Did you mean {', '.join(close)}?"
    return msg + f" Valid {section} keys: {', '.join(names)}. (`python3 main.py --list-params` describes them.)"


# ---- config files ---------------------------------------------------------------------------


def display_path(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def parse_config_file(path: Path, sections: Mapping[str, type] = SECTIONS) -> List[Setting]:
    """Read one config file into its settings, in file order. Raises ConfigError naming file and line."""
    path = Path(path)
    shown = display_path(path)
    settings: List[Setting] = []
    seen: Dict[Tuple[str, str], str] = {}
    section: Optional[str] = None
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: a byte order mark (some Windows editors) is skipped
    except UnicodeDecodeError as e:
        raise ConfigError(f"{shown}: not a UTF-8 text file ({e}).") from e
    for line_no, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        where = f"{shown}, line {line_no}"
        if not line or line.startswith("#"):
            continue
        line = strip_trailing_comment(line)
        header = re.fullmatch(r"\[?\s*([A-Za-z_]\w*)\s*\]?", line)
        if header:
            name = header.group(1)
            if name not in sections:
                close = difflib.get_close_matches(name, list(sections), n=1)
                raise ConfigError(f"{where}: {line!r} is not a section header"
                                  f"{f' (did you mean {close[0]}?)' if close else ''}. Sections are "
                                  f"{', '.join(sections)}; settings are written name=value.")
            section = name
            continue
        if "=" not in line:
            raise ConfigError(f"{where}: cannot read {line!r}: expected a section header "
                              f"({', '.join(sections)}) or a name=value line.")
        key, value_text = (part.strip() for part in line.split("=", 1))
        if section is None:
            raise ConfigError(f"{where}, key {key!r}: setting outside any section. Put a section header "
                              f"({', '.join(sections)}) on a line of its own above it.")
        if not key.isidentifier():
            raise ConfigError(f"{where}, section {section}: {key!r} is not a valid field name.")
        if key not in field_types(sections[section]):
            raise ConfigError(f"{where}, section {section}, key {key!r}: {unknown_key_message(key, section, sections)}")
        if (section, key) in seen:
            raise ConfigError(f"{where}, section {section}, key {key!r}: set twice (first at {seen[section, key]}). "
                              f"Keep one line; a list sweeps over several values.")
        seen[section, key] = where
        tp = field_types(sections[section])[key]
        value = parse_literal(value_text, where, section, key, tp)
        settings.append(make_setting(section, key, value, where, sections))
    return settings


def find_config_files(name: str, configs_dir: Path = CONFIGS_DIR) -> List[Path]:
    """`test` -> configs/test.txt (if it exists) + every configs/test-*.txt, sorted by name.
    A name ending in .txt is one file: a path, or a file in configs/."""
    if name.endswith(".txt"):
        if not Path(name).is_file() and (Path(configs_dir) / name).is_file():
            return [Path(configs_dir) / name]
        if not Path(name).is_file():
            raise ConfigError(f"--config={name}: no such file. Give a config name (e.g. --config=test-nlp "
                              f"for configs/test-nlp.txt) or the path of an existing .txt file.")
        return [Path(name)]
    configs_dir = Path(configs_dir)
    base = configs_dir / name  # an absolute name or one with a folder part is a path prefix
    exact = base.parent / f"{base.name}.txt"
    found = ([exact] if exact.is_file() else []) + sorted(base.parent.glob(f"{glob_escape(base.name)}-*.txt"),
                                                          key=lambda p: p.stem)
    if not found:
        existing = sorted(p.stem for p in configs_dir.glob("*.txt"))
        close = difflib.get_close_matches(name, existing, n=3, cutoff=0.5)
        raise ConfigError(f"--config={name}: no config file {display_path(exact)} and none named "
                          f"{base.name}-*.txt in {display_path(base.parent)}."
                          + (f" Did you mean {', '.join(close)}?" if close else "")
                          + f" Existing configs: {', '.join(existing) if existing else '(none)'}.")
    return found


def glob_escape(text: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", text)


# ---- command-line overrides -----------------------------------------------------------------


def resolve_key(key: str, sections: Mapping[str, type] = SECTIONS, where: str = "") -> Tuple[str, str]:
    """`Section.key` or a bare key that exactly one section has -> (section, key)."""
    if "." in key:
        section, name = key.split(".", 1)
        if section not in sections:
            close = difflib.get_close_matches(section, list(sections), n=1)
            raise ConfigError(f"{where}: unknown section {section!r}"
                              f"{f' (did you mean {close[0]}?)' if close else ''}; sections are {', '.join(sections)}.")
        if name not in field_types(sections[section]):
            raise ConfigError(f"{where}: {unknown_key_message(name, section, sections)}")
        return section, name
    owners = [s for s, cls in sections.items() if key in field_types(cls)]
    if len(owners) == 1:
        return owners[0], key
    if owners:
        raise ConfigError(f"{where}: {key!r} is ambiguous, it is a field of {' and '.join(owners)}. "
                          f"Say which: {' or '.join(f'{s}.{key}' for s in owners)}.")
    all_names = [n for cls in sections.values() for n in field_types(cls)]
    close = difflib.get_close_matches(key, all_names, n=3, cutoff=0.6)
    raise ConfigError(f"{where}: unknown key {key!r}: no section has this field."
                      + (f" Did you mean {', '.join(close)}?" if close else "")
                      + " `python3 main.py --list-params` lists every field.")


def parse_override(text: str, sections: Mapping[str, type] = SECTIONS) -> Setting:
    """`--set KEY=VALUE`: value read like in config files (a list sweeps). For a str field an
    unquoted word is taken as the string, since the shell strips quotes (`--set tokenizer=char`)."""
    where = f"--set {text!r}"
    if "=" not in text:
        raise ConfigError(f"{where}: expected KEY=VALUE, e.g. --set lr=3e-4 or --set ModelParams.n_layers=[2,4].")
    key, value_text = (part.strip() for part in text.split("=", 1))
    section, name = resolve_key(key, sections, where)
    try:
        value = ast.literal_eval(value_text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        tp = field_types(sections[section])[name]
        if not (BARE_WORD.fullmatch(value_text) and matches_type(value_text, tp)):
            parse_literal(value_text, where, section, name, tp)  # raises the usual message
        value = value_text
    return make_setting(section, name, value, where, sections)


# ---- expansion ------------------------------------------------------------------------------


def display_key(section: str, key: str, sections: Mapping[str, type] = SECTIONS) -> str:
    """The bare field name, or `Section.key` when several sections have that name."""
    owners = [s for s, cls in sections.items() if key in field_types(cls)]
    return key if len(owners) <= 1 else f"{section}.{key}"


def expand(config_path: Path, settings: Sequence[Setting], overrides: Sequence[Setting] = (),
           sections: Mapping[str, type] = SECTIONS) -> List[RunSpec]:
    """All runs of one config file: the cartesian product of every setting's values, overrides
    replacing the file's settings of the same field (else appended). The first key varies slowest."""
    merged: Dict[Tuple[str, str], Setting] = {(s.section, s.key): s for s in settings}
    for o in overrides:
        merged[o.section, o.key] = o  # replaces in place (keeping file order) or appends
    chosen = list(merged.values())
    overridden = {(o.section, o.key) for o in overrides}
    runs = []
    for combo in itertools.product(*(s.values for s in chosen)):
        values: Dict[str, Dict[str, Any]] = {name: {} for name in sections}
        varying, single_overrides = {}, {}
        for s, v in zip(chosen, combo):
            values[s.section][s.key] = v
            shown = display_key(s.section, s.key, sections)
            if len(s.values) > 1:
                varying[shown] = v
            elif (s.section, s.key) in overridden:
                single_overrides[shown] = v
        params = {name: cls(**values[name]) for name, cls in sections.items()}
        runs.append(RunSpec(Path(config_path), Path(config_path).stem, params, varying, single_overrides))
    return runs


def load_runs(config: str, set_args: Sequence[str] = (), task: Optional[str] = None,
              configs_dir: Path = CONFIGS_DIR, sections: Mapping[str, type] = SECTIONS) -> List[RunSpec]:
    """`--config`, `--set` and `--task` -> every run, config files in sorted order."""
    overrides = [parse_override(text, sections) for text in set_args]
    for i, o in enumerate(overrides):
        earlier = [e for e in overrides[:i] if (e.section, e.key) == (o.section, o.key)]
        if earlier:
            raise ConfigError(f"{o.where}: {o.section}.{o.key} is already set by {earlier[0].where}; "
                              f"give it once (a list sweeps over several values).")
    if task is not None:
        if any(o.key == "dataset_name" and o.section == "DataParams" for o in overrides):
            raise ConfigError("--task and --set dataset_name both set the task; give only one of them.")
        overrides.append(make_setting("DataParams", "dataset_name", task, f"--task={task}", sections))
    runs = []
    for path in find_config_files(config, configs_dir):
        runs.extend(expand(path, parse_config_file(path, sections), overrides, sections))
    return runs


# ---- --list-params --------------------------------------------------------------------------


def format_literal(value: Any) -> str:
    """A value as it would be written in a config file (strings in double quotes)."""
    if isinstance(value, str) and '"' not in value and "\\" not in value:
        return f'"{value}"'
    return repr(value)


def format_params_list(sections: Mapping[str, type] = SECTIONS) -> str:
    """Every field grouped by section: name, type, default, description."""
    blocks = ["Fields by section: name, type, default, description. Set them in configs/*.txt under the "
              "section's header, or with --set KEY=VALUE."]
    for section, cls in sections.items():
        types_, defaults, descriptions = field_types(cls), field_defaults(cls), field_descriptions(cls)
        rows = [(name, type_name(types_[name]), "(required)" if defaults[name] is dataclasses.MISSING
                 else format_literal(defaults[name]), descriptions[name]) for name in types_]
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        source = inspect.getsourcefile(cls)
        lines = [f"{section}  ({display_path(Path(source)) if source else cls.__module__})"]
        for row in rows:
            lines.append("  " + "  ".join(cell.ljust(w) for cell, w in zip(row[:3], widths)) + "  " + row[3])
        blocks.append("\n".join(line.rstrip() for line in lines))
    shared = sorted({name for cls in sections.values() for name in field_types(cls)
                     if display_key("", name, sections) != name})
    if shared:
        blocks.append(f"In several sections (write Section.key with --set): {', '.join(shared)}.")
    return "\n\n".join(blocks)
