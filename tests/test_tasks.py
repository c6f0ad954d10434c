"""Task data, prompts and metrics: real files, the real SmolLM2 tokenizer, the reference scorers."""

from __future__ import annotations

import gzip
import json

import pytest
import sacrebleu
from rouge_score import rouge_scorer
from transformers import AutoTokenizer

from peft_neft.tasks import django_translation_pairs, encode_for_generation, encode_for_training, get_task, load_pairs
from peft_neft.tasks.metrics import CharTokenizer, UnicodeWordTokenizer
from peft_neft.tasks.prompts import IGNORE_INDEX


@pytest.fixture(scope="module")
def django_pairs():
    return django_translation_pairs("fr")


@pytest.fixture(scope="module")
def tokenizer(smollm2_dir):
    return AutoTokenizer.from_pretrained(smollm2_dir)


def _write_lines(path, lines, gz=False):
    opener = gzip.open if gz else open
    with opener(path, "wt", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")


def test_django_pairs_are_real_disjoint_and_stable(django_pairs):
    sizes = {k: len(v) for k, v in django_pairs.items()}
    assert 450 <= sum(sizes.values()) <= 800 and sizes["test"] >= 40 and sizes["validation"] >= 40
    sources = [set(django_pairs[s]["source"]) for s in ("train", "validation", "test")]
    assert not (sources[0] & sources[1]) and not (sources[0] & sources[2]) and not (sources[1] & sources[2])
    all_text = [t for d in django_pairs.values() for t in list(d["source"]) + list(d["target"])]
    assert not any("%" in t or "{" in t for t in all_text)
    again = django_translation_pairs("fr")
    assert list(again["test"]["source"]) == list(django_pairs["test"]["source"])
    assert dict(zip(django_pairs["test"]["source"], django_pairs["test"]["target"]))["Cancel"] == "Annuler"


@pytest.mark.parametrize("gz", [False, True])
def test_line_aligned_files_plain_and_gzipped(tmp_path, django_pairs, gz):
    src, tgt = list(django_pairs["test"]["source"]), list(django_pairs["test"]["target"])
    suffix = ".gz" if gz else ""
    _write_lines(tmp_path / f"a.en{suffix}", src, gz)
    _write_lines(tmp_path / f"a.fr{suffix}", tgt, gz)
    pairs = load_pairs(tmp_path / f"a.en{suffix}", tmp_path / f"a.fr{suffix}")
    assert list(pairs["source"]) == src and list(pairs["target"]) == tgt
    assert len(load_pairs(tmp_path / f"a.en{suffix}", tmp_path / f"a.fr{suffix}", limit=5)) == 5


def test_jsonl_pairs_and_field_errors(tmp_path, django_pairs):
    path = tmp_path / "d.jsonl"
    rows = [{"document": s, "summary": t} for s, t in zip(django_pairs["test"]["source"], django_pairs["test"]["target"])]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    pairs = load_pairs(path, source_field="document", target_field="summary")
    assert list(pairs["target"]) == [r["summary"] for r in rows]
    with pytest.raises(ValueError, match=r"no field\(s\) \['source'.*has \['document', 'summary'\]"):
        load_pairs(path)


def test_bad_files_give_clear_errors(tmp_path):
    _write_lines(tmp_path / "a.en", ["one", "two", "three"])
    _write_lines(tmp_path / "a.fr", ["un", "deux"])
    with pytest.raises(ValueError, match="has 3 lines but .* has 2"):
        load_pairs(tmp_path / "a.en", tmp_path / "a.fr")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_pairs(tmp_path / "missing.en", tmp_path / "a.fr")
    (tmp_path / "e.en").write_text("\n\n")
    (tmp_path / "e.fr").write_text("\n\n")
    with pytest.raises(ValueError, match="No non-empty"):
        load_pairs(tmp_path / "e.en", tmp_path / "e.fr")
    with pytest.raises(ValueError, match="not JSON lines"):
        load_pairs(tmp_path / "a.en")


@pytest.mark.parametrize("gz", [False, True])
def test_empty_files_are_named_in_the_error(tmp_path, gz):
    suffix = ".gz" if gz else ""
    for name in ("empty.en", "empty.fr", "empty.jsonl"):
        with (gzip.open if gz else open)(tmp_path / (name + suffix), "wb"):
            pass  # zero bytes of content
    with pytest.raises(ValueError, match=r"empty\.en.* is empty"):
        load_pairs(tmp_path / ("empty.en" + suffix), tmp_path / ("empty.fr" + suffix))
    with pytest.raises(ValueError, match=r"empty\.jsonl.* is empty"):
        load_pairs(tmp_path / ("empty.jsonl" + suffix))


def test_loss_only_on_target_tokens(tokenizer):
    instruction = "Translate this English text into French."
    row = encode_for_training(tokenizer, instruction, "Cancel", "Annuler")
    prompt = encode_for_generation(tokenizer, instruction, "Cancel")
    assert row["input_ids"][: len(prompt)] == prompt
    assert row["labels"][: len(prompt)] == [IGNORE_INDEX] * len(prompt)
    target = [t for t in row["labels"] if t != IGNORE_INDEX]
    assert target[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(target[:-1]) == "Annuler"
    assert len(row["input_ids"]) == len(row["labels"]) == len(row["attention_mask"])
    assert "Cancel" in tokenizer.decode(prompt) and "Annuler" not in tokenizer.decode(prompt)


def test_truncation_limits_source_and_target(tokenizer):
    long = "word " * 300
    short_prompt = encode_for_generation(tokenizer, "Summarize.", long, max_source_tokens=20)
    assert len(short_prompt) < len(encode_for_generation(tokenizer, "Summarize.", long)) - 200
    row = encode_for_training(tokenizer, "Summarize.", "x", long, max_target_tokens=10)
    assert sum(t != IGNORE_INDEX for t in row["labels"]) == 11  # 10 target tokens + EOS


def test_translation_metrics_equal_sacrebleu(django_pairs):
    refs = list(django_pairs["test"]["target"])
    hyps = [r if i % 3 else r.upper() for i, r in enumerate(refs)]
    scores = get_task("translation").score(hyps, refs)
    assert scores["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score)
    assert scores["chrf"] == pytest.approx(sacrebleu.corpus_chrf(hyps, [refs]).score)
    assert 0 < scores["bleu"] < 100
    assert scores["signatures"]["bleu"].startswith("nrefs:1|case:mixed")


def test_rouge_equals_rouge_score_and_keeps_accents():
    refs = ["Le chat est assis sur le tapis.", "Une réunion a été annulée hier."]
    hyps = ["le chat dort sur le tapis", "la réunion a été reportée"]
    ours = get_task("summarization").score(hyps, refs)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], tokenizer=UnicodeWordTokenizer())
    direct = [scorer.score(r, h) for r, h in zip(refs, hyps)]
    for name in ("rouge1", "rouge2", "rougeL"):
        assert ours[name] == pytest.approx(100 * sum(d[name].fmeasure for d in direct) / 2)
    # On plain ASCII English the tokenizer agrees with rouge-score's default one.
    en_refs, en_hyps = ["The cat sat on the mat today."], ["the cat is on a mat"]
    default = rouge_scorer.RougeScorer(["rougeL"]).score(en_refs[0], en_hyps[0])["rougeL"].fmeasure
    assert get_task("summarization").score(en_hyps, en_refs)["rougeL"] == pytest.approx(100 * default)
    # rouge-score's default tokenizer deletes accented letters; ours keeps "été" a word.
    assert UnicodeWordTokenizer().tokenize("Été réunion") == ["été", "réunion"]


def test_char_level_rouge_for_chinese():
    refs, hyps = ["我们明天开会"], ["我们今天开会"]
    ours = get_task("summarization").score(hyps, refs, char_level=True)
    direct = rouge_scorer.RougeScorer(["rouge1"], tokenizer=CharTokenizer()).score(refs[0], hyps[0])["rouge1"].fmeasure
    assert ours["rouge1"] == pytest.approx(100 * direct) and 0 < ours["rouge1"] < 100
    assert get_task("summarization").score(hyps, refs)["rouge1"] == 0.0  # one "word" each, and they differ
    assert "char" in ours["signatures"]["rouge"]


def test_metric_input_errors():
    with pytest.raises(ValueError, match="2 hypotheses but 1 references"):
        get_task("translation").score(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="Unknown task"):
        get_task("qa")


@pytest.mark.slow
def test_shared_multi30k_and_dialogsumx(shared_data):
    m30k = shared_data / "multi30k"
    test = load_pairs(m30k / "test_2016_flickr.en.gz", m30k / "test_2016_flickr.fr.gz")
    assert len(test) == 1000 and test[0]["source"] and test[0]["target"]
    dsx = load_pairs(shared_data / "dialogsumx" / "dialogsumx.dev.jsonl.gz",
                     source_field="en_dialogue", target_field="fr_summary")
    assert len(dsx) == 100 and "#Person1#" in dsx[0]["source"]
    with pytest.raises(ValueError, match="lines"):
        load_pairs(m30k / "val.en.gz", m30k / "test_2016_flickr.fr.gz")


def test_hold_out_validation_takes_the_last_tenth_at_most_200():
    from datasets import Dataset

    from peft_neft.tasks import hold_out_validation

    table = Dataset.from_dict({"source": [str(i) for i in range(50)], "target": [str(i) for i in range(50)]})
    train, validation = hold_out_validation(table)
    assert list(validation["source"]) == [str(i) for i in range(45, 50)] and len(train) == 45
    big = Dataset.from_dict({"source": [str(i) for i in range(3000)], "target": [str(i) for i in range(3000)]})
    assert len(hold_out_validation(big)[1]) == 200
    with pytest.raises(ValueError, match="Too few training pairs \\(9\\)"):
        hold_out_validation(table.select(range(9)))


def test_a_task_owns_its_metrics_and_the_command_line_offers_every_registered_task():
    from peft_neft.cli import build_parser
    from peft_neft.compare.significance import metric_names
    from peft_neft.tasks import TASKS, get_task

    refs = ["Le chat dort.", "Une réunion a été annulée hier."]
    for task in TASKS.values():
        scores = task.score(refs, refs)
        assert [m.name for m in task.metrics(False)] == list(task.metric_names) == list(metric_names(task.name))
        assert all(scores[name] == pytest.approx(100) for name in task.metric_names)
        intervals = task.intervals(refs, refs, samples=20)
        assert sorted(intervals) == sorted(task.metric_names)
        assert all(v["score"] == pytest.approx(100) and v["ci"] == pytest.approx(0) for v in intervals.values())
    compare = build_parser().parse_args(["compare", "--train", "t", "--eval", "e", "--methods", "base", "--out", "o",
                                         "--task", "summarization"])
    assert compare.task == "summarization"
    (task_option,) = [a for a in build_parser()._subparsers._group_actions[0].choices["compare"]._actions
                      if "--task" in a.option_strings]
    assert sorted(task_option.choices) == sorted(TASKS)
    with pytest.raises(ValueError, match="Unknown task 'qa'; use one of summarization, translation"):
        get_task("qa")


def test_pairs_from_a_saved_dataset_or_dataset_dict(tmp_path):
    from datasets import Dataset, DatasetDict

    table = Dataset.from_dict({"en": ["one", "two", ""], "fr": ["un", "deux", "trois"]})
    table.save_to_disk(tmp_path / "flat")
    pairs = load_pairs(tmp_path / "flat", source_field="en", target_field="fr")
    assert list(pairs["source"]) == ["one", "two"] and list(pairs["target"]) == ["un", "deux"]  # empty pairs dropped
    DatasetDict({"train": table, "test": table.select([1])}).save_to_disk(tmp_path / "dict")
    assert list(load_pairs(tmp_path / "dict", split="test", source_field="en", target_field="fr")["source"]) == ["two"]
    with pytest.raises(ValueError, match=r"splits \['train', 'test'\].*not 'validation'"):
        load_pairs(tmp_path / "dict", split="validation", source_field="en", target_field="fr")
    with pytest.raises(ValueError, match=r"no field\(s\) \['source'"):
        load_pairs(tmp_path / "dict")
    (tmp_path / "plain").mkdir()
    with pytest.raises(ValueError, match="not a dataset saved with save_to_disk"):
        load_pairs(tmp_path / "plain")


def test_a_hub_dataset_name_that_cannot_be_downloaded_says_so():  # conftest: HF_HUB_OFFLINE=1
    from peft_neft.tasks.data import data_source

    assert data_source("wmt16") == data_source("owner/name") == "hub"
    with pytest.raises(ValueError, match="Hub dataset.*could not be loaded.*save_to_disk"):
        load_pairs("peft-neft-no-such-owner/no-such-dataset")
    for missing in ("missing.jsonl", "./data", "data/train/x", "/abs/missing"):
        with pytest.raises(FileNotFoundError, match="does not exist"):
            data_source(missing)
