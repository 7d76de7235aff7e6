"""The AST policy's fast path, against Python's own tokenizer: text the fast path clears (no
syntax tree built) must hold no identifier a rule of `check_tree` is about."""

from __future__ import annotations

import io
import keyword
import string
import tokenize
import warnings

from hypothesis import given, settings
from hypothesis import strategies as st

from elmjax.sandbox.policy import _SUSPICIOUS_WORDS, check_tree, needs_tree_check
from elmjax.sodarace.seeds import load_seeds

#: Pieces programs are made of, suspicious words among them, glued in any order.
PIECES = [
    *sorted(_SUSPICIOUS_WORDS), "x", "make_walker", "wc", "1", "2.5", "0x1f", "_", "__", "a1",
    " ", "  ", "\n", "\t", ".", ",", "(", ")", "[", "]", ":", "=", "+", "#", "'", '"', "\\",
    "def", "return", "import", "math", "lambda", "é",
]  # fmt: skip


def _names(text: str) -> set[str]:
    """Every NAME token Python's tokenizer finds in `text` (as far as it tokenizes)."""
    names = set()
    try:
        for token in tokenize.generate_tokens(io.StringIO(text).readline):
            if token.type == tokenize.NAME:
                names.add(token.string)
    except (tokenize.TokenError, IndentationError, SyntaxError):
        pass
    return names


def test_suspicious_words_are_letters_and_underscores():
    """`needs_tree_check` splits text at every other byte, digits included."""
    allowed = set(string.ascii_letters + "_")
    assert all(set(word) <= allowed for word in _SUSPICIOUS_WORDS)


ATOMS = [*sorted(_SUSPICIOUS_WORDS), "x", "a1", "_", "1", "0x1f", "2.5", "1e3", "'s'", "()"]
OPERATORS = [" + ", "+", ".", " if 1 else ", " or ", "and", ", ", "[0]", "(1)", " "]


@st.composite
def statements(draw) -> str:
    """Lines of `name = expression`, atoms glued to operators (and to each other) in every way,
    so that words meet digits, dots and brackets without spaces."""
    lines = []
    for _ in range(draw(st.integers(1, 4))):
        parts = [draw(st.sampled_from(ATOMS))]
        for _ in range(draw(st.integers(0, 4))):
            parts += [draw(st.sampled_from(OPERATORS)), draw(st.sampled_from(ATOMS))]
        lines.append(draw(st.sampled_from(["y", "z", "q1"])) + " = " + "".join(parts))
    return "\n".join(lines) + "\n"


def _check_fast_path_against_the_tokenizer(text: str) -> None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # `1if` and the like: deprecated, still compiled
            compile(text, "<program>", "exec", dont_inherit=True)
    except (SyntaxError, ValueError):
        return  # the fast path compiles the text: what does not compile runs nothing
    names = _names(text)
    if names & _SUSPICIOUS_WORDS or any(n.startswith("__") for n in names):
        assert needs_tree_check(text), text


@settings(max_examples=1500, deadline=None)
@given(statements())
def test_fast_path_never_clears_a_suspicious_identifier(text):
    _check_fast_path_against_the_tokenizer(text)


@settings(max_examples=1000, deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=40))
def test_fast_path_never_clears_a_suspicious_identifier_in_any_text(pieces):
    text = "".join(pieces)
    _check_fast_path_against_the_tokenizer(text)
    if not text.isascii() or "__" in text:
        assert needs_tree_check(text)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=40))
def test_text_the_fast_path_clears_passes_the_tree_check(pieces):
    """Whatever parses and takes the fast path breaks no rule of the full check."""
    import ast

    text = "".join(pieces)
    if needs_tree_check(text):
        return
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return
    check_tree(tree)


def test_seeds_take_the_fast_path():
    """The seeds (what honest programs look like) skip the syntax tree."""
    assert not any(needs_tree_check(text) for text in load_seeds().values())
    assert keyword.iskeyword("class") and "class" in _SUSPICIOUS_WORDS
