"""Lines of text that are read when needed instead of held in memory: a text file, a `datasets` column.

A split of a task (`TaskData.train`, ...) is a list of lines, or one of these lazy sources for corpora
that may not fit in RAM. Both are iterated the same way (tokenizer training and tokenization stream
them in chunks); `lines_fingerprint` keys the caches by their content without loading them.
"""
import hashlib
from pathlib import Path
from typing import Any, Iterable, Iterator, List, Sequence, Union

READ_CHUNK = 1 << 22  # bytes read at a time from a text file (4 MiB)


class TextFileLines:
    """The lines of a UTF-8 text file (split on "\\n", a trailing "\\r" dropped), read a chunk at a time."""

    def __init__(self, path: Union[str, Path]):
        self.path = Path(path)

    def __iter__(self) -> Iterator[str]:
        with open(self.path, "r", encoding="utf-8", newline="") as f:
            try:
                for line in _split_lines(iter(lambda: f.read(READ_CHUNK), "")):
                    yield line
            except UnicodeDecodeError as e:
                raise ValueError(f"{self.path} is not UTF-8 text ({e}); convert it, e.g. with iconv -t utf-8") from e

    def fingerprint(self) -> str:
        h = hashlib.sha256(b"file\0")
        with open(self.path, "rb") as f:
            for block in iter(lambda: f.read(READ_CHUNK), b""):
                h.update(block)
        return h.hexdigest()

    def __repr__(self) -> str:
        return f"TextFileLines({str(self.path)!r})"


def _split_lines(chunks: Iterable[str]) -> Iterator[str]:
    """Lines of a text given in chunks, exactly as `natural.read_lines` splits the whole text."""
    rest = ""
    for chunk in chunks:
        parts = (rest + chunk).split("\n")
        rest = parts.pop()
        for line in parts:
            yield line[:-1] if line.endswith("\r") else line
    if rest:
        yield rest[:-1] if rest.endswith("\r") else rest


class DatasetColumnLines(Sequence):
    """One text column of a Hugging Face `datasets.Dataset` (memory-mapped Arrow), as lines.

    A trailing newline is dropped from every row, and with `rstrip_spaces` trailing spaces too
    (WikiText rows are " text \\n"). Iterating reads the rows in batches."""

    def __init__(self, dataset: Any, column: str = "text", rstrip_spaces: bool = False, batch_size: int = 10_000):
        self.dataset, self.column, self.rstrip_spaces, self.batch_size = dataset, column, rstrip_spaces, batch_size

    def _clean(self, row: str) -> str:
        row = row[:-1] if row.endswith("\n") else row
        return row.rstrip(" ") if self.rstrip_spaces else row

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: Union[int, slice]) -> Union[str, List[str]]:
        if isinstance(i, slice):
            return [self._clean(row) for row in self.dataset[i][self.column]]
        return self._clean(self.dataset[i][self.column])

    def __iter__(self) -> Iterator[str]:
        for batch in self.dataset.iter(batch_size=self.batch_size):
            yield from (self._clean(row) for row in batch[self.column])

    def fingerprint(self) -> str:
        parts = f"datasets\0{self.dataset._fingerprint}\0{self.column}\0{self.rstrip_spaces}"
        return hashlib.sha256(parts.encode()).hexdigest()

    def __repr__(self) -> str:
        return f"DatasetColumnLines({len(self)} rows of column {self.column!r})"


def lines_fingerprint(lines: Iterable[str]) -> str:
    """sha256 of a split's lines: the source's own fingerprint for lazy sources, else of the list."""
    if hasattr(lines, "fingerprint"):
        return lines.fingerprint()
    lines = list(lines)
    h = hashlib.sha256(f"list\0{len(lines)}\0".encode())
    h.update("\n".join(lines).encode("utf-8", "surrogatepass"))
    return h.hexdigest()

