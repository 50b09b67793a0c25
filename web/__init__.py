"""HTTP service (`keysync serve`): FastAPI on uvicorn, thin endpoints over `services`."""
