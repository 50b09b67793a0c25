"""One module per resource, each exposing `router`; `web.app` includes them all."""
