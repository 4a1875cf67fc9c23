"""One question schema: the form's questions, the analysis' per-image questions and their levels of measurement."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from analysis import agreement, scores
from db.export import RATING_COLUMNS
from db.questions import (
    ANALYSED_QUESTIONS,
    CORRECT,
    DEFAULT_QUESTIONS,
    IMAGE_SCORES,
    Level,
    QuestionKind,
)


def test_the_analysed_questions_are_the_form_questions_after_unblinding() -> None:
    form = {q.key: q for q in DEFAULT_QUESTIONS.questions}
    assert list(ANALYSED_QUESTIONS) == [
        "realism_generated", "realism_real", "accuracy_generated", "accuracy_real", "which_generated",
    ]  # fmt: skip
    for key, question in ANALYSED_QUESTIONS.items():
        assert key in RATING_COLUMNS  # the tidy export has a column for every analysed question
        if question.kind == QuestionKind.SCALE:
            asked = form[key.rsplit("_", 1)[0] + "_left"]
            assert (question.anchors, question.level, question.side) == (asked.anchors, Level.ORDINAL, None)
            assert question.categories == (1.0, 2.0, 3.0, 4.0, 5.0)
    which = ANALYSED_QUESTIONS["which_generated"]
    assert which is form["which_generated"] and which.level == Level.NOMINAL
    assert which.codes == {"left": 0.0, "right": 1.0} and which.categories == (0.0, 1.0)
    assert IMAGE_SCORES == scores.SCORE_QUESTIONS == ("realism", "accuracy")
    assert CORRECT.level == Level.NOMINAL and CORRECT.categories == (0.0, 1.0) and CORRECT.codes is None


def test_every_form_question_has_an_explicit_level_except_free_text() -> None:
    for question in DEFAULT_QUESTIONS.questions:
        assert (question.level is None) == (question.kind == QuestionKind.TEXT), question.key


def test_agreement_reads_the_schema_and_its_level_chooses_the_statistics() -> None:
    assert agreement.QUESTIONS is ANALYSED_QUESTIONS
    realism = ANALYSED_QUESTIONS["realism_generated"]
    ordinal = agreement._agreement_statistics(realism)
    nominal = agreement._agreement_statistics(dataclasses.replace(realism, level=Level.NOMINAL))
    assert "krippendorff_alpha_ordinal" in ordinal and "icc2_complete_items" in ordinal
    assert "krippendorff_alpha_nominal" in nominal and "gwet_ac1" in nominal and "icc2_complete_items" not in nominal
    frame = pd.DataFrame({"rater": ["a", "a", "b"], "item": ["x", "y", "x"], "which_generated": ["left", "right", "x"]})
    matrix = agreement.ratings_matrix(frame, "which_generated")
    np.testing.assert_array_equal(matrix.values, [[0.0, 1.0], [np.nan, np.nan]])


def test_the_report_prose_states_the_level_the_schema_gives(monkeypatch: pytest.MonkeyPatch) -> None:
    from analysis import report

    assert report._level_prose("realism_generated") == "ordinal (1-5), "
    assert report._level_prose("which_generated") == "nominal (left / right), "
    interval = dataclasses.replace(ANALYSED_QUESTIONS["realism_generated"], level=Level.INTERVAL)
    monkeypatch.setitem(ANALYSED_QUESTIONS, "realism_generated", interval)
    assert report._level_prose("realism_generated") == "interval (1-5), "
