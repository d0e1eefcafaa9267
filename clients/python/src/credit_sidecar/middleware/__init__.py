"""Framework middleware: ``asgi`` (Starlette, FastAPI), ``flask``, ``django``. Each imports its
framework; import the one you use. ``common`` holds what they share."""
