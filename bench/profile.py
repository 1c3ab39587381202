"""py-spy on the ``ipam serve`` process while a scenario runs (``python -m bench --profile DIR``).

Each scenario leaves ``DIR/<scenario>.txt`` (py-spy's collapsed stacks, one ``frame;frame;... count`` a
line, what flamegraph.pl and speedscope read) and ``DIR/<scenario>.top.txt``: the frames that hold the CPU,
by their own samples and including what they call, the summary docs/performance.md quotes.  Idle samples
(the event loop waiting) are left out, so shares are of the time the process was on a core.

``python -m bench.profile FILE`` prints the summary of a collapsed-stack file again.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path


class Profiler:
    """py-spy recording one process for as long as a block runs."""

    def __init__(self, folder: Path, name: str, pid: int, rate: int = 200) -> None:
        self.folder, self.name, self.pid, self.rate = folder, name.replace("/", "_"), pid, rate
        self.proc: subprocess.Popen | None = None

    @property
    def raw(self) -> Path:
        return self.folder / f"{self.name}.txt"

    def start(self) -> Profiler:
        spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        self.folder.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen([spy, "record", "--nonblocking", "-r", str(self.rate), "-f", "raw", "-o", str(self.raw),
                                      "-p", str(self.pid)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return self

    def stop(self) -> Path | None:
        """Stop recording (py-spy writes its file on SIGINT) and write the summary beside it."""
        if self.proc is None:
            return None
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return None
        if not self.raw.exists():
            return None
        top = self.folder / f"{self.name}.top.txt"
        top.write_text(summary(self.raw))
        return top


def summary(raw: Path, own: int = 25, inclusive: int = 40) -> str:
    """The frames with the most samples of their own, then the most including their callees (ipam and library
    frames only: the frames every sample shares, the event loop's and the CLI's, are dropped)."""
    own_samples: Counter[str] = Counter()
    with_callees: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames, n = stack.split(";"), int(count)
        total += n
        own_samples[frames[-1]] += n
        for frame in set(frames):
            with_callees[frame] += n
    common = {f for f, n in with_callees.items() if n == total}
    lines = [f"{total} samples (on a core)", "", "own samples:"]
    lines += [f"{100 * n / total:5.1f}%  {f}" for f, n in own_samples.most_common(own)]
    lines += ["", "with callees:"]
    lines += [f"{100 * n / total:5.1f}%  {f}" for f, n in with_callees.most_common(inclusive + len(common)) if f not in common]
    return "\n".join(lines[:4 + own + 2 + inclusive]) + "\n"


if __name__ == "__main__":
    print(summary(Path(sys.argv[1])))
