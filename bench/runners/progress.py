"""Rich progress bars for the phases of a run."""

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class RichPhases:
    """Shows one progress bar per phase (feature extraction, fitting, scoring) with counts and ETA."""

    def __init__(self, console: Console) -> None:
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )

    def __enter__(self) -> "RichPhases":
        self.progress.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.progress.stop()

    def track(self, batches: Iterable[torch.Tensor], description: str, total: int) -> Iterator[torch.Tensor]:
        """Yield the batches while advancing a bar of `total` batches."""
        task = self.progress.add_task(description, total=total)
        for batch in batches:
            yield batch
            self.progress.advance(task)

    @contextmanager
    def step(self, description: str) -> Iterator[None]:
        """Show a spinner for one step of unknown length, completed when the block ends."""
        task = self.progress.add_task(description, total=1)
        yield
        self.progress.update(task, completed=1)
