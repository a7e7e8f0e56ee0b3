"""Test-wide settings: the IR verifier runs after import and after every pass (LEPTON_DEBUG=1)."""

import os

os.environ.setdefault("LEPTON_DEBUG", "1")
