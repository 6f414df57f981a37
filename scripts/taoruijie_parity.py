#!/usr/bin/env python
"""Check speakerid's TaoRuijie variant against TaoRuijie/ECAPA-TDNN's own code, part by part, on real audio.
His code is imported from a checkout you give (it is not part of speakerid), unchanged except for a 256-d
embedding (his loss and last layers hard-code 192) and numpy.float, which NumPy 2 removed:

  step        his ECAPA_TDNN + AAMsoftmax + Adam (wd 2e-5) and speakerid's model=ecapa_tdnn_taoruijie + AAMSoftmax
              + Adam from the same weights on the same batches of 2 s crops (SpecAugment off), in float64: the
              loss and the embeddings after every step. Then the same in float32 (where rounding makes the two
              drift apart slowly, as two runs of either would).
  augment     the SNR (babble, noise) and level change (reverb) that his dataLoader.add_noise / add_rev realise
              on the same crops, against speakerid's augment=musan_rir (each babble talker at its own SNR, the
              1e-4 power floor): quantiles of each distribution.
  evaluation  with --checkpoint (a speakerid run of experiment=arsc_augment_taoruijie): the EER of his
              eval_network's full-utterance scores (one file at a time, his EER function) and of speakerid's
              validation (batched extraction, compute_eer).

    git clone https://github.com/TaoRuijie/ECAPA-TDNN /tmp/ECAPA-TDNN
    python scripts/taoruijie_parity.py --tao /tmp/ECAPA-TDNN --corpus ../shared/data/arsc \\
        [--checkpoint runs/arsc_augment_taoruijie/<date_time>/checkpoints/last.pt]

The corpus is a folder in the layout of ../shared/data/arsc (train_list.txt, trials.txt, wav/, musan/,
RIRS_NOISES/simulated_rirs/). Nothing is written.
"""

import argparse
import glob
import random
import sys
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F
from torch import nn

from speakerid.augment import NoiseCategory, build_noise_reverb
from speakerid.checkpoint import load_checkpoint
from speakerid.evaluation.extraction import EmbeddingExtractor, extract_embeddings
from speakerid.features import Fbank, samples_for_frames
from speakerid.losses import AAMSoftmax
from speakerid.metrics import compute_eer
from speakerid.models import ECAPATDNN

CHANNELS, EMB, CLASSES, BATCH = 512, 256, 18, 32
CROP = samples_for_frames(200)


def import_tao(path: Path):
    """His model.py, loss.py, tools.py and dataLoader.py, imported from the checkout."""
    np.float = np.float64  # dataLoader.add_rev calls numpy.float, gone since NumPy 1.24
    sys.path.insert(0, str(path))
    import dataLoader
    import loss
    import model
    import tools

    return model, loss, dataLoader, tools


def tao_modules(model_mod, loss_mod, classes: int):
    encoder = model_mod.ECAPA_TDNN(C=CHANNELS)
    encoder.fc6, encoder.bn6 = nn.Linear(3072, EMB), nn.BatchNorm1d(EMB)  # his 192 -> 256
    head = loss_mod.AAMsoftmax(n_class=classes, m=0.2, s=30)
    head.weight = nn.Parameter(nn.init.xavier_normal_(torch.empty(classes, EMB), gain=1))
    return encoder, head


def key_map() -> dict[str, str]:
    """speakerid's ECAPATDNN state-dict keys -> his ECAPA_TDNN's."""
    m = {}
    bn_keys = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")

    def conv_relu_bn(ours, conv, bn):
        m.update({f"{ours}.0.{k}": f"{conv}.{k}" for k in ("weight", "bias")})
        m.update({f"{ours}.2.{k}": f"{bn}.{k}" for k in bn_keys})

    conv_relu_bn("stem", "conv1", "bn1")
    for b in range(3):
        ours, his = f"blocks.{b}.body", f"layer{b + 1}"
        conv_relu_bn(f"{ours}.0", f"{his}.conv1", f"{his}.bn1")
        for i in range(7):
            conv_relu_bn(f"{ours}.1.blocks.{i}", f"{his}.convs.{i}", f"{his}.bns.{i}")
        conv_relu_bn(f"{ours}.2", f"{his}.conv3", f"{his}.bn3")
        for i in (1, 3):
            m.update({f"{ours}.3.gate.{i}.{k}": f"{his}.se.se.{i}.{k}" for k in ("weight", "bias")})
    for ours, his in (("mfa.0", "layer4"), ("embedding", "fc6"), ("pooling.attention.0", "attention.0"),
                      ("pooling.attention.4", "attention.4")):
        m.update({f"{ours}.{k}": f"{his}.{k}" for k in ("weight", "bias")})
    for ours, his in (("pooling.attention.2", "attention.2"), ("pool_bn", "bn5"), ("emb_bn", "bn6")):
        m.update({f"{ours}.{k}": f"{his}.{k}" for k in bn_keys})
    return m


def ours_from(encoder: nn.Module) -> ECAPATDNN:
    ours = ECAPATDNN(channels=CHANNELS, emb_dim=EMB, attention_channels=256, unbiased_context_std=True)
    state = encoder.state_dict()
    ours.load_state_dict({k: state[v].clone() for k, v in key_map().items()})
    return ours


class Crops:
    """Random 2 s crops of the train list, wrap-padded as his loader does, with their labels."""

    def __init__(self, corpus: Path, seed: int):
        self.corpus = corpus
        self.lines = [line.split() for line in (corpus / "train_list.txt").read_text().splitlines()]
        self.labels = {s: i for i, s in enumerate(sorted({s for s, _ in self.lines}))}
        self.rng = random.Random(seed)

    def crop(self, path: str) -> np.ndarray:
        audio, _ = sf.read(str(self.corpus / "wav" / path))
        if len(audio) <= CROP:
            audio = np.pad(audio, (0, CROP - len(audio)), "wrap")
        start = int(self.rng.random() * (len(audio) - CROP))
        return audio[start:start + CROP]

    def batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        picked = self.rng.sample(self.lines, n)
        return (torch.from_numpy(np.stack([self.crop(p) for _, p in picked])),
                torch.tensor([self.labels[s] for s, _ in picked]))


def compare_steps(tao, crops: Crops, dtype: torch.dtype, steps: int) -> None:
    model_mod, loss_mod = tao[0], tao[1]
    torch.manual_seed(0)
    encoder, his_head = tao_modules(model_mod, loss_mod, CLASSES)
    ours, head = ours_from(encoder), AAMSoftmax(CLASSES, EMB, 0.2, 30.0)
    head.weight.data.copy_(his_head.weight.data)
    for module in (encoder, his_head, ours, head):
        module.to(dtype).train()
    fbank = Fbank().to(dtype)
    his_opt = torch.optim.Adam(list(encoder.parameters()) + list(his_head.parameters()), lr=1e-3, weight_decay=2e-5)
    our_opt = torch.optim.Adam(list(ours.parameters()) + list(head.parameters()), lr=1e-3, weight_decay=2e-5)
    print(f"step ({str(dtype).replace('torch.', '')}): his loss, ours, largest embedding difference")
    for step in range(steps):
        waves, labels = crops.batch(BATCH)
        waves = waves.to(dtype)
        his_opt.zero_grad()
        our_opt.zero_grad()
        his_emb = encoder(waves, aug=False)
        his_loss, _ = his_head(his_emb, labels)
        # His fbank is speakerid's (checked below); in float64 it feeds both, as speakerid's Fbank works in float32.
        with torch.no_grad():
            features = encoder.torchfbank(waves) + 1e-6
            features = features.log()
            features = features - features.mean(dim=-1, keepdim=True)
        our_emb = ours(features)
        our_loss, _ = head(our_emb, labels)
        his_loss.backward()
        our_loss.backward()
        his_opt.step()
        our_opt.step()
        print(f"  {step}: {his_loss.item():.9f} {our_loss.item():.9f} {(his_emb - our_emb).abs().max().item():.2e}")
    if dtype == torch.float32:
        waves, _ = crops.batch(8)
        with torch.no_grad():
            his = encoder.torchfbank(waves.float()) + 1e-6
            his = his.log()
            his = his - his.mean(dim=-1, keepdim=True)
            print(f"  fbank: largest difference {(his - fbank(waves.float())).abs().max().item():.2e}")


def compare_augmentation(tao, corpus: Path, count: int) -> None:
    loader_mod = tao[2]
    loader = loader_mod.train_loader(str(corpus / "train_list.txt"), str(corpus / "wav"), str(corpus / "musan"),
                                     str(corpus / "RIRS_NOISES" / "simulated_rirs"), 200)
    # His glob expects musan_split's extra folder level; the corpus has MUSAN's own <category>/<subset>/*.wav.
    loader.noiselist = {}
    for path in sorted(glob.glob(str(corpus / "musan" / "*" / "*" / "*.wav"))):
        loader.noiselist.setdefault(Path(path).parts[-3], []).append(path)
    random.seed(0)
    crops = Crops(corpus, seed=0)
    clean = [crops.crop(crops.rng.choice(crops.lines)[1])[None] for _ in range(count)]

    def db(ratio):
        return 10 * np.log10(ratio)

    his = {cat: [db(np.mean(c ** 2) / np.mean((loader.add_noise(c, cat) - c) ** 2)) for c in clean]
           for cat in ("speech", "noise")}
    his["reverb"] = [db(np.mean(loader.add_rev(c) ** 2) / np.mean(c ** 2)) for c in clean]
    categories = {"speech": NoiseCategory((13, 20), (3, 8), snr_per_file=True), "noise": NoiseCategory((0, 15), (1, 1))}
    x = torch.from_numpy(np.concatenate(clean)).float()
    x64 = x.double()
    torch.manual_seed(0)
    print(f"augmentation on {count} crops: quantiles 5/25/50/75/95 (dB)")
    for name, apply in (("speech", ["speech"]), ("noise", ["noise"]), ("reverb", ["reverb"])):
        module = build_noise_reverb({name: (1.0, apply)}, categories, corpus / "musan", corpus / "RIRS_NOISES", CROP,
                                    rir_max_seconds=1.0, power_floor=1e-4)
        out = module(x).double()
        ratio = (out.square().mean(1) / x64.square().mean(1) if name == "reverb"
                 else x64.square().mean(1) / (out - x64).square().mean(1))
        ours = db(ratio.numpy())
        what = {"speech": "babble SNR", "noise": "noise SNR", "reverb": "reverb level change"}[name]
        for who, values in (("his", his[name]), ("ours", ours)):
            q = " ".join(f"{v:6.2f}" for v in np.percentile(values, [5, 25, 50, 75, 95]))
            print(f"  {what:20s} {who:4s} mean {np.mean(values):6.2f}  {q}")


def compare_evaluation(tao, corpus: Path, checkpoint: Path) -> None:
    model_mod, loss_mod, tools = tao[0], tao[1], tao[3]
    state = load_checkpoint(checkpoint, map_location="cpu")["model"]
    ours = ECAPATDNN(channels=CHANNELS, emb_dim=EMB, attention_channels=256, unbiased_context_std=True)
    ours.load_state_dict(state)
    encoder, _ = tao_modules(model_mod, loss_mod, CLASSES)
    his_state = encoder.state_dict()
    his_state.update({his: state[k] for k, his in key_map().items()})
    encoder.load_state_dict(his_state)
    encoder.eval()
    trials = [line.split() for line in (corpus / "trials.txt").read_text().splitlines()]
    files = sorted({f for t in trials for f in t[1:]})
    his_emb = {}
    with torch.no_grad():
        for f in files:  # his eval_network, the full-utterance part
            audio, _ = sf.read(str(corpus / "wav" / f))
            his_emb[f] = F.normalize(encoder(torch.FloatTensor(audio[None]), aug=False), p=2, dim=1)[0]
    labels = [int(t[0]) for t in trials]
    his_scores = [float(his_emb[e] @ his_emb[t]) for _, e, t in trials]
    emb = extract_embeddings(EmbeddingExtractor(Fbank(), ours), corpus / "wav", files)
    index = {k: i for i, k in enumerate(emb.keys)}
    our_scores = np.array([float(emb.full[index[e]] @ emb.full[index[t]]) for _, e, t in trials])
    print(f"evaluation of {checkpoint}: EER his {tools.tuneThresholdfromScore(his_scores, labels, [1, 0.1])[1]:.2f}%,"
          f" speakerid {100 * compute_eer(our_scores, np.array(labels)):.2f}%; largest score difference "
          f"{np.abs(our_scores - np.array(his_scores)).max():.4f} (speakerid cuts batched files by <= 0.25%)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tao", type=Path, required=True, help="a checkout of TaoRuijie/ECAPA-TDNN")
    parser.add_argument("--corpus", type=Path, required=True, help="a folder in the layout of shared/data/arsc")
    parser.add_argument("--checkpoint", type=Path, help="a checkpoint of experiment=arsc_augment_taoruijie")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--crops", type=int, default=1500, help="crops for the augmentation statistics")
    args = parser.parse_args()
    torch.set_num_threads(1)
    tao = import_tao(args.tao)
    compare_steps(tao, Crops(args.corpus, seed=1), torch.float64, args.steps)
    compare_steps(tao, Crops(args.corpus, seed=1), torch.float32, args.steps)
    compare_augmentation(tao, args.corpus, args.crops)
    if args.checkpoint:
        compare_evaluation(tao, args.corpus, args.checkpoint)


if __name__ == "__main__":
    main()
