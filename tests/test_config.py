"""Config files, sweeps, type checks, --set and --list-params text (config_parser.py)."""
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

import pytest

import config_parser as cp
from config_parser import ConfigError
from data.data_params import DataParams
from model.model_params import ModelParams
from train.train_params import TrainParams

REPO = Path(__file__).resolve().parents[1]


@dataclass
class TinyParams:
    name: str = "a"  # a string
    count: int = 1  # an int
    rate: float = 0.5  # a float
    limit: Optional[int] = None  # an int or None
    flag: bool = False  # a bool
    widths: List[int] = field(default_factory=lambda: [8])  # a list-typed field
    scales: Optional[List[float]] = None  # an optional list of floats
    shared: int = 0  # also in OtherParams


@dataclass
class OtherParams:
    shared: int = 0  # also in TinyParams
    size: int = 3  # a size
    noted: int = field(default=2, metadata={"description": "from metadata"})


TINY = {"TinyParams": TinyParams, "OtherParams": OtherParams}


def write(tmp_path: Path, text: str, name: str = "cfg.txt") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def runs_of(tmp_path: Path, text: str, overrides=(), sections=TINY):
    path = write(tmp_path, text)
    settings = cp.parse_config_file(path, sections)
    return cp.expand(path, settings, [cp.parse_override(o, sections) for o in overrides], sections)


def error_of(tmp_path: Path, text: str, sections=TINY) -> str:
    with pytest.raises(ConfigError) as info:
        cp.parse_config_file(write(tmp_path, text), sections)
    return str(info.value)


# ---- format -----------------------------------------------------------------------------------


def test_sections_comments_blank_lines_and_bracket_headers(tmp_path):
    runs = runs_of(tmp_path, """
# a full-line comment
[TinyParams]
name = "x # not a comment"   # a trailing comment
count=3

  # indented comment
OtherParams  # header with a comment, n=2
size=7
""")
    assert len(runs) == 1
    tiny, other = runs[0].params["TinyParams"], runs[0].params["OtherParams"]
    assert (tiny.name, tiny.count, tiny.rate) == ("x # not a comment", 3, 0.5)  # unset fields keep defaults
    assert other.size == 7
    assert runs[0].varying == {} and runs[0].config_name == "cfg"


def test_real_sections_with_brackets(tmp_path):
    path = write(tmp_path, '[DataParams]\ndataset_name="sort"\n[ModelParams]\nn_layers=3\n[TrainParams]\nlr=1\n')
    (run,) = cp.expand(path, cp.parse_config_file(path))
    assert run.params["DataParams"] == DataParams(dataset_name="sort")
    assert run.params["ModelParams"] == ModelParams(n_layers=3)
    assert run.params["TrainParams"].lr == 1.0 and isinstance(run.params["TrainParams"].lr, float)


def test_cartesian_product_in_file_order(tmp_path):
    runs = runs_of(tmp_path, 'TinyParams\ncount=[1, 2]\nname="n"\nrate=[0.1, 0.2, 0.3]\n')
    assert [(r.params["TinyParams"].count, r.params["TinyParams"].rate) for r in runs] == [
        (1, 0.1), (1, 0.2), (1, 0.3), (2, 0.1), (2, 0.2), (2, 0.3)]
    assert runs[4].varying == {"count": 2, "rate": 0.2}  # only swept fields, in file order


def test_one_element_list_does_not_vary(tmp_path):
    (run,) = runs_of(tmp_path, "TinyParams\ncount=[5]\n")
    assert run.params["TinyParams"].count == 5 and run.varying == {}


def test_types_int_for_float_none_for_optional_bool_not_int(tmp_path):
    (run,) = runs_of(tmp_path, "TinyParams\nrate=2\nlimit=None\nflag=True\n")
    tiny = run.params["TinyParams"]
    assert tiny.rate == 2.0 and type(tiny.rate) is float
    assert tiny.limit is None and tiny.flag is True
    assert "expects int" in error_of(tmp_path, "TinyParams\ncount=True\n")
    assert "expects int | None" in error_of(tmp_path, "TinyParams\nlimit=1.5\n")


def test_list_typed_field_takes_a_list_of_lists(tmp_path):
    (run,) = runs_of(tmp_path, "TinyParams\nwidths=[[64, 32]]\n")
    assert run.params["TinyParams"].widths == [64, 32] and run.varying == {}
    runs = runs_of(tmp_path, "TinyParams\nwidths=[[1], [2, 3]]\n")
    assert [r.params["TinyParams"].widths for r in runs] == [[1], [2, 3]]
    assert runs[1].varying == {"widths": [2, 3]}
    message = error_of(tmp_path, "TinyParams\nwidths=[64, 32]\n")
    assert "list of lists" in message and "widths=[[64, 32]]" in message
    assert "[[]]" in error_of(tmp_path, "TinyParams\nwidths=[]\n")
    runs = runs_of(tmp_path, "TinyParams\nscales=[None, [1, 2.5]]\n")
    assert [r.params["TinyParams"].scales for r in runs] == [None, [1.0, 2.5]]
    assert type(runs[1].params["TinyParams"].scales[0]) is float


def test_empty_sweep_is_an_error(tmp_path):
    assert "sweeps over no values" in error_of(tmp_path, "TinyParams\ncount=[]\n")


# ---- errors name the file, the line, the section, the key ---------------------------------------


@pytest.mark.parametrize("text, line, expected", [
    ("# c\ncount=2\n", 2, ["key 'count'", "outside any section"]),
    ("TinyParams\n\ncont=2\n", 3, ["section TinyParams", "key 'cont'", "unknown key", "Did you mean count"]),
    ("TinyParams\nsize=2\n", 2, ["'size' is a field of OtherParams"]),
    ("TinyParams\ncount=two\n", 2, ["section TinyParams", "key 'count'", "cannot read the value 'two'"]),
    ("TinyParams\nname=abc\n", 2, ["cannot read the value 'abc'", 'name="abc"']),
    ("TinyParams\ncount=[1,\n", 2, ["cannot read the value"]),
    ("TinyParams\ncount='3'\n", 2, ["key 'count'", "'3' has type str", "expects int", "count=3"]),
    ("TinyParams\nname=3\n", 2, ["3 has type int", "expects str", 'name="3"']),
    ("TinyParam\ncount=3\n", 1, ["not a section header", "did you mean TinyParams"]),
    ("TinyParams\njust words\n", 2, ["cannot read 'just words'"]),
    ("TinyParams\ncount=1\ncount=2\n", 3, ["set twice", "line 2"]),
])
def test_config_errors_say_where_and_what(tmp_path, text, line, expected):
    message = error_of(tmp_path, text)
    assert message.startswith(f"cfg.txt, line {line}") or f"cfg.txt, line {line}" in message
    for part in expected:
        assert part in message, (part, message)
    assert "\n" not in message  # one paragraph


# ---- which files --config=NAME runs --------------------------------------------------------------


def test_config_prefix_matching(tmp_path):
    for name in ["test", "test-b", "test-a", "test-a-x", "testing", "other"]:
        write(tmp_path, "", f"{name}.txt")
    names = lambda config: [p.stem for p in cp.find_config_files(config, tmp_path)]
    assert names("test") == ["test", "test-a", "test-a-x", "test-b"]
    assert names("test-a") == ["test-a", "test-a-x"]
    assert names("test-b") == ["test-b"]
    (tmp_path / "test.txt").unlink()
    assert names("test") == ["test-a", "test-a-x", "test-b"]
    assert names("other.txt") == ["other"]  # a .txt name is one file in the configs folder
    assert names(str(tmp_path / "testing.txt")) == ["testing"]  # or a path


def test_missing_config_lists_existing_ones(tmp_path):
    write(tmp_path, "", "test-nlp.txt")
    write(tmp_path, "", "ptb-small.txt")
    with pytest.raises(ConfigError) as info:
        cp.find_config_files("tst-nlp", tmp_path)
    message = str(info.value)
    assert "tst-nlp" in message and "Existing configs: ptb-small, test-nlp" in message
    assert "Did you mean test-nlp" in message


def test_config_name_with_a_folder_part_is_a_path_prefix(tmp_path):
    write(tmp_path, "", "exp.txt")
    write(tmp_path, "", "exp-a.txt")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # an absolute prefix (no .txt) globs in its own folder instead of crashing in Path.glob
    assert [p.stem for p in cp.find_config_files(str(tmp_path / "exp"), elsewhere)] == ["exp", "exp-a"]
    with pytest.raises(ConfigError, match="no config file"):
        cp.find_config_files(str(tmp_path / "nothing"), elsewhere)


def test_non_utf8_config_is_a_config_error(tmp_path):
    path = tmp_path / "cfg.txt"
    path.write_bytes(b'DataParams\ndataset_name="caf\xe9"\n')
    with pytest.raises(ConfigError, match="cfg.txt: not a UTF-8 text file"):
        cp.parse_config_file(path)


# ---- --set and --task --------------------------------------------------------------------------------


def test_set_qualified_bare_and_sweep(tmp_path):
    runs = runs_of(tmp_path, "TinyParams\ncount=[1, 2]\nrate=0.1\n",
                   overrides=["OtherParams.shared=4", "rate=[0.3, 0.4]", "name=plain-word"])
    assert len(runs) == 4
    assert [(r.params["TinyParams"].count, r.params["TinyParams"].rate) for r in runs] == [
        (1, 0.3), (1, 0.4), (2, 0.3), (2, 0.4)]  # the override keeps the file's position for rate
    assert runs[0].params["OtherParams"].shared == 4 and runs[0].params["TinyParams"].shared == 0
    assert runs[0].params["TinyParams"].name == "plain-word"  # an unquoted word is fine for a str field
    assert runs[3].varying == {"count": 2, "rate": 0.4}
    assert runs[3].overrides == {"OtherParams.shared": 4, "name": "plain-word"}


def test_set_errors():
    with pytest.raises(ConfigError, match=r"ambiguous.*DataParams.max_seq_len or ModelParams.max_seq_len"):
        cp.parse_override("max_seq_len=32")
    with pytest.raises(ConfigError, match=r"unknown key 'n_layer'.*Did you mean n_layers"):
        cp.parse_override("n_layer=2")
    with pytest.raises(ConfigError, match=r"ModelParams has no field 'lr'.*TrainParams"):
        cp.parse_override("ModelParams.lr=2")
    with pytest.raises(ConfigError, match=r"unknown section 'ModelParam'.*did you mean ModelParams"):
        cp.parse_override("ModelParam.dim=2")
    with pytest.raises(ConfigError, match=r"expected KEY=VALUE"):
        cp.parse_override("lr")
    with pytest.raises(ConfigError, match=r"cannot read the value 'abc'"):
        cp.parse_override("n_layers=abc")
    with pytest.raises(ConfigError, match=r"expects str.*--set 'precision=\"32\"'"):
        cp.parse_override("precision=32")
    assert cp.parse_override("ModelParams.max_seq_len=[16, 32]").values == [16, 32]
    assert cp.parse_override("tokenizer=~/tok/tokenizer.json").values == ["~/tok/tokenizer.json"]  # a path
    with pytest.raises(ConfigError, match=r'tokenizer="~/t.json"'):
        cp.parse_literal("~/t.json", "cfg.txt, line 2", "DataParams", "tokenizer", str)


def test_load_runs_with_set_and_task(tmp_path):
    write(tmp_path, 'DataParams\ndataset_name="ptb"\nModelParams\nn_layers=[1, 2]\n', "exp.txt")
    runs = cp.load_runs("exp", ["lr=3e-4"], task="sort", configs_dir=tmp_path)
    assert [r.params["DataParams"].dataset_name for r in runs] == ["sort", "sort"]
    assert [r.params["TrainParams"].lr for r in runs] == [3e-4, 3e-4]
    with pytest.raises(ConfigError, match="--task and --set dataset_name"):
        cp.load_runs("exp", ["dataset_name=ptb"], task="sort", configs_dir=tmp_path)
    with pytest.raises(ConfigError, match="already set"):
        cp.load_runs("exp", ["lr=1", "TrainParams.lr=2"], configs_dir=tmp_path)


# ---- descriptions and shipped configs ---------------------------------------------------------------


def test_descriptions_come_from_trailing_comments_or_metadata():
    assert cp.field_descriptions(TinyParams)["widths"] == "a list-typed field"
    assert cp.field_descriptions(OtherParams)["noted"] == "from metadata"
    for cls in (DataParams, ModelParams, TrainParams):
        descriptions = cp.field_descriptions(cls)
        assert all(descriptions[f.name] for f in dataclasses.fields(cls)), cls


def test_params_list_has_every_field():
    text = cp.format_params_list()
    for section, cls in cp.SECTIONS.items():
        assert section in text
        for f in dataclasses.fields(cls):
            assert f"  {f.name} " in text, f.name
    assert "int | None" in text and '"ptb"' in text
    assert "max_seq_len" in text.splitlines()[-1]  # names to qualify with Section.key


def test_shipped_configs_parse():
    paths = sorted((REPO / "configs").glob("*.txt"))
    assert {"test-nlp", "test-synth", "ptb-small", "shakespeare-char", "sweep-example"} <= {p.stem for p in paths}
    for path in paths:
        assert cp.expand(path, cp.parse_config_file(path)), path
    sweep = cp.load_runs("sweep-example")
    assert len(sweep) == 4 and all(len(r.varying) == 2 for r in sweep)
