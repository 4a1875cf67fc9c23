"""SQLAlchemy 2 typed models: datasets, cases, images, models, generated images, studies, raters, ratings.

Ratings are append-only: a row is never updated or deleted, and the client submission id makes a
resubmission idempotent. Images live in the content-addressed media store; the database holds their
sha256 and dimensions only.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import JSON, Enum, ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    """Now in UTC, naive (every timestamp in the database is UTC)."""
    return datetime.now(UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    """Declarative base of every MedSynth table."""

    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSON, list[Any]: JSON}


class Domain(enum.StrEnum):
    """Imaging domain of a dataset; studies can route raters by it."""

    GI = "gi"
    RADIOLOGY = "radiology"
    OTHER = "other"


class Specialty(enum.StrEnum):
    """A rater's clinical specialty."""

    GASTROENTEROLOGY = "gastroenterology"
    RADIOLOGY = "radiology"
    OTHER = "other"


class ModelKind(enum.StrEnum):
    """How a registered model makes images."""

    MSDM = "msdm"
    DIFFUSERS = "diffusers"
    FOLDER = "folder"


class ItemKind(enum.StrEnum):
    """Role of a blinded pair in a study."""

    NORMAL = "normal"
    ATTENTION = "attention"
    REPEAT = "repeat"
    #: a practice pair (``practice_pairs`` in the study config): from outside the study's items, shown before
    #: the first real pair with feedback; its ratings are flagged and never analysed (db.practice)
    PRACTICE = "practice"


class Side(enum.StrEnum):
    """Where an image is shown."""

    LEFT = "left"
    RIGHT = "right"


class StudyStatus(enum.StrEnum):
    """Life cycle of a study."""

    OPEN = "open"
    CLOSED = "closed"


class JobStatus(enum.StrEnum):
    """Life cycle of a background job."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


def _enum(e: type[enum.Enum]) -> Enum:
    return Enum(e, native_enum=False, length=32, values_callable=lambda x: [m.value for m in x])


class ImageBlob(Base):
    """One image in the media store, identified by the sha256 of its bytes."""

    __tablename__ = "images"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    width: Mapped[int]
    height: Mapped[int]
    mode: Mapped[str] = mapped_column(String(16))
    format: Mapped[str] = mapped_column(String(16))
    n_bytes: Mapped[int]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Dataset(Base):
    """An imported collection of cases (prompt + real image)."""

    __tablename__ = "datasets"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    domain: Mapped[Domain] = mapped_column(_enum(Domain))
    format: Mapped[str] = mapped_column(String(32))
    source: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    cases: Mapped[list[Case]] = relationship(back_populates="dataset", cascade="all, delete-orphan")


class Case(Base):
    """One prompt with its real image and labels (e.g. UMLS CUIs, findings)."""

    __tablename__ = "cases"
    __table_args__ = (UniqueConstraint("dataset_id", "key"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"), index=True)
    key: Mapped[str] = mapped_column(String(300))
    prompt: Mapped[str] = mapped_column(Text)
    image_sha256: Mapped[str] = mapped_column(ForeignKey("images.sha256"), index=True)
    source_file: Mapped[str] = mapped_column(Text)
    labels: Mapped[dict[str, Any]] = mapped_column(default=dict)
    split: Mapped[str | None] = mapped_column(String(32))

    dataset: Mapped[Dataset] = relationship(back_populates="cases")
    image: Mapped[ImageBlob] = relationship()


class Model(Base):
    """A registered image generator."""

    __tablename__ = "models"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    kind: Mapped[ModelKind] = mapped_column(_enum(ModelKind))
    source: Mapped[str] = mapped_column(Text, default="")
    parameters: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class GeneratedImage(Base):
    """An image a model made for a case, with everything needed to make it again."""

    __tablename__ = "generated_images"
    __table_args__ = (UniqueConstraint("model_id", "case_id", "seed"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id", ondelete="CASCADE"), index=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), index=True)
    image_sha256: Mapped[str] = mapped_column(ForeignKey("images.sha256"))
    seed: Mapped[int]
    steps: Mapped[int | None]
    guidance: Mapped[float | None]
    parameters: Mapped[dict[str, Any]] = mapped_column(default=dict)
    device: Mapped[str] = mapped_column(String(64), default="")
    seconds: Mapped[float | None]
    peak_memory_bytes: Mapped[int | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    case: Mapped[Case] = relationship()
    model: Mapped[Model] = relationship()


class Study(Base):
    """A blinded reader study built deterministically from a TOML config and a seed."""

    __tablename__ = "studies"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    config_text: Mapped[str] = mapped_column(Text)
    config_sha256: Mapped[str] = mapped_column(String(64))
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    seed: Mapped[int]
    status: Mapped[StudyStatus] = mapped_column(_enum(StudyStatus), default=StudyStatus.OPEN)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    items: Mapped[list[StudyItem]] = relationship(back_populates="study", cascade="all, delete-orphan")
    raters: Mapped[list[Rater]] = relationship(back_populates="study", cascade="all, delete-orphan")


class StudyItem(Base):
    """A blinded pair: one real and one generated image, with the side each is shown on."""

    __tablename__ = "study_items"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    public_id: Mapped[str] = mapped_column(String(40), unique=True)
    kind: Mapped[ItemKind] = mapped_column(_enum(ItemKind))
    case_id: Mapped[int] = mapped_column(ForeignKey("cases.id"))
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"))
    generated_image_id: Mapped[int | None] = mapped_column(ForeignKey("generated_images.id"))
    real_sha256: Mapped[str] = mapped_column(ForeignKey("images.sha256"))
    generated_sha256: Mapped[str] = mapped_column(ForeignKey("images.sha256"))
    generated_side: Mapped[Side] = mapped_column(_enum(Side))
    repeat_of_id: Mapped[int | None] = mapped_column(ForeignKey("study_items.id"))
    domain: Mapped[Domain] = mapped_column(_enum(Domain))
    #: head-to-head items (db.head_to_head): the second model's image of the same case, shown on the side
    #: opposite ``generated_side``; ``real_sha256`` is then the optional reference. None for other studies.
    second_model_id: Mapped[int | None] = mapped_column(ForeignKey("models.id"))
    second_generated_image_id: Mapped[int | None] = mapped_column(ForeignKey("generated_images.id"))
    second_sha256: Mapped[str | None] = mapped_column(ForeignKey("images.sha256"))

    study: Mapped[Study] = relationship(back_populates="items")
    case: Mapped[Case] = relationship()
    model: Mapped[Model] = relationship(foreign_keys=[model_id])
    second_model: Mapped[Model | None] = relationship(foreign_keys=[second_model_id])
    repeat_of: Mapped[StudyItem | None] = relationship(remote_side=[id])

    def sha256_on(self, side: Side) -> str:
        """The media hash of the image shown on ``side``."""
        if side == self.generated_side:
            return self.generated_sha256
        return self.second_sha256 if self.second_sha256 is not None else self.real_sha256


class Rater(Base):
    """A clinician taking part in one study; reaches it through a personal link (token stored hashed)."""

    __tablename__ = "raters"
    __table_args__ = (UniqueConstraint("study_id", "name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    public_id: Mapped[str] = mapped_column(String(40), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    specialty: Mapped[Specialty] = mapped_column(_enum(Specialty))
    years: Mapped[float | None]
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    revoked_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    study: Mapped[Study] = relationship(back_populates="raters")
    assignments: Mapped[list[Assignment]] = relationship(
        back_populates="rater", order_by="Assignment.position", cascade="all, delete-orphan"
    )


class Assignment(Base):
    """One item in one rater's list, at a fixed position."""

    __tablename__ = "assignments"
    __table_args__ = (UniqueConstraint("rater_id", "item_id"), UniqueConstraint("rater_id", "position"))

    id: Mapped[int] = mapped_column(primary_key=True)
    rater_id: Mapped[int] = mapped_column(ForeignKey("raters.id", ondelete="CASCADE"), index=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("study_items.id", ondelete="CASCADE"), index=True)
    position: Mapped[int]
    first_shown_at: Mapped[datetime | None]

    rater: Mapped[Rater] = relationship(back_populates="assignments")
    item: Mapped[StudyItem] = relationship()
    rating: Mapped[Rating | None] = relationship(back_populates="assignment", uselist=False)


class Rating(Base):
    """A rater's answers for one assignment. Append-only; one per assignment; idempotent by submission id."""

    __tablename__ = "ratings"

    id: Mapped[int] = mapped_column(primary_key=True)
    assignment_id: Mapped[int] = mapped_column(ForeignKey("assignments.id", ondelete="CASCADE"), unique=True)
    rater_id: Mapped[int] = mapped_column(ForeignKey("raters.id", ondelete="CASCADE"), index=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("study_items.id", ondelete="CASCADE"), index=True)
    submission_id: Mapped[str] = mapped_column(String(64), unique=True)
    answers: Mapped[dict[str, Any]] = mapped_column(default=dict)
    response_ms_server: Mapped[float | None]
    response_ms_client: Mapped[float | None]
    client_submitted_at: Mapped[str | None] = mapped_column(String(40))
    server_received_at: Mapped[datetime] = mapped_column(default=utcnow)

    assignment: Mapped[Assignment] = relationship(back_populates="rating")


class RatingConflict(Base):
    """A submission refused because its pair was already rated (another tab or window): kept for the export.

    The stored rating is never changed; this row only records that a second answer set arrived and was
    turned away (the rater was told and shown the stored answers).
    """

    __tablename__ = "rating_conflicts"

    id: Mapped[int] = mapped_column(primary_key=True)
    rating_id: Mapped[int] = mapped_column(ForeignKey("ratings.id", ondelete="CASCADE"), index=True)
    rater_id: Mapped[int] = mapped_column(ForeignKey("raters.id", ondelete="CASCADE"), index=True)
    submission_id: Mapped[str] = mapped_column(String(64), unique=True)
    answers: Mapped[dict[str, Any]] = mapped_column(default=dict)
    received_at: Mapped[datetime] = mapped_column(default=utcnow)


class AppSetting(Base):
    """Key/value settings of the app (coordinator password hash, demo switch)."""

    __tablename__ = "app_settings"

    key: Mapped[str] = mapped_column(String(100), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class Job(Base):
    """A background job (generation, long analysis) run by the worker, never by a request handler."""

    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_status_created", "status", "created_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(64))
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status: Mapped[JobStatus] = mapped_column(_enum(JobStatus), default=JobStatus.QUEUED)
    progress: Mapped[float] = mapped_column(default=0.0)
    message: Mapped[str] = mapped_column(Text, default="")
    result: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    #: the worker that claimed the job (host, pid, random part) and when it last reported
    owner: Mapped[str | None] = mapped_column(String(120))
    heartbeat_at: Mapped[datetime | None]


class CompareStage(Base):
    """A finished stage of a comparison run (``compare``): its fingerprint and outputs, so a rerun
    skips it. Kept apart from ``jobs`` so the console's job list shows only real jobs."""

    __tablename__ = "compare_stages"
    __table_args__ = (UniqueConstraint("comparison", "stage", "fingerprint"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    comparison: Mapped[str] = mapped_column(String(200))
    stage: Mapped[str] = mapped_column(String(200))
    fingerprint: Mapped[str] = mapped_column(String(64))
    outputs: Mapped[dict[str, Any]] = mapped_column(default=dict)
    seconds: Mapped[float] = mapped_column(default=0.0)
    finished_at: Mapped[datetime] = mapped_column(default=utcnow)


class AuditEntry(Base):
    """One coordinator action (a study created, a rater added or revoked, an export, a job queued).

    Append-only. Never holds a token, a link or a password: :func:`db.audit.record_action` drops such fields.
    """

    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_log_at", "at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    actor: Mapped[str] = mapped_column(String(120))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(Text, default="")
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)


class MemorizationRun(Base):
    """One memorization audit of a model's generated images against a training dataset (issue 20)."""

    __tablename__ = "memorization_runs"

    id: Mapped[int] = mapped_column(primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), index=True)
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"), index=True)
    split: Mapped[str | None] = mapped_column(String(32))
    extractor: Mapped[str] = mapped_column(String(200))
    threshold: Mapped[float]
    #: the per-model summary (share of copies, nearest-neighbour distributions, most-copied images)
    summary: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class MemorizationMatch(Base):
    """A generated image's nearest training image in one audit, and whether it is a copy."""

    __tablename__ = "memorization_matches"
    __table_args__ = (UniqueConstraint("run_id", "generated_image_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("memorization_runs.id", ondelete="CASCADE"), index=True)
    generated_image_id: Mapped[int] = mapped_column(ForeignKey("generated_images.id", ondelete="CASCADE"), index=True)
    nearest_case_id: Mapped[int | None] = mapped_column(ForeignKey("cases.id", ondelete="SET NULL"))
    feature_similarity: Mapped[float]
    pixel_score: Mapped[float]
    is_copy: Mapped[bool]
    alignment: Mapped[dict[str, Any]] = mapped_column(default=dict)


class AdaptiveDraw(Base):
    """One adaptive draw of a head-to-head study (db.adaptive): which item went to which rater, when, at which
    step, and the Bradley-Terry estimates and uncertainty it was chosen on.

    ``seat`` (0 .. K-1, unique per item) is the database-level guard of the K-raters-per-item cap: two
    requests racing for an item's last seat cannot both commit. ``step`` is unique per study.
    """

    __tablename__ = "adaptive_draws"
    __table_args__ = (UniqueConstraint("study_id", "step"), UniqueConstraint("item_id", "seat"))

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    rater_id: Mapped[int] = mapped_column(ForeignKey("raters.id", ondelete="CASCADE"), index=True)
    item_id: Mapped[int] = mapped_column(ForeignKey("study_items.id", ondelete="CASCADE"), index=True)
    assignment_id: Mapped[int] = mapped_column(ForeignKey("assignments.id", ondelete="CASCADE"), unique=True)
    step: Mapped[int]
    seat: Mapped[int]
    position: Mapped[int]
    pair: Mapped[str] = mapped_column(String(420))
    score: Mapped[float]
    n_comparisons: Mapped[int]
    #: the estimates the draw was chosen on: theta per model, per-pair sd and order uncertainty, allowed pairs
    estimates: Mapped[dict[str, Any]] = mapped_column(default=dict)
    drawn_at: Mapped[datetime] = mapped_column(default=utcnow)
