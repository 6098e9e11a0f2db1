"""What a StackOne answers, as bytes, for clients tested without the emulator."""

from __future__ import annotations

import orjson

SESSION = orjson.dumps(
    {"id": 1, "token": "cst_x", "auth_link_url": "https://hub.example/connect?token=cst_x",
     "origin_owner_id": "t", "origin_owner_name": "T", "created_at": "2026-11-24T14:02:11.406Z"}
)  # fmt: skip
