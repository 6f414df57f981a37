"""ResNet (WeSpeaker form) and CAM++ encoders: published sizes, shapes at any length, training, bf16
autocast, independence of the items of a batch, argument checks."""

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from conftest import draw_batchnorm_statistics, padded_and_alone
from speakerid.losses import AAMSoftmax
from speakerid.models import CAMPPlus, ResNet


def count(model):
    return sum(p.numel() for p in model.parameters())


# Slim variants, fast enough for a 2-core CPU; the same code paths as the full models.
SLIM = {
    "resnet34": lambda emb_dim=32, in_dim=80: ResNet(34, in_dim=in_dim, base_width=4, emb_dim=emb_dim),
    "resnet221": lambda emb_dim=32, in_dim=80: ResNet(221, in_dim=in_dim, base_width=2, emb_dim=emb_dim),
    "campplus": lambda emb_dim=32, in_dim=80: CAMPPlus(in_dim=in_dim, emb_dim=emb_dim, fcm_channels=4,
                                                       init_channels=32, growth_rate=8, block_layers=[2, 3, 2]),
}
FAST = ["resnet34", "campplus"]


def with_random_batchnorm_statistics(model):
    """Eval mode with running statistics far from (0, 1), so that eval-mode BatchNorm is not an identity."""
    generator = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=generator) - 0.5)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=generator) * 1.5 + 0.5)
    return model.eval()


# WeSpeaker's examples/voxceleb/v2 README (its "speaker_model size": encoder with the embedding layer,
# without the classification head), at 80-d fbank, m_channels 32 and 256-d embeddings.
@pytest.mark.parametrize("depth,published", [(34, 6.63e6), (221, 23.79e6), (293, 28.62e6)])
def test_resnet_parameter_count_matches_wespeaker(depth, published):
    n = count(ResNet(depth=depth, in_dim=80, base_width=32, emb_dim=256))
    assert abs(n - published) / published < 0.03, f"ResNet{depth}: {n} parameters, published {published:.0f}"


def test_campplus_parameter_count_matches_3dspeaker():
    # 3D-Speaker egs/voxceleb/sv-cam++ (embedding_size 512): 7.18M; WeSpeaker's CAM++ row agrees.
    n = count(CAMPPlus(in_dim=80, emb_dim=512))
    assert abs(n - 7.18e6) / 7.18e6 < 0.03, f"CAM++: {n} parameters, published 7.18M"


# Exact counts of the reference implementations, instantiated from their source: WeSpeaker
# wespeaker/models/resnet.py (commit dfa7419) ResNet34/221/293(feat_dim=80, embed_dim=256) and 3D-Speaker
# speakerlab/models/campplus/DTDNN.py (commit 09e7806) CAMPPlus(feat_dim=80, embedding_size=512).
@pytest.mark.parametrize("build,reference", [
    (lambda: ResNet(34), 6_634_336), (lambda: ResNet(221), 23_792_224), (lambda: ResNet(293), 28_626_016),
    (lambda: CAMPPlus(emb_dim=512), 7_176_224),
], ids=["resnet34", "resnet221", "resnet293", "campplus"])
def test_parameter_count_equals_the_reference_implementation(build, reference):
    assert count(build()) == reference


def test_defaults_are_the_published_models():
    resnet = ResNet()
    assert (resnet.depth, resnet.in_dim, resnet.base_width, resnet.emb_dim) == (34, 80, 32, 256)
    assert CAMPPlus().emb_dim == 512


@pytest.mark.parametrize("name", FAST)
@pytest.mark.parametrize("frames", [100, 200, 301])
@pytest.mark.parametrize("batch", [1, 3])
def test_output_shape_any_length(name, frames, batch):
    model = SLIM[name](emb_dim=24).eval()
    with torch.no_grad():
        out = model(torch.randn(batch, 80, frames))
    assert out.shape == (batch, 24)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("depth", [221, 293])
def test_bottleneck_depths_output_shape(depth):
    model = ResNet(depth, base_width=2, emb_dim=16).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 80, 45))
    assert out.shape == (2, 16)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("model", [ResNet(), CAMPPlus()], ids=["resnet34", "campplus"])
def test_full_size_forward(model):
    with torch.no_grad():
        out = model.eval()(torch.randn(2, 80, 200))
    assert out.shape == (2, model.emb_dim)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", FAST)
@pytest.mark.parametrize("in_dim", [64, 81])
def test_other_feature_sizes(name, in_dim):
    # 81 is not a multiple of 8: the frequency axis after the strided convolutions is ceil(81 / 8) = 11.
    model = SLIM[name](in_dim=in_dim).eval()
    with torch.no_grad():
        assert model(torch.randn(2, in_dim, 50)).shape == (2, 32)


@pytest.mark.parametrize("name,min_frames", [("resnet34", 9), ("campplus", 3)])
def test_minimum_length_works_and_shorter_is_explained(name, min_frames):
    model = SLIM[name]().eval()
    assert model.min_frames == min_frames
    with torch.no_grad():
        assert torch.isfinite(model(torch.randn(2, 80, min_frames))).all()
        with pytest.raises(ValueError, match=rf"\[batch, 80, frames\] with frames >= {min_frames}"):
            model(torch.randn(2, 80, min_frames - 1))


@pytest.mark.parametrize("name", FAST)
def test_wrong_feature_size_is_explained(name):
    with pytest.raises(ValueError, match=r"\[batch, 80, frames\]"):
        SLIM[name]()(torch.randn(2, 40, 100))


@pytest.mark.parametrize("name", list(SLIM))
def test_every_parameter_receives_gradient(name):
    model = SLIM[name]()
    model(torch.randn(3, 80, 24)).pow(2).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


@pytest.mark.parametrize("name", FAST)
def test_eval_embedding_does_not_depend_on_batch_companions(name):
    torch.manual_seed(0)
    model = with_random_batchnorm_statistics(SLIM[name]())
    x = torch.randn(3, 80, 230)  # CAM++: 115 frames after its stride 2, so two context segments
    with torch.no_grad():
        together = model(x)
        for i in range(3):
            torch.testing.assert_close(together[i:i + 1], model(x[i:i + 1]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", FAST)
def test_bf16_autocast_forward_is_close_to_fp32(name):
    torch.manual_seed(0)
    model = with_random_batchnorm_statistics(SLIM[name](emb_dim=64))
    x = torch.randn(4, 80, 120)
    with torch.no_grad():
        reference = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x)
    assert low.dtype in (torch.bfloat16, torch.float32)
    cosine = torch.nn.functional.cosine_similarity(low.float(), reference, dim=1)
    assert (cosine > 0.99).all(), cosine


@pytest.mark.parametrize("name", FAST)
def test_slim_model_trains_with_aam_softmax(name):
    torch.manual_seed(0)
    model = SLIM[name]()
    head = AAMSoftmax(num_classes=4, emb_dim=32, m=0.2, s=30.0)
    optimizer = torch.optim.SGD([*model.parameters(), *head.parameters()], lr=0.005, momentum=0.9)
    labels = torch.arange(4).repeat(2)
    # Each speaker a fixed spectral offset under frame noise, as a voice colours the whole fbank.
    features = torch.randn(4, 80, 1)[labels] + torch.randn(8, 80, 60)
    losses = []
    for _ in range(20):
        loss, _ = head(model(features), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-3:]) / 3 < 0.5 * losses[0], losses


@pytest.mark.parametrize("kwargs,key", [
    ({"depth": 50}, "model.depth"), ({"depth": True}, "model.depth"), ({"base_width": 0}, "model.base_width"),
    ({"emb_dim": 256.0}, "model.emb_dim"), ({"in_dim": -80}, "model.in_dim"),
])
def test_resnet_bad_arguments_are_explained(kwargs, key):
    with pytest.raises(ValueError, match=key):
        ResNet(**kwargs)


@pytest.mark.parametrize("kwargs,key", [
    ({"growth_rate": 0}, "model.growth_rate"), ({"kernel_size": 4}, "model.kernel_size"),
    ({"block_layers": [12, 24]}, "model.block_dilations"), ({"block_layers": []}, "model.block_layers"),
    ({"block_layers": [12, "24", 16]}, r"model.block_layers\[1\]"),
    ({"segment_frames": 0}, "model.segment_frames"),
    ({"growth_rate": 1, "bottleneck_scale": 1, "cam_reduction": 2}, "model.cam_reduction"),
])
def test_campplus_bad_arguments_are_explained(kwargs, key):
    with pytest.raises(ValueError, match=key):
        CAMPPlus(**kwargs)


def test_built_from_yaml_with_hydra():
    # Lists arrive from YAML as ListConfig, not list.
    cfg = OmegaConf.create({
        "features": {"fbank": {"n_mels": 80}},
        "resnet": {"_target_": "speakerid.models.ResNet", "depth": 34, "in_dim": "${features.fbank.n_mels}",
                   "base_width": 4, "emb_dim": 16},
        "campplus": {"_target_": "speakerid.models.CAMPPlus", "in_dim": "${features.fbank.n_mels}", "emb_dim": 16,
                     "growth_rate": 8, "init_channels": 32, "fcm_channels": 8,
                     "block_layers": [1, 1, 1], "block_dilations": [1, 2, 2]},
    })
    resnet, campplus = instantiate(cfg.resnet), instantiate(cfg.campplus)
    assert isinstance(resnet, ResNet) and isinstance(campplus, CAMPPlus)
    assert (resnet.in_dim, resnet.emb_dim, campplus.in_dim, campplus.emb_dim) == (80, 16, 80, 16)


@pytest.mark.slow
@pytest.mark.parametrize("name", FAST)
def test_compiled_forward_and_gradients_match_eager(name):
    """Eval mode, so that BatchNorm uses running statistics: in training mode Inductor sums the batch
    statistics in float32 where eager CPU kernels use float64, and the gradients then differ by up to a
    few percent in this 3-utterance batch (float64 compiled and eager agree to 1e-14)."""
    torch.manual_seed(0)
    # The slim models have 4-channel strided 1x1 shortcuts, which crashed compiled on torch 2.11's CPU
    # kernels before resnet._PointwiseConv2d.
    model = with_random_batchnorm_statistics(SLIM[name]())
    compiled = torch.compile(model, dynamic=False)
    x = torch.randn(3, 80, 230)
    weights = torch.randn(3, 32)

    def forward_and_gradients(module):
        out = module(x)
        return out, torch.autograd.grad((out * weights).sum(), list(model.parameters()))

    eager_out, eager_grads = forward_and_gradients(model)
    compiled_out, compiled_grads = forward_and_gradients(compiled)
    torch.testing.assert_close(compiled_out, eager_out, rtol=1e-4, atol=1e-5)
    for (param, _), g_c, g_e in zip(model.named_parameters(), compiled_grads, eager_grads):
        assert (g_c - g_e).norm() <= 1e-4 * g_e.norm() + 1e-7, param


def test_context_aware_masking_matches_float64_formula():
    """CAM layer: local dilated conv(x) * sigmoid(W2 relu(W1 c + b1) + b2), with the context c of a frame
    the utterance mean plus the mean of its segment, computed here frame by frame in float64."""
    from speakerid.models.campplus import ContextAwareMasking

    torch.manual_seed(0)
    cam = ContextAwareMasking(6, 4, kernel_size=3, dilation=2, reduction=2, segment_frames=10).double()
    x = torch.randn(2, 6, 25, dtype=torch.float64)
    out = cam(x)
    local = torch.nn.functional.conv1d(x, cam.local.weight, padding=2, dilation=2)
    w1, b1 = cam.mask[0].weight[:, :, 0], cam.mask[0].bias
    w2, b2 = cam.mask[2].weight[:, :, 0], cam.mask[2].bias
    for b in range(2):
        for t in range(25):
            start = t // 10 * 10
            context = x[b].mean(dim=1) + x[b, :, start:min(start + 10, 25)].mean(dim=1)
            mask = torch.sigmoid(w2 @ torch.relu(w1 @ context + b1) + b2)
            torch.testing.assert_close(out[b, :, t], local[b, :, t] * mask)


@pytest.mark.slow
@pytest.mark.parametrize("name", FAST)
def test_torchscript_and_onnx_exports_match_eager_at_other_lengths(name, tmp_path):
    """Exported once at one length (speakerid.export), run at others: the time axis stays symbolic, and
    CAM++'s segment count (a ceiling division of the frame count) survives ONNX's truncating division."""
    import onnxruntime

    from speakerid.evaluation import EmbeddingExtractor
    from speakerid.export import export_onnx, export_torchscript
    from speakerid.features import Fbank

    torch.manual_seed(0)
    extractor = EmbeddingExtractor(Fbank(), with_random_batchnorm_statistics(SLIM[name]())).eval()
    scripted = torch.jit.load(str(export_torchscript(extractor, tmp_path / "extractor.ts")))
    session = onnxruntime.InferenceSession(str(export_onnx(extractor, tmp_path / "extractor.onnx")))
    # 1 s, and 4.7 s / 7 s: CAM++ then has 2 and 4 context segments, the last one short
    for batch, samples in [(1, 16000), (3, 75_055), (1, 112_003)]:
        wave = torch.randn(batch, samples)
        with torch.no_grad():
            eager = extractor(wave)
            torch.testing.assert_close(scripted(wave), eager, rtol=1e-5, atol=1e-5)
        onnx_out = torch.from_numpy(session.run(None, {"waveform": wave.numpy()})[0])
        torch.testing.assert_close(onnx_out, eager, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("depth,width", [(34, 8), (221, 4)])
def test_resnet_with_lengths_gives_each_utterance_of_a_padded_batch_its_own_embedding(depth, width):
    """Masks past each utterance's end before every 3x3 convolution, at the frame counts each stride-2 stage
    leaves (odd and even lengths, the 9-frame minimum), and a masked TSTP: in float64 each padded row equals
    the utterance alone, whatever the padding holds."""
    torch.manual_seed(0)
    model = draw_batchnorm_statistics(ResNet(depth=depth, base_width=width, emb_dim=16)).double().eval()
    batched, alone, plain, features = padded_and_alone(model, [57, 40, 33, 9, 56])
    torch.testing.assert_close(batched, alone, rtol=0, atol=1e-12)
    assert (plain[3] - alone[3]).abs().max() > 1e-2  # without the lengths the padding counts
    with pytest.raises(ValueError, match=f"ResNet{depth} needs at least 9 frames per utterance"):
        model(features, torch.tensor([57, 8, 33, 9, 56]))


def test_campplus_with_lengths_gives_each_utterance_of_a_padded_batch_its_own_embedding():
    """The FCM's 3x3 convolutions, the stride-2 TDNN layer, and every CAM layer's local convolution and its
    utterance and segment means (here 10-frame segments, so that utterances end inside them) see each
    utterance's own frames only: in float64 each padded row equals the utterance alone."""
    torch.manual_seed(0)
    model = draw_batchnorm_statistics(CAMPPlus(fcm_channels=4, init_channels=16, growth_rate=8, bottleneck_scale=2,
                                               block_layers=(2, 3, 2), emb_dim=16, segment_frames=10))
    batched, alone, plain, features = padded_and_alone(model.double().eval(), [57, 40, 33, 3, 4, 21, 56])
    torch.testing.assert_close(batched, alone, rtol=0, atol=1e-12)
    assert (plain[3] - alone[3]).abs().max() > 1e-2  # without the lengths the padding counts
    with pytest.raises(ValueError, match="CAMPPlus needs at least 3 frames per utterance"):
        model(features, torch.tensor([57, 2, 33, 3, 4, 21, 56]))
