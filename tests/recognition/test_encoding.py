# SPDX-License-Identifier: Apache-2.0
"""The encoder API of recognition modules (:mod:`pyro_rpm.recognition.encoding`).

``encode`` in batches equals the one-shot eval-mode factors; ``transform`` returns each family's
embedding, checked against a float64 computation from the raw network output written here (the
Gaussian mean in both parameterisations, the Delta point, the von Mises-Fisher mean direction, the
categorical softmax); ``save``/``load`` round-trip the weights through a ``weights_only`` file and
refuse a file of another architecture; nothing touches Pyro's parameter store.
"""

from __future__ import annotations

import pyro
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import pyro_rpm
from pyro_rpm.recognition import (
    CategoricalRecognition,
    DeltaRecognition,
    GaussianRecognition,
    VonMisesFisherRecognition,
    load_recognition,
    save_recognition,
)

IN = 5


def _net(out: int, hidden: int = 8, dropout: float = 0.0) -> nn.Module:
    torch.manual_seed(out + hidden)
    return nn.Sequential(nn.Linear(IN, hidden), nn.Tanh(), nn.Dropout(dropout), nn.Linear(hidden, out))


def _raw(rec, x):
    """The network output in eval mode, float64 (the reference's input)."""
    rec.eval()
    with torch.no_grad():
        out = rec.net(x).double()
    rec.train()
    return out


def _gaussian_mean(rec, out):
    D = rec.latent_dim
    if not rec.natural:
        return out[:, :D]
    precision = rec.prior_precision.double() + F.softplus(out[:, D:]) + rec.min_scale
    return (rec.prior_eta1.double() + out[:, :D]) / precision


FAMILIES = {
    "gaussian": (lambda: GaussianRecognition(_net(4), 2), _gaussian_mean),
    "gaussian_natural": (lambda: GaussianRecognition(_net(4), 2, prior_scale=0.7, prior_loc=0.3), _gaussian_mean),
    "delta": (lambda: DeltaRecognition(_net(3), 3, eps=0.1), lambda rec, out: out),
    "von_mises_fisher": (
        lambda: VonMisesFisherRecognition(_net(3), 3, concentration=4.0),
        lambda rec, out: out / out.norm(dim=-1, keepdim=True),
    ),
    "categorical": (lambda: CategoricalRecognition(_net(4), 4), lambda rec, out: out.softmax(-1)),
}


@pytest.fixture(autouse=True)
def _clean_store():
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_transform_is_the_family_embedding_from_the_network_output(family):
    build, reference = FAMILIES[family]
    rec = build()
    x = torch.randn(37, IN, generator=torch.Generator().manual_seed(1))
    got = rec.transform(x, batch_size=10)
    expected = reference(rec, _raw(rec, x))
    assert got.shape == expected.shape and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-6)
    assert not got.requires_grad
    assert len(pyro.get_param_store()) == 0  # the encoder API does not register with Pyro


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_encode_in_batches_equals_one_shot(family):
    rec = FAMILIES[family][0]()
    x = torch.randn(53, IN, generator=torch.Generator().manual_seed(2))
    chunked = rec.encode(x, batch_size=8)
    whole = rec.encode(x, batch_size=1000)
    rec.eval()
    with torch.no_grad():
        direct = rec.head(rec.net(x))
    assert chunked.batch_shape == whole.batch_shape == (53,)
    assert type(chunked) is type(direct)
    for a, b, c in zip(chunked.tensors(), whole.tensors(), direct.tensors()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(b, c, rtol=0, atol=0)


def test_encode_runs_in_eval_mode_and_restores_the_mode():
    rec = GaussianRecognition(_net(4, dropout=0.5), 2)
    x = torch.randn(20, IN)
    assert rec.training
    a, b = rec.transform(x, batch_size=7), rec.transform(x)
    torch.testing.assert_close(a, b)  # dropout off: deterministic
    assert rec.training and rec.net[2].training
    rec.eval()
    assert not rec.transform(x).requires_grad and not rec.training


def test_encode_moves_chunks_to_the_module_device_and_checks_inputs():
    rec = GaussianRecognition(_net(4), 2, name="enc")
    x = torch.randn(6, IN)
    assert rec.encode(x, device="cpu").device == torch.device("cpu")
    with pytest.raises(TypeError, match="inputs to recognition 'enc' must be"):
        rec.encode(x.tolist())
    with pytest.raises(ValueError, match="batch_size must be a positive int, got 0"):
        rec.encode(x, batch_size=0)
    with pytest.raises(ValueError, match=r"must have shape \(N, ...\) with N >= 1"):
        rec.encode(x[:0])
    bad = x.clone()
    bad[4, 1] = float("nan")
    with pytest.raises(ValueError, match="inputs to recognition 'enc'"):
        rec.encode(bad, batch_size=2)
    with pytest.raises(ValueError, match="device must name a torch device"):
        rec.encode(x, device="nowhere")
    assert len(pyro.get_param_store()) == 0


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_save_and_load_round_trip_through_a_weights_only_file(family, tmp_path):
    build = FAMILIES[family][0]
    rec = build()
    with torch.no_grad():
        for p in rec.parameters():
            p.add_(torch.randn_like(p))
    x = torch.randn(11, IN)
    path = tmp_path / "rec.pt"
    rec.save(path)
    raw = torch.load(path, weights_only=True)  # the file is weights-only loadable
    assert raw["format"] == pyro_rpm.recognition.encoding.FORMAT and raw["output_size"] == rec.output_size
    fresh = build()  # same architecture, the untrained weights
    assert not torch.equal(fresh.transform(x), rec.transform(x))
    assert fresh.load(path) is fresh
    for (k1, v1), (k2, v2) in zip(rec.state_dict().items(), fresh.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2)
    torch.testing.assert_close(fresh.transform(x), rec.transform(x), rtol=0, atol=0)
    assert len(pyro.get_param_store()) == 0


def test_load_writes_in_place_so_the_param_store_sees_the_weights(tmp_path):
    rec = GaussianRecognition(_net(4), 2, name="shared")
    rec(torch.randn(3, IN))  # registers the parameters with Pyro (the store holds the same tensors)
    trained = GaussianRecognition(_net(4), 2, name="other")
    with torch.no_grad():
        for p in trained.parameters():
            p.fill_(0.25)
    save_recognition(trained, tmp_path / "w.pt")
    assert load_recognition(rec, tmp_path / "w.pt") is rec
    assert torch.all(pyro.param("shared$$$net.0.weight") == 0.25)


def test_loading_another_architecture_is_refused_with_the_difference(tmp_path):
    path = tmp_path / "g.pt"
    GaussianRecognition(_net(4, hidden=8), 2).save(path)
    wider = GaussianRecognition(_net(4, hidden=16), 2)
    before = {k: v.clone() for k, v in wider.state_dict().items()}
    with pytest.raises(ValueError, match=r"another architecture .*net\.0\.weight is \[8, 5\] in the file but \[16, 5\]"):
        wider.load(path)
    assert all(torch.equal(before[k], v) for k, v in wider.state_dict().items())  # untouched
    with pytest.raises(ValueError, match="holds a pyro_rpm.recognition.gaussian.GaussianRecognition, not a "):
        DeltaRecognition(_net(4, hidden=8), 4).load(path)
    with pytest.raises(ValueError, match="output_size 4, but recognition"):
        GaussianRecognition(_net(2, hidden=8), 2, shared_scale=True).load(path)
    with pytest.raises(ValueError, match=r"missing from the file: \['prior_eta1', 'prior_precision'\]"):
        GaussianRecognition(_net(4, hidden=8), 2, prior_scale=1.0).load(path)
    same = GaussianRecognition(_net(4, hidden=8), 2)
    saved = torch.load(path, weights_only=True)
    saved["state_dict"]["net.3.bias"][1] = float("inf")
    torch.save(saved, tmp_path / "inf.pt")
    kept = {k: v.clone() for k, v in same.state_dict().items()}
    with pytest.raises(ValueError, match="non-finite values in 'net.3.bias'; the module is unchanged"):
        same.load(tmp_path / "inf.pt")
    assert all(torch.equal(kept[k], v) for k, v in same.state_dict().items())
    torch.save({"weights": torch.ones(2)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="is not a pyro_rpm recognition file"):
        wider.load(tmp_path / "other.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="is not a pyro_rpm recognition file"):
        wider.load(tmp_path / "junk.pt")
    with pytest.raises(TypeError, match="path must be a file path"):
        wider.save(3)
    with pytest.raises(TypeError, match="recognition must be a pyro_rpm Recognition"):
        save_recognition(nn.Linear(2, 2), path)
    assert len(pyro.get_param_store()) == 0
