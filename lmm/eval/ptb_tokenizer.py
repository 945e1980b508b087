"""PTB tokenization of captions, token for token as pycocoevalcap does it, with or without Java.

pycocoevalcap joins all captions with newlines (a newline inside a caption becomes a space), runs Stanford
CoreNLP 3.4.1's ``PTBTokenizer -preserveLines -lowerCase`` over the text, zips the output lines back to the
image ids and drops punctuation tokens. ``backend="java"`` runs that jar (shipped inside pycocoevalcap).

``backend="python"`` needs no JVM (``auto`` uses it when there is no ``java``). The lexer is a JFlex scanner
(about 4,000 DFA states, longest match with rule priority, trailing contexts), which hand-written regexes cannot
reproduce exactly. This module therefore re-implements, in Python: the scanner loop, the rule actions, the
trailing-context search, and Java's output and lower-casing. The DFA tables are parsed in Python from
``PTBLexer.class`` inside the same jar.

Why the port (``benchmarks/library_review.py --only metrics``, BENCHMARKS.md "Library review"): without Java,
pycocoevalcap's tokenizer raises FileNotFoundError and no COCO-comparable score can be computed; the port gives
the same tokens (30,000 generated raw captions: identical to pycocoevalcap's; the varied test corpus in
tests/eval/test_ptb_tokenizer.py too) in 2.8 s against 4.5-6.1 s through the JVM. The Java backend runs the jar
itself rather than through pycocoevalcap's ``PTBTokenizer``, which writes its temporary file into its own
package folder (site-packages must then be writable) and lets the jar's progress line through to stderr.

Quirks kept on purpose: brackets survive as ``-lrb-``/``-lsb-``... (the punctuation list is upper case, the
tokens are lowered). A ``\r``, ``\v``, ``\f``, U+2028 or U+2029 inside a caption starts a new output line,
so every later caption lands on the wrong image. A caption's last token can depend on the first character of
the next caption (sentence-end lookahead after abbreviations such as "a." or "No.").
"""
from __future__ import annotations

import functools
import importlib.util
import re
import shutil
import struct
import subprocess
import tempfile
import unicodedata
import zipfile
from array import array
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import NamedTuple

__all__ = ["PUNCTUATIONS", "resolve_backend", "tokenize_captions"]

PUNCTUATIONS = frozenset(["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-",
                          ".", "?", "!", ",", ":", "-", "--", "...", ";"])

_JAR_NAME = "stanford-corenlp-3.4.1.jar"
_LEXER_CLASS = "edu/stanford/nlp/process/PTBLexer.class"
_LEXER_CRC = 0x3A2D8529  # the build the actions and lookahead states below were decoded from
_START_STATE = 2  # ZZ_LEXSTATE[YyTraditionalTreebank3]: strictTreebank3 is off
_NEWLINE_TOKEN = "*NL*"
_NBSP = "\u00a0"


def tokenize_captions(captions: dict[Hashable, list[str]], backend: str = "auto") -> dict[Hashable, list[str]]:
    """``PTBTokenizer().tokenize`` of pycocoevalcap on ``{key: [caption, ...]}`` (plain strings).

    Returns ``{key: [tokenized caption, ...]}``: lower-cased tokens joined by single spaces, punctuation
    tokens removed. ``backend`` is ``"python"``, ``"java"`` or ``"auto"`` (see ``resolve_backend``).
    """
    runners = {"python": _run_python, "java": _run_java}
    image_ids = [key for key, caps in captions.items() for _ in range(len(caps))]
    text = "\n".join(cap.replace("\n", " ") for caps in captions.values() for cap in caps)
    return _collect(image_ids, runners[resolve_backend(backend)](text))


def resolve_backend(backend: str = "auto") -> str:
    """``auto`` is pycocoevalcap's own Stanford tokenizer when Java is present, else the Python port."""
    if backend not in ("auto", "python", "java"):
        raise ValueError(f"unknown tokenizer backend {backend!r}; expected one of ['auto', 'java', 'python']")
    if backend == "auto":
        return "java" if shutil.which("java") else "python"
    return backend


def _collect(image_ids: list[Hashable], output: str) -> dict[Hashable, list[str]]:
    """pycocoevalcap's post-processing of the tokenizer output, quirks included."""
    result: dict[Hashable, list[str]] = {}
    for key, line in zip(image_ids, output.split("\n")):
        words = (w for w in line.rstrip().split(" ") if w not in PUNCTUATIONS)
        result.setdefault(key, []).append(" ".join(words))
    return result


# ---------------------------------------------------------------------------------------------- java


def _jar_path() -> Path:
    """The CoreNLP jar inside the installed pycocoevalcap package."""
    spec = importlib.util.find_spec("pycocoevalcap")
    for location in (spec.submodule_search_locations or []) if spec else []:
        jar = Path(location) / "tokenizer" / _JAR_NAME
        if jar.is_file():
            return jar
    raise RuntimeError(f"PTB tokenization needs pycocoevalcap installed (it ships tokenizer/{_JAR_NAME})")


def _run_java(text: str) -> str:
    """Raw ``PTBTokenizer -preserveLines -lowerCase`` output, exactly as pycocoevalcap runs it."""
    java = shutil.which("java")
    if java is None:
        raise RuntimeError("tokenizer backend 'java' needs a `java` executable on PATH; "
                           "use backend='python' to tokenize without Java")
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "captions.txt"
        source.write_bytes(text.encode())
        cmd = [java, "-cp", str(_jar_path()), "edu.stanford.nlp.process.PTBTokenizer",
               "-preserveLines", "-lowerCase", str(source)]
        proc = subprocess.run(cmd, capture_output=True)
    if proc.returncode != 0:
        raise RuntimeError(f"PTBTokenizer failed ({proc.returncode}): {proc.stderr.decode(errors='replace')}")
    return proc.stdout.decode()


# -------------------------------------------------------------------------------------------- python


def _run_python(text: str) -> str:
    """What ``PTBTokenizer.tokReader`` writes for ``text`` with -preserveLines -lowerCase, without Java."""
    units = array("H", text.encode("utf-16-le"))
    astral = len(units) != len(text)
    if astral:  # scan UTF-16 code units like Java; surrogates of a pair become separate chars
        text = "".join(map(chr, units))
    parts, at_line_start = [], True
    for token in _lexer().tokens(text, units):
        if token == _NEWLINE_TOKEN:
            parts.append("\n")
            at_line_start = True
            continue
        if astral:
            token = token.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "surrogatepass")
        parts.append(_java_lower(token) if at_line_start else " " + _java_lower(token))
        at_line_start = False
    return _LONE_SURROGATE.sub("?", "".join(parts))  # Java's UTF-8 encoder writes '?' for those


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


class _Rule(NamedTuple):
    """What a lexer action does with the longest match ``text[start:end]``.

    ``look``: (forward, backward) DFA entry states of a general trailing context ``r1/r2``; ``strip``: drop
    trailing whitespace; ``keep``: keep only that many chars; ``back``: push back that many chars;
    ``again``: emit the token but rescan its last char; ``acronym``: a 2-char token loses that char.
    ``emit`` maps the token text to the token (``None``: no token).
    """

    emit: Callable[[str], str] | None
    back: int = 0
    look: tuple[int, int] | None = None
    strip: bool = False
    keep: int = 0
    again: bool = False
    acronym: bool = False


def _const(token: str) -> Callable[[str], str]:
    return lambda _: token


def _same(text: str) -> str:
    return text


def _unsoft(text: str) -> str:
    """removeSoftHyphens: drop U+00AD; an all-soft-hyphen token becomes '-'."""
    return (text.replace("\u00ad", "") or "-") if "\u00ad" in text else text


def _quotes(text: str, left: bool) -> str:
    """latexQuotes: straight quotes by position guess, then curly/CP1252 quotes by their shape."""
    text = re.sub(r"&apos;|'", "`" if left else "'", text)
    text = re.sub(r'"|&quot;', "``" if left else "''", text)
    for pattern, repl in _CURLY_QUOTES:
        text = pattern.sub(repl, text)
    return text


_CURLY_QUOTES = [(re.compile("[\u0091\u2018\u201b\u2039]"), "`"), (re.compile("[\u0092\u2019\u203a]"), "'"),
                 (re.compile("[\u0093\u201c\u00ab]"), "``"), (re.compile("[\u0094\u201d\u00bb]"), "''")]


def _parens(text: str) -> str:
    return text.replace("(", "-LRB-").replace(")", "-RRB-")


def _nbsp(text: str) -> str:
    return text.replace(" ", _NBSP)


def _fractions(text: str) -> str:
    for char, fraction in (("\u00bc", "1/4"), ("\u00bd", "1/2"), ("\u00be", "3/4"), ("\u2153", "1/3"),
                           ("\u2154", "2/3")):
        text = text.replace(char, fraction)
    return text


def _currency(text: str) -> str:
    return re.sub("[\u0080\u00a4\u20a0\u20ac]", "$", text.replace("\u00a2", "cents").replace("\u00a3", "#"))


def _amp(text: str) -> str:
    return re.sub("(?i)&amp;", "&", text)


_DROP = _Rule(None)
# Lexer action number -> rule, decoded from PTBLexer.next() of the 3.4.1 build with PTBTokenizer's default
# options (ptb3Escaping on, americanize and escapeForwardSlashAsterisk off, splitAssimilations on).
_RULES: dict[int, _Rule] = {
    1: _DROP, 7: _DROP, 23: _DROP,  # untokenizable characters (dropped silently), whitespace
    2: _Rule(_const("<")), 10: _Rule(_const(">")), 5: _Rule(_const(_NEWLINE_TOKEN)),
    11: _Rule(_const("--")), 13: _Rule(_const("...")),
    16: _Rule(_const("-RCB-")), 17: _Rule(_const("-LRB-")), 18: _Rule(_const("-RRB-")),
    20: _Rule(_const("-LCB-")), 21: _Rule(_const("-RSB-")), 22: _Rule(_const("-LSB-")),
    **dict.fromkeys((3, 9, 19, 31, 45, 52), _Rule(_same)),
    4: _Rule(lambda t: "--" if 3 <= len(t) <= 4 else t),  # runs of hyphens
    **dict.fromkeys((6, 12, 29), _Rule(_unsoft)),
    8: _Rule(lambda t: _quotes(t, False)), 14: _Rule(_fractions), 15: _Rule(_currency),
    **dict.fromkeys((27, 38, 39), _Rule(_nbsp)), 28: _Rule(_parens), 37: _Rule(_amp),
    54: _Rule(lambda t: _parens(_nbsp(t))),
    24: _Rule(_same, look=(13, 14)), 41: _Rule(_same, look=(16, 17)), 43: _Rule(_same, look=(15, 14)),
    30: _Rule(_unsoft, look=(3, 4)), 40: _Rule(_unsoft, look=(5, 6)),  # "cat" before 's, "do" before n't
    25: _Rule(_same, back=1), 26: _Rule(lambda t: _quotes(t, True), back=1),
    32: _Rule(_unsoft, back=1), 46: _Rule(_unsoft, back=1), 34: _Rule(_parens, back=1),
    36: _Rule(lambda t: _quotes(t, False), back=1), 51: _Rule(_amp, back=1),
    42: _Rule(_same, back=2), 50: _Rule(_same, back=3),  # gonna -> gon na, cannot -> can not
    48: _Rule(_same, back=2), 53: _Rule(_same, back=4),
    35: _Rule(lambda t: _quotes(t, True), keep=1),
    44: _Rule(_same, look=(9, 10), strip=True),  # "No." before a number
    # "Inc." before a capital or at the end of the text, "U.S." before "The": the token, then "." on its own
    # ("I." before "The" gives "I" and ".")
    49: _Rule(_same, look=(11, 12), again=True), 33: _Rule(_same, again=True),
    47: _Rule(_same, look=(7, 8), strip=True, again=True, acronym=True),
}
_TRAILING_SPACE = frozenset(map(ord, " \t\n\x0b\x0c\r\x85"))
_PIECES = re.compile(r"\n|[^ \n]+| +")
_end_of = re.Match.end


class _Lexer:
    """The JFlex 1.4.3 scanner of CoreNLP 3.4.1's PTBLexer, over tables unpacked from its class file."""

    def __init__(self, cmap: list[int], action: list[int], rows: list[list[int]], attribute: list[int]):
        self.cmap, self.action, self.rows, self.attribute = cmap, action, rows, attribute

    def tokens(self, text: str, units: array) -> list[str]:
        """Token texts (before lower-casing) of ``text``, whose UTF-16 code units are ``units``.

        Captions repeat words, so the tokens of each piece (a run of spaces, of other chars, or a newline)
        are memoised by the piece and the char after it, when scanning it read nothing further.
        """
        memo: dict[str, list[str]] = {}
        tokens: list[str] = []
        pos = piece_start = 0
        for end in map(_end_of, _PIECES.finditer(text)):
            key = text[pos:end + 1] if pos == piece_start else None
            piece_start = end
            if pos >= end:  # a token ran past this piece
                continue
            cached = memo.get(key) if key is not None else None
            if cached is None:
                cached, pos, reach = self._scan(text, units, pos, end)
                if key is not None and pos == end and reach <= end + 1:
                    memo[key] = cached
            else:
                pos = end
            tokens += cached
        return tokens

    def _scan(self, text: str, units: array, pos: int, stop: int) -> tuple[list[str], int, int]:
        """Tokens of the matches from ``pos`` until one ends at or after ``stop``; that end; how far it read."""
        cmap, rows, attribute, action, size = self.cmap, self.rows, self.attribute, self.action, len(units)
        tokens, reach = [], pos
        while pos < stop:
            start = cur = pos
            state, accepted, end = _START_STATE, -1, pos
            while cur < size:  # longest match; attribute bit 1: final state, bit 8: no way on
                state = rows[state][cmap[units[cur]]]
                cur += 1
                if state < 0:
                    break
                if attribute[state] & 1:
                    accepted, end = state, cur
                    if attribute[state] & 8:
                        break
            if accepted < 0:
                raise RuntimeError(f"PTB lexer: no rule matches at code unit {start}")
            token, pos = self._apply(_RULES[action[accepted]], text, units, start, end)
            reach = max(reach, cur)
            if token is not None:
                tokens.append(token)
        return tokens, pos, reach

    def _apply(self, rule: _Rule, text: str, units: array, start: int, end: int) -> tuple[str | None, int]:
        """(token or None, where the next match starts) for the match ``[start, end)``."""
        if rule.look:
            end = self._split_lookahead(units, start, end, *rule.look)
        if rule.strip:
            while end > start and units[end - 1] in _TRAILING_SPACE:
                end -= 1
        if rule.keep:
            end = start + rule.keep
        end -= rule.back
        resume = end - 1 if rule.again else end
        if rule.acronym and end - start == 2:
            end -= 1
        return (None if rule.emit is None else rule.emit(text[start:end])), resume

    def _split_lookahead(self, units: array, start: int, end: int, forward: int, backward: int) -> int:
        """End of ``r1`` in a match of ``r1/r2``, found the way JFlex 1.4.3's generated code finds it."""
        cmap, rows, attribute = self.cmap, self.rows, self.attribute
        r1_ends = [False] * (end - start + 1)
        state, pos = forward, start
        while state != -1 and pos < end:
            r1_ends[pos - start] = bool(attribute[state] & 1)
            state = rows[state][cmap[units[pos]]]
            pos += 1
        if state != -1:
            r1_ends[pos - start] = bool(attribute[state] & 1)
        state, pos = backward, end
        while not (r1_ends[pos - start] and attribute[state] & 1):
            pos -= 1
            state = rows[state][cmap[units[pos]]] if pos >= start else -1
            if state < 0:
                raise RuntimeError("PTB lexer: trailing context search failed")
        return pos


@functools.lru_cache(maxsize=1)
def _lexer() -> _Lexer:
    """Unpack the DFA of PTBLexer.class from the jar (done once, ~0.3 s)."""
    with zipfile.ZipFile(_jar_path()) as jar:
        info = jar.getinfo(_LEXER_CLASS)
        if info.CRC != _LEXER_CRC:
            raise RuntimeError(f"{_LEXER_CLASS} in {_jar_path()} is not the CoreNLP 3.4.1 build this mirrors")
        strings = _class_string_constants(jar.read(info))
    cmap = _unpack_runs(strings["ZZ_CMAP_PACKED"])
    trans = [v for i in range(9) for v in _unpack_runs(strings[f"ZZ_TRANS_PACKED_{i}"], offset=1)]
    packed_rows = strings["ZZ_ROWMAP_PACKED_0"]
    row_starts = [(ord(hi) << 16) | ord(lo) for hi, lo in zip(packed_rows[::2], packed_rows[1::2])]
    width = max(cmap) + 1
    return _Lexer(cmap, _unpack_runs(strings["ZZ_ACTION_PACKED_0"]),
                  [trans[row:row + width] for row in row_starts], _unpack_runs(strings["ZZ_ATTRIBUTE_PACKED_0"]))


def _unpack_runs(packed: str, offset: int = 0) -> list[int]:
    """JFlex run-length packing: (count, value + offset) char pairs."""
    values: list[int] = []
    for count, value in zip(packed[::2], packed[1::2]):
        values.extend([ord(value) - offset] * ord(count))
    return values


def _class_string_constants(data: bytes) -> dict[str, str]:
    """``static final String`` field values of a Java class file, by field name."""
    pool: list = [None] * struct.unpack_from(">H", data, 8)[0]
    pos, index = 10, 1
    while index < len(pool):  # constant pool (JVMS 4.4)
        tag = data[pos]
        if tag == 1:  # modified UTF-8: NUL as C0 80, supplementary chars as surrogate pairs
            size = struct.unpack_from(">H", data, pos + 1)[0]
            pool[index] = data[pos + 3:pos + 3 + size].replace(b"\xc0\x80", b"\0").decode("utf-8", "surrogatepass")
            pos += 3 + size
        elif tag == 8:
            pool[index] = ("string", struct.unpack_from(">H", data, pos + 1)[0])
        pos += {1: 0, 3: 5, 4: 5, 5: 9, 6: 9, 7: 3, 8: 3, 9: 5, 10: 5, 11: 5, 12: 5, 15: 4, 16: 3, 17: 5,
                18: 5, 19: 3, 20: 3}[tag]
        index += 2 if tag in (5, 6) else 1
    pos += 6
    pos += 2 + 2 * struct.unpack_from(">H", data, pos)[0]  # interfaces
    constants, fields = {}, struct.unpack_from(">H", data, pos)[0]
    pos += 2
    for _ in range(fields):
        _, name, _, attributes = struct.unpack_from(">HHHH", data, pos)
        pos += 8
        for _ in range(attributes):
            attr_name, size = struct.unpack_from(">HI", data, pos)
            value = pool[struct.unpack_from(">H", data, pos + 6)[0]] if pool[attr_name] == "ConstantValue" else None
            if isinstance(value, tuple):
                constants[pool[name]] = pool[value[1]]
            pos += 6 + size
    return constants


# ------------------------------------------------------------------------ Java's String.toLowerCase

_SIGMA = "\u03a3"


def _java_lower(token: str) -> str:
    """``token.toLowerCase(Locale.ENGLISH)``: ``str.lower`` except for where Java writes a final sigma."""
    if _SIGMA not in token:
        return token.lower()
    bounds = _java_word_bounds(token)
    return "".join(("\u03c2" if _java_final_sigma(token, i, bounds) else "\u03c3") if ch == _SIGMA
                   else ch.lower() for i, ch in enumerate(token))


def _java_final_sigma(token: str, index: int, bounds: set[int]) -> bool:
    """ConditionalSpecialCasing.isFinalCased: a cased letter before, none after, within the word."""
    pos = index
    while pos > 0 and pos not in bounds:
        if _java_cased(token[pos - 1]):
            after = index + 1
            while after < len(token) and after not in bounds:
                if _java_cased(token[after]):
                    return False
                after += 1
            return True
        pos -= 1
    return False


def _java_cased(ch: str) -> bool:
    code = ord(ch)
    return unicodedata.category(ch) in ("Lu", "Ll", "Lt") or any(lo <= code <= hi for lo, hi in _JAVA_OTHER_CASED)


_JAVA_OTHER_CASED = ((0x2B0, 0x2B8), (0x2C0, 0x2C1), (0x2E0, 0x2E4), (0x345, 0x345), (0x37A, 0x37A),
                     (0x1D2C, 0x1D61), (0x2160, 0x217F), (0x24B6, 0x24E9))
# Java's legacy word BreakIterator, over one class letter per char: L letter, D digit, w/q/. mid-word, q/c/.
# mid-number, p/. pre-number, s post-number, n danda, o anything else (a segment of its own).
_WORD, _NUMBER = r"L+(?:[wq.]L+)*n?", r"D+(?:[qc.]D+)*"
_WORD_RULES = (re.compile(rf"(?:{_WORD})?(?:{_NUMBER}{_WORD})*(?:{_NUMBER}s?)?"),
               re.compile(rf"[p.](?:{_NUMBER}{_WORD})*(?:{_NUMBER}s?)?"))
_CJK = re.compile("[\u3005\u3041-\u309e\u30a1-\u30fe\u3400-\u4db5\u4e00-\u9fa5\uf900-\ufa6a]")
_CLASS_OF = {".": ".", "'": "q", '"': "q", ",": "c", "\u066b": "c", "\u00ad": "w", "\u2027": "w", "#": "p",
             "\u0964": "n", "\u0965": "n", **dict.fromkeys("%&\u00a2\u066a\u2030\u2031", "s")}


def _break_class(ch: str) -> str:
    """Class letter of ``ch``; "f" for format chars, "m" for combining marks (both handled by position)."""
    if ch in _CLASS_OF:
        return _CLASS_OF[ch]
    category = unicodedata.category(ch)
    if category in ("Pd", "Pc"):
        return "w"
    if category == "Sc":
        return "p"
    if category[0] == "N":
        return "D"
    if category == "Cf":
        return "f"
    if category in ("Mn", "Me"):
        return "m"
    return "L" if (category[0] == "L" or category == "Mc") and not _CJK.match(ch) else "o"


def _java_word_bounds(token: str) -> set[int]:
    """Word boundary offsets of ``token`` as Java's word BreakIterator reports them (verified empirically).

    Format chars stick to the char before them (to the next one at the start). Combining marks stick to the
    char before them and end its segment unless it is a letter or digit; leading marks are segments of their own.
    """
    starts, classes, leading = [], [], True  # original offset and class of the chars segmented
    for i, ch in enumerate(token):
        cls = _break_class(ch)
        if cls == "f" or (cls == "m" and not leading and classes[-1] in "LD"):
            continue
        if cls == "m" and not leading:
            classes[-1] = "o"
            continue
        leading = leading and cls == "m"
        starts.append(i)
        classes.append("o" if cls == "m" else cls)
    text = "".join(classes)
    bounds, pos = {0, len(token)}, 0
    while pos < len(text):
        matches = [m.end() for m in (rule.match(text, pos) for rule in _WORD_RULES) if m]
        pos = max([pos + 1, *matches])
        if pos < len(text):
            bounds.add(starts[pos])
    return bounds
