"""``mplog.start(config=...)``: the listener's handlers from a ``logging.config.dictConfig``
dictionary, built in the listener process."""

from __future__ import annotations

import logging
import logging.config
from collections.abc import Mapping
from typing import Any

from ._errors import ConfigError

__all__ = ["DictConfigHandlers", "check_config"]


def check_config(config: object) -> dict[str, Any]:
    """The checks that need no handler built: a mapping with ``version`` 1 that sends
    something to the root logger."""
    if not isinstance(config, Mapping):
        raise ConfigError(
            f"config must be a logging.config.dictConfig dictionary, got {type(config).__name__}"
        )
    if config.get("version") != 1:
        raise ConfigError("config must have \"version\": 1 (logging.config.dictConfig schema)")
    root = config.get("root")
    if not isinstance(root, Mapping) or not root.get("handlers"):
        raise ConfigError(
            "config must attach its handlers to the root logger (\"root\": {\"handlers\": [...]}): "
            "those are the listener's handlers"
        )
    if config.get("incremental"):
        raise ConfigError("config cannot be incremental: the listener starts from nothing")
    return dict(config)


class DictConfigHandlers:
    """A handlers factory: applies *config* in the listener process and returns the
    handlers it attached to the root logger (taken off it: the listener calls them)."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config

    def __call__(self) -> list[logging.Handler]:
        logging.config.dictConfig(self.config)
        root = logging.getLogger()
        handlers = list(root.handlers)
        for h in handlers:
            root.removeHandler(h)
        return handlers
