"""The questions a rater answers for each blinded pair, and the validation of an answer set.

The default set (shown with the prompt): for each of the two images realism 1-5 and accuracy to the prompt
1-5; then "Which image is generated?" (left/right) with confidence 1-5; an optional comment; "cannot
assess" with a reason. When "cannot assess" is ticked only the reason is required.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from db.errors import InputError

MAX_COMMENT_CHARS = 2000


class QuestionKind(enum.StrEnum):
    """How a question is answered."""

    SCALE = "scale"
    CHOICE = "choice"
    TEXT = "text"
    FLAG = "flag"


REALISM_ANCHORS = (
    "Clearly artificial",
    "Probably artificial",
    "Unsure",
    "Probably real",
    "Indistinguishable from real",
)
ACCURACY_ANCHORS = ("Does not match", "Barely matches", "Partly matches", "Mostly matches", "Fully matches")
CONFIDENCE_ANCHORS = ("Guessing", "Slightly sure", "Fairly sure", "Very sure", "Certain")


@dataclass(frozen=True)
class Question:
    """One question; ``key`` is the answer's column in exports."""

    key: str
    label: str
    kind: QuestionKind
    required: bool = True
    anchors: tuple[str, ...] = ()
    choices: tuple[str, ...] = ()
    side: str | None = None

    @property
    def scale_max(self) -> int:
        return len(self.anchors)


@dataclass(frozen=True)
class QuestionSet:
    """An ordered set of questions with the rule for "cannot assess"."""

    questions: tuple[Question, ...] = field(default_factory=tuple)

    def keys(self) -> list[str]:
        return [q.key for q in self.questions]

    def validate(self, answers: dict[str, Any]) -> dict[str, Any]:
        """Return cleaned answers, or raise :class:`InputError` naming every missing or bad answer."""
        clean: dict[str, Any] = {}
        problems: list[str] = []
        unknown = sorted(set(answers) - set(self.keys()))
        if unknown:
            problems.append(f"unknown answer(s): {', '.join(unknown)}")
        cannot = bool(answers.get("cannot_assess"))
        for q in self.questions:
            value = answers.get(q.key)
            if value in (None, ""):
                needed = q.key == "cannot_assess_reason" if cannot else (q.required and q.key != "cannot_assess_reason")
                if needed:
                    problems.append(f"missing: {q.key}")
                clean[q.key] = False if q.kind == QuestionKind.FLAG else None
                continue
            if q.kind == QuestionKind.SCALE:
                try:
                    if isinstance(value, bool):
                        raise TypeError("a flag is not a scale answer")
                    number = int(value)
                except (TypeError, ValueError, OverflowError):  # OverflowError: inf
                    problems.append(f"{q.key}: {value!r} is not a whole number")
                    continue
                if (isinstance(value, float) and value != number) or not 1 <= number <= q.scale_max:
                    problems.append(f"{q.key}: {value!r} is outside 1-{q.scale_max}")
                    continue
                clean[q.key] = number
            elif q.kind == QuestionKind.CHOICE:
                if value not in q.choices:
                    problems.append(f"{q.key}: {value!r} is not one of {', '.join(q.choices)}")
                    continue
                clean[q.key] = value
            elif q.kind == QuestionKind.FLAG:
                clean[q.key] = bool(value)
            else:
                text = str(value)
                if len(text) > MAX_COMMENT_CHARS:
                    problems.append(f"{q.key}: longer than {MAX_COMMENT_CHARS} characters")
                    continue
                clean[q.key] = text.replace("\x00", "")
        if problems:
            raise InputError("; ".join(problems))
        return clean

    def missing(self, answers: dict[str, Any]) -> list[str]:
        """Keys of the required answers not given yet (for highlighting in the form)."""
        try:
            self.validate(answers)
        except InputError as exc:
            return [p.removeprefix("missing: ") for p in str(exc).split("; ") if p.startswith("missing: ")]
        return []


def _scale(key: str, label: str, anchors: tuple[str, ...], side: str | None = None) -> Question:
    return Question(key=key, label=label, kind=QuestionKind.SCALE, anchors=anchors, side=side)


DEFAULT_QUESTIONS = QuestionSet(
    (
        _scale("realism_left", "Realism of the left image", REALISM_ANCHORS, "left"),
        _scale("accuracy_left", "Accuracy of the left image to the prompt", ACCURACY_ANCHORS, "left"),
        _scale("realism_right", "Realism of the right image", REALISM_ANCHORS, "right"),
        _scale("accuracy_right", "Accuracy of the right image to the prompt", ACCURACY_ANCHORS, "right"),
        Question("which_generated", "Which image is generated?", QuestionKind.CHOICE, choices=("left", "right")),
        _scale("confidence", "How sure are you?", CONFIDENCE_ANCHORS),
        Question("comment", "Comment (optional)", QuestionKind.TEXT, required=False),
        Question("cannot_assess", "Cannot assess this pair", QuestionKind.FLAG, required=False),
        Question("cannot_assess_reason", "Why can this pair not be assessed?", QuestionKind.TEXT, required=False),
    )
)
