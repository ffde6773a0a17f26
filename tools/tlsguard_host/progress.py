"""A dependency-free progress bar on stderr: redrawn in place on a terminal, one line per step
in logs (CI, factory stations), so a long batch or a slow serial copy never looks hung."""
import sys
import time


class Progress:
    def __init__(self, total, label="", stream=None, width=30):
        self.total = max(int(total), 1)
        self.label = label
        self.stream = stream or sys.stderr
        self.width = width
        self.done = 0
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self._last_line = -1
        self._start = time.monotonic()

    def advance(self, n=1, note=""):
        self.update(self.done + n, note)

    def update(self, done, note=""):
        self.done = min(done, self.total)
        pct = self.done * 100 // self.total
        if self.tty:
            fill = self.width * self.done // self.total
            self.stream.write("\r%s [%s%s] %3d%% %s\033[K" % (self.label, "#" * fill, "." * (self.width - fill),
                                                               pct, note))
            self.stream.flush()
        elif pct // 10 != self._last_line:
            # Logs get a line per 10% so a 2,000-chunk copy does not flood them.
            self._last_line = pct // 10
            self.stream.write("%s %3d%% (%d/%d) %s\n" % (self.label, pct, self.done, self.total, note))
            self.stream.flush()

    def finish(self, note=""):
        self.update(self.total, note)
        if self.tty:
            self.stream.write("\n")
        self.stream.flush()
        return time.monotonic() - self._start
