"""TaskData: what `get_data` returns for every task, before any tokenization."""
from dataclasses import dataclass
from typing import Dict, List, Tuple, Union

Line = str  # one line of text (no newline); natural tasks
PromptTarget = Tuple[str, str]  # (prompt, target) text; synthetic tasks
Sample = Union[Line, PromptTarget]


@dataclass
class TaskData:
    """A task's samples as text, split, plus the defaults that `"auto"` settings resolve to.

    Natural tasks hold lines of text; in stream mode each line is followed by `<eos>`, in lines
    mode each non-empty line is one sample. Synthetic tasks hold (prompt, target) pairs.
    """
    train: List[Sample]
    val: Dict[str, List[Sample]]  # validation sets by name, "main" first (e.g. also "long")
    test: List[Sample]
    tokenizer: str  # tokenizer kind used when DataParams.tokenizer == "auto"
    sample_mode: str  # "stream" or "lines", used when DataParams.sample_mode == "auto"
    synthetic: bool = False  # samples are (prompt, target) pairs
    source: str = ""  # where the samples came from (for summaries and messages)

    def splits(self) -> Dict[str, List[Sample]]:
        """Every split by its name: "train", "val:<name>" for each validation set, "test"."""
        return {"train": self.train, **{f"val:{k}": v for k, v in self.val.items()}, "test": self.test}
