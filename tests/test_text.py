"""Lyrics cleaning, sentence nodes and vector-format detection."""

from nemu.text import clean_lyrics, comment_nodes, detect_vector_format, split_sentences, tokenize


def test_lrc_timestamps_id_tags_and_credit_lines_are_removed():
    lrc = ("[ti:夜曲]\n[ar:某人]\n[00:00.00] 作词 : 方文山\n[00:00.50]作曲：周杰伦\n[00:01.00]编曲 : 林迈可\n"
           "[00:12.34][01:02.03]一群嗜血的蚂蚁\n\n[00:15.00]……\n[00:16.1]被腐肉所吸引\nProducer: X\n")
    assert clean_lyrics(lrc) == ["一群嗜血的蚂蚁", "被腐肉所吸引"]
    assert clean_lyrics("第一行\n第二行") == ["第一行", "第二行"]


def test_long_comments_split_into_sentences_and_punctuation_joins_its_sentence():
    assert split_sentences("太好听了！！真的。（笑）。") == ["太好听了！！", "真的。", "（笑）。"]
    assert split_sentences("好听！！！") == ["好听！！！"]
    short, long = "短评。很好", "第一句很长很长很长。第二句也很长很长！第三句？"
    assert comment_nodes([short, long, "……", ""], max_chars=12) == [short, "第一句很长很长很长。", "第二句也很长很长！", "第三句？"]


def test_tokens_drop_punctuation():
    assert tokenize("我爱你，中国！") == ["我爱你", "中国"]


def test_vector_format_detection(tmp_path):
    (tmp_path / "g.txt").write_text("你好 0.1 0.2\n世界 0.3 0.4\n", encoding="utf-8")
    (tmp_path / "w.txt").write_text("2 2\n你好 0.1 0.2\n世界 0.3 0.4\n", encoding="utf-8")
    (tmp_path / "w.bin").write_bytes(b"2 2\n\xe4\xbd\xa0\xe5\xa5\xbd \x00\x00\x80?\x00\x00\x00@\n")
    assert detect_vector_format(tmp_path / "g.txt") == "glove"
    assert detect_vector_format(tmp_path / "w.txt") == "word2vec-text"
    assert detect_vector_format(tmp_path / "w.bin") == "word2vec-binary"
