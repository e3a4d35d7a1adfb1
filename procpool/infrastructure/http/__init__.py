"""The HTTP API (CONTRACT section 10): `procpool serve`, and `procpool run` with http_bind.

Needs the `http` extra (`pip install 'procpool[http]'`): Litestar and uvicorn.
Only `server` and `app` import them; the rest of procpool never does.
"""
