"""Upload flows of both official clients, and file serving with HTTP ranges.

Python (fal-client): POST /rest/storage/auth/token -> {token, token_type, base_url, expires_at};
  POST /cdn/files/upload (raw body) -> {access_url}; big files: POST /cdn/files/upload/multipart
  -> {access_url, uploadId}, PUT {access_url}/multipart/{uploadId}/{n} (ETag), POST .../complete.
JS (@fal-ai/client): POST /rest/storage/upload/initiate -> {upload_url, file_url}, PUT upload_url
  (no Authorization: the URL carries a signed token); big files: /initiate-multipart, PUT
  {upload_url path}/{n}?token, POST .../complete?token.
Files: GET /files/{key} (Range, HEAD), public to whoever holds the unguessable URL. Stored
content never runs in a browser: the type was sniffed from the bytes at upload, only media
types are served inline, everything else is an application/octet-stream attachment, and every
answer carries nosniff and a sandboxing CSP. FLASHHEAD_FILES_URL moves the returned URLs to
another origin (Storage.url).
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel

from flashhead.api.deps import AppContext, get_ctx, off_loop, require_key, require_key_or_cdn_token
from flashhead.errors import AlreadyStored, InputError, NotFound, Unauthorized
from flashhead.media.sniff import OCTET, served_type
from flashhead.storage.base import FILES_PREFIX, UPLOAD, StoredFile, check_key, declared_ext, disk_errors, new_key

CDN_PREFIX = "/cdn"
FILES_CSP = "default-src 'none'; sandbox"

router = APIRouter()


class InitiateBody(BaseModel):
    content_type: str = "application/octet-stream"
    file_name: str = "upload.bin"


class CompleteBody(BaseModel):
    parts: list[dict] = []


async def _body_to_file(request: Request, ctx: AppContext) -> Path:
    """Stream the request body to a staging file, refusing more than Settings.max_upload_bytes."""
    with disk_errors():
        fd, name = tempfile.mkstemp(dir=ctx.storage.staging, prefix="body-")
    size = 0
    try:
        with disk_errors(), os.fdopen(fd, "wb") as out:
            async for block in request.stream():
                size += len(block)
                ctx.storage.check_total(size)
                out.write(block)
    except BaseException:
        os.unlink(name)
        raise
    return Path(name)


async def _store(ctx: AppContext, request: Request, content_type: str | None, file_name: str | None) -> StoredFile:
    path = await _body_to_file(request, ctx)
    try:
        return await _put_staged(ctx, path, content_type, file_name, None)
    finally:
        path.unlink(missing_ok=True)


async def _put_staged(ctx: AppContext, path: Path, content_type: str | None, file_name: str | None,
                      key: str | None, exclusive: bool = False) -> StoredFile:
    ctx.storage.check_room(path.stat().st_size)         # its stored copy
    return await run_in_threadpool(ctx.storage.put_file, path, content_type, file_name, key, UPLOAD, exclusive)


# ---- Python client: token + CDN ----------------------------------------------------------

@router.post("/rest/storage/auth/token", tags=["storage"])
def cdn_token(request: Request, key_id: str | None = Depends(require_key)):
    ctx = get_ctx(request)
    expires = datetime.now(timezone.utc) + timedelta(seconds=ctx.auth.token_ttl_s * 0.9)
    return {"token": ctx.auth.issue_cdn_token(key_id), "token_type": "Bearer",
            "base_url": ctx.base_url(request) + CDN_PREFIX, "expires_at": expires.isoformat()}


@router.post(f"{CDN_PREFIX}/files/upload", tags=["storage"])
async def cdn_upload(request: Request, _k: str | None = Depends(require_key_or_cdn_token)):
    ctx = get_ctx(request)
    f = await _store(ctx, request, request.headers.get("content-type"), request.headers.get("x-fal-file-name"))
    return {"access_url": ctx.storage.url(f.key, ctx.base_url(request)), "content_type": f.content_type,
            "file_name": f.file_name, "file_size": f.size}


@router.post(f"{CDN_PREFIX}/files/upload/multipart", tags=["storage"])
def cdn_multipart_create(request: Request, _k: str | None = Depends(require_key_or_cdn_token)):
    ctx = get_ctx(request)
    key, upload_id = ctx.storage.create_multipart(request.headers.get("content-type"),
                                                  request.headers.get("x-fal-file-name"))
    return {"access_url": ctx.storage.url(key, ctx.base_url(request)), "uploadId": upload_id}


@router.put(f"{FILES_PREFIX}/{{key}}/multipart/{{upload_id}}/{{number}}", tags=["storage"])
async def cdn_multipart_part(key: str, upload_id: str, number: int, request: Request,
                             _k: str | None = Depends(require_key_or_cdn_token)):
    return await _put_part(get_ctx(request), request, key, upload_id, number)


@router.post(f"{FILES_PREFIX}/{{key}}/multipart/{{upload_id}}/complete", tags=["storage"])
def cdn_multipart_complete(key: str, upload_id: str, body: CompleteBody, request: Request,
                           _k: str | None = Depends(require_key_or_cdn_token)):
    return _complete(get_ctx(request), request, key, upload_id, body)


async def _put_part(ctx: AppContext, request: Request, key: str, upload_id: str, number: int) -> JSONResponse:
    path = await _body_to_file(request, ctx)
    try:
        etag = await run_in_threadpool(ctx.storage.put_part, key, upload_id, number, path)
    finally:
        path.unlink(missing_ok=True)
    return JSONResponse({"partNumber": number, "etag": etag}, headers={"ETag": etag})


def _complete(ctx: AppContext, request: Request, key: str, upload_id: str, body: CompleteBody) -> dict:
    try:
        numbers = [int(p["partNumber"]) for p in body.parts] if body.parts else None
    except (KeyError, TypeError, ValueError):
        raise InputError("each part needs a partNumber", field="parts") from None
    f = ctx.storage.complete_multipart(key, upload_id, numbers)
    url = ctx.storage.url(f.key, ctx.base_url(request))
    return {"access_url": url, "file_url": url, "file_size": f.size}


# ---- JS client: initiate + PUT ---------------------------------------------------------------

def _initiate(request: Request, body: InitiateBody, multipart: bool, key_id: str | None) -> dict:
    ctx = get_ctx(request)
    base = ctx.base_url(request)
    ctype = body.content_type            # a hint only: the stored type is sniffed from the bytes
    if multipart:
        key, upload_id = ctx.storage.create_multipart(ctype, body.file_name)
        token = ctx.auth.issue_upload_token(key_id, key, ctype, body.file_name, multipart=upload_id)
        upload_url = f"{base}{CDN_PREFIX}/uploads/{key}/multipart/{upload_id}?token={token}"
    else:
        key = new_key(declared_ext(ctype))
        token = ctx.auth.issue_upload_token(key_id, key, ctype, body.file_name)
        upload_url = f"{base}{CDN_PREFIX}/uploads/{key}?token={token}"
    return {"upload_url": upload_url, "file_url": ctx.storage.url(key, base)}


@router.post("/rest/storage/upload/initiate", tags=["storage"])
def initiate(body: InitiateBody, request: Request, key_id: str | None = Depends(require_key)):
    return _initiate(request, body, False, key_id)


@router.post("/rest/storage/upload/initiate-multipart", tags=["storage"])
def initiate_multipart(body: InitiateBody, request: Request, key_id: str | None = Depends(require_key)):
    return _initiate(request, body, True, key_id)


@router.put(f"{CDN_PREFIX}/uploads/{{key}}", tags=["storage"])
async def signed_put(key: str, request: Request, token: str = ""):
    ctx = get_ctx(request)
    claims = await off_loop(ctx.auth.verify_upload_token, token, check_key(key))
    if "mp" in claims:
        raise Unauthorized("this token is for a multipart upload", field="token")
    size = await _store_once(ctx, request, key, claims["ct"], claims["name"])
    return {"file_url": ctx.storage.url(key, ctx.base_url(request)), "file_size": size}


async def _store_once(ctx: AppContext, request: Request, key: str, content_type: str | None,
                      file_name: str | None) -> int:
    """A signed URL stores one file: what a job or a cache read there never changes (an
    exclusive put, so of two racing PUTs one stores). A client that retries a PUT whose answer
    it lost sends the same bytes: answered as the first time."""
    path = await _body_to_file(request, ctx)
    try:
        try:
            await _put_staged(ctx, path, content_type, file_name, key, exclusive=True)
        except AlreadyStored:
            if not await run_in_threadpool(_same_bytes, ctx.storage, key, path):
                raise Unauthorized("this upload URL was already used (for other bytes)", field="token") from None
        return path.stat().st_size
    finally:
        path.unlink(missing_ok=True)


def _same_bytes(storage, key: str, path: Path) -> bool:
    try:
        size = storage.stat(key).size
    except NotFound:             # the racing first PUT has not written its description yet
        return False
    if path.stat().st_size != size:
        return False
    stored, staged = hashlib.sha256(), hashlib.sha256()
    for block in storage.open_range(key, 0, size - 1) if size else ():
        stored.update(block)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            staged.update(block)
    return stored.digest() == staged.digest()


@router.put(f"{CDN_PREFIX}/uploads/{{key}}/multipart/{{upload_id}}/{{number}}", tags=["storage"])
async def signed_part(key: str, upload_id: str, number: int, request: Request, token: str = ""):
    ctx = get_ctx(request)
    await off_loop(_check_mp_token, ctx, token, key, upload_id)
    return await _put_part(ctx, request, key, upload_id, number)


@router.post(f"{CDN_PREFIX}/uploads/{{key}}/multipart/{{upload_id}}/complete", tags=["storage"])
def signed_complete(key: str, upload_id: str, body: CompleteBody, request: Request, token: str = ""):
    ctx = get_ctx(request)
    _check_mp_token(ctx, token, key, upload_id)
    return _complete(ctx, request, key, upload_id, body)


def _check_mp_token(ctx: AppContext, token: str, key: str, upload_id: str) -> None:
    if ctx.auth.verify_upload_token(token, check_key(key)).get("mp") != upload_id:
        raise Unauthorized("upload token is for another upload", field="token")


# ---- serving -------------------------------------------------------------------------------

def _parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """`bytes=a-b`, `bytes=a-`, `bytes=-n` -> inclusive (start, end); None = whole file.
    Raises ValueError when unsatisfiable. Multiple ranges are answered with the first one."""
    if not header or not header.startswith("bytes="):
        return None
    first = header[6:].split(",")[0].strip()
    a, _, b = first.partition("-")
    if a == "":
        n = int(b)
        if n <= 0:
            raise ValueError(header)
        return max(0, size - n), size - 1
    start = int(a)
    end = min(int(b), size - 1) if b else size - 1
    if start >= size or end < start:
        raise ValueError(header)
    return start, end


@router.head(f"{FILES_PREFIX}/{{key}}", include_in_schema=False)
@router.get(f"{FILES_PREFIX}/{{key}}", tags=["storage"])
def serve_file(key: str, request: Request):
    ctx = get_ctx(request)
    f = ctx.storage.stat(check_key(key))
    ctype = served_type(f.content_type)    # checked again here: files stored before sniffing too
    disposition = "attachment" if ctype == OCTET else "inline"
    base = {"Accept-Ranges": "bytes", "Content-Type": ctype, "ETag": f'"{f.key}"',
            "Content-Disposition": f'{disposition}; filename="{f.file_name}"',
            "X-Content-Type-Options": "nosniff", "Content-Security-Policy": FILES_CSP,
            "Cache-Control": "public, max-age=31536000, immutable"}
    try:
        rng = _parse_range(request.headers.get("range"), f.size)
    except ValueError:
        return Response(status_code=416, headers={**base, "Content-Range": f"bytes */{f.size}"})
    start, end, status = (*rng, 206) if rng else (0, f.size - 1, 200)
    headers = {**base, "Content-Length": str(max(0, end - start + 1))}
    if rng:
        headers["Content-Range"] = f"bytes {start}-{end}/{f.size}"
    if request.method == "HEAD" or f.size == 0:
        return Response(status_code=status, headers=headers)
    return StreamingResponse(ctx.storage.open_range(f.key, start, end), status, headers=headers,
                             media_type=ctype)
