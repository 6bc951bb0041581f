"""Artifact endpoints: upload, seal, download (thin: streaming + artifact services)."""

from ninja import Router

router = Router(tags=["files"])
