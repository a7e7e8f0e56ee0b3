"""ONNX backend node-test conformance for Lepton (see suite.py, run_suite.py, expected_failures.toml)."""
