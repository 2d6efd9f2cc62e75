"""train_stats: every metric a run records, as {name: [(s, n, c, v), ...]}.

    s  optimizer steps taken so far (a batch's training loss: the steps before its own update)
    n  samples trained on so far (a batch's training loss: this batch included)
    c  global counter: how many values (of any metric) were recorded before this one
    v  the value (a float)

A metric's list is in increasing c, and c orders values across metrics. Plots use s or n as the x axis.

Values may arrive as 0-dim tensors on the GPU (the training loss of every batch): turning each
into a float at once would make the GPU wait every step. They are kept as tensors and converted
together by `flush()`, one synchronisation per flush.
"""
import time
from typing import Any, Dict, List, Optional, Tuple, Union

import torch

Entry = Tuple[int, int, int, float]
TrainStats = Dict[str, List[Entry]]


class StatsRecorder:
    """Records values into a train_stats dict; `flush()` makes every entry a plain float."""

    def __init__(self, train_stats: Optional[TrainStats] = None):
        self.stats: Dict[str, List[Any]] = {name: [tuple(e) for e in entries]
                                            for name, entries in (train_stats or {}).items()}
        self.counter = sum(len(entries) for entries in self.stats.values())
        self._unflushed: List[Tuple[str, int]] = []  # (name, index in stats[name]) in recording order

    def record(self, name: str, s: int, n: int, value: Union[float, torch.Tensor]) -> None:
        entries = self.stats.setdefault(name, [])
        entries.append((int(s), int(n), self.counter, value.detach() if torch.is_tensor(value) else float(value)))
        self._unflushed.append((name, len(entries) - 1))
        self.counter += 1

    def flush(self) -> List[Tuple[str, Entry]]:
        """Convert pending tensor values to floats (one device sync) and return the entries recorded
        since the last flush, in recording order, as (name, (s, n, c, v))."""
        pending = [(name, self.stats[name][i]) for name, i in self._unflushed]
        tensors = [entry[3] for _, entry in pending if torch.is_tensor(entry[3])]
        if tensors:  # stacked on one device (the GPU's, if any): a CPU tensor logged next to GPU ones is fine
            device = next((t.device for t in tensors if t.device.type != "cpu"), tensors[0].device)
            floats = iter(torch.stack([t.float().reshape(()).to(device) for t in tensors]).tolist())
        flushed = []
        for (name, i), (_, (s, n, c, v)) in zip(self._unflushed, pending):
            entry = (s, n, c, next(floats) if torch.is_tensor(v) else v)
            self.stats[name][i] = entry
            flushed.append((name, entry))
        self._unflushed = []
        return flushed


class Throughput:
    """Tokens per second of training time (time spent validating is not counted)."""

    def __init__(self) -> None:
        self.tokens = 0
        self.seconds = 0.0
        self.total_tokens = 0  # never reset: progress lines and mean_tokens_per_s (final.json)
        self.total_seconds = 0.0
        self._since: Optional[float] = None

    def resume(self) -> None:
        if self._since is None:
            self._since = time.perf_counter()

    def pause(self) -> None:
        if self._since is not None:
            seconds = time.perf_counter() - self._since
            self.seconds += seconds
            self.total_seconds += seconds
            self._since = None

    def add_tokens(self, n: int) -> None:
        self.tokens += n
        self.total_tokens += n

    def mean_tokens_per_s(self) -> Optional[float]:
        """Tokens per second over all the training time measured (the final.json figure); None before any."""
        running = self._since is not None
        self.pause()
        if running:
            self.resume()
        return self.total_tokens / self.total_seconds if self.total_seconds > 0 else None

    def tokens_per_s(self) -> float:
        """Tokens per second since the previous call (the window then starts again)."""
        running = self._since is not None
        self.pause()
        rate = self.tokens / self.seconds if self.seconds > 0 else 0.0
        self.tokens, self.seconds = 0, 0.0
        if running:
            self.resume()
        return rate
