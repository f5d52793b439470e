"""Vision building blocks against independent computations: NT-Xent, kNN, linear probe, stems, views."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.linear_model import LogisticRegression
from torch import nn
from torch.utils.data import TensorDataset

from copd_ifm.contrastive import ContrastiveLoss
from copd_ifm.contrastive.optim import OptimConfig
from natural_images.augment import TwoViews, blur_kernel, eval_transform, train_transform
from natural_images.backbones import build_backbone, resolve_stem
from natural_images.config import AugmentConfig, LinearConfig
from natural_images.features import extract_features
from natural_images.knn import knn_accuracy, knn_scores
from natural_images.linear import Standardize, fit_linear, top1
from natural_images.methods import SimCLR
from tests.helpers import brute_nt_xent, one_thread


@pytest.fixture(autouse=True)
def _one_thread():
    """Two shared cores: one intra-op thread is several times faster than two under contention."""
    with one_thread():
        yield


def test_simclr_with_ifm_eps_zero_is_plain_nt_xent_and_eps_gives_the_ifm_objective():
    torch.manual_seed(0)
    backbone, feat = build_backbone("resnet18", "cifar")
    model = SimCLR(backbone, feat, hidden=16, dim=8).eval()
    x1, x2 = torch.randn(3, 3, 16, 16), torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        pos, neg = model(x1, x2)
        z1, z2 = (z.double() for z in model.embed(x1, x2))
    assert pos.shape == (6,) and neg.shape == (6, 4)
    base = ContrastiveLoss(temperature=0.5, epsilon=0.0)(pos, neg)
    assert torch.allclose(base.double(), brute_nt_xent(z1, z2, 0.5), atol=1e-6)
    ifm = ContrastiveLoss(temperature=0.5, epsilon=0.1, alpha=1.0)(pos, neg)
    expected = (brute_nt_xent(z1, z2, 0.5) + brute_nt_xent(z1, z2, 0.5, eps=0.1)) / 2
    assert torch.allclose(ifm.double(), expected, atol=1e-6)
    assert ifm > base  # the adversary can only raise the loss


def test_knn_matches_brute_force_weighted_vote():
    gen = torch.Generator().manual_seed(1)
    bank, labels = torch.randn(40, 5, generator=gen), torch.randint(0, 4, (40,), generator=gen)
    query, qlabels = torch.randn(12, 5, generator=gen), torch.randint(0, 4, (12,), generator=gen)
    k, t = 7, 0.1
    scores = knn_scores(query, bank, labels, 4, k=k, temperature=t, chunk=5)
    bn = bank / bank.norm(dim=1, keepdim=True)
    for i, q in enumerate(query.double()):
        sims = [(float(q @ b.double() / q.norm()), int(c)) for b, c in zip(bn, labels)]
        expected = np.zeros(4)
        for s, c in sorted(sims, reverse=True)[:k]:
            expected[c] += np.exp(s / t)
        assert np.allclose(scores[i].numpy(), expected, rtol=1e-4)
    acc = knn_accuracy(query, qlabels, bank, labels, k=k, temperature=t)
    assert acc == pytest.approx(float((scores.argmax(1) == qlabels).float().mean()))
    # An unlabelled bank item (label -1) never votes.
    with_unlabelled = knn_accuracy(query, qlabels, torch.cat([bank, query[:1] * 100]),
                                   torch.cat([labels, torch.tensor([-1])]), k=k, temperature=t)
    assert with_unlabelled == pytest.approx(acc)


def test_knn_predicts_the_class_of_identical_bank_items():
    bank = torch.eye(3).repeat(2, 1)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    assert knn_accuracy(torch.eye(3) * 5, torch.tensor([0, 1, 2]), bank, labels, k=2) == 1.0


def test_linear_probe_on_random_encoder_matches_sklearn_logistic_regression():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    n, n_train, classes = 150, 100, 3
    y = np.arange(n) % classes
    # Class means differ in colour; heavy pixel noise keeps the task from being trivially separable.
    images = 0.5 * np.eye(3)[y][:, :, None, None] + rng.normal(0, 1.0, (n, 3, 16, 16))
    data = TensorDataset(torch.tensor(images, dtype=torch.float32), torch.tensor(y))
    encoder, _ = build_backbone("resnet18", "cifar")
    feats, labels = extract_features(encoder, data, batch_size=75, workers=0, device=torch.device("cpu"))
    assert feats.shape == (n, 512) and labels.shape == (n, 1)
    mean, std = feats[:n_train].mean(0), feats[:n_train].std(0) + 1e-6
    x = (feats - mean) / std
    train_x, train_y, test_x, test_y = x[:n_train], labels[:n_train, 0], x[n_train:], labels[n_train:, 0]
    lin = LinearConfig(epochs=150, batch_size=n_train, optim=OptimConfig(name="sgd", lr=0.1, momentum=0.9,
                                                                     weight_decay=0.0, schedule="constant"))
    layer, history = fit_linear(train_x, train_y, classes, lin, test_x=test_x, test_y=test_y)
    sk = LogisticRegression(C=1e6, max_iter=5000).fit(train_x.numpy(), train_y.numpy())
    ours, theirs = top1(layer, test_x, test_y), sk.score(test_x.numpy(), test_y.numpy())
    assert history[-1]["test_top1"] == pytest.approx(100 * ours)
    assert 0.45 < theirs < 0.98  # the check is informative only if the task is neither hopeless nor trivial
    assert abs(ours - theirs) <= 0.1
    assert history[-1]["train_loss"] < history[0]["train_loss"]


def test_standardize_uses_the_training_statistics_and_leaves_a_constant_feature_at_zero():
    x = torch.tensor([[1.0, 10.0, 3.0], [3.0, 30.0, 3.0], [5.0, 20.0, 3.0]])
    z = Standardize.fit(x)(x)
    # column 0: mean 3, sd 2 (ddof 1); column 1: mean 20, sd 10; column 2 is constant: sd taken as 1
    assert torch.allclose(z, torch.tensor([[-1.0, -1.0, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]))


def test_a_standardized_probe_does_not_depend_on_each_features_scale():
    gen = torch.Generator().manual_seed(0)
    y = torch.arange(300) % 4
    x = torch.randn(300, 6, generator=gen) + torch.nn.functional.one_hot(y, 6).float()
    scaled = x * torch.tensor([1e-3, 1e3, 1.0, 50.0, 1e-2, 7.0]) + 5.0   # what differs between encoders
    lin = LinearConfig(epochs=20, batch_size=64, standardize=True)
    lin.optim.lr = 0.01
    ref, history = fit_linear(x[:200], y[:200], 4, lin, test_x=x[200:], test_y=y[200:])
    other, history_scaled = fit_linear(scaled[:200], y[:200], 4, lin, test_x=scaled[200:], test_y=y[200:])
    assert isinstance(ref, nn.Sequential)
    assert [h["test_top1"] for h in history] == [h["test_top1"] for h in history_scaled]
    assert torch.allclose(ref(x[200:]), other(scaled[200:]), atol=1e-3)   # float32 rounding of 5 + 1e-3·x
    assert history[-1]["test_top1"] > 40                                  # chance is 25 %
    lin.standardize = False                                               # the raw probe is not invariant
    _, raw = fit_linear(scaled[:200], y[:200], 4, lin, test_x=scaled[200:], test_y=y[200:])
    assert raw[-1]["test_top1"] < history[-1]["test_top1"] - 5


def test_cifar_stem_keeps_resolution_and_standard_stem_downsamples():
    assert resolve_stem("auto", 32) == "cifar" and resolve_stem("auto", 96) == "cifar"
    assert resolve_stem("auto", 224) == "imagenet" and resolve_stem("imagenet", 32) == "imagenet"
    cifar, feat = build_backbone("resnet18", "cifar")
    standard, _ = build_backbone("resnet18", "imagenet")
    assert feat == 512 and build_backbone("resnet50", "cifar")[1] == 2048
    assert cifar.conv1.kernel_size == (3, 3) and cifar.conv1.stride == (1, 1)
    assert isinstance(cifar.maxpool, nn.Identity) and isinstance(cifar.fc, nn.Identity)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        stem_out = cifar.layer1(cifar.maxpool(cifar.relu(cifar.bn1(cifar.conv1(x)))))
        std_out = standard.layer1(standard.maxpool(standard.relu(standard.bn1(standard.conv1(x)))))
    assert stem_out.shape[-1] == 32 and std_out.shape[-1] == 8


def test_views_are_random_crops_of_the_requested_size_and_eval_is_deterministic():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8))
    views = TwoViews(train_transform(AugmentConfig(), "moco", 24, (0.5,) * 3, (0.25,) * 3))
    torch.manual_seed(0)
    v1, v2 = views(image)
    assert v1.shape == v2.shape == (3, 24, 24) and v1.dtype == torch.float32
    assert not torch.equal(v1, v2)
    ev = eval_transform(32, 256 / 224, (0.5,) * 3, (0.25,) * 3)
    assert torch.equal(ev(image), ev(image)) and ev(image).shape == (3, 32, 32)
    assert blur_kernel(32) == 3 and blur_kernel(224) == 23 and blur_kernel(96) == 9


@pytest.mark.parametrize("crop", [16, 32, 48, 96])
def test_views_equal_those_of_torchvision_blur_to_one_grey_level(crop):
    """PIL's 3×3 / 5×5 filter with torchvision's kernel, σ draw and reflect padding gives torchvision's views
    to one grey level in rare pixels (rounding); larger kernels (96 px: 9) are torchvision's own."""
    from torchvision.transforms import v2
    aug = AugmentConfig(blur_prob=1.0)
    reference = v2.Compose([
        v2.RandomResizedCrop(crop, scale=(0.08, 1.0), antialias=True), v2.RandomHorizontalFlip(aug.flip_prob),
        v2.RandomApply([v2.ColorJitter(*aug.jitter)], p=aug.jitter_prob), v2.RandomGrayscale(aug.grayscale_prob),
        v2.RandomApply([v2.GaussianBlur(blur_kernel(crop), sigma=tuple(aug.blur_sigma))], p=aug.blur_prob),
        v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize([0.5] * 3, [0.25] * 3)])
    transform = train_transform(aug, "simclr", crop, (0.5,) * 3, (0.25,) * 3)
    image = Image.fromarray(np.random.default_rng(crop).integers(0, 256, (crop + 9, crop + 5, 3), dtype=np.uint8))
    grey_level = 1 / 255 / 0.25
    for seed in range(6):
        torch.manual_seed(seed)
        ours, after_ours = transform(image), torch.rand(1)
        torch.manual_seed(seed)
        theirs, after_theirs = reference(image), torch.rand(1)
        assert torch.equal(after_ours, after_theirs)                    # the same random draws
        diff = (ours - theirs).abs()
        assert diff.max() <= grey_level * 1.0001 and (diff > 0).float().mean() < 0.01
        assert crop < 60 or diff.max() == 0


@pytest.mark.parametrize("half,size", [(1, (5, 4)), (2, (7, 9)), (2, (32, 32))])
def test_reflect_pad_equals_numpy_reflect(half, size):
    from natural_images.augment import reflect_pad
    pixels = np.random.default_rng(half).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    padded = np.asarray(reflect_pad(Image.fromarray(pixels), half))
    assert np.array_equal(padded, np.pad(pixels, [(half, half), (half, half), (0, 0)], mode="reflect"))
    grey = pixels[..., 0]
    assert np.array_equal(np.asarray(reflect_pad(Image.fromarray(grey), half)), np.pad(grey, half, mode="reflect"))


def test_blur_of_a_tensor_or_another_mode_is_torchvision_own():
    from natural_images.augment import GaussianBlur
    tensor = torch.randint(0, 256, (3, 12, 12), dtype=torch.uint8)
    torch.manual_seed(0)
    ours = GaussianBlur(3, (0.5, 1.5))(tensor)
    torch.manual_seed(0)
    assert torch.equal(ours, torchvision_blur(tensor))
    rgba = Image.fromarray(np.random.default_rng(0).integers(0, 256, (12, 12, 4), dtype=np.uint8))
    torch.manual_seed(0)
    ours = np.asarray(GaussianBlur(3, (0.5, 1.5))(rgba))
    torch.manual_seed(0)
    assert np.array_equal(ours, np.asarray(torchvision_blur(rgba)))


def torchvision_blur(image):
    from torchvision.transforms import v2
    return v2.GaussianBlur(3, sigma=(0.5, 1.5))(image)
