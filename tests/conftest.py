"""Test-wide settings: the IR verifier runs after import and after every pass (LEPTON_DEBUG=1);
compiles go to a throw-away cache and see no local tuning database, never the user's ~/.cache/lepton."""

import os
import tempfile

os.environ.setdefault("LEPTON_DEBUG", "1")
os.environ.setdefault("LEPTON_CACHE_DIR", tempfile.mkdtemp(prefix="lepton-test-cache-"))
os.environ.setdefault("LEPTON_TUNING_DIR", tempfile.mkdtemp(prefix="lepton-test-tuning-"))  # no local tuning DB
