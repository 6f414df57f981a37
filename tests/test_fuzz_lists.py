"""Property-based fuzzing of the train-list, trial-list and file-list parsers: well-formed lists round-trip;
any other text either parses or fails with ListFormatError naming the file and line, never another exception."""

import re
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from speakerid.data.lists import ListFormatError, read_file_list, read_train_list, read_trials

token = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Zs", "Zl", "Zp", "Cc"), blacklist_characters="/"),
                min_size=1, max_size=12).filter(
    lambda t: not t.startswith(("#", "\ufeff")) and t not in ("..", "."))  # "..": leaves the root; U+FEFF: a BOM
relpath = st.lists(token, min_size=1, max_size=3).map("/".join)  # as a path is spelled canonically


def write(text: str) -> Path:
    f = tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False, encoding="utf-8")
    f.write(text)
    f.close()
    return Path(f.name)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(token, relpath), min_size=1, max_size=30), st.sampled_from(["", "\ufeff"]))
def test_train_list_round_trip(entries, bom):
    path = write(bom + "".join(f"{s} {p}\n" for s, p in entries))
    speakers = {s for s, _ in entries}
    if len({(s, p) for s, p in entries}) > len({p for _, p in entries}):  # a file under two speakers
        try:
            read_train_list(path, "/root")
        except ListFormatError as e:
            assert "one file cannot be two speakers" in str(e)
            return
        raise AssertionError("a file listed under two speakers was accepted")
    if len(speakers) < 2:
        try:
            read_train_list(path, "/root")
        except ListFormatError as e:
            assert "at least 2 speakers" in str(e)
        return
    parsed = read_train_list(path, "/root")
    assert parsed.paths == [p for _, p in entries]
    assert parsed.speakers == [s for s, _ in entries]
    assert parsed.speaker_ids == sorted(speakers)
    assert [parsed.speaker_ids[i] for i in parsed.labels] == parsed.speakers


@settings(max_examples=150, deadline=None)
@given(st.lists(relpath, min_size=1, max_size=30), st.sampled_from(["", "\ufeff"]), st.booleans())
def test_file_list_round_trip(paths, bom, with_speakers):
    speaker = [p.split("/")[0] for p in paths]  # a speaker id has no "/"
    lines = [f"{s} {p}" if with_speakers else p for s, p in zip(speaker, paths)]
    assert read_file_list(write(bom + "\n".join(lines) + "\n")) == paths


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["0", "1"]), relpath, relpath), min_size=1, max_size=30),
       st.sampled_from(["", "\ufeff"]))
def test_trials_round_trip(entries, bom):
    path = write(bom + "".join(f"{lab} {a} {b}\n" for lab, a, b in entries))
    labels = {lab for lab, _, _ in entries}
    pairs = {frozenset((a, b)) for _, a, b in entries}
    try:
        trials = read_trials(path)
    except ListFormatError as e:
        contradiction = len({(lab, frozenset((a, b))) for lab, a, b in entries}) > len(pairs)
        assert (contradiction and "a pair of files is either the same speaker or not" in str(e)) or (
            labels != {"0", "1"} and "only" in str(e))
        return
    assert [(str(t.label), t.enrol, t.test) for t in trials] == entries


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(relpath, st.sampled_from(["./{}", "{}", "./{}"]), st.sampled_from(["/", "//", "/./"])),
                min_size=1, max_size=10))
def test_every_spelling_of_a_path_reads_as_its_canonical_one(entries):
    """`./a/b`, `a//b` and `a/./b` are the file `a/b`: the lists' same-file rules (one speaker per file, a
    repeated trial, a file paired with itself) must see one file."""
    respelled = [outer.format(p.replace("/", inner)) for p, outer, inner in entries]
    canonical = [p for p, _, _ in entries]
    assert read_file_list(write("".join(f"{p}\n" for p in respelled))) == canonical
    trials = read_trials(write("".join(f"{i % 2} {p} x/{i}.wav\n" for i, p in enumerate(respelled + ["z"] * 2))))
    assert [t.enrol for t in trials[:len(canonical)]] == canonical


line = st.one_of(
    st.text(max_size=40),
    st.lists(st.one_of(token, st.sampled_from(["0", "1", "2", "-1", "/abs/x.wav", "#", " ", "\t"])),
             max_size=5).map(" ".join),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(line, max_size=12))
def test_arbitrary_text_parses_or_names_the_line(lines):
    path = write("\n".join(lines))
    for parse in (lambda p: read_train_list(p, "/root"), read_trials, read_file_list):
        try:
            parse(path)
        except ListFormatError as e:
            message = str(e)
            assert message.startswith(str(path))
            m = re.match(re.escape(str(path)) + r":(\d+):", message)
            if m:  # a line-level problem names a real line of the file
                number = int(m.group(1))
                assert 1 <= number <= max(1, len(path.read_text(encoding="utf-8").splitlines()))


@settings(max_examples=50, deadline=None)
@given(st.binary(max_size=200))
def test_binary_garbage_is_a_format_error(data):
    path = write("")
    path.write_bytes(data)
    for parse in (lambda p: read_train_list(p, "/root"), read_trials, read_file_list):
        try:
            parse(path)
        except ListFormatError as e:
            assert str(path) in str(e)
