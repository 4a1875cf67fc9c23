"""Blinded image serving: ``GET /m/<token>`` returns a metadata-free PNG of one side of a rater's pair.

A token is signed by the server and names only the rater, the position in that rater's own list, the side
and a random nonce, so the same image reached through different pairs (or the same pair shown twice) has a
different, unguessable URL; it holds no hash, file name, model, dataset or seed. The route serves the
token's image only to the rater it was made for (their session cookie), with ``Cache-Control: no-store``,
no file name, no ETag and no Last-Modified. The bytes come from :meth:`MediaStore.served_copy`, fitted to
the study's display square (both sides identically, grey on both sides for radiology / grey real images,
equal byte length); the zoom view uses a copy of both sides at the pair's common zoom size (the smaller
native size of the two, capped: :func:`db.media.zoom_size`), so the side of that native size is served pixel
for pixel and both zoom copies have the same size and byte length. Every copy is rendered when its study is
created, and at start-up for studies that miss some, so no image arrives faster for having been served
before.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import Response

from db.media import MediaStore
from db.models import Side
from db.session import Database
from db.studies import prerender_in_background, served_bytes
from evalapp.auth import Role, config, identify, sign, unsign

IMAGE_ROUTE = "/m"
NO_STORE_HEADERS = {
    "Cache-Control": "no-store, private",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


@dataclass(frozen=True)
class ImageRef:
    """What an image token names."""

    rater_id: int
    position: int
    side: Side | None  #: None: the real image shown as the reference above a head-to-head pair
    zoom: bool


def image_token(
    rater_id: int, position: int, side: Side | None, *, zoom: bool = False, nonce: str | None = None
) -> str:
    """A signed, per-display image name for one side of a rater's pair (``side`` None: the head-to-head
    reference image; its name has the same length and fields as a side's, so nothing tells them apart)."""
    payload = {"k": "img", "r": rater_id, "p": position, "s": side.value[0] if side else "x", "z": int(zoom)}
    payload["n"] = nonce or secrets.token_urlsafe(9)
    return sign(payload, config().secret_key)


def read_image_token(token: str) -> ImageRef | None:
    """Decode and verify an image token, or None."""
    payload = unsign(token, config().secret_key)
    if payload is None or payload.get("k") != "img":
        return None
    rater_id, position, side = payload.get("r"), payload.get("p"), payload.get("s")
    if not isinstance(rater_id, int) or not isinstance(position, int) or side not in ("l", "r", "x"):
        return None
    sides = {"l": Side.LEFT, "r": Side.RIGHT, "x": None}
    return ImageRef(rater_id, position, sides[side], bool(payload.get("z")))


def image_url(token: str) -> str:
    """The page-relative URL of an image token."""
    return f"{IMAGE_ROUTE}/{token}"


def image_bytes(database: Database, store: MediaStore, ref: ImageRef) -> bytes | None:
    """The served PNG for ``ref`` (None when the position is not in that rater's list)."""
    return served_bytes(database, store, ref.rater_id, ref.position, ref.side, zoom=ref.zoom)


def install_media_routes(app: FastAPI, database: Database, store: MediaStore) -> None:
    """Add ``GET /m/{token}`` to ``app``; render any served copy an open study still misses."""
    prerender_in_background(database, store)

    def not_found() -> Response:
        return Response(status_code=404, content=b"Not found", headers=NO_STORE_HEADERS, media_type="text/plain")

    @app.get(IMAGE_ROUTE + "/{token}", include_in_schema=False)
    def served_image(token: str, request: Request) -> Response:
        ref = read_image_token(token)
        who = identify(request)
        if ref is None or who.role != Role.RATER or who.rater_id != ref.rater_id:
            return not_found()
        data = image_bytes(database, store, ref)
        if data is None:
            return not_found()
        return Response(content=data, media_type="image/png", headers=NO_STORE_HEADERS)
