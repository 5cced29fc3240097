"""Evaluation: metrics against independent computations and toy distributions with known answers,
the classifier, the reference cache, the Inception loader's errors, and `ddpm evaluate` end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import scipy.linalg
import torch

from ddpm.cli import main
from ddpm.data.datasets import load_digits
from ddpm.errors import UserError
from ddpm.evaluation import metrics as M
from ddpm.evaluation.features import ClassifierExtractor, extract, make_extractor
from ddpm.evaluation.reference import cache_dir, cached_classifier, reference_stats
from ddpm.models.classifier import load_classifier, save_classifier
from ddpm.training.loop import train
from tests.conftest import tiny_config


@pytest.fixture(scope="session")
def eval_cache(tmp_path_factory):
    """A private DDPM_CACHE holding the default digits classifier, trained once for the whole session."""
    path = tmp_path_factory.mktemp("ddpm-cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("DDPM_CACHE", str(path))
    model, info, _ = cached_classifier(load_digits(), progress=False)
    yield model, info
    mp.undo()


@pytest.fixture(scope="session")
def digit_features(eval_cache):
    model, _ = eval_cache
    data = load_digits()
    feats, logits = extract(ClassifierExtractor(model), data.images, progress=False)
    return data, feats.double(), logits


# --- Frechet distance ------------------------------------------------------------------------------


def scipy_frechet(a: np.ndarray, b: np.ndarray) -> float:
    """Independent reference: Eq. 6 of Heusel et al. with scipy's matrix square root."""
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def test_frechet_distance_matches_scipy():
    g = torch.Generator().manual_seed(0)
    d = 12
    a = torch.randn(400, d, generator=g, dtype=torch.float64)
    mix = torch.randn(d, d, generator=g, dtype=torch.float64) / math.sqrt(d)
    b = torch.randn(300, d, generator=g, dtype=torch.float64) @ (torch.eye(d, dtype=torch.float64) + mix) + 0.3
    want = scipy_frechet(a.numpy(), b.numpy())
    assert M.frechet_distance(a, b) == pytest.approx(want, rel=1e-6)
    # Cached reference statistics give the same number as the features themselves.
    assert M.frechet_distance(M.FidReference.from_features(a), b) == pytest.approx(want, rel=1e-6)


def test_fid_self_half_and_noise(digit_features):
    """Against itself ~0; a disjoint half is far closer than digits of other classes or noise."""
    data, feats, _ = digit_features
    perm = torch.randperm(len(feats), generator=torch.Generator().manual_seed(0))
    half_a, half_b = feats[perm[: len(perm) // 2]], feats[perm[len(perm) // 2:]]
    noise = torch.rand(500, *data.shape, generator=torch.Generator().manual_seed(1)) * 2 - 1
    noise_feats = extract(make_extractor("classifier", classifier=_model(digit_features)), noise, progress=False)[0]
    low, high = feats[data.labels < 5], feats[data.labels >= 5]

    scale = float(feats.var(0).sum())  # the distance between two unrelated point masses is of this order
    fid_self = M.frechet_distance(feats, feats)
    fid_half = M.frechet_distance(half_a, half_b)
    fid_classes = M.frechet_distance(low, high)
    fid_noise = M.frechet_distance(feats, noise_feats)
    assert abs(fid_self) < 1e-6 * scale
    assert fid_half < 0.1 * fid_classes
    assert fid_half < 0.05 * fid_noise
    print(f"FD self {fid_self:.3g}, halves {fid_half:.3g}, 0-4 vs 5-9 {fid_classes:.3g}, noise {fid_noise:.3g}")


def _model(digit_features):
    # The session classifier, as stored in the private cache.
    model, _, _ = cached_classifier(digit_features[0], progress=False)
    return model


# --- KID and IS against closed forms ---------------------------------------------------------------


def test_kid_is_unbiased_polynomial_mmd():
    """With one subset of the whole set, KID is the unbiased MMD^2 of k(x,y) = (x.y/d + 1)^3 exactly."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(60, 5, generator=g, dtype=torch.float64)
    y = torch.randn(60, 5, generator=g, dtype=torch.float64) * 1.3 + 0.2
    n, d = len(x), x.shape[1]
    k = lambda a, b: (a @ b.T / d + 1) ** 3  # noqa: E731
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    want = ((kxx.sum() - kxx.trace()) / (n * (n - 1)) + (kyy.sum() - kyy.trace()) / (n * (n - 1))
            - 2 * kxy.sum() / n**2).item()
    mean, std = M.kernel_inception_distance(x, y, subsets=1, subset_size=n)
    assert mean == pytest.approx(want, rel=1e-6)


def test_inception_score_closed_forms():
    """exp(E KL(p(y|x) || p(y))): K for confident predictions spread evenly over K classes, 1 for one class."""
    k = 5
    confident = torch.eye(k).repeat(20, 1) * 50.0
    assert M.inception_score(confident, splits=1)[0] == pytest.approx(k, rel=1e-4)
    assert M.inception_score(torch.zeros(100, k), splits=1)[0] == pytest.approx(1.0, abs=1e-6)


# --- precision / recall on mixtures with known answers ----------------------------------------------


def mixture(n: int, modes: list[int], seed: int, std: float = 0.5, num_modes: int = 10) -> torch.Tensor:
    """Gaussians on a circle of radius 20 in 2-D, far apart compared with their spread."""
    g = torch.Generator().manual_seed(seed)
    which = torch.tensor(modes)[torch.randint(0, len(modes), (n,), generator=g)]
    angle = 2 * math.pi * which / num_modes
    centres = 20 * torch.stack([angle.cos(), angle.sin()], dim=1)
    return centres + std * torch.randn(n, 2, generator=g)


def test_precision_recall_toy_distributions():
    real = mixture(2000, list(range(10)), seed=0)
    assert M.precision_recall(real, real) == (1.0, 1.0)  # every point lies in its own ball

    p, r = M.precision_recall(real, mixture(2000, list(range(10)), seed=1))
    assert p > 0.9 and r > 0.9

    p, r = M.precision_recall(real, mixture(2000, list(range(5)), seed=2))  # half the modes
    assert p > 0.9
    assert r == pytest.approx(0.5, abs=0.06)

    p, r = M.precision_recall(real, mixture(2000, [3], seed=3, std=0.02))  # collapsed to a point
    assert p > 0.9
    assert r < 0.05


# --- classifier confidence metrics ------------------------------------------------------------------


def test_confidence_and_class_entropy():
    k = 4
    sure = torch.eye(k) * 10.0  # softmax top probability e^10 / (e^10 + 3) > 0.9
    unsure = torch.zeros(4, k)  # top probability 1/4
    logits = torch.cat([sure, sure, unsure])
    assert M.confident_share(logits) == pytest.approx(8 / 12)

    assert M.class_entropy(torch.eye(k).repeat(5, 1)) == pytest.approx(1.0)  # every class equally often
    assert M.class_entropy(torch.eye(k)[[2] * 7]) == pytest.approx(0.0)  # one class
    two = torch.eye(k)[[0, 1] * 6]
    assert M.class_entropy(two) == pytest.approx(math.log(2) / math.log(k))
    assert M.class_entropy(torch.eye(3)[[0, 0, 1, 1]], num_classes=10) == pytest.approx(math.log(2) / math.log(10))


# --- classifier, cache, extractors -------------------------------------------------------------------


def test_classifier_accuracy_and_round_trip(eval_cache, tmp_path):
    model, info = eval_cache
    assert info["held_out_accuracy"] >= 0.97  # issue 2: a digit classifier of at least 97%
    assert info["num_held_out"] + info["num_train"] == 1797
    save_classifier(model, tmp_path / "clf", info)
    loaded, info2 = load_classifier(tmp_path / "clf")
    x = load_digits().images[:16]
    assert torch.equal(loaded(x), model(x))
    assert info2["held_out_accuracy"] == info["held_out_accuracy"]
    with pytest.raises(UserError, match="classifier not found"):
        load_classifier(tmp_path / "nothing")


def test_reference_stats_are_cached(digit_features):
    data, feats, _ = digit_features
    extractor = ClassifierExtractor(_model(digit_features))
    first = reference_stats(data, extractor, progress=False)
    files = list((cache_dir() / "reference").glob("digits-*.safetensors"))
    assert len(files) == 1
    second = reference_stats(data, extractor, progress=False)
    assert torch.equal(first.features, second.features) and second.num_images == len(data)
    assert torch.allclose(first.features.double(), feats)
    assert M.frechet_distance(second.fid, feats) == pytest.approx(0.0, abs=1e-6 * float(feats.var(0).sum()))


def test_inception_weights_errors(tmp_path, monkeypatch):
    """No weights anywhere: one clear error saying how to provide them, never a silent fallback."""
    import urllib.error

    monkeypatch.delenv("DDPM_INCEPTION_WEIGHTS", raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def offline(*a, **k):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(UserError, match="--inception-weights") as e:
        make_extractor("inception")
    assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="not found"):
        make_extractor("inception", inception_weights=tmp_path / "missing.pth")


def test_inception_extractor_runs_from_a_local_file(tmp_path, monkeypatch):
    """The loader takes a local weights file (here random weights of the right layout) and runs."""
    from torch_fidelity import feature_extractor_inceptionv3 as fe

    class Skip(Exception):
        pass

    shell = fe.FeatureExtractorInceptionV3.__new__(fe.FeatureExtractorInceptionV3)
    monkeypatch.setattr(fe, "load_state_dict_from_url", lambda *a, **k: (_ for _ in ()).throw(Skip()))
    with pytest.raises(Skip):  # builds every layer, then stops where the download would start
        fe.FeatureExtractorInceptionV3.__init__(shell, "inception-v3-compat", ["2048"])
    weights = tmp_path / "inception.pth"
    torch.save(shell.state_dict(), weights)  # the published file's format: a plain state dict
    extractor = make_extractor("inception", inception_weights=weights)
    images = load_digits().images[:2]
    feats, logits = extract(extractor, images, progress=False)
    assert feats.shape == (2, 2048) and logits.shape == (2, 1008)
    assert torch.isfinite(feats).all()


# --- the CLI ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return train(tiny_config(), tmp_path_factory.mktemp("eval-run") / "run", progress=False)


def test_evaluate_cli_checkpoint_and_samples(eval_cache, tiny_run, tmp_path, capsys):
    out = tmp_path / "report.json"
    rc = main(["evaluate", "--checkpoint", str(tiny_run), "--n", "12", "--batch-size", "5", "--features", "classifier",
               "--metrics", "fid,kid,precision_recall,is,confidence", "--out", str(out), "--no-progress",
               "--device", "cpu"])
    assert rc == 0
    report = json.loads(out.read_text())
    for key in ("fid", "fid_se", "kid_mean", "precision", "recall", "is_mean", "confident_share", "class_entropy"):
        assert math.isfinite(report["metrics"][key])
    assert report["n"] == 12 and report["source"]["steps"] == 20
    assert report["features"]["held_out_accuracy"] == eval_cache[1]["held_out_accuracy"]
    assert "fid" in capsys.readouterr().out

    # Real digits saved as samples.npz score far better than the barely trained run.
    digits = load_digits()
    npz = tmp_path / "samples.npz"
    np.savez(npz, ((digits.images[:400, 0] + 1) * 127.5).round().byte().numpy())
    out2 = tmp_path / "real.json"
    assert main(["evaluate", "--samples", str(npz), "--metrics", "fid,confidence", "--out", str(out2),
                 "--no-progress", "--device", "cpu"]) == 0
    real = json.loads(out2.read_text())["metrics"]
    assert real["fid"] < 0.2 * report["metrics"]["fid"]
    assert real["confident_share"] > 0.9


def test_evaluate_cli_errors(tmp_path, tiny_run, capsys):
    def error(*argv) -> str:
        assert main(["evaluate", *map(str, argv), "--no-progress", "--device", "cpu"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1
        return err

    assert "checkpoint not found" in error("--checkpoint", tmp_path / "missing")
    assert "unknown metric" in error("--checkpoint", tiny_run, "--metrics", "fid,sharpness")
    assert "too few samples" in error("--checkpoint", tiny_run, "--n", "3", "--metrics", "precision_recall")
    npz = tmp_path / "two.npz"
    np.savez(npz, np.zeros((2, 8, 8), np.uint8))
    assert "holds only 2" in error("--samples", npz, "--n", "5")
    assert "samples not found" in error("--samples", tmp_path / "none.npz")


def test_train_classifier_cli(tmp_path, capsys):
    assert main(["train-classifier", "--data", "digits", "--out", str(tmp_path / "c"), "--epochs", "1",
                 "--no-progress", "--device", "cpu"]) == 0
    model, info = load_classifier(tmp_path / "c")
    assert info["train"]["epochs"] == 1 and 0.0 <= info["held_out_accuracy"] <= 1.0
    assert "held-out accuracy" in capsys.readouterr().out


def test_frechet_distance_standard_error_shrinks_with_the_sample_size():
    """The bootstrap spread of the distance between two Gaussians' samples falls like 1/sqrt(N) or faster."""
    g = torch.Generator().manual_seed(0)
    real = torch.randn(4000, 8, generator=g, dtype=torch.float64).float()
    small, large = (torch.randn(n, 8, generator=g) + 0.3 for n in (200, 3200))
    se_small, se_large = M.frechet_distance_se(real, small), M.frechet_distance_se(real, large)
    assert 0 < se_large < se_small / 3
    assert se_small < M.frechet_distance(real, small)  # mean shift 0.3 in 8 dims: FD ~0.72, well resolved


def test_real_floor_images_are_seeded_and_say_when_they_are_the_whole_set():
    from ddpm.evaluation.reference import real_floor_images

    data = load_digits()
    some, label = real_floor_images(data, 100, seed=3)
    assert label == "100 of 1797" and some.shape == (100, *data.shape)
    assert torch.equal(some, real_floor_images(data, 100, seed=3)[0])  # seeded
    everything, label = real_floor_images(data, 3000, seed=3)
    assert label == "1797 of 1797"  # no floor: the reference itself
    assert torch.equal(everything.flatten(1).sort(0).values, data.images.flatten(1).sort(0).values)


def test_score_images_clamps_and_scores_as_compute_metrics(digit_features):
    from ddpm.evaluation.report import compute_metrics, score_images

    data, _, _ = digit_features
    extractor = ClassifierExtractor(_model(digit_features))
    ref = reference_stats(data, extractor, progress=False)
    x = data.images[:200]
    feats, logits = extract(extractor, x, progress=False)
    want = compute_metrics(["fid", "confidence"], feats, logits, ref, num_classes=10, seed=3)
    beyond = torch.where(x.abs() >= 1, 2 * x, x)  # the saturated pixels pushed out of [-1, 1]
    assert (beyond.abs() > 1).any()
    got = score_images(["fid", "confidence"], beyond, extractor, ref, batch_size=64, num_classes=10, seed=3)
    assert got.keys() == want.keys()
    assert all(got[k] == pytest.approx(want[k], rel=1e-5, abs=1e-6) for k in want)
