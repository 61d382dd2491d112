import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import logging

import pytest


@pytest.fixture(autouse=True)
def _fresh_log_handler():
    """Each test starts without detox_pa's log handler, so one test's logging never leaks into another's capture."""
    def drop():
        root = logging.getLogger()
        for h in list(root.handlers):
            if getattr(h, "_detox_pa", False):
                root.removeHandler(h)
    drop()
    yield
    drop()
