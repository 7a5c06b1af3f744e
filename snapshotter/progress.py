"""What a long restore tells whoever runs it: a line per step, and on a
terminal a progress bar (tqdm) for each download and replay. Off a terminal
(logs, CI, a shard bootstrapping from S3) bars are disabled and only the step
lines remain, so logs do not fill with carriage returns."""

from __future__ import annotations

import sys
from typing import Callable, TextIO

from tqdm import tqdm

BAR_REFRESH_S = 0.2


class Progress:
    def __init__(self, step: Callable[[str], None] | None = None, stream: TextIO | None = None,
                 bars: bool | None = None) -> None:
        """step receives each step line (default: print to stream); bars None
        means bars only when stream is a terminal."""
        self.stream = stream if stream is not None else sys.stderr
        self._step = step
        self.bars = bars

    def step(self, message: str) -> None:
        if self._step is not None:
            self._step(message)
        else:
            print(message, file=self.stream, flush=True)

    def bar(self, desc: str, total: int, unit: str) -> tqdm:
        """A bar to update() with amounts done; use it as a context manager."""
        return tqdm(total=total, desc=desc, unit=unit, unit_scale=True, file=self.stream,
                    disable=(not self.bars) if self.bars is not None else None,
                    mininterval=BAR_REFRESH_S, leave=False)
