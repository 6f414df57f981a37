import logging
import re

import pytest

from speakerid.data.lists import (
    ListFormatError,
    MissingFilesError,
    check_files_exist,
    has_labels,
    read_file_list,
    read_train_list,
    read_trials,
    starts_with_bom,
    trial_files,
    warn_duplicate_paths,
    warn_duplicate_trials,
)


def write(path, text):
    path.write_text(text)
    return path


def test_train_list_speaker_map_and_labels(tmp_path):
    lst = write(tmp_path / "train.txt", "id002 id002/a/1.wav\n\n# comment\nid001 id001/b/2.wav\nid002 id002/c/3.wav\n")
    parsed = read_train_list(lst, tmp_path)
    assert parsed.paths == ["id002/a/1.wav", "id001/b/2.wav", "id002/c/3.wav"]
    assert parsed.speaker_ids == ["id001", "id002"]
    assert parsed.labels == [1, 0, 1]


@pytest.mark.parametrize("bad_line,match", [
    ("id001", r"train.txt:3: expected 2 fields"),
    ("id001 a.wav extra", r"train.txt:3: expected 2 fields"),
    ("id001 /abs/a.wav", r"train.txt:3: path '/abs/a.wav' is absolute"),
])
def test_train_list_malformed_line_names_file_and_line(tmp_path, bad_line, match):
    lst = write(tmp_path / "train.txt", f"id001 x/1.wav\nid002 y/1.wav\n{bad_line}\n")
    with pytest.raises(ListFormatError, match=match):
        read_train_list(lst, tmp_path)


def test_train_list_needs_two_speakers_and_entries(tmp_path):
    with pytest.raises(ListFormatError, match="no entries"):
        read_train_list(write(tmp_path / "e.txt", "\n# nothing\n"), tmp_path)
    with pytest.raises(ListFormatError, match="at least 2 speakers"):
        read_train_list(write(tmp_path / "o.txt", "a a/1.wav\na a/2.wav\n"), tmp_path)
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        read_train_list(tmp_path / "nope.txt", tmp_path)


def test_trials_parse_and_errors(tmp_path):
    ok = write(tmp_path / "t.txt", "1 a/1.wav a/2.wav\n0 a/1.wav b/1.wav\n")
    parsed = read_trials(ok)
    assert [(t.label, t.enrol, t.test) for t in parsed] == [(1, "a/1.wav", "a/2.wav"), (0, "a/1.wav", "b/1.wav")]
    with pytest.raises(ListFormatError, match=r"t2.txt:2: label must be 0 or 1, got '2'"):
        read_trials(write(tmp_path / "t2.txt", "1 a b\n2 a c\n"))
    with pytest.raises(ListFormatError, match=r"t3.txt:1: expected 3 fields"):
        read_trials(write(tmp_path / "t3.txt", "a/1.wav\n"))
    with pytest.raises(ListFormatError, match="only"):
        read_trials(write(tmp_path / "t4.txt", "1 a b\n1 a c\n"))


def test_missing_files_reported_with_count_and_first_paths(tmp_path):
    (tmp_path / "spk").mkdir()
    (tmp_path / "spk" / "there.wav").write_bytes(b"")
    paths = ["spk/there.wav"] + [f"spk/missing{i}.wav" for i in range(8)]
    with pytest.raises(MissingFilesError) as e:
        check_files_exist(tmp_path, paths, what="train list x.txt", show=3)
    message = str(e.value)
    assert "train list x.txt: 8 of 9 files do not exist" in message
    assert "missing0.wav" in message and "missing2.wav" in message and "missing3.wav" not in message
    assert "and 5 more" in message
    check_files_exist(tmp_path, ["spk/there.wav"], what="ok")
    with pytest.raises(MissingFilesError, match="not a directory"):
        check_files_exist(tmp_path / "nowhere", paths, what="train list")


def test_trials_without_labels_are_scores_only(tmp_path):
    parsed = read_trials(write(tmp_path / "u.txt", "a/1.wav a/2.wav\n# comment\na/1.wav b/1.wav\n"))
    assert [(t.label, t.enrol, t.test) for t in parsed] == [(None, "a/1.wav", "a/2.wav"), (None, "a/1.wav", "b/1.wav")]
    assert not has_labels(parsed) and has_labels(read_trials(write(tmp_path / "l.txt", "1 a b\n0 a c\n")))
    assert trial_files(parsed) == ["a/1.wav", "a/2.wav", "b/1.wav"]


@pytest.mark.parametrize("text,match", [
    ("1 a/1.wav a/2.wav\na/1.wav b/1.wav\n", r"m.txt:2: 2 fields, but line 1 has 3"),
    ("a/1.wav b/1.wav\n\n0 a/1.wav a/2.wav\n", r"m.txt:3: 3 fields, but line 1 has 2"),
    ("1 a/1.wav\n", r"m.txt:1: '1 a/1.wav' starts with a label but has only one path"),
    ("1 a b\n0 a c\n1 a d\nyes a e\n", r"m.txt:4: label must be 0 or 1, got 'yes'"),
    ("1 a b\n0 a c\n-1 a d\n", r"m.txt:3: label must be 0 or 1, got '-1'"),
    ("1 a b c d\n", r"m.txt:1: expected 3 fields"),
])
def test_trial_format_errors_name_the_line(tmp_path, text, match):
    with pytest.raises(ListFormatError, match=match):
        read_trials(write(tmp_path / "m.txt", text))


def test_trial_path_prefix_is_stripped_or_reported(tmp_path):
    lst = write(tmp_path / "p.txt", "1 vox1/wav/id1/a.wav vox1/wav/id1/b.wav\n0 vox1/wav/id1/a.wav vox1/wav/id2/c.wav\n")
    parsed = read_trials(lst, strip_prefix="vox1/wav/")
    assert [(t.enrol, t.test) for t in parsed] == [("id1/a.wav", "id1/b.wav"), ("id1/a.wav", "id2/c.wav")]
    bad = write(tmp_path / "q.txt", "1 vox1/wav/id1/a.wav vox1/wav/id1/b.wav\n0 vox1/wav/id1/a.wav id2/c.wav\n")
    with pytest.raises(ListFormatError, match=r"q.txt:2: path 'id2/c.wav' does not start with the prefix 'vox1/wav/'"):
        read_trials(bad, strip_prefix="vox1/wav/")
    # A prefix is leading folders: without its slash it used to leave '/id1/a.wav', refused as absolute.
    assert read_trials(lst, strip_prefix="vox1/wav") == parsed
    # the path is read in its one spelling first: ./vox1/wav/... and vox1//wav/... lose the prefix as well
    respelled = write(tmp_path / "r.txt", "1 ./vox1/wav/id1/a.wav vox1//wav/id1/b.wav\n"
                                          "0 vox1/wav/./id1/a.wav vox1/wav//id2/c.wav\n")
    assert read_trials(respelled, strip_prefix="vox1/wav") == parsed
    with pytest.raises(ListFormatError, match=r"q.txt:2: path 'id2/c.wav' does not start with the prefix 'vox1/wav/'"):
        read_trials(bad, strip_prefix="vox1/wav")
    with pytest.raises(ListFormatError, match=r"p.txt:1: path 'vox1/wav/id1/a.wav' does not start with the prefix "
                                              r"'vox1/wa/'"):
        read_trials(lst, strip_prefix="vox1/wa")  # not part of a folder's name


def test_a_list_that_is_not_utf8_names_its_line(tmp_path):
    """The decoder's position is within its 8 KiB chunk: the line number is what finds the byte in a big list."""
    lst = tmp_path / "latin1.txt"
    lst.write_bytes(b"".join(b"spk%d spk%d/%05d.wav\n" % (i % 3, i % 3, i) for i in range(5000))
                    + "sp\u00fc sp\u00fc/1.wav\n".encode("latin-1"))
    with pytest.raises(ListFormatError, match=re.escape("latin1.txt:5001: not UTF-8 text: byte 0xfc at column 3")):
        read_train_list(lst, tmp_path)


BOM = "\ufeff"


def test_a_byte_order_mark_is_not_part_of_the_first_speaker(tmp_path):
    lst = tmp_path / "bom.txt"
    lst.write_bytes(f"{BOM}syn00000 syn00000/a.wav\nsyn00001 syn00001/b.wav\nsyn00000 syn00000/c.wav\n".encode())
    parsed = read_train_list(lst, tmp_path)
    assert parsed.speaker_ids == ["syn00000", "syn00001"] and parsed.labels == [0, 1, 0]
    assert starts_with_bom(lst) and not starts_with_bom(write(tmp_path / "plain.txt", "a a/1.wav\n"))


def test_a_byte_order_mark_is_not_part_of_the_first_label(tmp_path):
    lst = tmp_path / "bom_trials.txt"
    lst.write_bytes(f"{BOM}0 a/1.wav b/1.wav\n1 a/1.wav a/2.wav\n".encode())
    assert [(t.label, t.enrol) for t in read_trials(lst)] == [(0, "a/1.wav"), (1, "a/1.wav")]
    unlabelled = tmp_path / "bom_pairs.txt"
    unlabelled.write_bytes(f"{BOM}a/1.wav b/1.wav\n".encode())
    assert read_trials(unlabelled)[0].enrol == "a/1.wav"


@pytest.mark.parametrize("path,why", [
    ("../other/x.wav", "goes up with '..'"),
    ("spk/../../x.wav", "goes up with '..'"),
    ("/etc/passwd", "is absolute"),
])
def test_paths_outside_the_root_are_refused(tmp_path, path, why):
    expected = rf"{{}}:2: path '{re.escape(path)}' {why}: paths must be relative to the root and stay inside it"
    train = write(tmp_path / "train.txt", f"a a/1.wav\nb {path}\n")
    with pytest.raises(ListFormatError, match=expected.format("train.txt")):
        read_train_list(train, tmp_path)
    trials = write(tmp_path / "trials.txt", f"1 a/1.wav a/2.wav\n0 a/1.wav {path}\n")
    with pytest.raises(ListFormatError, match=expected.format("trials.txt")):
        read_trials(trials)
    pairs = write(tmp_path / "pairs.txt", f"a/1.wav a/2.wav\n{path} a/1.wav\n")
    with pytest.raises(ListFormatError, match=expected.format("pairs.txt")):
        read_trials(pairs)


def test_paths_are_checked_after_the_prefix_is_stripped(tmp_path):
    lst = write(tmp_path / "p.txt", "1 /data/wav/a/1.wav /data/wav/a/2.wav\n0 /data/wav/a/1.wav /data/wav/../b.wav\n")
    with pytest.raises(ListFormatError, match=r"p.txt:2: path '../b.wav' goes up"):
        read_trials(lst, strip_prefix="/data/wav/")
    ok = write(tmp_path / "q.txt", "1 /data/wav/a/1.wav /data/wav/a/2.wav\n0 /data/wav/a/1.wav /data/wav/b/1.wav\n")
    assert read_trials(ok, strip_prefix="/data/wav/")[1].test == "b/1.wav"
    assert read_train_list(write(tmp_path / "dots.txt", "a a/..x.wav\nb b/x..wav\n"), tmp_path).paths[0] == "a/..x.wav"


def test_duplicate_train_lines_are_logged_with_count_and_example(tmp_path, caplog):
    lst = write(tmp_path / "dup.txt", "a a/1.wav\nb b/1.wav\na a/1.wav\nb b/1.wav\na a/1.wav\nb b/2.wav\n")
    train = read_train_list(lst, tmp_path)
    with caplog.at_level(logging.WARNING, logger="speakerid"):
        assert warn_duplicate_paths(lst, train) == {"a/1.wav": 3, "b/1.wav": 2}
    [record] = caplog.records
    assert record.name == "speakerid" and record.levelno == logging.WARNING
    assert (f"train list {lst}: 2 files are listed more than once (3 extra lines), e.g. a/1.wav 3 times"
            in record.getMessage())
    caplog.clear()
    assert warn_duplicate_paths(lst, read_train_list(write(tmp_path / "ok.txt", "a a/1.wav\nb b/1.wav\n"),
                                                     tmp_path)) == {}
    assert not caplog.records


def test_duplicate_trials_are_logged_with_count_and_example(tmp_path, caplog):
    """`0 b a` repeats `0 a b`: scoring is symmetric, so it is the same trial counted again."""
    lst = write(tmp_path / "dup_trials.txt", "1 a/1.wav a/2.wav\n0 a/1.wav b/1.wav\n0 a/1.wav b/1.wav\n"
                                             "1 a/1.wav a/2.wav\n0 b/1.wav a/1.wav\n")
    with caplog.at_level(logging.WARNING, logger="speakerid"):
        dups = warn_duplicate_trials(lst, read_trials(lst))
    assert {t.line(): n for t, n in dups.items()} == {"1 a/1.wav a/2.wav": 2, "0 a/1.wav b/1.wav": 3}
    [record] = caplog.records
    assert (f"trial list {lst}: 2 trials appear more than once (3 extra lines), e.g. '1 a/1.wav a/2.wav' 2 times"
            in record.getMessage())


@pytest.mark.parametrize("text", [
    "1 a/1.wav b/1.wav\n0 a/1.wav a/2.wav\n0 a/1.wav b/1.wav\n",
    "1 a/1.wav b/1.wav\n0 a/1.wav a/2.wav\n0 b/1.wav a/1.wav\n",  # the same pair in the other order
])
def test_a_pair_labelled_both_ways_is_an_error_naming_both_lines(tmp_path, text):
    lst = write(tmp_path / "conflict.txt", text)
    pair = " ".join(text.splitlines()[2].split()[1:])
    with pytest.raises(ListFormatError, match=re.escape(f"conflict.txt:3: the pair {pair} is labelled 0, but line 1 "
                                                        f"labels it 1 ('1 a/1.wav b/1.wav')")):
        read_trials(lst)
    prefixed = write(tmp_path / "prefixed.txt", "".join(f"{f[0]} wav/{f[1]} wav/{f[2]}\n"
                                                        for f in map(str.split, text.splitlines())))
    with pytest.raises(ListFormatError, match="prefixed.txt:3: the pair"):
        read_trials(prefixed, strip_prefix="wav/")


def test_a_trial_of_a_file_against_itself_is_logged_with_its_line(tmp_path, caplog):
    lst = write(tmp_path / "self.txt", "0 a/1.wav b/1.wav\n# a comment\n1 a/1.wav ./a/./1.wav\n1 a/1.wav a/2.wav\n")
    with caplog.at_level(logging.WARNING, logger="speakerid"):
        assert warn_duplicate_trials(lst, read_trials(lst)) == {}
    [record] = caplog.records
    assert (f"trial list {lst}: 1 trials pair a file with itself, e.g. line 3 '1 a/1.wav a/1.wav'; they score 1 "
            f"whatever the model" in record.getMessage())


def test_a_file_listed_under_two_speakers_is_an_error_naming_both_lines(tmp_path):
    lst = write(tmp_path / "two.txt", "a a/1.wav\nb b/1.wav\n\nb a/1.wav\n")
    with pytest.raises(ListFormatError, match=re.escape("two.txt:4: a/1.wav is listed for speaker b, but line 1 "
                                                        "lists it for speaker a: one file cannot be two speakers")):
        read_train_list(lst, tmp_path)
    # However the file is spelled (a list written with `find .` has ./ paths)
    respelled = write(tmp_path / "respelled.txt", "a ./a/1.wav\nb b/1.wav\nb a//1.wav\n")
    with pytest.raises(ListFormatError, match=re.escape("respelled.txt:3: a/1.wav is listed for speaker b, but line 1 "
                                                        "lists it for speaker a")):
        read_train_list(respelled, tmp_path)
    # the same file twice under one speaker is a repeat (warn_duplicate_paths), not a contradiction
    assert read_train_list(write(tmp_path / "rep.txt", "a a/1.wav\nb b/1.wav\na a/1.wav\n"), tmp_path).paths == \
        ["a/1.wav", "b/1.wav", "a/1.wav"]


def test_file_lists_are_read_as_all_paths_or_all_speaker_paths(tmp_path):
    assert read_file_list(write(tmp_path / "p.txt", "a/1.wav\n# c\nb/2.wav\n")) == ["a/1.wav", "b/2.wav"]
    assert read_file_list(write(tmp_path / "s.txt", "a a/1.wav\nb b/2.wav\n")) == ["a/1.wav", "b/2.wav"]


@pytest.mark.parametrize("text,match", [
    # one path with a space, alone: it was read as speaker 'a/my' and path 'file.wav', a different file
    ("a/my file.wav\n", r"f.txt:1: 'a/my file.wav': 'a/my' is a path, not a speaker id: if the line is one path, it "
                        r"contains whitespace"),
    ("b/1.wav\na/my file.wav\n", r"f.txt:2: 'a/my file.wav' has 2 field\(s\), but line 1 \('b/1.wav'\) has 1: a list "
                                 r"is either all 'path' or all 'speaker path' lines, and a path cannot contain "
                                 r"whitespace"),
    ("a a/1.wav\nb/2.wav\n", r"f.txt:2: 'b/2.wav' has 1 field\(s\), but line 1 \('a a/1.wav'\) has 2"),
    ("a a/my file.wav\n", r"f.txt:1: expected 'path' or 'speaker path', got 3 fields: 'a a/my file.wav' \(a path "
                          r"cannot contain whitespace\)"),
])
def test_a_path_with_whitespace_in_a_file_list_is_an_error_naming_the_line(tmp_path, text, match):
    with pytest.raises(ListFormatError, match=match):
        read_file_list(write(tmp_path / "f.txt", text))


@pytest.mark.parametrize("n,workers,chunksize", [(0, 4, 8), (1, 4, 8), (10, 3, 2), (101, 4, 1024), (37, 16, 5)])
def test_map_files_gives_every_result_in_list_order_over_chunks(tmp_path, n, workers, chunksize):
    """Chunked tasks (one future per file cost a million-file list 40 s and 1.9 GB): each path once, in order,
    joined to the root, whatever the split."""
    import threading

    from speakerid.data.lists import map_files

    seen, threads = [], set()

    def fn(path):
        seen.append(path)
        threads.add(threading.get_ident())
        return path.name

    paths = [f"s{i % 7}/f{i}.wav" for i in range(n)]
    assert map_files(fn, tmp_path, paths, workers=workers, chunksize=chunksize) == [f"f{i}.wav" for i in range(n)]
    assert sorted(map(str, seen)) == sorted(str(tmp_path / p) for p in paths)
    if n >= 4 * workers:  # a short list still reaches every thread
        assert len(threads) > 1


def test_map_files_raises_the_first_error_and_reports_progress_of_a_long_scan(tmp_path, monkeypatch, caplog):
    from speakerid.data import lists

    def fn(path):
        if path.name == "bad.wav":
            raise OSError(f"{path}: unreadable")
        return 1

    with pytest.raises(OSError, match=r"bad\.wav: unreadable"):
        lists.map_files(fn, tmp_path, ["a.wav", "bad.wav", "c.wav"])
    monkeypatch.setattr(lists, "PROGRESS_SECONDS", 0.0)
    with caplog.at_level(logging.INFO, logger="speakerid"):
        lists.map_files(lambda p: 1, tmp_path, [f"{i}.wav" for i in range(64)], workers=2, chunksize=16,
                        progress="train list l.txt, headers read")
    assert [r.getMessage() for r in caplog.records] == [
        f"train list l.txt, headers read: {k} of 64 files checked" for k in (8, 16, 24, 32, 40, 48, 56, 64)]
