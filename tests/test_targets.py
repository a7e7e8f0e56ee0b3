"""Target descriptions: shipped TOMLs, host completion, user files, options, errors, the CLI."""

from __future__ import annotations

import dataclasses
import json
import os
import platform
from pathlib import Path

import numpy as np
import pytest
import tvm
import typer
from tvm.script import relax as R
from typer.testing import CliRunner

import targets
from lepton.cli_targets import targets_app
from targets import Target, TargetError, host, resolve

SHIPPED = ["arm", "arm-dotprod", "cuda", "opencl", "x86", "x86-avx2", "x86-avx512"]
TARGETS_DIR = Path(targets.__file__).parent
ARM_TOML = (TARGETS_DIR / "arm.toml").read_text()
ON_X86_LINUX = platform.machine() == "x86_64" and os.path.exists("/proc/cpuinfo")


def write(tmp_path: Path, text: str, name: str = "t.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def cpuinfo_flags() -> set[str]:
    with open("/proc/cpuinfo") as f:
        return next(set(line.split(":", 1)[1].split()) for line in f if line.startswith("flags"))


@tvm.script.ir_module
class AddModule:
    @R.function
    def main(x: R.Tensor((4, 16), "float32"), y: R.Tensor((4, 16), "float32")) -> R.Tensor((4, 16), "float32"):
        with R.dataflow():
            z = R.add(x, y)
            R.output(z)
        return z


def test_known_lists_the_shipped_files() -> None:
    assert targets.known() == SHIPPED


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_target_loads_and_builds(name: str) -> None:
    t = resolve(name)
    tvm_t = t.tvm_target()
    assert t.name == name and t.source == str(TARGETS_DIR / f"{name}.toml")
    assert tvm_t.kind.name == {"x86": "llvm", "arm": "llvm", "cuda": "cuda", "opencl": "opencl"}[t.kind]
    assert (tvm_t.host is not None) == (t.kind in ("cuda", "opencl")) == (t.host is not None)
    if t.host is not None:
        assert tvm_t.host.kind.name == "llvm"
    assert t.pipeline and t.layout in ("NCHW", "NHWC") and "float32" in t.dtypes


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_target_compiles_a_module(name: str, tmp_path: Path) -> None:
    t = resolve(name)
    mod = AddModule
    if t.device != "cpu":
        from tvm.s_tir import dlight

        with t.tvm_target():
            mod = dlight.ApplyDefaultSchedule(dlight.gpu.Fallback())(tvm.relax.transform.LegalizeOps()(mod))
    exe = tvm.compile(mod, target=t.tvm_target())
    if t.runs_here() and t.kind == "x86":
        exe.export_library(str(tmp_path / "m.so"))
        vm = tvm.relax.VirtualMachine(tvm.runtime.load_module(str(tmp_path / "m.so")), tvm.cpu())
        a = tvm.runtime.tensor(np.ones((4, 16), "float32"))
        np.testing.assert_array_equal(vm["main"](a, a).numpy(), np.full((4, 16), 2, "float32"))


@pytest.mark.skipif(not ON_X86_LINUX, reason="needs an x86-64 Linux host")
def test_x86_is_completed_from_this_host() -> None:
    from tvm.target import codegen

    t, flags = resolve("x86"), cpuinfo_flags()
    assert list(t.features) == [f for f in host.VOCABULARY["x86"] if f in flags]
    assert t.vector_lanes == (16 if "avx512f" in flags else 8 if "avx" in flags else 4)
    assert t.tvm["mcpu"] == codegen.llvm_get_system_cpu()
    assert t.tvm["num-cores"] == len(os.sched_getaffinity(0)) == t.options["num_cores"]
    level = "avx512" if "avx512f" in flags else "avx2" if {"avx2", "fma"} <= flags else None
    assert t.tuning_key == (f"x86-{level}-fp32" if level else "x86-fp32")
    assert t.runs_here()
    for name in ("x86-avx2", "x86-avx512"):
        variant = resolve(name)
        assert variant.runs_here() == (set(variant.features) <= flags)


@pytest.mark.skipif(not ON_X86_LINUX, reason="needs an x86-64 Linux host")
def test_auto_is_the_host_x86_without_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(host, "cuda_arch", lambda: None)
    t = resolve("auto")
    assert t.kind == "x86" and t.runs_here() and t == resolve("x86")
    assert resolve("auto", num_cores=1).tvm["num-cores"] == 1


def test_auto_prefers_a_usable_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(host, "cuda_arch", lambda: "sm_90")
    t = resolve("auto")
    assert t.kind == "cuda" and t.tvm["arch"] == "sm_90" and t.runs_here()
    assert not resolve("cuda{arch=sm_100}").runs_here()


def test_cpu_targets_on_an_arm_host(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = host.HostCPU("arm", frozenset({"neon", "fp16"}), "cortex-a72", 4)
    monkeypatch.setattr(host, "cpu", lambda: fake)
    assert resolve("arm").runs_here() and not resolve("arm-dotprod").runs_here()
    x86 = resolve("x86")  # completed with the x86 baseline, not the arm host
    assert (x86.features, x86.vector_lanes, x86.tvm["mcpu"], x86.tuning_key) == ((), 4, "x86-64", "x86-fp32")
    assert not x86.runs_here()


def test_runs_here_never_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_: object) -> None:
        raise RuntimeError("driver exploded")

    monkeypatch.setattr(tvm, "cuda", broken)
    monkeypatch.setattr(tvm, "opencl", broken)
    assert not resolve("cuda").runs_here() and not resolve("opencl").runs_here()


def test_variants_inherit_from_their_base() -> None:
    base, avx512, dot = resolve("x86"), resolve("x86-avx512"), resolve("arm-dotprod")
    for field in ("kind", "device", "layout", "dtypes", "pipeline", "export"):
        assert getattr(avx512, field) == getattr(base, field)
    assert avx512.tvm["mtriple"] == base.tvm["mtriple"] and avx512.tvm["mcpu"] == "skylake-avx512"
    assert avx512.vector_lanes == 16 and resolve("x86-avx2").vector_lanes == 8
    assert (avx512.vector_registers, resolve("x86-avx2").vector_registers, dot.vector_registers) == (32, 16, 32)
    assert dot.tvm["mattr"] == ("+neon", "+dotprod") and dot.tvm["mtriple"] == "aarch64-linux-gnu"
    assert dot.options == resolve("arm").options


def test_user_toml_file(tmp_path: Path) -> None:
    text = 'base = "x86-avx512"\nname = "mine"\ndescription = "d"\nlayout = "NHWC"\n[options]\nnum_cores = 3\n'
    path = write(tmp_path, text)
    for spec in (path, str(path), f"{path}{{num_cores=5}}"):
        t = resolve(spec)
        assert (t.name, t.layout, t.source, t.tvm["mcpu"]) == ("mine", "NHWC", str(path), "skylake-avx512")
    assert resolve(path).tvm["num-cores"] == 3 and resolve(f"{path}{{num_cores=5}}").tvm["num-cores"] == 5
    standalone = write(tmp_path, ARM_TOML, "arm.toml")
    assert resolve(standalone).key() == resolve("arm").key()  # the key ignores where the file lies


def test_options_from_braces_and_keywords() -> None:
    assert resolve("cuda{arch=sm_90}").tvm["arch"] == "sm_90" == str(resolve("cuda{arch=sm_90}").tvm_target().arch)
    assert resolve("cuda", arch="sm_86").options["arch"] == "sm_86"
    assert resolve("cuda").tvm["arch"] == "sm_80"
    assert resolve("x86{num-cores=3}").tvm["num-cores"] == 3 == resolve("x86", num_cores="3").tvm["num-cores"]
    assert resolve("x86{num_cores=3}", num_cores=2).tvm["num-cores"] == 2
    t = resolve("x86-avx2")
    assert resolve(t) is t


def test_to_dict_and_key() -> None:
    keys = set()
    for name in SHIPPED:
        t = resolve(name)
        data = json.loads(json.dumps(t.to_dict()))
        assert data["name"] == name and data["tvm"]["kind"] == t.tvm["kind"] and isinstance(data["features"], list)
        assert t.key() == resolve(name).key() and len(t.key()) == 64
        keys.add(t.key())
    keys.add(resolve("cuda{arch=sm_90}").key())
    assert len(keys) == len(SHIPPED) + 1


def test_target_is_immutable() -> None:
    t = resolve("arm")
    with pytest.raises(dataclasses.FrozenInstanceError):
        t.name = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        t.tvm["mcpu"] = "x"  # type: ignore[index]
    with pytest.raises(AttributeError):
        t.tvm["mattr"].append("+sve")
    with pytest.raises(AttributeError):
        t.features.append("sve")  # type: ignore[attr-defined]
    assert hash(t) == hash(resolve("arm")) and isinstance(t, Target)


def test_unknown_name_lists_known_targets() -> None:
    with pytest.raises(TargetError) as e:
        resolve("x86-avx")
    assert "did you mean 'x86-avx2'" in str(e.value) and all(n in str(e.value) for n in SHIPPED)
    assert e.value.exit_code == 2


@pytest.mark.parametrize(
    ("old", "new", "field"),
    [
        ('layout = "NHWC"', 'layout = "NCWH"', "'layout'"),
        ('layout = "NHWC"', "", "'layout' is missing"),
        ("vector_lanes = 4", 'vector_lanes = "four"', "'vector_lanes' should be an integer"),
        ('kind = "arm"', 'kind = "riscv"', "'kind'"),
        ('export = "cross-library"', 'export = "cuda"', "'export'"),
        ("eliminate-dead-code", "eliminate-dead-cod", "'pipeline'"),
        ('features = ["neon"]', 'features = ["neon", 3]', "'features'"),
        ('dtypes = ["float32"', 'dtypes = ["float31"', "'dtypes'"),
        ('name = "arm"', 'name = "arm"\ncolour = "red"', "'colour' is not a target field"),
        ("[options]", "[host]\nkind = 'llvm'\n[options]", "'host' is only for GPU kinds"),
        ('kind = "llvm"', 'kind = "cuda"', "'tvm' should have kind = 'llvm'"),
        ("[options]", "num-cores = 2\n[options]", "option 'num_cores' sets"),
        ("num_cores = 4", "threads = 4", "'options' declares 'threads'"),
    ],
)
def test_malformed_file_names_file_and_field(tmp_path: Path, old: str, new: str, field: str) -> None:
    assert old in ARM_TOML
    path = write(tmp_path, ARM_TOML.replace(old, new, 1))
    with pytest.raises(TargetError) as e:
        resolve(path)
    assert str(path) in str(e.value) and field in str(e.value)


def test_invalid_toml_syntax_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, 'name = "x"\nkind = \n')
    with pytest.raises(TargetError, match=r"invalid TOML.*line 2") as e:
        resolve(path)
    assert str(path) in str(e.value)


@pytest.mark.parametrize(
    ("line", "message"),
    [("bogus = 1", "not a valid TVM target"), ('mcpu = "pentium-9000"', "mcpu 'pentium-9000'")],
)
def test_bad_tvm_table_is_a_target_error(tmp_path: Path, line: str, message: str) -> None:
    path = write(tmp_path, ARM_TOML.replace('mtriple = "aarch64-linux-gnu"', f'mtriple = "aarch64-linux-gnu"\n{line}'))
    with pytest.raises(TargetError, match=message) as e:
        resolve(path)
    assert str(path) in str(e.value)


def test_missing_file_and_base_cycle(tmp_path: Path) -> None:
    with pytest.raises(TargetError, match="does not exist"):
        resolve(tmp_path / "nope.toml")
    write(tmp_path, 'base = "b.toml"\n', "a.toml")
    write(tmp_path, 'base = "a.toml"\n', "b.toml")
    with pytest.raises(TargetError, match="leads back"):
        resolve(tmp_path / "a.toml")


@pytest.mark.parametrize(
    ("spec", "options", "message"),
    [
        ("x86{threads=4}", {}, "no option 'threads'; options: num_cores"),
        ("opencl", {"arch": "sm_80"}, "no option 'arch'; options: none"),
        ("cuda{arch=80}", {}, "option arch='80': expected a CUDA arch like sm_80"),
        ("cuda", {"arch": "compute_90"}, "expected a CUDA arch"),
        ("x86{num_cores=0}", {}, "positive integer"),
        ("x86{num_cores}", {}, "should be key=value"),
    ],
)
def test_bad_options(spec: str, options: dict[str, str], message: str) -> None:
    with pytest.raises(TargetError, match=message):
        resolve(spec, **options)


def cli() -> typer.Typer:
    root = typer.Typer()
    root.add_typer(targets_app, name="targets")
    return root


def test_cli_lists_every_target() -> None:
    res = CliRunner().invoke(cli(), ["targets"])
    assert res.exit_code == 0, res.output
    assert all(name in res.stdout for name in SHIPPED)


def test_cli_show() -> None:
    res = CliRunner().invoke(cli(), ["targets", "show", "x86", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout) == resolve("x86").to_dict()
    res = CliRunner().invoke(cli(), ["targets", "show", "cuda{arch=sm_90}"])
    assert res.exit_code == 0, res.output
    assert '"arch":"sm_90"' in res.stdout and "\n  eliminate-dead-code\n" in res.stdout


def test_cli_show_unknown_exits_2() -> None:
    res = CliRunner().invoke(cli(), ["targets", "show", "nope"])
    assert res.exit_code == 2 and "error: unknown target 'nope'" in res.stderr
