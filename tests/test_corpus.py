"""Models from the wild (`bench/corpus.py`): each compiles for x86 and matches onnxruntime, and builds for arm,
cuda and opencl. Quick entries run in `make test`; the rest are slow (`make test-all`)."""

from __future__ import annotations

import functools
import os
import shutil
import struct
import tarfile
from pathlib import Path

import onnx
import pytest

import lepton
from bench.corpus import BY_NAME, CORPUS, TARGETS, Unavailable

EM_AARCH64 = 183


@functools.cache
def _exported(name: str) -> bytes:
    return BY_NAME[name].model().SerializeToString()


def _model(name: str) -> bytes:
    """The entry's model (exported once per process), or a skip naming what is not installed."""
    try:
        return _exported(name)
    except Unavailable as e:
        pytest.skip(str(e))


def _marks(name: str, target: str | None = None) -> list[pytest.MarkDecorator]:
    entry = BY_NAME[name]
    marks = [] if entry.quick else [pytest.mark.slow]
    if target in entry.xfail:
        marks.append(pytest.mark.xfail(strict=True, reason=entry.xfail[target]))
    return marks


def _elf_machine(data: bytes) -> int:
    assert data[:4] == b"\x7fELF", "not an ELF file"
    return struct.unpack_from("<H", data, 18)[0]


@pytest.mark.parametrize("name", [pytest.param(e.name, marks=_marks(e.name)) for e in CORPUS])
def test_export_holds_what_the_entry_is_for(name: str) -> None:
    model = onnx.load_from_string(_model(name))
    ops = {n.op_type for n in model.graph.node}
    assert set(BY_NAME[name].expect_ops) <= ops, f"the export lost {set(BY_NAME[name].expect_ops) - ops}"
    (opset,) = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    assert 11 <= opset <= 21


@pytest.mark.parametrize(
    ("name", "target"),
    [pytest.param(e.name, t, marks=_marks(e.name, t), id=f"{e.name}-{t}") for e in CORPUS for t in TARGETS],
)
def test_corpus_model_compiles(name: str, target: str, tmp_path: Path) -> None:
    entry, model = BY_NAME[name], _model(name)
    if target == "cuda" and shutil.which("nvcc") is None:
        pytest.skip("nvcc (CUDA toolkit) is not on PATH")
    out = tmp_path / "out"
    if target == "x86":
        inputs = entry.inputs() if entry.inputs else None
        res = lepton.compile(model, "x86", input_shapes=entry.input_shapes, use_cache=False, output_dir=out,
                             verify_inputs=inputs)
        assert res.verify_report is not None and res.verify_report.ok, res.verify_report
        return
    res = lepton.compile(model, target, input_shapes=entry.input_shapes, use_cache=False, output_dir=out, verify=False)
    lib = os.path.join(res.path, res.manifest.library)
    assert os.path.getsize(lib) > 0
    if target == "arm":
        if res.manifest.library == "model.so":
            assert _elf_machine(Path(lib).read_bytes()) == EM_AARCH64
        else:  # no aarch64-linux-gnu-gcc here: the objects ship in a tar
            with tarfile.open(lib) as tar:
                objs = [m for m in tar.getmembers() if m.name.endswith(".o")]
                assert objs and _elf_machine(tar.extractfile(objs[0]).read()) == EM_AARCH64
    elif target == "cuda":
        assert "model.fatbin" in res.manifest.files
    else:
        assert "kernels/model.cl" in res.manifest.files
        assert any("compiled on this machine" in n or "not compiled here" in n for n in res.manifest.notes)


def test_quick_part_has_symbolic_and_minus_one_dims() -> None:
    """`make test` sees both ways exporters write dynamic dims: `dim_param` symbols, paddle2onnx's `dim_value: -1`."""
    dims = [d for e in CORPUS if e.quick for vi in onnx.load_from_string(_model(e.name)).graph.input
            for d in vi.type.tensor_type.shape.dim]
    assert any(d.HasField("dim_param") for d in dims)
    assert any(d.HasField("dim_value") and d.dim_value == -1 for d in dims)
