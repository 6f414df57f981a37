"""Fbank against an independent float64 NumPy re-derivation (pre-emphasis, centred STFT, Hamming window,
HTK mel filters 20-7600 Hz, log, mean normalisation); SpecAugment masks."""

import numpy as np
import torch

from speakerid.features import Fbank, SpecAugment, num_frames, samples_for_frames


def numpy_fbank(x, sr=16000, n_fft=512, win=400, hop=160, n_mels=80, fmin=20.0, fmax=7600.0):
    y = np.empty_like(x)
    y[0] = x[0] - 0.97 * x[1]            # reflect padding of one sample on the left
    y[1:] = x[1:] - 0.97 * x[:-1]
    padded = np.pad(y, n_fft // 2, mode="reflect")
    window = np.zeros(n_fft)
    offset = (n_fft - win) // 2
    window[offset:offset + win] = 0.54 - 0.46 * np.cos(2 * np.pi * np.arange(win) / win)  # periodic Hamming
    frames = 1 + len(y) // hop
    spec = np.stack([np.abs(np.fft.rfft(padded[i * hop:i * hop + n_fft] * window)) ** 2 for i in range(frames)], 1)

    def mel(f):
        return 2595.0 * np.log10(1.0 + f / 700.0)

    def hz(m):
        return 700.0 * (10 ** (m / 2595.0) - 1.0)

    edges = hz(np.linspace(mel(fmin), mel(fmax), n_mels + 2))
    freqs = np.linspace(0, sr // 2, n_fft // 2 + 1)
    bank = np.zeros((n_mels, len(freqs)))
    for i in range(n_mels):
        rising = (freqs - edges[i]) / (edges[i + 1] - edges[i])
        falling = (edges[i + 2] - freqs) / (edges[i + 2] - edges[i + 1])
        bank[i] = np.maximum(0, np.minimum(rising, falling))
    logmel = np.log(bank @ spec + 1e-6)
    return logmel - logmel.mean(axis=1, keepdims=True)


def test_fbank_matches_numpy_derivation():
    rng = np.random.default_rng(0)
    n = samples_for_frames(200)
    t = np.arange(n) / 16000
    x = 0.1 * rng.standard_normal(n) + 0.3 * np.sin(2 * np.pi * 220 * t) + 0.2 * np.sin(2 * np.pi * 3100 * t)
    ours = Fbank()(torch.from_numpy(x).float().unsqueeze(0))[0].double().numpy()
    ref = numpy_fbank(x)
    assert ours.shape == ref.shape == (80, 202)
    np.testing.assert_allclose(ours, ref, atol=2e-3)


def test_frame_arithmetic():
    assert samples_for_frames(200) == 32_240
    assert num_frames(32_240) == 202
    assert Fbank()(torch.zeros(2, 32_240) + 0.01).shape == (2, 80, 202)


def test_specaugment_masks_one_band_and_one_span_per_item():
    torch.manual_seed(0)
    aug = SpecAugment(freq_mask=8, time_mask=10).train()
    x = torch.rand(64, 80, 200) + 1.0  # never zero, so zeros are masks
    out = aug(x)
    zero = out == 0
    for b in range(64):
        bands = torch.nonzero(zero[b].all(dim=1)).flatten()
        spans = torch.nonzero(zero[b].all(dim=0)).flatten()
        assert len(bands) <= 8 and len(spans) <= 10
        if len(bands):
            assert (bands.diff() == 1).all()
        if len(spans):
            assert (spans.diff() == 1).all()
        # every zero lies in the masked band or span
        covered = torch.zeros(80, 200, dtype=torch.bool)
        covered[bands, :] = True
        covered[:, spans] = True
        assert (zero[b] <= covered).all()
    widths = [int(zero[b].all(dim=1).sum()) for b in range(64)]
    assert len(set(widths)) > 3  # widths drawn per item
    torch.testing.assert_close(aug.eval()(x), x)


def test_fbank_of_a_padded_batch_with_lengths_equals_each_waveform_alone():
    """Each row is reflected at its own end for the centred STFT and mean-normalised over its own frames;
    the frames past its end are zero. Lengths around the hop and window cut frames at every phase."""
    torch.manual_seed(0)
    fbank = Fbank()
    lengths = [32000, 31999, 16160, 16159, 4000, 401, 300]
    batch = torch.zeros(len(lengths), max(lengths))
    waves = [torch.randn(n) * (1 + i) for i, n in enumerate(lengths)]
    for row, wave in zip(batch, waves):
        row[:len(wave)] = wave
    batch[1, 31999:] = 5.0  # what lies past a row's end does not matter
    features = fbank(batch, torch.tensor(lengths))
    assert features.shape == (len(lengths), 80, num_frames(max(lengths)))
    for row, wave in enumerate(waves):
        alone = fbank(wave[None])[0]
        frames = num_frames(len(wave))
        assert alone.shape[1] == frames
        torch.testing.assert_close(features[row, :, :frames], alone, rtol=0, atol=1e-5)
        assert (features[row, :, frames:] == 0).all()
