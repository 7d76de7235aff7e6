"""Unified diffs: make one, parse one, and apply one tolerantly.

A diff written by a language model is a guess. Its `@@ -a,b +c,d @@` counts are often wrong, its
line numbers drift, and it sometimes loses indentation or a trailing space. `patch` would reject
most of them; ELM wants every diff that *means* something to apply. So the applier here:

- locates each hunk's old lines (context + removed) by *content*; the header's line number is only
  a hint, used to pick the nearest of several matches;
- compares exactly first, then ignoring trailing whitespace, then ignoring all whitespace runs;
- if the full block is not found, trims up to `max_fuzz` context lines from its ends (as `patch`'s
  fuzz does) -- never removed lines, which must all be present;
- reports why a hunk failed (`DiffError.reason`: `parse`, `empty`, `not_found`), so a run's journal
  says which diffs were malformed and which described text that is not there.

Our own diffs (from `make_diff`) always apply exactly: `apply_diff(a, make_diff(a, b)) == b`.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field

NO_NEWLINE = "\\ No newline at end of file"
_HEADER = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")
_LOOSE_OLD = re.compile(r"-(\d+)")
_LOOSE_NEW = re.compile(r"\+(\d+)")


class DiffError(ValueError):
    """A diff that cannot be parsed or applied. `reason` is a short machine-readable kind."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


@dataclass
class Hunk:
    """One `@@` block. `lines` are (tag, text) with tag in ' ', '-', '+'; each text keeps its
    trailing newline unless the diff marked it `\\ No newline at end of file`."""

    old_start: int
    new_start: int
    lines: list[tuple[str, str]] = field(default_factory=list)

    @property
    def old(self) -> list[str]:
        return [text for tag, text in self.lines if tag != "+"]

    @property
    def new(self) -> list[str]:
        return [text for tag, text in self.lines if tag != "-"]

    @property
    def changes(self) -> bool:
        return any(tag != " " for tag, _ in self.lines)


def split_lines(text: str) -> list[str]:
    """Split on '\\n' only, keeping it (str.splitlines also splits on \\r, \\f, \\x1c, ...)."""
    return re.findall(r"[^\n]*\n|[^\n]+$", text)


# ---- making ----------------------------------------------------------------------------------------


def make_diff(before: str, after: str, name: str = "walker.py", context: int = 3) -> str:
    """The unified diff from `before` to `after` ('' when they are equal)."""
    a, b = split_lines(before), split_lines(after)
    matcher = difflib.SequenceMatcher(None, a, b, autojunk=False)
    out: list[str] = []
    for group in matcher.get_grouped_opcodes(context):
        if not out:
            out += [f"--- a/{name}\n", f"+++ b/{name}\n"]
        i1, i2, j1, j2 = group[0][1], group[-1][2], group[0][3], group[-1][4]
        out.append(f"@@ -{_range(i1, i2 - i1)} +{_range(j1, j2 - j1)} @@\n")
        for tag, a1, a2, b1, b2 in group:
            if tag == "equal":
                out += [_body(" ", line) for line in a[a1:a2]]
                continue
            out += [_body("-", line) for line in a[a1:a2]]
            out += [_body("+", line) for line in b[b1:b2]]
    return "".join(out)


def _range(start: int, length: int) -> str:
    # unified format: 1-based start; an empty range names the line *before* it.
    first = start + 1 if length else start
    return f"{first}" if length == 1 else f"{first},{length}"


def _body(tag: str, line: str) -> str:
    return tag + line if line.endswith("\n") else f"{tag}{line}\n{NO_NEWLINE}\n"


# ---- parsing ---------------------------------------------------------------------------------------


def parse_diff(diff: str) -> list[Hunk]:
    """Hunks of a unified diff. Text before the first `@@` (file headers, chatter) is skipped.

    Counts in the header are used when they agree with the body; a model's miscounted hunk is
    read by line prefixes instead, until a line that cannot belong to a hunk.
    Raises DiffError('parse') when there is no hunk, or a hunk has no lines.
    """
    lines = split_lines(diff)
    hunks: list[Hunk] = []
    k = 0
    while k < len(lines):
        line = lines[k]
        if not line.startswith("@@"):
            k += 1
            continue
        header = _HEADER.match(line)
        if header:
            old_start, old_len = int(header[1]), int(header[2] if header[2] is not None else 1)
            new_start, new_len = int(header[3]), int(header[4] if header[4] is not None else 1)
        else:  # "@@ -32,7 @@", "@@ @@", a mangled header: line numbers as hints, no counts
            loose_old, loose_new = _LOOSE_OLD.search(line), _LOOSE_NEW.search(line)
            old_start = int(loose_old[1]) if loose_old else 0
            new_start = int(loose_new[1]) if loose_new else old_start
            old_len = new_len = -1
        hunk = Hunk(old_start, new_start)
        k = _read_counted(lines, k + 1, hunk, old_len, new_len)
        if not hunk.lines:
            raise DiffError("parse", f"hunk {len(hunks) + 1} has no lines")
        hunks.append(hunk)
    if not hunks:
        raise DiffError("parse", "no '@@' hunk header found")
    return hunks


def _read_counted(lines: list[str], k: int, hunk: Hunk, old_len: int, new_len: int) -> int:
    """Read a hunk body from lines[k:]; returns the index after it."""
    counted = old_len >= 0
    old_left, new_left = old_len, new_len
    while k < len(lines):
        line = lines[k]
        if counted and old_left <= 0 and new_left <= 0:
            # counts satisfied: only a no-newline marker may still belong to this hunk, unless
            # the counts were wrong and the body plainly continues (not a new header / file).
            if line.rstrip("\n") == NO_NEWLINE:
                _mark_no_newline(hunk)
                k += 1
                continue
            if not _continues_body(lines, k):
                break
            counted = False
        tag, text = _body_line(line)
        if tag is None:
            if line.rstrip("\n") == NO_NEWLINE:
                _mark_no_newline(hunk)
                k += 1
                continue
            break
        if not counted and _is_file_header(lines, k):
            break
        hunk.lines.append((tag, text))
        if tag != "+":
            old_left -= 1
        if tag != "-":
            new_left -= 1
        k += 1
    return k


def _body_line(line: str) -> tuple[str | None, str]:
    if line in ("\n", ""):  # a context line whose leading space was stripped
        return " ", "\n"
    if line[0] in " -+":
        return line[0], line[1:]
    return None, line


def _continues_body(lines: list[str], k: int) -> bool:
    line = lines[k]
    if line.startswith("@@") or _is_file_header(lines, k):
        return False
    return line[:1] in (" ", "-", "+")


def _is_file_header(lines: list[str], k: int) -> bool:
    return (
        lines[k].startswith("--- ") and k + 1 < len(lines) and lines[k + 1].startswith("+++ ")
    ) or (lines[k].startswith("+++ ") and k > 0 and lines[k - 1].startswith("--- "))


def _mark_no_newline(hunk: Hunk) -> None:
    if hunk.lines:
        tag, text = hunk.lines[-1]
        hunk.lines[-1] = (tag, text[:-1] if text.endswith("\n") else text)


# ---- applying --------------------------------------------------------------------------------------


def _exact(s: str) -> str:
    return s


def _rstrip(s: str) -> str:
    return s.rstrip()


def _squash(s: str) -> str:
    return " ".join(s.split())


#: Line comparisons, strictest first.
_LEVELS = (_exact, _rstrip, _squash)


def apply_diff(text: str, diff: str, max_fuzz: int = 2) -> str:
    """Apply `diff` to `text`; raises DiffError naming the first hunk that fails and why."""
    hunks = parse_diff(diff)
    if not any(h.changes for h in hunks):
        raise DiffError("empty", "the diff changes nothing")
    lines = split_lines(text)
    offset = 0  # how far earlier hunks moved later line numbers
    floor = 0  # hunks apply in order: never match above the previous hunk's end
    for number, hunk in enumerate(hunks, 1):
        hint = _stated(hunk) + offset if hunk.old_start else floor
        placed = _locate(lines, hunk, hint, floor, max_fuzz)
        if placed is None:
            raise DiffError(
                "not_found",
                f"hunk {number} (@@ -{hunk.old_start}): its old lines "
                f"{_preview(hunk.old)} are not in the program",
            )
        start, trimmed = placed
        body = hunk.lines[trimmed[0] : len(hunk.lines) - trimmed[1]]
        old = [t for tag, t in body if tag != "+"]
        new = _replacement(body, lines[start : start + len(old)])
        lines[start : start + len(old)] = new
        if hunk.old_start:  # later hunks drift as far as this one did, plus what it added
            offset = start - (_stated(hunk) + trimmed[0]) + len(new) - len(old)
        elif not hunk.old:  # `@@ -0,0 +1,k @@`: lines added at the top move the rest down
            offset += len(new)
        floor = start + len(new)
    return "".join(lines)


def _replacement(body: list[tuple[str, str]], found: list[str]) -> list[str]:
    """The new lines for a matched block. Context lines are kept as the file has them; added
    lines are re-indented by however much the file's indentation differs from the diff's at the
    nearest old line above (below, for a hunk that starts with an addition), so a diff that lost
    its indentation still yields the indentation the program needs."""
    old = [t for tag, t in body if tag != "+"]
    if found == old:  # exact match: the diff's own lines are right
        return [t for tag, t in body if tag != "-"]
    out: list[str] = []
    k = 0  # index into found (the file's old lines)
    shift = None
    for tag, text in body:
        if tag != "+":
            shift = _indent(found[k]) - _indent(text) if text.strip() else shift
            if tag == " ":
                out.append(found[k])
            k += 1
            continue
        if shift is None:  # addition before any old line: use the next old line's shift
            pairs = [(f, t) for f, t in zip(found, old) if t.strip()]
            shift = _indent(pairs[0][0]) - _indent(pairs[0][1]) if pairs else 0
        out.append(_reindent(text, shift))
    return out


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" \t"))


def _reindent(line: str, shift: int) -> str:
    if shift > 0 and line.strip():
        return " " * shift + line
    if shift < 0:
        cut = min(-shift, _indent(line))
        return line[cut:]
    return line


def _stated(hunk: Hunk) -> int:
    """0-based index the header names; an empty old range names the line *before* it."""
    return hunk.old_start if not hunk.old else hunk.old_start - 1


def _locate(
    lines: list[str], hunk: Hunk, hint: int, floor: int, max_fuzz: int
) -> tuple[int, tuple[int, int]] | None:
    """(start index, (context lines trimmed at head, at tail)) of the best match, or None."""
    body = hunk.lines
    head_ctx = next((i for i, (tag, _) in enumerate(body) if tag != " "), len(body))
    tail_ctx = next((i for i, (tag, _) in enumerate(reversed(body)) if tag != " "), len(body))
    for fuzz in range(max_fuzz + 1):
        for level in _LEVELS:
            for cut_head in range(min(fuzz, head_ctx) + 1):
                cut_tail = min(fuzz - cut_head, tail_ctx)
                part = body[cut_head : len(body) - cut_tail]
                old = [level(t) for tag, t in part if tag != "+"]
                start = _find(lines, old, hint + cut_head, floor, level)
                if start is not None:
                    return start, (cut_head, cut_tail)
    return None


def _find(lines: list[str], old: list[str], hint: int, floor: int, level) -> int | None:
    n = len(old)
    if n == 0:  # pure insertion: the line number is all we have
        return min(max(hint, floor), len(lines))
    keyed = [level(t) for t in lines]
    starts = [s for s in range(len(lines) - n + 1) if keyed[s : s + n] == old]
    if not starts:
        return None
    after = [s for s in starts if s >= floor]
    pool = after or starts
    return min(pool, key=lambda s: (abs(s - hint), s))


def _preview(old: list[str]) -> str:
    text = "".join(old).strip().replace("\n", " | ")
    return repr(text[:80] + ("..." if len(text) > 80 else ""))


@dataclass(frozen=True)
class Applied:
    """The outcome of `try_apply`: the new text, or why there is none. `rule` says what placed
    the hunks of an applied diff: `content` (this module's applier) or `number` (the numbered
    format's line-number fallback, `diff_format.apply_numbered`)."""

    text: str | None
    reason: str | None = None
    message: str | None = None
    rule: str | None = None

    @property
    def ok(self) -> bool:
        return self.text is not None


def try_apply(text: str, diff: str, max_fuzz: int = 2) -> Applied:
    """`apply_diff` that returns its failure instead of raising (never raises)."""
    try:
        return Applied(apply_diff(text, diff, max_fuzz), rule="content")
    except DiffError as err:
        return Applied(None, err.reason, err.message)
    except Exception as err:  # a diff is untrusted input: no malformed one may crash a run
        return Applied(None, "parse", f"{type(err).__name__}: {err}"[:300])
