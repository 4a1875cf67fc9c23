"""Raters and their personal access tokens (long, random, stored only as a sha256 hash, revocable)."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session, joinedload

from db.errors import ConflictError, InputError, NotFoundError
from db.models import Rater, Specialty, Study, StudyStatus, utcnow
from db.studies import assign_rater, get_study

TOKEN_BYTES = 32


def hash_token(token: str) -> str:
    """sha256 of a token: tokens carry 256 random bits, so a fast hash is enough to store them."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class NewRater:
    """A rater just added; ``token`` is shown once and never stored."""

    rater_id: str
    name: str
    token: str
    assignments: int


def clean_name(name: str) -> str:
    """A rater's display name, stripped; refuse empty, overlong or control characters."""
    text = (name or "").strip()
    if not text or len(text) > 200:
        raise InputError("a rater name of 1-200 characters is required")
    if any(ord(c) < 32 for c in text):
        raise InputError("the rater name contains control characters")
    return text


def add_rater(
    session: Session, study_name: str, name: str, specialty: Specialty | str, years: float | None = None
) -> NewRater:
    """Add a rater to a study and deal their assignments."""
    study = get_study(session, study_name)
    if study.status != StudyStatus.OPEN:
        raise InputError(f"study {study_name!r} is closed")
    try:
        spec = Specialty(specialty)
    except ValueError:
        raise InputError(f"unknown specialty {specialty!r}; choose gastroenterology, radiology or other") from None
    if years is not None and not 0 <= years <= 80:
        raise InputError(f"years of experience must be 0-80, got {years}")
    name = clean_name(name)
    if session.scalar(select(Rater).where(Rater.study_id == study.id, Rater.name == name)) is not None:
        raise ConflictError(f"study {study_name!r} already has a rater called {name!r}")
    token = secrets.token_urlsafe(TOKEN_BYTES)
    rater = Rater(
        study_id=study.id,
        public_id=secrets.token_hex(8),
        name=name,
        specialty=spec,
        years=years,
        token_hash=hash_token(token),
    )
    session.add(rater)
    session.flush()
    n = assign_rater(session, study, rater)
    return NewRater(rater_id=rater.public_id, name=name, token=token, assignments=n)


def rater_by_token(session: Session, token: str | None) -> Rater | None:
    """The active rater holding ``token``, or None (no token, unknown, revoked, study closed)."""
    if not token or len(token) > 200:
        return None
    digest = hash_token(token)
    rater = session.scalar(select(Rater).where(Rater.token_hash == digest))
    if rater is None or not hmac.compare_digest(rater.token_hash, digest) or rater.revoked_at is not None:
        return None
    return rater


def rater_by_id(session: Session, rater_id: int) -> Rater | None:
    """The rater with primary key ``rater_id`` (None if there is none), with its study loaded in the same
    query (the rater page reads the study's title and instructions on every next pair)."""
    return session.get(Rater, rater_id, options=[joinedload(Rater.study)])


def find_rater(session: Session, study: Study, name_or_id: str) -> Rater:
    """A study's rater by name or public id."""
    rater = session.scalar(
        select(Rater).where(Rater.study_id == study.id, (Rater.name == name_or_id) | (Rater.public_id == name_or_id))
    )
    if rater is None:
        raise NotFoundError(f"study {study.name!r} has no rater {name_or_id!r}")
    return rater


def revoke_rater(session: Session, study_name: str, name_or_id: str) -> Rater:
    """Revoke a rater's link (their ratings stay)."""
    rater = find_rater(session, get_study(session, study_name), name_or_id)
    rater.revoked_at = utcnow()
    return rater


def reissue_token(session: Session, study_name: str, name_or_id: str) -> str:
    """Give a rater a fresh link (the old one stops working)."""
    rater = find_rater(session, get_study(session, study_name), name_or_id)
    token = secrets.token_urlsafe(TOKEN_BYTES)
    rater.token_hash = hash_token(token)
    rater.revoked_at = None
    return token


def rater_link(base_url: str, token: str) -> str:
    """The personal link a rater opens (the token travels in the query, never in logs we write)."""
    return f"{base_url.rstrip('/')}/?rater={token}"


@dataclass(frozen=True)
class RaterAccess:
    """What decides whether a rater's session cookie is still good."""

    token_hash: str
    revoked: bool
    study_open: bool


def rater_access(session: Session, rater_id: int) -> RaterAccess | None:
    """The token hash, revocation and study status of rater ``rater_id`` (None if there is no such rater)."""
    row = session.execute(
        select(Rater.token_hash, Rater.revoked_at, Study.status)
        .join(Study, Rater.study_id == Study.id)
        .where(Rater.id == rater_id)
    ).first()
    if row is None:
        return None
    token_hash, revoked_at, status = row
    return RaterAccess(token_hash=token_hash, revoked=revoked_at is not None, study_open=status == StudyStatus.OPEN)
