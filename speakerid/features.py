"""Log-Mel filterbank features and SpecAugment, computed in batch on the training device."""

from __future__ import annotations

import torch
import torchaudio
from torch import nn

from speakerid.models.lengths import frame_mask, masked_mean, zero_padding


def num_frames(num_samples: int, hop_length: int = 160) -> int:
    """Frames produced by `Fbank` for a waveform of `num_samples` (centred STFT)."""
    return 1 + num_samples // hop_length


def samples_for_frames(frames: int, hop_length: int = 160, win_length: int = 400) -> int:
    """Waveform length that gives `frames` full analysis windows (TaoRuijie: frames*160 + 240)."""
    return frames * hop_length + (win_length - hop_length)


class Fbank(nn.Module):
    """80-band log-Mel fbank as in TaoRuijie/ECAPA-TDNN: pre-emphasis 0.97, Hamming window, 20-7600 Hz,
    log(x + 1e-6), mean subtraction over time. waveform [batch, samples] -> features [batch, n_mels, frames].
    """

    def __init__(
        self,
        sample_rate: int = 16000,
        n_mels: int = 80,
        n_fft: int = 512,
        win_length: int = 400,
        hop_length: int = 160,
        f_min: float = 20.0,
        f_max: float = 7600.0,
        preemphasis: float = 0.97,
        mean_norm: bool = True,
    ):
        super().__init__()
        self.n_mels = n_mels
        self.hop_length = hop_length
        self.win_length = win_length
        self.mean_norm = mean_norm
        # y[t] = x[t] - a * x[t-1], as a convolution so it runs batched on the device.
        self.register_buffer("preemphasis_kernel", torch.tensor([[[-preemphasis, 1.0]]]), persistent=False)
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=sample_rate,
            n_fft=n_fft,
            win_length=win_length,
            hop_length=hop_length,
            f_min=f_min,
            f_max=f_max,
            window_fn=torch.hamming_window,
            n_mels=n_mels,
        )

    def forward(self, waveform: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """`lengths` [batch]: the samples of each waveform of a zero-padded batch. Each then gets the features
        it has alone, zero past its own num_frames(length) frames (speakerid.models.lengths)."""
        if waveform.dim() != 2:
            raise ValueError(f"Fbank expects waveforms [batch, samples], got {tuple(waveform.shape)}")
        # Features are always computed in float32: log-Mel energies span a range bf16 cannot hold.
        with torch.autocast(device_type=waveform.device.type, enabled=False):
            x = waveform.float().unsqueeze(1)
            x = nn.functional.pad(x, (1, 0), mode="reflect")
            x = nn.functional.conv1d(x, self.preemphasis_kernel).squeeze(1)
            if lengths is None:
                x = torch.log(self.mel(x) + 1e-6)
                return x - x.mean(dim=-1, keepdim=True) if self.mean_norm else x
            x = torch.log(self.mel.mel_scale(self._centred_spectrogram(x, lengths)) + 1e-6)
            mask = frame_mask(num_frames(lengths, self.hop_length), x.shape[-1])
            if self.mean_norm:
                x = x - masked_mean(x, mask)
            return zero_padding(x, mask)

    def _centred_spectrogram(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The power spectrogram of each row as its own first lengths[i] samples give it: the STFT centres
        frames by reflecting the signal at both ends (torch.stft, center=True), and a padded row's end is
        its own. So each row is reflected at its own end here, and the frames taken as they are."""
        spectrogram = self.mel.spectrogram
        pad = spectrogram.n_fft // 2
        centred = nn.functional.pad(nn.functional.pad(x.unsqueeze(1), (pad, 0), mode="reflect"), (0, pad)).squeeze(1)
        k = torch.arange(pad, device=x.device)
        ends = lengths.to(x.device).unsqueeze(1)
        # x[n + k] reflects to x[n - 2 - k] (the end sample itself is not repeated), at centred index n + pad + k.
        reflection = x.gather(1, (ends - 2 - k).clamp(min=0))
        centred = centred.scatter(1, ends + pad + k, reflection)
        return torchaudio.functional.spectrogram(
            centred, pad=0, window=spectrogram.window, n_fft=spectrogram.n_fft, hop_length=spectrogram.hop_length,
            win_length=spectrogram.win_length, power=spectrogram.power, normalized=spectrogram.normalized,
            center=False, onesided=spectrogram.onesided)


class SpecAugment(nn.Module):
    """One frequency mask (width 0..freq_mask) and one time mask (width 0..time_mask) per utterance,
    drawn independently for each item of the batch; identity in eval mode."""

    def __init__(self, freq_mask: int = 8, time_mask: int = 10):
        super().__init__()
        self.freq_mask = freq_mask
        self.time_mask = time_mask

    @staticmethod
    def _mask(x: torch.Tensor, max_width: int, dim: int) -> torch.Tensor:
        batch, size = x.shape[0], x.shape[dim]
        width = torch.randint(0, max_width + 1, (batch, 1), device=x.device)
        start = (torch.rand(batch, 1, device=x.device) * (size - width + 1).clamp(min=1)).long()
        positions = torch.arange(size, device=x.device).unsqueeze(0)
        mask = (positions >= start) & (positions < start + width)  # [batch, size]
        mask = mask.unsqueeze(2) if dim == 1 else mask.unsqueeze(1)
        return x.masked_fill(mask, 0.0)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return features
        features = self._mask(features, self.freq_mask, dim=1)
        return self._mask(features, self.time_mask, dim=2)
