"""The embedded demo: render a grounded answer as an overlay PNG and a self-contained HTML page."""
