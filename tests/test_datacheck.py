"""`mlxsft data check`'s findings, checked on the records that prompted them (the command's
output as a whole is tested in test_cli.py)."""

from helpers.chat_templates import GEMMA
from helpers.masks import supervised_ids
from helpers.tiny import build_tokenizer

from mlxsft.data import DataFile, Record
from mlxsft.datacheck import check_split
from mlxsft.masking import Masker


def test_end_of_turn_special_only_in_added_tokens_is_recognized():
    # Gemma 3's <end_of_turn> is special in added_tokens_decoder but is not one of the
    # tokenizer's named special tokens: it must not be reported as missing.
    tok = build_tokenizer(["<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"], GEMMA,
                          bos="<bos>", eos="<eos>")
    assert tok.convert_tokens_to_ids("<end_of_turn>") not in tok.all_special_ids  # as in Gemma 3
    records = [Record("d.jsonl", 1, "chat", [{"role": "user", "content": "hello"},
                                             {"role": "assistant", "content": "yes"}])]
    report = check_split("train", DataFile("d.jsonl", records), Masker(tok))
    assert supervised_ids(report.items[0])[-1] == tok.convert_tokens_to_ids("<end_of_turn>")
    assert report.missing_end_of_turn == []
