"""Crop reading from real wav/flac files written here: the crop is a contiguous piece of the file, only the
crop is read, short files wrap, and bad files are errors that name the file."""

import numpy as np
import pytest
import soundfile as sf

from speakerid.data import audio
from speakerid.data.audio import AudioError, read_crop, read_full, wrap_pad


def ramp_file(path, n, rate=16000, subtype="PCM_16"):
    samples = (np.arange(n) % 30000 - 15000).astype(np.int16)
    sf.write(str(path), samples, rate, subtype=subtype)
    return samples


@pytest.mark.parametrize("ext", ["wav", "flac"])
def test_crop_is_a_contiguous_piece_of_the_file(tmp_path, ext):
    path = tmp_path / f"a.{ext}"
    samples = ramp_file(path, 50_000)
    rng = np.random.default_rng(0)
    starts = set()
    for _ in range(20):
        crop = read_crop(path, 16_240, rng, dtype="int16")
        assert crop.dtype == np.int16 and crop.shape == (16_240,)
        start = int(np.flatnonzero(samples == crop[0])[0])
        np.testing.assert_array_equal(crop, samples[start:start + 16_240])
        starts.add(start)
    assert len(starts) > 10  # the offset is random
    f = read_crop(path, 16_240, np.random.default_rng(0), dtype="float32")
    i = read_crop(path, 16_240, np.random.default_rng(0), dtype="int16")
    np.testing.assert_allclose(f, i / 32768.0, atol=1e-7)


@pytest.mark.parametrize("subtype", ["FLOAT", "DOUBLE", "PCM_24", "PCM_U8"])
def test_int16_crops_of_float_and_other_pcm_files_hold_the_audio(tmp_path, subtype):
    """libsndfile reads integer PCM into int16 scaled, but float files' values unscaled (0.3 -> 0): an int16
    crop of a float WAV was silence. Every subtype now gives the float32 crop's samples, rounded."""
    t = np.arange(40_000) / 16000
    wave = (0.6 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    sf.write(str(tmp_path / "a.wav"), wave, 16000, subtype=subtype)
    f = read_crop(tmp_path / "a.wav", 16_240, np.random.default_rng(3), dtype="float32")
    i = read_crop(tmp_path / "a.wav", 16_240, np.random.default_rng(3), dtype="int16")
    assert i.dtype == np.int16 and np.abs(f).max() > 0.5
    step = 1 / 128 if subtype == "PCM_U8" else 1 / 32768  # the file's own resolution
    np.testing.assert_allclose(i / 32768.0, f, atol=step)


def test_an_int16_crop_of_a_float_file_louder_than_full_scale_is_scaled_not_clipped(tmp_path):
    """A float WAV may exceed [-1, 1]; clipping it to int16 changed the waveform (and the features) that the
    float32 crop of the same file gives. Scaled to a peak of 1, only its level differs."""
    t = np.arange(32_240) / 16000
    wave = (2.0 * np.sin(2 * np.pi * 220 * t) * np.sin(2 * np.pi * 3 * t)).astype(np.float32)  # peak 2
    sf.write(str(tmp_path / "loud.wav"), wave, 16000, subtype="FLOAT")
    f = read_crop(tmp_path / "loud.wav", 32_240, np.random.default_rng(3), dtype="float32")
    i = read_crop(tmp_path / "loud.wav", 32_240, np.random.default_rng(3), dtype="int16")
    peak = np.abs(f).max()
    assert peak > 1.9 and np.abs(i).max() >= 32_766
    np.testing.assert_allclose(i / 32768.0, f / peak, atol=1 / 32768)


def test_a_flac_whose_header_has_no_sample_count_is_named_at_the_header_check(tmp_path):
    """A FLAC encoded to a pipe leaves STREAMINFO's 36-bit total sample count 0: libsndfile then reports an
    unknown length and every seek fails. The header check names it instead of the first read failing."""
    sf.write(str(tmp_path / "piped.flac"), 0.1 * np.sin(np.arange(48_000) / 5.0), 16000, subtype="PCM_16")
    data = bytearray((tmp_path / "piped.flac").read_bytes())
    assert data[:4] == b"fLaC" and data[4] & 0x7F == 0  # the STREAMINFO block comes first
    field = 8 + 10  # after the block header (4 bytes after fLaC) and the block and frame sizes (10 bytes)
    packed = int.from_bytes(data[field:field + 8], "big") & ~((1 << 36) - 1)  # total samples: the low 36 bits
    data[field:field + 8] = packed.to_bytes(8, "big")
    (tmp_path / "piped.flac").write_bytes(bytes(data))
    assert sf.info(str(tmp_path / "piped.flac")).frames >= audio.UNKNOWN_LENGTH  # libsndfile: length unknown
    with pytest.raises(AudioError, match=r"piped\.flac: the header does not give the number of samples"):
        audio.length_at(tmp_path / "piped.flac", 16000)
    with pytest.raises(AudioError, match=r"piped\.flac: the header does not give the number of samples"):
        read_crop(tmp_path / "piped.flac", 16_000, np.random.default_rng(0))


def test_an_int16_crop_of_a_float_file_with_nan_names_the_file(tmp_path):
    wave = np.full(20_000, np.nan, dtype=np.float32)
    sf.write(str(tmp_path / "nan.wav"), wave, 16000, subtype="FLOAT")
    for dtype in ("int16", "float32"):
        with pytest.raises(AudioError, match="nan.wav: contains NaN or infinite samples"):
            read_crop(tmp_path / "nan.wav", 16_240, np.random.default_rng(0), dtype=dtype)


@pytest.fixture
def frames_requested(monkeypatch):
    """The frame counts asked of SoundFile.read, in order."""
    requested = []
    real_read = sf.SoundFile.read

    def spy(self, frames=-1, *args, **kwargs):
        requested.append(frames)
        return real_read(self, frames, *args, **kwargs)

    monkeypatch.setattr(sf.SoundFile, "read", spy)
    return requested


def test_only_the_crop_is_read(tmp_path, frames_requested):
    path = tmp_path / "long.flac"
    ramp_file(path, 16000 * 60)
    read_crop(path, 32_240, np.random.default_rng(1))
    assert frames_requested == [32_240]


def test_short_file_is_wrap_padded(tmp_path):
    path = tmp_path / "short.wav"
    samples = ramp_file(path, 1000)
    crop = read_crop(path, 2500, np.random.default_rng(0), dtype="int16")
    np.testing.assert_array_equal(crop, np.tile(samples, 3)[:2500])
    np.testing.assert_array_equal(wrap_pad(np.arange(3), 7), [0, 1, 2, 0, 1, 2, 0])


def test_wrong_sample_rate_is_an_error_unless_resampling(tmp_path):
    path = tmp_path / "r8k.wav"
    ramp_file(path, 8000 * 3, rate=8000)
    with pytest.raises(AudioError, match=r"r8k.wav: sample rate is 8000 Hz but data.sample_rate is 16000"):
        read_crop(path, 16_000, np.random.default_rng(0))
    crop = read_crop(path, 16_000, np.random.default_rng(0), resample=True)
    assert crop.shape == (16_000,)
    assert read_full(path, resample=True).shape == (48_000,)


def test_tone_survives_resampling(tmp_path):
    path = tmp_path / "tone.wav"
    t = np.arange(44100 * 2) / 44100
    sf.write(str(path), 0.5 * np.sin(2 * np.pi * 440 * t), 44100)
    x = read_full(path, 16000, resample=True)
    peak = np.argmax(np.abs(np.fft.rfft(x))) * 16000 / len(x)
    assert peak == pytest.approx(440, abs=1)


def test_bad_files_name_the_file(tmp_path):
    empty = tmp_path / "empty.wav"
    sf.write(str(empty), np.zeros(0, dtype=np.int16), 16000)
    with pytest.raises(AudioError, match="empty.wav: audio file is empty"):
        read_crop(empty, 100, np.random.default_rng(0))
    garbage = tmp_path / "garbage.flac"
    garbage.write_bytes(b"this is not audio at all" * 10)
    with pytest.raises(AudioError, match="garbage.flac: cannot read audio"):
        read_crop(garbage, 100, np.random.default_rng(0))
    with pytest.raises(AudioError, match="garbage.flac: cannot read audio"):
        read_full(garbage)
    stereo = tmp_path / "stereo.wav"
    sf.write(str(stereo), np.zeros((1000, 2)), 16000)
    with pytest.raises(AudioError, match="stereo.wav: expected mono audio, got 2 channels"):
        read_crop(stereo, 100, np.random.default_rng(0))
    with pytest.raises(AudioError, match="missing.wav"):
        audio.audio_info(tmp_path / "missing.wav")


def test_full_read_up_to_max_samples_reads_only_those(tmp_path, frames_requested):
    path = tmp_path / "long.flac"
    samples = ramp_file(path, 16000 * 30)
    r8k = tmp_path / "r8k.wav"
    ramp_file(r8k, 8000 * 3, rate=8000)
    head = read_full(path, max_samples=5000)
    np.testing.assert_array_equal(head, samples[:5000] / np.float32(32768))
    resampled = read_full(r8k, 16000, resample=True, max_samples=5001)
    assert frames_requested == [5000, 2501] and resampled.shape == (5001,)  # ceil(5001 * 8000 / 16000) at 8 kHz
    assert read_full(path, max_samples=10**9).shape == (16000 * 30,)


def test_mono_info_reads_the_header_and_names_bad_files(tmp_path):
    ramp_file(tmp_path / "r8k.wav", 8000 * 3, rate=8000)
    assert audio.mono_info(tmp_path / "r8k.wav") == (24000, 8000)  # any rate: the caller resamples
    sf.write(str(tmp_path / "stereo.wav"), np.zeros((1000, 2)), 16000)
    with pytest.raises(AudioError, match="stereo.wav: expected mono audio, got 2 channels"):
        audio.mono_info(tmp_path / "stereo.wav")
    sf.write(str(tmp_path / "empty.wav"), np.zeros(0, dtype=np.int16), 16000)
    with pytest.raises(AudioError, match="empty.wav: audio file is empty"):
        audio.mono_info(tmp_path / "empty.wav")


# libsndfile codecs that cannot seek: GSM 6.10, G.721 and NMS ADPCM in WAV, G.723 in AU say so (seekable()
# false); DWVW in AIFF says it can but seeks only back to the start.
UNSEEKABLE = [("WAV", "GSM610", "WAV GSM 6.10"), ("WAV", "G721_32", "WAV 32kbs G721 ADPCM"),
              ("WAV", "NMS_ADPCM_16", "WAV 16kbs NMS ADPCM"), ("AU", "G723_24", "AU 24kbs G723 ADPCM")]


@pytest.mark.parametrize("container,subtype,codec", UNSEEKABLE)
def test_a_codec_that_cannot_seek_is_named_for_crops_but_read_whole(tmp_path, container, subtype, codec):
    """A crop of a GSM 6.10 file seeks, and libsndfile refuses: training stopped at the first crop drawn from
    it although every header check had passed. The header check for crops now names the codec; evaluation,
    which reads whole files, reads it (it failed too: soundfile reads to the end only of seekable files)."""
    path = tmp_path / f"phone.{container.lower()}"
    t = np.arange(3 * 16000) / 16000
    sf.write(str(path), 0.4 * np.sin(2 * np.pi * 300 * t), 16000, format=container, subtype=subtype)
    with sf.SoundFile(str(path)) as f:
        decoded = f.read(f.frames, dtype="float32")  # the decoder's own samples, read from the start
    assert len(decoded) == 48_000
    np.testing.assert_array_equal(read_full(path), decoded)
    np.testing.assert_array_equal(read_full(path, max_samples=1000), decoded[:1000])
    assert audio.length_at(path, 16000) == 48_000  # evaluation's header pass takes it
    message = rf"phone\.{container.lower()}: its codec \({codec}\) cannot seek, so training crops cannot be read"
    with pytest.raises(AudioError, match=message):
        read_crop(path, 16_000, np.random.default_rng(0))
    with pytest.raises(AudioError, match=message):
        audio.length_at(path, 16000, crops=True)


def test_dwvw_which_seeks_only_to_the_start_is_named_for_crops(tmp_path):
    sf.write(str(tmp_path / "old.aiff"), np.zeros(20_000), 16000, format="AIFF", subtype="DWVW_16")
    assert sf.SoundFile(str(tmp_path / "old.aiff")).seekable()  # libsndfile's word for it
    with pytest.raises(AudioError, match=r"old\.aiff: its codec \(AIFF 16 bit DWVW\) cannot seek"):
        audio.length_at(tmp_path / "old.aiff", 16000, crops=True)


def test_pcm_flac_and_compressed_codecs_that_seek_are_taken_for_crops(tmp_path):
    for name, fmt, subtype in [("a.wav", "WAV", "PCM_16"), ("a.flac", "FLAC", "PCM_16"),
                               ("ima.wav", "WAV", "IMA_ADPCM"), ("a.ogg", "OGG", "VORBIS")]:
        sf.write(str(tmp_path / name), 0.1 * np.sin(np.arange(40_000) / 7.0), 16000, format=fmt, subtype=subtype)
        n = audio.length_at(tmp_path / name, 16000, crops=True)
        assert n >= 40_000 and read_crop(tmp_path / name, 16_000, np.random.default_rng(0)).shape == (16_000,)


def test_resampling_builds_each_filter_once_and_keeps_torchaudios_samples(monkeypatch):
    """torchaudio.functional.resample built its sinc filter on every call (most of the cost of resampling a
    crop); a filter is now kept per rate pair, computed as before, so every usual rate gives the same samples."""
    import torch
    import torchaudio
    import torchaudio.functional as AF

    built = []
    real = torchaudio.transforms.Resample

    def counting(*args, **kwargs):
        built.append(args[:2])
        return real(*args, **kwargs)

    monkeypatch.setattr(torchaudio.transforms, "Resample", counting)
    audio._resampler.cache_clear()
    rng = np.random.default_rng(0)
    for rate in (8000, 11025, 22050, 32000, 44100, 48000):
        for _ in range(3):
            x = rng.uniform(-0.5, 0.5, int(2.1 * rate)).astype(np.float32)
            np.testing.assert_array_equal(audio.resample_audio(x, rate, 16000),
                                          AF.resample(torch.from_numpy(x), rate, 16000).numpy())
    assert built == [(rate, 16000) for rate in (8000, 11025, 22050, 32000, 44100, 48000)]
    audio._resampler.cache_clear()


def test_a_rate_too_odd_to_resample_is_refused_at_the_header_naming_the_file_and_rate(tmp_path):
    """11127 Hz and 16000 Hz are coprime: torchaudio's filter for them has 11127 x 16000 coefficients, which
    took 10 s and 3.4 GB for every crop read (8 loader workers: out of memory). The header refuses it."""
    odd = tmp_path / "mac.wav"
    sf.write(str(odd), np.zeros(11127 * 2), 11127)
    message = (r"mac\.wav: sample rate 11127 Hz cannot be resampled to 16000 Hz on the fly: the ratio reduces to "
               r"11127:16000")
    with pytest.raises(AudioError, match=message) as error:
        audio.length_at(odd, 16000, resample=True)
    assert "convert the file to 16000 Hz first" in str(error.value) and "--sample-rate 16000" in str(error.value)
    with pytest.raises(AudioError, match=message):
        read_crop(odd, 16_000, np.random.default_rng(0), resample=True)
    with pytest.raises(AudioError, match=message):
        read_full(odd, resample=True)
    with pytest.raises(AudioError, match=r"mac\.wav: sample rate is 11127 Hz but data.sample_rate is 16000 Hz"):
        audio.length_at(odd, 16000)  # without resampling: the usual error
    sf.write(str(tmp_path / "ntsc.wav"), np.zeros(47952), 47952)
    assert audio.length_at(tmp_path / "ntsc.wav", 16000, resample=True) == 16000
    assert audio.resample_product(11127, 16000) == 11127 * 16000
    assert audio.resample_product(44100, 16000) == 441 * 160  # gcd 100
    assert audio.resample_product(47952, 16000) == 2997 * 1000  # gcd 16
    for rate in (8000, 11025, 22050, 32000, 44100, 47952, 48000):
        assert audio.unresamplable(rate, 16000) is None
