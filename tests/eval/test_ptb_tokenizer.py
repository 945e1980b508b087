"""PTB tokenization: the pure-Python backend against pycocoevalcap's own (Java) PTBTokenizer."""
from __future__ import annotations

import random
import shutil

import pytest

from lmm.eval.ptb_tokenizer import PUNCTUATIONS, tokenize_captions

JAVA = shutil.which("java")
needs_java = pytest.mark.skipif(JAVA is None, reason="no `java` on PATH: cannot run pycocoevalcap's PTBTokenizer "
                                                     "to compare the Python tokenizer against")

FEATURES = {
    "contraction": ["don't", "it's", "can't", "y'all", "o'clock", "won't", "I'm", "they've", "she'd", "ain't",
                    "shouldn't've", "'tis", "'twas", "rock 'n' roll", "ma'am", "don’t", "it’s", "I'd've"],
    "possessive": ["the man's hat", "James' car", "the kids' toys", "O'Neill's dog", "the cat’s tail"],
    "quote": ['"a sign"', "'hello'", "“curly”", "‘single’", '"Stop."', "``latex''", "«bonjour»", '"x" "y"'],
    "bracket": ["(a dog)", "[sic]", "{braces}", "(1990)", "<b>bold</b>", "<br/>", "( spaced )", "(nested (deep))"],
    "hyphen": ["well-known", "mother-in-law", "5-year-old", "co-op", "x-ray", "t-shirt", "--", "---", " - ",
               "e-mail", "anti-war", "pre-school", "1990-2000"],
    "number": ["1,000", "3.14", "50%", "$5", "$5.00", "US$10", "#1", "-5", "+7", "1990s", "'90s", "2nd", "3rd",
               "5 1/2", "½", "1/2", "555-123-4567", "12/25/2020", "10,000.50", "0.5mm", "€20", "£3", "¢5"],
    "time": ["10:30", "10:30pm", "9 a.m.", "5 p.m.", "12:00:01", "2:15 PM"],
    "ellipsis": ["...", "wait...", ". . .", "…", "....", "so..", "what?!", "no!!!", "why??"],
    "abbreviation": ["Mr. Smith", "Mrs. Jones", "Dr. Who", "St. Paul", "U.S.", "U.S.A.", "e.g.", "i.e.", "etc.",
                     "vs.", "Inc.", "Jan. 5", "No. 5", "Ph.D.", "U.S. The", "Calif. He", "a.k.a."],
    "web": ["http://www.example.com/a/b?x=1&y=2", "https://foo.org", "www.google.com", "example.com",
            "user@example.com", "@user", "#hashtag", "ftp://files.net/x.zip", "foo.bar.com."],
    "ampersand": ["AT&T", "Q&A", "R&D", "rock & roll", "S&P", "&amp;", "B&B"],
    "slash": ["and/or", "24/7", "w/", "km/h", "his/her", "a / b", "yes/no"],
    "unicode": ["café", "naïve", "Zürich", "São Paulo", "北京", "Привет", "ΟΔΥΣΣΕΥΣ", "ΑΣ-ΒΑ", "😀", "👍🏽", "🇺🇸",
                "™", "©", "°C", "×", "—", "–", "•", "″", "İstanbul", "Straße", "ﬁne", "e\u0301", "soft\u00adhyphen"],
    "spacing": ["  double  space", "tab\there", "trailing   ", "\u00a0nbsp", "zero\u200bwidth", "line\nbreak"],
    "caps": ["ALL CAPS SIGN", "STOP", "A DOG AND A CAT", "NASA", "IBM's"],
    "assimilation": ["cannot", "gonna", "wanna", "gotta", "lemme", "gimme", "dunno", "Cannot", "GONNA"],
    "end": [".", " .", "!", "?", "..", ":", ";", ",", " ,"],
}
FILLER = ("a man woman dog cat child riding holding sitting standing on in at near with the a red blue old small "
          "large street beach table kitchen horse bike skateboard pizza umbrella train bus park field two three "
          "people group of next to while").split()


def varied_corpus(seed: int = 1234, num_images: int = 160) -> dict[int, list[str]]:
    """Several hundred caption-like strings; every feature fragment appears in some of them."""
    rng = random.Random(seed)
    categories = sorted(FEATURES)
    corpus, made, used = {}, 0, dict.fromkeys(FEATURES, 0)
    for image in range(num_images):
        captions = []
        for _ in range(rng.randint(1, 5)):
            words = [rng.choice(FILLER) for _ in range(rng.randint(3, 9))]
            for k in range(rng.randint(1, 3)):
                category = categories[(made + 7 * k) % len(categories)]
                fragments = FEATURES[category]
                words.insert(rng.randint(0, len(words)), fragments[used[category] % len(fragments)])
                used[category] += 1
            made += 1
            text = rng.choice([" ", " ", " ", "  ", "\t"]).join(words)
            text = text.upper() if rng.random() < 0.08 else text[:1].upper() + text[1:]
            captions.append(text + rng.choice(["", ".", " .", "!", "...", ".", ""]))
        corpus[image] = captions
    return corpus


def pycocoevalcap_tokenize(captions: dict[int, list[str]]) -> dict[int, list[str]]:
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    return PTBTokenizer().tokenize({key: [{"caption": c} for c in caps] for key, caps in captions.items()})


def test_corpus_is_varied():
    corpus = varied_corpus()
    captions = [c for caps in corpus.values() for c in caps]
    assert len(captions) > 400
    for category, fragments in FEATURES.items():
        assert sum(any(f in c for f in fragments) for c in captions) >= 20, category
        assert all(any(f in c or f.upper() in c for c in captions) for f in fragments), category


@needs_java
def test_python_backend_matches_pycocoevalcap_on_varied_corpus():
    corpus = varied_corpus()
    expected = pycocoevalcap_tokenize(corpus)
    got = tokenize_captions(corpus, backend="python")
    assert got.keys() == expected.keys()
    for key in corpus:
        assert got[key] == expected[key], (key, corpus[key])
    tokens = {t for caps in got.values() for c in caps for t in c.split(" ")}
    assert {"n't", "'s", "-lrb-", "-rsb-", "can", "gon", "na", "u.s.", "%", "$", "οδυσσευς"} <= tokens
    assert not tokens & PUNCTUATIONS


@needs_java
def test_backends_agree_and_java_backend_is_pycocoevalcap():
    corpus = varied_corpus(seed=99, num_images=40)
    assert tokenize_captions(corpus, backend="java") == pycocoevalcap_tokenize(corpus)
    assert tokenize_captions(corpus, backend="auto") == tokenize_captions(corpus, backend="java")


EXPECTED = [  # checked against pycocoevalcap's PTBTokenizer
    ("A man's hat, isn't it?", "a man 's hat is n't it"),
    ('Don\'t "quote" me (please).', "do n't quote me -lrb- please -rrb-"),
    ("I cannot go, gonna wanna gotta.", "i can not go gon na wan na got ta"),
    ("It costs $5.00 at 10:30 in the U.S.", "it costs $ 5.00 at 10:30 in the u.s."),
    ("Mr. Smith met Dr. Who at St. Paul's.", "mr. smith met dr. who at st. paul 's"),
    ("Well-known 3.5% of 1,000,000 people...", "well-known 3.5 % of 1,000,000 people"),
    ("Email a.b@example.com or see http://example.com/x?y=1", "email a.b@example.com or see http://example.com/x?y=1"),
    ("Rock & roll, AT&T and/or Q&A", "rock & roll at&t and/or q&a"),
    ("Café ’tis “curly” ‘quotes’ — en–dash", "café tis curly quotes en dash"),
    ("[brackets] {braces} <tag>", "-lsb- brackets -rsb- -lcb- braces -rcb- <tag>"),
    ("y'all o'clock ain't", "y' all o'clock ai n't"),
    ("5 1/2 apples, ½ cup", "5\u00a01/2 apples 1/2 cup"),
    ("emoji 😀 here", "emoji here"),
    ("a\tb   c", "a b c"),
    ("two\nlines", "two lines"),
    ("ΟΔΥΣΣΕΥΣ ΑΣ-ΒΑ", "οδυσσευς ασ-βα"),  # Java's final-sigma rule, not Python's
    ("", ""),
]


@pytest.mark.parametrize("caption,expected", EXPECTED)
def test_known_tokenizations(caption, expected):
    assert tokenize_captions({"img": [caption]}, backend="python") == {"img": [expected]}


def test_punctuation_list_is_pycocoevalcaps():
    assert PUNCTUATIONS == {"''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":",
                            "-", "--", "...", ";"}


def test_carriage_return_shifts_later_captions_like_pycocoevalcap():
    assert tokenize_captions({1: ["a\rb", "c"], 2: ["d"]}) == {1: ["a", "b"], 2: ["c"]}


def test_caption_end_depends_on_next_caption_like_pycocoevalcap():
    assert tokenize_captions({1: ["the letter a."], 2: ["The end"]})[1] == ["the letter a"]
    assert tokenize_captions({1: ["the letter a."], 2: ["the end"]})[1] == ["the letter a."]


def test_keys_and_order_are_kept():
    captions = {"z": ["One.", "Two!"], 3: ["three"], ("t", 1): ["Four, five"]}
    assert tokenize_captions(captions) == {"z": ["one", "two"], 3: ["three"], ("t", 1): ["four five"]}


def test_unknown_backend_and_missing_java_are_clear_errors(monkeypatch):
    with pytest.raises(ValueError, match="unknown tokenizer backend"):
        tokenize_captions({1: ["x"]}, backend="perl")
    monkeypatch.setenv("PATH", "")
    with pytest.raises(RuntimeError, match="java"):
        tokenize_captions({1: ["x"]}, backend="java")
