"""The HTTP API (CONTRACT section 10): `procpool serve`, and `procpool run` with http_bind.

Needs the `http` extra (`pip install '.[http]'` in procpool's repository): Litestar and uvicorn.
Only `server` and `app` import them; the rest of procpool never does.
"""
