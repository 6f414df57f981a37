"""Data preparation as a user runs it: Kaldi data directories to train lists, VoxCeleb2 m4a to wav/flac."""

import logging
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from conftest import REPO, speakerid_cli
from speakerid.data.check import check_data
from speakerid.data.lists import read_train_list, warn_duplicate_paths
from speakerid.data.prepare import (
    KaldiFormatError,
    conversion_jobs,
    read_kaldi_data_dir,
    scan_voxceleb_folder,
    write_real_rirs,
)

FFMPEG = shutil.which("ffmpeg")
requires_ffmpeg = pytest.mark.skipif(FFMPEG is None, reason="ffmpeg is not installed (apt-get install ffmpeg)")


def prepare(*args, env=None, cwd=None):
    """`speakerid prepare ...`, from any folder (cwd); in this process unless it needs its own environment."""
    if env is None:
        previous = os.getcwd()
        os.chdir(cwd or previous)
        try:
            return speakerid_cli("prepare", *args)
        finally:
            os.chdir(previous)
    env = {**env, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "speakerid.cli.main", "prepare", *map(str, args)], cwd=cwd or REPO,
                          capture_output=True, text=True, timeout=300, env=env)


def kaldi_dir(tmp_path):
    audio = tmp_path / "audio"
    for rel in ["spkB/u3.wav", "spkA/sess1/u1.flac", "spkA/sess2/u2.wav"]:
        (audio / rel).parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(audio / rel), np.zeros(160, dtype=np.int16), 16000)
    data = tmp_path / "data" / "train"
    data.mkdir(parents=True)
    # Absolute and relative (to the Kaldi recipe folder, tmp_path) paths; ids in any order.
    (data / "wav.scp").write_text(f"u3 {audio}/spkB/u3.wav\nu1 audio/spkA/sess1/u1.flac\n\n"
                                  f"u2 {audio}/spkA/sess2/u2.wav\n")
    (data / "utt2spk").write_text("u1 spkA\nu2 spkA\nu3 spkB\n")
    return data, audio


def test_kaldi_data_dir_becomes_a_train_list(tmp_path):
    data, audio = kaldi_dir(tmp_path)
    out = tmp_path / "list.txt"
    proc = prepare("--kaldi", data, "--out", out, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert out.read_text() == ("spkA spkA/sess1/u1.flac\nspkA spkA/sess2/u2.wav\nspkB spkB/u3.wav\n")
    assert f"data.train_root={audio}" in proc.stdout and "3 utterances of 2 speakers" in proc.stdout
    listed = read_train_list(out, audio)  # the list the trainer reads, with every file present
    assert listed.speaker_ids == ["spkA", "spkB"] and all((audio / p).is_file() for p in listed.paths)

    proc = prepare("--kaldi", data, "--out", out, "--root", tmp_path, "--overwrite", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert out.read_text().splitlines()[0] == "spkA audio/spkA/sess1/u1.flac"


@pytest.mark.parametrize("wav_scp, utt2spk, message", [
    ("u1 sox a.wav -t wav - |\n", "u1 s\n", r"wav.scp:1: .* is a command"),
    ("u1 a.wav\nu2 b.wav\n", "u1 s\n", r"wav.scp:2: utterance 'u2' has no line in utt2spk"),
    ("u1 a.wav\nu1 b.wav\n", "u1 s\n", r"wav.scp:2: utterance id 'u1' repeats line 1"),
    ("u1 a.wav\n", "u1 s\nu9 s\n", r"utt2spk: 1 utterances have no audio in wav.scp, e.g. u9"),
    ("u1\n", "u1 s\n", r"wav.scp:1: expected '<utterance-id> <audio path>'"),
    ("u1 a.wav\n", "u1 s t\n", r"utt2spk:1: expected one speaker id"),
])
def test_kaldi_errors_name_file_and_line(tmp_path, wav_scp, utt2spk, message):
    (tmp_path / "wav.scp").write_text(wav_scp)
    (tmp_path / "utt2spk").write_text(utt2spk)
    with pytest.raises(KaldiFormatError, match=message):
        read_kaldi_data_dir(tmp_path, base=tmp_path)


def test_kaldi_files_with_a_byte_order_mark_are_read(tmp_path):
    """A BOM (as Windows editors write) is not part of the first utterance id."""
    put_audio(tmp_path, "a/1.wav", "b/2.wav")
    (tmp_path / "wav.scp").write_bytes("\ufeffu1 a/1.wav\nu2 b/2.wav\n".encode())
    (tmp_path / "utt2spk").write_bytes("\ufeffu2 spkB\nu1 spkA\n".encode())
    assert read_kaldi_data_dir(tmp_path, base=tmp_path) == [("spkA", str(tmp_path / "a/1.wav")),
                                                             ("spkB", str(tmp_path / "b/2.wav"))]


def test_kaldi_archive_offsets_and_missing_files_are_refused_with_their_lines(tmp_path):
    """`file.ark:1234` is a byte offset into a Kaldi archive, not a path; a list naming it, or files that are
    not there, used to be written (exit 0) and stopped training later."""
    data, audio = kaldi_dir(tmp_path)
    (data / "wav.scp").write_text(f"u3 {audio}/spkB/u3.wav\nu1 /data/raw.ark:1234\nu2 {audio}/spkA/sess2/u2.wav\n")
    out = tmp_path / "list.txt"
    proc = prepare("--kaldi", data, "--out", out, cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and not out.exists()
    assert f"{data / 'wav.scp'}:2: '/data/raw.ark:1234' is a byte offset into an archive" in proc.stderr
    (data / "wav.scp").write_text("u3 audio/spkB/u3.wav\nu1 audio/spkA/sess1/u1.flac\nu2 audio/spkA/sess2/u2.wav\n")
    assert prepare("--kaldi", data, "--out", out, cwd=tmp_path).returncode == 0  # relative to the folder run in
    (data / "wav.scp").write_text("u3 audio/spkB/u3.wav\nu1 gone/1.wav\nu2 audio/spkA/sess2/u2.wav\n")
    proc = prepare("--kaldi", data, "--out", out, "--overwrite", cwd=audio)  # the wrong folder: none is there
    assert proc.returncode == 1 and f"{data / 'wav.scp'}: 3 audio files do not exist" in proc.stderr
    assert f"\n  wav.scp:1: {audio / 'audio/spkB/u3.wav'}\n  wav.scp:2: {audio / 'gone/1.wav'}\n" in proc.stderr
    with pytest.raises(KaldiFormatError, match=r"1 audio files do not exist .*\n  wav.scp:2: .*gone/1.wav$"):
        read_kaldi_data_dir(data, base=tmp_path)


def test_kaldi_segments_are_refused(tmp_path):
    for name in ("wav.scp", "utt2spk", "segments"):
        (tmp_path / name).write_text("u1 x\n")
    with pytest.raises(KaldiFormatError, match="segments"):
        read_kaldi_data_dir(tmp_path)


def test_conversion_says_clearly_when_ffmpeg_is_missing(tmp_path):
    (tmp_path / "src" / "id1" / "v").mkdir(parents=True)
    (tmp_path / "src" / "id1" / "v" / "00001.m4a").write_bytes(b"")
    empty_path = tmp_path / "bin"
    empty_path.mkdir()
    env = {**os.environ, "PATH": str(empty_path)}
    proc = prepare("--root", tmp_path / "src", "--convert-to", tmp_path / "dst", "--out", tmp_path / "list.txt",
                   env=env)
    assert proc.returncode == 1
    assert "ffmpeg was not found on PATH" in proc.stderr and "apt-get install ffmpeg" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "dst").exists()


def make_m4a(path, seconds, frequency, rate=44100):
    """An AAC m4a like VoxCeleb2's (made with ffmpeg from a stereo tone at another sample rate)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * rate)) / rate
    tone = 0.3 * np.sin(2 * np.pi * frequency * t)
    wav = path.with_suffix(".src.wav")
    sf.write(str(wav), np.stack([tone, tone], axis=1), rate)
    subprocess.run([FFMPEG, "-nostdin", "-loglevel", "error", "-y", "-i", str(wav), "-c:a", "aac", str(path)],
                   check=True)
    wav.unlink()


@requires_ffmpeg
@pytest.mark.parametrize("fmt", ["wav", "flac"])
def test_m4a_conversion_is_parallel_resumable_and_correct(tmp_path, fmt):
    src, dst = tmp_path / "aac", tmp_path / "out"
    make_m4a(src / "id1" / "vidA" / "00001.m4a", 1.5, 440.0)
    make_m4a(src / "id2" / "vidB" / "00001.m4a", 2.0, 1000.0)
    (src / "id2" / "vidB" / "00002.m4a").write_bytes(b"not an m4a file")
    listed = tmp_path / "train_list.txt"
    proc = prepare("--root", src, "--convert-to", dst, "--format", fmt, "--workers", "2", "--out", listed)
    assert proc.returncode == 1  # one broken input
    assert "2 converted, 0 already there, 1 failed" in proc.stdout
    assert "id2/vidB/00002.m4a" in proc.stderr and "run the same command again" in proc.stderr
    assert not listed.exists()  # a list naming files that are not there would stop training later
    assert not (dst / "id2" / "vidB" / f"00002.{fmt}").exists()
    assert not list(dst.rglob("*.part"))

    for rel, seconds, frequency in [("id1/vidA/00001", 1.5, 440.0), ("id2/vidB/00001", 2.0, 1000.0)]:
        audio, rate = sf.read(str(dst / f"{rel}.{fmt}"))
        info = sf.info(str(dst / f"{rel}.{fmt}"))
        assert rate == 16000 and info.channels == 1 and info.subtype == "PCM_16"
        assert len(audio) / rate == pytest.approx(seconds, abs=0.03)
        spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
        assert np.fft.rfftfreq(len(audio), 1 / rate)[np.argmax(spectrum)] == pytest.approx(frequency, abs=2)

    # Resumable: finished files are skipped; a stale partial file from an interrupted run is redone.
    (dst / "id1" / "vidA" / f"00001.{fmt}").unlink()
    (dst / "id1" / "vidA" / f".00001.{fmt}.part").write_bytes(b"half")
    (src / "id2" / "vidB" / "00002.m4a").unlink()
    proc = prepare("--root", src, "--convert-to", dst, "--format", fmt, "--out", listed)
    assert proc.returncode == 0, proc.stderr
    assert "1 converted, 1 already there, 0 failed" in proc.stdout
    assert listed.read_text() == f"id1 id1/vidA/00001.{fmt}\nid2 id2/vidB/00001.{fmt}\n"
    assert f"data.train_list={listed} data.train_root={dst}" in proc.stdout
    assert sf.info(str(dst / "id1" / "vidA" / f"00001.{fmt}")).frames == pytest.approx(24000, abs=500)
    assert not list(dst.rglob("*.part"))


def test_segment_list_has_one_row_per_whole_segment_and_never_replaces_a_list(tmp_path, caplog):
    # durations by hand: 2.9 s -> 1 row (at least one), 3.0 s -> 1, 6.0 s -> 2, 9.7 s -> 3
    root = tmp_path / "wav"
    durations = {"a/s1/1.wav": 2.9, "a/s1/2.wav": 3.0, "b/s1/1.flac": 6.0, "b/s2/1.wav": 9.7}
    for rel, seconds in durations.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(root / rel), np.zeros(round(seconds * 16000), dtype=np.int16), 16000)
    (tmp_path / "train.txt").write_text("a a/s1/1.wav\na a/s1/2.wav\nb b/s1/1.flac\nb b/s2/1.wav\n")
    proc = prepare("--list", tmp_path / "train.txt", "--root", root, "--out", tmp_path / "3s.txt",
                   "--segment-seconds", 3)
    assert proc.returncode == 0, proc.stderr
    rows = "a a/s1/1.wav\na a/s1/2.wav\nb b/s1/1.flac\nb b/s1/1.flac\nb b/s2/1.wav\nb b/s2/1.wav\nb b/s2/1.wav\n"
    assert (tmp_path / "3s.txt").read_text() == (
        "# speakerid prepare --segment-seconds 3: each utterance is listed once per whole 3 s of it, at least once; "
        "the repeated lines are intended\n" + rows)
    assert "7 rows (one per 3 s) of 4 utterances of 2 speakers" in proc.stdout
    # the repeats are the recipe: neither training nor check-data asks to remove them, as they do for a list
    # that repeats lines without saying so
    (tmp_path / "repeats.txt").write_text(rows)
    with caplog.at_level(logging.WARNING, logger="speakerid"):
        assert warn_duplicate_paths("3s.txt", read_train_list(tmp_path / "3s.txt", root)) == {
            "b/s1/1.flac": 2, "b/s2/1.wav": 3}
        assert not caplog.records
        warn_duplicate_paths("repeats.txt", read_train_list(tmp_path / "repeats.txt", root))
        assert "Remove the repeated lines" in caplog.records[0].getMessage()
    assert not any(p.kind == "duplicate" for p in check_data(tmp_path / "3s.txt", root, workers=2).problems)
    assert any(p.kind == "duplicate" for p in check_data(tmp_path / "repeats.txt", root, workers=2).problems)
    proc = prepare("--list", tmp_path / "3s.txt", "--root", root, "--out", tmp_path / "9s.txt", "--segment-seconds", 3)
    assert proc.returncode == 1 and "already lists each utterance once per segment" in proc.stderr
    # the same from the folder itself
    proc = prepare("--root", root, "--out", tmp_path / "3s_scan.txt", "--segment-seconds", 3)
    assert proc.returncode == 0 and sorted((tmp_path / "3s_scan.txt").read_text().splitlines()) == \
        sorted((tmp_path / "3s.txt").read_text().splitlines()), proc.stderr

    # an existing list is never replaced without --overwrite, not even the one being read
    before = (tmp_path / "train.txt").read_text()
    proc = prepare("--list", tmp_path / "train.txt", "--root", root, "--out", tmp_path / "train.txt",
                   "--segment-seconds", 3)
    assert proc.returncode == 1 and "already exists; pass --overwrite" in proc.stderr
    assert (tmp_path / "train.txt").read_text() == before
    proc = prepare("--root", root, "--out", tmp_path / "3s.txt", "--overwrite")
    assert proc.returncode == 0 and len((tmp_path / "3s.txt").read_text().splitlines()) == 4, proc.stderr
    # a bad value and a bad line are named
    assert "--segment-seconds must be positive" in prepare("--root", root, "--out", tmp_path / "x.txt",
                                                           "--segment-seconds", 0).stderr
    (tmp_path / "bad.txt").write_text("a a/s1/1.wav\nb\n")
    proc = prepare("--list", tmp_path / "bad.txt", "--root", root, "--out", tmp_path / "x.txt", "--segment-seconds", 3)
    assert proc.returncode == 1 and "bad.txt:2" in proc.stderr and not (tmp_path / "x.txt").exists()


def test_real_rirs_are_first_channels_rerunnable_and_never_replace_another_file(tmp_path):
    """`prepare --real-rirs`: the files rir_list names, first channel, mono float; a second run keeps what it
    wrote; a different file of the same name in --out is refused and left as it was."""
    folder = tmp_path / "RIRS_NOISES/real_rirs_isotropic_noises"
    folder.mkdir(parents=True)
    stereo = np.stack([np.linspace(1, 0, 800), np.linspace(-0.5, 0, 800)], axis=1).astype(np.float32)
    sf.write(folder / "room_a_rir.wav", stereo, 16000, subtype="FLOAT")
    sf.write(folder / "room_b_rir.wav", stereo[:, ::-1].copy(), 8000, subtype="FLOAT")
    sf.write(folder / "room_a_noise.wav", np.ones(800, np.float32) * 0.1, 16000, subtype="FLOAT")  # not listed
    (folder / "rir_list").write_text("--rir-id a --room-id a RIRS_NOISES/real_rirs_isotropic_noises/room_a_rir.wav\n"
                                     "--rir-id b --room-id b RIRS_NOISES/real_rirs_isotropic_noises/room_b_rir.wav\n")
    out = tmp_path / "mono"
    proc = prepare("--real-rirs", tmp_path / "RIRS_NOISES", "--out", out)
    assert proc.returncode == 0 and f"{out}: 2 mono RIRs" in proc.stdout, proc.stderr
    assert write_real_rirs(tmp_path / "RIRS_NOISES", out) == 2  # again: what it wrote is kept
    assert sorted(p.name for p in out.iterdir()) == ["room_a_rir.wav", "room_b_rir.wav"]
    a, rate_a = sf.read(out / "room_a_rir.wav", dtype="float32")
    b, rate_b = sf.read(out / "room_b_rir.wav", dtype="float32")
    assert (rate_a, rate_b) == (16000, 8000) and np.array_equal(a, stereo[:, 0]) and np.array_equal(b, stereo[:, 1])

    sf.write(out / "room_b_rir.wav", np.zeros(10, np.float32), 8000, subtype="FLOAT")  # someone else's file
    proc = prepare("--real-rirs", tmp_path / "RIRS_NOISES", "--out", out)
    assert proc.returncode == 1 and f"{out / 'room_b_rir.wav'} already exists with other content" in proc.stderr
    assert np.array_equal(sf.read(out / "room_b_rir.wav", dtype="float32")[0], np.zeros(10, np.float32))

    with pytest.raises(FileNotFoundError, match="real_rirs_isotropic_noises/rir_list not found"):
        write_real_rirs(tmp_path, out)


def put_audio(root, *rels):
    for rel in rels:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(root / rel), np.zeros(1600, dtype=np.int16), 16000)


def test_names_a_list_line_cannot_hold_are_refused_and_named(tmp_path):
    """Readers split a line at whitespace, skip one starting with '#' and read UTF-8: such names used to be
    written as they are, into a list that training then refused (or read with a speaker fewer)."""
    root, out = tmp_path / "wav", tmp_path / "list.txt"
    put_audio(root, "spkA/s1/1.wav", "spkA/s1/my take.wav", "spk C/s1/1.wav", "#spkD/s1/1.wav", "spkE/s1\u00a0b/1.wav")
    with open(os.fsencode(root / "spkA/s1") + b"/caf\xe9.wav", "wb") as f:  # a Latin-1 name
        f.write((root / "spkA/s1/1.wav").read_bytes())
    proc = prepare("--root", root, "--out", out)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and not out.exists()
    assert f"error: {root}: 5 audio files have names that a list cannot hold" in proc.stderr
    for problem in ["'spk C/s1/1.wav': contains whitespace", "#spkD/s1/1.wav: speaker #spkD starts with '#'",
                    "spkA/s1/caf\\xe9.wav: not UTF-8", "'spkA/s1/my take.wav': contains whitespace",
                    "'spkE/s1\\xa0b/1.wav': contains whitespace"]:
        assert f"\n  {problem}" in proc.stderr, (problem, proc.stderr)
    put_audio(root, *[f"spkB/s1/take {i}.wav" for i in range(7)])
    with pytest.raises(ValueError, match=r"12 audio files .*\n(  .*\n){9}  .* \.\.\. and 2 more$"):
        scan_voxceleb_folder(root)  # fine-tuning's scan too: ten named, the rest counted

    data, _ = kaldi_dir(tmp_path)
    (data / "utt2spk").write_text("u1 #spkA\nu2 #spkA\nu3 spkB\n")
    proc = prepare("--kaldi", data, "--out", out, cwd=tmp_path)
    assert proc.returncode == 1 and "speaker #spkA starts with '#'" in proc.stderr and not out.exists()


def test_scan_follows_linked_folders_once_matches_endings_in_any_case_and_skips_dotfiles(tmp_path):
    root, out = tmp_path / "wav", tmp_path / "list.txt"
    put_audio(root, "spkA/s1/1.WAV", "spkA/s1/2.wav", "spkB/s1/1.Flac", ".Trash/s1/1.wav")
    put_audio(tmp_path / "elsewhere", "spkF/s1/1.wav", "spkF/s2/1.wav")
    (root / "spkF").symlink_to(tmp_path / "elsewhere" / "spkF")  # speakers gathered from other disks
    (root / "spkA" / "s1" / "loop").symlink_to(root)  # a loop: followed blindly, the walk would never end
    (root / "spkA" / "s1" / "._2.wav").write_bytes(b"\x00\x05\x16\x07" + b"\x00" * 60)  # macOS AppleDouble stub
    proc = prepare("--root", root, "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert out.read_text() == ("spkA spkA/s1/1.WAV\nspkA spkA/s1/2.wav\nspkB spkB/s1/1.Flac\nspkF spkF/s1/1.wav\n"
                               "spkF spkF/s2/1.wav\n")
    proc = prepare("--root", root, "--out", tmp_path / "upper.txt", "--ext", "WAV")
    assert proc.returncode == 0 and "4 utterances of 2 speakers" in proc.stdout, proc.stderr
    (root / "spkG").symlink_to(tmp_path / "elsewhere" / "spkF")  # the same folder under another speaker
    proc = prepare("--root", root, "--out", tmp_path / "twice.txt")
    assert proc.returncode == 1 and "1 folders are reached twice through links, so their files would be listed " \
        "twice: spk" in proc.stderr and not (tmp_path / "twice.txt").exists()
    assert {"spkF", "spkG"} <= set(proc.stderr.replace("(= ", " ").replace(")", " ").split())
    # the m4a conversion skips the stubs too: ffmpeg cannot decode them, and the list would never be written
    (tmp_path / "aac/id1/v").mkdir(parents=True)
    for name in ("00001.m4a", "._00001.m4a"):
        (tmp_path / "aac/id1/v" / name).write_bytes(b"")
    assert conversion_jobs(tmp_path / "aac", tmp_path / "out", "wav") == [
        (tmp_path / "aac/id1/v/00001.m4a", tmp_path / "out/id1/v/00001.wav")]


def fake_ffmpeg(folder):
    """An ffmpeg stand-in for machines without one: decodes what soundfile reads (our '.m4a' files hold FLAC),
    writes `-ac 1 -ar R -f fmt` (resampled by linear interpolation) as ffmpeg does."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "ffmpeg"
    script.write_text(f"""#!{sys.executable}
import sys, numpy as np, soundfile as sf
a = sys.argv[1:]
src, rate, fmt, out = a[a.index("-i") + 1], int(a[a.index("-ar") + 1]), a[a.index("-f") + 1], a[-1]
try:
    x, r = sf.read(src, always_2d=True)
except Exception:
    sys.exit(src + ": Invalid data found when processing input")
x = x.mean(1)
n = round(len(x) * rate / r)
sf.write(out, np.interp(np.arange(n) * r / rate, np.arange(len(x)), x), rate, subtype="PCM_16", format=fmt.upper())
""")
    script.chmod(0o755)
    return script


def put_m4a(root, *rels, rate=16000):
    for rel in rels:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(root / rel), np.full(rate // 10, 1000, dtype=np.int16), rate, format="FLAC")


def test_conversion_converts_the_files_listing_finds_in_linked_folders_and_any_case(tmp_path):
    """Conversion walked the tree with Path.rglob, which (Python 3.11) follows no linked folder and matches
    the ending's case: those files were left unconverted, and the list silently lacked them."""
    src, dst, out = tmp_path / "aac", tmp_path / "wav", tmp_path / "list.txt"
    put_m4a(src, "id1/v1/00001.m4a", "id3/v1/00001.M4A", "id1/v1/._00001.m4a")
    put_m4a(tmp_path / "elsewhere", "id2/v1/00001.m4a", "id2/v2/00001.m4a")
    (src / "id2").symlink_to(tmp_path / "elsewhere" / "id2")
    proc = prepare("--root", src, "--convert-to", dst, "--out", out, "--ffmpeg", fake_ffmpeg(tmp_path / "bin"))
    assert proc.returncode == 0, proc.stderr
    assert "4 converted, 0 already there, 0 failed" in proc.stdout
    assert out.read_text() == ("id1 id1/v1/00001.wav\nid2 id2/v1/00001.wav\nid2 id2/v2/00001.wav\n"
                               "id3 id3/v1/00001.wav\n")
    assert sf.info(str(dst / "id3/v1/00001.wav")).frames == 1600


def test_resumed_conversion_refuses_outputs_at_another_rate_stereo_or_empty(tmp_path):
    """An earlier run at --sample-rate 8000 (or a stereo or empty file) used to be kept, its rate mixed into
    the list, exit 0."""
    src, dst, out = tmp_path / "aac", tmp_path / "wav", tmp_path / "list.txt"
    ffmpeg = fake_ffmpeg(tmp_path / "bin")
    put_m4a(src, "id1/v1/00001.m4a", "id1/v1/00002.m4a", rate=44100)
    proc = prepare("--root", src, "--convert-to", dst, "--out", out, "--sample-rate", 8000, "--ffmpeg", ffmpeg)
    assert proc.returncode == 0 and sf.info(str(dst / "id1/v1/00001.wav")).samplerate == 8000, proc.stderr
    put_m4a(src, "id2/v1/00001.m4a", "id3/v1/00001.m4a", "id4/v1/00001.m4a", rate=44100)  # more files arrive
    for rel in ("id3/v1", "id4/v1"):
        (dst / rel).mkdir(parents=True)
    sf.write(str(dst / "id3/v1/00001.wav"), np.zeros((1600, 2), dtype=np.int16), 16000)
    sf.write(str(dst / "id4/v1/00001.wav"), np.zeros(0, dtype=np.int16), 16000)
    proc = prepare("--root", src, "--convert-to", dst, "--out", out, "--overwrite", "--ffmpeg", ffmpeg)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"{dst}: 4 of the 4 files already there are not wav mono at 16000 Hz" in proc.stderr
    for problem in [f"{dst / 'id1/v1/00001.wav'}: 8000 Hz, not 16000", f"{dst / 'id1/v1/00002.wav'}: 8000 Hz, not 16000",
                    f"{dst / 'id3/v1/00001.wav'}: 2 channels, not 1", f"{dst / 'id4/v1/00001.wav'}: no samples"]:
        assert f"\n  {problem}" in proc.stderr, (problem, proc.stderr)
    assert not (dst / "id2/v1/00001.wav").exists()  # refused before converting anything
    for rel in ("id1", "id3", "id4"):
        shutil.rmtree(dst / rel)
    proc = prepare("--root", src, "--convert-to", dst, "--out", out, "--overwrite", "--ffmpeg", ffmpeg)
    assert proc.returncode == 0 and "5 converted, 0 already there" in proc.stdout, proc.stderr
    proc = prepare("--root", src, "--convert-to", dst, "--out", out, "--overwrite", "--ffmpeg", ffmpeg)
    assert proc.returncode == 0 and "0 converted, 5 already there" in proc.stdout, proc.stderr
    assert {sf.info(str(dst / line.split()[1])).samplerate for line in out.read_text().splitlines()} == {16000}


@pytest.mark.parametrize("option", [["--format", "flac"], ["--sample-rate", "8000"], ["--workers", "3"],
                                    ["--source-ext", ".aac"], ["--ffmpeg", "/opt/ffmpeg"]])
def test_conversion_options_without_convert_to_are_a_usage_error(tmp_path, option):
    root, out = tmp_path / "wav", tmp_path / "list.txt"
    put_audio(root, "spkA/s1/1.wav")
    proc = prepare("--root", root, "--out", out, *option)
    assert proc.returncode == 2 and not out.exists()
    assert f"speakerid prepare: error: {option[0]} only apply to the conversion of m4a files: they need " \
           f"--convert-to" in proc.stderr


def test_a_segmented_list_given_again_keeps_its_header_and_counts_utterances(tmp_path):
    """Without --segment-seconds the header used to be dropped: the copy's repeats then read as accidental
    duplicates, and its rows were counted as utterances."""
    root = tmp_path / "wav"
    for rel, seconds in {"a/s1/1.wav": 2.0, "a/s1/2.wav": 7.0, "b/s1/1.wav": 4.5}.items():  # 1, 3 and 2 rows
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(root / rel), np.zeros(round(seconds * 16000), dtype=np.int16), 16000)
    (tmp_path / "train.txt").write_text("a a/s1/1.wav\na a/s1/2.wav\nb b/s1/1.wav\n")
    proc = prepare("--list", tmp_path / "train.txt", "--root", root, "--out", tmp_path / "seg.txt",
                   "--segment-seconds", 2)
    assert proc.returncode == 0 and "6 rows (one per 2 s) of 3 utterances of 2 speakers" in proc.stdout, proc.stderr
    proc = prepare("--list", tmp_path / "seg.txt", "--root", root, "--out", tmp_path / "copy.txt")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "copy.txt").read_text() == (tmp_path / "seg.txt").read_text()
    assert "6 rows (one per 2 s) of 3 utterances of 2 speakers (2-4 rows per speaker)" in proc.stdout
    assert read_train_list(tmp_path / "copy.txt", root).segmented


def test_the_printed_train_overrides_give_hydra_the_exact_list_and_root(tmp_path):
    """`train with: data.train_list=pc,x/list.txt data.train_root=pc,x/w=v` failed in Hydra's parser
    (mismatched input '='), and a ',' alone would have made a sweep of the path."""
    import shlex

    from speakerid.configs import compose

    root = tmp_path / "pc,x" / "w=v it's ${HOME}"
    for rel in ("id1/s1/a.wav", "id1/s1/b.wav", "id2/s1/a.wav", "id2/s2/b.wav"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        sf.write(str(root / rel), np.zeros(160, dtype=np.int16), 16000)
    out = tmp_path / "pc,x" / "list=1.txt"
    proc = prepare("--root", root, "--out", out)
    assert proc.returncode == 0, proc.stderr
    (line,) = [line for line in proc.stdout.splitlines() if line.startswith("train with: ")]
    cfg = compose("train", ["data=folder", "data.dir=/unused", *shlex.split(line[len("train with: "):])])
    assert (cfg.data.train_list, cfg.data.train_root) == (str(out), str(root))
    assert len(read_train_list(cfg.data.train_list, cfg.data.train_root).paths) == 4
