"""The blinded rater view: one pair at a time, keyboard-first, no feedback, resumable on any device.

The one exception to "no feedback": a study's optional practice pairs (``practice_pairs``, db.practice),
from outside the study, come first; after each, :func:`practice_screen` names the generated side.

The functional core works on plain values and is tested directly:

* :func:`show_next` finds the rater's next unrated pair and makes a :class:`Screen` for it, with a signed
  display token (rater, position, random nonce, display time) that doubles as the submission id, so a double
  click or a retry sends the same id and is stored once;
* :func:`submit` validates the answers (naming the missing ones), stores the rating, and shows the next pair.
  Answers are bound to their pair: the page sends the display id its answers were given for, and a
  submission whose answers belong to another display is refused (nothing stored, the form cleared). A pair
  already rated in another tab or window is answered with the stored answers, never a silent acknowledgement.

:func:`build_rater_blocks` wires the core to Gradio components. Every handler starts with
:func:`evalapp.auth.require_rater`; an anonymous caller sees only a polite refusal. The page never receives a
model name, hash, file name, dataset or seed: images come from ``/m/<per-display token>`` and the form
knows only the display token.
"""

from __future__ import annotations

import enum
import hashlib
import html
import secrets
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import gradio as gr

from db.errors import AccessDenied, InputError
from db.head_to_head import DEFAULT_KIND, HEAD_TO_HEAD_QUESTIONS, questions_for
from db.head_to_head import KIND as HEAD_TO_HEAD
from db.models import Domain, Side, Study
from db.practice import practice_feedback
from db.questions import DEFAULT_QUESTIONS, Question, QuestionKind, QuestionSet
from db.raters import rater_by_id
from db.ratings import (
    PairView,
    SubmitStatus,
    assigned_item_public_id,
    has_assignments,
    next_pair,
    questions_for_rater,
    record_conflict,
    stored_answers,
    submit_rating,
    upcoming_position,
)
from db.session import Database
from evalapp.auth import REFUSAL, Identity, Role, config, identify, require_rater, sign, unsign
from evalapp.media_routes import image_token, image_url

STATIC_DIR = Path(__file__).resolve().parent / "static"
QUESTIONS: QuestionSet = DEFAULT_QUESTIONS
#: the head-to-head questions without a component of the same key in the default set (the preferences);
#: the page builds one component per key of both sets once and shows a study's own (``questions_for``)
_DEFAULT_KEYS = DEFAULT_QUESTIONS.keys()
EXTRA_QUESTIONS: tuple[Question, ...] = tuple(q for q in HEAD_TO_HEAD_QUESTIONS.questions if q.key not in _DEFAULT_KEYS)
#: every form component's key, in the order of the handlers' inputs and outputs (default set, then extras)
FORM_KEYS: tuple[str, ...] = (*_DEFAULT_KEYS, *(q.key for q in EXTRA_QUESTIONS))
RATER_CONCURRENCY = 4  # rater handlers at once: SQLite writes are serial, 2-4 threads keep both cores busy
CHOICE_LABELS = {"left": "Left image", "right": "Right image", "tie": "No difference"}
CHOICE_KEYS = {"left": "L", "right": "R", "tie": "E"}  #: the keys rater.js binds to each choice
SIDE_KEYS = {"left": "[", "right": "]"}
REFERENCE_LABEL = "Reference (real)"
CHOICE_KEY_HINT = ("L / R", "which image is generated")
PREFERENCE_KEY_HINT = ("L / R / E", "left / right / no difference (equal)")
KEY_HINTS = (
    ("↑ ↓", "move between questions"),
    ("1–5", "answer the highlighted question"),
    CHOICE_KEY_HINT,
    ("Enter", "submit"),
    ("[ / ]", "enlarge left / right image"),
    ("C", "comment"),
    ("N", "cannot assess"),
    ("Esc", "leave a text box / close"),
    ("P", "pause"),
    ("T", "dark / light"),
    ("?", "instructions"),
)
WL_PRESETS = (("default", "As served"), ("soft", "Soft tissue"), ("bright", "Bright"), ("contrast", "High contrast"))


class ScreenKind(enum.StrEnum):
    """What the rater page shows."""

    REFUSED = "refused"
    PAIR = "pair"
    DONE = "done"
    PAUSED = "paused"
    FEEDBACK = "feedback"  #: after a practice pair only (db.practice): which side was generated


@dataclass(frozen=True)
class Screen:
    """One state of the rater page, as plain values."""

    kind: ScreenKind
    message: str = ""
    title: str = ""
    prompt: str = ""
    number: int = 0
    total: int = 0
    done: int = 0
    display_token: str = ""
    left_src: str = ""
    right_src: str = ""
    left_zoom: str = ""
    right_zoom: str = ""
    domain: str = ""
    notice: str = ""
    instructions: str = ""
    next_srcs: str = ""
    study_kind: str = DEFAULT_KIND  #: "head-to-head": both images generated; the preference questions
    reference_src: str = ""  #: head-to-head with a reference: the real image shown above the pair
    practice_number: int = 0  #: a practice pair (1-based), 0 for a real one
    practice_total: int = 0
    rated_any: bool = False  #: the rater has answered a pair before (practice included): no start screen
    feedback_generated: str = ""  #: FEEDBACK screens only: the side that was generated ("left" / "right")

    @property
    def display_id(self) -> str:
        """The id of this display (the nonce of its token): what the page binds its answers to."""
        display = read_display_token(self.display_token) if self.display_token else None
        return display.nonce if display is not None else ""


@dataclass(frozen=True)
class Display:
    """What a display token names."""

    rater_id: int
    position: int
    nonce: str
    shown_ms: int

    @property
    def submission_id(self) -> str:
        return f"d-{self.nonce}"

    @property
    def shown_at(self) -> datetime:
        return datetime.fromtimestamp(self.shown_ms / 1000, UTC).replace(tzinfo=None)


@dataclass(frozen=True)
class SubmitOutcome:
    """The result of a submission: the next screen, or the form kept with the missing answers named."""

    screen: Screen | None
    missing: list[str] = field(default_factory=list)
    message: str = ""
    status: SubmitStatus | None = None


ANOTHER_DISPLAY = "These answers were given for another pair, so nothing was stored. Please answer the pair on screen."
ALREADY_RATED = "This pair was already rated in another tab or window; these answers were not stored."


# ----------------------------------------------------------------------------------------------- tokens


def make_display_token(rater_id: int, position: int, nonce: str | None = None) -> str:
    """A signed token for one display of a pair; its nonce is the submission id."""
    payload = {"k": "pair", "r": rater_id, "p": position, "n": nonce or secrets.token_urlsafe(18)}
    payload["t"] = int(time.time() * 1000)
    return sign(payload, config().secret_key)


def read_display_token(token: str | None) -> Display | None:
    """Decode and verify a display token, or None."""
    payload = unsign(token, config().secret_key)
    if payload is None or payload.get("k") != "pair":
        return None
    r, p, n, t = payload.get("r"), payload.get("p"), payload.get("n"), payload.get("t")
    if not (isinstance(r, int) and isinstance(p, int) and isinstance(n, str) and isinstance(t, int)):
        return None
    return Display(r, p, n, t)


# ----------------------------------------------------------------------------------------------- core


def _study_title(study: Study) -> str:
    title = (study.config or {}).get("title") or ""
    return str(title) or "Image rating"


def image_nonce(display_nonce: str) -> str:
    """The image-name nonce of the pair shown after display ``display_nonce`` (the prefetch names).

    Derived, so the page can fetch the next pair's images while the rater answers and the server names them
    the same when that pair is shown; still one name per display, since display nonces never repeat.
    """
    return hashlib.sha256(f"next-images:{display_nonce}".encode()).hexdigest()[:16]


def pair_screen(
    rater_id: int,
    pair: PairView,
    title: str,
    instructions: str = "",
    *,
    after: str | None = None,
    next_position: int | None = None,
) -> Screen:
    """The screen for ``pair`` with per-display image names.

    ``after``: the display nonce this screen follows (a submission), whose derived names the page has
    prefetched; ``next_position``: the pair expected next, whose image names are given for prefetching.
    """
    nonce = image_nonce(after) if after else secrets.token_urlsafe(9)
    display_nonce = secrets.token_urlsafe(18)
    shown: tuple[tuple[Side | None, str], ...] = ((Side.LEFT, "a"), (Side.RIGHT, "b"))
    if pair.reference:  # the next pair is of the same study: it has a reference too
        shown += ((None, "e"),)
    upcoming = ""
    if next_position is not None:
        ahead = image_nonce(display_nonce)
        upcoming = " ".join(
            image_url(image_token(rater_id, next_position, side, nonce=ahead + suffix)) for side, suffix in shown
        )
    reference = image_url(image_token(rater_id, pair.position, None, nonce=nonce + "e")) if pair.reference else ""
    return Screen(
        kind=ScreenKind.PAIR,
        title=title,
        prompt=pair.prompt,
        number=pair.done + 1,
        total=pair.total,
        done=pair.done,
        display_token=make_display_token(rater_id, pair.position, display_nonce),
        left_src=image_url(image_token(rater_id, pair.position, Side.LEFT, nonce=nonce + "a")),
        right_src=image_url(image_token(rater_id, pair.position, Side.RIGHT, nonce=nonce + "b")),
        left_zoom=image_url(image_token(rater_id, pair.position, Side.LEFT, zoom=True, nonce=nonce + "c")),
        right_zoom=image_url(image_token(rater_id, pair.position, Side.RIGHT, zoom=True, nonce=nonce + "d")),
        domain=pair.domain,
        instructions=instructions,
        next_srcs=upcoming,
        study_kind=pair.kind,
        reference_src=reference,
        practice_number=pair.practice_number,
        practice_total=pair.practice_total,
        rated_any=pair.rated_any,
    )


def show_next(database: Database, rater_id: int, after: str | None = None) -> Screen:
    """The rater's next unrated pair, or the thank-you screen when every pair is rated.

    ``after`` is the display nonce just submitted (its prefetched image names are used).
    """
    with database.session() as session:
        rater = rater_by_id(session, rater_id)
        if rater is None:
            return Screen(ScreenKind.REFUSED, message=REFUSAL)
        title = _study_title(rater.study)
        instructions = str((rater.study.config or {}).get("instructions") or "")
        pair = next_pair(session, rater)
        if pair is None:
            any_pairs = has_assignments(session, rater_id)
            return Screen(
                ScreenKind.DONE,
                title=title,
                message=(
                    "You have rated every pair. Thank you for your time and care!"
                    if any_pairs
                    else "There are no pairs for you in this study yet. Thank you!"
                ),
            )
        upcoming = upcoming_position(session, rater_id, pair.position)
    return pair_screen(rater_id, pair, title, instructions, after=after, next_position=upcoming)


def paused_screen(database: Database, rater_id: int) -> Screen:
    """The pause screen: nothing is lost; the link resumes at the next unrated pair on any device."""
    from db.ratings import progress

    with database.session() as session:
        done, total = progress(session, rater_id)
    return Screen(
        ScreenKind.PAUSED,
        done=done,
        total=total,
        message=(
            f"Paused after {done} of {total} pairs. Every submitted answer is saved. You can close this window: "
            "your personal link brings you back to your next pair, on this or any other device."
        ),
    )


def practice_screen(database: Database, rater_id: int, position: int) -> Screen | None:
    """The feedback after the practice pair at ``position`` (which side was generated, with both images
    named), or None when that pair is not a practice pair: real pairs never get feedback."""
    with database.session() as session:
        feedback = practice_feedback(session, rater_id, position)
        rater = rater_by_id(session, rater_id)
        title = _study_title(rater.study) if rater is not None else ""
    if feedback is None:
        return None
    nonce = secrets.token_urlsafe(9)
    generated = CHOICE_LABELS[feedback.generated_side].lower()
    if feedback.correct is None:
        verdict = "You did not say which image is generated."
    else:
        said = CHOICE_LABELS[feedback.answered or ""].lower()
        verdict = f"You said the {said}: {'correct' if feedback.correct else 'not correct'}."
    message = f"The generated image was the {generated}. {verdict}"
    if feedback.last:
        message += (
            " That was the last practice pair. The study starts now: from here on there is no feedback, "
            "and every answer counts."
        )
    return Screen(
        ScreenKind.FEEDBACK,
        title=title,
        message=message,
        practice_number=feedback.number,
        practice_total=feedback.total,
        rated_any=True,
        feedback_generated=feedback.generated_side,
        left_src=image_url(image_token(rater_id, position, Side.LEFT, nonce=nonce + "a")),
        right_src=image_url(image_token(rater_id, position, Side.RIGHT, nonce=nonce + "b")),
    )


def answers_from_inputs(values: list[Any], questions: QuestionSet = QUESTIONS) -> dict[str, Any]:
    """Map form values (in question order) to an answer dict; empty values are left out."""
    if len(values) != len(questions.questions):
        raise ValueError(f"expected {len(questions.questions)} answers, got {len(values)}")
    answers: dict[str, Any] = {}
    for q, value in zip(questions.questions, values, strict=True):
        if q.kind == QuestionKind.FLAG:
            if value:
                answers[q.key] = True
        elif value not in (None, "") and not (isinstance(value, str) and not value.strip()):
            answers[q.key] = value.strip() if isinstance(value, str) and q.kind == QuestionKind.TEXT else value
    return answers


def _client_ms(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if 0 <= number < 1e9 else None


def rater_questions(database: Database, rater_id: int) -> QuestionSet:
    """The questions the rater's study asks."""
    with database.session() as session:
        return questions_for_rater(session, rater_id)


def stored_summary(answers: dict[str, Any], questions: QuestionSet = QUESTIONS) -> str:
    """The stored answers in words, e.g. "Realism of the left image: 4 (Probably real)"."""
    parts = []
    for q in questions.questions:
        value = answers.get(q.key)
        if value in (None, "", False):
            continue
        if q.kind == QuestionKind.SCALE and isinstance(value, int) and 1 <= value <= q.scale_max:
            parts.append(f"{q.label}: {value} ({q.anchors[value - 1]})")
        elif q.kind == QuestionKind.CHOICE:
            parts.append(f"{q.label}: {CHOICE_LABELS.get(str(value), str(value))}")
        elif q.kind == QuestionKind.FLAG:
            parts.append(q.label)
        else:
            parts.append(f"{q.label}: {value}")
    return "; ".join(parts)


def submit(
    database: Database,
    who: Identity,
    display_token: str | None,
    answers: dict[str, Any],
    *,
    client_ms: Any = None,
    client_at: str | None = None,
    answered_for: str | None = None,
    questions: QuestionSet | None = None,
) -> SubmitOutcome:
    """Store one rating (idempotent by the display's submission id) and return the next screen.

    ``answered_for`` is the display id the page says the answers were given for (None: not stated, as
    from an older page); answers given for another display are refused and the form is shown again blank.
    ``questions``: the rater's study's set (None: looked up, :func:`db.ratings.questions_for_rater`).
    A pair already rated (another tab or window) is not stored again: the conflict is recorded and the
    next screen carries a notice with the stored answers.

    Raises :class:`AccessDenied` when the token is forged or belongs to another rater.
    """
    if who.role != Role.RATER or who.rater_id is None:
        raise AccessDenied("only a rater can submit")
    display = read_display_token(display_token)
    if display is None or display.rater_id != who.rater_id:
        raise AccessDenied("this pair is not yours")
    if answered_for is not None and answered_for != display.nonce and (answers or answered_for):
        screen = show_next(database, who.rater_id, display.nonce)
        return SubmitOutcome(replace(screen, notice=ANOTHER_DISPLAY), message=ANOTHER_DISPLAY)
    if questions is None:
        questions = rater_questions(database, who.rater_id)
    missing = questions.missing(answers)
    if missing:
        labels = [q.label for q in questions.questions if q.key in missing]
        return SubmitOutcome(None, missing=missing, message="Please answer: " + "; ".join(labels) + ".")
    with database.session() as session:
        public_id = assigned_item_public_id(session, who.rater_id, display.position)
    if public_id is None:
        raise AccessDenied("this pair is not yours")
    try:
        result = submit_rating(
            database,
            who.rater_id,
            public_id,
            display.submission_id,
            answers,
            response_ms_client=_client_ms(client_ms),
            client_submitted_at=(client_at or None) and str(client_at)[:40],
            questions=questions,
            shown_at=display.shown_at,
        )
    except InputError as exc:
        return SubmitOutcome(None, message=f"Please check your answers: {exc}")
    if result.status != SubmitStatus.ALREADY_RATED:
        feedback = practice_screen(database, who.rater_id, display.position)
        if feedback is not None:  # practice pairs only; a real pair never gets feedback
            return SubmitOutcome(feedback, status=result.status)
    screen = show_next(database, who.rater_id, display.nonce)
    if result.status == SubmitStatus.ALREADY_RATED:
        record_conflict(database, result.rating_id, who.rater_id, display.submission_id, questions.validate(answers))
        stored = stored_summary(stored_answers(database, result.rating_id), questions)
        notice = f"{ALREADY_RATED} Stored answers: {stored}."
        return SubmitOutcome(replace(screen, notice=notice), message=notice, status=result.status)
    return SubmitOutcome(screen, status=result.status)


# ----------------------------------------------------------------------------------------------- rendering


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def header_html(screen: Screen) -> str:
    """Title, progress and the prompt; ``data-display`` is the display id the page binds answers to and
    ``data-kind`` the study's kind (which keys the page script uses)."""
    if screen.kind != ScreenKind.PAIR:
        return ""
    pct = 100 * screen.done / screen.total if screen.total else 0
    grey = "1" if screen.domain == Domain.RADIOLOGY.value else "0"
    where = f"Pair {screen.number} of {screen.total}"
    if screen.practice_number:  # practice is not study progress: its own count, the bar stays at the study's
        where = f"Practice pair {screen.practice_number} of {screen.practice_total}"
    return (
        f'<div class="ms-head" data-display="{_e(screen.display_id)}" data-grey="{grey}" '
        f'data-kind="{_e(screen.study_kind)}" data-next="{_e(screen.next_srcs)}" '
        f'data-practice="{1 if screen.practice_number else 0}">'
        f'<div class="ms-top"><span class="ms-title">{_e(screen.title)}</span>'
        f'<span class="ms-progress" id="ms-progress">{where}</span></div>'
        f'<div class="ms-bar"><div class="ms-bar-fill" style="width:{pct:.1f}%"></div></div>'
        f'<div class="ms-prompt"><span class="ms-prompt-label">Prompt</span>{_e(screen.prompt)}</div>'
        "</div>"
    )


def image_html(screen: Screen, side: str) -> str:
    """One side's image with its caption and a full-size button.

    The image's URL is in ``data-src``: the page script shows the copy it prefetched for that URL, or loads
    the URL (so a prefetched image is not fetched a second time, as a plain ``src`` would be).
    """
    if screen.kind != ScreenKind.PAIR:
        return ""
    src, zoom = (screen.left_src, screen.left_zoom) if side == "left" else (screen.right_src, screen.right_zoom)
    name = CHOICE_LABELS[side]
    return (
        f'<figure class="ms-figure ms-{side}">'
        f'<div class="ms-frame"><img class="ms-img" data-src="{_e(src)}" alt="{name}" data-zoom="{_e(zoom)}" '
        'draggable="false"></div>'
        f'<figcaption><span class="ms-side">{name}</span>'
        f'<button type="button" class="ms-zoom" data-zoom="{_e(zoom)}">Full size '
        f"<kbd>{SIDE_KEYS[side]}</kbd></button></figcaption></figure>"
    )


def reference_html(screen: Screen) -> str:
    """The real image above a head-to-head pair (only when the study shows one; both sides are generated,
    so naming it gives nothing away). Served like the sides: a per-display ``/m/`` name, no-store."""
    if screen.kind != ScreenKind.PAIR or not screen.reference_src:
        return ""
    return (
        '<figure class="ms-ref"><div class="ms-ref-frame">'
        f'<img class="ms-ref-img" data-src="{_e(screen.reference_src)}" alt="Reference image" draggable="false"></div>'
        f'<figcaption><span class="ms-side">{REFERENCE_LABEL}</span></figcaption></figure>'
    )


def status_html(screen: Screen) -> str:
    """The refusal, pause or thank-you message; on a pair, the instructions (shown by the page script)."""
    if screen.kind == ScreenKind.PAIR:
        return intro_html(screen, questions_for(screen.study_kind))
    if screen.kind == ScreenKind.FEEDBACK:
        return feedback_html(screen)
    heading = {
        ScreenKind.REFUSED: "Access restricted",
        ScreenKind.DONE: "Thank you!",
        ScreenKind.PAUSED: "Paused",
    }[screen.kind]
    return f'<div class="ms-status ms-status-{screen.kind.value}"><h2>{heading}</h2><p>{_e(screen.message)}</p></div>'


def feedback_html(screen: Screen) -> str:
    """The feedback after a practice pair: both images again, each named real or generated, and the verdict."""
    figures = []
    for side, src in (("left", screen.left_src), ("right", screen.right_src)):
        truth = "generated" if side == screen.feedback_generated else "real"
        figures.append(
            f'<figure class="ms-feedback-figure ms-feedback-{truth}"><img src="{_e(src)}" alt="{CHOICE_LABELS[side]}" '
            f'draggable="false"><figcaption>{CHOICE_LABELS[side]}: <b>{truth}</b></figcaption></figure>'
        )
    return (
        f'<div class="ms-status ms-status-feedback" id="ms-feedback" data-generated="{_e(screen.feedback_generated)}">'
        f"<h2>Practice pair {screen.practice_number} of {screen.practice_total}: feedback</h2>"
        f'<p role="status">{_e(screen.message)}</p><div class="ms-feedback-pair">{"".join(figures)}</div>'
        "<p>Practice answers are kept apart and do not count in the study.</p></div>"
    )


def _task_text(screen: Screen, feedback: str = "There is no feedback") -> str:
    """What a screen shows and asks, in words, for the start screen (``feedback``: what the rater is told
    about feedback, e.g. after practice pairs)."""
    if screen.study_kind == HEAD_TO_HEAD:
        above = (
            f" The real image for the prompt is shown above them as a reference (“{REFERENCE_LABEL}”)."
            if screen.reference_src
            else ""
        )
        return (
            "<p>Each screen shows two images for one prompt, <b>both generated by a computer</b>, placed left "
            f"and right in random order.{_e(above)} Say which image is more realistic and which matches the prompt "
            "better: <kbd>L</kbd> left, <kbd>R</kbd> right, or <kbd>E</kbd> no difference when you see none. "
            "Rating each image's realism is optional. There is no feedback and no time limit; your answers are "
            "saved when you submit.</p>"
        )
    return (
        "<p>Each screen shows two images for one prompt. <b>Exactly one of the two images is real</b>; the other "
        "was generated by a computer. Rate each image, then say which one you think is generated and how "
        f"sure you are. {feedback} and no time limit; your answers are saved when you submit.</p>"
    )


def intro_html(screen: Screen, questions: QuestionSet = QUESTIONS) -> str:
    """The start screen: the study's instructions, what is shown, every scale's worded anchors, the keys.

    Shown before the first pair and reopened with ``?``; ``data-first`` tells the page whether the rater
    has rated anything yet.
    """
    scales = []
    seen: set[tuple[str, ...]] = set()
    for q in questions.questions:
        if q.kind != QuestionKind.SCALE or q.anchors in seen:
            continue
        seen.add(q.anchors)
        anchors = "".join(f"<li><b>{n}</b> {_e(a)}</li>" for n, a in enumerate(q.anchors, start=1))
        name = q.label.replace(" of the left image", "").replace(" of the right image", "")
        scales.append(f'<div class="ms-scale"><h4>{_e(name)}</h4><ol>{anchors}</ol></div>')
    own = f'<p class="ms-own">{_e(screen.instructions)}</p>' if screen.instructions else ""
    first = "1" if screen.done == 0 and not screen.rated_any else "0"
    feedback = "There is no feedback"
    if screen.practice_total:
        feedback = (
            f"The first {screen.practice_total} pairs are practice: after each one you are told which image was "
            "generated, and practice answers do not count. After the practice there is no feedback"
        )
    return (
        f'<div id="ms-intro" class="ms-intro" role="dialog" aria-label="Instructions" data-first="{first}" hidden>'
        '<div class="ms-intro-card">'
        f"<h2>{_e(screen.title)}: how to rate</h2>{own}{_task_text(screen, feedback)}"
        f'<div class="ms-scales">{"".join(scales)}</div>'
        f'<div class="ms-intro-keys">{keys_html(legend=False, kind=screen.study_kind)}</div>'
        '<p class="ms-intro-hint">Press <kbd>?</kbd> to see this again.</p>'
        '<button type="button" id="ms-intro-start" class="ms-start">Start  <kbd>Enter</kbd></button>'
        "</div></div>"
    )


def message_html(text: str = "", kind: str = "alert") -> str:
    """The message beside Submit; a fresh ``data-seq`` on every response lets the page see that one came."""
    body = _e(text)
    role = ' role="alert"' if text else ""
    return f'<div class="ms-message ms-message-{kind}" data-seq="{secrets.token_hex(4)}"{role}>{body}</div>'


def key_hints(kind: str = DEFAULT_KIND) -> tuple[tuple[str, str], ...]:
    """The keys of a study of ``kind``: head-to-head answers the preferences with L / R / E."""
    if kind != HEAD_TO_HEAD:
        return KEY_HINTS
    return tuple(PREFERENCE_KEY_HINT if hint == CHOICE_KEY_HINT else hint for hint in KEY_HINTS)


def keys_html(*, legend: bool = True, kind: str = DEFAULT_KIND) -> str:
    """The keyboard legend (hidden on touch screens)."""
    parts = "".join(f"<span><kbd>{_e(k)}</kbd> {_e(v)}</span>" for k, v in key_hints(kind))
    ident = ' id="ms-keys"' if legend else ""
    return f'<div class="ms-keys"{ident}>{parts}</div>'


def tools_html() -> str:
    """The reading-room tool bar: theme, instructions, and (grey-scale studies) window/level presets."""
    presets = "".join(
        f'<button type="button" class="ms-wl" data-wl="{name}">{_e(label)}</button>' for name, label in WL_PRESETS
    )
    return (
        '<div class="ms-tools" id="ms-tools">'
        f'<span class="ms-wl-group" title="Window / level: drag on an image with the right mouse button, or '
        f'W + drag; applied to both images equally"><span class="ms-tool-label">Window</span>{presets}</span>'
        '<button type="button" id="ms-compare" class="ms-tool" title="Compare both images at the same zoom">'
        "Compare <kbd>X</kbd></button>"
        '<button type="button" id="ms-theme" class="ms-tool" title="Switch dark / light">Theme <kbd>T</kbd></button>'
        '<button type="button" id="ms-help" class="ms-tool" title="Instructions">Help <kbd>?</kbd></button>'
        "</div>"
    )


def question_label(q: Question) -> str:
    """A question's label with its key hint."""
    if q.kind == QuestionKind.SCALE:
        return f"{q.label} · 1 {q.anchors[0].lower()} … {q.scale_max} {q.anchors[-1].lower()}"
    if q.kind == QuestionKind.CHOICE:
        return f"{q.label}  ·  keys {' / '.join(CHOICE_KEYS[c] for c in q.choices)}"
    if q.kind == QuestionKind.FLAG:
        return f"{q.label}  ·  key N"
    return q.label


def question_component(q: Question, *, visible: bool = True) -> gr.components.Component:
    """The Gradio input for one question (inside the current Blocks context)."""
    classes = ["ms-q", f"ms-q-{q.kind.value}"]
    elem_id = f"q-{q.key}"
    if q.kind == QuestionKind.SCALE:
        numbers = [(str(n), n) for n in range(1, q.scale_max + 1)]
        return gr.Radio(numbers, label=question_label(q), elem_id=elem_id, elem_classes=classes, visible=visible)
    if q.kind == QuestionKind.CHOICE:
        choices = [(CHOICE_LABELS.get(c, c.title()), c) for c in q.choices]
        return gr.Radio(choices, label=question_label(q), elem_id=elem_id, elem_classes=classes, visible=visible)
    if q.kind == QuestionKind.FLAG:
        return gr.Checkbox(label=question_label(q), elem_id=elem_id, elem_classes=classes, visible=visible)
    placeholder = "Optional (key C)" if q.key == "comment" else "Required when you tick “cannot assess”"
    return gr.Textbox(
        label=q.label,
        lines=1,
        max_lines=3,
        placeholder=placeholder,
        elem_id=elem_id,
        elem_classes=classes,
        visible=visible,
    )


# ----------------------------------------------------------------------------------------------- Gradio


@dataclass
class RaterComponents:
    """The components the handlers update, in output order.

    ``questions`` holds one component per key of :data:`FORM_KEYS` (both studies' question sets, built
    once; each screen shows its study's own): the default set's come where they always were, the
    head-to-head preferences (``extra``), the reference image and the key legend after ``token``, so the
    indices older clients read (the token after the default set's questions, message and resume last) hold.
    """

    status: gr.HTML
    form: gr.Column
    header: gr.HTML
    left: gr.HTML
    right: gr.HTML
    questions: list[gr.components.Component]
    token: gr.Textbox
    message: gr.HTML
    resume: gr.Button
    extra: list[gr.components.Component] = field(default_factory=list)
    reference: gr.HTML | None = None
    keys: gr.HTML | None = None

    def outputs(self) -> list[gr.blocks.Block]:
        tail: list[gr.blocks.Block] = [b for b in (self.reference, self.keys) if b is not None]
        return [
            self.status,
            self.form,
            self.header,
            self.left,
            self.right,
            *self.questions,
            self.token,
            *self.extra,
            *tail,
            self.message,
            self.resume,
        ]


def _blank(q: Question) -> Any:
    return False if q.kind == QuestionKind.FLAG else (None if q.kind != QuestionKind.TEXT else "")


def _form_question(key: str, questions: QuestionSet) -> Question | None:
    """The question ``key`` asks in ``questions`` (None: not asked there, its component is hidden)."""
    return next((q for q in questions.questions if q.key == key), None)


def _any_question(key: str) -> Question:
    found = _form_question(key, DEFAULT_QUESTIONS) or _form_question(key, HEAD_TO_HEAD_QUESTIONS)
    assert found is not None, key
    return found


def _split(updates: list[Any]) -> tuple[list[Any], list[Any]]:
    """Per-key updates (in :data:`FORM_KEYS` order) split into the default set's and the extras'."""
    n = len(DEFAULT_QUESTIONS.questions)
    return updates[:n], updates[n:]


def screen_updates(screen: Screen, *, keep_status: bool = False) -> list[Any]:
    """Gradio updates (in :meth:`RaterComponents.outputs` order) that show ``screen`` with a blank form.

    Every question of the screen's study is shown (with its label) and every other one hidden.
    ``keep_status``: the page shows a pair of the same study (a submission came from it): leave what stays as
    it is, so the page redoes no more than the pair itself. The status block (the instructions), the form's
    and the Resume button's visibility, the questions' visibility, labels and highlight classes are not sent
    again for a next pair (the page script clears highlights when the next pair is shown); the questions get
    their blank value only. Each property sent costs the page a state update; a visibility one walks the
    whole form.
    """
    pair = screen.kind == ScreenKind.PAIR
    same = keep_status and pair
    asked = questions_for(screen.study_kind)
    form = []
    for key in FORM_KEYS:
        q = _form_question(key, asked)
        shown = q or _any_question(key)
        if same:
            form.append(gr.update(value=_blank(shown)))
            continue
        form.append(
            gr.update(
                value=_blank(shown),
                visible=q is not None,
                label=question_label(shown),
                elem_classes=["ms-q", f"ms-q-{shown.kind.value}"],
            )
        )
    default, extra = _split(form)
    return [
        gr.update() if same else gr.update(value=status_html(screen), visible=True),
        gr.update() if same else gr.update(visible=pair),
        header_html(screen),
        image_html(screen, "left"),
        image_html(screen, "right"),
        *default,
        screen.display_token,
        *extra,
        reference_html(screen),
        keys_html(kind=screen.study_kind),
        message_html(screen.notice, "notice") if screen.notice else message_html(),
        gr.update() if same else resume_update(screen),
    ]


def resume_update(screen: Screen) -> Any:
    """The Resume button: shown on the pause screen, and as "Continue" after practice feedback."""
    if screen.kind == ScreenKind.FEEDBACK:
        last = screen.practice_number >= screen.practice_total
        return gr.update(visible=True, value="Start the study (Enter)" if last else "Continue (Enter)")
    return gr.update(visible=screen.kind == ScreenKind.PAUSED, value="Resume")


def missing_updates(outcome: SubmitOutcome) -> list[Any]:
    """Updates that keep the form as it is and highlight the missing answers."""
    marks = []
    for key in FORM_KEYS:
        q = _any_question(key)
        classes = ["ms-q", f"ms-q-{q.kind.value}"] + (["ms-missing"] if key in outcome.missing else [])
        marks.append(gr.update(elem_classes=classes))
    default, extra = _split(marks)
    n_fixed = 5
    return [
        *[gr.update()] * n_fixed,
        *default,
        gr.update(),
        *extra,
        gr.update(),
        gr.update(),
        message_html(outcome.message),
        gr.update(),
    ]


def _refused() -> Screen:
    return Screen(ScreenKind.REFUSED, message=REFUSAL)


def handle_load(request: gr.Request) -> list[Any]:
    """Page load / resume: the next pair for a rater, the refusal for anyone else."""
    who = identify(request)
    if who.role != Role.RATER or who.rater_id is None:
        return screen_updates(_refused())
    return screen_updates(show_next(config().database, who.rater_id))


def handle_pause(request: gr.Request) -> list[Any]:
    """Pause: hide the pair (unsubmitted answers on it are dropped; it is shown again on resume)."""
    who = require_rater(request)
    return screen_updates(paused_screen(config().database, who.rater_id))  # type: ignore[arg-type]


def form_answers(values: tuple[Any, ...], questions: QuestionSet) -> tuple[dict[str, Any], list[Any]]:
    """(answers to ``questions``, [client ms, client time, answered-for]) from the submit inputs after the
    token: the default set's values, the three client values, then the extras' values (missing: None)."""
    n = len(DEFAULT_QUESTIONS.questions)
    client = [*values[n : n + 3], None, None, None][:3]
    extras = [*values[n + 3 :], *[None] * len(EXTRA_QUESTIONS)][: len(EXTRA_QUESTIONS)]
    by_key = dict(zip(FORM_KEYS, [*values[:n], *extras], strict=True))
    return answers_from_inputs([by_key[q.key] for q in questions.questions], questions), client


def handle_submit(request: gr.Request, token: str, *values: Any) -> list[Any]:
    """Submit: inputs are the display token, the default set's answers, client ms, client time, the display
    id the answers were given for, then the head-to-head preferences (see :func:`form_answers`). Only the
    rater's own study's questions are read.

    ``request`` comes first: Gradio injects it by position, and the answers are variadic.
    """
    who = require_rater(request)
    questions = rater_questions(config().database, who.rater_id)  # type: ignore[arg-type]
    answers, (client_ms, client_at, answered_for) = form_answers(values, questions)
    try:
        outcome = submit(
            config().database,
            who,
            token,
            answers,
            client_ms=client_ms,
            client_at=client_at,
            answered_for=None if answered_for is None else str(answered_for),
            questions=questions,
        )
    except AccessDenied:
        raise gr.Error("This pair is not available. Please reload the page.", print_exception=False) from None
    if outcome.screen is None:
        return missing_updates(outcome)
    return screen_updates(outcome.screen, keep_status=True)


def static_text(name: str) -> str:
    """A file from ``evalapp/static``."""
    return (STATIC_DIR / name).read_text(encoding="utf-8")


def build_rater_blocks() -> tuple[gr.Blocks, RaterComponents]:
    """The rater page as a Gradio Blocks (mount it with the CSS/JS from :func:`page_assets`).

    Layout: the two images side by side in the largest square the window allows (a head-to-head study's
    reference image above them), the questions in a compact panel beside them (under them on narrow
    screens, as a sticky sheet on phones). Both studies' questions are built here, once (Gradio makes no
    component per request); each screen shows its own study's.
    """
    by_key: dict[str, gr.components.Component] = {}
    with gr.Blocks(title="MedSynth rating", analytics_enabled=False, fill_width=True) as blocks:
        status = gr.HTML("", elem_id="ms-status", js_on_load=None)
        with gr.Column(visible=False, elem_id="ms-form", elem_classes=["ms-form"]) as form:
            with gr.Row(equal_height=False, elem_classes=["ms-main"]):
                with gr.Column(elem_classes=["ms-stage"], min_width=0):
                    gr.HTML(tools_html(), js_on_load=None, elem_classes=["ms-tools-block"])
                    reference = gr.HTML("", elem_id="ms-ref", js_on_load=None, elem_classes=["ms-ref-block"])
                    with gr.Row(equal_height=False, elem_classes=["ms-pair"]):
                        left = gr.HTML("", elem_id="ms-img-left", js_on_load=None, elem_classes=["ms-side-block"])
                        right = gr.HTML("", elem_id="ms-img-right", js_on_load=None, elem_classes=["ms-side-block"])
                with gr.Column(elem_classes=["ms-panel"], min_width=0):
                    header = gr.HTML("", elem_id="ms-header", js_on_load=None)
                    for q in EXTRA_QUESTIONS:  # the preferences come first on a head-to-head screen
                        by_key[q.key] = question_component(q, visible=False)
                    for q in DEFAULT_QUESTIONS.questions:
                        by_key[q.key] = question_component(q)
                    with gr.Row(elem_classes=["ms-actions"]):
                        message = gr.HTML(message_html(), elem_id="ms-message", js_on_load=None)
                        pause = gr.Button("Pause (P)", elem_id="ms-pause", variant="secondary", scale=0, min_width=90)
                        send = gr.Button(
                            "Submit (Enter)", elem_id="ms-submit", variant="primary", scale=0, min_width=140
                        )
                    keys = gr.HTML(keys_html(), js_on_load=None, elem_classes=["ms-keys-block"])
            token = gr.Textbox(visible=False, elem_id="ms-token")
            client_ms = gr.Textbox(visible=False)
            client_at = gr.Textbox(visible=False)
            answered_for = gr.Textbox(visible=False)
        resume = gr.Button("Resume", elem_id="ms-resume", variant="primary", visible=False)
        # Submit's stand-in for the form's visibility: an update naming the form Column makes Gradio's
        # frontend walk and snapshot every component inside it (tens of ms per submit); after a submit the
        # form only ever hides for good (the thank-you screen), which the page script does from the status.
        form_after_submit = gr.HTML("", visible=False, elem_id="ms-form-after-submit", js_on_load=None)
        comps = RaterComponents(
            status=status,
            form=form,
            header=header,
            left=left,
            right=right,
            questions=[by_key[q.key] for q in DEFAULT_QUESTIONS.questions],
            token=token,
            message=message,
            resume=resume,
            extra=[by_key[q.key] for q in EXTRA_QUESTIONS],
            reference=reference,
            keys=keys,
        )
        outputs = comps.outputs()
        common: dict[str, Any] = {
            "api_visibility": "private",
            "concurrency_id": "rater",
            "concurrency_limit": RATER_CONCURRENCY,
            "show_progress": "hidden",
        }
        inputs = [token, *comps.questions, client_ms, client_at, answered_for, *comps.extra]
        client_at_index = 1 + len(comps.questions)  # where the page script writes client ms, time, display id
        blocks.load(handle_load, None, outputs, **common)
        resume.click(handle_load, None, outputs, **common)
        pause.click(handle_pause, None, outputs, **common)
        send.click(
            handle_submit,
            inputs,
            [form_after_submit if block is form else block for block in outputs],
            js=(f"(...a) => (window.msBeforeSubmit || ((x) => x))(a.slice(0, {len(inputs)}), {client_at_index})"),
            trigger_mode="once",
            **common,
        )
    return blocks, comps


def page_assets() -> tuple[str, str]:
    """(css, head) for the rater page: the reading-room layout and the keyboard script."""
    return static_text("rater.css"), f"<script>{static_text('rater.js')}</script>"
