"""The floor: the least a FastAPI hook service can do. It reads the raw body, decodes it with
orjson and answers {"cards": []}. Served by uvicorn with the same settings as `msht-cds serve`
(see run.py), so the difference between the two is what the real service adds.

    python benchmarks/floor_app.py --port 8100 --workers 1
"""

from __future__ import annotations

import argparse
from pathlib import Path

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response

app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
NO_CARDS = orjson.dumps({"cards": []})
JSON_MEDIA = "application/json; charset=utf-8"


@app.post("/cds-services/{service_id}")
async def hook(service_id: str, request: Request) -> Response:
    orjson.loads(await request.body())
    return Response(NO_CARDS, media_type=JSON_MEDIA)


@app.get("/livez")
async def livez() -> dict[str, str]:
    return {"status": "ok"}


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    # As msht_cds.cli.serve: import string (needed for workers > 1), the TCP_NODELAY protocol,
    # no log config, no proxy headers; uvicorn's defaults for everything else.
    uvicorn.run(
        "floor_app:app",
        app_dir=str(Path(__file__).resolve().parent),
        host=args.host,
        port=args.port,
        workers=args.workers,
        http="msht_cds.nodelay:NoDelayH11Protocol",
        log_config=None,
        proxy_headers=False,
    )


if __name__ == "__main__":
    main()
