"""The blinded rater view: one pair at a time, keyboard-first, no feedback, resumable on any device.

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
from db.models import Domain, Side, Study
from db.questions import DEFAULT_QUESTIONS, Question, QuestionKind, QuestionSet
from db.raters import rater_by_id
from db.ratings import (
    PairView,
    SubmitStatus,
    assigned_item_public_id,
    has_assignments,
    next_pair,
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
RATER_CONCURRENCY = 4  # rater handlers at once: SQLite writes are serial, 2-4 threads keep both cores busy
CHOICE_LABELS = {"left": "Left image", "right": "Right image"}
SIDE_KEYS = {"left": "[", "right": "]"}
KEY_HINTS = (
    ("↑ ↓", "move between questions"),
    ("1–5", "answer the highlighted question"),
    ("L / R", "which image is generated"),
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
    upcoming = ""
    if next_position is not None:
        ahead = image_nonce(display_nonce)
        upcoming = " ".join(
            image_url(image_token(rater_id, next_position, side, nonce=ahead + suffix))
            for side, suffix in ((Side.LEFT, "a"), (Side.RIGHT, "b"))
        )
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
    questions: QuestionSet = QUESTIONS,
) -> SubmitOutcome:
    """Store one rating (idempotent by the display's submission id) and return the next screen.

    ``answered_for`` is the display id the page says the answers were given for (None: not stated, as
    from an older page); answers given for another display are refused and the form is shown again blank.
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
    """Title, progress and the prompt; ``data-display`` is the display id the page binds answers to."""
    if screen.kind != ScreenKind.PAIR:
        return ""
    pct = 100 * screen.done / screen.total if screen.total else 0
    grey = "1" if screen.domain == Domain.RADIOLOGY.value else "0"
    return (
        f'<div class="ms-head" data-display="{_e(screen.display_id)}" data-grey="{grey}" '
        f'data-next="{_e(screen.next_srcs)}">'
        f'<div class="ms-top"><span class="ms-title">{_e(screen.title)}</span>'
        f'<span class="ms-progress" id="ms-progress">Pair {screen.number} of {screen.total}</span></div>'
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


def status_html(screen: Screen) -> str:
    """The refusal, pause or thank-you message; on a pair, the instructions (shown by the page script)."""
    if screen.kind == ScreenKind.PAIR:
        return intro_html(screen)
    heading = {
        ScreenKind.REFUSED: "Access restricted",
        ScreenKind.DONE: "Thank you!",
        ScreenKind.PAUSED: "Paused",
    }[screen.kind]
    return f'<div class="ms-status ms-status-{screen.kind.value}"><h2>{heading}</h2><p>{_e(screen.message)}</p></div>'


def intro_html(screen: Screen, questions: QuestionSet = QUESTIONS) -> str:
    """The start screen: the study's instructions, what is real, every scale's worded anchors, the keys.

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
    first = "1" if screen.done == 0 else "0"
    return (
        f'<div id="ms-intro" class="ms-intro" role="dialog" aria-label="Instructions" data-first="{first}" hidden>'
        '<div class="ms-intro-card">'
        f"<h2>{_e(screen.title)}: how to rate</h2>{own}"
        "<p>Each screen shows two images for one prompt. <b>Exactly one of the two images is real</b>; the other "
        "was generated by a computer. Rate each image, then say which one you think is generated and how "
        "sure you are. There is no feedback and no time limit; your answers are saved when you submit.</p>"
        f'<div class="ms-scales">{"".join(scales)}</div>'
        f'<div class="ms-intro-keys">{keys_html(legend=False)}</div>'
        '<p class="ms-intro-hint">Press <kbd>?</kbd> to see this again.</p>'
        '<button type="button" id="ms-intro-start" class="ms-start">Start  <kbd>Enter</kbd></button>'
        "</div></div>"
    )


def message_html(text: str = "", kind: str = "alert") -> str:
    """The message beside Submit; a fresh ``data-seq`` on every response lets the page see that one came."""
    body = _e(text)
    role = ' role="alert"' if text else ""
    return f'<div class="ms-message ms-message-{kind}" data-seq="{secrets.token_hex(4)}"{role}>{body}</div>'


def keys_html(*, legend: bool = True) -> str:
    """The keyboard legend (hidden on touch screens)."""
    parts = "".join(f"<span><kbd>{_e(k)}</kbd> {_e(v)}</span>" for k, v in KEY_HINTS)
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
        return f"{q.label}  ·  keys L / R"
    return q.label


def question_component(q: Question) -> gr.components.Component:
    """The Gradio input for one question (inside the current Blocks context)."""
    classes = ["ms-q", f"ms-q-{q.kind.value}"]
    elem_id = f"q-{q.key}"
    if q.kind == QuestionKind.SCALE:
        numbers = [(str(n), n) for n in range(1, q.scale_max + 1)]
        return gr.Radio(numbers, label=question_label(q), elem_id=elem_id, elem_classes=classes)
    if q.kind == QuestionKind.CHOICE:
        choices = [(CHOICE_LABELS.get(c, c.title()), c) for c in q.choices]
        return gr.Radio(choices, label=question_label(q), elem_id=elem_id, elem_classes=classes)
    if q.kind == QuestionKind.FLAG:
        return gr.Checkbox(label=q.label + "  ·  key N", elem_id=elem_id, elem_classes=classes)
    placeholder = "Optional (key C)" if q.key == "comment" else "Required when you tick “cannot assess”"
    return gr.Textbox(
        label=q.label, lines=1, max_lines=3, placeholder=placeholder, elem_id=elem_id, elem_classes=classes
    )


# ----------------------------------------------------------------------------------------------- Gradio


@dataclass
class RaterComponents:
    """The components the handlers update, in output order."""

    status: gr.HTML
    form: gr.Column
    header: gr.HTML
    left: gr.HTML
    right: gr.HTML
    questions: list[gr.components.Component]
    token: gr.Textbox
    message: gr.HTML
    resume: gr.Button

    def outputs(self) -> list[gr.blocks.Block]:
        return [
            self.status,
            self.form,
            self.header,
            self.left,
            self.right,
            *self.questions,
            self.token,
            self.message,
            self.resume,
        ]


def _blank(q: Question) -> Any:
    return False if q.kind == QuestionKind.FLAG else (None if q.kind != QuestionKind.TEXT else "")


def screen_updates(screen: Screen, questions: QuestionSet = QUESTIONS, *, keep_status: bool = False) -> list[Any]:
    """Gradio updates (in :meth:`RaterComponents.outputs` order) that show ``screen`` with a blank form.

    ``keep_status``: the page shows a pair (a submission came from it): leave what stays as it is, so the
    page redoes no more than the pair itself. The status block (the instructions), the form's and the Resume
    button's visibility are not sent again for a next pair, and the questions get their blank value only
    (their highlight classes are not sent: the page script clears highlights when the next pair is shown).
    Each property sent costs the page a state update; a visibility one walks the whole form.
    """
    pair = screen.kind == ScreenKind.PAIR
    same = keep_status and pair
    if same:
        blank = [gr.update(value=_blank(q)) for q in questions.questions]
    else:
        blank = [gr.update(value=_blank(q), elem_classes=["ms-q", f"ms-q-{q.kind.value}"]) for q in questions.questions]
    return [
        gr.update() if same else gr.update(value=status_html(screen), visible=True),
        gr.update() if same else gr.update(visible=pair),
        header_html(screen),
        image_html(screen, "left"),
        image_html(screen, "right"),
        *blank,
        screen.display_token,
        message_html(screen.notice, "notice") if screen.notice else message_html(),
        gr.update() if same else gr.update(visible=screen.kind == ScreenKind.PAUSED),
    ]


def missing_updates(outcome: SubmitOutcome, questions: QuestionSet = QUESTIONS) -> list[Any]:
    """Updates that keep the form as it is and highlight the missing answers."""
    marks = []
    for q in questions.questions:
        classes = ["ms-q", f"ms-q-{q.kind.value}"] + (["ms-missing"] if q.key in outcome.missing else [])
        marks.append(gr.update(elem_classes=classes))
    n_fixed = 5
    return [gr.update()] * n_fixed + marks + [gr.update(), message_html(outcome.message), gr.update()]


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


def handle_submit(request: gr.Request, token: str, *values: Any) -> list[Any]:
    """Submit: inputs are the display token, the answers in question order, client ms, client time and the
    display id the answers were given for.

    ``request`` comes first: Gradio injects it by position, and the answers are variadic.
    """
    who = require_rater(request)
    n = len(QUESTIONS.questions)
    answers = answers_from_inputs(list(values[:n]))
    client_ms, client_at, answered_for = [*values[n:], None, None, None][:3]
    try:
        outcome = submit(
            config().database,
            who,
            token,
            answers,
            client_ms=client_ms,
            client_at=client_at,
            answered_for=None if answered_for is None else str(answered_for),
        )
    except AccessDenied:
        raise gr.Error("This pair is not available. Please reload the page.", print_exception=False) from None
    if outcome.screen is None:
        return missing_updates(outcome)
    return screen_updates(outcome.screen, keep_status=True)


def static_text(name: str) -> str:
    """A file from ``evalapp/static``."""
    return (STATIC_DIR / name).read_text(encoding="utf-8")


def build_rater_blocks(questions: QuestionSet = QUESTIONS) -> tuple[gr.Blocks, RaterComponents]:
    """The rater page as a Gradio Blocks (mount it with the CSS/JS from :func:`page_assets`).

    Layout: the two images side by side in the largest square the window allows, the questions in a
    compact panel beside them (under them on narrow screens, as a sticky sheet on phones).
    """
    by_key: dict[str, gr.components.Component] = {}
    with gr.Blocks(title="MedSynth rating", analytics_enabled=False, fill_width=True) as blocks:
        status = gr.HTML("", elem_id="ms-status", js_on_load=None)
        with gr.Column(visible=False, elem_id="ms-form", elem_classes=["ms-form"]) as form:
            with gr.Row(equal_height=False, elem_classes=["ms-main"]):
                with gr.Column(elem_classes=["ms-stage"], min_width=0):
                    gr.HTML(tools_html(), js_on_load=None, elem_classes=["ms-tools-block"])
                    with gr.Row(equal_height=False, elem_classes=["ms-pair"]):
                        left = gr.HTML("", elem_id="ms-img-left", js_on_load=None, elem_classes=["ms-side-block"])
                        right = gr.HTML("", elem_id="ms-img-right", js_on_load=None, elem_classes=["ms-side-block"])
                with gr.Column(elem_classes=["ms-panel"], min_width=0):
                    header = gr.HTML("", elem_id="ms-header", js_on_load=None)
                    for q in questions.questions:
                        by_key[q.key] = question_component(q)
                    with gr.Row(elem_classes=["ms-actions"]):
                        message = gr.HTML(message_html(), elem_id="ms-message", js_on_load=None)
                        pause = gr.Button("Pause (P)", elem_id="ms-pause", variant="secondary", scale=0, min_width=90)
                        send = gr.Button(
                            "Submit (Enter)", elem_id="ms-submit", variant="primary", scale=0, min_width=140
                        )
                    gr.HTML(keys_html(), js_on_load=None, elem_classes=["ms-keys-block"])
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
            questions=[by_key[q.key] for q in questions.questions],
            token=token,
            message=message,
            resume=resume,
        )
        outputs = comps.outputs()
        common: dict[str, Any] = {
            "api_visibility": "private",
            "concurrency_id": "rater",
            "concurrency_limit": RATER_CONCURRENCY,
            "show_progress": "hidden",
        }
        n_inputs = 1 + len(comps.questions) + 3
        blocks.load(handle_load, None, outputs, **common)
        resume.click(handle_load, None, outputs, **common)
        pause.click(handle_pause, None, outputs, **common)
        send.click(
            handle_submit,
            [token, *comps.questions, client_ms, client_at, answered_for],
            [form_after_submit if block is form else block for block in outputs],
            js=f"(...a) => (window.msBeforeSubmit || ((x) => x))(a.slice(0, {n_inputs}))",
            trigger_mode="once",
            **common,
        )
    return blocks, comps


def page_assets() -> tuple[str, str]:
    """(css, head) for the rater page: the reading-room layout and the keyboard script."""
    return static_text("rater.css"), f"<script>{static_text('rater.js')}</script>"
