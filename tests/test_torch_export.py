"""`export_torch`: torch modules to self-contained ONNX that onnxruntime runs like torch does."""

from __future__ import annotations

import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

import lepton_ir  # noqa: E402
from lepton.torch_export import TorchExportError, export_torch  # noqa: E402


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        )
        self.dropout = nn.Dropout(0.5)
        self.fc = nn.Linear(16, 10)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(torch.flatten(self.features(image), 1)))


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(12, 32), nn.GELU(), nn.Linear(32, 4))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.net(x)
        return h, h.softmax(-1) + y


class Scaled(nn.Module):
    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, scale: torch.Tensor | None = None):
        out = x if mask is None else x * mask
        return out if scale is None else out * scale


class Eigen(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.linalg.eigh(x)[0]


def _ort(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def _trained_stats(m: SmallCNN) -> SmallCNN:
    """Non-trivial BatchNorm running statistics, so eval mode differs from train mode."""
    m.train()
    with torch.no_grad():
        for _ in range(3):
            m(torch.randn(4, 3, 16, 16) * 2 + 0.5)
    return m


def test_cnn_matches_torch_and_restores_train_mode() -> None:
    torch.manual_seed(0)
    m = _trained_stats(SmallCNN())
    m.dropout.eval()  # a mixed state must come back exactly
    x = torch.randn(2, 3, 16, 16)
    model = export_torch(m, x)
    assert m.training and not m.dropout.training and m.features[1].training
    assert [i.name for i in model.graph.input] == ["image"]
    assert [o.name for o in model.graph.output] == ["output_0"]
    assert {o.domain: o.version for o in model.opset_import}[""] == 17
    onnx.checker.check_model(model, full_check=True)
    m.eval()
    with torch.no_grad():
        want = m(x).numpy()
    (got,) = _ort(model, {"image": x.numpy()})
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    g = lepton_ir.load(model)
    assert {n.op_type for n in g} >= {"Conv", "Relu", "MaxPool", "Gemm"}


def test_mlp_two_outputs_names_and_dynamic_batch() -> None:
    torch.manual_seed(1)
    m = MLP()
    x, y = torch.randn(3, 12), torch.randn(3, 4)
    model = export_torch(m, (x, y), output_names=["logits", "probs"], dynamic_batch=True, opset=18)
    assert [i.name for i in model.graph.input] == ["x", "y"]
    assert [o.name for o in model.graph.output] == ["logits", "probs"]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert {o.domain: o.version for o in model.opset_import}[""] == 18
    assert m.training
    x5, y5 = torch.randn(5, 12), torch.randn(5, 4)  # another batch size than traced
    with torch.no_grad():
        want = [t.numpy() for t in m(x5, y5)]
    got = _ort(model, {"x": x5.numpy(), "y": y5.numpy()})
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)
    graph = lepton_ir.load(model)
    assert [v.shape for v in graph.inputs] == [("batch", 12), ("batch", 4)]


def test_dict_of_keyword_inputs() -> None:
    x, scale = torch.randn(2, 3), torch.randn(2, 3)
    model = export_torch(Scaled(), {"scale": scale, "x": x})  # out of signature order, mask left out
    assert [i.name for i in model.graph.input] == ["x", "scale"]
    (got,) = _ort(model, {"x": x.numpy(), "scale": scale.numpy()})
    np.testing.assert_allclose(got, (x * scale).numpy(), rtol=1e-6)
    assert lepton_ir.load(model).inputs[1].name == "scale"


def test_input_names_given_and_default_for_varargs() -> None:
    class VarArgs(nn.Module):
        def forward(self, *xs: torch.Tensor) -> torch.Tensor:
            return xs[0] + xs[1]

    a, b = torch.ones(2), torch.ones(2)
    assert [i.name for i in export_torch(VarArgs(), [a, b]).graph.input] == ["input_0", "input_1"]
    given = export_torch(VarArgs(), (a, b), input_names=["p", "q"])
    assert [i.name for i in given.graph.input] == ["p", "q"]


def test_missing_example_inputs() -> None:
    with pytest.raises(TorchExportError, match=r"example_inputs= is required for a torch module \(MLP\)"):
        export_torch(MLP(), None)


def test_bad_example_inputs() -> None:
    with pytest.raises(TorchExportError, match="must be a tensor.*got int"):
        export_torch(MLP(), (torch.ones(1, 12), 3))
    with pytest.raises(TorchExportError, match="has no parameter named 'z'"):
        export_torch(Scaled(), {"x": torch.ones(2), "z": torch.ones(2)})
    with pytest.raises(TorchExportError, match="expects a torch.nn.Module"):
        export_torch(lambda x: x, torch.ones(2))  # type: ignore[arg-type]


def test_export_failure_names_module_and_error(capfd: pytest.CaptureFixture[str]) -> None:
    m = Eigen().train()
    with pytest.raises(TorchExportError) as info:
        export_torch(m, torch.eye(3))
    msg = str(info.value)
    assert "Eigen" in msg and "UnsupportedOperatorError" in msg and "aten::linalg_eigh" in msg
    assert m.training
    assert capfd.readouterr().out == ""  # the exporter's IR dump goes to stderr


def test_forward_failure_is_export_error() -> None:
    with pytest.raises(TorchExportError, match=r"MLP to ONNX: RuntimeError: .*shapes cannot be multiplied"):
        export_torch(MLP(), (torch.ones(2, 5), torch.ones(2, 4)))


def test_without_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(TorchExportError, match=r"pip install 'lepton-compiler\[torch\]'"):
        export_torch(object(), None)  # type: ignore[arg-type]


def test_deterministic() -> None:
    torch.manual_seed(2)
    m, x = MLP(), (torch.randn(1, 12), torch.randn(1, 4))
    assert export_torch(m, x).SerializeToString() == export_torch(m, x).SerializeToString()


def test_compile_takes_a_torch_module_with_example_inputs() -> None:
    import lepton

    net = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    x = torch.randn(3, 6)
    res = lepton.compile(net, "x86", example_inputs=(x,), use_cache=False)
    assert res.verify_report is not None and res.verify_report.ok
    (name,) = [s.name for s in res.manifest.signature.inputs]
    with torch.no_grad():
        want = net(x).numpy()
    np.testing.assert_allclose(next(iter(res.run({name: x.numpy()}).values())), want, rtol=1e-4, atol=1e-5)
