"""Serving stage: the REST API and upload page around a model bundle (`fashion-serve`)."""
