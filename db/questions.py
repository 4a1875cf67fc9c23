"""The questions a rater answers for each blinded pair, and the validation of an answer set.

The default set (shown with the prompt): for each of the two images realism 1-5 and accuracy to the prompt
1-5; then "Which image is generated?" (left/right) with confidence 1-5; an optional comment; "cannot
assess" with a reason. When "cannot assess" is ticked only the reason is required.

This module is the one schema of the study's questions: the rater form reads :data:`DEFAULT_QUESTIONS`, and
the analysis reads :data:`ANALYSED_QUESTIONS` (the same questions after unblinding: per image kind instead
of per side) with each question's level of measurement (:class:`Level`), which chooses its statistics.
"""

from __future__ import annotations

import dataclasses
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


class Level(enum.StrEnum):
    """Level of measurement of an answer (Stevens 1946); it chooses the agreement statistics."""

    NOMINAL = "nominal"
    ORDINAL = "ordinal"
    INTERVAL = "interval"
    RATIO = "ratio"


#: The level a question has when its definition does not name one (free text has none).
DEFAULT_LEVELS: dict[QuestionKind, Level | None] = {
    QuestionKind.SCALE: Level.ORDINAL,
    QuestionKind.CHOICE: Level.NOMINAL,
    QuestionKind.FLAG: Level.NOMINAL,
    QuestionKind.TEXT: None,
}


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
    """One question; ``key`` is the answer's column in exports (and in the analysis' tidy table).

    ``level`` is its level of measurement (``None``: the kind's default in :data:`DEFAULT_LEVELS`).
    """

    key: str
    label: str
    kind: QuestionKind
    required: bool = True
    anchors: tuple[str, ...] = ()
    choices: tuple[str, ...] = ()
    side: str | None = None
    level: Level | None = None

    def __post_init__(self) -> None:
        if self.level is None:
            object.__setattr__(self, "level", DEFAULT_LEVELS[self.kind])

    @property
    def scale_max(self) -> int:
        return len(self.anchors)

    @property
    def codes(self) -> dict[str, float] | None:
        """Numeric codes of a choice's answers in the order offered (``left`` 0, ``right`` 1); else ``None``."""
        return {choice: float(k) for k, choice in enumerate(self.choices)} if self.kind == QuestionKind.CHOICE else None

    @property
    def categories(self) -> tuple[float, ...]:
        """The numeric values an answer can take: 1..scale_max, the choices' codes, 0/1 for a flag."""
        if self.kind == QuestionKind.SCALE:
            return tuple(float(v) for v in range(1, self.scale_max + 1))
        if self.kind == QuestionKind.CHOICE:
            return tuple(float(k) for k in range(len(self.choices)))
        if self.kind == QuestionKind.FLAG:
            return (0.0, 1.0)
        return ()


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
    return Question(key=key, label=label, kind=QuestionKind.SCALE, anchors=anchors, side=side, level=Level.ORDINAL)


DEFAULT_QUESTIONS = QuestionSet(
    (
        _scale("realism_left", "Realism of the left image", REALISM_ANCHORS, "left"),
        _scale("accuracy_left", "Accuracy of the left image to the prompt", ACCURACY_ANCHORS, "left"),
        _scale("realism_right", "Realism of the right image", REALISM_ANCHORS, "right"),
        _scale("accuracy_right", "Accuracy of the right image to the prompt", ACCURACY_ANCHORS, "right"),
        Question(
            "which_generated",
            "Which image is generated?",
            QuestionKind.CHOICE,
            choices=("left", "right"),
            level=Level.NOMINAL,
        ),
        _scale("confidence", "How sure are you?", CONFIDENCE_ANCHORS),
        Question("comment", "Comment (optional)", QuestionKind.TEXT, required=False),
        Question("cannot_assess", "Cannot assess this pair", QuestionKind.FLAG, required=False),
        Question("cannot_assess_reason", "Why can this pair not be assessed?", QuestionKind.TEXT, required=False),
    )
)

#: The kinds of image a pair shows, named in the analysis' columns (``realism_generated``, ``realism_real``).
IMAGE_KINDS = ("generated", "real")


def _per_image(question: Question, image: str) -> Question:
    """A per-side question as the analysis sees it after unblinding: about the ``image`` kind, not a side."""
    side = f"_{question.side}"
    return dataclasses.replace(
        question,
        key=question.key.removesuffix(side) + f"_{image}",
        label=question.label.replace(f"the {question.side} image", f"the {image} image"),
        side=None,
    )


#: Scores asked of each image of a pair ("realism", "accuracy"), in form order.
IMAGE_SCORES: tuple[str, ...] = tuple(
    q.key.removesuffix("_left") for q in DEFAULT_QUESTIONS.questions if q.side == "left" and q.required
)

#: The rated questions of the tidy ratings table, keyed by column: each per-side score once per image kind,
#: and the Turing answer (left / right coded 0 / 1).
ANALYSED_QUESTIONS: dict[str, Question] = {
    **{
        f"{score}_{image}": _per_image(q, image)
        for q in DEFAULT_QUESTIONS.questions
        if q.side == "left" and q.required
        for score in [q.key.removesuffix("_left")]
        for image in IMAGE_KINDS
    },
    "which_generated": next(q for q in DEFAULT_QUESTIONS.questions if q.key == "which_generated"),
}

#: Whether the generated image was identified (repeats may swap sides, so test-retest compares this).
CORRECT = Question("correct", "Was the generated image identified?", QuestionKind.FLAG, level=Level.NOMINAL)
