"""Compiled artifacts: a folder with the library, the optimized model, a verification bundle and
`manifest.json` (format `lepton-artifact/1`, see DESIGN.md §5).

Invariants:
- `manifest.json["files"]` maps the relative POSIX path of every other file in the folder to its
  sha256; the folder holds no symbolic links.
- `load()` checks every hash and the device before anything loads the artifact's native code.
- Nothing here writes outside the artifact folder.
"""

from __future__ import annotations

import datetime
import hashlib
import importlib.metadata
import itertools
import json
import os
import platform
import re
import stat
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING, Any

import numpy as np

import lepton.version
from lepton.cuda_kernels import register_prebuilt
from lepton.errors import ArtifactError, TamperedArtifactError, WrongDeviceError
from lepton.module import CompiledModule
from lepton.verify import Case, VerifyReport, check_cases
from lepton.verify.policy import POLICIES, Policy
from lepton_ir.errors import InternalError
from targets import host

if TYPE_CHECKING:
    import onnx

FORMAT = "lepton-artifact/1"
MANIFEST = "manifest.json"
VERIFY_INPUTS = "verify/inputs.npz"
VERIFY_EXPECTED = "verify/expected.npz"
LIBRARY_FORMATS = ("shared-library", "tar")
NATIVE_SUFFIXES = (".so", ".tar", ".dylib", ".o", ".a", ".dll")
MAX_MANIFEST_BYTES = 64 << 20
_CHUNK = 1 << 20
_SHA256 = re.compile(r"[0-9a-f]{64}")
_VERSIONED_SO = re.compile(r"\.so(\.\d+)+$")
_TOOLS = {"tvm": "apache-tvm", "apache-tvm-ffi": "apache-tvm-ffi", "onnx": "onnx",
          "onnxruntime": "onnxruntime", "numpy": "numpy"}

Dim = int | str | None


# --- signature ---


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output: ONNX name, numpy dtype name, and dims (int, symbol name, or None =
    unknown); `shape` is None when even the rank is unknown."""

    name: str
    dtype: str
    shape: tuple[Dim, ...] | None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": None if self.shape is None else list(self.shape)}

    @classmethod
    def from_json(cls, data: Any) -> TensorSpec:
        """Parse `to_json()` output; ValueError when malformed."""
        if not isinstance(data, dict) or not isinstance(data.get("name"), str) or not isinstance(data.get("dtype"), str):
            raise ValueError(f"tensor spec must have string 'name' and 'dtype': {data!r:.200}")
        shape = data.get("shape")
        if shape is None:
            return cls(data["name"], data["dtype"], None)
        if not isinstance(shape, list) or not all(d is None or isinstance(d, str) or _is_dim(d) for d in shape):
            raise ValueError(f"tensor {data['name']!r}: 'shape' must be null or a list of ints >= 0, strings or null")
        return cls(data["name"], data["dtype"], tuple(shape))

    def __str__(self) -> str:
        dims = "..." if self.shape is None else ",".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name}: {self.dtype}[{dims}]"


@dataclass(frozen=True)
class Signature:
    """The module's inputs (in call order) and outputs (in result order)."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    def to_json(self) -> dict[str, Any]:
        return {"inputs": [t.to_json() for t in self.inputs], "outputs": [t.to_json() for t in self.outputs]}

    @classmethod
    def from_json(cls, data: Any) -> Signature:
        """Parse `to_json()` output; ValueError when malformed or names repeat."""
        if not isinstance(data, dict) or not isinstance(data.get("inputs"), list) or not isinstance(data.get("outputs"), list):
            raise ValueError("signature must have 'inputs' and 'outputs' lists")
        sig = cls(tuple(map(TensorSpec.from_json, data["inputs"])), tuple(map(TensorSpec.from_json, data["outputs"])))
        for specs in (sig.inputs, sig.outputs):
            names = [t.name for t in specs]
            if len(set(names)) != len(names):
                raise ValueError(f"signature names repeat: {names}")
        return sig


def signature_from_onnx(model: onnx.ModelProto) -> Signature:
    """The graph's inputs (initializers excluded) and outputs as a Signature."""
    from onnx import helper

    graph = model.graph
    inits = {t.name for t in graph.initializer}

    def spec(vi: onnx.ValueInfoProto) -> TensorSpec:
        tt = vi.type.tensor_type
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type)).name
        dims = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value >= 0 else (None if d.dim_param in ("", "?") else d.dim_param)
                     for d in tt.shape.dim)  # dim_value -1 and dim_param "?" (paddle2onnx) are unknown dims
        return TensorSpec(vi.name, dtype, dims)

    return Signature(tuple(spec(v) for v in graph.input if v.name not in inits), tuple(map(spec, graph.output)))


def _is_dim(d: Any) -> bool:
    return isinstance(d, int) and not isinstance(d, bool) and d >= 0


# --- manifest ---


@dataclass(frozen=True)
class Manifest:
    """A parsed, validated `manifest.json`. `data` is the raw dict; the accessors are typed views of it."""

    path: Path
    data: dict[str, Any]

    @property
    def target(self) -> dict[str, Any]:
        return self.data["target"]

    @property
    def library(self) -> str:
        return self.data["library"]

    @property
    def library_format(self) -> str:
        return self.data["library_format"]

    @property
    def signature(self) -> Signature:
        return Signature.from_json(self.data["signature"])

    @property
    def files(self) -> dict[str, str]:
        return self.data["files"]

    @property
    def tolerance(self) -> tuple[float, float]:
        """(rtol, atol)."""
        return float(self.data["tolerance"]["rtol"]), float(self.data["tolerance"]["atol"])

    @property
    def policy(self) -> Policy:
        """The verification policy (manifests without a policy name are fp32 with their rtol/atol)."""
        return Policy.from_json(self.data["tolerance"])

    @property
    def verify(self) -> dict[str, Any]:
        return self.data["verify"]

    @property
    def source_sha256(self) -> str:
        return self.data["source_model"]["sha256"]

    @property
    def tools(self) -> dict[str, str]:
        return self.data["tools"]

    @property
    def passes(self) -> list[Any]:
        return self.data["passes"]

    @property
    def notes(self) -> list[str]:
        return self.data["notes"]


def read_manifest(artifact_dir: str | os.PathLike[str]) -> Manifest:
    """Read and validate `<artifact_dir>/manifest.json`; ArtifactError saying what is wrong."""
    root = Path(artifact_dir)
    path = root / MANIFEST
    if not root.is_dir():
        raise ArtifactError(f"{root} is not an artifact folder (no such directory)")
    try:
        st = path.lstat()
    except FileNotFoundError:
        raise ArtifactError(f"{root} is not a Lepton artifact: {MANIFEST} is missing") from None
    if not stat.S_ISREG(st.st_mode):
        raise TamperedArtifactError(f"{path} is not a regular file (a link or a special file)")
    if st.st_size > MAX_MANIFEST_BYTES:
        raise ArtifactError(f"{path} is {st.st_size} bytes, over the {MAX_MANIFEST_BYTES} byte limit")
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArtifactError(f"{path} is not valid JSON: {e}") from None
    _validate(path, data)
    return Manifest(root, data)


def _validate(path: Path, data: Any) -> None:
    """Check the manifest's structure so that `Manifest`'s accessors cannot fail."""
    if not isinstance(data, dict):
        raise ArtifactError(f"{path}: the top level must be a JSON object")
    if data.get("format") != FORMAT:
        raise ArtifactError(f"{path}: format is {data.get('format')!r}, expected {FORMAT!r}; "
                            "rebuild the artifact with this version of Lepton")
    problems = _manifest_problems(data)
    if problems:
        raise ArtifactError(f"{path} is invalid: " + "; ".join(problems))


def _manifest_problems(data: dict[str, Any]) -> list[str]:
    kinds = {"target": dict, "library": str, "library_format": str, "signature": dict, "files": dict,
             "tolerance": dict, "verify": dict, "source_model": dict, "tools": dict, "passes": list, "notes": list}
    problems = [f"'{k}' must be a {t.__name__}" for k, t in kinds.items() if not isinstance(data.get(k), t)]
    if problems:
        return problems
    try:
        sig = Signature.from_json(data["signature"])
    except ValueError as e:
        return [f"signature: {e}"]
    if not all(isinstance(k, str) and isinstance(v, str) and _SHA256.fullmatch(v) for k, v in data["files"].items()):
        problems.append("'files' must map paths to lowercase sha256 hex digests")
    if not isinstance(data["target"].get("kind"), str) or not isinstance(data["target"].get("device", "cpu"), str):
        problems.append("'target' needs string 'kind' and 'device'")
    if data["library_format"] not in LIBRARY_FORMATS:
        problems.append(f"'library_format' must be one of {LIBRARY_FORMATS}")
    tol = data["tolerance"]
    if not all(isinstance(tol.get(k), int | float) and not isinstance(tol.get(k), bool) and tol[k] >= 0 for k in ("rtol", "atol")):
        problems.append("'tolerance' needs numbers 'rtol' and 'atol' >= 0")
    if not isinstance(tol.get("policy", "fp32"), str) or tol.get("policy", "fp32") not in POLICIES:
        problems.append(f"'tolerance.policy' must be one of {', '.join(POLICIES)}")
    if not all(tol.get(k) is None or isinstance(tol[k], int | float) and not isinstance(tol[k], bool) and 0 <= tol[k] <= 1
               for k in ("min_cosine", "min_top1")):
        problems.append("'tolerance' 'min_cosine' and 'min_top1' must be numbers in [0, 1]")
    if not isinstance(data["source_model"].get("sha256"), str):
        problems.append("'source_model' needs a string 'sha256'")
    problems += _verify_problems(data["verify"], sig)
    listed = [data["library"]] + [data["verify"].get(k) for k in ("inputs", "expected")]
    problems += [f"{p!r} is not listed in 'files'" for p in listed if isinstance(p, str) and p not in data["files"]]
    return problems


def _verify_problems(verify: dict[str, Any], sig: Signature) -> list[str]:
    """The bundle must feed every signature input and name only signature outputs."""
    ok = (isinstance(verify.get("inputs"), str) and isinstance(verify.get("expected"), str)
          and all(isinstance(verify.get(k), list) and all(isinstance(n, str) for n in verify[k])
                  for k in ("input_names", "output_names")))
    if not ok:
        return ["'verify' needs 'inputs', 'expected' paths and 'input_names', 'output_names' string lists"]
    if sorted(verify["input_names"]) != sorted(t.name for t in sig.inputs):
        return [f"verify input_names {verify['input_names']} differ from the signature's inputs"]
    if not set(verify["output_names"]) <= {t.name for t in sig.outputs} or len(set(verify["output_names"])) != len(verify["output_names"]):
        return [f"verify output_names {verify['output_names']} are not distinct signature outputs"]
    return []


# --- files and hashes ---


def sha256_file(path: str | os.PathLike[str]) -> str:
    """sha256 hex digest of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def list_files(root: Path) -> Iterator[str]:
    """Relative POSIX paths of every regular file under `root` except the top-level manifest.

    Raises TamperedArtifactError on a symbolic link or special file anywhere in the folder.
    """
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        for name in sorted(dirnames) + sorted(filenames):
            p = here / name
            mode = p.lstat().st_mode
            if stat.S_ISLNK(mode) or not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
                raise TamperedArtifactError(f"{p} is a symbolic link or special file; artifacts hold only plain files")
        for name in sorted(filenames):
            rel = (here / name).relative_to(root).as_posix()
            if rel != MANIFEST:
                yield rel


def check_files(artifact_dir: str | os.PathLike[str], manifest: Manifest) -> None:
    """Every listed file exists inside the folder as a plain file with the listed sha256, and no
    unlisted native code (`.so`, `.tar`, ...) is present. TamperedArtifactError / ArtifactError otherwise."""
    root = Path(artifact_dir)
    present = set(list_files(root))
    for rel, expected in manifest.files.items():
        path = listed_path(root, rel)
        if rel not in present:
            raise ArtifactError(f"artifact {root}: {rel} is listed in the manifest but missing")
        actual = sha256_file(path)
        if actual != expected:
            raise TamperedArtifactError(
                f"artifact {root}: {rel} was modified after it was built (sha256 {actual[:16]}..., "
                f"manifest says {expected[:16]}...); refusing to load it. Rebuild the artifact.")
    unlisted = sorted(p for p in present - manifest.files.keys() if _is_native(p))
    if unlisted:
        raise TamperedArtifactError(f"artifact {root} holds native code the manifest does not list: {', '.join(unlisted)}")


def listed_path(root: Path, rel: str) -> Path:
    """`root/rel` for a manifest path: relative, POSIX, no `..`; TamperedArtifactError otherwise."""
    p = PurePosixPath(rel)
    if not rel or p.is_absolute() or ".." in p.parts or "\\" in rel or rel == MANIFEST:
        raise TamperedArtifactError(f"artifact {root}: the manifest lists an unsafe path {rel!r}")
    return root.joinpath(*p.parts)


def _is_native(rel: str) -> bool:
    """By name: `x.so`, `x.so.1`, `x.tar`, `x.o`, ..."""
    return PurePosixPath(rel).suffix in NATIVE_SUFFIXES or _VERSIONED_SO.search(rel) is not None


def _atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write a new file at `path` via a fresh temp file in the same folder (never follows a link)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --- writing ---


def tool_versions() -> dict[str, str]:
    """Installed versions of the tools an artifact depends on (and Python's)."""
    versions = {}
    for key, dist in _TOOLS.items():
        try:
            versions[key] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[key] = "not installed"
    versions["python"] = platform.python_version()
    return versions


def lepton_version() -> str:
    return lepton.version.__version__


def write_artifact(
    out_dir: str | os.PathLike[str],
    *,
    library: str,
    library_format: str,
    target: Any,
    source_sha256: str,
    source_name: str,
    signature: Signature,
    passes: list[dict[str, Any]],
    verify_inputs: Mapping[str, np.ndarray],
    verify_expected: Mapping[str, np.ndarray],
    tolerance: Policy | Mapping[str, Any],
    notes: Sequence[str] = (),
) -> Manifest:
    """Write verify/ and manifest.json into `out_dir`, which already holds the library (and the
    optimized model). `target` is a `targets.Target` (anything with `to_dict()`); `tolerance` a
    Policy or its JSON form (`{"rtol", "atol"}` alone means fp32 with those numbers).

    `verify_inputs` must name every signature input; `verify_expected` only signature outputs.
    """
    root = Path(out_dir)
    _check_write_args(root, library, library_format, signature, verify_inputs, verify_expected)
    verify_dir = root / "verify"
    verify_dir.mkdir(exist_ok=True)
    if verify_dir.is_symlink():
        raise ArtifactError(f"{verify_dir} is a symbolic link; refusing to write through it")
    in_names, out_names = list(verify_inputs), list(verify_expected)
    _write_npz(root / VERIFY_INPUTS, "i", [verify_inputs[n] for n in in_names])
    _write_npz(root / VERIFY_EXPECTED, "o", [verify_expected[n] for n in out_names])
    data = {
        "format": FORMAT,
        "lepton_version": lepton_version(),
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "source_model": {"sha256": source_sha256, "name": source_name},
        "target": target.to_dict(),
        "library": library,
        "library_format": library_format,
        "signature": signature.to_json(),
        "passes": passes,
        "tools": tool_versions(),
        "tolerance": (tolerance if isinstance(tolerance, Policy) else Policy.from_json(tolerance)).to_json(),
        "verify": {"inputs": VERIFY_INPUTS, "expected": VERIFY_EXPECTED, "input_names": in_names, "output_names": out_names},
        "notes": list(notes),
        "files": {rel: sha256_file(root / rel) for rel in list_files(root)},
    }
    _validate(root / MANIFEST, data)
    text = json.dumps(data, indent=2).encode("utf-8")
    _atomic_write(root / MANIFEST, lambda f: f.write(text))
    return Manifest(root, data)


def _check_write_args(root: Path, library: str, library_format: str, signature: Signature,
                      verify_inputs: Mapping[str, np.ndarray], verify_expected: Mapping[str, np.ndarray]) -> None:
    """Caller contract of write_artifact; a breach is a bug in Lepton (InternalError)."""
    if not root.is_dir():
        raise InternalError(f"write_artifact: {root} is not a directory")
    if library_format not in LIBRARY_FORMATS:
        raise InternalError(f"write_artifact: library_format {library_format!r} not in {LIBRARY_FORMATS}")
    lib = listed_path(root, library)
    if lib.is_symlink() or not lib.is_file():
        raise InternalError(f"write_artifact: library {library!r} is not a plain file in {root}")
    if set(verify_inputs) != {t.name for t in signature.inputs}:
        raise InternalError(f"write_artifact: verify inputs {sorted(verify_inputs)} != signature inputs")
    if not set(verify_expected) <= {t.name for t in signature.outputs}:
        raise InternalError(f"write_artifact: verify outputs {sorted(verify_expected)} not in the signature")
    for name, arr in {**verify_inputs, **verify_expected}.items():
        if not isinstance(arr, np.ndarray) or arr.dtype.hasobject:
            raise InternalError(f"write_artifact: verify tensor {name!r} must be a numeric numpy array")


def _write_npz(path: Path, prefix: str, arrays: list[np.ndarray]) -> None:
    """Arrays under keys `<prefix>0, <prefix>1, ...` (any ONNX name works: names live in the manifest)."""
    _atomic_write(path, lambda f: np.savez(f, **{f"{prefix}{i}": a for i, a in enumerate(arrays)}))


def read_verify_bundle(manifest: Manifest) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(inputs, expected outputs) by ONNX name. Call after `check_files`."""
    v = manifest.verify
    return (_read_npz(manifest.path / v["inputs"], "i", v["input_names"]),
            _read_npz(manifest.path / v["expected"], "o", v["output_names"]))


def _read_npz(path: Path, prefix: str, names: list[str]) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {n: npz[f"{prefix}{i}"] for i, n in enumerate(names)}
    except (OSError, ValueError, KeyError) as e:
        raise ArtifactError(f"{path} does not hold the verification tensors the manifest names: {e}") from None


# --- loading ---


def load(artifact_dir: str | os.PathLike[str], device_id: int = 0) -> CompiledModule:
    """Load an artifact for running: manifest, every file hash, then the device, then the library.

    TamperedArtifactError, WrongDeviceError or ArtifactError before any native code is loaded.
    """
    import tvm

    manifest = read_manifest(artifact_dir)
    check_files(manifest.path, manifest)
    dev = check_device(manifest, device_id)
    if manifest.library_format == "tar":
        raise ArtifactError(
            f"artifact {manifest.path}: {manifest.library} is a tar of object files (built without a cross linker); "
            "link it into a shared library on the device, or rebuild with the cross linker installed "
            "(Debian: gcc-aarch64-linux-gnu)")
    _use_prebuilt_cuda_kernels(manifest)
    lib = tvm.runtime.load_module(str(manifest.path / manifest.library))
    vm = tvm.relax.VirtualMachine(lib, dev)
    return CompiledModule(vm, manifest.signature, dev, manifest)


def _use_prebuilt_cuda_kernels(manifest: Manifest) -> None:
    """CUDA artifacts carry nvcc-compiled kernels (model.fatbin from model.cu); TVM gets those, not a JIT compile."""
    files = manifest.files
    if "model.fatbin" in files and "model.cu" in files:
        source = (manifest.path / "model.cu").read_text()
        register_prebuilt(source, (manifest.path / "model.fatbin").read_bytes())


def check_device(manifest: Manifest, device_id: int = 0) -> Any:
    """The TVM device to run the artifact on; WrongDeviceError naming the target and this machine."""
    import tvm

    t = manifest.target
    kind, device = t["kind"], t.get("device", "cpu")
    if kind in ("x86", "arm"):
        problem = _cpu_problem(kind, [str(f) for f in t.get("features", [])])
        dev = tvm.cpu(device_id)
    elif kind in ("cuda", "opencl"):
        dev = tvm.cuda(device_id) if kind == "cuda" else tvm.opencl(device_id)
        problem = None if dev.exist else f"this machine has no {'CUDA' if kind == 'cuda' else 'OpenCL'} device {device_id} usable by TVM"
        problem = problem or (_cuda_arch_problem(dev, t) if kind == "cuda" else None)
    else:
        problem = f"Lepton does not know how to run target kind {kind!r}"
    if problem:
        feats = ", ".join(map(str, t.get("features", []))) or "none"
        raise WrongDeviceError(
            f"artifact {manifest.path} was built for target {t.get('name', '?')!r} (kind {kind}, device {device}, "
            f"features {feats}), but {problem}. Run it on a matching machine, or compile for this one "
            "(target 'auto').")
    return dev


_ARCH = {"x86": ("x86_64", "AMD64"), "arm": ("aarch64", "arm64")}


def _cpu_problem(kind: str, features: list[str]) -> str | None:
    machine = platform.machine()
    if machine not in _ARCH[kind]:
        return f"this machine is {machine or 'unknown'} (needs {' or '.join(_ARCH[kind])})"
    missing = [f for f in features if not host.has_features([f.lstrip("+")])]
    return f"this {machine} CPU lacks the features {', '.join(missing)}" if missing else None


def _cuda_arch_problem(dev: Any, target: dict[str, Any]) -> str | None:
    want = str(target.get("tvm", {}).get("arch", ""))
    m = re.fullmatch(r"sm_(\d+)", want)
    major, _, minor = str(dev.compute_version).partition(".")
    have = int(major) * 10 + int(minor or 0)
    if m and int(m.group(1)) > have:
        return f"CUDA device {dev.index} is sm_{have}, older than {want}"
    return None


# --- verification ---


def verify_artifact(artifact_dir: str | os.PathLike[str], device_id: int = 0) -> VerifyReport:
    """Load the artifact, run it on verify/inputs and compare with verify/expected under the manifest's policy."""
    return verify_module(load(artifact_dir, device_id))


def verify_module(module: CompiledModule, more: Iterable[Case] = ()) -> VerifyReport:
    """`verify_artifact` for a module already loaded (its files were checked when it was loaded): the bundle,
    then the (inputs, expected outputs) cases in `more`, judged together under the manifest's policy."""
    bundle = read_verify_bundle(module.manifest)
    return check_cases(module, itertools.chain([bundle], more), module.manifest.policy)
