"""Chat messages to constraints: what a user says mid-run, as rules every planner is held to.

"don't prune the vision encoder" -> exclude modules whose names match the vision encoder from
pruning; "no pruning" -> pruning banned; "go to 4 bits" -> prefer 4-bit methods; "stop" -> finish.
The parser is deliberately small and literal; what it does not understand is still passed to an
LLM planner as (untrusted) text, and the reply says what was understood.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from agents.state import Instructions

_NEG = r"(?:don'?t|do not|never|avoid|without|no|skip|stop)"
_WORD = re.compile(r"[a-z0-9_]+")
_STOP_WORDS = {
    "the",
    "a",
    "an",
    "any",
    "of",
    "layers",
    "layer",
    "modules",
    "module",
    "part",
    "parts",
    "its",
    "my",
}


def _block_patterns(phrase: str, module_names: Iterable[str]) -> list[str]:
    """fnmatch patterns for the modules a phrase names ("vision encoder" -> 'vision_encoder*')."""
    words = [w for w in _WORD.findall(phrase.lower()) if w not in _STOP_WORDS]
    if not words:
        return []
    names = list(module_names)
    joined = "_".join(words)
    patterns: list[str] = []
    # Prefer the top-level names that contain every word ("vision_encoder" for "vision encoder").
    tops = sorted({n.split(".")[0] for n in names})
    for top in tops:
        low = top.lower()
        if joined in low or all(w in low for w in words):
            patterns.append(f"{top}*")
    if not patterns:
        for top in tops:
            if any(w in top.lower() for w in words if len(w) > 2):
                patterns.append(f"{top}*")
    if not patterns:
        patterns.append(f"*{joined}*")
    return patterns


def apply_message(
    instructions: Instructions, text: str, module_names: Iterable[str] = ()
) -> tuple[Instructions, str]:
    """The instructions after one user message, and a reply saying what was understood."""
    ins = instructions.model_copy(deep=True)
    low = text.lower().strip()
    understood: list[str] = []
    names = list(module_names)

    m = re.search(
        r"(?:don'?t|do not|never|avoid)\s+(prun\w*|quantiz\w*|touch\w*|modify\w*|chang\w*)\s+(?:the\s+)?([a-z0-9_ .-]+)",  # noqa: E501
        low,
    )
    target_phrase = m.group(2).strip(" .") if m else ""
    if (
        m
        and target_phrase
        and not re.fullmatch(r"(it|anything|at all|more|any more|anymore|please|now)\b.*", target_phrase)
    ):
        verb = m.group(1)
        patterns = _block_patterns(target_phrase, names)
        if verb.startswith("prun") or verb.startswith(("touch", "modify", "chang")):
            ins.exclude_prune = sorted(set(ins.exclude_prune) | set(patterns))
        if verb.startswith("quantiz") or verb.startswith(("touch", "modify", "chang")):
            ins.exclude_quantize = sorted(set(ins.exclude_quantize) | set(patterns))
        what = "prune" if verb.startswith("prun") else "quantize" if verb.startswith("quantiz") else "change"
        understood.append(f"I will not {what} modules matching {', '.join(patterns)}.")
    elif re.search(rf"\b{_NEG}\s+(?:more\s+)?prun\w*\b|\bno\s+prun\w*|\bonly\s+quantiz\w*", low):
        if "pruning" not in ins.banned_techniques:
            ins.banned_techniques.append("pruning")
        understood.append("No more pruning: I will only use the other allowed techniques.")
    elif re.search(rf"\b{_NEG}\s+(?:more\s+)?quantiz\w*\b|\bno\s+quantiz\w*|\bonly\s+prun\w*", low):
        for t in ("quantization", "half_precision"):
            if t not in ins.banned_techniques:
                ins.banned_techniques.append(t)
        understood.append("No quantization: I will only prune.")

    bits = re.search(r"\b(4|8|16)[\s-]*bits?\b|\bint(4|8)\b|\bnf4\b|\bfp16\b|\bhalf precision\b", low)
    if bits:
        token = bits.group(0)
        n = 4 if ("4" in token and "16" not in token) or "nf4" in token else 8 if "8" in token else 16
        ins.prefer_bits = n
        understood.append(f"I will prefer {n}-bit methods where this device supports them.")

    if re.search(r"\b(stop|finish|that'?s enough|good enough|wrap up)\b", low) and not m:
        ins.finish_requested = True
        understood.append("I will stop after the current step and report the best version so far.")

    if not understood:
        ins.notes.append(text[:500])
        reply = "Noted. I did not recognise a concrete constraint in that message; it is kept as context."
    else:
        reply = " ".join(understood)
    return ins, reply
