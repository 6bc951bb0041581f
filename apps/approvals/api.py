"""Promotion, review, stage, rollback and policy endpoints (thin: schemas + services)."""

from ninja import Router

router = Router(tags=["approvals"])
