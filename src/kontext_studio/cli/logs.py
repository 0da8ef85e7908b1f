"""Where the CLI's log records go: a log file by default, the terminal with ``kontext -v``.

Third-party libraries print notices while they load (optional torchvision, kernel back-ends, Python
warnings); those are records for a log, not messages for the user. The console shows only what the
commands print themselves.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

_HANDLER_NAME = "kontext-cli"


def log_file() -> Path:
    """The CLI's log file: ``KONTEXT_HOME/logs/kontext.log`` (``~/.kontext`` by default)."""
    return Path(os.environ.get("KONTEXT_HOME", "~/.kontext")).expanduser() / "logs" / "kontext.log"


class _LazyFile(logging.FileHandler):
    """A file handler that creates its folder and file only when a record arrives (most runs log nothing)."""

    def _open(self):  # type: ignore[no-untyped-def,unused-ignore]
        Path(self.baseFilename).parent.mkdir(parents=True, exist_ok=True)
        return super()._open()


def setup_logging(verbose: bool = False) -> None:
    """Send log records (ours at debug, the libraries' at info and above) to the log file, or to stderr.

    Python warnings raised by libraries are logged too instead of printed. Safe to call again: the
    previous CLI handler is replaced.
    """
    root = logging.getLogger()
    for old in list(root.handlers):
        if old.get_name() == _HANDLER_NAME:
            root.removeHandler(old)
            old.close()
    handler: logging.Handler
    if verbose:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    else:
        try:
            handler = _LazyFile(log_file(), delay=True, encoding="utf-8")
        except OSError:  # an unwritable home: keep the console clean all the same
            handler = logging.NullHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.set_name(_HANDLER_NAME)
    handler.setLevel(logging.DEBUG)
    root.addHandler(handler)
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)
    logging.getLogger("kontext_studio").setLevel(logging.DEBUG)
    logging.getLogger("PIL").setLevel(logging.INFO)  # PIL's debug records describe every chunk it reads
    logging.captureWarnings(True)
