"""Model, version and lineage endpoints of the REST API (thin: schemas + services)."""

from ninja import Router

router = Router(tags=["models"])
