"""Exceptions raised by itmatch. Every message names the file, line or item at fault."""

from __future__ import annotations


class ItmatchError(Exception):
    """Base class for errors a user can fix (bad input, bad config, missing file)."""


class DataError(ItmatchError):
    """A data file is malformed: the message names the file and the item or line."""


class ConfigError(ItmatchError):
    """A config (YAML recipe or CLI override) is invalid."""


class ImageReadError(ItmatchError):
    """One or more images could not be read; ``failures`` maps path -> reason."""

    def __init__(self, failures: dict[str, str]):
        self.failures = dict(failures)
        lines = [f"  {path}: {reason}" for path, reason in list(self.failures.items())[:20]]
        more = len(self.failures) - 20
        if more > 0:
            lines.append(f"  ... and {more} more")
        super().__init__(f"{len(self.failures)} image(s) could not be read:\n" + "\n".join(lines))
